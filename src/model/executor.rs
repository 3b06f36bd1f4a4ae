//! Runs blocking inference off the async reactor, with a hard bound on how
//! many inferences run at once so that tract / ONNX Runtime threads never
//! oversubscribe the machine's cores.

use std::sync::Arc;
use std::time::Instant;

use std::sync::atomic::Ordering;

use tokio::sync::Semaphore;

use super::{LoadedModel, ModelError, Tensor};
use crate::telemetry::metrics as m;

/// Calls expected to finish sooner than this many µs (by the model's
/// recent cost per row) run inline instead of on a blocking thread: the
/// default of `models.inline_below_us`.
pub const INLINE_BELOW_US: u64 = 30;

/// A counting gate in front of `spawn_blocking`: at most `threads`
/// inferences run at once; the rest wait their turn (fairly, FIFO).
#[derive(Clone)]
pub struct InferencePool {
    permits: Arc<Semaphore>,
    threads: usize,
    inline_below_ns: u64,
}

impl InferencePool {
    pub fn new(threads: usize) -> InferencePool {
        let threads = threads.max(1);
        InferencePool {
            permits: Arc::new(Semaphore::new(threads)),
            threads,
            inline_below_ns: INLINE_BELOW_US * 1_000,
        }
    }

    /// Calls expected to take less than `micros` run inline (0: none do).
    pub fn with_inline_below(mut self, micros: u64) -> InferencePool {
        self.inline_below_ns = micros.saturating_mul(1_000);
        self
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `inputs` through `model` on a blocking thread, or inline when
    /// the model's recent cost says the call takes less than
    /// `models.inline_below_us`. A panic inside the backend becomes an error for
    /// this call only.
    pub async fn run(
        &self,
        model: Arc<LoadedModel>,
        inputs: Vec<Tensor>,
    ) -> Result<Vec<Tensor>, ModelError> {
        let queued = Instant::now();
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ModelError::Unavailable)?;
        let handles = model.metrics.get_or_init(|| ModelMetrics::register(&model));
        handles.queue_wait.record(queued.elapsed().as_secs_f64());
        let rows = inputs
            .first()
            .and_then(|t| t.shape.first())
            .copied()
            .unwrap_or(0);
        // A call expected to take less than inline_below_us runs here, on the
        // calling thread: a hand-off to a blocking thread and back costs
        // more than that (tens of µs of wake-ups on a busy box), and
        // feature assembly already runs here for as long.
        let estimate = model.ns_per_row.load(Ordering::Relaxed);
        let inline = estimate != u64::MAX
            && estimate.saturating_mul(rows.max(1) as u64) < self.inline_below_ns;
        let work = {
            let model = model.clone();
            move || {
                let _permit = permit;
                let started = Instant::now();
                let result = model.backend.run(inputs);
                (result, started.elapsed())
            }
        };
        let joined = if inline {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .map_err(|_| "the backend panicked".to_string())
        } else {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| e.to_string())
        };
        if let Ok((_, took)) = &joined {
            let per_row = (took.as_nanos() as u64 / rows.max(1) as u64).max(1);
            let next = if estimate == u64::MAX {
                per_row
            } else {
                (estimate * 7 + per_row) / 8
            };
            model.ns_per_row.store(next, Ordering::Relaxed);
        }
        let result = match joined {
            Ok((result, took)) => {
                handles.inference.record(took.as_secs_f64());
                handles.rows.record(rows as f64);
                result
            }
            Err(e) => Err(ModelError::Inference(format!("inference task failed: {e}"))),
        };
        if result.is_err() {
            handles.errors.increment(1);
        }
        result
    }
}

/// One model version's inference metric handles (label values fixed).
pub struct ModelMetrics {
    queue_wait: metrics::Histogram,
    inference: metrics::Histogram,
    rows: metrics::Histogram,
    errors: metrics::Counter,
}

impl ModelMetrics {
    fn register(model: &LoadedModel) -> ModelMetrics {
        let name = model.name.clone();
        ModelMetrics {
            queue_wait: metrics::histogram!(m::INFERENCE_QUEUE_WAIT_SECONDS),
            inference: metrics::histogram!(
                m::MODEL_INFERENCE_DURATION_SECONDS,
                "model" => name.clone(),
                "version" => model.version.to_string(),
                "backend" => model.backend.kind().as_str()
            ),
            rows: metrics::histogram!(m::MODEL_BATCH_ROWS, "model" => name.clone()),
            errors: metrics::counter!(m::MODEL_ERRORS_TOTAL, "model" => name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backend::FnBackend;
    use crate::model::tensor::TensorData;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A model that sleeps `cost` per call and records the thread it ran on.
    fn model(cost: Duration) -> (Arc<LoadedModel>, Arc<Mutex<Vec<std::thread::ThreadId>>>) {
        let threads = Arc::new(Mutex::new(Vec::new()));
        let ran = threads.clone();
        let probe = FnBackend(move |_: Vec<Tensor>| {
            std::thread::sleep(cost);
            ran.lock().unwrap().push(std::thread::current().id());
            Ok(Vec::new())
        });
        let spec = Arc::new(toml::from_str("").unwrap());
        let model = LoadedModel::new("probe", 1, spec, Box::new(probe), None);
        (Arc::new(model), threads)
    }

    /// The first call of a model goes to a blocking thread; once its cost
    /// is known, a cheap one runs on the calling thread and a slow one
    /// keeps going to the pool.
    #[tokio::test]
    async fn cheap_calls_run_inline_and_slow_ones_on_the_pool() {
        let pool = InferencePool::new(2);
        let here = std::thread::current().id();
        let rows = || {
            vec![Tensor::new(
                "x",
                vec![10, 1],
                TensorData::F32(vec![0.0; 10]),
            )]
        };
        // "Cheap" is relative to the threshold: a near-free call measured
        // against a 1 s one, so a preempted call on a busy test machine
        // (tests run in parallel) still counts as cheap.
        let roomy = InferencePool::new(2).with_inline_below(1_000_000);
        let (cheap, ran) = model(Duration::ZERO);
        for _ in 0..3 {
            roomy.run(cheap.clone(), rows()).await.unwrap();
        }
        let ran = ran.lock().unwrap().clone();
        assert_ne!(ran[0], here, "unknown cost: the pool");
        assert_eq!(&ran[1..], &[here, here], "cheap: inline");
        // Slow against the default threshold: a sleep never takes less.
        let (slow, ran) = model(Duration::from_micros(INLINE_BELOW_US * 2));
        for _ in 0..2 {
            pool.run(slow.clone(), rows()).await.unwrap();
        }
        assert!(
            ran.lock().unwrap().iter().all(|t| *t != here),
            "slow: the pool"
        );
        // 0 turns inlining off: even a cheap call goes to the pool.
        let never = InferencePool::new(2).with_inline_below(0);
        let (cheap, ran) = model(Duration::ZERO);
        for _ in 0..3 {
            never.run(cheap.clone(), rows()).await.unwrap();
        }
        assert!(
            ran.lock().unwrap().iter().all(|t| *t != here),
            "off: the pool"
        );
    }
}
