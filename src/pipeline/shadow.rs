//! Shadow mode: a sampled copy of a stage's exact inputs goes, after the
//! live stage has scored, to candidate models that never affect the answer.
//!
//! The live path only clones the feature matrix of a sampled request and
//! offers it to a bounded queue (`try_send`): when the queue is full the
//! shadow work is dropped and counted, so shadow load is always shed before
//! live work. Dedicated threads (at a lower OS priority) drain the queue
//! and run the shadow models directly, outside the live inference pool.
//! For every comparison they record overlap@k of the two top-k lists,
//! Kendall's τ-b of the two orders, per-row score deltas, the shadow's
//! latency and errors, and optionally append a JSON line to a file.

use std::collections::BTreeMap;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Histogram};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::experiments::{stable_hash, valid_label, ModelRef};
use super::stages::{scores_from, StageModel};
use crate::model::{Tensor, TensorData};
use crate::snapshot::Snapshot;
use crate::telemetry::jsonl::JsonLines;
use crate::telemetry::metrics as m;

/// The stage a shadow watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowStage {
    /// Scores the same candidates the live filter scored.
    Filter,
    /// Scores the same candidates the live re-ranker (or, for cold-start
    /// users, the cold-start ranker) scored.
    Rerank,
}

impl ShadowStage {
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowStage::Filter => "filter",
            ShadowStage::Rerank => "rerank",
        }
    }
}

/// One shadow: which model watches which stage, for what share of requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// A metric label: 1–32 letters, digits, '_' or '-'.
    pub name: String,
    pub stage: ShadowStage,
    /// `"model"` (its serving version) or `"model@version"`.
    pub model: String,
    /// Share of requests shadowed, in [0, 1].
    pub sample_rate: f64,
}

/// `[shadow]` in the config file. `shadows` can also be replaced at run
/// time with `PUT /admin/shadow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowConfig {
    /// Shadow jobs that may wait; beyond it they are dropped and counted.
    pub queue_capacity: usize,
    /// Threads running shadow models (at a lower OS priority than serving).
    pub threads: usize,
    /// When set, one JSON line per comparison is appended here.
    pub log_file: Option<PathBuf>,
    pub shadows: Vec<ShadowSpec>,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            queue_capacity: 256,
            threads: 1,
            log_file: None,
            shadows: Vec::new(),
        }
    }
}

/// Most shadows at once (each is a metric label value).
pub const MAX_SHADOWS: usize = 8;

/// Checks a shadow list; `prefix` is where it lives (`shadow.shadows` in
/// the file, `shadows` in the admin body).
pub fn validate_shadows(
    shadows: &[ShadowSpec],
    prefix: &str,
    model_ok: &dyn Fn(&ModelRef) -> Result<(), String>,
) -> Result<(), String> {
    if shadows.len() > MAX_SHADOWS {
        return Err(format!("{prefix}: at most {MAX_SHADOWS} shadows"));
    }
    for (i, s) in shadows.iter().enumerate() {
        let at = |f: &str| format!("{prefix}[{i}].{f}");
        if !valid_label(&s.name) {
            return Err(format!(
                "{}: 1 to 32 letters, digits, '_' or '-', got {:?}",
                at("name"),
                s.name
            ));
        }
        if shadows[..i].iter().any(|o| o.name == s.name) {
            return Err(format!("{}: \"{}\" appears twice", at("name"), s.name));
        }
        if !(0.0..=1.0).contains(&s.sample_rate) || s.sample_rate.is_nan() {
            return Err(format!("{}: must be between 0 and 1", at("sample_rate")));
        }
        ModelRef::parse(&s.model)
            .and_then(|r| model_ok(&r))
            .map_err(|e| format!("{}: {e}", at("model")))?;
    }
    Ok(())
}

