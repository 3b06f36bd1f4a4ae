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

import json
import os
import subprocess
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

import mf
from data import GENRES, POSITIVE_RATING, Raw

SMOOTH = 10.0               # pseudo-count for smoothed item / user statistics
RECENT_DAYS = 28            # window of recent_popularity
POPULAR_LIST_LEN = 300      # length of the popularity fallback list
# [retrieval] trending, as the server keeps it from live events: items by their count of positive
# ratings in the last TRENDING_DAYS whole UTC-day buckets (the current one included), most first,
# ties by lower catalog row, counts above 0. Cold start retrieves it ahead of the popularity list;
# a known user's retrieval adds its first TRENDING_KNOWN unseen items to what the embedding found.
TRENDING_DAYS = 30
TRENDING_KNOWN = 50
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

# Cold start: what is popular right now (the live counter behind the trending list), the item's
# share of positive ratings, how well its audience fits the request's demographics, and how close
# it is to the request's recent items (a session). Chosen by the backtest (models/README.md):
# every variant with the item's static attributes or raw demographics added ranked below recent
# positive popularity for held-out users.
COLD_FEATURES = ["item_trending", "item_pos_rate", "age_gap", "gender_affinity", "occupation_lift",
                 "session_similarity", "session_given"]
# Features that read live state (the interactions before the row's time), not the snapshot:
# `cascade features` replays the snapshot's history as events for them.
LIVE_FEATURES = {"item_trending"}
AGE_GAP_DEFAULT = 10.0      # about the mean |age - the item's mean rater age|: a missing age is neutral

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
    "age_gap": ("abs(coalesce(user.age, ctx.age) - item.mean_rater_age)", AGE_GAP_DEFAULT),
    # How close the item is to the request's recent items (the mean of their embeddings, the
    # retrieval query); 0 without any: the same for every candidate, so it does not reorder them.
    "session_similarity": ("cosine(session.embedding, item.embedding)", 0.0),
    # 1 with a session: absorbs how differently sessions' rows are labelled, so that the weight of
    # session_similarity is about the order within a request.
    "session_given": ("1 - is_missing(session.embedding[0])", 0.0),
    "item_trending": (f"log1p(count(item, kind = 'rating', min_value = {POSITIVE_RATING}, "
                      f"last = '{TRENDING_DAYS}d'))", 0.0),
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
    trending: np.ndarray = None            # item rows, the server's trending list at `time`
    history: pd.DataFrame = None           # the ratings before `time` (live-state features replay them)
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


def trending_rows(hi, ts, pos, time, n_items) -> np.ndarray:
    """The server's trending list at `time` (unix s) from the ratings before it (item rows `hi`,
    timestamps `ts`, positive mask `pos`): the live counter's window is the last TRENDING_DAYS day
    buckets up to and including the one holding `time` (bucket = floor(ms / 1 day))."""
    day, now = np.asarray(ts) // 86400, int(time) // 86400
    cnt = np.bincount(np.asarray(hi)[pos & (day > now - TRENDING_DAYS) & (day <= now)], minlength=n_items)
    rows = np.flatnonzero(cnt > 0)
    return rows[np.lexsort((rows, -cnt[rows]))]


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
    trending = trending_rows(hi, h["timestamp"].to_numpy(), pos > 0, time, n_items)

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
                    occupations=occupations, popular=popular, trending=trending, history=history, seen=seen,
                    global_stats={"mean_rating": gm, "pos_rate": gp, "mean_age": g_age,
                                  "male_share": g_male, "n_ratings": int(len(h))})


# --------------------------------------------------------------------------- features
# The server computes every feature, here too: a snapshot is written as a catalog (schema.toml +
# Parquet, as the server loads it), the rows as Parquet, and `cascade features` evaluates the
# declarations (FEATURE_EXPRS, written into each model's config.toml) with the very plans that
# serve. Training and serving cannot disagree. The binary is $CASCADE_BIN, else the release build
# run.sh makes.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")
_SNAPSHOT_DIRS: dict = {}


