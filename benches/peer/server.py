"""A plain Python peer of Cascade's POST /v1/rank, for known MovieLens users.

It does what Cascade does for a known user with both of its caches off, read
from the Rust source (src/pipeline/run.rs and stages.rs, src/catalog/index.rs,
src/data/expr/eval.rs) and the model configs, with the features hand-coded:

  1. retrieve: the 300 items nearest the user's embedding by cosine (query
     and items scaled to unit length in f64, then f32), exact, skipping the
     items the user has seen and the request's `exclude`; ties to the lower row;
  2. filter: the 6 features of models/filter/config.toml, the logistic
     regression, keep the 100 best (score descending, then item row ascending);
  3. rerank: the 40 features of models/ranker/config.toml, the ranker, the same
     order, the first k.

Feature values are computed in float32 the way Cascade's expression language
does (dot products summed left to right, one rounding per multiply and add),
so that both sides feed the models the same bits; a value that is not finite
takes the feature's default. `benches/peer/parity.py` checks the answers.

Run: benches/peer/.venv/bin/python benches/peer/server.py --port 18300
"""

import argparse
import datetime
import itertools
import os
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

REPO = Path(__file__).resolve().parents[2]
RETRIEVE_N = 300  # [ranking] retrieve_n
FILTER_KEEP = 100  # [ranking] filter_keep
DEFAULT_K, MAX_K = 10, 100  # [ranking] default_k, max_k
F32 = np.float32