/// One sampled request's work for one shadow.
pub struct ShadowJob {
    pub shadow: Arc<ActiveShadow>,
    pub stage: ShadowStage,
    pub model: Arc<StageModel>,
    pub live_model: String,
    /// `[n, width]` in the shadow model's feature order.
    pub matrix: Vec<f32>,
    pub live_scores: Vec<f32>,
    /// Overlap is measured on the top `k`.
    pub k: usize,
    pub variant: Arc<str>,
    pub request_id: String,
    pub enqueued: Instant,
    /// The stage's rows, in the order of `live_scores`: the shadow's order
    /// of them goes to the feedback index, for outcome attribution.
    pub rows: Vec<u32>,
}

/// An active shadow as requests use it, built when the shadow list is set:
/// its model reference parsed, its metric handles registered.
pub struct ActiveShadow {
    pub spec: ShadowSpec,
    /// Why `spec.model` cannot be parsed (never, once validated).
    pub model: Result<ModelRef, String>,
    compared: Counter,
    dropped: Counter,
    errors: Counter,
    duration: Histogram,
    lag: Histogram,
    overlap: Histogram,
    rank_correlation: Histogram,
    score_delta: Histogram,
}

impl ActiveShadow {
    fn new(spec: ShadowSpec) -> ActiveShadow {
        let name = spec.name.clone();
        let outcome = |o: &'static str| metrics::counter!(m::SHADOW_REQUESTS_TOTAL, "shadow" => name.clone(), "outcome" => o);
        let histogram =
            |metric: &'static str| metrics::histogram!(metric, "shadow" => name.clone());
        ActiveShadow {
            model: ModelRef::parse(&spec.model),
            compared: outcome("compared"),
            dropped: outcome("dropped"),
            errors: outcome("error"),
            duration: histogram(m::SHADOW_DURATION_SECONDS),
            lag: histogram(m::SHADOW_LAG_SECONDS),
            overlap: histogram(m::SHADOW_OVERLAP),
            rank_correlation: histogram(m::SHADOW_RANK_CORRELATION),
            score_delta: histogram(m::SHADOW_SCORE_DELTA),
            spec,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// Running totals per shadow, for `GET /admin/shadow`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShadowStats {
    pub compared: u64,
    pub dropped: u64,
    pub errors: u64,
    pub mean_overlap: f64,
    pub mean_rank_correlation: f64,
    pub mean_abs_score_delta: f64,
    pub mean_shadow_micros: f64,
}

impl ShadowStats {
    fn add(&mut self, c: &Comparison, micros: f64) {
        self.compared += 1;
        let n = self.compared as f64;
        let mean = |old: f64, x: f64| old + (x - old) / n;
        self.mean_overlap = mean(self.mean_overlap, c.overlap);
        self.mean_rank_correlation = mean(self.mean_rank_correlation, c.tau);
        self.mean_abs_score_delta = mean(self.mean_abs_score_delta, c.mean_abs_delta);
        self.mean_shadow_micros = mean(self.mean_shadow_micros, micros);
    }
}

/// The shadow queue, its workers, and the active shadow list.
pub struct ShadowRunner {
    tx: SyncSender<ShadowJob>,
    depth: Arc<AtomicUsize>,
    active: Snapshot<Vec<Arc<ActiveShadow>>>,
    stats: Arc<Mutex<BTreeMap<String, ShadowStats>>>,
    config: ShadowConfig,
}

impl ShadowRunner {
    /// Starts the worker threads. The log file, when configured, must open.
    /// `feedback` learns each shadow's order of the rows (for the shadow
    /// report on outcomes).
    pub fn start(
        config: &ShadowConfig,
        feedback: Option<Arc<crate::feedback::Feedback>>,
    ) -> Result<ShadowRunner, String> {
        let (tx, rx) = sync_channel::<ShadowJob>(config.queue_capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(Mutex::new(BTreeMap::new()));
        let log = match &config.log_file {
            None => None,
            Some(path) => Some(Arc::new(Mutex::new(JsonLines::open(path).map_err(
                |e| format!("shadow.log_file: cannot open for appending: {}", e.kind()),
            )?))),
        };
        for i in 0..config.threads.max(1) {
            let (rx, depth, stats, log) = (rx.clone(), depth.clone(), stats.clone(), log.clone());
            let feedback = feedback.clone();
            std::thread::Builder::new()
                .name(format!("shadow-{i}"))
                .spawn(move || worker(rx, depth, stats, log, feedback))
                .map_err(|e| format!("shadow: cannot start a worker thread: {e}"))?;
        }
        let runner = ShadowRunner {
            tx,
            depth,
            active: Snapshot::default(),
            stats,
            config: config.clone(),
        };
        runner.set(config.shadows.clone());
        Ok(runner)
    }

    /// Replaces the active shadows (already validated).
    pub fn set(&self, shadows: Vec<ShadowSpec>) {
        tracing::info!(shadows = ?shadows.iter().map(|s| &s.name).collect::<Vec<_>>(), "shadow set changed");
        let active: Vec<_> = shadows
            .into_iter()
            .map(|s| Arc::new(ActiveShadow::new(s)))
            .collect();
        {
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            for s in &active {
                stats.entry(s.spec.name.clone()).or_default();
                // Every outcome is exported from the start, at 0.
                for c in [&s.compared, &s.dropped, &s.errors] {
                    c.increment(0);
                }
            }
        }
        self.active.store(Arc::new(active));
    }

    /// The active shadows as they were set.
    pub fn active(&self) -> Vec<ShadowSpec> {
        self.active.load().iter().map(|s| s.spec.clone()).collect()
    }

    /// The shadows of `stage` that sample this request (a stable draw from
    /// the request id, so a retried request is shadowed alike).
    pub fn sampled(&self, stage: ShadowStage, request_id: &str) -> Vec<Arc<ActiveShadow>> {
        let active = self.active.load();
        active
            .iter()
            .filter(|a| {
                let s = &a.spec;
                s.stage == stage
                    && s.sample_rate > 0.0
                    && (s.sample_rate >= 1.0
                        || ((stable_hash(&s.name, request_id) >> 11) as f64 / (1u64 << 53) as f64)
                            < s.sample_rate)
            })
            .cloned()
            .collect()
    }

    /// Offers a job without waiting; a full queue drops it (counted).
    pub fn offer(&self, job: ShadowJob) {
        let shadow = job.shadow.clone();
        // Counted before sending: a worker may take the job (and count it
        // down) before `try_send` returns.
        let d = self.depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => metrics::gauge!(m::SHADOW_QUEUE_DEPTH).set(d.saturating_add(1) as f64),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                self.count(shadow.name(), |s| s.dropped += 1);
                shadow.dropped.increment(1);
            }
        }
    }

    /// Counts a shadow error found on the live side (its model cannot be
    /// prepared for this request).
    pub fn error(&self, shadow: &ActiveShadow, why: &str) {
        tracing::debug!(shadow = shadow.name(), error = why, "shadow not run");
        self.count(shadow.name(), |s| s.errors += 1);
        shadow.errors.increment(1);
    }

    fn count(&self, shadow: &str, f: impl FnOnce(&mut ShadowStats)) {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        match stats.get_mut(shadow) {
            Some(s) => f(s),
            None => f(stats.entry(shadow.to_string()).or_default()),
        }
    }

    /// What `GET /admin/shadow` shows.
    pub fn describe(&self) -> serde_json::Value {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        json!({
            "shadows": self.active(),
            "queue_capacity": self.config.queue_capacity,
            "queue_depth": self.depth.load(Ordering::Relaxed),
            "stats": stats,
        })
    }

    /// Jobs waiting or running.
    pub fn pending(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }
}

fn worker(
    rx: Arc<Mutex<Receiver<ShadowJob>>>,
    depth: Arc<AtomicUsize>,
    stats: Arc<Mutex<BTreeMap<String, ShadowStats>>>,
    log: Option<Arc<Mutex<JsonLines<std::fs::File>>>>,
    feedback: Option<Arc<crate::feedback::Feedback>>,
) {
    lower_priority();
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let lag = job.enqueued.elapsed();
        let started = Instant::now();
        let outcome = run_shadow(&job);
        let took = started.elapsed();
        let d = depth.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        metrics::gauge!(m::SHADOW_QUEUE_DEPTH).set(d as f64);
        let shadow = &*job.shadow;
        let name = shadow.name();
        shadow.duration.record(took.as_secs_f64());
        shadow.lag.record(lag.as_secs_f64());
        let mut line = json!({
            "ts_ms": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            "request_id": job.request_id,
            "variant": &*job.variant,
            "shadow": name,
            "stage": job.stage.as_str(),
            "live_model": job.live_model,
            "shadow_model": job.model.label(),
            "rows": job.live_scores.len(),
            "k": job.k,
            "shadow_micros": took.as_micros() as u64,
        });
        {
            let mut stats = stats.lock().unwrap_or_else(|e| e.into_inner());
            let s = stats.entry(name.to_string()).or_default();
            match &outcome {
                Ok(c) => s.add(c, took.as_micros() as f64),
                Err(_) => s.errors += 1,
            }
        }
        match outcome {
            Ok(c) => {
                if let Some(feedback) = &feedback {
                    let ranked: Box<[u32]> = c
                        .order
                        .iter()
                        .filter_map(|&i| job.rows.get(i).copied())
                        .collect();
                    feedback.shadow_ranked(
                        &job.request_id,
                        shadow.spec.name.as_str().into(),
                        ranked,
                    );
                }
                shadow.compared.increment(1);
                shadow.overlap.record(c.overlap);
                shadow.rank_correlation.record(c.tau);
                for d in &c.deltas {
                    shadow.score_delta.record(*d as f64);
                }
                line["overlap"] = json!(c.overlap);
                line["kendall_tau"] = json!(c.tau);
                line["mean_abs_score_delta"] = json!(c.mean_abs_delta);
            }
            Err(e) => {
                tracing::debug!(shadow = %name, error = %e, "shadow model failed");
                shadow.errors.increment(1);
                line["error"] = json!(e);
            }
        }
        if let Some(log) = &log {
            let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = file.append(&line) {
                tracing::warn!(error = %e, "shadow log write failed");
            }
        }
    }
}

