//! The results as people read them (stdout) and as scripts read them (JSON).

use std::fmt::Write as _;

use serde::Serialize;

use crate::find_max::{FindMax, Search, Step};
use crate::runner::RunResult;
use crate::stats::{Percentiles, StageSummary};

const TOOL: &str = concat!("cascade-load ", env!("CARGO_PKG_VERSION"));
const LATENCY_FROM: &str = "scheduled send time (open loop; coordinated omission corrected)";

/// The `--out` file: the run's settings, then what it measured.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub tool: &'static str,
    #[serde(flatten)]
    pub header: Header,
    pub connections_opened: u64,
    /// Requests unfinished at the hard end of the run (normally 0).
    pub abandoned: usize,
    /// Latency is measured from each request's scheduled send time.
    pub latency_from: &'static str,
    pub stages: Vec<StageSummary>,
    pub total: StageSummary,
}

impl Summary {
    pub fn new(header: Header, result: RunResult, connections_opened: u64) -> Summary {
        Summary {
            tool: TOOL,
            header,
            connections_opened,
            abandoned: result.abandoned,
            latency_from: LATENCY_FROM,
            stages: result.stages,
            total: result.total,
        }
    }
}

/// The `--out` file of a `--find-max` search.
#[derive(Debug, Serialize)]
pub struct FindMaxSummary {
    pub tool: &'static str,
    #[serde(flatten)]
    pub header: Header,
    pub mode: &'static str,
    pub find_max: FindMax,
    /// The highest offered rate that held (`null` if none did).
    pub max_held_rps: Option<f64>,
    /// The lowest offered rate that did not hold (`null` if all held).
    pub min_missed_rps: Option<f64>,
    /// Why the search ended.
    pub stopped: &'static str,
    pub connections_opened: u64,
    pub latency_from: &'static str,
    pub steps: Vec<Step>,
}

impl FindMaxSummary {
    pub fn new(
        header: Header,
        find_max: FindMax,
        search: &Search,
        steps: Vec<Step>,
        connections_opened: u64,
    ) -> FindMaxSummary {
        FindMaxSummary {
            tool: TOOL,
            header,
            mode: "find_max",
            find_max,
            max_held_rps: search.max_held(),
            min_missed_rps: search.min_missed(),
            stopped: search.stopped().unwrap_or("not finished"),
            connections_opened,
            latency_from: LATENCY_FROM,
            steps,
        }
    }

    /// The step that ran at the highest rate held.
    pub fn max_held_step(&self) -> Option<&Step> {
        let rate = self.max_held_rps?;
        self.steps
            .iter()
            .find(|s| s.held && s.result.offered_rps == rate)
    }
}

/// The run's settings, as echoed in the summary.
#[derive(Debug, Serialize)]
pub struct Header {
    pub target: String,
    pub scenario: String,
    /// Scenario parameters (model and batch, or the rank mix).
    pub scenario_params: serde_json::Value,
    pub seed: u64,
    pub warmup_s: f64,
    pub timeout_ms: u64,
    pub max_connections: usize,
}

/// The human-readable report.
pub fn render(summary: &Summary) -> String {
    let mut out = String::new();
    let n = summary.stages.len();
    out.push_str(&header_line(&summary.header));
    for (i, stage) in summary.stages.iter().enumerate() {
        let title = if n > 1 {
            format!("stage {}/{n}", i + 1)
        } else {
            "result".to_string()
        };
        render_stage(&mut out, &title, stage);
    }
    if n > 1 {
        render_stage(&mut out, "total", &summary.total);
    }
    let _ = writeln!(
        out,
        "connections opened: {}{}",
        summary.connections_opened,
        if summary.abandoned > 0 {
            format!(
                ", {} requests abandoned at the hard stop",
                summary.abandoned
            )
        } else {
            String::new()
        }
    );
    out
}

fn header_line(h: &Header) -> String {
    format!(
        "cascade-load: {} on {} ({}), seed {}, warm-up {} s, timeout {} ms, max {} connections\n",
        h.scenario,
        h.target,
        h.scenario_params,
        h.seed,
        h.warmup_s,
        h.timeout_ms,
        h.max_connections
    )
}

