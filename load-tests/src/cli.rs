//! Command-line flags, and their validation into a [`Config`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};

use crate::find_max::FindMax;
use crate::scenario::rank::RankMix;
use crate::target::Target;

/// Longest run accepted, all stages and the warm-up together.
const MAX_RUN: Duration = Duration::from_secs(3600);
/// Highest offered rate accepted (req/s).
pub const MAX_RATE: f64 = 100_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    /// POST /v1/rank with a mix of known, cold-start, candidate and repeated requests.
    Rank,
    /// POST /v2/models/{model}/infer with `--batch` golden feature rows.
    Infer,
    /// POST /v1/events with `--batch` interactions per request.
    Events,
}

/// Open-loop HTTP load generator for Cascade: requests leave at a fixed rate
/// whatever the server does, and latency is measured from each request's
/// scheduled send time.
#[derive(Debug, Clone, Parser)]
#[command(name = "cascade-load", version)]
pub struct Args {
    /// Server to load; must be a loopback address (127.0.0.0/8, localhost, [::1]).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    #[arg(long, value_enum, default_value_t = ScenarioName::Rank)]
    pub scenario: ScenarioName,
    /// Offered load, requests per second (ignored with --ramp; the first
    /// step's rate with --find-max).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Run consecutive stages at these rates, each --duration long, e.g. 100,200,400.
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "find_max")]
    pub ramp: Option<Vec<f64>>,
    /// Seconds per stage (recorded).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load at the first rate before recording starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Per-request timeout, counted from the request's scheduled send time.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Most connections open at once; a request finding all of them busy is
    /// not sent and counts as a `client_saturated` error.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seed of the request mix (same seed, same requests).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write the JSON summary here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Model repository (catalog, golden rows); default ./models, else the workspace's.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,

    /// Search for the highest rate held: steps from --rate up by
    /// --step-factor until one misses, then bisects; each step is --warmup
    /// plus --duration at one rate.
    #[arg(long)]
    pub find_max: bool,
    /// [find-max] A step holds only if its p99 is at most this (ms).
    #[arg(long, default_value_t = 20.0)]
    pub p99_ms: f64,
    /// [find-max] Rate multiplier between steps while they hold (> 1).
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    /// [find-max] Bisection steps between the highest rate held and the lowest missed.
    #[arg(long, default_value_t = 2)]
    pub bisect: u32,
    /// [find-max] Most steps in all.
    #[arg(long, default_value_t = 12)]
    pub max_steps: u32,
    /// [find-max] A step holds only if achieved >= (1 - this) x offered.
    #[arg(long, default_value_t = 0.05)]
    pub hold_tolerance: f64,
    /// [find-max] Seconds to pause after a step that did not hold, so the
    /// server drains its backlog before the next one.
    #[arg(long, default_value_t = 1.0)]
    pub cooldown: f64,

    /// [infer] Model to call.
    #[arg(long, default_value = "ranker")]
    pub model: String,
    /// [infer] Rows per request; [events] events per request.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// [events] Insert new items (with a random retrieval vector) instead
    /// of posting interactions: catalog changes under load.
    #[arg(long)]
    pub new_items: bool,
    /// [events] Post outcomes of this kind (e.g. click) naming the
    /// rankings of a concurrent `rank` run (see --outcome-seed).
    #[arg(long)]
    pub outcomes: Option<String>,
    /// [events] The seed of the `rank` run whose request ids the outcomes
    /// name.
    #[arg(long, default_value_t = 42)]
    pub outcome_seed: u64,

    /// [rank] TOML mix file (see scenarios/rank.toml); flags below override it.
    #[arg(long)]
    pub scenario_file: Option<PathBuf>,
    /// [rank] `k` of every request.
    #[arg(long)]
    pub k: Option<u32>,
    /// [rank] Weight of known-user requests.
    #[arg(long)]
    pub share_known: Option<f64>,
    /// [rank] Weight of cold-start requests.
    #[arg(long)]
    pub share_cold: Option<f64>,
    /// [rank] Weight of requests with caller-supplied candidates.
    #[arg(long)]
    pub share_candidates: Option<f64>,
    /// [rank] Share of all requests that repeat a recent one (0..1).
    #[arg(long)]
    pub share_repeat: Option<f64>,
    /// [rank] How many recent requests a repeat picks from.
    #[arg(long)]
    pub repeat_window: Option<usize>,
    /// [rank] Zipf exponent of user popularity (0 = uniform).
    #[arg(long)]
    pub zipf_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScenarioConfig {
    Rank(RankMix),
    Infer {
        model: String,
        batch: usize,
    },
    Events {
        batch: usize,
        new_items: bool,
        /// (kind, rank run seed).
        outcomes: Option<(String, u64)>,
    },
}

