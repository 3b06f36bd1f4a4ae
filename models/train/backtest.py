"""Rolling-origin backtest of the whole cascade (issue 17, part 1).

For each global time cutoff (the 60 / 70 / 80 / 90 % quantiles of all timestamps) the pipeline of
train.py is rerun on the ratings before that cutoff only -- training snapshots at the same fractions
of the training period as the shipped setting (data.snapshot_quantiles_for), filter, ranker and
cold-start models retrained, the final snapshot built at the cutoff -- and evaluated on the ratings
at or after it by train.py's own functions (eval_known / eval_cold: MF top-300 -> filter keeps 100
-> ranker -> top 10; popular[:300] -> cold_start -> top 10). Next to the cascade's stages, baselines
computed here from the training ratings only: recent positive popularity, EASE, and an EASE +
recent-popularity blend whose weight is chosen inside the training period.

Per user NDCG@10 and recall@10; per cutoff and over the cutoffs, means with paired bootstrap 95 %
CIs of the differences that matter, written to models/backtest_report.json (no timings: the report
is reproducible) and printed as tables. Nothing else is written: the shipped artifacts are not
touched. Run via models/train/backtest.sh (or the venv's python with CASCADE_BIN set).
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import data  # noqa: E402
import evaluate as E  # noqa: E402
import export as X  # noqa: E402
import features as F  # noqa: E402
import train as T  # noqa: E402

MODELS_DIR = os.path.dirname(HERE)
REPORT = os.path.join(MODELS_DIR, "backtest_report.json")
PER_USER_CACHE = os.path.join(data.CACHE, "backtest_per_user.pkl")   # git-ignored

CUTOFF_QUANTILES = (0.6, 0.7, 0.8, 0.9)
RECENT_POS_DAYS = 30          # recent positive popularity: ratings >= 4 in the 30 days before the cutoff
EASE_LAMBDA = 300.0           # fixed once (Steck 2019, item-item closed form); not tuned on any period
BLEND_WEIGHTS = tuple(round(0.1 * k, 1) for k in range(11))   # weight of recent popularity in the blend
N_BOOT = 2000
BOOT_SEED = data.SEED
METRICS = ("ndcg@10", "recall@10")
SEGMENTS = {
    "known_users": ("retrieval_only", "filter_only", "cascade", "popularity", "recent_popularity",
                    "ease", "ease_recent_blend"),
    "cold_start_users": ("cold_start_model", "popularity", "recent_popularity"),
    "new_users_after_cutoff": ("cold_start_model", "popularity", "recent_popularity"),
    "known_users_as_sessions": ("cold_start_model", "session_similarity", "session_similarity_augmentation_kept",
                                "recent_popularity"),
}
# (row, segment, system a, system b): "a beats b" <=> mean(a - b) over users
TARGETS = [
    ("ranker beats filter order", "known_users", "cascade", "filter_only"),
    ("filter beats retrieval order", "known_users", "filter_only", "retrieval_only"),
    ("cascade beats recent popularity", "known_users", "cascade", "recent_popularity"),
    ("cascade beats EASE+recent blend", "known_users", "cascade", "ease_recent_blend"),
    ("cold start beats recent popularity (strangers)", "cold_start_users", "cold_start_model",
     "recent_popularity"),
    ("cold start beats recent popularity (new users)", "new_users_after_cutoff", "cold_start_model",
     "recent_popularity"),
]
OTHER_COMPARISONS = [
    ("filter order beats recent popularity", "known_users", "filter_only", "recent_popularity"),
    ("cascade beats EASE", "known_users", "cascade", "ease"),
    ("EASE+recent blend beats recent popularity", "known_users", "ease_recent_blend", "recent_popularity"),
    ("recent popularity beats popularity (known)", "known_users", "recent_popularity", "popularity"),
    ("cold start beats popularity (strangers)", "cold_start_users", "cold_start_model", "popularity"),
    ("cold start beats popularity (new users)", "new_users_after_cutoff", "cold_start_model", "popularity"),
    ("sessions: recent items beat recent popularity", "known_users_as_sessions", "cold_start_model",
     "recent_popularity"),
    ("sessions: similarity order, augmentation zeroed beats kept", "known_users_as_sessions",
     "session_similarity", "session_similarity_augmentation_kept"),
]

T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


# --------------------------------------------------------------------------- baselines
class History:
    """Users x items interactions of a training history (ratings with timestamp < time), users in
    the order of a Snapshot's user table (sorted ids), items in catalog order."""

    def __init__(self, hist, item_ids, time_):
        self.user_ids = np.unique(hist["user_id"].to_numpy())
        u = np.searchsorted(self.user_ids, hist["user_id"].to_numpy())
        i = np.searchsorted(item_ids, hist["item_id"].to_numpy())
        self.X = np.zeros((len(self.user_ids), len(item_ids)))
        self.X[u, i] = 1.0      # any rating = an interaction (EASE input, and the seen items)
        pos = hist["rating"].to_numpy() >= data.POSITIVE_RATING
        recent = hist["timestamp"].to_numpy() >= time_ - RECENT_POS_DAYS * 86400
        n_all = np.bincount(i, minlength=len(item_ids))
        self.n_recent_pos = np.bincount(i[pos & recent], minlength=len(item_ids))
        # recent positive popularity: recent count desc, ties by all-time count desc, then item row
        self.recent_order = np.lexsort((np.arange(len(item_ids)), -n_all, -self.n_recent_pos))
        # the count, its ties broken in recent_order's order (+ a rank-normalised term < 1)
        self.recent_score = self.n_recent_pos + 0.5 * _rank_score(self.recent_order)

    def seen(self, ur):
        return np.flatnonzero(self.X[ur])

    def ease(self, lam=EASE_LAMBDA):
        """EASE item-item weights B (zero diagonal): B = I - P diag(1 / diag P), P = (X'X + lam I)^-1."""
        G = self.X.T @ self.X
        G[np.diag_indices_from(G)] += lam
        P = np.linalg.inv(G)
        B = -P / np.diag(P)[None, :]
        B[np.diag_indices_from(B)] = 0.0
        return B


