"""Offline metrics: retrieval recall, AUC, and top-k metrics of the full cascade."""
from __future__ import annotations

import numpy as np

from features import Snapshot


def top_k(scores: np.ndarray, k: int, exclude=None) -> np.ndarray:
    """Indices of the k best scores (desc), ties broken by lower index; `exclude` indices removed."""
    s = scores.astype(np.float64).copy()
    if exclude is not None and len(exclude):
        s[exclude] = -np.inf
    order = np.lexsort((np.arange(len(s)), -s))
    order = order[np.isfinite(s[order])]
    return order[:k]


def retrieve(S: Snapshot, ur: int, k: int) -> np.ndarray:
    """MF retrieval for a known user: dot product of unit embeddings, training-seen items excluded."""
    scores = S.items["embedding"] @ S.users["embedding"][ur]
    return top_k(scores, k, exclude=S.seen[ur])


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
