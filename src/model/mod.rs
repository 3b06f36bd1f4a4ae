//! Models: the backend trait, the ONNX backends behind it, the model
//! repository on disk, and the bounded pool that runs inference off the
//! async reactor.
//!
//! - [`tensor`]: backend-neutral tensors and signatures.
//! - [`backend`]: the narrow [`Backend`] trait and backend selection.
//! - [`tract_backend`]: tract-onnx, pure Rust, the default.
//! - `ort_backend` (feature `ort`): ONNX Runtime loaded at run time.
//! - [`repository`]: `models/<name>/<version>/model.onnx` + `config.toml`.
//! - [`golden`]: vetting a version on its golden set; [`quality`]: its
//!   ranking quality there, and the gate a reload applies with it.
//! - [`batcher`]: dynamic batching of rows from concurrent requests.
//! - [`executor`]: bounded blocking inference, so 2 cores are never
//!   oversubscribed and the reactor never blocks.

pub mod backend;
pub mod batcher;
pub mod dense;
pub mod executor;
pub mod golden;
#[cfg(feature = "ort")]
pub mod ort_backend;
pub mod quality;
pub mod repository;
pub mod spec;
pub mod tensor;
pub mod tract_backend;

pub use backend::{Backend, BackendKind};
pub use repository::{LoadedModel, ModelEntry, Registry};
pub use tensor::{DataType, Tensor, TensorData, TensorSpec};

/// Everything that can go wrong between a model file and a score.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model file or its config could not be loaded. `path` is relative
    /// to the repository so that messages never leak the host's layout.
    #[error("{path}: {reason}")]
    Load { path: String, reason: String },
    #[error("model \"{0}\" not found")]
    NotFound(String),
    #[error("model \"{name}\" has no version {version}")]
    VersionNotFound { name: String, version: String },
    /// The caller's tensors do not fit the model's signature.
    #[error("{field}: {reason}")]
    BadInput { field: String, reason: String },
    /// The backend failed while running a well-formed request.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The inference pool is shutting down.
    #[error("inference pool unavailable")]
    Unavailable,
}

impl ModelError {
    pub fn load(path: impl Into<String>, reason: impl std::fmt::Display) -> ModelError {
        ModelError::Load {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    pub fn bad_input(field: impl Into<String>, reason: impl Into<String>) -> ModelError {
        ModelError::BadInput {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