def _rank_score(order):
    """Rank normalisation: 1 for the first item of `order`, down to 1/n for the last."""
    n = len(order)
    r = np.empty(n)
    r[order] = 1.0 - np.arange(n) / n
    return r


def _z(x):
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def blend_top(ease_scores, recent_score, w, seen, k=10):
    """Top k of (1 - w) * z(EASE score) + w * z(recent positive count), both z-scored over the
    user's unseen items; seen items excluded. w = 0 is EASE's order, w = 1 recent popularity's.
    (z-scores, not ranks: rank-normalising 1,682 items squeezes the head of the recent-popularity
    list into steps of 1/1682, so any EASE weight reshuffles it; on the training-period validation
    windows of the 0.7 / 0.8 / 0.9 cutoffs every interior weight of a rank blend was below its better
    end, while the z-scored blend beat both ends at 0.8 and 0.9.)"""
    keep = np.setdiff1d(np.arange(len(ease_scores)), seen)
    sc = (1.0 - w) * _z(ease_scores[keep]) + w * _z(recent_score[keep])
    return keep[E.top_k(sc, k)]


def choose_blend_weight(train, item_ids, snapshot_time, cutoff):
    """The blend weight for one cutoff, chosen inside its training period: EASE and recent counts
    from the ratings before the last training snapshot, NDCG@10 on the window from it to the cutoff
    (known users with >= 1 unseen positive there). The evaluation period is never read."""
    H = History(train[train["timestamp"] < snapshot_time], item_ids, snapshot_time)
    B = H.ease()
    win = train[(train["timestamp"] >= snapshot_time) & (train["timestamp"] < cutoff)]
    win = win[win["rating"] >= data.POSITIVE_RATING]
    nd = {w: [] for w in BLEND_WEIGHTS}
    for u, g in win.groupby("user_id", sort=True):
        ur = np.searchsorted(H.user_ids, u)
        if ur >= len(H.user_ids) or H.user_ids[ur] != u:
            continue
        seen = H.seen(ur)
        rel = set(np.searchsorted(item_ids, g["item_id"].to_numpy()).tolist()) - set(seen.tolist())
        if not rel:
            continue
        s = H.X[ur] @ B
        for w in BLEND_WEIGHTS:
            nd[w].append(E.ndcg_at(blend_top(s, H.recent_score, w, seen), rel, 10))
    means = {w: float(np.mean(v)) for w, v in nd.items()}
    best = max(BLEND_WEIGHTS, key=lambda w: (means[w], -w))   # ties: the smaller weight
    return best, {"users": len(nd[0.0]), "ndcg@10_by_weight": {str(w): means[w] for w in BLEND_WEIGHTS}}


