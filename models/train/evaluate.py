"""Offline metrics: retrieval recall, AUC, and top-k metrics of the full cascade."""
from __future__ import annotations

import numpy as np

from features import TRENDING_KNOWN, Snapshot


def top_k(scores: np.ndarray, k: int, exclude=None) -> np.ndarray:
    """Indices of the k best scores (desc), ties broken by lower index; `exclude` indices removed."""
    s = scores.astype(np.float64).copy()
    if exclude is not None and len(exclude):
        s[exclude] = -np.inf
    order = np.lexsort((np.arange(len(s)), -s))
    order = order[np.isfinite(s[order])]
    return order[:k]


def retrieve(S: Snapshot, ur: int, k: int, trending: int = TRENDING_KNOWN) -> np.ndarray:
    """Retrieval for a known user, as the server's: the MF top k (dot product of unit embeddings,
    training-seen items excluded), then the first `trending` unseen items of the trending list that
    the embedding did not find, in trending order."""
    scores = S.items["embedding"] @ S.users["embedding"][ur]
    found = top_k(scores, k, exclude=S.seen[ur])
    tr = S.trending[~np.isin(S.trending, S.seen[ur])][:trending]
    return np.concatenate([found, tr[~np.isin(tr, found)]])


def recent_candidates(S: Snapshot, recent: np.ndarray, k: int, zero_last: bool = True,
                      trending: int = TRENDING_KNOWN) -> np.ndarray:
    """Retrieval for a cold-start request with recent items, as the server's: the mean of their
    embeddings with the MIPS augmentation coordinate (the last) zeroed -- users hold 0 there -- as
    the query, the top k by dot product (the recent items excluded), then the first `trending`
    trending items not found. `zero_last=False` is the query before that fix (a diagnostic)."""
    q = S.items["embedding"][recent].astype(np.float64).mean(axis=0)
    if zero_last:
        q[-1] = 0.0
    found = top_k(S.items["embedding"] @ q, k, exclude=recent)
    tr = S.trending[~np.isin(S.trending, recent)][:trending]
    return np.concatenate([found, tr[~np.isin(tr, found)]])


def cold_candidates(S: Snapshot, k: int) -> np.ndarray:
    """The cold-start list, as the server's: the trending list, then the popularity order."""
    tr = S.trending[:k]
    return np.concatenate([tr, S.popular[~np.isin(S.popular, tr)]])[:k]


def popular_for(S: Snapshot, k: int, exclude=None) -> np.ndarray:
    p = S.popular
    if exclude is not None and len(exclude):
        p = p[~np.isin(p, exclude)]
    return p[:k]


def recall_at(ranked, relevant: set, k: int) -> float:
    if not relevant:
        return float("nan")
    return len(set(ranked[:k].tolist()) & relevant) / len(relevant)


def ndcg_at(ranked, relevant: set, k: int) -> float:
    if not relevant:
        return float("nan")
    gains = [1.0 / np.log2(r + 2) for r, x in enumerate(ranked[:k]) if x in relevant]
    ideal = sum(1.0 / np.log2(r + 2) for r in range(min(k, len(relevant))))
    return float(sum(gains) / ideal)


def auc(y, p) -> float:
    from sklearn.metrics import roc_auc_score
    y = np.asarray(y)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, p))


def mean(xs) -> float:
    xs = [x for x in xs if not np.isnan(x)]
    return float(np.mean(xs)) if xs else float("nan")
