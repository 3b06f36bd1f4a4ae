//! Defects a hostile client or an operator could hit, each pinned by a
//! test: slow uploads, connection floods, amplified answers, keep-alive and
//! idle timeouts, unvetted or half-written versions, pinned versions, the
//! response cache's sharing, request ids, the admin token's scheme.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{
    add_ranker_like, admin, config_for, copy_version, metrics_text, read_response, send,
    shipped_models, temp_repo, wait_until_admission_is_full, Resp, TestServer,
};

fn error_message(r: &Resp) -> String {
    let v = r.json();
    v["error"]["message"]
        .as_str()
        .or(v["error"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Clients trickling request bodies hold no admission permit (it is taken
/// once the body is read and parsed) and are cut off by the minimum rate,
/// so ranking goes on for everyone else.
#[tokio::test]
async fn slow_uploads_do_not_lock_out_ranking() {
    let mut config = config_for(&shipped_models());
    config.server.max_in_flight = 4;
    let s = TestServer::start(config).await;
    // Twice as many slow uploaders as there are permits: a declared
    // 1,000-byte body sent at 10 bytes a second.
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(s.public).await.unwrap();
        c.write_all(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            .await
            .unwrap();
        slow.push(c);
    }
    let trickle = async {
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for c in &mut slow {
                let _ = c.write_all(b" ").await;
            }
        }
    };
    let rank = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.post_json("/v1/rank", &json!({"user_id": "1", "k": 5}))
            .await
    };
    let ((), r) = tokio::join!(trickle, rank);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The uploaders were refused for their rate, told to close.
    for mut c in slow {
        let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut c))
            .await
            .expect("a slow upload is answered, not left hanging")
            .unwrap();
        assert_eq!(r.status, 400);
        assert!(
            error_message(&r).contains("slower than"),
            "{}",
            error_message(&r)
        );
        assert_eq!(r.header("connection"), Some("close"));
    }
}

/// Beyond `server.max_connections` new connections wait in the backlog;
/// the admin listener has its own cap and still answers.
#[tokio::test]
async fn connections_beyond_the_cap_wait_and_the_admin_port_stays_open() {
    let mut config = config_for(&shipped_models());
    config.server.max_connections = 2;
    let s = TestServer::start(config).await;
    let idle: Vec<TcpStream> = vec![
        TcpStream::connect(s.public).await.unwrap(),
        TcpStream::connect(s.public).await.unwrap(),
    ];
    let public = s.public;
    let mut third = tokio::spawn(async move { send(public, "GET", "/healthz", &[], b"").await });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut third).await;
    assert!(early.is_err(), "a connection beyond the cap was served");
    assert_eq!(send(s.admin, "GET", "/healthz", &[], b"").await.status, 200);
    drop(idle);
    let r = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert_eq!(r.status, 200);
}

/// A batch holds one permit per ranking: with `max_in_flight = 2`, a batch
/// of two slow rankings leaves nothing for a third.
#[tokio::test]
async fn a_batch_counts_as_the_rankings_it_holds() {
    let repo = temp_repo();
    add_ranker_like(repo.path(), "slow_ranker", "slow_ranker_40");
    let mut config = config_for(repo.path());
    config.server.max_in_flight = 2;
    // Every item of the catalog through the slow ranker: about a second.
    config.ranking.ranker_model = Some("slow_ranker".into());
    config.ranking.retrieve_n = 1500;
    config.ranking.filter_keep = 1500;
    config.ranking.cache.enabled = false;
    let s = TestServer::start(config).await;
    let public = s.public;
    let batch = tokio::spawn(async move {
        let body = json!({"requests": [
            {"user_id": "1", "k": 5, "deadline_ms": 10000},
            {"user_id": "2", "k": 5, "deadline_ms": 10000}
        ]});
        let body = serde_json::to_vec(&body).unwrap();
        send(
            public,
            "POST",
            "/v1/rank/batch",
            &[("Content-Type", "application/json")],
            &body,
        )
        .await
    });
    // Once the batch is admitted, it holds both permits.
    wait_until_admission_is_full(&s).await;
    let r = s
        .post_json(
            "/v1/rank",
            &json!({"user_id": "3", "k": 5, "deadline_ms": 10000}),
        )
        .await;
    let batch = batch.await.unwrap();
    assert_eq!(batch.status, 200);
    let answers = batch.json();
    for a in answers["responses"].as_array().unwrap() {
        assert!(a["fallback"].is_null(), "the batch ran in full: {a}");
    }
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
}