def cascade_bin() -> str:
    return os.environ.get("CASCADE_BIN") or os.path.join(ROOT, "target", "release", "cascade")


def declarations_toml(names) -> str:
    """The `features = [...]` of a model's [input]: each column as the server computes it."""
    def decl(name):
        expr, default = FEATURE_EXPRS[name]
        d = f", default = {default!r}" if default != 0.0 else ""
        return f"  {{ name = {json.dumps(name)}, expr = {json.dumps(expr)}{d} }}"
    return "features = [\n" + ",\n".join(decl(n) for n in names) + ",\n]\n"


def _declarations() -> str:
    """A scratch repository holding only the three models' declarations, and a config naming it."""
    repo = os.path.join(CACHE, "declarations")
    for role, names in (("filter", FILTER_FEATURES), ("ranker", RANKER_FEATURES),
                        ("cold_start", COLD_FEATURES)):
        os.makedirs(os.path.join(repo, role), exist_ok=True)
        with open(os.path.join(repo, role, "config.toml"), "w") as f:
            f.write(f'role = "{role}"\n[input]\nname = "features"\n{declarations_toml(names)}'
                    f'[output]\nname = "score"\n')
    config = os.path.join(CACHE, "features.toml")
    with open(config, "w") as f:
        f.write(f"[models]\nrepository = {json.dumps(repo)}\n")
    return config


def snapshot_dir(S: Snapshot) -> str:
    """`S` written as a catalog the server can load (once per snapshot). The snapshot is kept
    alive with its directory: keyed by id(), a freed snapshot's id could be reused by a later one
    (another cutoff's, in backtest.py), which would then read the wrong catalog."""
    hit = _SNAPSHOT_DIRS.get(id(S))
    if hit is None or hit[0] is not S:
        d = os.path.join(CACHE, "snapshots", str(S.time))
        write_snapshot(S, d)
        write_events(S.history, os.path.join(d, "events.parquet"))
        _SNAPSHOT_DIRS[id(S)] = hit = (S, d)
    return hit[1]


def served_features(S: Snapshot, model: str, it, ur=None, ctx=None, recent=None) -> np.ndarray:
    """`cascade features` of `model` for items `it` (rows of S), users `ur` (rows; None = the
    cold-start path) and request context columns `ctx` (name -> values, None = not given)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    cols = {"item_id": pa.array([str(int(S.item_ids[i])) for i in it])}
    if ur is not None:
        cols["user_id"] = pa.array([str(int(S.user_ids[u])) for u in ur])
    n = len(it)
    for name, values in (ctx or {}).items():
        values = np.broadcast_to(np.asarray(values, dtype=object), (n,))
        if name in ("gender", "occupation"):
            cols[name] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
        else:
            cols[name] = pa.array([None if v is None or v != v else float(v) for v in values],
                                  type=pa.float32())
    if recent is not None:   # a session per row: its items' ids (the `recent_items` of a request)
        ids = {}
        def session(rows):
            if rows is None:
                return []
            key = id(rows)
            if key not in ids:
                ids[key] = [str(int(S.item_ids[i])) for i in rows]
            return ids[key]
        cols["recent_items"] = pa.array([session(r) for r in recent], type=pa.list_(pa.string()))
    live = [f for f in {"filter": FILTER_FEATURES, "ranker": RANKER_FEATURES, "cold_start": COLD_FEATURES}[model]
            if f in LIVE_FEATURES]
    extra = []
    if live:   # as of the snapshot's time, after exactly the interactions before it
        cols["timestamp"] = pa.array(np.full(n, int(S.time) * 1000, dtype=np.int64))
        extra = ["--events", events_file(S)]
    os.makedirs(CACHE, exist_ok=True)
    rows, out = os.path.join(CACHE, "rows.parquet"), os.path.join(CACHE, f"{model}.parquet")
    pq.write_table(pa.table(cols), rows)
    subprocess.run([cascade_bin(), "features", "--config", _declarations(), "--catalog", snapshot_dir(S),
                    "--model", model, "--rows", rows, "--out", out, *extra],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    t = pq.read_table(out)
    X = np.column_stack([t.column(c).to_numpy() for c in t.column_names]).astype(F32)
    assert X.shape == (n, len(t.column_names))
    return X


def write_events(ratings: pd.DataFrame, path: str) -> None:
    """Ratings as the interactions `cascade features --events` and `cascade eval --events` play:
    user_id, item_id, kind, value, timestamp (epoch ms)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({
        "user_id": pa.array(ratings["user_id"].astype(str).tolist()),
        "item_id": pa.array(ratings["item_id"].astype(str).tolist()),
        "kind": pa.array(["rating"] * len(ratings)),
        "value": pa.array(ratings["rating"].to_numpy().astype(np.float64)),
        "timestamp": pa.array(ratings["timestamp"].to_numpy().astype(np.int64) * 1000)}), path)