# --------------------------------------------------------------------------- one cutoff
def run_cutoff(raw, q):
    np.random.seed(data.SEED)   # as train.py
    snap_q = data.snapshot_quantiles_for(q)
    sp = data.split(raw, q, snap_q)
    log(f"=== cutoff q={q}: {T.iso(sp.cutoff)}, snapshots at q={snap_q}, train={len(sp.train)} "
        f"eval={len(sp.eval)} cold_eval={len(sp.cold_eval)}")
    tr = T.training_rows(raw, sp)
    filt, rank, cold = T.fit_models(tr)
    S = F.build_snapshot(raw, sp.train, sp.cutoff)
    assert not np.isin(S.user_ids, sp.cold_users).any()
    scorers = {}
    for name, model, feats, Xt in (("filter", filt, F.FILTER_FEATURES, tr["Xf"]),
                                   ("ranker", rank, F.RANKER_FEATURES, tr["Xr"]),
                                   ("cold_start", cold, F.COLD_FEATURES, tr["Xc"])):
        scorers[name] = T.to_scorer(model, feats, f"backtest {name}, cutoff q={q}", Xt)[1]

    # the cascade, exactly as train.py evaluates it
    known = T.eval_known(S, sp, scorers)
    new_users = sp.eval[~sp.eval["user_id"].isin(S.user_ids)]
    cases = {"known_users": known,
             "cold_start_users": T.eval_cold(S, raw, scorers, sp.cold_eval, "cold_start_users"),
             "new_users_after_cutoff": T.eval_cold(S, raw, scorers, new_users, "new_users_after_cutoff"),
             "known_users_as_sessions": T.eval_recent(S, sp, scorers)}
    log(f"cascade evaluated: " + ", ".join(f"{k} {len(v)}" for k, v in cases.items()))

    # AUC over the candidate rows (as train.py; no CIs, for reference)
    ev_known = T.M.known_rows(S, sp.eval)
    ev_cold = T.M.cold_rows(S, sp.cold_eval, raw.users)
    ev_new = T.M.cold_rows(S, new_users, raw.users)
    auc = {"filter": E.auc(ev_known.label, scorers["filter"](T.M.X_filter(S, ev_known))),
           "ranker": E.auc(ev_known.label, scorers["ranker"](T.M.X_ranker(S, ev_known))),
           "cold_start": E.auc(ev_cold.label, scorers["cold_start"](T.M.X_cold(S, ev_cold))),
           "cold_start_new_users": E.auc(ev_new.label, scorers["cold_start"](T.M.X_cold(S, ev_new)))}

    # baselines from the training ratings only
    H = History(sp.train, S.item_ids, sp.cutoff)
    assert np.array_equal(H.user_ids, S.user_ids)
    B = H.ease()
    w, blend_val = choose_blend_weight(sp.train, S.item_ids, sp.snapshot_times[-1], sp.cutoff)
    log(f"baselines: EASE lambda={EASE_LAMBDA:g}; blend weight of recent popularity {w} "
        f"(validation window {T.iso(sp.snapshot_times[-1])} .. cutoff, {blend_val['users']} users)")
    for c in known:
        ur = c["ur"]
        seen = S.seen[ur]
        assert np.array_equal(seen, H.seen(ur))
        s = H.X[ur] @ B
        c["ranked"]["recent_popularity"] = E.top_k(H.recent_score, 10, exclude=seen)
        c["ranked"]["ease"] = E.top_k(s, 10, exclude=seen)
        c["ranked"]["ease_recent_blend"] = blend_top(s, H.recent_score, w, seen)
    for c in cases["known_users_as_sessions"]:   # the session's items are the user's training history
        c["ranked"]["recent_popularity"] = E.top_k(H.recent_score, 10, exclude=S.seen[c["ur"]])
    for seg in ("cold_start_users", "new_users_after_cutoff"):
        for c in cases[seg]:          # no training history: nothing to exclude
            c["ranked"]["recent_popularity"] = H.recent_order[:10]

    per_user = {}
    for seg, systems in SEGMENTS.items():
        m = T.top10_metrics(cases[seg], systems)
        per_user[seg] = {"user_id": np.array([c["user_id"] for c in cases[seg]], dtype=np.int64),
                         **{(s, k): np.asarray(m[s][k], dtype=np.float64) for s in systems for k in METRICS}}
    info = {"cutoff_quantile": q, "cutoff_unix": sp.cutoff, "cutoff": T.iso(sp.cutoff),
            "snapshot_quantiles": list(snap_q), "training_snapshots": [T.iso(t) for t in sp.snapshot_times],
            "train_ratings": len(sp.train), "eval_ratings": len(sp.eval),
            "cold_eval_ratings": len(sp.cold_eval), "training_rows_known": int(len(tr["yk"])),
            "training_rows_cold": int(len(tr["yc"])),
            "users_evaluated": {seg: len(cases[seg]) for seg in SEGMENTS},
            "blend_weight_recent": w, "blend_validation": blend_val, "auc_eval": auc,
            "mf_recall@300": E.mean([c["mf_recall@300"] for c in known])}
    return info, per_user


