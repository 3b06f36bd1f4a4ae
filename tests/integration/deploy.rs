//! The Grafana dashboard and the Prometheus alert rules in `deploy/` only
//! reference metrics a running server actually exports.

use std::collections::BTreeSet;

use serde_json::json;

use crate::common::{golden, metrics_text, send, TestServer};

/// `cascade_*` metric names in `text`, histogram suffixes removed.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("cascade_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let mut name = &text[start..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                name = base;
            }
        }
        // Skip identifiers that are not metrics (the dashboard's uid "cascade").
        if name.len() > "cascade_".len() {
            names.insert(name.to_string());
        }
        i = end.max(start + 1);
    }
    names
}

/// A server on the shipped app with every kind of traffic the panels and
/// alerts look at: rankings (cache hits too), a cold start, a shadow, a
/// reload, an event, an inference; shadows drained.
async fn exercised_server() -> TestServer {
    let mut config = crate::common::config_for(&crate::common::shipped_models());
    config.monitoring.sample_rate = 1.0;
    config.monitoring.window_rows = 200;
    config.ranking.cache.enabled = true;
    let s = TestServer::start(config).await;
    // A shadow and a reload, so their series exist.
    let shadow = serde_json::to_vec(&json!({"shadows": [
        {"name": "twin", "stage": "rerank", "model": "ranker", "sample_rate": 1.0}
    ]}))
    .unwrap();
    let json_header = [("Content-Type", "application/json")];
    assert_eq!(
        send(s.admin, "PUT", "/admin/shadow", &json_header, &shadow)
            .await
            .status,
        200
    );
    assert_eq!(
        send(s.admin, "POST", "/admin/models/ranker/reload", &[], b"")
            .await
            .status,
        200
    );
    // Traffic of every kind the panels look at.
    let known = crate::common::known_users(4);
    for u in &known {
        let body = json!({"user_id": u, "k": 5, "deadline_ms": 5000, "context": {"hour": 8, "weekday": 1}});
        assert_eq!(s.post_json("/v1/rank", &body).await.status, 200);
        assert_eq!(s.post_json("/v1/rank", &body).await.status, 200); // a cache hit
    }
    assert_eq!(
        s.post_json("/v1/rank", &json!({"k": 5, "deadline_ms": 5000}))
            .await
            .status,
        200
    );
    let event = json!({"events": [
        {"type": "interaction", "id": "d-1", "user_id": "1", "item_id": "50", "kind": "rating", "value": 4},
        {"type": "item", "id": "d-2", "item_id": "new-d", "fields": {"year": 2000}}
    ]});
    assert_eq!(s.post_json("/v1/events", &event).await.status, 200);
    let g = golden("ranker");
    let infer = json!({"inputs": [{"name": "features", "shape": [1, g.inputs[0].len()], "datatype": "FP32", "data": g.inputs[0]}]});
    assert_eq!(
        s.post_json("/v2/models/ranker/infer", &infer).await.status,
        200
    );

    for _ in 0..100 {
        if s.state.pipeline.as_ref().unwrap().shadow.pending() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    s
}

#[tokio::test]
async fn dashboard_and_alerts_reference_only_exported_metrics() {
    let root = crate::common::project_root();
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/cascade.json")).unwrap();
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("dashboard is valid JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
    assert!(alerts.contains("groups:") && alerts.matches("- alert:").count() >= 6);

    let s = exercised_server().await;
    let exported = metrics_text(s.admin).await;
    let exported_names: BTreeSet<String> = exported
        .lines()
        .filter(|l| l.starts_with("cascade_"))
        .flat_map(|l| referenced(l.split(['{', ' ']).next().unwrap()))
        .collect();
    for (file, text) in [
        ("deploy/grafana/cascade.json", &dashboard),
        ("deploy/prometheus/alerts.yml", &alerts),
    ] {
        let names = referenced(text);
        assert!(names.len() >= 5, "{file} references {names:?}");
        let missing: Vec<_> = names.difference(&exported_names).collect();
        assert!(
            missing.is_empty(),
            "{file} references metrics the server does not export: {missing:?}"
        );
    }
}

/// `promtool` from Debian's `prometheus` package: installed by
/// `scripts/setup-test-env.sh`; `None` (the test says SKIPPED) where it
/// cannot be.
fn promtool() -> Option<std::path::PathBuf> {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        crate::common::skip(
            "the alert rules' promtool tests",
            "promtool is not installed (scripts/setup-test-env.sh installs Debian's prometheus)",
        );
    }
    found.then(|| "promtool".into())
}

/// The alert rules are valid to Prometheus, and their unit tests
/// (`deploy/prometheus/tests/*.test.yml`) pass under `promtool test rules`:
/// every alert fires where it should, with the labels and summary the
/// runbook reads, and stays silent where it should.
#[test]
fn alert_rules_pass_promtool_with_a_firing_and_a_silent_case_each() {
    let root = crate::common::project_root();
    let rules = root.join("deploy/prometheus/alerts.yml");
    let tests = root.join("deploy/prometheus/tests/cascade.test.yml");
    let alerts = std::fs::read_to_string(&rules).unwrap();
    let cases = std::fs::read_to_string(&tests).unwrap();
    // Each alert: a case expecting it, and a case expecting silence.
    let lines: Vec<&str> = cases.lines().map(str::trim).collect();
    for name in alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let outcomes: Vec<bool> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| **l == format!("alertname: {name}"))
            .filter_map(|(i, _)| lines.get(i + 1))
            .map(|next| *next != "exp_alerts: []")
            .collect();
        assert!(
            outcomes.contains(&true) && outcomes.contains(&false),
            "{name}: needs a firing and a silent case in {}",
            tests.display()
        );
    }
    let Some(promtool) = promtool() else { return };
    for args in [
        vec!["check", "rules", rules.to_str().unwrap()],
        vec!["test", "rules", tests.to_str().unwrap()],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every `expr` of the alert rules (`expr: ...` or an indented `expr: |` block).
fn alert_exprs(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert: ") {
            alert = name.trim().to_string();
        }
        let Some(rest) = t.strip_prefix("expr: ") else {
            continue;
        };
        if rest.trim() != "|" {
            out.push((alert.clone(), rest.trim().to_string()));
            continue;
        }
        let indent = line.len() - t.len();
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .map(|l| l.trim())
            .collect();
        out.push((alert.clone(), block.join(" ")));
    }
    out
}

