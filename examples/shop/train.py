"""The shop app: a seeded synthetic fashion shop, its catalog snapshot, and a filter and a ranker
trained on features that `cascade features` computes from the declarations in
models/<name>/config.toml (the serving code: training and serving cannot disagree).

Generative model (seeded, documented in README.md):
- 2,000 items in 12 categories, from 150 brands (Zipf-popular, a premium per brand), 0-3 tags from
  an open set, a log-normal price by category and brand, a latent quality, a listing date, 8 %
  out of stock; 1,500 users with a 16-d latent taste, category preferences (Dirichlet), a price
  sensitivity, a country and a preferred device.
- Purchases over 120 days: each user makes Poisson(24) purchases at uniform times; each picks an
  in-stock item with probability softmax(utility), utility = 2.0 taste.item + 1.5 log(12 pref[cat])
  - 0.9 sensitivity log(price / 40) + 0.6 quality + 0.5 [listed < 30 days] (+0.8 on the app) + 0.4 [sale].
- Snapshots: training at day 60 (history before it, labels = purchases in days 60-90), serving at
  day 90 (the shipped catalog; evaluation = purchases in days 90-120). Embeddings are a truncated SVD
  of the history's user x item matrix, so retrieval learns from behaviour, not the latent truth.

    examples/shop/run.sh      (venv + cargo build + this script)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "models", "train"))
import export as X  # noqa: E402  (the MovieLens pipeline's ONNX and repository helpers)

SEED = 7
N_ITEMS, N_USERS, N_BRANDS, DIM, DAYS = 2000, 1500, 150, 16, 120
T0_MS = 1_785_715_200_000  # 2026-08-03T00:00:00Z = day 0
DAY_MS = 86_400_000
CATEGORIES = ["shoes", "tops", "dresses", "jeans", "outerwear", "accessories",
              "bags", "sportswear", "knitwear", "skirts", "swimwear", "sleepwear"]
TAGS = ["sale", "new-season", "organic", "recycled", "bestseller", "limited", "vegan", "basic"]
COUNTRIES = ["DE", "FR", "UK", "ES", "IT", "NL", "PL", "SE"]
CACHE = os.path.join(HERE, ".cache")
CATALOG = os.path.join(HERE, "catalog")
MODELS = os.path.join(HERE, "models")
CASCADE = os.environ.get("CASCADE_BIN", os.path.join(ROOT, "target", "release", "cascade"))
RETRIEVE, KEEP = 200, 50


def world(rng):
    """Items, users and their purchases, from the generative model above."""
    cat = rng.choice(len(CATEGORIES), N_ITEMS, p=rng.dirichlet(np.full(len(CATEGORIES), 3.0)))
    brand_pop = 1 / np.arange(1, N_BRANDS + 1) ** 0.8
    brand = rng.choice(N_BRANDS, N_ITEMS, p=brand_pop / brand_pop.sum())
    premium = rng.normal(0, 0.35, N_BRANDS)
    cat_price = rng.uniform(2.8, 4.6, len(CATEGORIES))
    items = {
        "latent": rng.normal(0, 1, (N_ITEMS, DIM)) / np.sqrt(DIM),
        "cat": cat, "brand": brand,
        "price": np.round(np.exp(cat_price[cat] + premium[brand] + rng.normal(0, 0.3, N_ITEMS)), 2),
        "quality": rng.normal(0, 1, N_ITEMS),
        "listed_day": rng.uniform(-300, DAYS, N_ITEMS),
        "in_stock": (rng.random(N_ITEMS) > 0.08).astype(np.int64),
        "tags": [sorted(rng.choice(TAGS, rng.integers(0, 4), replace=False).tolist()) for _ in range(N_ITEMS)],
    }
    users = {
        "latent": rng.normal(0, 1, (N_USERS, DIM)),
        "pref": rng.dirichlet(np.full(len(CATEGORIES), 0.6), N_USERS),
        "sens": rng.gamma(2.0, 0.5, N_USERS),
        "country": rng.choice(COUNTRIES, N_USERS),
        "device": rng.choice(["web", "app"], N_USERS, p=[0.45, 0.55]),
    }
    sale = np.array(["sale" in t for t in items["tags"]], dtype=float)
    events = []  # (user, item, day)
    for u in range(N_USERS):
        n = rng.poisson(24)
        days = np.sort(rng.uniform(0, DAYS, n))
        base = (2.0 * items["latent"] @ users["latent"][u] + 1.5 * np.log(12 * users["pref"][u][items["cat"]])
                - 0.9 * users["sens"][u] * np.log(items["price"] / 40) + 0.6 * items["quality"] + 0.4 * sale)
        for d in days:
            new = (d - items["listed_day"] >= 0) & (d - items["listed_day"] < 30)
            util = base + new * (0.5 + 0.8 * (users["device"][u] == "app"))
            util = np.where((items["in_stock"] == 1) & (items["listed_day"] <= d), util, -np.inf)
            p = np.exp(util - util.max())
            events.append((u, int(rng.choice(N_ITEMS, p=p / p.sum())), float(d)))
    return items, users, np.array(events, dtype=[("u", int), ("i", int), ("day", float)])


def snapshot(items, users, events, day, rng):
    """What the server would load at `day`: statistics and embeddings from the history before it."""
    hist = events[events["day"] < day]
    counts = np.bincount(hist["i"], minlength=N_ITEMS).astype(float)
    m = np.zeros((N_USERS, N_ITEMS))
    np.add.at(m, (hist["u"], hist["i"]), 1.0)
    u_, s_, vt = np.linalg.svd(m, full_matrices=False)
    iv = vt[:DIM].T * np.sqrt(s_[:DIM]) + rng.normal(0, 1e-3, (N_ITEMS, DIM))
    uv = u_[:, :DIM] * np.sqrt(s_[:DIM]) + rng.normal(0, 1e-3, (N_USERS, DIM))
    iv /= np.linalg.norm(iv, axis=1, keepdims=True)
    uv /= np.linalg.norm(uv, axis=1, keepdims=True)
    reviews = rng.binomial(counts.astype(int) * 3 + 2, 0.5)
    rating = np.clip(3.9 + 0.45 * items["quality"] + rng.normal(0, 0.2, N_ITEMS), 1, 5)
    cat_share = np.full((N_USERS, len(CATEGORIES)), 1.0)
    np.add.at(cat_share, (hist["u"], items["cat"][hist["i"]]), 1.0)
    cat_share /= cat_share.sum(axis=1, keepdims=True)
    mean_lp = np.log(items["price"][hist["i"]]).mean() if len(hist) else 0.0
    sens = np.zeros(N_USERS)
    for u in range(N_USERS):
        mine = hist["i"][hist["u"] == u]
        if len(mine):
            sens[u] = mean_lp - np.log(items["price"][mine]).mean()
    seen = [sorted(set(hist["i"][hist["u"] == u].tolist())) for u in range(N_USERS)]
    listed = items["listed_day"] <= day
    return {"iv": iv, "uv": uv, "counts": counts, "reviews": reviews, "rating": rating,
            "cat_share": cat_share, "sens": sens, "seen": seen, "listed": listed, "day": day}


def item_id(i):
    return f"p{i:05d}"


def user_id(u):
    return f"c{u:05d}"


def write_snapshot(items, users, snap, out):
    os.makedirs(out, exist_ok=True)
    f32 = lambda m: pa.array([r.tolist() for r in np.asarray(m, np.float32)], type=pa.list_(pa.float32()))  # noqa: E731
    keep = np.flatnonzero(snap["listed"])  # items not yet listed are not in the catalog
    pop = snap["counts"] / max(snap["counts"].max(), 1)
    pq.write_table(pa.table({
        "id": [item_id(i) for i in keep],
        "embedding": f32(snap["iv"][keep]),
        "category": [CATEGORIES[c] for c in items["cat"][keep]],
        "brand": [f"brand-{b:03d}" for b in items["brand"][keep]],
        "tags": pa.array([items["tags"][i] for i in keep], type=pa.list_(pa.string())),
        "price": pa.array(items["price"][keep], type=pa.float32()),
        "rating": pa.array(snap["rating"][keep], type=pa.float32()),
        "n_reviews": pa.array(snap["reviews"][keep], type=pa.int64()),
        "popularity": pa.array(pop[keep], type=pa.float32()),
        "in_stock": pa.array(items["in_stock"][keep], type=pa.int64()),
        "listed_at": pa.array((T0_MS + items["listed_day"][keep] * DAY_MS).astype(np.int64), type=pa.timestamp("ms")),
    }), os.path.join(out, "items.parquet"), compression="snappy")
    pq.write_table(pa.table({
        "id": [user_id(u) for u in range(N_USERS)],
        "embedding": f32(snap["uv"]),
        "country": users["country"].tolist(),
        "price_sensitivity": pa.array(snap["sens"], type=pa.float32()),
        "category_affinity": f32(snap["cat_share"]),
        "seen": pa.array([[item_id(i) for i in s] for s in snap["seen"]], type=pa.list_(pa.string())),
    }), os.path.join(out, "users.parquet"), compression="snappy")


def candidates(snap, users, window):
    """Per user with history: retrieval top-RETRIEVE by embedding (seen and unlisted excluded) and
    the items they bought in `window` (the labels)."""
    lo, hi, events = window
    future = events[(events["day"] >= lo) & (events["day"] < hi)]
    rows = []
    for u in range(N_USERS):
        if not snap["seen"][u]:
            continue
        s = snap["iv"] @ snap["uv"][u]
        s[snap["seen"][u]] = -np.inf
        s[~snap["listed"]] = -np.inf
        top = np.argsort(-s, kind="stable")[:RETRIEVE]
        bought = set(future["i"][future["u"] == u].tolist()) - set(snap["seen"][u])
        rows.append((u, top, bought))
    return rows


def features(model, catalog_dir, cand, users, day):
    """`cascade features` over the candidate rows: the matrix the server would assemble."""
    os.makedirs(CACHE, exist_ok=True)
    rows_path, out_path = os.path.join(CACHE, f"rows-{day}.parquet"), os.path.join(CACHE, f"{model}-{day}.parquet")
    uids = [user_id(u) for u, top, _ in cand for _ in top]
    pq.write_table(pa.table({
        "user_id": uids,
        "item_id": [item_id(i) for _, top, _ in cand for i in top],
        "timestamp": pa.array(np.full(len(uids), T0_MS + day * DAY_MS, np.int64), type=pa.timestamp("ms")),
        "device": [users["device"][u] for u, top, _ in cand for _ in top],
    }), rows_path)
    subprocess.run([CASCADE, "features", "--config", os.path.join(HERE, "config.toml"), "--catalog", catalog_dir,
                    "--model", model, "--rows", rows_path, "--out", out_path], check=True, cwd=ROOT)
    t = pq.read_table(out_path)
    return t.column_names, np.column_stack([t.column(c).to_numpy() for c in t.column_names]).astype(np.float32)


def labels(cand):
    return np.array([int(i in bought) for _, top, bought in cand for i in top])


def ndcg_at_10(order, relevant):
    gain = [1 / np.log2(k + 2) for k in range(10)]
    dcg = sum(g for g, i in zip(gain, order[:10]) if i in relevant)
    return dcg / sum(gain[:min(len(relevant), 10)])


def main():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(SEED)
    items, users, events = world(rng)
    print(f"{N_ITEMS} items, {N_USERS} users, {len(events)} purchases over {DAYS} days")
    train_snap = snapshot(items, users, events, 60, rng)
    serve_snap = snapshot(items, users, events, 90, rng)
    train_dir = os.path.join(CACHE, "catalog-day60")
    write_snapshot(items, users, train_snap, train_dir)
    write_snapshot(items, users, serve_snap, CATALOG)
    subprocess.run(["cp", os.path.join(CATALOG, "schema.toml"), train_dir], check=True)

    train_c = candidates(train_snap, users, (60, 90, events))
    eval_c = candidates(serve_snap, users, (90, DAYS, events))
    y_train, y_eval = labels(train_c), labels(eval_c)
    print(f"training rows {len(y_train)} ({y_train.mean():.4f} positive), evaluation rows {len(y_eval)}")

    fitted, report = {}, {"auc": {}}
    for name, est in (("filter", LogisticRegression(C=1.0, max_iter=2000)),
                      ("ranker", MLPClassifier((32, 16), alpha=1e-3, max_iter=300, random_state=SEED))):
        names, Xt = features(name, train_dir, train_c, users, 60)
        _, Xe = features(name, CATALOG, eval_c, users, 90)
        pipe = make_pipeline(StandardScaler(), est).fit(Xt, y_train)
        model = X.to_onnx_sklearn(pipe, Xt.shape[1], f"shop {name}", names)
        scorer = X.OnnxScorer(model)
        fitted[name] = (names, Xt, Xe, model, scorer)
        report["auc"][name] = float(roc_auc_score(y_eval, scorer(Xe)))
        print(f"{name}: {len(names)} features, evaluation AUC {report['auc'][name]:.4f}")

    # Offline NDCG@10 of each stage's order over the evaluation candidates.
    f_scores, r_scores = fitted["filter"][4](fitted["filter"][2]), fitted["ranker"][4](fitted["ranker"][2])
    at, res = 0, {"retrieval_only": [], "popularity": [], "filter_only": [], "cascade": []}
    pop = serve_snap["counts"]
    eval_cases = []
    for u, top, bought in eval_c:
        n = len(top)
        f, r = f_scores[at:at + n], r_scores[at:at + n]
        at += n
        in_stock = items["in_stock"][top] == 1
        if not bought:
            continue
        keep = np.argsort(-np.where(in_stock, f, -np.inf), kind="stable")[:KEEP]
        orders = {"retrieval_only": list(top[in_stock]),
                  "popularity": list(top[np.argsort(-np.where(in_stock, pop[top], -np.inf), kind="stable")]),
                  "filter_only": list(top[keep]),
                  "cascade": list(top[keep[np.argsort(-r[keep], kind="stable")]])}
        for k, o in orders.items():
            res[k].append(ndcg_at_10(o, bought))
        eval_cases.append({"segment": "known_users", "user_id": user_id(u),
                           "context": {"device": users["device"][u]},
                           "relevant": [item_id(i) for i in sorted(bought)]})
    report["known_users_ndcg@10"] = {k: float(np.mean(v)) for k, v in res.items()}
    report["users_evaluated"] = len(eval_cases)
    report["note"] = ("offline orders over the evaluation candidates (no diversity rule); "
                      "`cascade eval --config examples/shop/config.toml --requests examples/shop/.cache/eval_requests.jsonl` "
                      "replays them through the server with its rules")
    print(json.dumps(report, indent=1))
    with open(os.path.join(CACHE, "eval_requests.jsonl"), "w") as fh:
        for case in eval_cases:
            fh.write(json.dumps(case) + "\n")

    # Repository files: ONNX, golden set (from evaluation rows, with where they came from), profile.
    gold_rng = np.random.default_rng(SEED + 1)
    flat = [(u, i) for u, top, _ in eval_c for i in top]
    pick = np.sort(gold_rng.choice(len(flat), 32, replace=False))
    for name, (names, Xt, Xe, model, scorer) in fitted.items():
        d = os.path.join(MODELS, name, "1")
        X.save_onnx(model, os.path.join(d, "model.onnx"))
        X.write_json(os.path.join(d, "golden.json"), {
            "model": name, "version": 1, "features": names, "tolerance": 1e-4,
            "rows": [{"user_id": user_id(flat[k][0]), "item_id": item_id(flat[k][1]),
                      "timestamp": T0_MS + 90 * DAY_MS, "context": {"device": users["device"][flat[k][0]]}}
                     for k in pick],
            "inputs": [[float(v) for v in Xe[k]] for k in pick],
            "outputs": [float(v) for v in scorer(Xe[pick])]}, indent=None)
        X.write_profile(os.path.join(d, "profile.json"), names, Xt, scorer(Xt), "training rows (day-60 snapshot)")
    X.write_json(os.path.join(HERE, "eval_report.json"), report)


if __name__ == "__main__":
    main()
