//! Retrieval benchmark: exact scan, hnsw_rs's own search, and Cascade's
//! frozen-graph search over the same hnsw_rs graph, on seeded clustered
//! unit vectors that benches/faiss/compare.py reads too.
//!
//! ```sh
//! cargo bench --bench retrieval -- --quick          # 100k only, ~2 min
//! cargo bench --bench retrieval                     # 100k and 1M (1M builds for minutes)
//! cargo bench --bench retrieval -- --sizes 100000 --levers   # + build-time levers
//! benches/faiss/.venv/bin/python benches/faiss/compare.py   # faiss on the same files, side by side
//! ```
//!
//! Files go to `.cache/retrieval/<n>/` (base.npy, queries.npy, gt.npy,
//! ours.json, dumps). Single-query latency runs on one thread; batch
//! throughput and builds use two.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cascade::catalog::graph::{self, BuildParams, Graph, InnerProductDistance};
use cascade::catalog::index::exact_top_k;
use cascade::catalog::synth::Clustered;
use cascade::catalog::{npy, persist, simd};
use hnsw_rs::prelude::{FilterT, Hnsw};
use serde_json::{json, Value};

const DIM: usize = 64;
const K: usize = 100;
const CLUSTERS: usize = 1000;
const SPREAD: f32 = 1.0;
const SEED: u64 = 42;
const EFS: [usize; 7] = [100, 128, 160, 200, 256, 384, 512];

struct Args {
    sizes: Vec<usize>,
    queries: usize,
    dir: PathBuf,
    levers: bool,
    crossover: bool,
    reuse_dump: bool,
    reload: Option<(String, PathBuf)>,
}

