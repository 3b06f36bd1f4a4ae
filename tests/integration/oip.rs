//! The Open Inference Protocol on the shipped models: metadata, readiness,
//! JSON and binary infer, versioned paths, output selection.

use serde_json::{json, Value};

use crate::common::{golden, send, shipped_model_names, TestServer};

fn infer_body(name: &str, rows: &[Vec<f32>]) -> Value {
    let width = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    json!({
        "id": format!("req-{name}"),
        "inputs": [{"name": "features", "shape": [rows.len(), width], "datatype": "FP32", "data": flat}]
    })
}

fn scores(v: &Value) -> Vec<f32> {
    v["outputs"][0]["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}: row {i}: got {g}, expected {w}"
        );
    }
}

#[tokio::test]
async fn server_metadata_and_health() {
    let s = TestServer::shipped().await;
    let v = s.get("/v2").await.json();
    assert_eq!(v["name"], "cascade");
    assert!(v["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
    for path in ["/v2/health/live", "/v2/health/ready", "/healthz", "/readyz"] {
        assert_eq!(s.get(path).await.status, 200, "{path}");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            send(s.admin, "GET", path, &[], b"").await.status,
            200,
            "admin {path}"
        );
    }
}

#[tokio::test]
async fn model_metadata_describes_every_shipped_model() {
    let s = TestServer::shipped().await;
    for name in shipped_model_names() {
        let width = golden(&name).inputs[0].len();
        let r = s.get(&format!("/v2/models/{name}")).await;
        assert_eq!(r.status, 200, "{name}");
        let v = r.json();
        assert_eq!(v["name"], name.as_str());
        assert_eq!(v["platform"], "onnx");
        assert_eq!(v["versions"], json!(["1"]));
        assert_eq!(
            v["inputs"],
            json!([{"name": "features", "datatype": "FP32", "shape": [-1, width]}])
        );
        assert_eq!(
            v["outputs"],
            json!([{"name": "score", "datatype": "FP32", "shape": [-1, 1]}])
        );
        let versioned = s.get(&format!("/v2/models/{name}/versions/1")).await;
        assert_eq!(versioned.json(), v);
        for path in [
            format!("/v2/models/{name}/ready"),
            format!("/v2/models/{name}/versions/1/ready"),
        ] {
            assert_eq!(s.get(&path).await.status, 200, "{path}");
        }
    }
}

#[tokio::test]
async fn json_infer_matches_python_onnxruntime_on_golden_sets() {
    let s = TestServer::shipped().await;
    for name in shipped_model_names() {
        let g = golden(&name);
        for path in [
            format!("/v2/models/{name}/infer"),
            format!("/v2/models/{name}/versions/1/infer"),
        ] {
            let r = s.post_json(&path, &infer_body(&name, &g.inputs)).await;
            assert_eq!(
                r.status,
                200,
                "{path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let v = r.json();
            assert_eq!(v["model_name"], name.as_str());
            assert_eq!(v["model_version"], "1");
            assert_eq!(v["id"], format!("req-{name}"));
            assert_eq!(v["outputs"][0]["shape"], json!([g.inputs.len(), 1]));
            assert_close(&scores(&v), &g.outputs, g.tolerance, &path);
        }
    }
}

/// Binary tensor data extension, both ways, built by hand from the spec.
#[tokio::test]
async fn binary_infer_returns_the_same_numbers_as_json() {
    let s = TestServer::shipped().await;
    for name in shipped_model_names() {
        let g = golden(&name);
        let width = g.inputs[0].len();
        let mut tensor_bytes = Vec::new();
        for x in g.inputs.iter().flatten() {
            tensor_bytes.extend_from_slice(&x.to_le_bytes());
        }
        let header = serde_json::to_vec(&json!({
            "inputs": [{"name": "features", "shape": [g.inputs.len(), width], "datatype": "FP32",
                        "parameters": {"binary_data_size": tensor_bytes.len()}}],
            "outputs": [{"name": "score", "parameters": {"binary_data": true}}]
        }))
        .unwrap();
        let mut body = header.clone();
        body.extend_from_slice(&tensor_bytes);
        let header_len = header.len().to_string();
        let r = send(
            s.public,
            "POST",
            &format!("/v2/models/{name}/infer"),
            &[
                ("Content-Type", "application/octet-stream"),
                ("Inference-Header-Content-Length", &header_len),
            ],
            &body,
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let json_len: usize = r
            .header("inference-header-content-length")
            .expect("binary response header")
            .parse()
            .unwrap();
        let head: Value = serde_json::from_slice(&r.body[..json_len]).unwrap();
        let out = &head["outputs"][0];
        assert_eq!(
            out["parameters"]["binary_data_size"],
            json!(g.inputs.len() * 4)
        );
        assert!(out.get("data").is_none());
        let got: Vec<f32> = r.body[json_len..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let json_scores = scores(
            &s.post_json(
                &format!("/v2/models/{name}/infer"),
                &infer_body(&name, &g.inputs),
            )
            .await
            .json(),
        );
        assert_eq!(
            got, json_scores,
            "{name}: binary and JSON outputs are the same floats"
        );
        assert_close(&got, &g.outputs, g.tolerance, &name);
    }
}

#[tokio::test]
async fn binary_output_can_be_asked_for_the_whole_request() {
    let s = TestServer::shipped().await;
    let name = &shipped_model_names()[0];
    let g = golden(name);
    let mut body = infer_body(name, &g.inputs[..2]);
    body["parameters"] = json!({"binary_data_output": true});
    let r = s
        .post_json(&format!("/v2/models/{name}/infer"), &body)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let n: usize = r
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.body.len() - n, 8);
}
