//! `/metrics` on the admin listener (never the public one) exports request,
//! inference and model-version metrics after traffic.

use serde_json::json;

use crate::common::{golden, metrics_text, send, shipped_model_names, TestServer};

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

/// Drift monitoring: with every request sampled and a small window, a few
/// rankings publish PSI per feature and for the score, and the score
/// histogram fills.
#[tokio::test]
async fn drift_and_score_distribution_are_exported() {
    let mut config = crate::common::config_for(&crate::common::shipped_models());
    config.monitoring.sample_rate = 1.0;
    config.monitoring.window_rows = 500;
    config.ranking.cache.enabled = false;
    let s = TestServer::start(config).await;
    let known = crate::common::known_users(8);
    for u in known {
        let r = s
            .post_json(
                "/v1/rank",
                &json!({"user_id": u, "k": 5, "deadline_ms": 5000, "context": {"hour": 12, "weekday": 2}}),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["fallback"],
            serde_json::Value::Null,
            "full cascade"
        );
    }
    // A cold-start request without demographics: its features take defaults.
    let r = s
        .post_json("/v1/rank", &json!({"k": 5, "deadline_ms": 5000}))
        .await;
    assert_eq!(r.json()["fallback"], "cold_start");
    let text = metrics_text(s.admin).await;
    let psi_line = text
        .lines()
        .find(|l| {
            l.starts_with("cascade_feature_psi{model=\"filter\",feature=\"item_popularity\"}")
        })
        .unwrap_or_else(|| panic!("no filter PSI in\n{text}"));
    let psi: f64 = psi_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(psi.is_finite() && psi >= 0.0, "{psi_line}");
    for needle in [
        "cascade_score_psi{model=\"filter\"}",
        "cascade_score_psi{model=\"ranker\"}",
        "cascade_model_score_bucket{model=\"ranker\",le=\"0.05\"}",
        "cascade_feature_defaulted_total{model=\"cold_start\",feature=\"age_gap\"}",
        "cascade_feature_rows_total{model=\"ranker\"}",
        "cascade_stage_duration_seconds_bucket{stage=\"rerank\"",
    ] {
        assert!(text.contains(needle), "missing {needle}");
    }
}

fn gauge(text: &str, prefix: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in metrics"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// In-distribution traffic (known users through retrieval, as the filter
/// was trained) keeps every filter PSI under the threshold; candidates
/// drawn from the least popular items push item_popularity's PSI above it.
#[tokio::test]
async fn shifted_inputs_raise_the_drift_gauge_in_distribution_does_not() {
    let mut config = crate::common::config_for(&crate::common::shipped_models());
    config.monitoring.sample_rate = 1.0;
    config.monitoring.window_rows = 6000; // 20 requests × 300 filter rows
    config.ranking.cache.enabled = false;
    let threshold = config.monitoring.psi_threshold;
    let s = TestServer::start(config).await;
    let catalog = &s.state.pipeline.as_ref().unwrap().catalog();
    let users: Vec<String> = catalog
        .users
        .base_ids()
        .iter()
        .step_by(30)
        .take(20)
        .map(str::to_string)
        .collect();
    let send_all = |candidates: Option<Vec<String>>| {
        let s = &s;
        let users = users.clone();
        async move {
            for (i, u) in users.iter().enumerate() {
                let mut body = json!({"user_id": u, "k": 10, "deadline_ms": 5000,
                                      "context": {"hour": (i * 5) % 24, "weekday": i % 7}});
                if let Some(c) = &candidates {
                    body["candidates"] = json!(c);
                }
                let r = s.post_json("/v1/rank", &body).await;
                assert_eq!(r.json()["fallback"], serde_json::Value::Null);
            }
        }
    };
    send_all(None).await;
    let text = metrics_text(s.admin).await;
    let features = [
        "user_item_dot",
        "user_genre_affinity",
        "item_popularity",
        "item_recent_popularity",
        "item_mean_rating",
        "item_pos_rate",
    ];
    for f in features {
        let psi = gauge(
            &text,
            &format!("cascade_feature_psi{{model=\"filter\",feature=\"{f}\"}}"),
        );
        assert!(psi < threshold, "in-distribution {f}: PSI {psi}");
    }

    // The 300 least popular items, for everyone.
    let mut rows: Vec<usize> = (0..catalog.items.len()).collect();
    let popularity = |r: usize| catalog.popularity(r as u32);
    rows.sort_by(|&a, &b| popularity(a).total_cmp(&popularity(b)));
    let unpopular: Vec<String> = rows[..300]
        .iter()
        .map(|&r| catalog.items.id(r as u32).to_string())
        .collect();
    send_all(Some(unpopular)).await;
    let text = metrics_text(s.admin).await;
    let psi = gauge(
        &text,
        "cascade_feature_psi{model=\"filter\",feature=\"item_popularity\"}",
    );
    assert!(psi > threshold, "shifted item_popularity: PSI {psi}");
}
