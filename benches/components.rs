//! The pieces of a `/v1/rank` request one at a time, on the shipped models
//! and catalog, to see where its time goes:
//!
//! - `features/*`: assembling the feature matrix (ranker 40, filter 6
//!   features) for 100 and 300 candidates;
//! - `batcher/*`: ranker inference on 100 rows through the dynamic batcher
//!   vs straight to the backend and through the inference pool, for one
//!   caller (the batcher's fixed cost) and eight concurrent callers (what
//!   bulking buys);
//! - `cache/*`: `rank_cached` for a request answered from the response
//!   cache vs the same request with the cache off;
//! - `retrieval/*`: exact top-300 over the 1,682 × 32 item embeddings;
//! - `live/*`: three features read from live-event counters vs three
//!   stored fields, for 300 candidates, with 100k interactions applied;
//!   applying a batch of 100 interactions to the live view;
//! - `catalog_1m/*`: feature assembly and id lookups on a generated
//!   1M-item catalog, where rows scattered over 256 MB of embeddings miss
//!   the CPU caches (set `CASCADE_BENCH_SKIP_1M=1` to skip: it generates
//!   the catalog in a temporary directory first, ~5 s and ~0.6 GB).
//!
//!   cargo bench --bench components -- --warm-up-time 1 --measurement-time 3
//!
//! After the criterion groups, per-call percentiles of the cache hit and
//! miss paths are printed (criterion reports means over batches of calls).

use std::collections::HashSet;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cascade::catalog::index::{search, ExactIndex, RowSet};
use cascade::catalog::Catalog;
use cascade::config::Config;
use cascade::data::features::{FeatureSet, Subject};
use cascade::model::batcher::{BatchPolicy, Batcher};
use cascade::model::{LoadedModel, Tensor, TensorData};
use cascade::pipeline::request::{RankRequest, ValidRequest};
use cascade::pipeline::stages::StageModel;
use cascade::state::AppState;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

/// The shipped models and catalog, and a runtime shaped like the server's
/// (two worker threads; inference on the blocking pool).
struct Fixture {
    rt: tokio::runtime::Runtime,
    /// Default config: response cache on.
    state: AppState,
    /// Same, response cache off.
    uncached: AppState,
}

impl Fixture {
    fn load() -> Fixture {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut config = Config::default();
        config.models.repository = root.join("models");
        config.ranking.catalog = root.join("models/catalog");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Batchers start on the runtime that is current while loading.
        let _runtime = rt.enter();
        // Each state with an event log of its own (one process per folder).
        let state_dir =
            |n: u32| std::env::temp_dir().join(format!("cascade-bench-{}-{n}", std::process::id()));
        config.state.dir = state_dir(0);
        let state = AppState::load(config.clone()).expect("shipped models load");
        config.ranking.cache.enabled = false;
        config.state.dir = state_dir(1);
        let uncached = AppState::load(config).expect("shipped models load");
        drop(_runtime);
        Fixture {
            rt,
            state,
            uncached,
        }
    }

    fn stage(&self, role: &str) -> Arc<StageModel> {
        let pipeline = self.state.pipeline.as_ref().unwrap();
        pipeline
            .stage_model(&self.state.registry, role)
            .unwrap_or_else(|| panic!("no {role} stage"))
    }
}

/// Known user "1" at a fixed hour: the request every section uses.
fn known_user_request() -> RankRequest {
    serde_json::from_value(serde_json::json!({
        "user_id": "1", "k": 10, "deadline_ms": 10000,
        "context": {"hour": 21, "weekday": 3}
    }))
    .unwrap()
}

fn validate(state: &AppState, request: &RankRequest) -> ValidRequest {
    let pipeline = state.pipeline.as_ref().unwrap();
    request
        .clone()
        .validate(&pipeline.limits, pipeline.schema(), || "bench".into())
        .unwrap()
}

/// `n` distinct catalog rows, spread over the catalog.
fn candidate_rows(n: usize, items: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 5) % items) as u32).collect()
}

fn features(c: &mut Criterion, fx: &Fixture) {
    let pipeline = fx.state.pipeline.as_ref().unwrap();
    let catalog = &pipeline.catalog();
    let subject = pipeline.subject(&validate(&fx.state, &known_user_request()));
    let mut group = c.benchmark_group("features");
    for role in ["ranker", "filter"] {
        let stage = fx.stage(role);
        let set = stage.features();
        for n in [100, 300] {
            let rows = candidate_rows(n, catalog.items.len());
            group.throughput(Throughput::Elements(n as u64));
            let id = BenchmarkId::new(format!("{role}_{}", set.width()), n);
            bench_assembly(&mut group, id, set, catalog, &subject, || &rows);
        }
    }
    group.finish();
}

