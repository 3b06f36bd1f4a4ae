//! `cascade-load`: an open-loop HTTP load generator for Cascade.
//!
//! Requests are scheduled at `t0 + i / rate` before the run starts and leave
//! on time whatever the server does; each one's latency is measured from its
//! scheduled send time, so a server that stalls cannot hide the queue it
//! builds (coordinated omission). How a run flows through the modules:
//!
//! - [`cli`]: flags -> validated [`cli::Config`] (the only place defaults live).
//! - [`target`]: parses `--target` and refuses anything but loopback.
//! - [`scenario`]: deterministic request streams (`rank`, `infer`).
//! - [`schedule`]: the open-loop timetable (warm-up, stages, due times).
//! - [`runner`]: dispatches each request at its due time and records it.
//! - [`client`]: pooled, capped HTTP/1.1 connections (the [`client::Transport`]).
//! - [`stats`]: HDR histogram and counts per stage, and their summary.
//! - [`report`]: the printed report and the JSON summary.
//! - [`find_max`]: the `--find-max` search (step up, bisect) and its verdicts.
//!
//! [`execute`] (and [`execute_find_max`]) tie them together; `main.rs` only
//! parses flags and prints.

pub mod cli;
pub mod client;
pub mod find_max;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod stats;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use cli::{Config, ScenarioConfig};
use report::{FindMaxSummary, Header, Summary};
use scenario::{events::EventsSource, infer::InferSource, rank, Source};

/// Extra time, after the last request's timeout, before the run is cut off.
pub const GRACE: Duration = Duration::from_secs(1);

impl Source for Box<dyn Source> {
    fn next_request(&mut self) -> scenario::Prepared {
        (**self).next_request()
    }
}

/// Runs the load described by `config` and returns its summary (also written
/// to `config.out` when set). Always returns within the run's length plus the
/// timeout plus [`GRACE`].
pub async fn execute(config: &Config) -> anyhow::Result<Summary> {
    let (mut source, params) = scenario(config)?;
    let plan = schedule::Plan::new(&config.rates, config.duration, config.warmup);
    let client = Arc::new(client::HttpClient::new(
        config.target.clone(),
        config.max_connections,
    ));
    let result = run_plan(config, &plan, &mut source, &client).await?;
    let summary = Summary::new(header(config, params), result, client.connections_opened());
    write_out(config, &summary)?;
    Ok(summary)
}

/// `--find-max`: runs one step after another (see [`find_max`]), telling
/// `on_progress` when it starts and as each step ends, and returns the summary (also written to
/// `config.out` when set). Always returns within `max_steps` x (warm-up +
/// duration + timeout + [`GRACE`] + cooldown) and a second per step.
pub async fn execute_find_max(
    config: &Config,
    mut on_progress: impl FnMut(find_max::Progress<'_>),
) -> anyhow::Result<FindMaxSummary> {
    let settings = config
        .find_max
        .clone()
        .context("execute_find_max needs --find-max settings")?;
    let (mut source, params) = scenario(config)?;
    let header = header(config, params);
    on_progress(find_max::Progress::Start(&header, &settings));
    // One client for every step: connections stay warm, as for one long run.
    let client = Arc::new(client::HttpClient::new(
        config.target.clone(),
        config.max_connections,
    ));
    // A step needs a few requests to say anything; above MAX_RATE, cli refuses.
    let min_rate = 10.0 / config.duration.as_secs_f64();
    let mut search = find_max::Search::new(&settings, min_rate, cli::MAX_RATE);
    let mut steps = Vec::new();
    while let Some((rate, kind)) = search.next_step() {
        let plan = schedule::Plan::new(&[rate], config.duration, config.warmup);
        let result = run_plan(config, &plan, &mut source, &client).await?;
        let stage = result.stages.into_iter().next().expect("one stage");
        let reasons = find_max::judge(&stage, settings.p99_bound_ms, settings.tolerance);
        let held = reasons.is_empty();
        search.record(held);
        let step = find_max::Step {
            step: u32::try_from(steps.len() + 1).unwrap_or(u32::MAX),
            kind,
            held,
            reasons,
            abandoned: result.abandoned,
            result: stage,
        };
        on_progress(find_max::Progress::Step(&step));
        steps.push(step);
        if !held && settings.cooldown_s > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(settings.cooldown_s)).await;
        }
    }
    let summary = FindMaxSummary::new(
        header,
        settings,
        &search,
        steps,
        client.connections_opened(),
    );
    write_out(config, &summary)?;
    Ok(summary)
}

/// The request stream of the configured scenario, and its parameters as echoed
/// in the summary.
fn scenario(config: &Config) -> anyhow::Result<(Box<dyn Source>, serde_json::Value)> {
    Ok(match &config.scenario {
        ScenarioConfig::Infer { model, batch } => (
            Box::new(InferSource::new(&config.models_dir, model, *batch)?),
            serde_json::json!({"model": model, "batch": batch}),
        ),
        ScenarioConfig::Events {
            batch,
            new_items,
            outcomes,
        } => {
            let mut source = EventsSource::new(
                rank::Catalog::load(&config.models_dir)?,
                *batch,
                config.seed,
                *new_items,
            )?;
            if let Some((kind, rank_seed)) = outcomes {
                source = source.with_outcomes(kind.clone(), *rank_seed)?;
            }
            (
                Box::new(source),
                serde_json::json!({"batch": batch, "new_items": new_items, "outcomes": outcomes}),
            )
        }
        ScenarioConfig::Rank(mix) => {
            let catalog = rank::Catalog::load(&config.models_dir)?;
            (
                Box::new(rank::RankSource::new(mix.clone(), catalog, config.seed)?),
                serde_json::to_value(mix).expect("plain numbers"),
            )
        }
    })
}

/// Runs one plan with the configured timeout and pacing.
async fn run_plan(
    config: &Config,
    plan: &schedule::Plan,
    source: &mut Box<dyn Source>,
    client: &Arc<client::HttpClient>,
) -> anyhow::Result<runner::RunResult> {
    // The runner bounds itself; this outer limit is a second, independent stop.
    let hard_limit = plan.length() + config.timeout + GRACE + Duration::from_secs(1);
    tokio::time::timeout(
        hard_limit,
        runner::run(
            plan,
            source,
            client.clone(),
            config.timeout,
            GRACE,
            runner::Pacing::Precise,
        ),
    )
    .await
    .context("the run overran its hard time limit")
}

fn header(config: &Config, params: serde_json::Value) -> Header {
    let scenario = match config.scenario {
        ScenarioConfig::Rank(_) => "rank",
        ScenarioConfig::Infer { .. } => "infer",
        ScenarioConfig::Events { .. } => "events",
    };
    Header {
        target: config.target_url.clone(),
        scenario: scenario.to_string(),
        scenario_params: params,
        seed: config.seed,
        warmup_s: config.warmup.as_secs_f64(),
        timeout_ms: u64::try_from(config.timeout.as_millis()).unwrap_or(u64::MAX),
        max_connections: config.max_connections,
    }
}

fn write_out(config: &Config, summary: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = &config.out {
        let json = serde_json::to_string_pretty(summary).expect("summary serialises");
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