# --------------------------------------------------------------------------- bootstrap
def _ci(samples):
    lo, hi = np.nanpercentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


class Bootstrap:
    """Paired bootstrap over users. Per cutoff: users resampled with replacement within the cutoff.
    Over cutoffs: users resampled by user id (one draw over all ids of the segment, applied to every
    cutoff), because the cutoffs share users (their evaluation periods are nested), so the cutoffs
    are not independent samples. Every system and difference uses the same draws (paired)."""

    def __init__(self, per_cutoff_ids, seed):
        rng = np.random.default_rng(seed)
        self.within = [rng.integers(0, len(ids), size=(N_BOOT, len(ids))) for ids in per_cutoff_ids]
        union = np.unique(np.concatenate(per_cutoff_ids))
        draws = rng.integers(0, len(union), size=(N_BOOT, len(union)))
        W = np.zeros((N_BOOT, len(union)))
        np.add.at(W, (np.repeat(np.arange(N_BOOT), len(union)), draws.ravel()), 1.0)
        self.cluster_w = [W[:, np.searchsorted(union, ids)] for ids in per_cutoff_ids]

    def per_cutoff(self, c, x):
        return _ci(x[self.within[c]].mean(axis=1))

    def over_cutoffs(self, xs):
        """CIs of (mean over cutoffs of the per-cutoff means, mean over all user-cutoff pairs)."""
        means = [(w @ x) / np.maximum(w.sum(axis=1), 1e-12) for w, x in zip(self.cluster_w, xs)]
        means = [np.where(w.sum(axis=1) > 0, m, np.nan) for w, m in zip(self.cluster_w, means)]
        pooled = sum(w @ x for w, x in zip(self.cluster_w, xs)) / sum(w.sum(axis=1) for w in self.cluster_w)
        return _ci(np.nanmean(np.stack(means), axis=0)), _ci(pooled)