def events_file(S: Snapshot) -> str:
    """The snapshot's history as an events file beside its catalog (written with it)."""
    return os.path.join(snapshot_dir(S), "events.parquet")


def filter_features(S: Snapshot, ur: np.ndarray, it: np.ndarray) -> np.ndarray:
    return served_features(S, "filter", it, ur)


def ranker_features(S: Snapshot, ur, it, hour, weekday) -> np.ndarray:
    return served_features(S, "ranker", it, ur, {"hour": hour, "weekday": weekday})


def cold_features(S: Snapshot, it, age, gender, occupation, hour, weekday, recent=None) -> np.ndarray:
    """`recent`: per row, the request's recent items (item rows) or None."""
    return served_features(S, "cold_start", it, None,
                           {"age": list(age), "gender": list(gender), "occupation": list(occupation),
                            "hour": hour, "weekday": weekday}, recent)


def write_snapshot(S: Snapshot, out: str, cutoff_iso: str = "") -> None:
    """The catalog snapshot the server loads: schema.toml, items.parquet, users.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    os.makedirs(out, exist_ok=True)
    f32list = lambda m: pa.array([r.tolist() for r in np.asarray(m, dtype=F32)],  # noqa: E731
                                 type=pa.list_(pa.float32()))
    item_ids = [str(int(i)) for i in S.item_ids]
    it = S.items
    genres = [[GENRES[g] for g in np.flatnonzero(row)] for row in it["genres"]]
    items = {"id": pa.array(item_ids), "embedding": f32list(it["embedding"]),
             "genres": pa.array(genres, type=pa.list_(pa.string()))}
    for k in ("year", "popularity", "recent_popularity", "log_n_ratings", "mean_rating", "pos_rate",
              "mean_rater_age", "male_share"):
        items[k] = pa.array(np.asarray(it[k], dtype=F32))
    items["occupation_lift"] = f32list(it["occupation_lift"])
    us = S.users
    users = {"id": pa.array([str(int(u)) for u in S.user_ids]), "embedding": f32list(us["embedding"]),
             "age": pa.array(np.asarray(us["age"], dtype=F32)),
             "gender": pa.array(["M" if g >= 0.5 else "F" for g in us["gender_m"]]),
             "occupation": pa.array([S.occupations[int(o)] for o in us["occupation"]])}
    for k in ("log_n_ratings", "mean_rating", "pos_rate"):
        users[k] = pa.array(np.asarray(us[k], dtype=F32))
    users["genre_profile"] = f32list(us["genre_profile"])
    users["seen"] = pa.array([[item_ids[i] for i in s] for s in S.seen], type=pa.list_(pa.string()))
    meta = {"training_period_before": cutoff_iso} if cutoff_iso else None
    for name, cols in (("items.parquet", items), ("users.parquet", users)):
        table = pa.table(cols).replace_schema_metadata(meta)
        pq.write_table(table, os.path.join(out, name), compression="snappy")
        os.chmod(os.path.join(out, name), 0o644)
    with open(os.path.join(out, "schema.toml"), "w") as f:
        f.write(schema_toml(S, cutoff_iso))


def schema_toml(S: Snapshot, cutoff_iso: str = "") -> str:
    q = json.dumps
    genres = ", ".join(q(g) for g in GENRES)
    occupations = ", ".join(q(o) for o in S.occupations)
    num = '{ type = "number" }'
    period = f" (training period before {cutoff_iso})" if cutoff_iso else ""
    return f"""# The MovieLens 100K app: what its catalog snapshot holds and what a request's context
