//! Start-up and shutdown: broken models are clear errors (or, beside a
//! working version, never serve), SIGTERM drains and exits 0.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use cascade::state::AppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{
    config_for, golden, metrics_text, send, shipped_model_names, temp_repo, TestServer,
};

fn load_error(repo: &std::path::Path) -> String {
    match AppState::load(config_for(repo)) {
        Ok(_) => panic!("expected a load error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_model_that_cannot_load_is_an_error_naming_the_file() {
    let repo = temp_repo();
    let name = &shipped_model_names()[0];
    std::fs::write(
        repo.path().join(name).join("1/model.onnx"),
        b"not an onnx file",
    )
    .unwrap();
    let e = load_error(repo.path());
    assert!(e.starts_with(&format!("{name}/1/model.onnx: ")), "{e}");
    assert!(
        !e.contains(&repo.path().display().to_string()),
        "relative path only: {e}"
    );

    let repo = temp_repo();
    std::fs::remove_file(repo.path().join(name).join("1/model.onnx")).unwrap();
    assert_eq!(
        load_error(repo.path()),
        format!("{name}/1/model.onnx: file not found")
    );

    let repo = temp_repo();
    std::fs::write(repo.path().join(name).join("config.toml"), "role = \"ranker\"\n[input]\nname = \"features\"\nfeatures = [{ name = \"a\", expr = \"item.popularity\" }]\n[output]\nname = \"score\"\n").unwrap();
    let e = load_error(repo.path());
    assert!(
        e.contains(&format!("{name}/config.toml")) && e.contains("1 features declared"),
        "{e}"
    );
}

#[tokio::test]
async fn a_broken_or_unvetted_new_version_never_replaces_a_working_one() {
    let repo = temp_repo();
    let name = &shipped_model_names()[0];
    let dir = repo.path().join(name);
    // Version 2: not a model at all. Version 3: a real model whose golden
    // set expects other numbers.
    std::fs::create_dir(dir.join("2")).unwrap();
    std::fs::write(dir.join("2/model.onnx"), b"garbage").unwrap();
    std::fs::create_dir(dir.join("3")).unwrap();
    std::fs::copy(dir.join("1/model.onnx"), dir.join("3/model.onnx")).unwrap();
    let mut g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("1/golden.json")).unwrap()).unwrap();
    for x in g["outputs"].as_array_mut().unwrap() {
        *x = serde_json::json!(x.as_f64().unwrap() + 0.5);
    }
    std::fs::write(dir.join("3/golden.json"), g.to_string()).unwrap();

    let s = TestServer::start(config_for(repo.path())).await;
    let meta = s.get(&format!("/v2/models/{name}")).await.json();
    assert_eq!(meta["versions"], serde_json::json!(["1"]));
    let admin = send(s.admin, "GET", "/admin/models", &[], b"").await.json();
    let entry = admin["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name.as_str())
        .unwrap();
    assert_eq!(entry["serving"], "1");
    let versions = entry["versions"].as_array().unwrap();
    assert_eq!(versions[0]["state"], "ready");
    assert_eq!(versions[0]["vetting"]["passed"], true);
    assert_eq!(versions[1]["state"], "failed");
    assert_eq!(versions[2]["state"], "failed");
    assert!(
        versions[2]["error"]
            .as_str()
            .unwrap()
            .contains("vetting failed"),
        "{}",
        versions[2]
    );
    assert_eq!(
        s.get(&format!("/v2/models/{name}/versions/3/ready"))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let mut s = TestServer::shipped().await;
    let name = &shipped_model_names()[0];
    let g = golden(name);
    let body = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "features", "shape": [1, g.inputs[0].len()], "datatype": "FP32", "data": g.inputs[0]}]
    }))
    .unwrap();
    // A request in flight: headers and half the body sent.
    let mut stream = tokio::net::TcpStream::connect(s.public).await.unwrap();
    let head = format!(
        "POST /v2/models/{name}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..body.len() / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let done = s.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!s.state.is_ready(), "not ready while draining");
    assert!(
        tokio::net::TcpStream::connect(s.public).await.is_err(),
        "no new connections"
    );

    stream.write_all(&body[body.len() / 2..]).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let r = crate::common::parse_response(&buf);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("drained")
        .unwrap();
}

/// The real binary on the shipped config, on ephemeral ports, in its own
/// process (so its metrics are its own). Returns the child and its public
/// and admin addresses, read from its start-up log line.
pub fn spawn_binary() -> (Reaped, SocketAddr, SocketAddr) {
    // No balancer to wait for: stop accepting at once on SIGTERM.
    spawn_binary_with(&[("CASCADE_SERVER__DRAIN_DELAY_MS", "0")])
}

