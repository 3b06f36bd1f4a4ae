"""faiss-cpu on the retrieval benchmark's own files, in the same columns.

Reads .cache/retrieval/<n>/{base,queries,gt}.npy written by
`cargo bench --bench retrieval`, runs IndexHNSWFlat (M 16, efConstruction
200, inner product) at several efSearch and IndexFlatIP, prints one table
per size, and, when that run's ours.json is there, a side-by-side table with
Cascade's rows at equal recall and the ratios.

    python3 -m venv benches/faiss/.venv
    benches/faiss/.venv/bin/pip install -r benches/faiss/requirements.txt
    benches/faiss/.venv/bin/python benches/faiss/compare.py [--sizes 100000,1000000]

Single-query latency is one `index.search` call per query from Python on one
OpenMP thread (a few µs of the figure are the Python call itself); batch
throughput is one call with every query on two threads.
"""

import argparse
import json
import os
import time

import faiss
import numpy as np

K = 100
EFS = [100, 128, 160, 200, 256, 384, 512]


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(index, xq, gt, limit=None):
    xq = xq[:limit] if limit else xq
    faiss.omp_set_num_threads(1)
    for i in range(min(50, len(xq))):
        index.search(xq[i : i + 1], K)
    times = []
    found = np.empty((len(xq), K), dtype=np.int64)
    for i in range(len(xq)):
        t = time.perf_counter()
        _, ids = index.search(xq[i : i + 1], K)
        times.append((time.perf_counter() - t) * 1e6)
        found[i] = ids[0]
    times.sort()
    truth = gt[: len(xq)]
    hit10 = sum(len(set(found[i, :10]) & set(truth[i, :10])) for i in range(len(xq)))
    hit100 = sum(len(set(found[i]) & set(truth[i])) for i in range(len(xq)))
    faiss.omp_set_num_threads(2)
    total = sum(times) / 1e6
    rounds = int(min(50, max(1, np.ceil(0.5 / max(total, 1e-6)))))
    t = time.perf_counter()
    for _ in range(rounds):
        index.search(xq, K)
    qps = len(xq) * rounds / (time.perf_counter() - t)
    pick = lambda p: times[int(round((len(times) - 1) * p))]
    return {
        "p50_us": pick(0.5),
        "p99_us": pick(0.99),
        "qps": qps,
        "recall10": hit10 / (10 * len(xq)),
        "recall100": hit100 / (K * len(xq)),
    }


def row(index, config, build_s, m, mem):
    fmt = lambda v, d: "—" if v is None else f"{v:.{d}f}"
    print(
        f"| {index} | {config} | {fmt(build_s, 1)} | {m['p50_us']:.0f} | {m['p99_us']:.0f} | "
        f"{m['qps']:.0f} | {m['recall10']:.3f} | {m['recall100']:.3f} | {fmt(mem, 0)} |"
    )
    return dict(index=index, config=config, build_s=build_s, memory_mib=mem, **m)


def side_by_side(faiss_rows, ours):
    """For each faiss HNSW row, Cascade's fastest row reaching its recall@100."""
    print("\nAt equal recall: Cascade's fastest configuration with recall@100 at least faiss's.\n")
    print("| faiss efSearch | faiss recall@100 | faiss p50 / p99 µs | Cascade config | Cascade recall@100 | Cascade p50 / p99 µs | p50 ratio | p99 ratio | batch q/s ratio | build ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    mine = [r for r in ours["rows"] if r["index"].startswith("cascade")]
    for f in faiss_rows:
        if not f["index"].startswith("faiss HNSW"):
            continue
        ok = [r for r in mine if r["recall100"] >= f["recall100"] - 1e-9]
        if not ok:
            print(f"| {f['config']} | {f['recall100']:.3f} | {f['p50_us']:.0f} / {f['p99_us']:.0f} | none reaches it | | | | | | |")
            continue
        c = min(ok, key=lambda r: r["p50_us"])
        print(
            f"| {f['config']} | {f['recall100']:.3f} | {f['p50_us']:.0f} / {f['p99_us']:.0f} | "
            f"{c['index']} {c['config']} | {c['recall100']:.3f} | {c['p50_us']:.0f} / {c['p99_us']:.0f} | "
            f"{c['p50_us'] / f['p50_us']:.2f}× | {c['p99_us'] / f['p99_us']:.2f}× | "
            f"{c['qps'] / f['qps']:.2f}× | {c['build_s'] / f['build_s']:.2f}× |"
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dir", default=".cache/retrieval")
    args = ap.parse_args()
    for n in [int(s) for s in args.sizes.split(",")]:
        d = os.path.join(args.dir, str(n))
        if not os.path.exists(os.path.join(d, "gt.npy")):
            print(f"{d}: no data; run `cargo bench --bench retrieval` first")
            continue
        xb = np.load(os.path.join(d, "base.npy"))
        xq = np.load(os.path.join(d, "queries.npy"))
        gt = np.load(os.path.join(d, "gt.npy"))
        dim = xb.shape[1]
        print(f"\n### faiss-cpu {faiss.__version__}, {n} × {dim}, {len(xq)} queries, top-{K}\n")
        print("| index | config | build s | p50 µs | p99 µs | batch q/s (2 thr) | recall@10 | recall@100 | memory MiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        rows = []
        flat = faiss.IndexFlatIP(dim)
        flat.add(xb)
        rows.append(row("faiss IndexFlatIP", "exact", None, measure(flat, xq, gt, 200 if n > 200_000 else None), xb.nbytes / 2**20))
        del flat
        faiss.omp_set_num_threads(2)
        rss0 = rss_bytes()
        t = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 200
        hnsw.add(xb)
        build_s = time.perf_counter() - t
        mem = (rss_bytes() - rss0) / 2**20
        for ef in EFS:
            hnsw.hnsw.efSearch = ef
            rows.append(row("faiss HNSWFlat", f"M16 efC200 ef{ef}", build_s, measure(hnsw, xq, gt), mem))
        t = time.perf_counter()
        path = os.path.join(d, "faiss.index")
        faiss.write_index(hnsw, path)
        write_s = time.perf_counter() - t
        del hnsw
        t = time.perf_counter()
        faiss.read_index(path)
        read_s = time.perf_counter() - t
        print(f"\nfaiss write_index {write_s:.2f} s, read_index {read_s:.2f} s, file {os.path.getsize(path) / 2**20:.0f} MiB")
        os.remove(path)
        with open(os.path.join(d, "faiss.json"), "w") as f:
            json.dump({"rows": rows, "write_s": write_s, "read_s": read_s}, f, indent=1)
        ours_p = os.path.join(d, "ours.json")
        if os.path.exists(ours_p):
            with open(ours_p) as f:
                side_by_side(rows, json.load(f))


if __name__ == "__main__":
    main()