def seq_dot(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """`sum(q[d] * row[d])` per row, summed left to right in f32 (Cascade's
    `sequential_dot`): numpy's cumulative add is sequential, unlike np.dot."""
    return np.cumsum(rows * query, axis=1, dtype=F32)[:, -1]


def finite_or(column: np.ndarray, default: float) -> np.ndarray:
    """A missing (NaN or infinite) value takes the feature's default."""
    return np.where(np.isfinite(column), column, F32(default))


def codes(values, vocabulary: list) -> np.ndarray:
    """Category strings as their vocabulary codes (f32; NaN when null). Like
    Cascade reading a snapshot, a value outside the vocabulary is appended."""
    out = np.full(len(values), np.nan, dtype=F32)
    for i, v in enumerate(values):
        if v is not None:
            if v not in vocabulary:
                vocabulary.append(v)
            out[i] = vocabulary.index(v)
    return out


class Catalog:
    """items.parquet and users.parquet as numpy arrays, rows in file order."""

    def __init__(self, folder: Path):
        schema = tomllib.loads((folder / "schema.toml").read_text())
        vocab = {k: list(v) for k, v in schema["vocabularies"].items()}
        items = pq.read_table(folder / "items.parquet").to_pydict()
        users = pq.read_table(folder / "users.parquet").to_pydict()

        self.item_ids = items["id"]
        self.item_row = {id_: r for r, id_ in enumerate(self.item_ids)}
        n = len(self.item_ids)
        col = lambda name: np.asarray(items[name], dtype=F32)  # noqa: E731
        self.embedding = np.asarray(items["embedding"], dtype=F32)
        # Retrieval vectors at unit length, as src/catalog/index.rs unit_rows.
        norm = np.sqrt(np.square(self.embedding.astype(np.float64)).sum(axis=1))
        ok = np.isfinite(norm) & (norm > 1e-12)
        safe = np.where(ok, norm, 1.0)[:, None]
        self.unit = np.where(ok[:, None], self.embedding / safe, 0.0).astype(F32)
        genre_vocab = vocab["genre"]
        genre_codes = [sorted({int(c) for c in codes(g, genre_vocab)}) for g in items["genres"]]
        self.genres = np.zeros((n, len(genre_vocab)), dtype=F32)  # multihot
        for r, cs in enumerate(genre_codes):
            self.genres[r, cs] = 1.0
        self.popularity = col("popularity")
        self.recent_popularity = col("recent_popularity")
        self.mean_rating = col("mean_rating")
        self.pos_rate = col("pos_rate")
        self.mean_rater_age = col("mean_rater_age")
        self.male_share = col("male_share")
        self.occupation_lift = np.asarray(items["occupation_lift"], dtype=F32)
        # The ranker's item-only columns 6..32, side by side, defaults
        # applied once: popularity, recent_popularity, log_n_ratings,
        # mean_rating, pos_rate, year, mean_rater_age, male_share, and
        # has(item.genres, g) for each genre in vocabulary order.
        self.ranker_item_block = finite_or(np.column_stack(
            [col(c) for c in ("popularity", "recent_popularity", "log_n_ratings",
                              "mean_rating", "pos_rate", "year", "mean_rater_age",
                              "male_share")] + [self.genres]
        ).astype(F32), 0.0)

        self.user_row = {id_: r for r, id_ in enumerate(users["id"])}
        self.user_embedding = np.asarray(users["embedding"], dtype=F32)
        self.user_age = np.asarray(users["age"], dtype=F32)
        self.user_gender = codes(users["gender"], vocab["gender"])
        self.gender_m = F32(vocab["gender"].index("M"))
        self.user_occupation = codes(users["occupation"], vocab["occupation"])
        self.user_log_n_ratings = np.asarray(users["log_n_ratings"], dtype=F32)
        self.user_mean_rating = np.asarray(users["mean_rating"], dtype=F32)
        self.user_pos_rate = np.asarray(users["pos_rate"], dtype=F32)
        self.genre_profile = np.asarray(users["genre_profile"], dtype=F32)
        self.seen = [np.fromiter((self.item_row[i] for i in s), dtype=np.int64)
                     for s in users["seen"]]


def load_model(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def best_first(rows: np.ndarray, scores: np.ndarray, keep: int) -> tuple:
    """The first `keep` of (rows, scores) by score descending, then row
    ascending (src/pipeline/stages.rs sort_scored)."""
    order = np.lexsort((rows, -scores))[:keep]
    return rows[order], scores[order]


class Ranker:
    def __init__(self, models: Path):
        self.catalog = Catalog(models / "catalog")
        self.filter = load_model(models / "filter" / "1" / "model.onnx")
        self.ranker = load_model(models / "ranker" / "1" / "model.onnx")
        self.width = self.ranker.get_inputs()[0].shape[1]
        assert self.width == 40 and self.filter.get_inputs()[0].shape[1] == 6

    def retrieve(self, user: int, excluded: list) -> tuple:
        """Rows and cosines of the exact top RETRIEVE_N, never a seen or
        excluded item; ties to the lower row (src/catalog/index.rs)."""
        c = self.catalog
        q = c.user_embedding[user].astype(np.float64)
        unit = (q / np.sqrt(np.dot(q, q))).astype(F32)
        scores = c.unit @ unit
        scores[c.seen[user]] = -np.inf
        scores[excluded] = -np.inf
        n = min(RETRIEVE_N, len(scores) - int(np.isneginf(scores).sum()))
        if n <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=F32)
        # The n-th best score; everything above it, then ties by row.
        floor = -np.partition(-scores, n - 1)[n - 1]
        above = np.flatnonzero(scores > floor)
        tied = np.flatnonzero(scores == floor)[: n - len(above)]
        rows = np.concatenate([above, tied])
        return rows, scores[rows]

    def rank(self, user: int, hour: int, weekday: int, k: int, excluded: list) -> tuple:
        """(rows, scores, fallback) of the answer."""
        c = self.catalog
        rows, cosines = self.retrieve(user, excluded)
        if len(rows) == 0:
            return rows, cosines, None

        # filter: models/filter/config.toml, in its order.
        dots = finite_or(seq_dot(c.embedding[rows], c.user_embedding[user]), 0.0)
        affinity = finite_or(seq_dot(c.genres[rows], c.genre_profile[user]), 0.0)
        x = np.empty((len(rows), 6), dtype=F32)
        x[:, 0] = dots                                   # user_item_dot
        x[:, 1] = affinity                               # user_genre_affinity
        x[:, 2] = finite_or(c.popularity[rows], 0.0)     # item_popularity
        x[:, 3] = finite_or(c.recent_popularity[rows], 0.0)
        x[:, 4] = finite_or(c.mean_rating[rows], 0.0)
        x[:, 5] = finite_or(c.pos_rate[rows], 0.0)
        scores = self.filter.run(None, {"features": x})[0].reshape(-1)
        if not np.isfinite(scores).all():  # Cascade answers the previous order
            return *best_first(rows, cosines, k), "model_error"
        order = np.lexsort((rows, -scores))[:FILTER_KEEP]
        rows, scores = rows[order], scores[order]
        dots, affinity = dots[order], affinity[order]

        # rerank: models/ranker/config.toml, in its order. User and context
        # values are one number per request, broadcast down the column.
        age = c.user_age[user]
        gender = c.user_gender[user]
        occupation = c.user_occupation[user]
        male = c.male_share[rows]
        x = np.empty((len(rows), self.width), dtype=F32)
        x[:, 0] = finite_or(age, 0.0)                                # user_age
        x[:, 1] = 0.0 if np.isnan(gender) else F32(gender == c.gender_m)  # user_gender_m
        x[:, 2] = finite_or(occupation, 0.0)                         # code(user.occupation)
        x[:, 3] = finite_or(c.user_log_n_ratings[user], 0.0)
        x[:, 4] = finite_or(c.user_mean_rating[user], 0.0)
        x[:, 5] = finite_or(c.user_pos_rate[user], 0.0)
        x[:, 6:33] = c.ranker_item_block[rows]           # item_* and item_genre_*
        x[:, 33] = dots                                  # user_item_dot
        x[:, 34] = affinity                              # user_genre_affinity
        x[:, 35] = finite_or(np.abs(age - c.mean_rater_age[rows]), 0.0)  # age_gap
        if np.isnan(gender):                             # gender_affinity
            x[:, 36] = 0.5
        else:
            x[:, 36] = finite_or(male if gender == c.gender_m else F32(1.0) - male, 0.5)
        if np.isnan(occupation):                         # occupation_lift
            x[:, 37] = 1.0
        else:
            x[:, 37] = finite_or(c.occupation_lift[rows, int(occupation)], 1.0)
        x[:, 38] = hour                                  # ctx_hour
        x[:, 39] = weekday                               # ctx_weekday
        ranked = self.ranker.run(None, {"features": x})[0].reshape(-1)
        if not np.isfinite(ranked).all():
            return *best_first(rows, scores, k), "model_error"
        return *best_first(rows, ranked, k), None


class BadRequest(Exception):
    pass


def integer(ctx: dict, key: str, low: int, high: int, default: int) -> int:
    v = ctx.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise BadRequest(f"context.{key} must be an integer between {low} and {high}, got {v}")
    return v


def create_app() -> Starlette:
    ranker = Ranker(Path(os.environ.get("PEER_MODELS", REPO / "models")))
    catalog = ranker.catalog
    ids = itertools.count()
    prefix = f"py{os.getpid():x}"

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    async def rank(request: Request) -> JSONResponse:
        # The work is short and CPU-bound: done on the event loop, no thread hop.
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            user = catalog.user_row.get(body.get("user_id"))
            if user is None:
                raise BadRequest("the peer ranks known users only (no cold start)")
            k = body.get("k", DEFAULT_K)
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
                raise BadRequest(f"k must be between 1 and {MAX_K}, got {k}")
            ctx = body.get("context") or {}
            now = datetime.datetime.now(datetime.timezone.utc)
            hour = integer(ctx, "hour", 0, 23, now.hour)
            weekday = integer(ctx, "weekday", 0, 6, now.weekday())
            excluded = [r for r in map(catalog.item_row.get, body.get("exclude", []))
                        if r is not None]
        except (ValueError, BadRequest) as e:  # ValueError: malformed JSON
            return error(400, "invalid_request", str(e))
        rows, scores, fallback = ranker.rank(user, hour, weekday, k, excluded)
        return JSONResponse({
            "request_id": body.get("request_id") or f"{prefix}-{next(ids)}",
            # Shortest f32 text, as Cascade (serde) writes its scores.
            "items": [{"item_id": catalog.item_ids[r], "score": float(str(s))}
                      for r, s in zip(rows.tolist(), scores)],
            "variant": "control",
            "models": {"filter": "filter@1", "ranker": "ranker@1"},
            "fallback": fallback,
            "cached": False,
        })

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[
        Route("/v1/rank", rank, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", healthz, methods=["GET"]),
    ])


def main() -> None:
    import socket

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--models", default=str(REPO / "models"))
    # uvloop and httptools (uvicorn[standard]'s parts) unless asked for the
    # pure-Python asyncio loop and h11 parser.
    p.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    p.add_argument("--http", default="httptools", choices=["httptools", "h11"])
    a = p.parse_args()
    os.environ["PEER_MODELS"] = str(Path(a.models).resolve())  # for the workers
    config = uvicorn.Config("server:create_app", factory=True,  # this folder is sys.path[0]
                            host=a.host, port=a.port, workers=a.workers,
                            loop=a.loop, http=a.http, log_level="warning", access_log=False)
    # What uvicorn.run does for --workers N, but with the listener created as
    # IPPROTO_TCP: uvicorn makes it with proto 0, accepted sockets inherit
    # that, and asyncio then never sets TCP_NODELAY on them, so every
    # keep-alive answer after the first waits ~40 ms for a delayed ACK
    # (uvicorn issue #3149).
    family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((a.host, a.port))
    sock.set_inheritable(True)
    if a.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
