//! Every kind of bad request gets its documented status and error body, and
//! the server keeps serving afterwards.

use serde_json::json;

use crate::common::{golden, send, send_raw, shipped_model_names, TestServer};

fn assert_oip_error(r: &crate::common::Resp, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("OIP error shape: {v}"));
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    assert!(
        !msg.contains(env!("CARGO_MANIFEST_DIR")),
        "no host paths in errors: {msg}"
    );
}

fn assert_cascade_error(r: &crate::common::Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn bad_infer_requests_get_400_naming_the_field() {
    let s = TestServer::shipped().await;
    let name = &shipped_model_names()[0];
    let width = golden(name).inputs[0].len();
    let path = format!("/v2/models/{name}/infer");
    let ones = vec![1.0f32; width];
    let cases = [
        (
            json!({"inputs": [{"name": "features", "shape": [1, width + 1], "datatype": "FP32", "data": vec![0.0; width + 1]}]}),
            "inputs[0].shape",
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [1, width], "datatype": "INT64", "data": vec![0; width]}]}),
            "inputs[0].datatype",
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [2, width], "datatype": "FP32", "data": ones}]}),
            "inputs[0].data",
        ),
        (
            json!({"inputs": [{"name": "nope", "shape": [1, width], "datatype": "FP32", "data": ones}]}),
            "inputs[0].name",
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [1, width], "datatype": "FP32", "data": ones}], "outputs": [{"name": "label"}]}),
            "outputs[0].name",
        ),
        (
            json!({"inputs": [{"name": "features", "shape": [-1, width], "datatype": "FP32", "data": ones}]}),
            "inputs[0].shape",
        ),
        (
            json!({"inputs": [{"name": "features", "datatype": "FP32", "data": ones}]}),
            "inputs[0]",
        ),
        (json!({"nothing": true}), "inputs"),
        (json!([1, 2, 3]), "request body"),
    ];
    for (body, needle) in cases {
        let r = s.post_json(&path, &body).await;
        assert_oip_error(&r, 400, needle);
    }
    let r = send(
        s.public,
        "POST",
        &path,
        &[("Content-Type", "application/json")],
        b"{\"inputs\": [",
    )
    .await;
    assert_oip_error(&r, 400, "not valid JSON");
    let r = send(
        s.public,
        "POST",
        &path,
        &[("Inference-Header-Content-Length", "999")],
        b"{}",
    )
    .await;
    assert_oip_error(&r, 400, "Inference-Header-Content-Length");
}

#[tokio::test]
async fn limits_types_methods_and_unknown_paths() {
    let s = TestServer::shipped().await;
    let name = &shipped_model_names()[0];
    let path = format!("/v2/models/{name}/infer");

    // Declared too large: refused before the body is read.
    let limit = s.state.config.server.max_body_bytes;
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{", limit + 1);
    assert_oip_error(&send_raw(s.public, head.as_bytes()).await, 413, "exceeds");
    // Chunked, with no declared length: refused once the limit is crossed.
    let mut chunked = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", limit + 1).into_bytes();
    chunked.extend(std::iter::repeat_n(b' ', limit + 1));
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_oip_error(&send_raw(s.public, &chunked).await, 413, "exceeds");

    let r = send(
        s.public,
        "POST",
        &path,
        &[("Content-Type", "text/plain")],
        b"{}",
    )
    .await;
    assert_oip_error(&r, 415, "Content-Type");
    let r = send(
        s.public,
        "POST",
        &path,
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ],
        b"{}",
    )
    .await;
    assert_oip_error(&r, 415, "Content-Encoding");

    let r = s.get(&path).await;
    assert_oip_error(&r, 405, "POST");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = send(s.public, "DELETE", &format!("/v2/models/{name}"), &[], b"").await;
    assert_oip_error(&r, 405, "GET");

    assert_oip_error(
        &s.get("/v2/models/no_such_model").await,
        404,
        "no_such_model",
    );
    assert_oip_error(
        &s.get(&format!("/v2/models/{name}/versions/7")).await,
        404,
        "version 7",
    );
    assert_oip_error(
        &s.get(&format!("/v2/models/{name}/versions/..%2F..%2Fetc"))
            .await,
        404,
        "version",
    );
    assert_oip_error(
        &s.get("/v2/models/..%2F..%2Fetc%2Fpasswd").await,
        404,
        "not found",
    );
    assert_oip_error(
        &s.post_json("/v2/models/no_such_model/infer", &json!({}))
            .await,
        404,
        "no_such_model",
    );

    // Cascade's own paths use the {"error": {"code", "message"}} shape.
    assert_cascade_error(&s.get("/nowhere").await, 404, "not_found");
    assert_cascade_error(
        &send(s.public, "POST", "/healthz", &[], b"").await,
        405,
        "method_not_allowed",
    );
    // Admin paths are never served on the public listener, and the public
    // API is not on the admin listener.
    assert_cascade_error(&s.get("/admin/models").await, 404, "not_found");
    assert_cascade_error(
        &send(s.admin, "GET", "/v2", &[], b"").await,
        404,
        "not_found",
    );
    assert_eq!(
        send(s.admin, "GET", "/admin/models", &[], b"").await.status,
        200
    );
}

