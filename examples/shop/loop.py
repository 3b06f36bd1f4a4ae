"""The feedback loop end to end on the shop (examples/shop/loop.sh runs it):

1. serve the shop (ranker version 1 pinned) with the ranking log on;
2. simulated shoppers, who know their true preferences (train.py's generative model), see each
   answer and view items with probability examine(position) x relevance(user, item): a position-bias
   curve the model must not learn as relevance;
3. `cascade dataset` joins the log with the views into training rows (served features, position);
4. two new rankers from the log: "corrected" (position as a training feature, held at position 0 when
   serving: the position-aware approach) and "naive" (the same model without it);
5. both copied in as versions 2 and 3: the quality gate vets them; both run as shadows;
6. an A/B test: control (version 1), corrected, naive, a third of the users each; the report gives
   each arm's view rate with its interval and the lift against control, which is then compared with
   the ground truth the simulator knows (each answer's expected views, and its expected relevance
   without the position effect);
7. the decision: promote an arm whose lift interval lies above zero.

Writes examples/shop/loop_report.json. Bounded: a few minutes on two cores.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "models", "train"))
import export as X  # noqa: E402


def _shop_train():
    """The shop's train.py (its world: the same seed, the same users and items), by its path: the
    MovieLens pipeline has a train.py of its own."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("shop_train", os.path.join(HERE, "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


T = _shop_train()

CASCADE = os.environ.get("CASCADE_BIN", os.path.join(ROOT, "target", "release", "cascade"))
PUBLIC, ADMIN = "127.0.0.1:18381", "127.0.0.1:18391"
K = 10
# The simulated shoppers: relevance is a logistic of the true utility; a shopper examines the item
# at position p with probability 1 / (1 + p)^0.8 (the position bias).
TAU = 3.0
BIAS = 0.8
COLLECT, SHADOW, AB = int(os.environ.get("LOOP_COLLECT", 6000)), 1000, int(os.environ.get("LOOP_AB", 9000))


def examine(p):
    return 1.0 / (1.0 + p) ** BIAS


def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method} {url}: {e.code} {e.read().decode()}")


class World:
    """True preferences at the serving time, from train.py's generative model."""

    def __init__(self):
        self.items, self.users, events = T.world(np.random.default_rng(T.SEED))
        day = (time.time() * 1000 - T.T0_MS) / T.DAY_MS
        it, us = self.items, self.users
        sale = np.array(["sale" in t for t in it["tags"]], dtype=float)
        new = ((day - it["listed_day"]) >= 0) & ((day - it["listed_day"]) < 30)
        self.util = (2.0 * us["latent"] @ it["latent"].T
                     + 1.5 * np.log(12 * us["pref"][:, it["cat"]])
                     - 0.9 * us["sens"][:, None] * np.log(it["price"] / 40)[None, :]
                     + 0.6 * it["quality"][None, :] + 0.4 * sale[None, :]
                     + new[None, :] * (0.5 + 0.8 * (us["device"] == "app"))[:, None])
        self.rel = 1 / (1 + np.exp(-(self.util - TAU)))
        bought = np.zeros(T.N_USERS, dtype=bool)
        bought[events[events["day"] < 90]["u"]] = True
        self.shoppers = np.flatnonzero(bought)  # known users (a history before day 90)

    def relevance(self, user, item_ids):
        return np.array([self.rel[user, int(i[1:])] for i in item_ids])


def session(world, rng, user, request_id, arm_header=None):
    """One shopper sees one answer: the views they make, and the answer's expected views and
    expected relevance of what it shows (the ground truth)."""
    body = {"request_id": request_id, "user_id": T.user_id(user), "k": K,
            "context": {"device": str(world.users["device"][user])}}
    answer = call("POST", f"http://{PUBLIC}/v1/rank", body)
    ids = [i["item_id"] for i in answer["items"]]
    rel = world.relevance(user, ids)
    exam = examine(np.arange(len(ids)))
    views = [ids[p] for p in range(len(ids)) if rng.random() < exam[p] * rel[p]]
    return answer, views, float((exam * rel).sum()), float(rel.mean()) if len(ids) else 0.0


def play(world, rng, n, prefix, events_per_post=200):
    """n sessions of random shoppers; their views posted with the request ids. Returns per-answer
    (variant, expected views, mean relevance)."""
    out, pending = [], []
    for s in range(n):
        user = int(rng.choice(world.shoppers))
        rid = f"{prefix}-{s}"
        answer, views, expected, relevance = session(world, rng, user, rid)
        out.append((answer["variant"], expected, relevance, len(views)))
        for v in views:
            pending.append({"type": "interaction", "id": f"{rid}-{v}", "user_id": T.user_id(user),
                            "item_id": v, "kind": "view", "request_id": rid})
        if len(pending) >= events_per_post:
            call("POST", f"http://{PUBLIC}/v1/events", {"events": pending})
            pending = []
    if pending:
        call("POST", f"http://{PUBLIC}/v1/events", {"events": pending})
    return out


