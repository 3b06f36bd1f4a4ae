"""ONNX export (single input `features` [N,F] f32 -> single output `score` [N,1] f32),
model-repository files (config.toml, golden.json, profile.json, metrics.json) and the
catalog snapshot (schema.toml + Parquet)."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 15
ML_OPSET = 3
# default-domain ops the exported graphs may contain: plain dense math that tract runs fast
# (no TreeEnsemble*: tract evaluates it at ~10 ms per row)
ALLOWED_OPS = {"Identity", "Cast", "Mul", "Add", "Sub", "Div", "Sigmoid", "Softmax", "Concat",
               "MatMul", "Gemm", "Relu", "Slice"}


def _replace_scalers(g: onnx.GraphProto) -> None:
    """Rewrite ai.onnx.ml `Scaler` (y = (x - offset) * scale) as plain Sub + Mul.

    tract, the server's default runtime, does not implement Scaler; Sub and Mul
    compute the same floats in every runtime."""
    nodes = []
    for n in g.node:
        if n.op_type != "Scaler":
            nodes.append(n)
            continue
        attrs = {a.name: list(a.floats) for a in n.attribute}
        offset = np.asarray(attrs.get("offset", [0.0]), dtype=np.float32)
        scale = np.asarray(attrs.get("scale", [1.0]), dtype=np.float32)
        off_name, scale_name, centered = n.name + "_offset", n.name + "_scale", n.output[0] + "_centered"
        g.initializer.extend([numpy_helper.from_array(offset, off_name),
                              numpy_helper.from_array(scale, scale_name)])
        nodes.append(helper.make_node("Sub", [n.input[0], off_name], [centered], name=n.name + "_sub"))
        nodes.append(helper.make_node("Mul", [centered, scale_name], [n.output[0]], name=n.name + "_mul"))
    del g.node[:]
    g.node.extend(nodes)


def _prune(g: onnx.GraphProto, output: str) -> None:
    """Drop the nodes and initializers `output` does not depend on (the converters' `label` path,
    e.g. ArgMax + ai.onnx.ml ArrayFeatureExtractor for MLPClassifier, which tract need not run)."""
    need, keep = {output}, []
    for n in reversed(g.node):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    keep.reverse()
    inits = [t for t in g.initializer if t.name in need]
    del g.node[:]
    g.node.extend(keep)
    del g.initializer[:]
    g.initializer.extend(inits)


def _finalize(model: onnx.ModelProto, n_features: int, doc: str, feature_names) -> onnx.ModelProto:
    """Make `score` = probabilities[:, 1:2] the only graph output; input `features` [N, F]."""
    g = model.graph
    _replace_scalers(g)
    print("   converter output:", [(o.domain, o.version) for o in model.opset_import],
          sorted({n.op_type for n in g.node}), [o.name for o in g.output])
    assert len(g.input) == 1, [i.name for i in g.input]
    probs = [o.name for o in g.output if "prob" in o.name]
    assert len(probs) == 1, [o.name for o in g.output]
    prob = probs[0]
    _prune(g, prob)  # the `label` output and its nodes go
    # one opset import per domain; the default domain raised to OPSET (Slice with tensor inputs needs >= 10).
    # Only ops whose semantics did not change between the converter's opset and OPSET are allowed: each
    # op's schema at OPSET must be the one already in force at the converter's opset (since_version <=).
    conv_opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=OPSET)
    ops = {n.op_type for n in g.node if n.domain in ("", "ai.onnx")}
    assert ops <= ALLOWED_OPS, ops - ALLOWED_OPS
    for op in sorted(ops):
        since = onnx.defs.get_schema(op, OPSET).since_version
        assert since <= conv_opset, (op, since, conv_opset)
    versions = {}
    for o in model.opset_import:
        d = "" if o.domain == "ai.onnx" else o.domain
        versions[d] = max(versions.get(d, 0), o.version)
    versions[""] = max(versions.get("", 0), OPSET)
    used = {""} | {n.domain for n in g.node}  # e.g. ai.onnx.ml is gone once Scaler and the label path are
    versions = {d: v for d, v in versions.items() if d in used}
    del model.opset_import[:]
    for d, v in sorted(versions.items()):
        model.opset_import.append(helper.make_opsetid(d, v))
    for name, val in (("score_starts", 1), ("score_ends", 2), ("score_axes", 1)):
        g.initializer.append(numpy_helper.from_array(np.array([val], dtype=np.int64), name))
    g.node.append(helper.make_node("Slice", [prob, "score_starts", "score_ends", "score_axes"], ["score"],
                                   name="score_slice"))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1]))
    inp = g.input[0]
    assert inp.name == "features"
    dims = inp.type.tensor_type.shape.dim
    del dims[:]
    d0, d1 = dims.add(), dims.add()
    d0.dim_param = "N"
    d1.dim_value = n_features
    model.doc_string = doc
    g.name = "cascade_model"  # the converters put a random uuid here (artifacts must be byte-reproducible)
    model.producer_name = "cascade-models-train"
    meta = model.metadata_props.add()
    meta.key, meta.value = "features", json.dumps(list(feature_names))
    onnx.checker.check_model(model, full_check=True)
    return model


def to_onnx_sklearn(pipe, n_features, doc, feature_names):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    clf = pipe.steps[-1][1]
    m = convert_sklearn(pipe, initial_types=[("features", FloatTensorType([None, n_features]))],
                        options={id(clf): {"zipmap": False}},
                        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    return _finalize(m, n_features, doc, feature_names)


class OnnxScorer:
    def __init__(self, model: onnx.ModelProto):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ins, outs = self.sess.get_inputs(), self.sess.get_outputs()
        assert [i.name for i in ins] == ["features"] and ins[0].type == "tensor(float)", ins
        assert [o.name for o in outs] == ["score"] and outs[0].type == "tensor(float)", outs
        assert ins[0].shape[0] == "N" and outs[0].shape == ["N", 1], (ins[0].shape, outs[0].shape)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        out = self.sess.run(["score"], {"features": np.ascontiguousarray(X, dtype=np.float32)})[0]
        assert out.shape == (len(X), 1) and out.dtype == np.float32
        return out[:, 0]


# --------------------------------------------------------------------------- repository files
def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string for our ASCII text


def write_config(path, role, description, feature_names, max_batch_rows=1024, max_wait_us=0):
    """Each input column declared as the server computes it (features.FEATURE_EXPRS)."""
    from features import declarations_toml
    text = (f"role = {_toml_str(role)}\n"
            f"description = {_toml_str(description)}\n\n"
            f"[input]\nname = \"features\"\n{declarations_toml(feature_names)}\n"
            f"[output]\nname = \"score\"\n\n"
            f"[batching]\nmax_batch_rows = {max_batch_rows}\nmax_wait_us = {max_wait_us}\n")
    with open(path, "w") as f:
        f.write(text)


def _dist(x: np.ndarray, n_bins: int = 10) -> dict:
    x = np.asarray(x, dtype=np.float64)
    missing = ~np.isfinite(x)
    v = x[~missing]
    edges = np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)))
    if len(edges) == 1:
        edges = np.array([edges[0], edges[0]])
    # bins: [e0,e1), [e1,e2), ..., [e_{k-1}, e_k] ; values outside clip into the end bins
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    frac = np.bincount(idx, minlength=len(edges) - 1) / max(len(v), 1)
    return {"bins": [float(e) for e in edges], "fractions": [float(f) for f in frac],
            "mean": float(v.mean()), "std": float(v.std()), "missing_rate": float(missing.mean())}


def write_profile(path, feature_names, X, scores, n_rows_note):
    prof = {"computed_on": n_rows_note, "n_rows": int(len(X)),
            "binning": "quantile edges of the training rows; bin k = [bins[k], bins[k+1]) (last bin closed); "
                       "values outside the edges count in the first/last bin",
            "features": {n: _dist(X[:, j]) for j, n in enumerate(feature_names)},
            "score": _dist(scores)}
    with open(path, "w") as f:
        json.dump(prof, f, indent=1)


def write_json(path, obj, indent=1):
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def save_onnx(model, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save_model(model, path)