#[tokio::test]
async fn garbage_never_takes_the_server_down() {
    let s = TestServer::shipped().await;
    let garbage: [&[u8]; 4] = [
        b"\x00\x01\x02 nonsense\r\n\r\n",
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"POST /v2/models/ranker/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n\xff\xfe\xfd",
        b"GET /v2/models/%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ];
    for raw in garbage {
        let r = send_raw(s.public, raw).await;
        assert!((400..500).contains(&r.status), "{raw:?} -> {}", r.status);
    }
    // Still serving, and correctly.
    let name = &shipped_model_names()[0];
    let g = golden(name);
    let width = g.inputs[0].len();
    let r = s
        .post_json(
            &format!("/v2/models/{name}/infer"),
            &json!({"inputs": [{"name": "features", "shape": [1, width], "datatype": "FP32", "data": g.inputs[0]}]}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.get("/healthz").await.status, 200);
}

/// Hostile bodies get a 400 that neither echoes them whole nor accepts
/// what is not one JSON value: trailing bytes after the object, a body
/// request id with control characters (it would be echoed raw while
/// headers and logs carry another), a megabyte-long id.
#[tokio::test]
async fn hostile_bodies_are_refused_with_short_messages() {
    let s = TestServer::shipped().await;
    let post = |body: Vec<u8>| {
        let s = &s;
        async move {
            send(
                s.public,
                "POST",
                "/v1/rank",
                &[("Content-Type", "application/json")],
                &body,
            )
            .await
        }
    };
    let r = post(br#"{"k":1}garbage"#.to_vec()).await;
    assert_cascade_error(&r, 400, "invalid_request");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("trailing"));
    let r = post(serde_json::to_vec(&json!({"request_id": "a\u{7}b\nc", "k": 1})).unwrap()).await;
    assert_cascade_error(&r, 400, "invalid_request");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("request_id"));
    let huge = "x".repeat(1_500_000);
    let r = post(serde_json::to_vec(&json!({"k": huge})).unwrap()).await;
    assert_cascade_error(&r, 400, "invalid_request");
    assert!(r.body.len() < 2_000, "an error of {} bytes", r.body.len());
    let r = s
        .post_json(
            "/v1/events",
            &json!({"events": [{"type": "interaction", "id": "e", "user_id": "1", "item_id": huge, "kind": "rating"}]}),
        )
        .await;
    assert_cascade_error(&r, 400, "invalid_request");
    assert!(r.body.len() < 2_000, "an error of {} bytes", r.body.len());
    // A fine request still gets its own id back.
    let v = s
        .post_json("/v1/rank", &json!({"request_id": "req-1", "k": 1}))
        .await
        .json();
    assert_eq!(v["request_id"], "req-1");
}

/// Admission control: with every permit held by a request in flight, the
/// next costly request is refused at once with 503 and Retry-After, while
/// cheap paths (health, metadata) still answer.
#[tokio::test]
async fn overload_is_a_fast_503_with_retry_after() {
    let repo = crate::common::temp_repo();
    crate::common::add_ranker_like(repo.path(), "slow_ranker", "slow_ranker_40");
    let mut config = crate::common::config_for(repo.path());
    config.server.max_in_flight = 1;
    let s = TestServer::start(config).await;
    // Hold the only permit with a long inference (~100 G multiply-adds).
    let public = s.public;
    let held = tokio::spawn(async move {
        let rows = 8000;
        let body = serde_json::to_vec(&json!({"inputs": [{"name": "features", "shape": [rows, 40],
            "datatype": "FP32", "data": vec![0.5f32; rows * 40]}]}))
        .unwrap();
        send(
            public,
            "POST",
            "/v2/models/slow_ranker/infer",
            &[("Content-Type", "application/json")],
            &body,
        )
        .await
    });
    // Once its body is read and parsed, it holds the permit.
    crate::common::wait_until_admission_is_full(&s).await;
    let r = s.post_json("/v1/rank", &json!({"user_id": "1"})).await;
    assert_eq!(r.status, 503, "a request beyond max_in_flight is refused");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["code"], "overloaded");
    let name = &shipped_model_names()[0];
    let width = golden(name).inputs[0].len();
    let r = s
        .post_json(
            &format!("/v2/models/{name}/infer"),
            &json!({"inputs": [{"name": "features", "shape": [1, width], "datatype": "FP32", "data": vec![0.0; width]}]}),
        )
        .await;
    assert_eq!(r.status, 503);
    assert!(
        r.json()["error"].is_string(),
        "inference-protocol error shape"
    );
    assert_eq!(s.get("/v2/health/ready").await.status, 200);
    assert_eq!(s.get(&format!("/v2/models/{name}")).await.status, 200);
    // The held request finishes: the permit comes back.
    assert_eq!(held.await.unwrap().status, 200);
    assert_eq!(
        s.post_json("/v1/rank", &json!({"user_id": "1"}))
            .await
            .status,
        200
    );
}