# may carry. Written by models/train/train.py{period};
# models/FEATURES.md says how every value is computed.

[vocabularies]
genre = [{genres}]
occupation = [{occupations}]
gender = ["M", "F"]

[items]
file = "items.parquet"
fields.embedding = {{ type = "vector", dim = {mf.EMBED_DIM} }}
fields.genres = {{ type = "categories", vocabulary = "genre" }}
fields.year = {num}
fields.popularity = {num}
fields.recent_popularity = {num}
fields.log_n_ratings = {num}
fields.mean_rating = {num}
fields.pos_rate = {num}
fields.mean_rater_age = {num}
fields.male_share = {num}
fields.occupation_lift = {{ type = "vector", by = "occupation" }}

[users]
file = "users.parquet"
fields.embedding = {{ type = "vector", dim = {mf.EMBED_DIM} }}
fields.age = {num}
fields.gender = {{ type = "category", vocabulary = "gender" }}
fields.occupation = {{ type = "category", vocabulary = "occupation" }}
fields.log_n_ratings = {num}
fields.mean_rating = {num}
fields.pos_rate = {num}
fields.genre_profile = {{ type = "vector", by = "genre" }}
fields.seen = {{ type = "items" }}

[context]
fields.hour = {{ type = "integer", min = 0, max = 23, default = "now.hour" }}
fields.weekday = {{ type = "integer", min = 0, max = 6, default = "now.weekday" }}
fields.age = {{ type = "number", min = 0, max = 130 }}
# Anything but these values counts as not given.
fields.gender = {{ type = "category", vocabulary = "gender", unknown = "missing" }}
fields.occupation = {{ type = "category", vocabulary = "occupation", unknown = "missing" }}

[events]
# What POST /v1/events interactions may be.
kinds = ["rating"]
# Windowed counters that count(item|user, ...) reads: positive ratings (4 or 5) and all
# ratings, counted by day, kept 60 days.
counters = [
  {{ kind = "rating", min_value = 4, bucket = "1d", keep = "60d" }},
  {{ kind = "rating", bucket = "1d", keep = "60d" }},
]

[retrieval]
item_vector = "embedding"
user_vector = "embedding"
popularity = "popularity"
seen = "seen"
# The items rated 4+ most in the last 30 days (live events): cold start retrieves them ahead of
# popularity; an embedding retrieval (a known user's, or a query from recent items) adds the first
# {TRENDING_KNOWN} of them (not seen) to what the embedding found.
trending = {{ kind = "rating", min_value = 4, last = "{TRENDING_DAYS}d", with_embedding = {TRENDING_KNOWN} }}
# The embedding's last coordinate is the MIPS augmentation (models/train/mf.py): a query built from
# recent items zeroes it.
item_vector_augmented = true
"""


def context_of(ts) -> tuple:
    """Request context from a unix timestamp: (hour 0-23 UTC, weekday 0-6 Monday=0)."""
    t = pd.to_datetime(np.asarray(ts), unit="s", utc=True)
    return np.asarray(t.hour, dtype=np.int64), np.asarray(t.weekday, dtype=np.int64)
