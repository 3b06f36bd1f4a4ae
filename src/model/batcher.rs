//! Dynamic batching: rows bound for one model from concurrent requests are
//! bulked into one inference.
//!
//! An actor per model version owns a bounded queue. A batch opens with the
//! oldest waiting job, then waits for a free worker: batches are *pulled* by
//! a worker, so while every worker is busy the batch keeps growing instead
//! of waiting closed. With a worker in hand it closes when it holds
//! `max_batch_rows` rows or when that oldest job has waited `max_wait` — the
//! actor waits on the channel and a timer together (`select!`), never by
//! polling. Only then are jobs whose caller has gone away or whose deadline
//! has passed dropped (and counted): checked after every wait, so no job
//! runs for a caller that left while its batch waited for a worker. A job never shares a batch with a job for another model version,
//! so every caller is scored by the version it was routed to. A full queue
//! refuses the job at once: the caller degrades or answers 503, the queue
//! never grows without bound.
//!
//! With `max_wait` zero a job that finds the queue empty and a worker free
//! has nothing to wait for and no one to share a batch with: the caller
//! runs it as a batch of one itself, without the two task hand-offs through
//! the actor (tens of µs of wake-ups per request on a busy box). Under load
//! the workers are busy, jobs queue, and the actor bulks them as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::executor::InferencePool;
use super::{LoadedModel, ModelError, Tensor, TensorData};
use crate::telemetry::metrics as m;

#[derive(Debug, Clone)]
pub struct BatchPolicy {
    pub max_batch_rows: usize,
    pub max_wait: Duration,
    /// Jobs (not rows) that may wait; beyond it submissions are refused.
    pub queue_capacity: usize,
    /// Batches of this model that may run at once.
    pub workers: usize,
}

/// One caller's rows and where their scores go.
struct Job {
    model: Arc<LoadedModel>,
    rows: Vec<f32>,
    n: usize,
    enqueued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<Scored, BatchError>>,
}

/// A caller's scores, and the size of the batch they were computed in.
#[derive(Debug, Clone)]
pub struct Scored {
    pub scores: Vec<f32>,
    pub batch_rows: usize,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("batch queue full")]
    Overloaded,
    #[error("deadline passed before the batch ran")]
    Deadline,
    #[error("{0}")]
    Model(String),
    #[error("batcher stopped")]
    Closed,
}

/// Handle to a model's batching actor. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    drops: Arc<Drops>,
    stats: Arc<Stats>,
    /// What a caller needs to run its job alone when the actor is idle
    /// (`None` when `max_wait` is not zero: jobs wait for company).
    direct: Option<Arc<Direct>>,
}

/// The actor's workers, pool and output, shared with its handles.
struct Direct {
    workers: Arc<Semaphore>,
    pool: InferencePool,
    output: String,
    wait: metrics::Histogram,
}

/// `cascade_batch_rows_dropped_total` of one batcher, by reason,
/// registered when it starts (and exported from the start, at zero).
struct Drops {
    deadline: metrics::Counter,
    caller_gone: metrics::Counter,
    overload: metrics::Counter,
}

impl Drops {
    fn register(label: &str) -> Drops {
        let reason = |r: &'static str| {
            let c = metrics::counter!(m::BATCH_ROWS_DROPPED_TOTAL, "model" => label.to_string(), "reason" => r);
            c.increment(0);
            c
        };
        Drops {
            deadline: reason("deadline"),
            caller_gone: reason("caller_gone"),
            overload: reason("overload"),
        }
    }
}

/// What an actor did, for tests and benches (metrics carry the same).
#[derive(Debug, Default)]
struct Stats {
    rows_run: AtomicU64,
    rows_dropped: AtomicU64,
}

impl Batcher {
    /// Starts the actor on the current tokio runtime. `output` names the
    /// score output; `label` is the model name for metrics.
    pub fn spawn(label: &str, output: &str, policy: BatchPolicy, pool: InferencePool) -> Batcher {
        let workers = Arc::new(Semaphore::new(policy.workers.max(1)));
        Batcher::spawn_with_workers(label, output, policy, pool, workers)
    }

