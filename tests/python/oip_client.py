"""Drives Cascade with Triton's stock HTTP client (tritonclient.http), the way
an existing Open Inference Protocol user would, and checks every answer
against Python onnxruntime on the same model file and inputs.

Usage: oip_client.py --url HOST:PORT --models DIR
Exits non-zero on the first disagreement.
"""
import argparse
import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient

TOL = 1e-4


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--models", required=True)
    args = ap.parse_args()
    repo = pathlib.Path(args.models)
    client = httpclient.InferenceServerClient(url=args.url)
    assert client.is_server_live(), "server live"
    assert client.is_server_ready(), "server ready"
    meta = client.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"], meta

    names = sorted(p.parent.name for p in repo.glob("*/config.toml"))
    assert names, "no models"
    rng = np.random.default_rng(7)
    checked = 0
    for name in names:
        assert client.is_model_ready(name), name
        assert client.is_model_ready(name, "1"), name
        md = client.get_model_metadata(name)
        (inp,) = md["inputs"]
        out_name = md["outputs"][0]["name"]
        width = int(inp["shape"][1])
        golden = json.loads((repo / name / "1" / "golden.json").read_text())
        base = np.asarray(golden["inputs"], dtype=np.float32)
        noisy = base * rng.uniform(0.5, 1.5, size=base.shape).astype(np.float32)
        session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        for x in (base, noisy, base[:1]):
            assert x.shape[1] == width
            want = session.run([out_name], {inp["name"]: x})[0]
            for binary in (False, True):
                tensor = httpclient.InferInput(inp["name"], list(x.shape), "FP32")
                tensor.set_data_from_numpy(x, binary_data=binary)
                wanted = httpclient.InferRequestedOutput(out_name, binary_data=binary)
                for version in ("", "1"):
                    result = client.infer(name, [tensor], model_version=version, outputs=[wanted])
                    got = result.as_numpy(out_name)
                    assert got is not None, f"{name}: no output {out_name}"
                    assert got.shape == want.shape, (name, got.shape, want.shape)
                    err = float(np.max(np.abs(got - want)))
                    assert err <= TOL, f"{name} binary={binary}: max abs error {err}"
                    checked += 1
    print(f"checked {checked} inferences on {len(names)} models: all within {TOL} of onnxruntime")
    return 0


if __name__ == "__main__":
    sys.exit(main())
