//! `/metrics` on the admin listener (never the public one) exports request,
//! inference and model-version metrics after traffic.

use serde_json::json;

use crate::common::{golden, send, shipped_model_names, TestServer};

#[tokio::test]
async fn metrics_after_traffic() {
    let s = TestServer::shipped().await;
    let name = &shipped_model_names()[0];
    let g = golden(name);
    let body = json!({"inputs": [{"name": "features", "shape": [2, g.inputs[0].len()], "datatype": "FP32",
                                  "data": [g.inputs[0].clone(), g.inputs[1].clone()]}]});
    assert_eq!(
        s.post_json(&format!("/v2/models/{name}/infer"), &body)
            .await
            .status,
        200
    );
    assert_eq!(s.get("/v2/models/nope").await.status, 404);

    assert_eq!(
        s.get("/metrics").await.status,
        404,
        "metrics are admin-only"
    );
    let r = send(s.admin, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.body).unwrap();
    for needle in [
        "cascade_build_info{version=\"",
        "cascade_http_requests_total{listener=\"public\",route=\"/v2/models/{name}/infer\",status=\"200\"}",
        "cascade_http_requests_total{listener=\"public\",route=\"/v2/models/{name}\",status=\"404\"}",
        "cascade_http_request_duration_seconds_bucket{route=\"/v2/models/{name}/infer\",le=\"0.005\"}",
        &format!("cascade_model_inference_duration_seconds_bucket{{model=\"{name}\",version=\"1\",backend=\"tract\",le="),
        &format!("cascade_model_batch_rows_bucket{{model=\"{name}\",le=\"2\"}}"),
        &format!("cascade_model_info{{name=\"{name}\",version=\"1\",backend=\"tract\"}} 1"),
        &format!("cascade_model_loads_total{{name=\"{name}\",outcome=\"ready\"}}"),
        "cascade_inference_queue_wait_seconds_bucket",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}
