//! Both backends against the golden sets (scores computed by Python
//! onnxruntime at training time) and, with `--features ort`, against each
//! other on the same inputs.

use cascade::model::backend::{self, Backend, BackendKind, BackendOptions};
use cascade::model::{Tensor, TensorData};

use crate::common::{golden, shipped_model_names, shipped_models};

pub fn load(kind: BackendKind, name: &str) -> Box<dyn Backend> {
    let file = shipped_models().join(name).join("1/model.onnx");
    let options = BackendOptions {
        ort_library: None,
        sessions: 1,
    };
    backend::load(kind, &file, name, &options).unwrap_or_else(|e| panic!("{kind} {name}: {e}"))
}

pub fn scores(backend: &dyn Backend, rows: &[Vec<f32>]) -> Vec<f32> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let input = Tensor::new(
        "features",
        vec![rows.len(), rows[0].len()],
        TensorData::F32(flat),
    );
    let out = backend.run(vec![input]).unwrap();
    match &out[0].data {
        TensorData::F32(v) => v.clone(),
        other => panic!("score is FP32, got {:?}", other.datatype()),
    }
}

/// Deterministic perturbations of the golden rows: same scale, new values.
#[cfg(feature = "ort")]
pub fn perturbed(rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    rows.iter()
        .map(|r| {
            r.iter()
                .map(|x| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let u = (state >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                    x * (0.5 + u) + (u - 0.5) * 0.1
                })
                .collect()
        })
        .collect()
}

#[test]
fn tract_matches_python_onnxruntime_on_every_shipped_model() {
    for name in shipped_model_names() {
        let g = golden(&name);
        let got = scores(load(BackendKind::Tract, &name).as_ref(), &g.inputs);
        for (i, (a, b)) in got.iter().zip(&g.outputs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4,
                "{name} row {i}: tract {a} vs onnxruntime {b}"
            );
        }
    }
}

#[test]
fn any_batch_size_runs_on_one_optimised_plan() {
    for name in shipped_model_names() {
        let g = golden(&name);
        let b = load(BackendKind::Tract, &name);
        let all = scores(b.as_ref(), &g.inputs);
        for n in [1, 3, g.inputs.len()] {
            assert_eq!(
                scores(b.as_ref(), &g.inputs[..n]),
                all[..n],
                "{name} batch {n}"
            );
        }
    }
}

#[cfg(feature = "ort")]
#[test]
fn ort_matches_tract_and_python_onnxruntime_on_every_shipped_model() {
    for name in shipped_model_names() {
        let g = golden(&name);
        let tract = load(BackendKind::Tract, &name);
        let ort = load(BackendKind::Ort, &name);
        assert_eq!(tract.inputs(), ort.inputs(), "{name}: same signature");
        assert_eq!(tract.outputs(), ort.outputs(), "{name}: same signature");
        let o = scores(ort.as_ref(), &g.inputs);
        for (i, (a, b)) in o.iter().zip(&g.outputs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4,
                "{name} row {i}: ort {a} vs onnxruntime {b}"
            );
        }
        let rows = perturbed(&g.inputs);
        let (t, o) = (scores(tract.as_ref(), &rows), scores(ort.as_ref(), &rows));
        for (i, (a, b)) in t.iter().zip(&o).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4,
                "{name} perturbed row {i}: tract {a} vs ort {b}"
            );
        }
    }
}

#[cfg(not(feature = "ort"))]
#[test]
fn ort_backend_without_the_feature_is_a_clear_error() {
    let file = shipped_models().join("ranker/1/model.onnx");
    let e = backend::load(
        BackendKind::Ort,
        &file,
        "ranker/1/model.onnx",
        &BackendOptions::default(),
    )
    .err()
    .expect("ort is not compiled in");
    assert!(e.to_string().contains("--features ort"), "{e}");
}