/// The `--find-max` report: settings, one line per step, the verdict.
pub fn render_find_max(summary: &FindMaxSummary) -> String {
    let mut out = find_max_intro(&summary.header, &summary.find_max);
    for step in &summary.steps {
        out.push_str(&step_line(step));
    }
    out.push_str(&find_max_verdict(summary));
    out
}

/// What a `--find-max` search is about to do (printed before its steps).
pub fn find_max_intro(h: &Header, f: &FindMax) -> String {
    let mut out = header_line(h);
    let _ = writeln!(
        out,
        "find-max: p99 <= {} ms, no errors, achieved >= {:.0} % of offered; from {} req/s x{} per step, \
         {} bisections, at most {} steps",
        f.p99_bound_ms,
        (1.0 - f.tolerance) * 100.0,
        f.start_rps,
        f.step_factor,
        f.bisect_steps,
        f.max_steps
    );
    out
}

/// One step, one line.
pub fn step_line(step: &Step) -> String {
    let s = &step.result;
    let failed: u64 = s.errors.values().sum::<u64>()
        + s.status
            .iter()
            .filter(|(code, _)| !code.starts_with('2'))
            .map(|(_, n)| n)
            .sum::<u64>();
    format!(
        "step {:>2} {:<6} offered {:>9.1} req/s  achieved {:>9.1}  p50 {:>8.3}  p99 {:>8.3} ms  \
         failed {failed}  lag p99 {:.3} ms  {}\n",
        step.step,
        step.kind.name(),
        s.offered_rps,
        s.achieved_rps,
        s.latency_ms.p50,
        s.latency_ms.p99,
        s.send_lag_ms.p99,
        if step.held {
            "held".to_string()
        } else {
            format!("missed: {}", step.reasons.join("; "))
        }
    )
}

/// The outcome of the search.
pub fn find_max_verdict(summary: &FindMaxSummary) -> String {
    let mut out = String::new();
    match summary.max_held_step() {
        Some(step) => {
            let _ = write!(
                out,
                "highest rate held: {:.1} req/s (p99 {:.3} ms <= {} ms)",
                step.result.offered_rps, step.result.latency_ms.p99, summary.find_max.p99_bound_ms
            );
        }
        None => out.push_str("highest rate held: none"),
    }
    if let Some(missed) = summary.min_missed_rps {
        let _ = write!(out, "; lowest missed: {missed:.1} req/s");
    }
    let _ = writeln!(out, " ({})", summary.stopped);
    let _ = writeln!(out, "connections opened: {}", summary.connections_opened);
    out
}

fn render_stage(out: &mut String, title: &str, s: &StageSummary) {
    let _ = writeln!(
        out,
        "{title}: offered {:.1} req/s for {:.1} s",
        s.offered_rps, s.duration_s
    );
    let _ = writeln!(
        out,
        "  requests  scheduled {}  sent {}  responses {}  achieved {:.1} req/s (2xx {:.1} req/s)",
        s.scheduled, s.sent, s.responses, s.achieved_rps, s.ok_rps
    );
    let statuses = join(s.status.iter().map(|(k, v)| format!("{k}={v}")));
    let _ = writeln!(
        out,
        "  status    {}",
        if statuses.is_empty() {
            "none".into()
        } else {
            statuses
        }
    );
    let _ = writeln!(
        out,
        "  errors    {}",
        join(s.errors.iter().map(|(k, v)| format!("{k}={v}")))
    );
    if s.kinds.len() > 1 {
        let _ = writeln!(
            out,
            "  mix       {}",
            join(s.kinds.iter().map(|(k, v)| format!("{k}={v}")))
        );
    }
    let _ = writeln!(
        out,
        "  latency   {} (ms, from scheduled send time)",
        percentiles(&s.latency_ms)
    );
    let _ = writeln!(
        out,
        "  send lag  p50 {:.3}  p99 {:.3}  max {:.3} (ms the generator itself was late)",
        s.send_lag_ms.p50, s.send_lag_ms.p99, s.send_lag_ms.max
    );
}

fn percentiles(p: &Percentiles) -> String {
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
        p.p50, p.p90, p.p99, p.p99_9, p.max, p.mean
    )
}

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join("  ")
}
