"""Independent check of everything train.py wrote, using ONLY the shipped artifacts
(models/catalog/*, models/<name>/...), the way the Rust server sees them:

1. every model.onnx has exactly one input `features` FP32 [N, F] (N symbolic) and exactly one
   output `score` FP32 [N, 1]; F == len(config.toml [input].features);
2. golden.json outputs are reproduced by onnxruntime within the tolerance;
3. golden.json inputs are rebuilt from catalog + user table + request context with a scalar
   re-implementation of models/FEATURES.md (not features.py) -- the skew test the server must pass;
   the live-state feature (item_trending) from the training-period interactions train.py wrote
   to .cache/eval_events.parquet, as of each golden row's timestamp;
4. catalog invariants: unit-norm embeddings, held-out users absent, shapes/dtypes.
"""
from __future__ import annotations

import json
import os
import sys
import tomllib

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.dirname(HERE)
CAT = os.path.join(MODELS, "catalog")
f32 = np.float32


def load_catalog():
    """The Parquet snapshot, as per-field arrays (categories as the indices/flags the formulas use)."""
    schema = tomllib.load(open(os.path.join(CAT, "schema.toml"), "rb"))
    genres, occupations = schema["vocabularies"]["genre"], schema["vocabularies"]["occupation"]
    it = pq.read_table(os.path.join(CAT, "items.parquet")).to_pydict()
    us = pq.read_table(os.path.join(CAT, "users.parquet")).to_pydict()
    vec = lambda rows: np.array(rows, dtype=np.float32)  # noqa: E731
    items = {k: vec(it[k]) for k in ("embedding", "occupation_lift", "year", "popularity", "recent_popularity",
                                     "log_n_ratings", "mean_rating", "pos_rate", "mean_rater_age", "male_share")}
    items["genres"] = np.array([[f32(g in row) for g in genres] for row in it["genres"]], dtype=np.float32)
    users = {k: vec(us[k]) for k in ("embedding", "age", "log_n_ratings", "mean_rating", "pos_rate",
                                     "genre_profile")}
    users["gender_m"] = np.array([f32(g == "M") for g in us["gender"]], dtype=np.float32)
    users["occupation"] = np.array([occupations.index(o) for o in us["occupation"]], dtype=np.float32)
    n_i, n_u = len(it["id"]), len(us["id"])
    for k, v in items.items():
        assert v.shape[0] == n_i, (k, v.shape)
    for k, v in users.items():
        assert v.shape[0] == n_u, (k, v.shape)
    for t in (items, users):
        nrm = np.linalg.norm(t["embedding"].astype(np.float64), axis=1)
        assert np.all(np.abs(nrm - 1) < 1e-5), nrm.min()
    assert all(i in set(it["id"]) for seen in us["seen"] for i in seen)
    ij = {"ids": it["id"], "genres": genres}
    uj = {"ids": us["id"], "occupations": occupations}
    return items, users, ij, uj


class Interactions:
    """The training-period ratings train.py hands `cascade eval --events` (.cache/eval_events.parquet):
    what live-state features count. Not an artifact (derived from the data set, never shipped)."""

    def __init__(self):
        t = pq.read_table(os.path.join(HERE, ".cache", "eval_events.parquet")).to_pydict()
        self.item = np.array(t["item_id"])
        self.value = np.array(t["value"], dtype=np.float64)
        self.ms = np.array(t["timestamp"], dtype=np.int64)

    def trending(self, item_id, at_ms):
        """log1p of the item's ratings >= 4 before `at_ms` in the 30 day buckets ending with at_ms's."""
        day, now = self.ms // 86_400_000, at_ms // 86_400_000
        n = np.sum((self.item == item_id) & (self.value >= 4) & (self.ms < at_ms) & (day > now - 30))
        return np.log1p(f32(n), dtype=np.float32)


