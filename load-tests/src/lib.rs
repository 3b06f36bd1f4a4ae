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
//!
//! [`execute`] ties them together; `main.rs` only parses flags and prints.

pub mod cli;
pub mod client;
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
use report::{Header, Summary};
use scenario::{infer::InferSource, rank, Source};

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
    let (mut source, params): (Box<dyn Source>, serde_json::Value) = match &config.scenario {
        ScenarioConfig::Infer { model, batch } => (
            Box::new(InferSource::new(&config.models_dir, model, *batch)?),
            serde_json::json!({"model": model, "batch": batch}),
        ),
        ScenarioConfig::Rank(mix) => {
            let catalog = rank::Catalog::load(&config.models_dir)?;
            (
                Box::new(rank::RankSource::new(mix.clone(), catalog, config.seed)?),
                serde_json::to_value(mix).expect("plain numbers"),
            )
        }
    };
    let plan = schedule::Plan::new(&config.rates, config.duration, config.warmup);
    let client = Arc::new(client::HttpClient::new(
        config.target.clone(),
        config.max_connections,
    ));

    // The runner bounds itself; this outer limit is a second, independent stop.
    let hard_limit = plan.length() + config.timeout + GRACE + Duration::from_secs(1);
    let result = tokio::time::timeout(
        hard_limit,
        runner::run(
            &plan,
            &mut source,
            client.clone(),
            config.timeout,
            GRACE,
            runner::Pacing::Precise,
        ),
    )
    .await
    .context("the run overran its hard time limit")?;

    let scenario = match config.scenario {
        ScenarioConfig::Rank(_) => "rank",
        ScenarioConfig::Infer { .. } => "infer",
    };
    let header = Header {
        target: config.target_url.clone(),
        scenario: scenario.to_string(),
        scenario_params: params,
        seed: config.seed,
        warmup_s: config.warmup.as_secs_f64(),
        timeout_ms: u64::try_from(config.timeout.as_millis()).unwrap_or(u64::MAX),
        max_connections: config.max_connections,
    };
    let summary = Summary::new(header, result, client.connections_opened());
    if let Some(path) = &config.out {
        let json = serde_json::to_string_pretty(&summary).expect("summary serialises");
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary)
}
