//! The ranking log (`[feedback] log_dir`): the durable record of what was
//! shown and why — one JSON line per sampled answer (cache hits too: they
//! were shown), with every shown item's position, its score from each
//! stage and the feature row each stage's model read for it — and of the
//! outcomes that named answers. `cascade dataset` joins the two into
//! training rows, so the next model trains on the values that were served.
//!
//! Written off the hot path by one thread through a bounded queue: a full
//! queue drops the record (counted in `cascade_rankings_logged_total
//! {result="dropped"}`), never waits; a failed write (a full or broken
//! disk) is counted (`result="failed"`) and moves to a new file, so a
//! line cut short stays at the end of the old one. Each line is one
//! `write` (a crash leaves whole lines), and a file opened after a crash
//! has its torn last line ended first (as the shadow log). Files
//! (`rankings-<epoch ms>.jsonl`) rotate past `log_max_bytes` or
//! `log_max_age`. A model's feature names are written once per file, in a
//! `{"type": "features"}` line before the first record that uses them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::telemetry::jsonl::JsonLines;
use crate::telemetry::metrics as m;

/// One stage's part of a served answer: for each shown item (answer
/// order), its score and the feature row the stage's model read (`None`:
/// the item was not among the stage's rows).
#[derive(Debug)]
pub struct StageServed {
    /// The answer's `models` key: `filter`, `ranker` or `cold_start`.
    pub key: &'static str,
    /// `name@version`.
    pub model: Arc<str>,
    pub names: Arc<[String]>,
    pub scores: Vec<Option<f32>>,
    pub rows: Vec<Option<Box<[f32]>>>,
}

/// What each stage read and scored for the items of one computed answer.
#[derive(Debug, Default)]
pub struct Served {
    pub stages: Vec<StageServed>,
}

/// One shown answer.
#[derive(Debug)]
pub struct RankingRecord {
    pub request_id: String,
    pub ts_ms: i64,
    pub user_id: Option<String>,
    pub context: Map<String, Value>,
    pub variant: Arc<str>,
    pub models: Map<String, Value>,
    pub fallback: Option<&'static str>,
    pub cached: bool,
    /// (item id, final score), in answer order.
    pub items: Vec<(String, f32)>,
    /// Absent for a cache hit of an answer computed unsampled.
    pub served: Option<Arc<Served>>,
}

/// One accepted outcome (attributed or not).
#[derive(Debug, Serialize)]
pub struct OutcomeRecord {
    pub id: String,
    pub ts_ms: i64,
    pub user_id: String,
    pub item_id: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
}

enum Line {
    Ranking(Box<RankingRecord>),
    Outcome(Box<OutcomeRecord>),
}

/// `[feedback]`'s ranking-log settings.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub dir: PathBuf,
    pub sample_rate: f64,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub queue: usize,
}

pub struct RankingLog {
    tx: SyncSender<Line>,
    sample_rate: f64,
    /// `cascade_rankings_logged_total{result}`: dropped here; written and
    /// failed by the writer.
    dropped: metrics::Counter,
}

fn logged(result: &'static str) -> metrics::Counter {
    let c = metrics::counter!(m::RANKINGS_LOGGED_TOTAL, "result" => result);
    c.increment(0);
    c
}

impl RankingLog {
    /// Creates the folder and starts the writer.
    pub fn start(settings: LogSettings) -> Result<RankingLog, String> {
        std::fs::create_dir_all(&settings.dir)
            .map_err(|e| format!("feedback.log_dir: cannot create the folder: {}", e.kind()))?;
        let (tx, rx) = sync_channel(settings.queue.max(1));
        let sample_rate = settings.sample_rate;
        let writer = Writer {
            settings,
            file: None,
            written: logged("written"),
            failed: logged("failed"),
            named: HashSet::new(),
        };
        std::thread::Builder::new()
            .name("ranking-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("feedback.log_dir: cannot start the writer: {e}"))?;
        Ok(RankingLog {
            tx,
            sample_rate,
            dropped: logged("dropped"),
        })
    }

    /// Whether the answer to `request_id` is logged (a stable draw, so a
    /// request's record and its stages' capture agree).
    pub fn sampled(&self, request_id: &str) -> bool {
        self.sample_rate >= 1.0
            || (self.sample_rate > 0.0
                && ((crate::pipeline::experiments::stable_hash("ranking-log", request_id) >> 11)
                    as f64
                    / (1u64 << 53) as f64)
                    < self.sample_rate)
    }

    fn offer(&self, line: Line) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.increment(1)
            }
        }
    }

    /// Hands a shown answer to the writer; never waits.
    pub fn ranking(&self, record: RankingRecord) {
        self.offer(Line::Ranking(Box::new(record)));
    }

    /// Hands an accepted outcome to the writer; never waits.
    pub fn outcome(&self, record: OutcomeRecord) {
        self.offer(Line::Outcome(Box::new(record)));
    }
}

struct Open {
    log: JsonLines<std::fs::File>,
    bytes: u64,
    since: Instant,
}

struct Writer {
    settings: LogSettings,
    file: Option<Open>,
    written: metrics::Counter,
    failed: metrics::Counter,
    /// Models whose feature names the current file holds.
    named: HashSet<Arc<str>>,
}