/// Times `FeatureSet::assemble` over the row lists `rows` hands out, one per call.
fn bench_assembly<'a>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    set: &FeatureSet,
    catalog: &Catalog,
    subject: &Subject,
    mut rows: impl FnMut() -> &'a [u32],
) {
    let mut matrix = Vec::new();
    let mut missing = vec![0u32; set.width()];
    group.bench_function(id, |b| {
        b.iter(|| {
            missing.fill(0);
            set.assemble(
                &catalog.sources(),
                subject,
                rows(),
                &mut matrix,
                &mut missing,
            );
            black_box(&matrix);
        })
    });
}

/// The ranker's matrix for 100 candidates of the bench user.
fn ranker_rows(fx: &Fixture, stage: &StageModel, n: usize) -> Vec<f32> {
    let pipeline = fx.state.pipeline.as_ref().unwrap();
    let subject = pipeline.subject(&validate(&fx.state, &known_user_request()));
    let set = stage.features();
    let (mut matrix, mut missing) = (Vec::new(), vec![0u32; set.width()]);
    let rows = candidate_rows(n, pipeline.catalog().items.len());
    set.assemble(
        &pipeline.catalog().sources(),
        &subject,
        &rows,
        &mut matrix,
        &mut missing,
    );
    matrix
}

fn tensor(model: &LoadedModel, rows: &[f32], n: usize) -> Tensor {
    let input = model
        .spec
        .input
        .as_ref()
        .expect("ranker declares its input");
    Tensor::new(
        input.name.clone(),
        vec![n, rows.len() / n],
        TensorData::F32(rows.to_vec()),
    )
}

fn batcher(c: &mut Criterion, fx: &Fixture) {
    const N: usize = 100;
    const CALLERS: usize = 8;
    let stage = fx.stage("ranker");
    let model = stage.model().clone();
    let rows = ranker_rows(fx, &stage, N);
    let pool = fx.state.pool.clone();
    // The policy the pipeline gives the ranker (config.toml [batching] and
    // the ranking defaults): up to 1,024 rows, no wait, two batches at once.
    let ranking = &fx.state.config.ranking;
    let policy = BatchPolicy {
        max_batch_rows: model.spec.batching.max_batch_rows,
        max_wait: Duration::from_micros(model.spec.batching.max_wait_us),
        queue_capacity: ranking.batch_queue_capacity,
        workers: ranking.batch_workers,
    };
    // The same batcher with a wait of 1 µs: a lone job never runs on its
    // caller's task but always goes through the actor (the path every job
    // took before an idle batcher let its caller run it), and nothing else
    // changes: the wait is over before the actor looks.
    let through_actor = BatchPolicy {
        max_wait: Duration::from_micros(1),
        ..policy.clone()
    };
    let (batcher, actor_batcher) = {
        let _runtime = fx.rt.enter();
        (
            Batcher::spawn("ranker", "score", policy, pool.clone()),
            Batcher::spawn("ranker", "score", through_actor, pool.clone()),
        )
    };
    let far = || tokio::time::Instant::now() + Duration::from_secs(10);

    let mut group = c.benchmark_group("batcher");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("ranker_100/direct_backend", |b| {
        b.iter(|| black_box(model.backend.run(vec![tensor(&model, &rows, N)]).unwrap()))
    });
    group.bench_function("ranker_100/pool_run", |b| {
        b.iter(|| {
            let inputs = vec![tensor(&model, &rows, N)];
            black_box(fx.rt.block_on(pool.run(model.clone(), inputs)).unwrap())
        })
    });
    for (name, batcher) in [
        ("ranker_100/batcher_score", &batcher),
        ("ranker_100/batcher_score_through_actor", &actor_batcher),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let scored = fx
                    .rt
                    .block_on(batcher.score(model.clone(), rows.clone(), N, far()))
                    .unwrap();
                assert_eq!(scored.scores.len(), N);
                black_box(scored)
            })
        });
    }

    // Eight callers at once, as eight concurrent requests' re-rank stages:
    // eight pool inferences of 100 rows vs whatever the batcher bulks.
    group.throughput(Throughput::Elements((N * CALLERS) as u64));
    group.bench_function("ranker_8x100/pool_run", |b| {
        b.iter(|| {
            fx.rt.block_on(async {
                let calls: Vec<_> = (0..CALLERS)
                    .map(|_| {
                        let (pool, model) = (pool.clone(), model.clone());
                        let inputs = vec![tensor(&model, &rows, N)];
                        tokio::spawn(async move { pool.run(model, inputs).await.unwrap() })
                    })
                    .collect();
                for call in calls {
                    black_box(call.await.unwrap());
                }
            })
        })
    });
    // Rows of the batch each caller was scored in, summed, and callers.
    let (mut batch_rows, mut scored) = (0usize, 0usize);
    group.bench_function("ranker_8x100/batcher_score", |b| {
        b.iter(|| {
            fx.rt.block_on(async {
                let calls: Vec<_> = (0..CALLERS)
                    .map(|_| {
                        let (batcher, model, rows) = (batcher.clone(), model.clone(), rows.clone());
                        tokio::spawn(async move { batcher.score(model, rows, N, far()).await })
                    })
                    .collect();
                for call in calls {
                    let got = call.await.unwrap().unwrap();
                    batch_rows += got.batch_rows;
                    scored += 1;
                    black_box(got);
                }
            })
        })
    });
    group.finish();
    println!(
        "batcher/ranker_8x100/batcher_score: each caller's rows shared an inference of {:.0} rows on average",
        batch_rows as f64 / scored.max(1) as f64
    );
}

