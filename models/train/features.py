"""THE feature definitions (one place). models/FEATURES.md documents the same formulas
for the Rust server.

A `Snapshot` is everything the server would load for a given point in time: the item
catalog (per-item attributes, statistics of the history before that time, embeddings)
and the user table (users with history before that time). Features are pure functions
of (user row | request demographics, item row, request context). Training uses
snapshots taken at earlier times and labels from the window after them; the shipped
artifacts are the snapshot at the global cutoff.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

import mf
from data import GENRES, POSITIVE_RATING, Raw

SMOOTH = 10.0               # pseudo-count for smoothed item / user statistics
RECENT_DAYS = 28            # window of recent_popularity
POPULAR_LIST_LEN = 300      # length of the popularity fallback list
N_GENRES = len(GENRES)

GENRE_FEATURES = ["item_genre_" + g.lower().replace("'", "").replace("-", "_") for g in GENRES]

FILTER_FEATURES = [
    "user_item_dot", "user_genre_affinity", "item_popularity", "item_recent_popularity",
    "item_mean_rating", "item_pos_rate",
]

ITEM_FEATURES = [
    "item_popularity", "item_recent_popularity", "item_log_n_ratings", "item_mean_rating",
    "item_pos_rate", "item_year", "item_mean_rater_age", "item_male_share",
] + GENRE_FEATURES

RANKER_FEATURES = [
    "user_age", "user_gender_m", "user_occupation", "user_log_n_ratings", "user_mean_rating",
    "user_pos_rate",
] + ITEM_FEATURES + [
    "user_item_dot", "user_genre_affinity", "age_gap", "gender_affinity", "occupation_lift",
    "ctx_hour", "ctx_weekday",
]

COLD_FEATURES = [
    "ctx_age", "ctx_age_missing", "ctx_gender_m", "ctx_gender_f", "ctx_occupation",
] + ITEM_FEATURES + [
    "age_gap", "gender_affinity", "occupation_lift", "ctx_hour", "ctx_weekday",
]

F32 = np.float32

# How the server computes each feature, in its feature language (written into each model's
# config.toml): over the catalog snapshot's fields (item.*, user.*), declared in
# models/catalog/schema.toml, and the request context (ctx.*). A missing value takes the
# default. One expression serves both paths: a known user's age, gender and occupation come
# from the user table; on the cold-start path there is no user row, so coalesce() takes the
# request's. These formulas are the ones below, written the server's way.
_ITEM_FIELD = {
    "item_popularity": "popularity", "item_recent_popularity": "recent_popularity",
    "item_log_n_ratings": "log_n_ratings", "item_mean_rating": "mean_rating",
    "item_pos_rate": "pos_rate", "item_year": "year", "item_mean_rater_age": "mean_rater_age",
    "item_male_share": "male_share",
}
FEATURE_EXPRS = {name: (f"item.{field}", 0.0) for name, field in _ITEM_FIELD.items()}
FEATURE_EXPRS.update({feat: ('has(item.genres, "%s")' % g, 0.0) for feat, g in zip(GENRE_FEATURES, GENRES)})
FEATURE_EXPRS.update({
    "user_age": ("user.age", 0.0),
    "user_gender_m": ("user.gender == 'M'", 0.0),
    "user_occupation": ("code(user.occupation)", 0.0),
    "user_log_n_ratings": ("user.log_n_ratings", 0.0),
    "user_mean_rating": ("user.mean_rating", 0.0),
    "user_pos_rate": ("user.pos_rate", 0.0),
    "user_item_dot": ("dot(user.embedding, item.embedding)", 0.0),
    "user_genre_affinity": ("dot(user.genre_profile, multihot(item.genres))", 0.0),
    "age_gap": ("abs(coalesce(user.age, ctx.age) - item.mean_rater_age)", 0.0),
    "gender_affinity": ("if(coalesce(user.gender, ctx.gender) == 'M', item.male_share, 1 - item.male_share)", 0.5),
    "occupation_lift": ("item.occupation_lift[coalesce(user.occupation, ctx.occupation)]", 1.0),
    "ctx_hour": ("ctx.hour", 0.0),
    "ctx_weekday": ("ctx.weekday", 0.0),
    "ctx_age": ("ctx.age", 0.0),
    "ctx_age_missing": ("is_missing(ctx.age)", 0.0),
    "ctx_gender_m": ("ctx.gender == 'M'", 0.0),
    "ctx_gender_f": ("ctx.gender == 'F'", 0.0),
    "ctx_occupation": ("code(ctx.occupation)", -1.0),
})


@dataclass
class Snapshot:
    time: int                              # unix seconds; history = ratings strictly before
    item_ids: np.ndarray                   # dataset item ids, catalog row order
    items: dict                            # name -> f32 array [N] or [N, k]
    user_ids: np.ndarray                   # dataset user ids with history, user-table row order
    users: dict                            # name -> f32 array [Nu] or [Nu, k]
    occupations: list                      # occupation names, index order
    popular: np.ndarray                    # item row indices, most popular first
    seen: list = field(default_factory=list)  # per user row: np.ndarray of item rows seen in history
    global_stats: dict = field(default_factory=dict)

    def user_row(self, user_ids) -> np.ndarray:
        pos = np.searchsorted(self.user_ids, user_ids)
        pos = np.clip(pos, 0, len(self.user_ids) - 1)
        return np.where(self.user_ids[pos] == user_ids, pos, -1)

    def item_row(self, item_ids) -> np.ndarray:
        pos = np.searchsorted(self.item_ids, item_ids)
        assert np.all(self.item_ids[pos] == item_ids)
        return pos


def build_snapshot(raw: Raw, history: pd.DataFrame, time: int) -> Snapshot:
    """history: ratings with timestamp < time (held-out users already removed)."""
    assert len(history) == 0 or history["timestamp"].max() < time
    items_df = raw.items
    item_ids = items_df["item_id"].to_numpy()
    n_items = len(item_ids)
    occupations = sorted(raw.users["occupation"].unique().tolist())
    occ_index = {o: k for k, o in enumerate(occupations)}
    udemo = raw.users.set_index("user_id")

    h = history
    u_ids = np.unique(h["user_id"].to_numpy())
    n_users = len(u_ids)
    hu = np.searchsorted(u_ids, h["user_id"].to_numpy())
    hi = np.searchsorted(item_ids, h["item_id"].to_numpy())
    rating = h["rating"].to_numpy().astype(np.float64)
    pos = (rating >= POSITIVE_RATING).astype(np.float64)
    recent = (h["timestamp"].to_numpy() >= time - RECENT_DAYS * 86400).astype(np.float64)
    r_age = udemo.loc[h["user_id"], "age"].to_numpy().astype(np.float64)
    r_male = (udemo.loc[h["user_id"], "gender"].to_numpy() == "M").astype(np.float64)
    r_occ = np.array([occ_index[o] for o in udemo.loc[h["user_id"], "occupation"]], dtype=np.int64)

    gm, gp = rating.mean(), pos.mean()
    g_age, g_male = r_age.mean(), r_male.mean()
    g_occ = np.bincount(r_occ, minlength=len(occupations)) / len(r_occ)
    g_occ = np.maximum(g_occ, 1e-6)

    # ---- item catalog
    n = np.bincount(hi, minlength=n_items).astype(np.float64)
    s = np.bincount(hi, weights=rating, minlength=n_items)
    npos = np.bincount(hi, weights=pos, minlength=n_items)
    nrec = np.bincount(hi, weights=recent, minlength=n_items)
    sage = np.bincount(hi, weights=r_age, minlength=n_items)
    smale = np.bincount(hi, weights=r_male, minlength=n_items)
    occ_counts = np.zeros((n_items, len(occupations)))
    np.add.at(occ_counts, (hi, r_occ), 1.0)
    year = items_df["year"].to_numpy().copy()
    year[np.isnan(year)] = np.nanmedian(year)
    genres = items_df[GENRES].to_numpy().astype(np.float64)
    items = {
        "genres": genres,
        "year": year,
        "popularity": n / max(n.max(), 1.0),
        "recent_popularity": nrec / max(nrec.max(), 1.0),
        "log_n_ratings": np.log1p(n),
        "mean_rating": (s + SMOOTH * gm) / (n + SMOOTH),
        "pos_rate": (npos + SMOOTH * gp) / (n + SMOOTH),
        "mean_rater_age": (sage + SMOOTH * g_age) / (n + SMOOTH),
        "male_share": (smale + SMOOTH * g_male) / (n + SMOOTH),
        "occupation_lift": ((occ_counts + SMOOTH * g_occ[None, :]) / (n[:, None] + SMOOTH)) / g_occ[None, :],
    }
    # popularity fallback list: by training-period count, ties by item id
    popular = np.lexsort((item_ids, -n))[:POPULAR_LIST_LEN]

    # ---- user table
    un = np.bincount(hu, minlength=n_users).astype(np.float64)
    us = np.bincount(hu, weights=rating, minlength=n_users)
    upos = np.bincount(hu, weights=pos, minlength=n_users)
    gprof = np.zeros((n_users, N_GENRES))
    np.add.at(gprof, hu, genres[hi] * pos[:, None])
    tot = gprof.sum(axis=1, keepdims=True)
    gprof = np.where(tot > 0, gprof / np.maximum(tot, 1e-12), 0.0)
    demo = udemo.loc[u_ids]
    users = {
        "age": demo["age"].to_numpy().astype(np.float64),
        "gender_m": (demo["gender"].to_numpy() == "M").astype(np.float64),
        "occupation": np.array([occ_index[o] for o in demo["occupation"]], dtype=np.float64),
        "log_n_ratings": np.log1p(un),
        "mean_rating": (us + SMOOTH * gm) / (un + SMOOTH),
        "pos_rate": (upos + SMOOTH * gp) / (un + SMOOTH),
        "genre_profile": gprof,
    }

    # ---- embeddings (implicit MF over all ratings in the history)
    U, V = mf.als(n_users, n_items, hu, hi, np.ones_like(rating))
    users["embedding"], items["embedding"] = mf.unit_embeddings(U, V)

    items = {k: np.ascontiguousarray(v, dtype=F32) for k, v in items.items()}
    users = {k: np.ascontiguousarray(v, dtype=F32) for k, v in users.items()}
    order = np.argsort(hu, kind="stable")
    bounds = np.searchsorted(hu[order], np.arange(n_users + 1))
    seen = [np.unique(hi[order][bounds[k]:bounds[k + 1]]) for k in range(n_users)]
    return Snapshot(time=time, item_ids=item_ids, items=items, user_ids=u_ids, users=users,
                    occupations=occupations, popular=popular, seen=seen,
                    global_stats={"mean_rating": gm, "pos_rate": gp, "mean_age": g_age,
                                  "male_share": g_male, "n_ratings": int(len(h))})


# --------------------------------------------------------------------------- features
def _dot(a, b):
    return np.einsum("ij,ij->i", a.astype(F32), b.astype(F32)).astype(F32)


def _item_block(S: Snapshot, it: np.ndarray) -> list:
    I = S.items
    cols = [I["popularity"][it], I["recent_popularity"][it], I["log_n_ratings"][it],
            I["mean_rating"][it], I["pos_rate"][it], I["year"][it], I["mean_rater_age"][it],
            I["male_share"][it]]
    cols += [I["genres"][it, g] for g in range(N_GENRES)]
    return cols


def filter_features(S: Snapshot, ur: np.ndarray, it: np.ndarray) -> np.ndarray:
    U, I = S.users, S.items
    cols = [
        _dot(U["embedding"][ur], I["embedding"][it]),
        _dot(U["genre_profile"][ur], I["genres"][it]),
        I["popularity"][it], I["recent_popularity"][it], I["mean_rating"][it], I["pos_rate"][it],
    ]
    return np.stack(cols, axis=1).astype(F32)


def _cross(S: Snapshot, it, age, age_known, gender_m, gender_known, occ):
    """age_gap, gender_affinity, occupation_lift (shared by ranker and cold start)."""
    I = S.items
    age_gap = np.where(age_known, np.abs(age.astype(F32) - I["mean_rater_age"][it]), F32(0)).astype(F32)
    ms = I["male_share"][it]
    gaff = np.where(gender_known, np.where(gender_m == 1, ms, F32(1) - ms), F32(0.5)).astype(F32)
    occ_i = occ.astype(np.int64)
    lift = np.where(occ_i >= 0, I["occupation_lift"][it, np.clip(occ_i, 0, None)], F32(1)).astype(F32)
    return [age_gap, gaff, lift]


def ranker_features(S: Snapshot, ur, it, hour, weekday) -> np.ndarray:
    U = S.users
    ones = np.ones(len(ur), dtype=bool)
    cols = [U["age"][ur], U["gender_m"][ur], U["occupation"][ur], U["log_n_ratings"][ur],
            U["mean_rating"][ur], U["pos_rate"][ur]]
    cols += _item_block(S, it)
    cols += [_dot(U["embedding"][ur], S.items["embedding"][it]),
             _dot(U["genre_profile"][ur], S.items["genres"][it])]
    cols += _cross(S, it, U["age"][ur], ones, U["gender_m"][ur], ones, U["occupation"][ur])
    cols += [np.asarray(hour, dtype=F32), np.asarray(weekday, dtype=F32)]
    X = np.stack([np.broadcast_to(np.asarray(c, dtype=F32), (len(it),)) for c in cols], axis=1)
    assert X.shape[1] == len(RANKER_FEATURES)
    return X.astype(F32)


def encode_demographics(S: Snapshot, age, gender, occupation):
    """Request-context demographics -> (age f32 (0 if missing), age_known, gender_m, gender_known, occ index or -1).
    age: float or None/NaN; gender: "M"/"F"/None; occupation: name or None (unknown name -> -1)."""
    occ_index = {o: k for k, o in enumerate(S.occupations)}
    age = np.array([np.nan if a is None else a for a in age], dtype=np.float64)
    age_known = ~np.isnan(age)
    g = np.array([x if x in ("M", "F") else "" for x in gender])
    gender_known = g != ""
    gender_m = (g == "M").astype(F32)
    occ = np.array([occ_index.get(o, -1) if o is not None else -1 for o in occupation], dtype=np.int64)
    return np.where(age_known, age, 0.0).astype(F32), age_known, gender_m, gender_known, occ


def cold_features(S: Snapshot, it, age, gender, occupation, hour, weekday) -> np.ndarray:
    age_f, age_known, gender_m, gender_known, occ = encode_demographics(S, age, gender, occupation)
    cols = [age_f, (~age_known).astype(F32), gender_m,
            (gender_known & (gender_m == 0)).astype(F32), occ.astype(F32)]
    cols += _item_block(S, it)
    cols += _cross(S, it, age_f, age_known, gender_m, gender_known, occ)
    cols += [np.asarray(hour, dtype=F32), np.asarray(weekday, dtype=F32)]
    X = np.stack([np.broadcast_to(np.asarray(c, dtype=F32), (len(it),)) for c in cols], axis=1)
    assert X.shape[1] == len(COLD_FEATURES)
    return X.astype(F32)


def context_of(ts) -> tuple:
    """Request context from a unix timestamp: (hour 0-23 UTC, weekday 0-6 Monday=0)."""
    t = pd.to_datetime(np.asarray(ts), unit="s", utc=True)
    return np.asarray(t.hour, dtype=np.int64), np.asarray(t.weekday, dtype=np.int64)
