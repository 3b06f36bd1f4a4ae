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

#[tokio::test]
async fn dashboard_and_alerts_reference_only_exported_metrics() {
    let root = crate::common::project_root();
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/cascade.json")).unwrap();
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("dashboard is valid JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
    assert!(alerts.contains("groups:") && alerts.matches("- alert:").count() >= 6);

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
    let event = json!({"events": [{"type": "interaction", "id": "d-1", "user_id": "1", "item_id": "50", "kind": "rating", "value": 4}]});
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
        eprintln!("SKIPPED: promtool is not installed (scripts/setup-test-env.sh installs Debian's prometheus)");
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