fn cache(c: &mut Criterion, fx: &Fixture) {
    let request = known_user_request();
    let rank = |state: &AppState| {
        let pipeline = state.pipeline.as_ref().unwrap();
        let valid = validate(state, &request);
        fx.rt
            .block_on(pipeline.rank_cached(&state.registry, &state.pool, valid))
            .unwrap()
    };
    // The first call misses and fills the cache; every later one hits.
    assert!(!rank(&fx.state).cached);
    assert!(rank(&fx.state).cached);
    let mut group = c.benchmark_group("cache");
    group.bench_function("rank_known_user/hit", |b| {
        b.iter(|| {
            let response = rank(&fx.state);
            assert!(response.cached);
            black_box(response)
        })
    });
    group.bench_function("rank_known_user/miss_cache_off", |b| {
        b.iter(|| {
            let response = rank(&fx.uncached);
            assert!(!response.cached && response.fallback.is_none());
            black_box(response)
        })
    });
    group.finish();

    // Per-call percentiles: criterion's figures are means over batches.
    for (name, state, calls) in [("hit", &fx.state, 20_000), ("miss", &fx.uncached, 2_000)] {
        let mut took: Vec<Duration> = (0..calls)
            .map(|_| {
                let t = Instant::now();
                black_box(rank(state));
                t.elapsed()
            })
            .collect();
        took.sort_unstable();
        let q = |p: f64| took[((calls as f64 * p) as usize).min(calls - 1)].as_secs_f64() * 1e6;
        println!(
            "cache/rank_known_user/{name} per call over {calls}: p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  max {:.1} µs",
            q(0.50),
            q(0.90),
            q(0.99),
            took[calls - 1].as_secs_f64() * 1e6
        );
    }
}

fn retrieval(c: &mut Criterion, fx: &Fixture) {
    let catalog = &fx.state.pipeline.as_ref().unwrap().catalog();
    let (vectors, dim) = catalog.item_vectors().expect("item vectors");
    let index = ExactIndex::new(cascade::catalog::index::unit_rows(vectors, dim), dim);
    let user = catalog.users.row("1").expect("user 1 is in the catalog");
    let query = catalog.user_vector(user).to_vec();
    let seen: HashSet<u32> = catalog.seen(user).iter().copied().collect();
    let mut group = c.benchmark_group("retrieval");
    group.bench_function("exact_top300/no_skip", |b| {
        b.iter(|| black_box(search(&index, &query, 300, &|_| false).unwrap()))
    });
    group.bench_function("exact_top300/skip_seen", |b| {
        b.iter(|| black_box(search(&index, &query, 300, &|r| seen.contains(&r)).unwrap()))
    });
    // What `pipeline::stages::retrieve` does: the rows to skip as a bit set.
    let sorted: Vec<u32> = {
        let mut v: Vec<u32> = seen.iter().copied().collect();
        v.sort_unstable();
        v
    };
    group.bench_function("exact_top300/skip_seen_rowset", |b| {
        b.iter(|| {
            RowSet::with(&sorted, |set| {
                black_box(search(&index, &query, 300, &|r| set.contains(r)).unwrap())
            })
        })
    });
    // New items from events, searched exactly beside the index (the delta
    // segment): its cost by size, against none.
    for n in [0, 1_000, 10_000] {
        let changed = catalog.with_changes(&new_items(catalog, n), 1);
        group.bench_function(format!("exact_top300/delta_{n}"), |b| {
            b.iter(|| {
                RowSet::with(&sorted, |set| {
                    black_box(
                        cascade::pipeline::stages::search(&changed, &index, &query, 300, &|r| {
                            set.contains(r)
                        })
                        .unwrap(),
                    )
                })
            })
        });
    }
    group.finish();
}