def summarise(per_user_by_cutoff):
    out = {"segments": {}, "comparisons": {}}
    boots = {}
    for j, seg in enumerate(SEGMENTS):
        ids = [pu[seg]["user_id"] for pu in per_user_by_cutoff]
        boots[seg] = Bootstrap(ids, BOOT_SEED + j)

    def stats(seg, vals):
        bs = boots[seg]
        per_cut = [{"mean": float(v.mean()), "ci95": bs.per_cutoff(c, v)} for c, v in enumerate(vals)]
        ci_mc, ci_pool = bs.over_cutoffs(vals)
        return {"per_cutoff": per_cut,
                "mean_over_cutoffs": {"mean": float(np.mean([v.mean() for v in vals])), "ci95": ci_mc},
                "pooled_users": {"mean": float(np.concatenate(vals).mean()), "ci95": ci_pool}}

    for seg, systems in SEGMENTS.items():
        out["segments"][seg] = {s: {k: stats(seg, [pu[seg][(s, k)] for pu in per_user_by_cutoff])
                                    for k in METRICS} for s in systems}
    for rows, key in ((TARGETS, "targets"), (OTHER_COMPARISONS, "other_comparisons")):
        res = []
        for name, seg, a, b in rows:
            row = {"row": name, "segment": seg, "a": a, "b": b}
            for k in METRICS:
                st = stats(seg, [pu[seg][(a, k)] - pu[seg][(b, k)] for pu in per_user_by_cutoff])
                mc = st["mean_over_cutoffs"]
                st["mean_ge_0"] = mc["mean"] >= 0           # the target: a >= b on the mean over cutoffs
                st["significant"] = mc["ci95"][0] > 0       # a > b beyond the bootstrap noise
                st["significantly_worse"] = mc["ci95"][1] < 0
                st["verdict"] = verdict(st)
                row[k] = st
            res.append(row)
        out[key] = res
    return out


def verdict(st):
    if st["significant"]:
        return "PASS (significant)"
    if st["mean_ge_0"]:
        return "pass (mean >= 0, CI includes 0)"
    if st["significantly_worse"]:
        return "FAIL (significantly worse)"
    return "fail (mean < 0, CI includes 0)"


# --------------------------------------------------------------------------- report
def reproduction_check(info, per_user):
    """The 0.8 cutoff against the shipped models/eval_report.json (same code path, same data)."""
    ref = json.load(open(os.path.join(MODELS_DIR, "eval_report.json")))
    pairs = []
    for seg in SEGMENTS:
        for s, v in ref[seg].items():
            if s not in SEGMENTS[seg]:
                continue      # a system only train.py reports
            for k in METRICS:
                pairs.append((f"{seg}.{s}.{k}", float(per_user[seg][(s, k)].mean()), v[k]))
    diffs = {n: a - b for n, a, b in pairs}
    return {"compared": len(pairs), "max_abs_diff": max(abs(d) for d in diffs.values()),
            "users_match": [info["users_evaluated"][s] for s in SEGMENTS] ==
                           [ref["data"]["known_users_evaluated"], ref["data"]["cold_users_evaluated"],
                            ref["data"]["new_users_evaluated"], ref["data"]["sessions_evaluated"]],
            "diffs": diffs}


def print_tables(rep):
    qs = [c["cutoff_quantile"] for c in rep["cutoffs"]]
    head = "".join(f"{'q=' + str(q):>8s}" for q in qs) + "   mean over cutoffs [95% CI]"
    for k in METRICS:
        for seg, systems in SEGMENTS.items():
            n = [c["users_evaluated"][seg] for c in rep["cutoffs"]]
            print(f"\n{k} -- {seg} (users per cutoff: {n})")
            print(f"{'':22s}{head}")
            for s in systems:
                st = rep["summary"]["segments"][seg][s][k]
                mc = st["mean_over_cutoffs"]
                print(f"{s:22s}" + "".join(f"{p['mean']:8.4f}" for p in st["per_cutoff"]) +
                      f"   {mc['mean']:.4f} [{mc['ci95'][0]:.4f}, {mc['ci95'][1]:.4f}]")
    for key in ("targets", "other_comparisons"):
        for k in METRICS:
            print(f"\n{key} -- {k}: mean difference a - b per cutoff {qs} [95% CI] | mean over cutoffs [CI] | "
                  f"pooled users [CI] | verdict (on the mean over cutoffs)")
            for row in rep["summary"][key]:
                st = row[k]
                mc, pu = st["mean_over_cutoffs"], st["pooled_users"]
                cells = "  ".join(f"{p['mean']:+.3f}[{p['ci95'][0]:+.3f},{p['ci95'][1]:+.3f}]"
                                  for p in st["per_cutoff"])
                print(f"{row['row']:48s} {cells}  | {mc['mean']:+.4f} [{mc['ci95'][0]:+.4f}, {mc['ci95'][1]:+.4f}]"
                      f"  | {pu['mean']:+.4f} [{pu['ci95'][0]:+.4f}, {pu['ci95'][1]:+.4f}]  {st['verdict']}")