/// Validated settings of one run.
#[derive(Debug, Clone)]
pub struct Config {
    pub target_url: String,
    pub target: Target,
    pub scenario: ScenarioConfig,
    pub models_dir: PathBuf,
    /// One rate per stage.
    pub rates: Vec<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
    pub max_connections: usize,
    pub seed: u64,
    pub out: Option<PathBuf>,
    /// `--find-max`: search for the highest rate held (`rates` is then the start rate).
    pub find_max: Option<FindMax>,
}

impl Args {
    pub fn into_config(self) -> anyhow::Result<Config> {
        let target = Target::parse(&self.target)?;
        let rates = self.ramp.clone().unwrap_or_else(|| vec![self.rate]);
        if rates.is_empty() || rates.len() > 50 {
            bail!("--ramp: give 1 to 50 rates, got {}", rates.len());
        }
        for r in &rates {
            if !r.is_finite() || *r <= 0.0 || *r > MAX_RATE {
                bail!("rate {r}: must be > 0 and <= {MAX_RATE} req/s");
            }
        }
        let secs = |name: &str, v: f64, allow_zero: bool| -> anyhow::Result<Duration> {
            if !v.is_finite() || v < 0.0 || (v == 0.0 && !allow_zero) || v > MAX_RUN.as_secs_f64() {
                bail!(
                    "--{name} {v}: must be {} and at most {} s",
                    if allow_zero { ">= 0" } else { "> 0" },
                    MAX_RUN.as_secs()
                );
            }
            Ok(Duration::from_secs_f64(v))
        };
        let duration = secs("duration", self.duration, false)?;
        let warmup = secs("warmup", self.warmup, true)?;
        if duration * rates.len() as u32 + warmup > MAX_RUN {
            bail!(
                "the run (warm-up + stages x --duration) must fit in {} s",
                MAX_RUN.as_secs()
            );
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            bail!(
                "--timeout-ms {}: must be between 1 and 60000",
                self.timeout_ms
            );
        }
        let timeout = Duration::from_millis(self.timeout_ms);
        let find_max = if self.find_max {
            Some(self.find_max_settings(duration + warmup + timeout)?)
        } else {
            None
        };
        if self.max_connections == 0 || self.max_connections > 10_000 {
            bail!(
                "--max-connections {}: must be between 1 and 10000",
                self.max_connections
            );
        }
        let scenario = match self.scenario {
            ScenarioName::Infer => ScenarioConfig::Infer {
                model: self.model.clone(),
                batch: self.batch,
            },
            ScenarioName::Rank => ScenarioConfig::Rank(self.rank_mix()?),
            ScenarioName::Events => ScenarioConfig::Events {
                batch: self.batch,
                new_items: self.new_items,
                outcomes: self.outcomes.clone().map(|k| (k, self.outcome_seed)),
            },
        };
        Ok(Config {
            target_url: self.target.clone(),
            target,
            scenario,
            models_dir: crate::scenario::models_dir(self.models_dir.as_deref()),
            rates,
            duration,
            warmup,
            timeout,
            max_connections: self.max_connections,
            seed: self.seed,
            out: self.out,
            find_max,
        })
    }

    /// The `--find-max` settings; `step` is one step's run, warm-up and
    /// timeout included (the whole search must fit in [`MAX_RUN`]).
    fn find_max_settings(&self, step: Duration) -> anyhow::Result<FindMax> {
        if !self.p99_ms.is_finite() || self.p99_ms <= 0.0 || self.p99_ms > 60_000.0 {
            bail!("--p99-ms {}: must be > 0 and <= 60000", self.p99_ms);
        }
        if !self.step_factor.is_finite() || self.step_factor <= 1.0 || self.step_factor > 10.0 {
            bail!("--step-factor {}: must be > 1 and <= 10", self.step_factor);
        }
        if self.bisect > 10 {
            bail!("--bisect {}: at most 10", self.bisect);
        }
        if self.max_steps == 0 || self.max_steps > 50 {
            bail!("--max-steps {}: must be between 1 and 50", self.max_steps);
        }
        if !(0.0..0.5).contains(&self.hold_tolerance) {
            bail!(
                "--hold-tolerance {}: must be >= 0 and < 0.5",
                self.hold_tolerance
            );
        }
        if !self.cooldown.is_finite() || !(0.0..=60.0).contains(&self.cooldown) {
            bail!("--cooldown {}: must be between 0 and 60 s", self.cooldown);
        }
        let per_step = step + crate::GRACE + Duration::from_secs_f64(self.cooldown);
        if per_step * self.max_steps > MAX_RUN {
            bail!(
                "the search (--max-steps x (warm-up + duration + timeout + 1 s + cooldown)) must fit in {} s",
                MAX_RUN.as_secs()
            );
        }
        Ok(FindMax {
            p99_bound_ms: self.p99_ms,
            start_rps: self.rate,
            step_factor: self.step_factor,
            bisect_steps: self.bisect,
            max_steps: self.max_steps,
            tolerance: self.hold_tolerance,
            cooldown_s: self.cooldown,
        })
    }