/// `n` new items, each with an embedding (a perturbed copy of an existing
/// item's) and two fields.
fn new_items(catalog: &Catalog, n: usize) -> cascade::catalog::changes::Changes {
    let mut changes = cascade::catalog::changes::Changes::default();
    let dim = catalog.dim();
    for i in 0..n {
        let base = catalog.item_vector((i % catalog.items.len()) as u32);
        let embedding: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(j, x)| x + ((i * 31 + j) % 7) as f32 * 0.01)
            .collect();
        assert_eq!(embedding.len(), dim);
        let fields = serde_json::json!({"embedding": embedding, "popularity": (i % 500) as f64, "year": 1999});
        changes
            .items
            .merge(&format!("new-{i}"), fields.as_object().unwrap());
    }
    changes
}

/// Feature assembly and caller-candidate id lookups on a 1M-item catalog
/// (the issue-5 scale): the pipeline's filter (500 rows) and ranker
/// (100 rows) matrices for a known user, over rows drawn at random from
/// the million, and resolving 125 caller-supplied ids (the load mix's
/// mean).
fn catalog_1m(c: &mut Criterion, fx: &Fixture) {
    if std::env::var_os("CASCADE_BENCH_SKIP_1M").is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = cascade::catalog::generate::Spec {
        items: 1_000_000,
        users: 100_000,
        dim: 64,
        clusters: 1000,
        spread: 0.5,
        seed: 42,
    };
    let template = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/catalog");
    cascade::catalog::generate::write(&template, &spec, dir.path()).unwrap();
    let catalog = Catalog::load(dir.path()).unwrap();
    // A known user at 21:00 on a Thursday; the rest of the context missing.
    let mut ctx = vec![f32::NAN; catalog.schema.context.len()];
    for (name, value) in [("hour", 21.0), ("weekday", 3.0)] {
        if let Some((i, _)) = catalog.schema.context_field(name) {
            ctx[i] = value;
        }
    }
    let subject = Subject {
        user: Some(12_345),
        ctx,
        now_ms: 0.0,
        user_id: None,
        session: None,
    };
    // Random rows (a fixed xorshift), as retrieval from a million returns.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut draw = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % spec.items as u64) as u32
            })
            .collect()
    };
    let mut group = c.benchmark_group("catalog_1m");
    for (role, n) in [("filter", 500), ("ranker", 100)] {
        let stage = fx.stage(role);
        let decls = &stage.model().spec.input.as_ref().unwrap().features;
        let set = FeatureSet::compile(decls, &catalog.tables()).unwrap();
        // A fresh draw per call, so no run reuses rows the last one cached.
        let draws: Vec<Vec<u32>> = (0..1024).map(|_| draw(n)).collect();
        let mut next = draws.iter().cycle();
        group.throughput(Throughput::Elements(n as u64));
        let id = BenchmarkId::new(format!("features/{role}_{}", set.width()), n);
        bench_assembly(&mut group, id, &set, &catalog, &subject, || {
            next.next().unwrap()
        });
    }
    // The same ranker assembly on a generation with 10,000 new items and
    // 10,000 changed ones (the rows drawn stay snapshot rows, 1 % of them
    // changed): what the delta's branch costs every read.
    let mut changes = new_items(&catalog, 10_000);
    for r in (0..spec.items).step_by(100) {
        changes.items.merge(
            catalog.items.id(r as u32),
            serde_json::json!({"year": 2000}).as_object().unwrap(),
        );
    }
    let changed = catalog.with_changes(&changes, 1);
    {
        let stage = fx.stage("ranker");
        let decls = &stage.model().spec.input.as_ref().unwrap().features;
        let set = FeatureSet::compile(decls, &changed.tables()).unwrap();
        let draws: Vec<Vec<u32>> = (0..1024).map(|_| draw(100)).collect();
        let mut next = draws.iter().cycle();
        group.throughput(Throughput::Elements(100));
        let id = BenchmarkId::new(format!("features_with_delta/ranker_{}", set.width()), 100);
        bench_assembly(&mut group, id, &set, &changed, &subject, || {
            next.next().unwrap()
        });
    }
    // Laying changes over the million: what each batch of item or user
    // events costs the applying thread.
    group.throughput(Throughput::Elements(1));
    for n in [100, 10_000] {
        let changes = new_items(&catalog, n);
        group.bench_function(format!("changes/rebuild_{n}"), |b| {
            b.iter(|| black_box(catalog.with_changes(&changes, 1).items.len()))
        });
    }
    let ids: Vec<Vec<String>> = (0..1024)
        .map(|_| {
            draw(125)
                .into_iter()
                .map(|r| catalog.items.id(r).to_string())
                .collect()
        })
        .collect();
    let mut next = ids.iter().cycle();
    group.throughput(Throughput::Elements(125));
    group.bench_function("ids/row/125", |b| {
        b.iter(|| {
            let found = next
                .next()
                .unwrap()
                .iter()
                .filter_map(|id| catalog.items.row(id))
                .count();
            black_box(found)
        })
    });
    group.finish();
}