/// The expression without its alerting threshold (`… > 0.01`, `… == 0`),
/// to see whether the series under it exist.
fn without_threshold(expr: &str) -> &str {
    for op in [" > ", " < ", " == "] {
        if let Some(at) = expr.rfind(op) {
            let tail = expr[at + op.len()..].trim();
            if tail.parse::<f64>().is_ok() || tail.starts_with("0 or absent") {
                return expr[..at].trim();
            }
        }
    }
    expr
}

/// A chunked HTTP/1.1 body, joined.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `prometheus` child scraping one target every second, on loopback,
/// with its data in a temporary folder; stopped when dropped.
struct Prometheus {
    addr: std::net::SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Option<Prometheus> {
        let found = std::process::Command::new("prometheus")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            crate::common::skip(
                "a real Prometheus evaluating every panel and alert",
                "prometheus is not installed (scripts/setup-test-env.sh installs Debian's prometheus)",
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: cascade\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus never listened on {addr}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Some(Prometheus {
            addr,
            child,
            _dir: dir,
        })
    }

    /// `GET /api/v1/query`: the result vector, or the error Prometheus gave.
    async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let r = send(self.addr, "GET", &path, &[], b"").await;
        let body = if r
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            dechunk(&r.body)
        } else {
            r.body.clone()
        };
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("HTTP {}: not JSON ({e})", r.status))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        match v["data"]["resultType"].as_str() {
            Some("vector") => Ok(v["data"]["result"].as_array().cloned().unwrap_or_default()),
            other => Err(format!("result type {other:?}")),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Prometheus scrapes a real Cascade: every PromQL expression of the
/// dashboard and of the alert rules evaluates without error, and the
/// series under them exist once traffic has made them (save the few that
/// only failures create).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_evaluates_every_panel_and_alert_expression() {
    let s = exercised_server().await;
    let Some(prom) = Prometheus::start(s.admin) else {
        return;
    };
    // Scraped, then twice more after the traffic, so rates have two points.
    let started = std::time::Instant::now();
    loop {
        let up = prom.query("up{job=\"cascade\"} == 1").await;
        if up.as_ref().is_ok_and(|v| !v.is_empty()) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "Prometheus never scraped the admin listener: {up:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let more = json!({"user_id": "2", "k": 5, "context": {"hour": 9, "weekday": 2}});
    for _ in 0..3 {
        s.post_json("/v1/rank", &more).await;
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    let root = crate::common::project_root();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/cascade.json")).unwrap(),
    )
    .unwrap();
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    let mut exprs: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            exprs.push((title, t["expr"].as_str().unwrap().to_string()));
        }
    }
    let rules = alert_exprs(&alerts);
    assert_eq!(rules.len(), alerts.matches("- alert:").count());
    for (alert, expr) in &rules {
        exprs.push((
            format!("alert {alert}"),
            without_threshold(expr).to_string(),
        ));
        exprs.push((format!("alert {alert} (as written)"), expr.clone()));
    }
    // What this traffic cannot create: 5xx answers, a refused version, and
    // a firing alert (the rules as written, thresholds included).
    let may_be_empty = [
        "status=\"503\"",
        "status=~\"5..\"",
        "outcome=\"failed\"",
        "(as written)",
    ];
    let mut empty = Vec::new();
    for (who, expr) in &exprs {
        let result = prom.query(expr).await;
        let series = result.unwrap_or_else(|e| panic!("{who}: `{expr}` fails in Prometheus: {e}"));
        let allowed = may_be_empty
            .iter()
            .any(|m| expr.contains(m) || who.contains(m));
        if series.is_empty() && !allowed {
            empty.push(format!("{who}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "no series where the traffic should have made some:\n{}",
        empty.join("\n")
    );
}

/// The `config.toml: |` block of the ConfigMap manifest.
fn configmap_config(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == "config.toml: |")
        .expect("the ConfigMap holds config.toml");
    let indent = lines[at].len() - lines[at].trim_start().len();
    let body: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .copied()
        .collect();
    let strip = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| l.get(strip..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The Kubernetes manifests validate against a current Kubernetes's
/// schemas (kubernetes-validate, strict), the Dockerfile passes hadolint,
/// the ConfigMap's config is one Cascade accepts, and probes, ports, grace
/// period, Secret, Service, PDB, HPA (and its adapter rule) and Redis agree
/// with the server and with each other (tests/python/check_deploy.py).
#[test]
fn manifests_and_image_validate_and_match_the_servers_config() {
    let root = crate::common::project_root();
    let bin = root.join(".venv/bin");
    if !bin.join("kubernetes-validate").exists() || !bin.join("hadolint").exists() {
        crate::common::skip(
            "manifests_and_image_validate_and_match_the_servers_config",
            ".venv lacks kubernetes-validate or hadolint (scripts/setup-test-env.sh installs them from PyPI)",
        );
        return;
    }
    let manifests: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert!(manifests.len() >= 7, "{manifests:?}");
    let run = |program: std::path::PathBuf, args: Vec<std::ffi::OsString>| {
        let out = std::process::Command::new(&program)
            .args(&args)
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} {:?}:\n{}{}",
            program.display(),
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut args: Vec<std::ffi::OsString> = vec!["--strict".into(), "--quiet".into()];
    args.extend(manifests.iter().map(|p| p.clone().into_os_string()));
    run(bin.join("kubernetes-validate"), args);
    run(bin.join("hadolint"), vec!["Dockerfile".into()]);
    run(
        bin.join("python"),
        vec!["tests/python/check_deploy.py".into()],
    );
    // The mounted config is one the server starts with.
    let text = std::fs::read_to_string(root.join("deploy/kubernetes/configmap.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, configmap_config(&text)).unwrap();
    let config = cascade::config::Config::load(Some(&path), Vec::<(String, String)>::new())
        .unwrap_or_else(|e| panic!("the ConfigMap's config.toml: {e}"));
    assert_eq!(config.state.backend, "redis");
    assert_eq!(config.server.admin_listen, "0.0.0.0:9090");
}