def train_rankers(dataset, out):
    """Two logistic re-rankers on the served features: one with the position as a feature (one-hot,
    held at position 0 when serving: its coefficient folds into the intercept), one without."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    t = pq.read_table(dataset)
    names = [c for c in t.column_names if c.startswith("ranker.")]
    rows = np.ones(t.num_rows, dtype=bool)
    cols = []
    for c in names:
        v = t.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        rows &= np.isfinite(v)
        cols.append(v)
    from sklearn.metrics import roc_auc_score

    Xall = np.column_stack(cols)[rows].astype(np.float32)
    y = (t.column("label_view").to_numpy()[rows] > 0).astype(int)
    pos = t.column("position").to_numpy()[rows].astype(int)
    served = t.column("score_ranker").to_numpy(zero_copy_only=False)[rows].astype(np.float64)
    # A fifth of the answers held out (by request id), for the offline check below.
    rid = t.column("request_id").to_pylist()
    held = np.array([hash(r) % 5 == 0 for r, keep in zip(rid, rows) if keep])
    scaler = StandardScaler().fit(Xall[~held])
    Z = scaler.transform(Xall)
    P = np.eye(K)[np.clip(pos, 0, K - 1)]
    naive = LogisticRegression(C=1.0, max_iter=2000).fit(Z[~held], y[~held])
    aware = LogisticRegression(C=1.0, max_iter=2000).fit(np.hstack([Z, P])[~held], y[~held])
    corrected = LogisticRegression()
    corrected.classes_ = aware.classes_
    corrected.coef_ = aware.coef_[:, :Z.shape[1]].copy()
    corrected.intercept_ = aware.intercept_ + aware.coef_[:, Z.shape[1]]  # as if shown at position 0
    fitted = {}
    feature_names = [n.split(".", 1)[1] for n in names]
    for version, (label, lr) in ((2, ("corrected", corrected)), (3, ("naive", naive))):
        pipe = Pipeline([("scaler", scaler), ("lr", lr)])
        model = X.to_onnx_sklearn(pipe, Xall.shape[1], f"shop ranker from the ranking log ({label})", feature_names)
        scorer = X.OnnxScorer(model)
        d = os.path.join(out, "ranker", str(version))
        X.save_onnx(model, os.path.join(d, "model.onnx"))
        # No labels: the logged views carry the serving model's position bias (see "offline"
        # below), so a like-for-like AUC against version 1 would favour version 1; the golden set
        # vets the export, the A/B test judges the model.
        gold = np.random.default_rng(version).choice(len(Xall), 64, replace=False)
        X.write_json(os.path.join(d, "golden.json"), {
            "model": "ranker", "version": version, "features": feature_names, "tolerance": 1e-4,
            "inputs": [[float(v) for v in Xall[k]] for k in gold],
            "outputs": [float(v) for v in scorer(Xall[gold])]}, indent=None)
        X.write_profile(os.path.join(d, "profile.json"), feature_names, Xall, scorer(Xall), "the ranking log's rows")
        fitted[label] = {"version": version,
                         "position_coefficients": [float(c) for c in aware.coef_[0, Z.shape[1]:]] if label == "corrected" else None,
                         "held_out_auc_on_logged_views": float(roc_auc_score(y[held], scorer(Xall[held])))}
    offline = {"version_1_held_out_auc_on_logged_views": float(roc_auc_score(y[held], served[held])),
               "note": "AUC on the logged views of held-out answers: the labels carry the position bias of the "
                       "model that chose the positions (version 1), so this offline figure favours it"}
    return {"rows": int(len(y)), "positive": float(y.mean()), "features": feature_names, "models": fitted,
            "offline": offline}


def main():
    rng = np.random.default_rng(2026)
    world = World()
    work = tempfile.mkdtemp(prefix="cascade-loop-")
    repo = os.path.join(work, "models")
    shutil.copytree(os.path.join(HERE, "models"), repo)
    env = dict(os.environ, CASCADE_MODELS__REPOSITORY=repo, CASCADE_RANKING__RANKER_MODEL="ranker@1",
               CASCADE_STATE__DIR=os.path.join(work, "state"), CASCADE_FEEDBACK__LOG_DIR=os.path.join(work, "logs"),
               CASCADE_FEEDBACK__ATTRIBUTION_WINDOW="1h", CASCADE_FEEDBACK__MAX_RECENT_ANSWERS="200000",
               CASCADE_SERVER__DRAIN_DELAY_MS="0", CASCADE_MODELS__POLL_INTERVAL_S="0", RUST_LOG="warn")
    server = subprocess.Popen([CASCADE, "serve", "--config", "examples/shop/config.toml", "--listen", PUBLIC,
                               "--admin-listen", ADMIN], cwd=ROOT, env=env)
    report = {"simulator": {"relevance": f"1 / (1 + exp(-(true utility - {TAU})))",
                            "examination": f"1 / (1 + position)^{BIAS}", "k": K}}
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://{ADMIN}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None:
                raise SystemExit("the server stopped")
            time.sleep(0.2)
        started = time.time()
        # 1-2. Collect: version 1 serves everyone, every answer logged.
        collected = play(world, rng, COLLECT, "collect")
        report["collect"] = {"rankings": len(collected), "views": int(sum(c[3] for c in collected)),
                             "expected_views_per_ranking": float(np.mean([c[1] for c in collected]))}
        print(f"collected {len(collected)} rankings, {report['collect']['views']} views "
              f"({time.time() - started:.0f} s)", flush=True)
        # 3. The training set, from the log and the state's event log.
        time.sleep(0.5)  # the log's writer polls every 5 ms
        dataset = os.path.join(work, "train.parquet")
        subprocess.run([CASCADE, "dataset", "--config", "examples/shop/config.toml", "--out", dataset],
                       cwd=ROOT, env=env, check=True)
        # 4. Two new rankers.
        report["training"] = train_rankers(dataset, repo)
        print(json.dumps(report["training"]["models"]), flush=True)
        # 5. In as versions 2 and 3: vetted, gated; version 1 keeps serving (pinned).
        reload = call("POST", f"http://{ADMIN}/admin/models/ranker/reload")
        report["reload"] = {"loaded": reload.get("loaded"), "failed": reload.get("failed"),
                            "quality_gate": reload.get("quality_gate")}
        print("reload:", json.dumps(report["reload"]), flush=True)
        call("PUT", f"http://{ADMIN}/admin/shadow", {"shadows": [
            {"name": "corrected", "stage": "rerank", "model": "ranker@2", "sample_rate": 1.0},
            {"name": "naive", "stage": "rerank", "model": "ranker@3", "sample_rate": 1.0}]})
        play(world, rng, SHADOW, "shadow")
        time.sleep(0.5)
        report["shadow_report"] = call("GET", f"http://{ADMIN}/admin/shadow/report")
        call("PUT", f"http://{ADMIN}/admin/shadow", {"shadows": []})
        # 6. The A/B test.
        call("PUT", f"http://{ADMIN}/admin/experiments", {"salt": "loop-1", "arms": [
            {"name": "control", "share": 0.333333},
            {"name": "corrected", "share": 0.333333, "ranker_model": "ranker@2"},
            {"name": "naive", "share": 0.333334, "ranker_model": "ranker@3"}]})
        ab = play(world, rng, AB, "ab")
        ab_report = call("GET", f"http://{ADMIN}/admin/experiments/report")
        report["experiment_report"] = ab_report
        truth = {}
        for arm in ("control", "corrected", "naive"):
            mine = [a for a in ab if a[0] == arm]
            truth[arm] = {"rankings": len(mine), "expected_views_per_ranking": float(np.mean([a[1] for a in mine])),
                          "mean_relevance_shown": float(np.mean([a[2] for a in mine]))}
        for arm in ("corrected", "naive"):
            truth[arm]["true_lift"] = truth[arm]["expected_views_per_ranking"] / truth["control"]["expected_views_per_ranking"] - 1
            truth[arm]["true_relevance_lift"] = truth[arm]["mean_relevance_shown"] / truth["control"]["mean_relevance_shown"] - 1
        report["ground_truth"] = truth
        # 7. Decide.
        measured = {v["arm"]: v for v in ab_report["vs_control"] if v["kind"] == "view"}
        winners = [a for a, v in measured.items() if v["ci95"] and v["ci95"][0] > 0]
        best = max(winners, key=lambda a: measured[a]["lift"], default=None)
        report["decision"] = (f"promote {best} (ranker@{2 if best == 'corrected' else 3}): its lift's 95 % interval "
                              f"lies above zero" if best else "keep ranker@1: no arm's lift interval lies above zero")
        report["seconds"] = round(time.time() - started, 1)
        for arm in ("corrected", "naive"):
            m = measured.get(arm, {})
            print(f"{arm}: measured lift {m.get('lift')} (95 % CI {m.get('ci95')}, p {m.get('p_value')}), "
                  f"true lift {truth[arm]['true_lift']:+.4f}, true relevance lift {truth[arm]['true_relevance_lift']:+.4f}")
        print("srm p-value:", ab_report["srm"]["p_value"])
        print(report["decision"])
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    X.write_json(os.path.join(HERE, "loop_report.json"), report)


if __name__ == "__main__":
    main()