/// The parts of one uncached known-user request, each alone and then in a
/// row, in-process: no HTTP, no runtime, no batcher, no metrics. What the
/// server's CPU per request is compared with (`benches/RESULTS.md`).
fn parts(c: &mut Criterion, fx: &Fixture) {
    use cascade::pipeline::stages::{self, Retrieval};
    let pipeline = fx.state.pipeline.as_ref().unwrap();
    let catalog = &*pipeline.catalog();
    let subject = pipeline.subject(&validate(&fx.state, &known_user_request()));
    let (vectors, dim) = catalog.item_vectors().expect("item vectors");
    let index = ExactIndex::new(cascade::catalog::index::unit_rows(vectors, dim), dim);
    let excluded = HashSet::new();
    let retrieval = Retrieval {
        index: &index,
        history: &[],
        trending: None,
        trending_with_embedding: 0,
        excluded: &excluded,
        n: fx.state.config.ranking.retrieve_n,
        exclude_seen: true,
    };
    let keep = fx.state.config.ranking.filter_keep;
    let (filter, ranker) = (fx.stage("filter"), fx.stage("ranker"));
    let retrieve = || stages::retrieve(catalog, &subject, &[], &retrieval);
    let assemble = |stage: &StageModel, rows: &[u32]| {
        let set = stage.features();
        let (mut matrix, mut missing) = (Vec::new(), vec![0u32; set.width()]);
        set.assemble(
            &catalog.sources(),
            &subject,
            rows,
            &mut matrix,
            &mut missing,
        );
        matrix
    };
    let infer = |stage: &StageModel, matrix: &[f32], n: usize| -> Vec<f32> {
        let model = stage.model();
        let out = model.backend.run(vec![tensor(model, matrix, n)]).unwrap();
        match &out[0].data {
            TensorData::F32(v) => v.clone(),
            _ => panic!("f32 scores"),
        }
    };
    // The inputs each part sees in a real request.
    let candidates: Vec<u32> = retrieve().into_iter().map(|(r, _)| r).collect();
    let filter_matrix = assemble(&filter, &candidates);
    let filter_scores = infer(&filter, &filter_matrix, candidates.len());
    let top = |scores: &[f32]| {
        let mut scored: Vec<(u32, f32)> = candidates
            .iter()
            .copied()
            .zip(scores.iter().copied())
            .collect();
        stages::top_scored(&mut scored, keep);
        scored.into_iter().map(|(r, _)| r).collect::<Vec<u32>>()
    };
    let kept = top(&filter_scores);
    let ranker_matrix = assemble(&ranker, &kept);
    let mut group = c.benchmark_group("parts");
    group.bench_function("retrieve", |b| b.iter(|| black_box(retrieve())));
    let n = candidates.len();
    group.bench_function(format!("filter_features_{n}"), |b| {
        b.iter(|| black_box(assemble(&filter, &candidates)))
    });
    group.bench_function(format!("filter_inference_{n}"), |b| {
        b.iter(|| black_box(infer(&filter, &filter_matrix, n)))
    });
    group.bench_function(format!("filter_keep_{keep}"), |b| {
        b.iter(|| black_box(top(&filter_scores)))
    });
    let k = kept.len();
    group.bench_function(format!("ranker_features_{k}"), |b| {
        b.iter(|| black_box(assemble(&ranker, &kept)))
    });
    group.bench_function(format!("ranker_inference_{k}"), |b| {
        b.iter(|| black_box(infer(&ranker, &ranker_matrix, k)))
    });
    group.bench_function("all_in_a_row", |b| {
        b.iter(|| {
            let rows: Vec<u32> = retrieve().into_iter().map(|(r, _)| r).collect();
            let scores = infer(&filter, &assemble(&filter, &rows), rows.len());
            let mut scored: Vec<(u32, f32)> = rows.into_iter().zip(scores).collect();
            stages::top_scored(&mut scored, keep);
            let kept: Vec<u32> = scored.into_iter().map(|(r, _)| r).collect();
            black_box(infer(&ranker, &assemble(&ranker, &kept), kept.len()))
        })
    });
    group.finish();
}