/// A record as its line is written.
#[derive(Serialize)]
struct RankingLine<'a> {
    r#type: &'static str,
    request_id: &'a str,
    ts_ms: i64,
    user_id: Option<&'a str>,
    context: &'a Map<String, Value>,
    variant: &'a str,
    models: &'a Map<String, Value>,
    fallback: Option<&'static str>,
    cached: bool,
    /// False when no feature rows were kept for this answer.
    features: bool,
    items: Vec<ItemLine<'a>>,
}

#[derive(Serialize)]
struct ItemLine<'a> {
    item_id: &'a str,
    position: usize,
    score: F32,
    /// Per stage (`filter`, `ranker`, …): the score it gave.
    scores: Pairs<'a, F32>,
    /// Per model (`name@version`): the row it read.
    features: Pairs<'a, Row<'a>>,
}

/// An `f32` written as the shortest decimal that reads back the same (an
/// `f64` detour writes 17 digits: twice the bytes, and the serialisation
/// was the log's main cost); non-finite as null.
#[derive(Clone, Copy)]
struct F32(f32);

impl Serialize for F32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_finite() {
            s.serialize_f32(self.0)
        } else {
            s.serialize_none()
        }
    }
}

/// A feature row.
struct Row<'a>(&'a [f32]);

impl Serialize for Row<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|&x| F32(x)))
    }
}

/// A small map, in order, without building one.
struct Pairs<'a, T>(Vec<(&'a str, T)>);

impl<T: Serialize> Serialize for Pairs<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// How long the writer sleeps when the queue is empty. It polls instead
/// of blocking: a blocked receiver makes every ranking's send wake it (a
/// futex and a context switch per record, which cost the serving threads
/// more than the writing did).
const POLL: Duration = Duration::from_millis(5);

impl Writer {
    fn run(mut self, rx: Receiver<Line>) {
        loop {
            let line = match rx.try_recv() {
                Ok(line) => line,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
            };
            if let Err(e) = self.write(&line) {
                self.failed.increment(1);
                if let Some(suppressed) =
                    crate::telemetry::throttle("ranking log write", Duration::from_secs(10))
                {
                    tracing::warn!(error = %e, suppressed, "ranking log write failed; the record is dropped (rankings are not affected)");
                }
                // A line may be cut short in this file: go on in a new one.
                self.file = None;
            } else {
                self.written.increment(1);
            }
        }
    }

    /// The file to write to: a new one past the size or age bound.
    fn file(&mut self) -> std::io::Result<&mut Open> {
        let expired = self.file.as_ref().is_some_and(|f| {
            f.bytes >= self.settings.max_bytes || f.since.elapsed() >= self.settings.max_age
        });
        if expired || self.file.is_none() {
            let path = new_file(&self.settings.dir);
            self.file = Some(Open {
                log: JsonLines::open(&path)?,
                bytes: 0,
                since: Instant::now(),
            });
            self.named.clear();
        }
        Ok(self.file.as_mut().expect("just opened"))
    }

    fn append(&mut self, value: &impl Serialize) -> std::io::Result<()> {
        let f = self.file()?;
        let n = f.log.append(value)?;
        f.bytes += n as u64;
        Ok(())
    }

    fn write(&mut self, line: &Line) -> std::io::Result<()> {
        match line {
            Line::Outcome(o) => {
                #[derive(Serialize)]
                struct Out<'a> {
                    r#type: &'static str,
                    #[serde(flatten)]
                    outcome: &'a OutcomeRecord,
                }
                self.append(&Out {
                    r#type: "outcome",
                    outcome: o,
                })
            }
            Line::Ranking(r) => {
                // Rotate first, so the names go into the file the record does.
                self.file()?;
                if let Some(served) = &r.served {
                    for s in &served.stages {
                        if !self.named.contains(&s.model) {
                            self.append(&serde_json::json!({
                                "type": "features", "model": &*s.model, "names": &*s.names,
                            }))?;
                            self.named.insert(s.model.clone());
                        }
                    }
                }
                let items = r
                    .items
                    .iter()
                    .enumerate()
                    .map(|(i, (id, score))| {
                        let stages = || r.served.iter().flat_map(|s| &s.stages);
                        ItemLine {
                            item_id: id,
                            position: i,
                            score: F32(*score),
                            scores: Pairs(
                                stages()
                                    .filter_map(|s| Some((s.key, F32((*s.scores.get(i)?)?))))
                                    .collect(),
                            ),
                            features: Pairs(
                                stages()
                                    .filter_map(|s| {
                                        Some((&*s.model, Row(s.rows.get(i)?.as_deref()?)))
                                    })
                                    .collect(),
                            ),
                        }
                    })
                    .collect();
                self.append(&RankingLine {
                    r#type: "ranking",
                    request_id: &r.request_id,
                    ts_ms: r.ts_ms,
                    user_id: r.user_id.as_deref(),
                    context: &r.context,
                    variant: &r.variant,
                    models: &r.models,
                    fallback: r.fallback,
                    cached: r.cached,
                    features: r.served.is_some(),
                    items,
                })
            }
        }
    }
}

/// A new file's path: `rankings-<epoch ms>.jsonl` (a later one if taken).
fn new_file(dir: &Path) -> PathBuf {
    let mut ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    loop {
        let path = dir.join(format!("rankings-{ms:013}.jsonl"));
        if !path.exists() {
            return path;
        }
        ms += 1;
    }
}

/// The log files of `dir`, oldest first.
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rankings-") && n.ends_with(".jsonl"))
        })
        .collect();
    out.sort();
    Ok(out)
}
