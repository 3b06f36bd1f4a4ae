"""Training examples (snapshot -> later window) and the three models."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

import evaluate as E
from data import POSITIVE_RATING, SEED
from features import (Snapshot, cold_features, context_of, filter_features, ranker_features)

N_RETRIEVE = 300        # retrieval depth (known users: MF top-300 + up to 50 trending; cold: trending, then popular)
N_FILTER_KEEP = 100     # filter keeps the top 100 for the ranker
DEMO_MASK_PROB = 0.1    # cold-start training: each demographic field dropped with this probability


@dataclass
class Rows:
    """One row per (user, candidate item), candidates = what the serving path would retrieve for that
    user (MF top-300 + trending for known users, trending + the popular list for cold start) -- so the
    models learn to
    order exactly the sets they re-rank in production. label = 1 if the user rated the item >= 4 in
    the window. Request context = the user's first action in the window."""
    user_id: np.ndarray
    ur: np.ndarray        # user-table row (known) or -1
    it: np.ndarray        # catalog row
    hour: np.ndarray
    weekday: np.ndarray
    label: np.ndarray     # 1 = rated >= 4 in the window
    age: list = None      # cold start only: request demographics (None = missing)
    gender: list = None
    occupation: list = None
    recent: list = None   # cold start only: the request's recent items (item rows) or None

    def __len__(self):
        return len(self.it)


def _per_user(window: pd.DataFrame):
    for u, g in window.groupby("user_id", sort=True):
        yield int(u), g


def subset(r: Rows, mask) -> Rows:
    """The rows of `r` where `mask` holds (known-user rows: no demographics lists)."""
    return Rows(**{k: getattr(r, k)[mask] for k in ("user_id", "ur", "it", "hour", "weekday", "label")})


def known_rows(S: Snapshot, window: pd.DataFrame, n_cand: int = N_RETRIEVE) -> Rows:
    out = {k: [] for k in ("user_id", "ur", "it", "hour", "weekday", "label")}
    for u, g in _per_user(window):
        ur = S.user_row(np.array([u]))[0]
        if ur < 0:
            continue  # not in the user table -> served by the cold-start path
        seen = S.seen[ur]
        w_it = S.item_row(g["item_id"].to_numpy())
        keep = ~np.isin(w_it, seen)
        pos = set(w_it[keep & (g["rating"].to_numpy() >= POSITIVE_RATING)].tolist())
        items = np.sort(E.retrieve(S, ur, n_cand))
        h, wd = context_of([g["timestamp"].min()])
        out["user_id"].append(np.full(len(items), u))
        out["ur"].append(np.full(len(items), ur))
        out["it"].append(items)
        out["hour"].append(np.full(len(items), h[0]))
        out["weekday"].append(np.full(len(items), wd[0]))
        out["label"].append(np.isin(items, list(pos)).astype(np.int64))
    return Rows(**{k: np.concatenate(v) for k, v in out.items()})


def cold_rows(S: Snapshot, window: pd.DataFrame, users: pd.DataFrame, mask_prob: float = 0.0,
              seed: int = SEED, n_cand: int = N_RETRIEVE) -> Rows:
    rng = np.random.default_rng(seed)
    demo = users.set_index("user_id")
    out = {k: [] for k in ("user_id", "ur", "it", "hour", "weekday", "label")}
    age, gender, occ, recent = [], [], [], []
    for u, g in _per_user(window):
        ur = S.user_row(np.array([u]))[0]
        seen = S.seen[ur] if ur >= 0 else np.array([], dtype=np.int64)
        w_it = S.item_row(g["item_id"].to_numpy())
        keep = ~np.isin(w_it, seen)
        pos = set(w_it[keep & (g["rating"].to_numpy() >= POSITIVE_RATING)].tolist())
        if ur >= 0:
            # A user with history before the snapshot: served as an anonymous session whose
            # recent items are that history (retrieval from them + trending), so the model
            # learns what `session_similarity` is worth. The others: trending, then popular.
            items = np.sort(E.recent_candidates(S, seen, n_cand))
        else:
            items = np.sort(E.cold_candidates(S, n_cand))
        h, wd = context_of([g["timestamp"].min()])
        n = len(items)
        out["user_id"].append(np.full(n, u))
        out["ur"].append(np.full(n, -1))
        out["it"].append(items)
        out["hour"].append(np.full(n, h[0]))
        out["weekday"].append(np.full(n, wd[0]))
        out["label"].append(np.isin(items, list(pos)).astype(np.int64))
        a, s, o = float(demo.at[u, "age"]), demo.at[u, "gender"], demo.at[u, "occupation"]
        if mask_prob > 0:
            m = rng.random(3) < mask_prob
            a, s, o = (None if m[0] else a), (None if m[1] else s), (None if m[2] else o)
        age += [a] * n
        gender += [s] * n
        occ += [o] * n
        recent += [seen if ur >= 0 else None] * n
    r = Rows(**{k: np.concatenate(v) for k, v in out.items()})
    r.age, r.gender, r.occupation, r.recent = age, gender, occ, recent
    return r


def X_filter(S, r: Rows):
    return filter_features(S, r.ur, r.it)


def X_ranker(S, r: Rows):
    return ranker_features(S, r.ur, r.it, r.hour, r.weekday)


def X_cold(S, r: Rows):
    return cold_features(S, r.it, r.age, r.gender, r.occupation, r.hour, r.weekday, r.recent)


# --------------------------------------------------------------------------- models
FILTER_PARAMS = dict(C=1.0, max_iter=2000)
# The ranker: a logistic regression over all 40 inputs, trained on the rows it re-ranks in serving
# (each user's filter top-100 of a training snapshot). Chosen by the rolling-origin backtest
# (README "Choosing the ranker"): it beat the filter's order at every cutoff, where the 128-64 MLP
# (pointwise, or listwise softmax loss) and the logistic regression with windowed counts, recency
# or an EASE score added were all below it.
RANKER_PARAMS = dict(C=1.0, max_iter=3000)
# Cold start: a logistic regression over the inputs of features.COLD_FEATURES.
COLD_PARAMS = dict(C=1.0, max_iter=3000)


def _pipeline(name, clf):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    return Pipeline([("scale", StandardScaler()), (name, clf)])


def _lr(params, X, y):
    """Standardised inputs -> logistic regression (exported as ONNX Sub, Mul, LinearClassifier)."""
    from sklearn.linear_model import LogisticRegression
    return _pipeline("lr", LogisticRegression(**params)).fit(X, y)


def fit_filter(X, y):
    return _lr(FILTER_PARAMS, X, y)


def filter_top(filt, Xf, groups, keep=N_FILTER_KEEP) -> np.ndarray:
    """Mask of the rows the filter keeps: per group (a user at one snapshot), its `keep` best
    filter scores, ties by lower row -- the candidate sets the ranker re-ranks in serving."""
    s = filt.predict_proba(Xf)[:, 1]
    order = np.lexsort((np.arange(len(s)), -s, groups))
    g = groups[order]
    first = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    rank = np.arange(len(g)) - np.repeat(first, np.diff(np.r_[first, len(g)]))
    mask = np.zeros(len(s), dtype=bool)
    mask[order[rank < keep]] = True
    return mask


def fit_ranker(X, y):
    return _lr(RANKER_PARAMS, X, y)


def fit_cold(X, y):
    return _lr(COLD_PARAMS, X, y)