/// An output named twice is refused, and an answer larger than
/// `server.max_response_bytes` is a 413 instead of being built.
#[tokio::test]
async fn inference_answers_cannot_be_amplified() {
    let mut config = config_for(&shipped_models());
    config.server.max_response_bytes = 4096;
    let s = TestServer::start(config).await;
    let width = crate::common::golden("filter").inputs[0].len();
    let input = |rows: usize| {
        json!({"name": "features", "shape": [rows, width], "datatype": "FP32",
               "data": vec![0.25; rows * width]})
    };
    let r = s
        .post_json(
            "/v2/models/filter/infer",
            &json!({"inputs": [input(1)], "outputs": [{"name": "score"}, {"name": "score"}]}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        error_message(&r).starts_with("outputs[1].name: output \"score\" requested twice"),
        "{}",
        error_message(&r)
    );
    for binary in [false, true] {
        let r = s
            .post_json(
                "/v2/models/filter/infer",
                &json!({"inputs": [input(2000)], "outputs": [{"name": "score", "parameters": {"binary_data": binary}}]}),
            )
            .await;
        assert_eq!(r.status, 413, "binary {binary}");
        assert!(error_message(&r).contains("server.max_response_bytes"));
    }
    // Within the bound, the same call answers.
    let r = s
        .post_json("/v2/models/filter/infer", &json!({"inputs": [input(10)]}))
        .await;
    assert_eq!(r.status, 200);
    // FP32 values beyond f32's range are refused, not turned into infinity.
    let mut big = input(1);
    big["data"][3] = json!(1e39);
    let r = s
        .post_json("/v2/models/filter/infer", &json!({"inputs": [big]}))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        error_message(&r).starts_with("inputs[0].data[3]: "),
        "{}",
        error_message(&r)
    );
}