/// As [`spawn_binary`], with extra environment (config overrides).
pub fn spawn_binary_with(env: &[(&str, &str)]) -> (Reaped, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args([
            "serve",
            "--config",
            "config/default.toml",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CASCADE_STATE__DIR", crate::common::fresh_state_dir())
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .map(Reaped)
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let field = |line: &str, key: &str| -> SocketAddr {
        let value = line
            .split(key)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        value.trim_matches('"').parse().unwrap()
    };
    let mut addrs = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        // Logs to a pipe are plain text: no terminal colour codes.
        assert!(
            !line.contains('\u{1b}'),
            "ANSI escape in a piped log: {line:?}"
        );
        if line.contains("cascade listening") {
            addrs = Some((field(&line, "public="), field(&line, "admin=")));
            break;
        }
    }
    let (public, admin) = addrs.expect("server logged its addresses");
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, public, admin)
}

/// A child process that is killed if the test fails before it exits, so a
/// failing test never leaves a server running (or a pipe open).
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn sigterm(child: &mut std::process::Child) -> std::process::ExitStatus {
    signal(child, "TERM");
    child.wait().unwrap()
}

/// Waits up to `limit` for the child to exit.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// SIGTERM as Kubernetes sends it: readiness drops at once while the
/// listener still accepts for `server.drain_delay_ms`, keep-alive clients
/// are told `Connection: close`, then accepting stops and the process
/// exits 0.
#[test]
fn sigterm_drains_before_it_stops_accepting() {
    let (mut child, public, admin) =
        spawn_binary_with(&[("CASCADE_SERVER__DRAIN_DELAY_MS", "1500")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut kept = tokio::net::TcpStream::connect(public).await.unwrap();
        let get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        kept.write_all(get).await.unwrap();
        let r = crate::common::read_response(&mut kept).await.unwrap();
        assert_eq!(r.header("connection"), None);
        signal(&child, "TERM");
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Still accepting, no longer ready, on both listeners.
        for addr in [public, admin] {
            let r = send(addr, "GET", "/readyz", &[], b"").await;
            assert_eq!(r.status, 503);
            assert_eq!(r.json()["reason"], "shutting down");
        }
        // A keep-alive client is served once more and told to go.
        kept.write_all(get).await.unwrap();
        let r = crate::common::read_response(&mut kept).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("close"));
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert!(
            tokio::net::TcpStream::connect(public).await.is_err(),
            "accepting stopped after the drain delay"
        );
    });
    let exit = wait_exit(&mut child, Duration::from_secs(10)).expect("exited after draining");
    assert!(exit.success(), "exit status {exit:?}");
}