fn components(c: &mut Criterion) {
    let fx = Fixture::load();
    features(c, &fx);
    batcher(c, &fx);
    cache(c, &fx);
    retrieval(c, &fx);
    parts(c, &fx);
    live(c, &fx);
    catalog_1m(c, &fx);
}

/// Counter features against stored ones, and the cost of applying events.
fn live(c: &mut Criterion, fx: &Fixture) {
    use cascade::data::features::{FeatureDecl, Sources};
    use cascade::events::online::Online;
    use cascade::events::Event;
    let pipeline = fx.state.pipeline.as_ref().unwrap();
    let catalog = &pipeline.catalog();
    let items = catalog.items.len();
    let day = 86_400_000i64;
    let now = 1_000 * day;
    // 100k ratings by 1,000 users over the last 60 days, skewed to the
    // low rows the way popularity is.
    let interaction = |i: u64, t: i64| Event::Interaction {
        id: format!("e{i}"),
        user_id: format!("u{}", i % 1000),
        item_id: catalog
            .items
            .id(((i * i) % items as u64 / 3) as u32)
            .to_string(),
        kind: "rating".into(),
        value: Some((1 + i % 5) as f64),
        timestamp: t,
        request_id: None,
        attribution: None,
    };
    let online = Online::new(catalog.clone(), Default::default());
    let history: Vec<Event> = (0..100_000u64)
        .map(|i| interaction(i, now - 60 * day + (i as i64 * 60 * day) / 100_000))
        .collect();
    for batch in history.chunks(1000) {
        online.apply(batch);
    }
    let decls = |exprs: [&str; 3]| -> Vec<FeatureDecl> {
        exprs
            .iter()
            .enumerate()
            .map(|(i, e)| FeatureDecl {
                name: format!("f{i}"),
                expr: e.to_string(),
                default: 0.0,
            })
            .collect()
    };
    let stored = FeatureSet::compile(
        &decls(["item.popularity", "item.recent_popularity", "item.pos_rate"]),
        &catalog.tables(),
    )
    .unwrap();
    let counters = FeatureSet::compile(
        &decls([
            "count(item, kind = 'rating', min_value = 4, last = '30d')",
            "count(item, kind = 'rating', last = '7d')",
            "recency(item, kind = 'rating')",
        ]),
        &catalog.tables(),
    )
    .unwrap();
    let mut subject = pipeline.subject(&validate(&fx.state, &known_user_request()));
    subject.now_ms = now as f64;
    let rows = candidate_rows(300, items);
    let mut group = c.benchmark_group("live");
    group.throughput(Throughput::Elements(300));
    let (mut matrix, mut missing) = (Vec::new(), vec![0u32; 3]);
    group.bench_function(BenchmarkId::new("features/stored_3", 300), |b| {
        b.iter(|| {
            stored.assemble(
                &catalog.sources(),
                &subject,
                &rows,
                &mut matrix,
                &mut missing,
            );
            black_box(&matrix);
        })
    });
    group.bench_function(BenchmarkId::new("features/counters_3", 300), |b| {
        b.iter(|| {
            online.read(|view| {
                let src = Sources {
                    live: Some(view),
                    ..catalog.sources()
                };
                counters.assemble(&src, &subject, &rows, &mut matrix, &mut missing);
            });
            black_box(&matrix);
        })
    });
    group.throughput(Throughput::Elements(100));
    let mut next = 100_000u64;
    group.bench_function(BenchmarkId::new("apply", 100), |b| {
        b.iter_batched(
            || {
                let batch: Vec<Event> = (next..next + 100).map(|i| interaction(i, now)).collect();
                next += 100;
                batch
            },
            |batch| online.apply(&batch),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = components
}
criterion_main!(benches);
