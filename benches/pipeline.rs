//! The whole ranking cascade in-process (no HTTP): retrieve 300 → filter
//! keeps 100 → re-rank → top 10, for a known user, a cold-start user, and
//! caller-supplied candidates, on the shipped models and catalog.
//!
//!   cargo bench --bench pipeline

use std::hint::black_box;
use std::path::Path;

use cascade::config::Config;
use cascade::pipeline::request::RankRequest;
use cascade::state::AppState;
use criterion::{criterion_group, criterion_main, Criterion};

fn pipeline(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = Config::default();
    config.models.repository = root.join("models");
    config.ranking.catalog = root.join("models/catalog");
    config.state.dir = std::env::temp_dir().join(format!("cascade-bench-{}", std::process::id()));
    // Every re-rank row scored, as `benches/peer/compare.sh` serves (caches
    // off): the score cache would answer a repeated user's rows.
    config.ranking.score_cache.enabled = false;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Batchers start on the runtime that is current while loading.
    let state = {
        let _runtime = rt.enter();
        AppState::load(config).expect("shipped models load")
    };
    let pipeline = state.pipeline.as_ref().unwrap();
    let candidates: Vec<String> = pipeline
        .catalog()
        .items
        .base_ids()
        .iter()
        .step_by(16)
        .take(100)
        .map(str::to_string)
        .collect();
    let cases = [
        (
            "known_user",
            serde_json::json!({"user_id": "1", "k": 10, "deadline_ms": 10000, "context": {"hour": 21, "weekday": 3}}),
        ),
        (
            "cold_start",
            serde_json::json!({"k": 10, "deadline_ms": 10000, "context": {"hour": 21, "weekday": 3, "age": 30, "gender": "F", "occupation": "engineer"}}),
        ),
        (
            "known_user_100_candidates",
            serde_json::json!({"user_id": "1", "k": 10, "deadline_ms": 10000, "candidates": candidates}),
        ),
    ];
    // The same known-user request answered from the response cache: the
    // hit path, against `known_user` (computed every time) as the miss.
    let cache_hit = (
        "known_user_cache_hit",
        serde_json::json!({"user_id": "1", "k": 10, "deadline_ms": 10000, "context": {"hour": 21, "weekday": 3}}),
    );
    let mut group = c.benchmark_group("pipeline");
    for (name, body) in cases.into_iter().chain([cache_hit]) {
        let request: RankRequest = serde_json::from_value(body).unwrap();
        let cached = name == "known_user_cache_hit";
        group.bench_function(name, |b| {
            b.iter(|| {
                let valid = request
                    .clone()
                    .validate(&pipeline.limits, pipeline.schema(), || "bench".into())
                    .unwrap();
                let response = if cached {
                    rt.block_on(pipeline.rank_cached(&state.registry, &state.pool, valid))
                } else {
                    rt.block_on(pipeline.rank(&state.registry, &state.pool, valid))
                }
                .unwrap();
                assert!(response.fallback.is_none() || name == "cold_start");
                black_box(response)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = pipeline
}
criterion_main!(benches);
