//! Runs blocking inference off the async reactor, with a hard bound on how
//! many inferences run at once so that tract / ONNX Runtime threads never
//! oversubscribe the machine's cores.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use super::{LoadedModel, ModelError, Tensor};
use crate::telemetry::metrics as m;

/// A counting gate in front of `spawn_blocking`: at most `threads`
/// inferences run at once; the rest wait their turn (fairly, FIFO).
#[derive(Clone)]
pub struct InferencePool {
    permits: Arc<Semaphore>,
    threads: usize,
}

impl InferencePool {
    pub fn new(threads: usize) -> InferencePool {
        let threads = threads.max(1);
        InferencePool {
            permits: Arc::new(Semaphore::new(threads)),
            threads,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `inputs` through `model` on a blocking thread. A panic inside
    /// the backend becomes an error for this call only.
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
        metrics::histogram!(m::INFERENCE_QUEUE_WAIT_SECONDS).record(queued.elapsed().as_secs_f64());
        let labels = [
            ("model", model.name.clone()),
            ("version", model.version.to_string()),
            ("backend", model.backend.kind().as_str().to_string()),
        ];
        let rows = inputs
            .first()
            .and_then(|t| t.shape.first())
            .copied()
            .unwrap_or(0);
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = Instant::now();
            let result = model.backend.run(inputs);
            (result, started.elapsed())
        })
        .await;
        let result = match joined {
            Ok((result, took)) => {
                metrics::histogram!(m::MODEL_INFERENCE_DURATION_SECONDS, &labels)
                    .record(took.as_secs_f64());
                metrics::histogram!(m::MODEL_BATCH_ROWS, &labels[..1]).record(rows as f64);
                result
            }
            Err(e) => Err(ModelError::Inference(format!("inference task failed: {e}"))),
        };
        if result.is_err() {
            metrics::counter!(m::MODEL_ERRORS_TOTAL, &labels[..1]).increment(1);
        }
        result
    }
}
