//! Runs blocking inference off the async reactor, with a hard bound on how
//! many inferences run at once so that tract / ONNX Runtime threads never
//! oversubscribe the machine's cores.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{LoadedModel, ModelError, Tensor};

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
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ModelError::Unavailable)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            model.backend.run(inputs)
        })
        .await
        .map_err(|e| ModelError::Inference(format!("inference task failed: {e}")))?
    }
}