/// Requests refused before their body mattered (404, 415, an unknown
/// variant) leave the keep-alive connection usable for the next request.
#[tokio::test]
async fn a_refused_request_leaves_its_keep_alive_connection_usable() {
    let s = TestServer::shipped().await;
    let body = br#"{"inputs": [{"name": "features", "shape": [1, 1], "datatype": "FP32", "data": [0]}], "pad": "................................................................"}"#;
    let refusals: [(&str, &str, u16); 3] = [
        ("/v2/models/nope/infer", "application/json", 404),
        ("/v1/rank", "text/plain", 415),
        (
            "/v1/rank",
            "application/json\r\nX-Cascade-Variant: nope",
            400,
        ),
    ];
    for (path, content_type, status) in refusals {
        let mut c = TcpStream::connect(s.public).await.unwrap();
        // Headers first; the body follows after the server could answer.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = c.write_all(body).await;
        let r = read_response(&mut c).await.unwrap();
        assert_eq!(r.status, status, "{path}");
        assert_ne!(r.header("connection"), Some("close"), "{path}");
        let _ = c
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let next = read_response(&mut c).await;
        assert!(
            next.as_ref().is_ok_and(|r| r.status == 200),
            "{path}: the next request on the connection failed: {next:?}"
        );
    }
    // A body refused for its size is left unread: the answer says so.
    let mut config = config_for(&shipped_models());
    config.server.max_body_bytes = 1024;
    let s = TestServer::start(config).await;
    let r = send(
        s.public,
        "POST",
        "/v1/rank",
        &[("Content-Type", "application/json")],
        &[b' '; 4096],
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
}

/// The idle keep-alive timeout is its own setting, longer than the header
/// timeout; a request whose headers stall is still cut at the header bound.
#[tokio::test]
async fn idle_keep_alive_and_header_timeouts_are_separate() {
    let mut config = config_for(&shipped_models());
    config.server.header_timeout_ms = 300;
    config.server.idle_timeout_ms = 2_000;
    let s = TestServer::start(config).await;
    let mut c = TcpStream::connect(s.public).await.unwrap();
    let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    c.write_all(get).await.unwrap();
    assert_eq!(read_response(&mut c).await.unwrap().status, 200);
    // Idle longer than the header timeout: still open.
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.write_all(get).await.unwrap();
    assert_eq!(read_response(&mut c).await.unwrap().status, 200);
    // Idle past the idle timeout: closed by the server.
    let mut buf = [0u8; 64];
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("closed within the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(1_500));
    // Headers that stall: cut at the header timeout.
    let mut c = TcpStream::connect(s.public).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("closed within the header timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_millis(1_500));
}

/// A version without a golden set is refused with that reason, and never
/// serves.
#[tokio::test]
async fn a_version_without_a_golden_set_never_serves() {
    let repo = temp_repo();
    let ranker = repo.path().join("ranker");
    let s = TestServer::start(config_for(repo.path())).await;
    std::fs::create_dir(ranker.join(".staging")).unwrap();
    std::fs::copy(
        ranker.join("1/model.onnx"),
        ranker.join(".staging/model.onnx"),
    )
    .unwrap();
    std::fs::rename(ranker.join(".staging"), ranker.join("2")).unwrap();
    let r = admin(&s, "POST", "/admin/models/ranker/reload", None).await;
    assert_eq!(r.status, 200);
    let r = r.json();
    assert_eq!(r["serving"], "1", "{r}");
    assert_eq!(r["failed"][0]["version"], "2");
    assert!(
        r["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("ranker/2/golden.json: no golden set"),
        "{r}"
    );
    let rank = s.post_json("/v1/rank", &json!({"user_id": "1"})).await;
    assert_eq!(rank.json()["models"]["ranker"], "ranker@1");
}

/// With polling on, a version written in place is never loaded half
/// written or unvetted; it serves once its golden set appears, and a
/// version that stays broken is tried (and logged) once per change, not on
/// every scan.
#[tokio::test]
async fn the_poller_waits_for_complete_vetted_versions() {
    let repo = temp_repo();
    // A model name of this test's own, so that load counters are its own.
    let dir = repo.path().join("ranker_poll");
    std::fs::rename(repo.path().join("ranker"), &dir).unwrap();
    let mut config = config_for(repo.path());
    config.ranking.ranker_model = Some("ranker_poll".into());
    config.models.poll_interval_s = 1;
    config.ranking.cache.enabled = false;
    let s = TestServer::start(config).await;
    let served = || async {
        s.post_json("/v1/rank", &json!({"user_id": "1", "k": 3}))
            .await
            .json()["models"]["ranker"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let failed_loads = || async {
        let text = metrics_text(s.admin).await;
        text.lines()
            .find(|l| {
                l.starts_with("cascade_model_loads_total{name=\"ranker_poll\",outcome=\"failed\"}")
            })
            .map_or(0.0, |l| {
                l.rsplit(' ').next().unwrap().parse::<f64>().unwrap()
            })
    };
    let onnx = std::fs::read(dir.join("1/model.onnx")).unwrap();
    let golden = std::fs::read(dir.join("1/golden.json")).unwrap();
    std::fs::create_dir(dir.join("2")).unwrap();
    // Written in place, slowly: half, a pause of several scans, the rest.
    std::fs::write(dir.join("2/model.onnx"), &onnx[..onnx.len() / 2]).unwrap();
    let mut seen = Vec::new();
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen.push(served().await);
    }
    std::fs::write(dir.join("2/model.onnx"), &onnx).unwrap();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen.push(served().await);
    }
    assert!(
        seen.iter().all(|v| v == "ranker_poll@1"),
        "an incomplete or unvetted version served: {seen:?}"
    );
    // Complete but without a golden set: refused, and not retried while
    // nothing changes.
    let models = admin(&s, "GET", "/admin/models", None).await.json();
    let entry = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "ranker_poll")
        .unwrap()
        .clone();
    assert!(
        entry["versions"][1]["error"]
            .as_str()
            .unwrap_or("")
            .contains("no golden set"),
        "{entry}"
    );
    let failures = failed_loads().await;
    assert!(failures >= 1.0);
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(
        failed_loads().await,
        failures,
        "a broken version was retried unchanged"
    );
    // The golden set appears: vetted, then served.
    std::fs::write(dir.join("2/golden.json"), &golden).unwrap();
    for _ in 0..100 {
        if served().await == "ranker_poll@2" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("version 2 never served after its golden set appeared");
}

/// A reload keeps a version that an experiment arm pins even when its
/// folder is gone, and says so; the arm keeps ranking with it.
#[tokio::test]
async fn a_reload_keeps_versions_that_arms_pin() {
    let repo = temp_repo();
    let ranker = repo.path().join("ranker");
    let mut config = config_for(repo.path());
    config.ranking.cache.enabled = false;
    let s = TestServer::start(config).await;
    copy_version(&ranker, 1, 2);
    assert_eq!(
        admin(&s, "POST", "/admin/models/ranker/reload", None)
            .await
            .json()["serving"],
        "2"
    );
    let experiment = json!({"salt": "pin", "arms": [
        {"name": "control", "share": 0.0},
        {"name": "pinned", "share": 1.0, "ranker_model": "ranker@2"}
    ]});
    assert_eq!(
        admin(&s, "PUT", "/admin/experiments", Some(&experiment))
            .await
            .status,
        200
    );
    assert_eq!(
        admin(&s, "POST", "/admin/models/ranker/rollback", None)
            .await
            .json()["serving"],
        "1"
    );
    std::fs::remove_dir_all(ranker.join("2")).unwrap();
    let r = admin(&s, "POST", "/admin/models/ranker/reload", None).await;
    assert_eq!(r.status, 200);
    let r = r.json();
    assert_eq!(r["kept"][0]["version"], "2", "{r}");
    assert!(
        r["kept"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("experiment arm \"pinned\""),
        "{r}"
    );
    let v = s
        .post_json("/v1/rank", &json!({"user_id": "1", "k": 5}))
        .await
        .json();
    assert_eq!(v["variant"], "pinned");
    assert_eq!(v["models"]["ranker"], "ranker@2", "{v}");
    assert!(v["fallback"].is_null(), "{v}");
}

/// A new version whose config.toml changes `[batching]` runs with its own
/// policy: batchers are per version, not frozen at the model's first use.
#[tokio::test]
async fn a_reload_that_changes_batching_takes_effect() {
    let repo = temp_repo();
    let ranker = repo.path().join("ranker");
    let mut config = config_for(repo.path());
    config.ranking.cache.enabled = false;
    config.ranking.score_cache.enabled = false;
    let s = TestServer::start(config).await;
    let rank = |deadline: u64| {
        let body = json!({"user_id": "1", "k": 5, "deadline_ms": deadline});
        let s = &s;
        async move { s.post_json("/v1/rank", &body).await }
    };
    // Version 1 (max_wait_us = 0) answers in full well inside 2 s.
    let v = rank(2000).await.json();
    assert!(v["fallback"].is_null(), "{v}");
    // Version 2 waits 5 s for company before a batch closes: a request
    // with a 2 s budget cannot wait that long and answers from the filter.
    let toml = std::fs::read_to_string(ranker.join("config.toml")).unwrap();
    let changed = toml.replace("max_wait_us = 0", "max_wait_us = 5000000");
    assert_ne!(
        changed, toml,
        "the shipped ranker batches with max_wait_us = 0"
    );
    std::fs::write(ranker.join("config.toml"), changed).unwrap();
    copy_version(&ranker, 1, 2);
    let r = admin(&s, "POST", "/admin/models/ranker/reload", None).await;
    assert_eq!(r.json()["serving"], "2");
    let v = rank(2000).await.json();
    assert_eq!(v["models"]["filter"], "filter@1", "{v}");
    assert_eq!(v["fallback"], "deadline", "{v}");
}

/// Identical requests that share one computation each get their own
/// request id, and requests with different deadlines never share one.
#[tokio::test]
async fn coalesced_answers_keep_their_own_ids_and_deadlines() {
    let repo = temp_repo();
    add_ranker_like(repo.path(), "slow_ranker", "slow_ranker_40");
    let mut config = config_for(repo.path());
    config.ranking.ranker_model = Some("slow_ranker".into());
    config.ranking.retrieve_n = 600;
    config.ranking.filter_keep = 600;
    config.ranking.score_cache.enabled = false;
    let s = TestServer::start(config).await;
    let ask = |id: String, deadline: u64| {
        let public = s.public;
        async move {
            let body = json!({"request_id": id, "user_id": "1", "k": 5,
                              "context": {"hour": 2, "weekday": 1}, "deadline_ms": deadline});
            let r = crate::common::post_json_to(public, "/v1/rank", &body).await;
            (id, r.json())
        }
    };
    // Six identical requests with a budget too short for the slow ranker,
    // and one with all the time it needs.
    let mut tasks: Vec<_> = (0..6)
        .map(|i| tokio::spawn(ask(format!("short-{i}"), 40)))
        .collect();
    tasks.push(tokio::spawn(ask("long".into(), 10_000)));
    for t in tasks {
        let (id, v) = t.await.unwrap();
        assert_eq!(v["request_id"], id.as_str(), "{v}");
        if id == "long" {
            assert!(
                v["fallback"].is_null(),
                "the long request got a degraded answer: {v}"
            );
        } else {
            assert_eq!(v["fallback"], "deadline", "{v}");
        }
    }
}

/// One id per request: a rank request's own `request_id` is the one echoed
/// in `X-Request-Id` (and logged), whatever header the caller sent.
#[tokio::test]
async fn the_body_request_id_is_the_request_id() {
    let s = TestServer::shipped().await;
    // With an id in the body, the body's; without, the header's.
    for (body, want) in [
        (
            &br#"{"request_id": "from-body", "user_id": "1", "k": 2}"#[..],
            "from-body",
        ),
        (&br#"{"user_id": "1", "k": 2}"#[..], "from-header"),
    ] {
        let headers = [
            ("Content-Type", "application/json"),
            ("X-Request-Id", "from-header"),
        ];
        let r = send(s.public, "POST", "/v1/rank", &headers, body).await;
        assert_eq!(r.json()["request_id"], want);
        assert_eq!(r.header("x-request-id"), Some(want));
    }
}

/// The admin token's scheme is case-insensitive (RFC 7235), and a salt has
/// a length limit.
#[tokio::test]
async fn admin_calls_accept_any_case_of_bearer_and_refuse_huge_salts() {
    let mut config = config_for(&shipped_models());
    config.server.admin_token = Some(cascade::config::Secret::new("s3cret-token"));
    let s = TestServer::start(config).await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} s3cret-token");
        let r = send(
            s.admin,
            "GET",
            "/admin/models",
            &[("Authorization", &auth)],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{scheme}");
    }
    let body = serde_json::to_vec(&json!({"salt": "x".repeat(300), "arms": []})).unwrap();
    let r = send(
        s.admin,
        "PUT",
        "/admin/experiments",
        &[
            ("Authorization", "Bearer s3cret-token"),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        error_message(&r).starts_with("salt: at most 256 bytes"),
        "{}",
        error_message(&r)
    );
}

/// Every catalog file the pipeline relies on is required: a missing user
/// table (which holds what each user has seen) is a start-up error naming
/// the file, not a silent loss of `exclude_seen`.
#[test]
fn a_missing_catalog_file_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(shipped_models().join("catalog")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "users.parquet" {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let mut config = config_for(&shipped_models());
    config.ranking.catalog = dir.path().to_path_buf();
    let e = match cascade::state::AppState::load(config) {
        Ok(_) => panic!("a catalog without users.parquet loaded"),
        Err(e) => e.to_string(),
    };
    assert_eq!(e, "catalog users.parquet: file not found");
}