/// A second SIGTERM does not wait out the drain; SIGHUP does not kill the
/// process (it rescans the repository).
#[test]
fn sighup_is_survived_and_a_second_sigterm_exits_at_once() {
    let (mut child, public, _) = spawn_binary_with(&[("CASCADE_SERVER__DRAIN_DELAY_MS", "60000")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    signal(&child, "HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP killed the server"
    );
    let r = rt.block_on(send(public, "GET", "/readyz", &[], b""));
    assert_eq!(r.status, 200);
    signal(&child, "TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "still draining");
    signal(&child, "TERM");
    let exit = wait_exit(&mut child, Duration::from_secs(5)).expect("the second signal ends it");
    assert!(!exit.success(), "cut short, so not a clean exit: {exit:?}");
}

/// A busy port is reported before the models and the index load.
#[test]
fn a_busy_port_fails_before_anything_loads() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["serve", "--listen", &port, "--admin-listen", "127.0.0.1:0"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CASCADE_STATE__DIR", crate::common::fresh_state_dir())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("server.listen: cannot bind"), "{log}");
    assert!(
        !log.contains("model version ready"),
        "models loaded first:\n{log}"
    );
}

/// The real binary: serves the shipped config, answers, exits 0 on SIGTERM.
#[test]
fn the_binary_serves_and_exits_zero_on_sigterm() {
    let (mut child, public, _) = spawn_binary();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(send(public, "GET", "/v2/health/ready", &[], b""));
    assert_eq!(r.status, 200);
    let exit = sigterm(&mut child);
    assert!(exit.success(), "exit status {exit:?}");
}

/// In a process of its own, the metrics count exactly the traffic sent.
#[test]
fn metric_counts_match_the_requests_sent() {
    let (mut child, public, admin) = spawn_binary();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let text = rt.block_on(async {
        let known = serde_json::to_vec(&serde_json::json!(
            {"user_id": "1", "k": 5, "deadline_ms": 5000, "context": {"hour": 3, "weekday": 4}}
        ))
        .unwrap();
        let cold = serde_json::to_vec(
            &serde_json::json!({"k": 5, "deadline_ms": 5000, "context": {"hour": 3, "weekday": 4}}),
        )
        .unwrap();
        let json = [("Content-Type", "application/json")];
        for _ in 0..7 {
            assert_eq!(
                send(public, "POST", "/v1/rank", &json, &known).await.status,
                200
            );
        }
        for _ in 0..3 {
            assert_eq!(
                send(public, "POST", "/v1/rank", &json, &cold).await.status,
                200
            );
        }
        assert_eq!(
            send(public, "POST", "/v1/rank", &json, b"{\"k\": 0}")
                .await
                .status,
            400
        );
        assert_eq!(
            send(public, "GET", "/v2/models/nope", &[], b"")
                .await
                .status,
            404
        );
        metrics_text(admin).await
    });
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let rank = "cascade_http_requests_total{listener=\"public\",route=\"/v1/rank\"";
    assert_eq!(value(&format!("{rank},status=\"200\"}}")), 10.0);
    assert_eq!(value(&format!("{rank},status=\"400\"}}")), 1.0);
    assert_eq!(value("cascade_http_requests_total{listener=\"public\",route=\"/v2/models/{name}\",status=\"404\"}"), 1.0);
    // 10 cacheable rankings of two distinct requests: 2 misses, 8 hits.
    assert_eq!(
        value("cascade_cache_requests_total{cache=\"response\",result=\"miss\"}"),
        2.0
    );
    assert_eq!(
        value("cascade_cache_requests_total{cache=\"response\",result=\"hit\"}"),
        8.0
    );
    // Three cold-start answers served (one computed, two from the cache).
    assert_eq!(
        value("cascade_rank_fallbacks_total{reason=\"cold_start\",variant=\"control\"}"),
        3.0
    );
    assert_eq!(
        value("cascade_rank_fallbacks_total{reason=\"deadline\",variant=\"control\"}"),
        0.0
    );
    // Every answer counted by arm and outcome, cache hits included.
    assert_eq!(
        value("cascade_rank_requests_total{variant=\"control\",outcome=\"ok\"}")
            + value("cascade_rank_requests_total{variant=\"control\",outcome=\"cold_start\"}"),
        10.0
    );
    assert_eq!(
        value("cascade_http_request_duration_seconds_count{route=\"/v1/rank\"}"),
        11.0
    );
    assert_eq!(value("cascade_ready"), 1.0);
    // Cache sizes against their bounds (moka applies writes lazily, so only
    // their presence and sign are certain here).
    assert!(value("cascade_response_cache_bytes") >= 0.0);
    assert!(value("cascade_score_cache_scores") >= 0.0);
    let exit = sigterm(&mut child);
    assert!(exit.success(), "exit status {exit:?}");
}

/// `logging.format = "json"`: every line is a JSON object, and every line
/// logged while serving a request carries that request's id.
#[test]
fn json_logs_carry_the_request_id_on_every_line_of_a_request() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CASCADE_STATE__DIR", crate::common::fresh_state_dir())
        .env("CASCADE_LOGGING__FORMAT", "json")
        .env("CASCADE_SERVER__DRAIN_DELAY_MS", "0")
        // Debug shows the per-request lines that info leaves out.
        .env("RUST_LOG", "cascade=debug")
        .stderr(Stdio::piped())
        .spawn()
        .map(Reaped)
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let (public, admin) = loop {
        let line = lines.next().expect("server logged its addresses").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if v["fields"]["message"] == "cascade listening" {
            let addr =
                |k: &str| -> SocketAddr { v["fields"][k].as_str().unwrap().parse().unwrap() };
            break (addr("public"), addr("admin"));
        }
        seen.push(v);
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let body = br#"{"user_id": "1", "k": 3}"#;
        let headers = [
            ("Content-Type", "application/json"),
            ("X-Request-Id", "log-test-7"),
        ];
        let r = send(public, "POST", "/v1/rank", &headers, body).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-request-id"), Some("log-test-7"));
        // A bad one too: its lines must carry its own id.
        let headers = [
            ("Content-Type", "application/json"),
            ("X-Request-Id", "log-test-8"),
        ];
        assert_eq!(
            send(public, "POST", "/v1/rank", &headers, b"{\"k\": 0}")
                .await
                .status,
            400
        );
        // The body's id and the header's differ: the body's is the one.
        let headers = [
            ("Content-Type", "application/json"),
            ("X-Request-Id", "log-test-9"),
        ];
        let body = br#"{"request_id": "log-body-9", "user_id": "2", "k": 3}"#;
        let r = send(public, "POST", "/v1/rank", &headers, body).await;
        assert_eq!(r.header("x-request-id"), Some("log-body-9"));
        let _ = send(admin, "GET", "/readyz", &[], b"").await;
    });
    let exit = sigterm(&mut child);
    assert!(exit.success(), "exit status {exit:?}");
    for line in lines {
        let line = line.unwrap();
        seen.push(
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")),
        );
    }
    let in_request = |id: &str| -> Vec<&serde_json::Value> {
        seen.iter()
            .filter(|v| v["span"]["request_id"] == id)
            .collect()
    };
    assert!(in_request("log-test-9").is_empty());
    for id in ["log-test-7", "log-test-8", "log-body-9"] {
        let lines = in_request(id);
        assert!(!lines.is_empty(), "no line logged for {id}");
        assert!(lines
            .iter()
            .all(|v| v["timestamp"].is_string() && v["level"].is_string()));
    }
    // The debug line that closes each request names its status.
    assert!(in_request("log-test-8")
        .iter()
        .any(|v| v["fields"]["status"] == 400));
    // Lines outside a request have no request span.
    assert!(seen.iter().any(|v| v["span"].is_null()));
}