    /// As [`Batcher::spawn`], with the semaphore whose permits are its workers.
    fn spawn_with_workers(
        label: &str,
        output: &str,
        policy: BatchPolicy,
        pool: InferencePool,
        workers: Arc<Semaphore>,
    ) -> Batcher {
        let drops = Arc::new(Drops::register(label));
        let (tx, rx) = mpsc::channel(policy.queue_capacity.max(1));
        let stats = Arc::new(Stats::default());
        let wait = metrics::histogram!(m::BATCH_QUEUE_WAIT_SECONDS, "model" => label.to_string());
        let direct = policy.max_wait.is_zero().then(|| {
            Arc::new(Direct {
                workers: workers.clone(),
                pool: pool.clone(),
                output: output.to_string(),
                wait: wait.clone(),
            })
        });
        let actor = Actor {
            policy,
            pool,
            output: output.to_string(),
            drops: drops.clone(),
            workers,
            stats: stats.clone(),
            depth: metrics::gauge!(m::BATCH_QUEUE_DEPTH, "model" => label.to_string()),
            wait,
        };
        tokio::spawn(actor.run(rx));
        Batcher {
            tx,
            drops,
            stats,
            direct,
        }
    }

    /// Rows run through the model, and rows dropped before running.
    pub fn rows(&self) -> (u64, u64) {
        (
            self.stats.rows_run.load(Ordering::Relaxed),
            self.stats.rows_dropped.load(Ordering::Relaxed),
        )
    }

    /// Queues `n` rows (`rows.len() == n × width`) for `model` and waits for
    /// their scores. Refused at once when the queue is full.
    pub async fn score(
        &self,
        model: Arc<LoadedModel>,
        rows: Vec<f32>,
        n: usize,
        deadline: Instant,
    ) -> Result<Scored, BatchError> {
        if let Some(direct) = &self.direct {
            // Nothing queued (every send permit free) and a worker free: no
            // batch could form, run it here.
            if self.tx.capacity() == self.tx.max_capacity() {
                if let Ok(permit) = direct.workers.clone().try_acquire_owned() {
                    return self.run_alone(direct, permit, model, rows, n).await;
                }
            }
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            model,
            rows,
            n,
            enqueued: Instant::now(),
            deadline,
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.drops.overload.increment(n as u64);
                return Err(BatchError::Overloaded);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(BatchError::Closed),
        }
        answer.await.unwrap_or(Err(BatchError::Closed))
    }

    /// One caller's rows as a batch of their own, on the caller's task.
    async fn run_alone(
        &self,
        direct: &Direct,
        _permit: tokio::sync::OwnedSemaphorePermit,
        model: Arc<LoadedModel>,
        rows: Vec<f32>,
        n: usize,
    ) -> Result<Scored, BatchError> {
        direct.wait.record(0.0);
        self.stats.rows_run.fetch_add(n as u64, Ordering::Relaxed);
        let width = rows.len() / n.max(1);
        match infer(&direct.pool, &direct.output, model, rows, n, width).await {
            Ok(scores) => Ok(Scored {
                scores,
                batch_rows: n,
            }),
            Err(e) => Err(BatchError::Model(e.to_string())),
        }
    }
}

/// The actor's settings and what it shares with its handles.
struct Actor {
    policy: BatchPolicy,
    pool: InferencePool,
    output: String,
    drops: Arc<Drops>,
    workers: Arc<Semaphore>,
    stats: Arc<Stats>,
    depth: metrics::Gauge,
    wait: metrics::Histogram,
}

