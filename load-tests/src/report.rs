//! The results as people read them (stdout) and as scripts read them (JSON).

use std::fmt::Write as _;

use serde::Serialize;

use crate::runner::RunResult;
use crate::stats::{Percentiles, StageSummary};

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
            tool: concat!("cascade-load ", env!("CARGO_PKG_VERSION")),
            header,
            connections_opened,
            abandoned: result.abandoned,
            latency_from: "scheduled send time (open loop; coordinated omission corrected)",
            stages: result.stages,
            total: result.total,
        }
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
    let h = &summary.header;
    let _ = writeln!(
        out,
        "cascade-load: {} on {} ({}), seed {}, warm-up {} s, timeout {} ms, max {} connections",
        h.scenario,
        h.target,
        h.scenario_params,
        h.seed,
        h.warmup_s,
        h.timeout_ms,
        h.max_connections
    );
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