def feature(name, item, user, ctx, occupations, live=None):
    """Scalar re-implementation of models/FEATURES.md. item/user: dict of per-row arrays; live:
    (Interactions, item id, row time in ms) for the features that read live state."""
    g = item["genres"]
    if name == "item_trending":
        events, item_id, at_ms = live
        return events.trending(item_id, at_ms)
    if name in ("session_similarity", "session_given"):   # no golden row carries recent items
        return f32(0)
    if name.startswith("item_genre_"):
        return g[GENRE_NAMES.index(name)]
    simple_item = {"item_popularity": "popularity", "item_recent_popularity": "recent_popularity",
                   "item_log_n_ratings": "log_n_ratings", "item_mean_rating": "mean_rating",
                   "item_pos_rate": "pos_rate", "item_year": "year", "item_mean_rater_age": "mean_rater_age",
                   "item_male_share": "male_share"}
    if name in simple_item:
        return item[simple_item[name]]
    if name in ("ctx_hour", "ctx_weekday"):
        return f32(ctx[name[4:]])
    if user is not None:  # known user (filter / ranker)
        simple_user = {"user_age": "age", "user_gender_m": "gender_m", "user_occupation": "occupation",
                       "user_log_n_ratings": "log_n_ratings", "user_mean_rating": "mean_rating",
                       "user_pos_rate": "pos_rate"}
        if name in simple_user:
            return user[simple_user[name]]
        if name == "user_item_dot":
            acc = f32(0)
            for a, b in zip(user["embedding"], item["embedding"]):
                acc = f32(acc + f32(a * b))
            return acc
        if name == "user_genre_affinity":
            acc = f32(0)
            for a, b in zip(user["genre_profile"], g):
                acc = f32(acc + f32(a * b))
            return acc
        if name == "age_gap":
            return abs(f32(user["age"] - item["mean_rater_age"]))
        if name == "gender_affinity":
            return item["male_share"] if user["gender_m"] == 1 else f32(1) - item["male_share"]
        if name == "occupation_lift":
            return item["occupation_lift"][int(user["occupation"])]
    else:  # cold start: demographics from the request context
        age = ctx.get("age")
        gender = ctx.get("gender")
        occ = ctx.get("occupation")
        occ_i = occupations.index(occ) if occ in occupations else -1
        if name == "ctx_age":
            return f32(age) if age is not None else f32(0)
        if name == "ctx_age_missing":
            return f32(age is None)
        if name == "ctx_gender_m":
            return f32(gender == "M")
        if name == "ctx_gender_f":
            return f32(gender == "F")
        if name == "ctx_occupation":
            return f32(occ_i)
        if name == "age_gap":
            return abs(f32(f32(age) - item["mean_rater_age"])) if age is not None else f32(10)
        if name == "gender_affinity":
            if gender == "M":
                return item["male_share"]
            if gender == "F":
                return f32(1) - item["male_share"]
            return f32(0.5)
        if name == "occupation_lift":
            return item["occupation_lift"][occ_i] if occ_i >= 0 else f32(1)
    raise KeyError(name)


GENRE_NAMES = []


def main():
    items, users, ij, uj = load_catalog()
    GENRE_NAMES.extend("item_genre_" + x.lower().replace("'", "").replace("-", "_") for x in ij["genres"])
    iidx = {s: k for k, s in enumerate(ij["ids"])}
    uidx = {s: k for k, s in enumerate(uj["ids"])}
    ok = True
    events = Interactions()
    print("catalog: items.parquet " + ", ".join(f"{k} {list(v.shape)}" for k, v in sorted(items.items())))
    print("catalog: users.parquet " + ", ".join(f"{k} {list(v.shape)}" for k, v in sorted(users.items())))
    for name in ("filter", "ranker", "cold_start"):
        cfg = tomllib.load(open(os.path.join(MODELS, name, "config.toml"), "rb"))
        feats = [f["name"] for f in cfg["input"]["features"]]
        assert cfg["role"] == name and cfg["input"]["name"] == "features" and cfg["output"]["name"] == "score"
        path = os.path.join(MODELS, name, "1", "model.onnx")
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        gi, go = m.graph.input, m.graph.output
        assert [i.name for i in gi] == ["features"] and [o.name for o in go] == ["score"]
        for v, want in ((gi[0], ["N", len(feats)]), (go[0], ["N", 1])):
            tt = v.type.tensor_type
            assert tt.elem_type == onnx.TensorProto.FLOAT
            dims = [d.dim_param or d.dim_value for d in tt.shape.dim]
            assert dims == want, (v.name, dims, want)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        gold = json.load(open(os.path.join(MODELS, name, "1", "golden.json")))
        assert gold["features"] == feats and gold["model"] == name
        X = np.array(gold["inputs"], dtype=np.float32)
        out = sess.run(["score"], {"features": X})[0]
        assert out.shape == (len(X), 1) and out.dtype == np.float32
        err_out = float(np.max(np.abs(out[:, 0] - np.array(gold["outputs"], dtype=np.float32))))
        # rebuild inputs from the artifacts alone
        rebuilt = []
        for row in gold["rows"]:
            it = {k: v[iidx[row["item_id"]]] for k, v in items.items()}
            us = None
            if row["user_id"] is not None:
                us = {k: v[uidx[row["user_id"]]] for k, v in users.items()}
            live = (events, row["item_id"], row["timestamp"])
            rebuilt.append([feature(f, it, us, row["context"], uj["occupations"], live) for f in feats])
        rebuilt = np.array(rebuilt, dtype=np.float32)
        err_in = float(np.max(np.abs(rebuilt - X)))
        out2 = sess.run(["score"], {"features": rebuilt})[0]
        err_out2 = float(np.max(np.abs(out2[:, 0] - np.array(gold["outputs"], dtype=np.float32))))
        prof = json.load(open(os.path.join(MODELS, name, "1", "profile.json")))
        assert list(prof["features"]) == feats and "score" in prof
        good = err_out <= gold["tolerance"] and err_out2 <= gold["tolerance"] and err_in <= 1e-5
        ok &= good
        print(f"{name:10s} {'OK ' if good else 'BAD'} input features[N,{len(feats)}] f32 -> score[N,1] f32; "
              f"golden rows={len(X)} |onnx-golden|={err_out:.1e} |rebuilt inputs-golden|={err_in:.1e} "
              f"|score(rebuilt)-golden|={err_out2:.1e}; {os.path.getsize(path)/1024:.0f} KiB")
    if not ok:
        sys.exit("verification FAILED")
    print("verification OK")


if __name__ == "__main__":
    main()