impl Actor {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let policy = &self.policy;
        let mut carry: Option<Job> = None;
        loop {
            let first = match carry.take() {
                Some(job) => job,
                None => match rx.recv().await {
                    Some(job) => job,
                    None => return,
                },
            };
            // A free worker pulls the batch: while all are busy the batch
            // stays open and keeps what arrives.
            let permit = match self.workers.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return,
            };
            let close_at = first.enqueued + policy.max_wait;
            let mut rows = first.n;
            let mut jobs = vec![first];
            while rows < policy.max_batch_rows {
                // Take what is already queued without touching the timer;
                // wait (channel and timer together) only while the oldest
                // job still has time left. Tokio's timer ticks in whole
                // milliseconds, so a batch that is already due must never
                // wait on it.
                let job = match rx.try_recv() {
                    Ok(job) => job,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if Instant::now() >= close_at {
                            break;
                        }
                        tokio::select! {
                            biased;
                            next = rx.recv() => match next {
                                Some(job) => job,
                                None => break,
                            },
                            _ = tokio::time::sleep_until(close_at) => break,
                        }
                    }
                };
                let same_version = Arc::ptr_eq(&job.model, &jobs[0].model);
                if same_version && rows + job.n <= policy.max_batch_rows {
                    rows += job.n;
                    jobs.push(job);
                } else {
                    carry = Some(job);
                    break;
                }
            }
            self.depth
                .set(rx.len() as f64 + carry.is_some() as u8 as f64);

            // Checked now, after every wait: callers that left or ran out
            // of time while the batch waited are not run.
            let now = Instant::now();
            let mut live = Vec::with_capacity(jobs.len());
            for job in jobs {
                let dropped = if job.reply.is_closed() {
                    &self.drops.caller_gone
                } else if job.deadline <= now {
                    &self.drops.deadline
                } else {
                    self.wait.record((now - job.enqueued).as_secs_f64());
                    live.push(job);
                    continue;
                };
                dropped.increment(job.n as u64);
                self.stats
                    .rows_dropped
                    .fetch_add(job.n as u64, Ordering::Relaxed);
                let _ = job.reply.send(Err(BatchError::Deadline));
            }
            if live.is_empty() {
                continue;
            }
            let n: usize = live.iter().map(|j| j.n).sum();
            self.stats.rows_run.fetch_add(n as u64, Ordering::Relaxed);
            let (pool, output) = (self.pool.clone(), self.output.clone());
            tokio::spawn(async move {
                let _permit = permit;
                run_batch(&pool, &output, live).await;
            });
        }
    }
}