/// Linux lets one thread be niced alone: shadow threads yield the CPU to
/// the serving threads when both want it.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its integer arguments; `who = 0` is
    // the calling thread on Linux.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

fn run_shadow(job: &ShadowJob) -> Result<Comparison, String> {
    let model = job.model.model();
    let (Some(input), Some(output)) = (&model.spec.input, &model.spec.output) else {
        return Err("shadow model has no feature input / score output".into());
    };
    let n = job.live_scores.len();
    let tensor = Tensor::new(
        input.name.clone(),
        vec![n, job.model.features().width()],
        TensorData::F32(job.matrix.clone()),
    );
    let outputs = model.backend.run(vec![tensor]).map_err(|e| e.to_string())?;
    let scores = scores_from(outputs, &output.name, n)?;
    if scores.iter().any(|s| !s.is_finite()) {
        return Err("shadow model produced a non-finite score".into());
    }
    Ok(compare(&job.live_scores, &scores, job.k))
}

/// How a shadow's scores of the same rows compare with the live ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Row indices in the shadow's order (best first; ties by index).
    pub order: Vec<usize>,
    /// |top-k(live) ∩ top-k(shadow)| / k.
    pub overlap: f64,
    /// Kendall's τ-b of the two orders (1 = same order, −1 = reversed).
    pub tau: f64,
    /// shadow − live, per row.
    pub deltas: Vec<f32>,
    pub mean_abs_delta: f64,
}