    /// Defaults, then the scenario file, then flags.
    fn rank_mix(&self) -> anyhow::Result<RankMix> {
        let mut mix = match &self.scenario_file {
            Some(path) => RankMix::from_file(path).context("--scenario-file")?,
            None => RankMix::default(),
        };
        let overrides = [
            (self.share_known, &mut mix.known),
            (self.share_cold, &mut mix.cold),
            (self.share_candidates, &mut mix.candidates),
            (self.share_repeat, &mut mix.repeat),
            (self.zipf_s, &mut mix.zipf_s),
        ];
        for (flag, field) in overrides {
            if let Some(v) = flag {
                *field = v;
            }
        }
        if let Some(k) = self.k {
            mix.k = k;
        }
        if let Some(w) = self.repeat_window {
            mix.repeat_window = w;
        }
        Ok(mix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Config> {
        let mut argv = vec!["cascade-load"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv)?.into_config()
    }

    #[test]
    fn defaults_and_ramp() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.rates, vec![100.0]);
        assert_eq!(c.target.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.scenario, ScenarioConfig::Rank(RankMix::default()));
        let c = parse(&[
            "--ramp",
            "100,200,400",
            "--duration",
            "5",
            "--scenario",
            "infer",
            "--batch",
            "64",
        ])
        .unwrap();
        assert_eq!(c.rates, vec![100.0, 200.0, 400.0]);
        assert_eq!(c.duration, Duration::from_secs(5));
        assert_eq!(
            c.scenario,
            ScenarioConfig::Infer {
                model: "ranker".into(),
                batch: 64
            }
        );
    }

    #[test]
    fn find_max_settings() {
        assert_eq!(parse(&[]).unwrap().find_max, None);
        let c = parse(&["--find-max", "--rate", "50", "--p99-ms", "5"]).unwrap();
        let f = c.find_max.unwrap();
        assert_eq!(c.rates, vec![50.0]);
        assert_eq!(
            (
                f.start_rps,
                f.p99_bound_ms,
                f.step_factor,
                f.bisect_steps,
                f.max_steps
            ),
            (50.0, 5.0, 1.5, 2, 12)
        );
        assert_eq!((f.tolerance, f.cooldown_s), (0.05, 1.0));
    }

    #[test]
    fn flags_override_the_mix() {
        let c = parse(&["--share-repeat", "0.3", "--k", "20", "--zipf-s", "0"]).unwrap();
        let ScenarioConfig::Rank(mix) = c.scenario else {
            panic!()
        };
        assert_eq!(
            (mix.repeat, mix.k, mix.zipf_s, mix.known),
            (0.3, 20, 0.0, 0.6)
        );
    }

    #[test]
    fn refuses_non_loopback_targets_and_bad_numbers() {
        let err = parse(&["--target", "http://10.0.0.7:8080"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a loopback address"), "{err}");
        for bad in [
            &["--rate", "0"][..],
            &["--rate", "-5"],
            &["--duration", "0"],
            &["--duration", "NaN"],
            &["--warmup", "-1"],
            &["--timeout-ms", "0"],
            &["--max-connections", "0"],
            &["--duration", "3000", "--ramp", "1,2"],
            &["--find-max", "--ramp", "1,2"],
            &["--find-max", "--step-factor", "1"],
            &["--find-max", "--p99-ms", "0"],
            &["--find-max", "--max-steps", "0"],
            &["--find-max", "--hold-tolerance", "0.5"],
            &["--find-max", "--duration", "600", "--max-steps", "10"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
