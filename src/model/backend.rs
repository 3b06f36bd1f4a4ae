//! The one trait every runtime implements, kept narrow on purpose: a
//! backend knows its signature and turns input tensors into output tensors.
//! Everything else (batching, versions, threads) lives above it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ModelError, Tensor, TensorSpec};

/// A loaded, optimised, ready-to-run model.
pub trait Backend: Send + Sync {
    /// Which runtime this is, for metadata and metrics.
    fn kind(&self) -> BackendKind;
    /// Inputs in the order [`Backend::run`] expects them.
    fn inputs(&self) -> &[TensorSpec];
    /// Outputs in the order [`Backend::run`] returns them.
    fn outputs(&self) -> &[TensorSpec];
    /// Runs one inference. Blocking and CPU-bound: call it through
    /// [`super::executor::InferencePool`], which runs it on a blocking
    /// thread unless it is known to be short. `inputs`
    /// are in [`Backend::inputs`] order and already checked against it.
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError>;
}

/// A backend made of a closure, with an empty signature: for tests of what
/// sits above the trait.
#[cfg(test)]
pub struct FnBackend<F>(pub F);

#[cfg(test)]
impl<F> Backend for FnBackend<F>
where
    F: Fn(Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> + Send + Sync,
{
    fn kind(&self) -> BackendKind {
        BackendKind::Tract
    }
    fn inputs(&self) -> &[TensorSpec] {
        &[]
    }
    fn outputs(&self) -> &[TensorSpec] {
        &[]
    }
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        (self.0)(inputs)
    }
}

/// The runtimes Cascade can use, chosen globally or per model in config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Tract,
    Ort,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Ort => "ort",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Runtime settings shared by every model a backend loads.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Path of `libonnxruntime.so`, for the `ort` backend.
    pub ort_library: Option<std::path::PathBuf>,
    /// Sessions per model for runtimes whose sessions are not shareable
    /// (ort): one per inference thread, so no thread waits on another.
    pub sessions: usize,
}

/// Loads `file` with the chosen runtime. `shown` is the path to print in
/// errors (relative to the repository).
pub fn load(
    kind: BackendKind,
    file: &Path,
    shown: &str,
    options: &BackendOptions,
) -> Result<Box<dyn Backend>, ModelError> {
    match kind {
        BackendKind::Tract => Ok(Box::new(super::tract_backend::TractBackend::load(
            file, shown,
        )?)),
        #[cfg(feature = "ort")]
        BackendKind::Ort => Ok(Box::new(super::ort_backend::OrtBackend::load(
            file, shown, options,
        )?)),
        #[cfg(not(feature = "ort"))]
        BackendKind::Ort => {
            let _ = options;
            Err(ModelError::load(
                shown,
                "backend \"ort\" is not compiled in; rebuild with `--features ort`",
            ))
        }
    }
}
