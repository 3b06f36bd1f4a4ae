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
    /// The graph run natively when it is a small dense one (see
    /// [`super::dense`]); the plan serves everything else.
    dense: Option<super::dense::Dense>,
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
        let dense = if std::env::var("CASCADE_DENSE").is_ok_and(|v| v == "off") {
            None
        } else {
            tract_onnx::onnx()
                .proto_model_for_path(file)
                .ok()
                .and_then(|proto| super::dense::Dense::from_proto(&proto))
                .filter(|d| {
                    inputs.len() == 1
                        && outputs.len() == 1
                        && inputs[0].datatype == DataType::F32
                        && outputs[0].datatype == DataType::F32
                        && inputs[0].shape.get(1) == Some(&Some(d.width()))
                        && outputs[0]
                            .shape
                            .get(1)
                            .is_none_or(|c| c.is_none_or(|c| c == d.out_cols()))
                })
        };
        if dense.is_some() {
            tracing::debug!(
                model = shown,
                "dense graph: run natively, not by the tract plan"
            );
        }
        Ok(TractBackend {
            plan,
            dense,
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

    fn run(&self, mut inputs: Vec<CTensor>) -> Result<Vec<CTensor>, ModelError> {
        if let Some(dense) = &self.dense {
            if let [CTensor {
                shape,
                data: TensorData::F32(x),
                ..
            }] = inputs.as_slice()
            {
                if let [n, w] = shape[..] {
                    if w == dense.width() && x.len() == n * w {
                        let Some(CTensor {
                            data: TensorData::F32(x),
                            ..
                        }) = inputs.pop()
                        else {
                            unreachable!("matched above")
                        };
                        let out = dense.run(x, n);
                        let spec = &self.outputs[0];
                        return Ok(vec![CTensor::new(
                            &spec.name,
                            vec![n, dense.out_cols()],
                            TensorData::F32(out),
                        )]);
                    }
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped model (both apps) is a dense graph, and the native run
    /// answers what the tract plan answers, to float rounding, on its
    /// golden rows and on rows far outside them.
    #[test]
    fn dense_graphs_answer_what_the_tract_plan_answers() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut checked = 0;
        for dir in ["models", "examples/shop/models"] {
            for name in ["filter", "ranker", "cold_start"] {
                let path = root.join(dir).join(name).join("1");
                if !path.join("model.onnx").is_file() {
                    continue;
                }
                let golden: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(path.join("golden.json")).unwrap(),
                )
                .unwrap();
                let backend = TractBackend::load(&path.join("model.onnx"), name).unwrap();
                let dense = backend.dense.as_ref().expect("a dense graph");
                let rows: Vec<Vec<f32>> = golden["inputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        r.as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_f64().unwrap() as f32)
                            .collect()
                    })
                    .collect();
                let width = dense.width();
                // 300 rows: the golden ones cycled, every other scaled up.
                let n = 300;
                let x: Vec<f32> = (0..n)
                    .flat_map(|r| {
                        let scale = if r % 2 == 1 {
                            1.0 + (r % 7) as f32
                        } else {
                            1.0
                        };
                        rows[r % rows.len()]
                            .iter()
                            .map(move |v| v * scale)
                            .collect::<Vec<_>>()
                    })
                    .collect();
                assert_eq!(x.len(), n * width);
                let got = dense.run(x.clone(), n);
                let want = backend
                    .plan
                    .run(tvec![to_tvalue(CTensor::new(
                        "features",
                        vec![n, width],
                        TensorData::F32(x)
                    ))
                    .unwrap()])
                    .unwrap();
                let want = want[0]
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec();
                assert_eq!(got.len(), want.len(), "{dir}/{name}");
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0f32, f32::max);
                assert!(worst <= 2e-6, "{dir}/{name}: worst difference {worst}");
                checked += 1;
            }
        }
        assert_eq!(
            checked, 5,
            "filter, ranker, cold_start; the shop's filter and ranker"
        );
    }

    /// A graph with any other op keeps tract's plan (the test fixtures:
    /// ReduceSum, Log, Tanh, ConstantOfShape, ReduceMean).
    #[test]
    fn other_graphs_keep_the_tract_plan() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for name in ["sum_ranker_2", "nan_ranker_40", "slow_ranker_40"] {
            let backend = TractBackend::load(&root.join(format!("{name}.onnx")), name).unwrap();
            assert!(backend.dense.is_none(), "{name}");
        }
    }
}
