//! ONNX Runtime backend (feature `ort`), loading `libonnxruntime.so` at run
//! time; nothing is downloaded at build time.
//!
//! ONNX Runtime allows one environment per process, ever, so it lives in a
//! `OnceLock`. `Session::run` takes `&mut self`; sharing one session behind
//! a mutex serialises inference, so each model keeps one session per
//! inference thread, each with one non-spinning intra-op thread (spinning
//! threads would burn the cores the reactor needs).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use super::backend::{Backend, BackendKind, BackendOptions};
use super::tensor::{DataType, Tensor, TensorData, TensorSpec};
use super::ModelError;

/// Where the library is looked for when neither the config nor
/// `ORT_DYLIB_PATH` names it (where `scripts/fetch-onnxruntime.sh` puts it).
pub const DEFAULT_LIBRARY: &str = ".ort/libonnxruntime.so";

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn library_path(options: &BackendOptions) -> PathBuf {
    options
        .ort_library
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LIBRARY))
}

fn environment(options: &BackendOptions) -> Result<&'static ort::environment::Environment, String> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = library_path(options);
            if !path.is_file() {
                return Err(format!(
                    "ONNX Runtime library \"{}\" not found (set models.ort_library or ORT_DYLIB_PATH, or run scripts/fetch-onnxruntime.sh)",
                    path.display()
                ));
            }
            ort::init_from(&path)
                .map_err(|e| format!("ONNX Runtime library \"{}\": {e}", path.display()))?
                .with_name("cascade")
                .build()
                .map_err(|e| format!("ONNX Runtime environment: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn to_datatype(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        _ => return None,
    })
}

fn spec_of(name: &str, ty: &ValueType) -> Option<TensorSpec> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => Some(TensorSpec {
            name: name.to_string(),
            datatype: to_datatype(*ty)?,
            shape: shape.iter().map(|&d| usize::try_from(d).ok()).collect(),
        }),
        _ => None,
    }
}

pub struct OrtBackend {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl OrtBackend {
    pub fn load(
        file: &Path,
        shown: &str,
        options: &BackendOptions,
    ) -> Result<OrtBackend, ModelError> {
        let env = environment(options).map_err(|e| ModelError::load(shown, e))?;
        let err = |e: ort::Error| ModelError::load(shown, e.to_string());
        let count = options.sessions.max(1);
        let mut sessions = Vec::with_capacity(count);
        for _ in 0..count {
            // Builder errors carry the builder and are not Send: keep only the text.
            let opt = |e: ort::Error<_>| ModelError::load(shown, e.to_string());
            let session = Session::builder(env)
                .map_err(err)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(opt)?
                .with_intra_threads(1)
                .map_err(opt)?
                .with_inter_threads(1)
                .map_err(opt)?
                .with_intra_op_spinning(false)
                .map_err(opt)?
                .with_inter_op_spinning(false)
                .map_err(opt)?
                .commit_from_file(file)
                .map_err(err)?;
            sessions.push(session);
        }
        let first = &sessions[0];
        let mut inputs = Vec::new();
        for outlet in first.inputs() {
            inputs.push(spec_of(outlet.name(), outlet.dtype()).ok_or_else(|| {
                ModelError::load(
                    shown,
                    format!("input \"{}\" has an unsupported type", outlet.name()),
                )
            })?);
        }
        let outputs: Vec<TensorSpec> = first
            .outputs()
            .iter()
            .filter_map(|o| {
                let spec = spec_of(o.name(), o.dtype());
                if spec.is_none() {
                    tracing::warn!(
                        model = shown,
                        output = o.name(),
                        "output not served: element type not supported"
                    );
                }
                spec
            })
            .collect();
        if outputs.is_empty() {
            return Err(ModelError::load(
                shown,
                "no output has a supported element type",
            ));
        }
        Ok(OrtBackend {
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
            inputs,
            outputs,
        })
    }

    /// A free session if there is one, else the next in turn (blocking).
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.sessions.len();
        for i in 0..n {
            if let Ok(guard) = self.sessions[(start + i) % n].try_lock() {
                return guard;
            }
        }
        self.sessions[start % n]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn to_value(t: Tensor) -> ort::Result<DynValue> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(match t.data {
        TensorData::Bool(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::U8(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::I8(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::I32(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::I64(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::F32(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::F64(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
    })
}

fn from_value(spec: &TensorSpec, v: &DynValue) -> ort::Result<Tensor> {
    fn get<T: ort::value::PrimitiveTensorElementType + Clone>(
        v: &DynValue,
    ) -> ort::Result<(Vec<usize>, Vec<T>)> {
        let (shape, data) = v.try_extract_tensor::<T>()?;
        Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
    }
    let (shape, data) = match spec.datatype {
        DataType::Bool => get::<bool>(v).map(|(s, d)| (s, TensorData::Bool(d)))?,
        DataType::U8 => get::<u8>(v).map(|(s, d)| (s, TensorData::U8(d)))?,
        DataType::I8 => get::<i8>(v).map(|(s, d)| (s, TensorData::I8(d)))?,
        DataType::I32 => get::<i32>(v).map(|(s, d)| (s, TensorData::I32(d)))?,
        DataType::I64 => get::<i64>(v).map(|(s, d)| (s, TensorData::I64(d)))?,
        DataType::F32 => get::<f32>(v).map(|(s, d)| (s, TensorData::F32(d)))?,
        DataType::F64 => get::<f64>(v).map(|(s, d)| (s, TensorData::F64(d)))?,
    };
    Ok(Tensor::new(spec.name.clone(), shape, data))
}

impl Backend for OrtBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Ort
    }

    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let fail = |e: ort::Error| ModelError::Inference(e.to_string());
        let values: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = inputs
            .into_iter()
            .map(|t| {
                let name = Cow::Owned(t.name.clone());
                to_value(t).map(|v| (name, SessionInputValue::from(v)))
            })
            .collect::<ort::Result<_>>()
            .map_err(fail)?;
        let mut session = self.session();
        let outputs = session.run(values).map_err(fail)?;
        self.outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(&spec.name).ok_or_else(|| {
                    ModelError::Inference(format!("output \"{}\" missing", spec.name))
                })?;
                from_value(spec, value).map_err(fail)
            })
            .collect()
    }
}