/// Row indices ordered by score, descending; ties by index.
fn order(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

pub fn compare(live: &[f32], shadow: &[f32], k: usize) -> Comparison {
    let n = live.len().min(shadow.len());
    let k = k.min(n);
    let shadow_order = order(&shadow[..n]);
    let overlap = if k == 0 {
        1.0
    } else {
        let top_live = &order(&live[..n])[..k];
        let mut in_live = vec![false; n];
        for &i in top_live {
            in_live[i] = true;
        }
        shadow_order[..k].iter().filter(|&&i| in_live[i]).count() as f64 / k as f64
    };
    let deltas: Vec<f32> = (0..n).map(|i| shadow[i] - live[i]).collect();
    let mean_abs_delta = if n == 0 {
        0.0
    } else {
        deltas.iter().map(|d| d.abs() as f64).sum::<f64>() / n as f64
    };
    Comparison {
        order: shadow_order,
        overlap,
        tau: kendall_tau_b(&live[..n], &shadow[..n]),
        deltas,
        mean_abs_delta,
    }
}

/// Kendall's τ-b, O(n²): stage lists are at most a few hundred rows and
/// this runs on the shadow thread. 1.0 when either side has no pairs.
pub fn kendall_tau_b(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (mut concordant, mut discordant, mut ties_a, mut ties_b) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let da = a[i].total_cmp(&a[j]) as i64;
            let db = b[i].total_cmp(&b[j]) as i64;
            match (da, db) {
                (0, 0) => {}
                (0, _) => ties_a += 1,
                (_, 0) => ties_b += 1,
                _ if da == db => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    let n1 = (concordant + discordant + ties_a) as f64;
    let n2 = (concordant + discordant + ties_b) as f64;
    if n1 == 0.0 || n2 == 0.0 {
        return 1.0;
    }
    (concordant - discordant) as f64 / (n1 * n2).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_scores_agree_fully() {
        let s = [0.9, 0.1, 0.5, 0.7, 0.3];
        let c = compare(&s, &s, 3);
        assert_eq!(c.overlap, 1.0);
        assert!((c.tau - 1.0).abs() < 1e-12);
        assert_eq!(c.mean_abs_delta, 0.0);
    }

    #[test]
    fn reversed_scores_disagree_fully() {
        let live = [0.1, 0.2, 0.3, 0.4];
        let shadow = [0.4, 0.3, 0.2, 0.1];
        let c = compare(&live, &shadow, 2);
        assert_eq!(c.overlap, 0.0);
        assert!((c.tau + 1.0).abs() < 1e-12);
        assert!((c.mean_abs_delta - 0.2).abs() < 1e-6);
    }

    #[test]
    fn tau_b_matches_a_hand_count() {
        // Pairs: (0,1) C, (0,2) D, (1,2) D → τ = (1 − 2) / 3.
        let t = kendall_tau_b(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]);
        assert!((t - 1.0 / 3.0).abs() < 1e-12, "{t}");
        // One tie on the shadow side: C=2, D=0, ties_b=1 → 2 / sqrt(3 · 2).
        let t = kendall_tau_b(&[1.0, 2.0, 3.0], &[1.0, 2.0, 2.0]);
        assert!((t - 2.0 / 6f64.sqrt()).abs() < 1e-12, "{t}");
        assert_eq!(kendall_tau_b(&[], &[]), 1.0);
    }

    #[test]
    fn overlap_counts_shared_top_items() {
        let live = [0.9, 0.8, 0.7, 0.1, 0.0];
        let shadow = [0.9, 0.1, 0.7, 0.8, 0.0];
        // live top-3 {0,1,2}, shadow top-3 {0,3,2}.
        assert!((compare(&live, &shadow, 3).overlap - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(compare(&live, &shadow, 0).overlap, 1.0);
    }

    #[test]
    fn shadow_lists_are_validated_by_field() {
        let ok = |_: &ModelRef| Ok(());
        let spec = |name: &str, rate: f64| ShadowSpec {
            name: name.into(),
            stage: ShadowStage::Rerank,
            model: "ranker@1".into(),
            sample_rate: rate,
        };
        assert!(validate_shadows(&[spec("a", 1.0)], "shadows", &ok).is_ok());
        let e = validate_shadows(&[spec("a", 1.5)], "shadows", &ok).unwrap_err();
        assert!(e.starts_with("shadows[0].sample_rate"), "{e}");
        let e = validate_shadows(&[spec("a", 1.0), spec("a", 1.0)], "shadows", &ok).unwrap_err();
        assert!(e.starts_with("shadows[1].name"), "{e}");
        let e =
            validate_shadows(&[spec("a", 1.0)], "shadows", &|_| Err("nope".into())).unwrap_err();
        assert_eq!(e, "shadows[0].model: nope");
    }
}