def main():
    # --summarise-only: rebuild the report from the per-user metrics of the last run (.cache)
    if "--summarise-only" in sys.argv[1:]:
        with open(PER_USER_CACHE, "rb") as f:
            infos, per_user = pickle.load(f)
    else:
        raw = data.load_raw()
        infos, per_user = [], []
        for q in CUTOFF_QUANTILES:
            info, pu = run_cutoff(raw, q)
            infos.append(info)
            per_user.append(pu)
        os.makedirs(data.CACHE, exist_ok=True)
        with open(PER_USER_CACHE, "wb") as f:
            pickle.dump((infos, per_user), f)
    rep = {
        "protocol": {
            "cutoffs": ("global time cutoffs at the 0.6 / 0.7 / 0.8 / 0.9 quantiles of all rating timestamps; "
                        "training = ratings strictly before, evaluation = ratings at or after (so the evaluation "
                        "periods are nested); the same 94 held-out cold-start users at every cutoff"),
            "snapshots": ("training snapshots at the same fractions of the training period as the shipped "
                          "0.35/0.50/0.65 with cutoff 0.80: quantile = shipped quantile * cutoff / 0.80 "
                          "(0.4375 / 0.625 / 0.8125 of the ratings before the cutoff)"),
            "models": ("filter, ranker, cold_start and the MF embeddings retrained per cutoff by train.py's "
                       "training_rows / fit_models; scored through their ONNX export (onnxruntime); evaluated by "
                       "train.py's eval_known / eval_cold (MF top-300 -> filter keeps 100 -> ranker -> top 10; "
                       "popular[:300] -> cold_start -> top 10)"),
            "metrics": ("per user NDCG@10 (binary gains) and recall@10; relevant = items rated >= 4 in the evaluation "
                        "period, training-seen items excluded; users with >= 1 relevant item"),
            "baselines": {
                "popularity": "all-time training count (the snapshot's popular list), seen items excluded",
                "recent_popularity": (f"count of training ratings >= 4 in the {RECENT_POS_DAYS} days before the "
                                      "cutoff, ties by all-time count then item id; seen items excluded"),
                "ease": (f"EASE item-item (closed form), lambda = {EASE_LAMBDA:g} fixed, binary matrix of all "
                         "training ratings of the user table; seen items excluded"),
                "ease_recent_blend": ("(1 - w) * z(EASE score) + w * z(recent positive count), z-scored over the "
                                      "user's unseen items; w from {0, 0.1, ..., 1} chosen "
                                      "per cutoff on the training period's last window (EASE and recent counts "
                                      "from the ratings before the last snapshot, NDCG@10 of the known users on "
                                      "last snapshot .. cutoff); the evaluation period is never read"),
            },
            "bootstrap": (f"paired, {N_BOOT} resamples, seed {BOOT_SEED}; 95 % percentile CIs. Per cutoff: users "
                          "resampled within the cutoff. Over cutoffs ('mean_over_cutoffs' = mean of the per-cutoff "
                          "means; 'pooled_users' = mean over all user-cutoff pairs): users resampled by user id, the "
                          "same draw for every cutoff, since the cutoffs share users"),
            "verdicts": ("on the mean over cutoffs of a - b: mean_ge_0 (the target: a >= b), significant (CI lower "
                         "bound > 0), significantly_worse (CI upper bound < 0)"),
        },
        "cutoffs": infos,
    }
    rep["summary"] = summarise(per_user)
    i80 = CUTOFF_QUANTILES.index(0.8) if 0.8 in CUTOFF_QUANTILES else None
    if i80 is not None:
        rep["reproduces_eval_report_at_0.8"] = reproduction_check(infos[i80], per_user[i80])
    X.write_json(REPORT, rep)
    print_tables(rep)
    if i80 is not None:
        r = rep["reproduces_eval_report_at_0.8"]
        print(f"\ncutoff 0.8 vs models/eval_report.json: {r['compared']} means, max |diff| "
              f"{r['max_abs_diff']:.2e}, same users: {r['users_match']}")
    print(f"wrote {os.path.relpath(REPORT, os.path.dirname(MODELS_DIR))}; backtest.py wall time {time.time() - T0:.1f} s")


if __name__ == "__main__":
    main()
