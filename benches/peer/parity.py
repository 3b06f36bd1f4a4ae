"""Sends the same rank requests to Cascade and to the Python peer and checks
that they answer alike: k items each, the scores at every position within
--tolerance, every item both answers hold scored within --tolerance by both,
no fallback on either side. So two items whose scores differ by less than
the tolerance may swap places (float rounding in another summation order
decides such near-ties); anything else is a disagreement. Reports how many
answers are identical in order too. Exits 1 when any request disagrees.

  benches/peer/.venv/bin/python benches/peer/parity.py \\
      --cascade http://127.0.0.1:18301 --peer http://127.0.0.1:18300 -n 2000
"""

import argparse
import http.client
import json
import random
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]


def requests(n: int, k: int, seed: int) -> list:
    """n known-user requests, user, hour and weekday drawn at random."""
    users = pq.read_table(REPO / "models/catalog/users.parquet", columns=["id"])
    ids = users.column("id").to_pylist()
    rng = random.Random(seed)
    return [{"user_id": rng.choice(ids), "k": k,
             "context": {"hour": rng.randrange(24), "weekday": rng.randrange(7)}}
            for _ in range(n)]


class Client:
    """One keep-alive connection per thread and server."""

    def __init__(self, base: str):
        self.netloc = urlsplit(base).netloc
        self.local = threading.local()

    def post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        for attempt in range(2):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(self.netloc, timeout=30)
            try:
                conn.request("POST", path, data, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                text = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{self.netloc}{path}: HTTP {resp.status}: {text[:200]!r}")
                return json.loads(text)
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cascade", default="http://127.0.0.1:18301")
    p.add_argument("--peer", default="http://127.0.0.1:18300")
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--tolerance", type=float, default=1e-6)
    p.add_argument("--threads", type=int, default=4)
    a = p.parse_args()

    cascade, peer = Client(a.cascade), Client(a.peer)
    reqs = requests(a.n, a.k, a.seed)

    def both(req: dict) -> tuple:
        return req, cascade.post("/v1/rank", req), peer.post("/v1/rank", req)

    agree, exact, max_diff, shown = 0, 0, 0.0, 0
    with ThreadPoolExecutor(a.threads) as pool:
        for req, c, py in pool.map(both, reqs):
            c_ids = [i["item_id"] for i in c["items"]]
            p_ids = [i["item_id"] for i in py["items"]]
            by_position = [abs(x["score"] - y["score"]) for x, y in zip(c["items"], py["items"])]
            c_map = {i["item_id"]: i["score"] for i in c["items"]}
            p_map = {i["item_id"]: i["score"] for i in py["items"]}
            by_item = [abs(c_map[i] - p_map[i]) for i in c_map.keys() & p_map.keys()]
            diff = max(by_position + by_item, default=0.0)
            max_diff = max(max_diff, diff)
            ok = (len(c_ids) == len(p_ids) == a.k and diff <= a.tolerance
                  and c.get("fallback") is None and py.get("fallback") is None)
            if ok:
                agree += 1
                exact += c_ids == p_ids
            elif shown < 5:
                shown += 1
                print(f"DISAGREE {json.dumps(req)}\n  cascade {c_ids} fallback={c.get('fallback')}"
                      f"\n  peer    {p_ids} fallback={py.get('fallback')}\n  max score diff {diff:.3g}")
    verdict = "PASS" if agree == a.n else "FAIL"
    print(f"parity {verdict}: {agree}/{a.n} requests agree (top-{a.k} scores within "
          f"{a.tolerance:g}, near-ties may swap; {exact} identical in order); "
          f"max abs score diff {max_diff:.3g}")
    return 0 if agree == a.n else 1


if __name__ == "__main__":
    sys.exit(main())
