//! Single-model inference — the tract backend (which runs these dense graphs
//! natively, `model::dense`), tract's own plan (`tract_plan`: the same backend
//! loaded with `CASCADE_DENSE=off`) and ONNX Runtime — at batch sizes 1 to 1024,
//! on the shipped models. Rows are the model's golden inputs (real
//! MovieLens feature vectors), cycled to fill the batch.
//!
//!   cargo bench --bench inference                     # tract only
//!   ORT_DYLIB_PATH=$PWD/.ort/libonnxruntime.so \
//!     cargo bench --features ort --bench inference    # tract and ort
//!
//! Throughput is reported in rows per second; divide to get µs per row.

use std::hint::black_box;
use std::path::Path;

use cascade::model::backend::{self, Backend, BackendKind, BackendOptions};
use cascade::model::golden::GoldenSet;
use cascade::model::{Tensor, TensorData};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const BATCHES: [usize; 5] = [1, 8, 64, 256, 1024];

fn backends() -> Vec<BackendKind> {
    let mut kinds = vec![BackendKind::Tract];
    if cfg!(feature = "ort") {
        kinds.push(BackendKind::Ort);
    }
    kinds
}

fn bench_model(c: &mut Criterion, name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
        .join("1");
    let golden = GoldenSet::parse(
        &std::fs::read_to_string(dir.join("golden.json")).unwrap(),
        "golden",
    )
    .unwrap();
    let width = golden.inputs[0].len();
    let options = BackendOptions {
        ort_library: None,
        sessions: 1,
    };
    let mut group = c.benchmark_group(format!("inference/{name}"));
    let mut variants: Vec<(&str, BackendKind, bool)> = backends()
        .into_iter()
        .map(|k| (k.as_str(), k, false))
        .collect();
    variants.insert(1, ("tract_plan", BackendKind::Tract, true));
    for (label, kind, plan_only) in variants {
        // The tract backend reads this when it loads a model.
        std::env::set_var("CASCADE_DENSE", if plan_only { "off" } else { "on" });
        let model: Box<dyn Backend> =
            backend::load(kind, &dir.join("model.onnx"), name, &options).unwrap();
        for &n in &BATCHES {
            let flat: Vec<f32> = golden
                .inputs
                .iter()
                .cycle()
                .take(n)
                .flatten()
                .copied()
                .collect();
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(label, n), &flat, |b, flat| {
                b.iter(|| {
                    let input =
                        Tensor::new("features", vec![n, width], TensorData::F32(flat.clone()));
                    black_box(model.run(vec![input]).unwrap())
                })
            });
        }
    }
    group.finish();
}

fn inference(c: &mut Criterion) {
    for name in ["filter", "ranker", "cold_start"] {
        bench_model(c, name);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = inference
}
criterion_main!(benches);