fn args() -> Args {
    let mut a = Args {
        sizes: vec![100_000, 1_000_000],
        queries: 1000,
        dir: PathBuf::from(".cache/retrieval"),
        levers: false,
        crossover: false,
        reuse_dump: false,
        reload: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.sizes = vec![100_000],
            "--sizes" => {
                a.sizes = it
                    .next()
                    .expect("--sizes N,N")
                    .split(',')
                    .map(|s| s.parse().expect("size"))
                    .collect()
            }
            "--queries" => a.queries = it.next().expect("--queries N").parse().expect("N"),
            "--dir" => a.dir = PathBuf::from(it.next().expect("--dir PATH")),
            "--levers" => a.levers = true,
            "--crossover" => a.crossover = true,
            "--reuse-dump" => a.reuse_dump = true,
            "--reload" => {
                let kind = it.next().expect("--reload ours|hnsw_rs PATH");
                a.reload = Some((kind, PathBuf::from(it.next().expect("PATH"))));
            }
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The rows a search found, as returned by any method.
type Found = Vec<u32>;
/// A search method under test.
type Method<'a> = Box<dyn Fn(&[f32]) -> Found + Sync + 'a>;

struct Measured {
    p50_us: f64,
    p99_us: f64,
    qps: f64,
    recall10: f64,
    recall100: f64,
}

/// Times `search` one query at a time (one thread), then over two threads,
/// and scores its answers against `gt` (`[q, K]`).
fn measure(
    queries: &[f32],
    gt: &[i32],
    search: &(dyn Fn(&[f32]) -> Found + Sync),
    limit: usize,
) -> Measured {
    let qs: Vec<&[f32]> = queries.chunks_exact(DIM).take(limit).collect();
    for q in qs.iter().take(50) {
        std::hint::black_box(search(q));
    }
    let mut times = Vec::with_capacity(qs.len());
    let mut answers = Vec::with_capacity(qs.len());
    for q in &qs {
        let t = Instant::now();
        let found = search(q);
        times.push(t.elapsed().as_secs_f64() * 1e6);
        answers.push(found);
    }
    times.sort_by(f64::total_cmp);
    let (mut hit10, mut hit100) = (0usize, 0usize);
    for (i, found) in answers.iter().enumerate() {
        let truth = &gt[i * K..(i + 1) * K];
        hit10 += found
            .iter()
            .take(10)
            .filter(|r| truth[..10].contains(&(**r as i32)))
            .count();
        hit100 += found
            .iter()
            .take(K)
            .filter(|r| truth.contains(&(**r as i32)))
            .count();
    }
    // Throughput: both cores, each taking every other query, repeated
    // until at least half a second has passed.
    let total: f64 = times.iter().sum::<f64>() / 1e6;
    let rounds = ((0.5 / total.max(1e-6)).ceil() as usize).clamp(1, 50);
    let t = Instant::now();
    std::thread::scope(|s| {
        for part in 0..2 {
            let qs = &qs;
            s.spawn(move || {
                for _ in 0..rounds {
                    for q in qs.iter().skip(part).step_by(2) {
                        std::hint::black_box(search(q));
                    }
                }
            });
        }
    });
    let qps = (qs.len() * rounds) as f64 / t.elapsed().as_secs_f64();
    Measured {
        p50_us: percentile(&times, 0.5),
        p99_us: percentile(&times, 0.99),
        qps,
        recall10: hit10 as f64 / (10 * qs.len()) as f64,
        recall100: hit100 as f64 / (K * qs.len()) as f64,
    }
}

struct Report {
    rows: Vec<Value>,
}

impl Report {
    fn header() {
        println!(
            "| index | config | build s | p50 µs | p99 µs | batch q/s (2 thr) | recall@10 | recall@100 | memory MiB |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
    }

    fn row(
        &mut self,
        index: &str,
        config: &str,
        build_s: Option<f64>,
        m: &Measured,
        mem: Option<f64>,
    ) {
        let opt = |v: Option<f64>, d: usize| v.map_or("—".into(), |v| format!("{v:.d$}"));
        println!(
            "| {index} | {config} | {} | {:.0} | {:.0} | {:.0} | {:.3} | {:.3} | {} |",
            opt(build_s, 1),
            m.p50_us,
            m.p99_us,
            m.qps,
            m.recall10,
            m.recall100,
            opt(mem, 0)
        );
        self.rows.push(json!({
            "index": index, "config": config, "build_s": build_s,
            "p50_us": m.p50_us, "p99_us": m.p99_us, "qps": m.qps,
            "recall10": m.recall10, "recall100": m.recall100, "memory_mib": mem,
        }));
    }
}

fn dataset(dir: &Path, n: usize, nq: usize) -> (Vec<f32>, Vec<f32>, Vec<i32>) {
    std::fs::create_dir_all(dir).expect("data dir");
    let (base_p, q_p, gt_p) = (
        dir.join("base.npy"),
        dir.join("queries.npy"),
        dir.join("gt.npy"),
    );
    if let (Ok((b, _)), Ok((q, _)), Ok((g, _))) = (
        npy::read::<f32>(&base_p),
        npy::read::<f32>(&q_p),
        npy::read::<i32>(&gt_p),
    ) {
        if b.len() == n * DIM && q.len() == nq * DIM && g.len() == nq * K {
            return (b, q, g);
        }
    }
    let t = Instant::now();
    let gen = Clustered::new(DIM, CLUSTERS, SPREAD, SEED);
    let base = gen.items(n);
    let queries = gen.queries(nq);
    eprintln!(
        "generated {n} × {DIM} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut gt = vec![0i32; nq * K];
    std::thread::scope(|s| {
        for (qs, out) in queries
            .chunks(DIM * nq.div_ceil(2))
            .zip(gt.chunks_mut(K * nq.div_ceil(2)))
        {
            let base = &base;
            s.spawn(move || {
                for (q, o) in qs.chunks_exact(DIM).zip(out.chunks_exact_mut(K)) {
                    for (slot, (r, _)) in o.iter_mut().zip(exact_top_k(base, DIM, q, K, &|_| false))
                    {
                        *slot = r as i32;
                    }
                }
            });
        }
    });
    eprintln!("exact ground truth in {:.1} s", t.elapsed().as_secs_f64());
    npy::write(&base_p, &base, DIM).expect("write base");
    npy::write(&q_p, &queries, DIM).expect("write queries");
    npy::write(&gt_p, &gt, K).expect("write gt");
    (base, queries, gt)
}

fn build_hnsw_rs(
    base: &[f32],
    params: BuildParams,
    dist: InnerProductDistance,
) -> (Hnsw<'static, f32, InnerProductDistance>, f64, u64) {
    let rss0 = rss_bytes();
    let t = Instant::now();
    let mut last = Instant::now();
    let hnsw = graph::build_hnsw_rs(base, DIM, params, dist, &mut |done, total| {
        if last.elapsed().as_secs_f64() > 5.0 {
            eprintln!("  inserted {:.0}%", 100.0 * done as f64 / total as f64);
            last = Instant::now();
        }
    });
    (
        hnsw,
        t.elapsed().as_secs_f64(),
        rss_bytes().saturating_sub(rss0),
    )
}

struct Skip1Pct;

impl FilterT for Skip1Pct {
    fn hnsw_filter(&self, id: &usize) -> bool {
        !id.is_multiple_of(100)
    }
}

fn bench_size(args: &Args, n: usize) {
    let dir = args.dir.join(n.to_string());
    let (base, queries, gt) = dataset(&dir, n, args.queries);
    let kern = simd::kernels();
    println!("\n### {n} × {DIM}, {CLUSTERS} clusters, spread {SPREAD}, seed {SEED}, {} queries, top-{K}, kernels: {}\n", args.queries, kern.name());
    Report::header();
    let mut report = Report { rows: Vec::new() };
    let data_mib = mib((base.len() * 4) as u64);

    // Exact scan: single-query latency on fewer queries at 1M.
    let exact_limit = if n > 200_000 { 200 } else { args.queries };
    let m = measure(
        &queries,
        &gt,
        &|q| {
            exact_top_k(&base, DIM, q, K, &|_| false)
                .into_iter()
                .map(|x| x.0)
                .collect()
        },
        exact_limit,
    );
    report.row("exact", "SIMD scan", None, &m, Some(data_mib));

    let params = BuildParams {
        max_connections: 16,
        ef_construction: 200,
    };
    // --reuse-dump: search the graph an earlier run of this bench dumped
    // (its build figures kept beside it) instead of building for minutes;
    // hnsw_rs's own rows are then left out.
    let ours = dir.join("index.cascade");
    let build_json = dir.join("build.json");
    let reused: Option<Value> = args
        .reuse_dump
        .then(|| std::fs::read(&build_json).ok())
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|_| ours.exists());
    let (hnsw, build_s, build_rss) = match &reused {
        Some(b) => (
            None,
            b["build_s"].as_f64().unwrap_or(0.0),
            b["build_rss"].as_u64().unwrap_or(0),
        ),
        None => {
            let (h, s, r) = build_hnsw_rs(&base, params, InnerProductDistance::default());
            (Some(h), s, r)
        }
    };
    eprintln!(
        "hnsw_rs build {build_s:.1} s, RSS +{:.0} MiB",
        mib(build_rss)
    );

    for ef in [100, 128, 256] {
        let Some(hnsw) = &hnsw else { break };
        let m = measure(
            &queries,
            &gt,
            &|q| {
                hnsw.search(q, K, ef)
                    .into_iter()
                    .map(|x| x.d_id as u32)
                    .collect()
            },
            args.queries,
        );
        report.row(
            "hnsw_rs search",
            &format!("M16 efC200 ef{ef}"),
            Some(build_s),
            &m,
            Some(mib(build_rss)),
        );
    }

    let t = Instant::now();
    let mut g = match &hnsw {
        Some(hnsw) => Graph::from_hnsw_rs(hnsw, base.clone(), DIM, params),
        None => persist::load(&ours).expect("reuse the dump"),
    };
    let freeze_s = match &reused {
        Some(b) => b["freeze_s"].as_f64().unwrap_or(0.0),
        None => t.elapsed().as_secs_f64(),
    };
    if reused.is_none() {
        let b = json!({"build_s": build_s, "freeze_s": freeze_s, "build_rss": build_rss});
        std::fs::write(&build_json, b.to_string()).expect("build.json");
    }
    let total_build = build_s + freeze_s;
    eprintln!(
        "freeze {freeze_s:.2} s, graph {:.0} MiB",
        mib(g.bytes() as u64)
    );
    for quant in [false, true] {
        g.set_quantised(quant);
        let name = if quant {
            "cascade int8+rescore"
        } else {
            "cascade f32"
        };
        for ef in EFS {
            let m = measure(
                &queries,
                &gt,
                &|q| {
                    g.search(q, K, ef, &|_| false)
                        .into_iter()
                        .map(|x| x.0)
                        .collect()
                },
                args.queries,
            );
            report.row(
                name,
                &format!("M16 efC200 ef{ef}"),
                Some(total_build),
                &m,
                Some(mib(g.bytes() as u64)),
            );
        }
    }
    g.set_quantised(false);

    // Exclusions: 1% of the rows skipped. hnsw_rs's search_filter vs plain
    // search over-fetching and dropping, and our in-beam skip. Recall is
    // against the filtered truth (first K unskipped of the true top list).
    println!();
    println!("Exclusion (every row with row % 100 == 0 skipped), top-10 of the unskipped:\n");
    println!("| method | p50 µs | p99 µs | recall@10 |");
    println!("|---|---|---|---|");
    let filtered_gt: Vec<i32> = gt
        .chunks_exact(K)
        .flat_map(|t| {
            let mut v: Vec<i32> = t
                .iter()
                .copied()
                .filter(|r| r % 100 != 0)
                .take(10)
                .collect();
            v.resize(K, -1);
            v
        })
        .collect();
    let mut filtered: Vec<(&str, Method)> = Vec::new();
    if let Some(hnsw) = &hnsw {
        filtered.push((
            "hnsw_rs search_filter, ef 128",
            Box::new(|q: &[f32]| {
                hnsw.search_filter(q, 10, 128, Some(&Skip1Pct))
                    .into_iter()
                    .map(|x| x.d_id as u32)
                    .collect()
            }),
        ));
        filtered.push((
            "hnsw_rs search k 20 + post-filter, ef 128",
            Box::new(|q: &[f32]| {
                hnsw.search(q, 20, 128)
                    .into_iter()
                    .map(|x| x.d_id as u32)
                    .filter(|r| r % 100 != 0)
                    .take(10)
                    .collect()
            }),
        ));
    }
    filtered.push((
        "cascade in-beam skip, ef 128",
        Box::new(|q: &[f32]| {
            g.search(q, 10, 128, &|r| r % 100 == 0)
                .into_iter()
                .map(|x| x.0)
                .collect()
        }),
    ));
    let mut exclusion = Vec::new();
    for (name, f) in &filtered {
        let m = measure(&queries, &filtered_gt, f.as_ref(), args.queries);
        println!(
            "| {name} | {:.0} | {:.0} | {:.3} |",
            m.p50_us, m.p99_us, m.recall10
        );
        exclusion.push(
            json!({"method": name, "p50_us": m.p50_us, "p99_us": m.p99_us, "recall10": m.recall10}),
        );
    }
    drop(filtered);

    // Persistence: our dump vs hnsw_rs's file_dump, each reloaded in a
    // fresh process so that its RSS is its own.
    println!();
    let t = Instant::now();
    persist::save(&g, &ours).expect("save");
    let save_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    if let Some(hnsw) = &hnsw {
        hnsw_rs::api::AnnT::file_dump(hnsw, &dir, "hnswrs").expect("hnsw_rs dump");
    }
    let dump_rs_s = t.elapsed().as_secs_f64();
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let rs_size = size(&dir.join("hnswrs.hnsw.graph")) + size(&dir.join("hnswrs.hnsw.data"));
    let had_hnsw = hnsw.is_some();
    drop(hnsw);
    let reload = |kind: &str, path: &Path| -> Value {
        // argv[0], not current_exe(): a rebuild during a long run replaces
        // the file, and /proc/self/exe then names a deleted one.
        let exe = std::env::args().next().expect("argv[0]");
        let out = std::process::Command::new(exe)
            .args(["--reload", kind])
            .arg(path)
            .output()
            .expect("reload process");
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| json!({"error": String::from_utf8_lossy(&out.stderr)}))
    };
    let r_ours = reload("ours", &ours);
    let r_rs = match had_hnsw {
        true => reload("hnsw_rs", &dir.join("hnswrs")),
        false => json!("not measured (--reuse-dump)"),
    };
    println!(
        "| dump | write s | file MiB | reload s | RSS after reload MiB | build s (for scale) |"
    );
    println!("|---|---|---|---|---|---|");
    println!("| cascade (graph + vectors, validated) | {save_s:.2} | {:.0} | {} | {} | {total_build:.1} |", mib(size(&ours)), r_ours["secs"], r_ours["rss_mib"]);
    println!(
        "| hnsw_rs file_dump / HnswIo | {dump_rs_s:.2} | {:.0} | {} | {} | {build_s:.1} |",
        mib(rs_size),
        r_rs["secs"],
        r_rs["rss_mib"]
    );
    for f in ["hnswrs.hnsw.graph", "hnswrs.hnsw.data"] {
        let _ = std::fs::remove_file(dir.join(f));
    }

    let out = json!({
        "n": n, "dim": DIM, "k": K, "kernels": kern.name(),
        "rows": report.rows, "exclusion": exclusion,
        "persist": {"ours": {"write_s": save_s, "file_mib": mib(size(&ours)), "reload": r_ours},
                    "hnsw_rs": {"write_s": dump_rs_s, "file_mib": mib(rs_size), "reload": r_rs}},
    });
    std::fs::write(
        dir.join("ours.json"),
        serde_json::to_string_pretty(&out).unwrap(),
    )
    .expect("ours.json");

    if args.levers {
        levers(&base, &queries, &gt);
    }
}

/// Build-time levers at this size: the scalar kernel instead of SIMD, and
/// lower ef_construction / M (then the search ef that reaches recall 0.97).
fn levers(base: &[f32], queries: &[f32], gt: &[i32]) {
    println!("\nBuild levers (2 threads):\n");
    println!("| build | build s | ef for recall@100 ≥ 0.97 | p50 µs there |");
    println!("|---|---|---|---|");
    let configs = [
        ("scalar kernel, M16 efC200", simd::scalar_kernels(), 16, 200),
        ("SIMD, M16 efC100", *simd::kernels(), 16, 100),
        ("SIMD, M12 efC200", *simd::kernels(), 12, 200),
        ("SIMD, M24 efC200", *simd::kernels(), 24, 200),
    ];
    for (name, kern, m, efc) in configs {
        let params = BuildParams {
            max_connections: m,
            ef_construction: efc,
        };
        let (hnsw, secs, _) = build_hnsw_rs(base, params, InnerProductDistance(kern));
        let g = Graph::from_hnsw_rs(&hnsw, base.to_vec(), DIM, params);
        drop(hnsw);
        let mut at = ("—".to_string(), "—".to_string());
        for ef in EFS {
            let m = measure(
                queries,
                gt,
                &|q| {
                    g.search(q, K, ef, &|_| false)
                        .into_iter()
                        .map(|x| x.0)
                        .collect()
                },
                1000,
            );
            if m.recall100 >= 0.97 {
                at = (ef.to_string(), format!("{:.0}", m.p50_us));
                break;
            }
        }
        println!("| {name} | {secs:.1} | {} | {} |", at.0, at.1);
    }
}

/// Median single-query latency of `search` over `queries`, in µs.
fn p50(queries: &[f32], dim: usize, search: &dyn Fn(&[f32]) -> usize) -> f64 {
    for q in queries.chunks_exact(dim).take(20) {
        std::hint::black_box(search(q));
    }
    let mut t: Vec<f64> = queries
        .chunks_exact(dim)
        .map(|q| {
            let s = Instant::now();
            std::hint::black_box(search(q));
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    percentile(&t, 0.5)
}

/// Where the exact scan stops beating HNSW (M16 efC200, int8 walk), at the
/// pipeline's retrieve_n (300) and at k 100 (ef 160), for dims 32 and 64.
fn crossover() {
    println!("| dim | items | exact k100 µs | HNSW k100 ef160 µs | exact k300 µs | HNSW k300 (ef 300) µs |");
    println!("|---|---|---|---|---|---|");
    for dim in [32, 64] {
        for n in [2_000, 5_000, 10_000, 20_000, 50_000] {
            let gen = Clustered::new(dim, CLUSTERS.min(n / 20), SPREAD, SEED);
            let (base, queries) = (gen.items(n), gen.queries(300));
            let params = BuildParams {
                max_connections: 16,
                ef_construction: 200,
            };
            let hnsw = graph::build_hnsw_rs(
                &base,
                dim,
                params,
                InnerProductDistance::default(),
                &mut |_, _| {},
            );
            let mut g = Graph::from_hnsw_rs(&hnsw, base.clone(), dim, params);
            drop(hnsw);
            g.set_quantised(true);
            let e100 = p50(&queries, dim, &|q| {
                exact_top_k(&base, dim, q, 100, &|_| false).len()
            });
            let h100 = p50(&queries, dim, &|q| g.search(q, 100, 160, &|_| false).len());
            let e300 = p50(&queries, dim, &|q| {
                exact_top_k(&base, dim, q, 300, &|_| false).len()
            });
            let h300 = p50(&queries, dim, &|q| g.search(q, 300, 300, &|_| false).len());
            println!("| {dim} | {n} | {e100:.0} | {h100:.0} | {e300:.0} | {h300:.0} |");
        }
    }
}

fn reload_only(kind: &str, path: &Path) {
    let rss0 = rss_bytes();
    let t = Instant::now();
    // Each loaded structure stays alive until its RSS is read.
    let (len, secs, rss) = match kind {
        "ours" => {
            let g = persist::load(path).expect("load");
            (
                g.len(),
                t.elapsed().as_secs_f64(),
                rss_bytes().saturating_sub(rss0),
            )
        }
        _ => {
            let dir = path.parent().expect("dir");
            let base = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .to_string();
            let io = hnsw_rs::hnswio::HnswIo::new(dir, &base);
            let h: Hnsw<f32, InnerProductDistance> = io
                .load_hnsw_with_dist(InnerProductDistance::default())
                .expect("hnsw_rs reload");
            (
                h.get_nb_point(),
                t.elapsed().as_secs_f64(),
                rss_bytes().saturating_sub(rss0),
            )
        }
    };
    println!(
        "{}",
        json!({"secs": (secs * 100.0).round() / 100.0, "rss_mib": mib(rss).round(), "items": len})
    );
}

fn main() {
    let args = args();
    if let Some((kind, path)) = &args.reload {
        return reload_only(kind, path);
    }
    if args.crossover {
        return crossover();
    }
    for &n in &args.sizes {
        bench_size(&args, n);
    }
}
