//! tract-onnx backend: pure Rust, the default.
//!
//! The model is optimised once at load time with a symbolic batch
//! dimension `N`, so one plan serves every batch size without
//! re-optimising. A plan is immutable and `Sync`: many threads may run it
//! at once, each with its own short-lived state.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::backend::{Backend, BackendKind};
use super::tensor::{DataType, Tensor as CTensor, TensorData, TensorSpec};
use super::ModelError;

type Plan = Arc<TypedRunnableModel>;

pub struct TractBackend {
    plan: Plan,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

fn to_datatype(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::U8,
        DatumType::I8 => DataType::I8,
        DatumType::I32 => DataType::I32,
        DatumType::I64 => DataType::I64,
        DatumType::F32 => DataType::F32,
        DatumType::F64 => DataType::F64,
        _ => return None,
    })
}

fn dims_of(shape: &[TDim]) -> Vec<Option<usize>> {
    shape
        .iter()
        .map(|d| d.as_i64().and_then(|n| usize::try_from(n).ok()))
        .collect()
}

impl TractBackend {
    pub fn load(file: &Path, shown: &str) -> Result<TractBackend, ModelError> {
        let err = |e: TractError| ModelError::load(shown, format!("{e:#}"));
        let mut model = tract_onnx::onnx().model_for_path(file).map_err(err)?;
        let batch = model.sym("N");

        // Pin every input to a concrete type and a shape whose unknown
        // leading dimension is the batch symbol; other unknown dimensions
        // get symbols of their own and stay dynamic.
        let mut input_names = Vec::new();
        for ix in 0..model.inputs.len() {
            let outlet = model.inputs[ix];
            let name = model.node(outlet.node).name.clone();
            let fact = model.input_fact(ix).map_err(err)?.clone();
            let dt = fact.datum_type.concretize().ok_or_else(|| {
                ModelError::load(
                    shown,
                    format!("input \"{name}\" has no declared element type"),
                )
            })?;
            if fact.shape.is_open() {
                return Err(ModelError::load(
                    shown,
                    format!("input \"{name}\" has no declared rank"),
                ));
            }
            let dims: TVec<TDim> = fact
                .shape
                .dims()
                .enumerate()
                .map(|(i, d)| match d.concretize() {
                    Some(TDim::Val(v)) => TDim::Val(v),
                    _ if i == 0 => batch.to_dim(),
                    _ => model.new_sym_with_prefix("d").to_dim(),
                })
                .collect();
            model
                .set_input_fact(ix, InferenceFact::dt_shape(dt, dims))
                .map_err(err)?;
            input_names.push(name);
        }

        let mut typed = model.into_typed().map_err(err)?;

        // Serve only outputs whose element type the protocol can carry
        // (converted classifiers also emit labels of other types); dropping
        // the rest before optimisation prunes their computation too.
        let mut kept = Vec::new();
        let mut outputs = Vec::new();
        for (ix, &outlet) in typed.output_outlets().map_err(err)?.iter().enumerate() {
            let fact = typed.output_fact(ix).map_err(err)?;
            let name = typed
                .outlet_label(outlet)
                .map(str::to_string)
                .unwrap_or_else(|| typed.node(outlet.node).name.clone());
            match to_datatype(fact.datum_type) {
                Some(datatype) => {
                    kept.push(outlet);
                    outputs.push(TensorSpec {
                        name,
                        datatype,
                        shape: dims_of(fact.shape.dims()),
                    });
                }
                None => tracing::warn!(
                    model = shown,
                    output = name,
                    datum_type = ?fact.datum_type,
                    "output not served: element type not supported"
                ),
            }
        }
        if kept.is_empty() {
            return Err(ModelError::load(
                shown,
                "no output has a supported element type",
            ));
        }
        typed.select_output_outlets(&kept).map_err(err)?;

        let mut inputs = Vec::new();
        for (ix, name) in input_names.into_iter().enumerate() {
            let fact = typed.input_fact(ix).map_err(err)?;
            let datatype = to_datatype(fact.datum_type).ok_or_else(|| {
                ModelError::load(
                    shown,
                    format!(
                        "input \"{name}\" has unsupported type {:?}",
                        fact.datum_type
                    ),
                )
            })?;
            inputs.push(TensorSpec {
                name,
                datatype,
                shape: dims_of(fact.shape.dims()),
            });
        }

        let plan = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(err)?;
        Ok(TractBackend {
            plan,
            inputs,
            outputs,
        })
    }
}

fn to_tvalue(t: CTensor) -> TractResult<TValue> {
    let shape = t.shape;
    let tensor: Tensor = match t.data {
        TensorData::Bool(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v)?.into(),
        TensorData::U8(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v)?.into(),
        TensorData::I8(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v)?.into(),
        TensorData::I32(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v)?.into(),
        TensorData::I64(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v)?.into(),
        TensorData::F32(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v)?.into(),
        TensorData::F64(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v)?.into(),
    };
    Ok(tensor.into_tvalue())
}

fn from_tvalue(name: &str, dt: DataType, v: &TValue) -> TractResult<CTensor> {
    let view = v.try_as_plain_ram()?;
    let data = match dt {
        DataType::Bool => TensorData::Bool(view.as_slice::<bool>()?.to_vec()),
        DataType::U8 => TensorData::U8(view.as_slice::<u8>()?.to_vec()),
        DataType::I8 => TensorData::I8(view.as_slice::<i8>()?.to_vec()),
        DataType::I32 => TensorData::I32(view.as_slice::<i32>()?.to_vec()),
        DataType::I64 => TensorData::I64(view.as_slice::<i64>()?.to_vec()),
        DataType::F32 => TensorData::F32(view.as_slice::<f32>()?.to_vec()),
        DataType::F64 => TensorData::F64(view.as_slice::<f64>()?.to_vec()),
    };
    Ok(CTensor::new(name, v.shape().to_vec(), data))
}

impl Backend for TractBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Tract
    }

    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&self, inputs: Vec<CTensor>) -> Result<Vec<CTensor>, ModelError> {
        let fail = |e: TractError| ModelError::Inference(format!("{e:#}"));
        let values = inputs
            .into_iter()
            .map(to_tvalue)
            .collect::<TractResult<TVec<_>>>()
            .map_err(fail)?;
        let out = self.plan.run(values).map_err(fail)?;
        self.outputs
            .iter()
            .zip(out.iter())
            .map(|(spec, v)| from_tvalue(&spec.name, spec.datatype, v).map_err(fail))
            .collect()
    }
}