/// Concatenates the jobs' rows, runs one inference, and hands each caller
/// exactly its own slice of the scores, in order.
async fn run_batch(pool: &InferencePool, output: &str, mut jobs: Vec<Job>) {
    let model = jobs[0].model.clone();
    let total: usize = jobs.iter().map(|j| j.n).sum();
    let width = jobs[0].rows.len() / jobs[0].n.max(1);
    let matrix = if jobs.len() == 1 {
        std::mem::take(&mut jobs[0].rows)
    } else {
        let mut matrix = Vec::with_capacity(total * width);
        for job in &jobs {
            matrix.extend_from_slice(&job.rows);
        }
        matrix
    };
    let result = infer(pool, output, model, matrix, total, width).await;
    match result {
        Ok(scores) => {
            if jobs.len() == 1 {
                let job = jobs.pop().expect("one job");
                let _ = job.reply.send(Ok(Scored {
                    scores,
                    batch_rows: total,
                }));
                return;
            }
            let mut offset = 0;
            for job in jobs {
                let mine = scores[offset..offset + job.n].to_vec();
                offset += job.n;
                let _ = job.reply.send(Ok(Scored {
                    scores: mine,
                    batch_rows: total,
                }));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for job in jobs {
                let _ = job.reply.send(Err(BatchError::Model(msg.clone())));
            }
        }
    }
}

/// One inference of `total` rows of `width` features; the `output` scores.
async fn infer(
    pool: &InferencePool,
    output: &str,
    model: Arc<LoadedModel>,
    matrix: Vec<f32>,
    total: usize,
    width: usize,
) -> Result<Vec<f32>, ModelError> {
    let input = model
        .spec
        .input
        .as_ref()
        .map(|i| i.name.clone())
        .unwrap_or_else(|| model.backend.inputs()[0].name.clone());
    let tensor = Tensor::new(input, vec![total, width], TensorData::F32(matrix));
    pool.run(model, vec![tensor]).await.and_then(|outs| {
        match outs.into_iter().find(|t| t.name == output).map(|t| t.data) {
            Some(TensorData::F32(v)) if v.len() == total => Ok(v),
            _ => Err(ModelError::Inference(format!(
                "output \"{output}\" missing or not one FP32 score per row"
            ))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backend::BackendKind;
    use crate::model::repository::{LoadOptions, Registry};

    fn filter() -> Arc<LoadedModel> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let options = LoadOptions {
            default_backend: BackendKind::Tract,
            backend_overrides: Default::default(),
            backend: Default::default(),
            quality_gate: None,
        };
        Registry::load(&root, &options, None)
            .unwrap()
            .get("filter", None)
            .unwrap()
    }

    fn policy(max_rows: usize, wait_ms: u64) -> BatchPolicy {
        BatchPolicy {
            max_batch_rows: max_rows,
            max_wait: Duration::from_millis(wait_ms),
            queue_capacity: 1024,
            workers: 1,
        }
    }

    /// Deterministic distinct rows: caller `c`, row `r`, 6 features.
    fn rows(c: usize, n: usize) -> Vec<f32> {
        (0..n * 6)
            .map(|i| ((c * 131 + i * 17) % 97) as f32 / 97.0)
            .collect()
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_get_exactly_their_own_rows() {
        let model = filter();
        let batcher = Batcher::spawn("filter", "score", policy(256, 5), InferencePool::new(2));
        let mut tasks = Vec::new();
        for c in 0..64 {
            let (b, m) = (batcher.clone(), model.clone());
            let n = 1 + c % 7;
            tasks.push(tokio::spawn(async move {
                let got = b.score(m, rows(c, n), n, far()).await.unwrap();
                (c, n, got)
            }));
        }
        let mut bulked = false;
        for t in tasks {
            let (c, n, got) = t.await.unwrap();
            let alone = model
                .backend
                .run(vec![Tensor::new(
                    "features",
                    vec![n, 6],
                    TensorData::F32(rows(c, n)),
                )])
                .unwrap();
            let TensorData::F32(want) = &alone[0].data else {
                panic!()
            };
            assert_eq!(got.scores.len(), n, "caller {c}");
            for (g, w) in got.scores.iter().zip(want) {
                assert!((g - w).abs() <= 1e-6, "caller {c}: {g} vs {w}");
            }
            bulked |= got.batch_rows > n;
        }
        assert!(
            bulked,
            "64 simultaneous callers were bulked into shared batches"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_closes_on_max_wait_or_when_full() {
        let model = filter();
        let batcher = Batcher::spawn("filter", "score", policy(4, 10), InferencePool::new(1));
        // Two jobs 4 ms apart share a batch: the first has not waited 10 ms.
        let (b, m) = (batcher.clone(), model.clone());
        let a = tokio::spawn(async move { b.score(m, rows(1, 1), 1, far()).await });
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(4)).await;
        let (b, m) = (batcher.clone(), model.clone());
        let b2 = tokio::spawn(async move { b.score(m, rows(2, 2), 2, far()).await });
        assert_eq!(a.await.unwrap().unwrap().batch_rows, 3);
        assert_eq!(b2.await.unwrap().unwrap().batch_rows, 3);

        // A job alone waits out max_wait and runs alone.
        let started = Instant::now();
        let alone = batcher
            .score(model.clone(), rows(3, 1), 1, far())
            .await
            .unwrap();
        assert_eq!(alone.batch_rows, 1);
        assert!(started.elapsed() >= Duration::from_millis(10));

        // Rows beyond max_batch_rows go to the next batch: 2+2 then 2.
        let mut handles = Vec::new();
        for c in 0..3 {
            let (b, m) = (batcher.clone(), model.clone());
            handles.push(tokio::spawn(async move {
                b.score(m, rows(c, 2), 2, far()).await
            }));
            tokio::task::yield_now().await;
        }
        let sizes: Vec<usize> = {
            let mut v = Vec::new();
            for h in handles {
                v.push(h.await.unwrap().unwrap().batch_rows);
            }
            v
        };
        assert_eq!(sizes, [4, 4, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_rows_are_dropped_before_inference() {
        let model = filter();
        let batcher = Batcher::spawn("filter", "score", policy(64, 10), InferencePool::new(1));
        // The deadline falls inside the batch's wait: dropped, not run.
        let deadline = Instant::now() + Duration::from_millis(5);
        let r = batcher.score(model, rows(0, 3), 3, deadline).await;
        assert!(matches!(r, Err(BatchError::Deadline)), "{r:?}");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        // No actor drains this queue: the first job fills it.
        let (tx, _rx) = mpsc::channel(1);
        let batcher = Batcher {
            tx,
            drops: Arc::new(Drops::register("filter")),
            stats: Default::default(),
            direct: None,
        };
        let model = filter();
        let (b, m) = (batcher.clone(), model.clone());
        let _pending = tokio::spawn(async move { b.score(m, rows(0, 1), 1, far()).await });
        tokio::task::yield_now().await;
        let r = batcher.score(model, rows(1, 1), 1, far()).await;
        assert!(matches!(r, Err(BatchError::Overloaded)), "{r:?}");
    }

    /// With `max_wait` zero, an idle batcher's caller runs its job itself:
    /// here no actor drains the queue, and the job is still answered. With
    /// the only worker busy it queues instead.
    #[tokio::test]
    async fn an_idle_batcher_runs_a_lone_job_on_the_callers_task() {
        let (tx, _rx) = mpsc::channel(8);
        let workers = Arc::new(Semaphore::new(1));
        let batcher = Batcher {
            tx,
            drops: Arc::new(Drops::register("filter")),
            stats: Default::default(),
            direct: Some(Arc::new(Direct {
                workers: workers.clone(),
                pool: InferencePool::new(1),
                output: "score".into(),
                wait: metrics::histogram!("test_wait"),
            })),
        };
        let model = filter();
        let got = batcher
            .score(model.clone(), rows(4, 3), 3, far())
            .await
            .unwrap();
        let alone = model
            .backend
            .run(vec![Tensor::new(
                "features",
                vec![3, 6],
                TensorData::F32(rows(4, 3)),
            )])
            .unwrap();
        let TensorData::F32(want) = &alone[0].data else {
            panic!()
        };
        assert_eq!(got.batch_rows, 3);
        assert_eq!(&got.scores, want);
        assert_eq!(batcher.rows(), (3, 0));

        let held = workers.clone().acquire_owned().await.unwrap();
        let (b, m) = (batcher.clone(), model.clone());
        let queued = tokio::spawn(async move { b.score(m, rows(5, 2), 2, far()).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(batcher.tx.capacity(), 7, "the job waits in the queue");
        assert!(!queued.is_finished());
        queued.abort();
        drop(held);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_left_while_its_batch_waited_for_a_worker_is_not_run() {
        let model = filter();
        // The test holds the only worker: every batch must wait for it.
        let workers = Arc::new(Semaphore::new(1));
        let held = workers.clone().acquire_owned().await.unwrap();
        let batcher = Batcher::spawn_with_workers(
            "filter",
            "score",
            policy(64, 0),
            InferencePool::new(1),
            workers,
        );
        // B queues, its batch opens and waits for the worker; then B's
        // caller goes away.
        let (b, m) = (batcher.clone(), model.clone());
        let gone = tokio::spawn(async move { b.score(m, rows(1, 3), 3, far()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        gone.abort();
        let _ = gone.await;
        // C queues behind it; then the worker frees up.
        let (b, m) = (batcher.clone(), model.clone());
        let c = tokio::spawn(async move { b.score(m, rows(2, 2), 2, far()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        let c = c.await.unwrap().unwrap();
        assert_eq!(
            c.batch_rows, 2,
            "C ran without the rows of the caller that left"
        );
        assert_eq!(batcher.rows(), (2, 3), "3 rows dropped unrun, 2 run");
    }
}
