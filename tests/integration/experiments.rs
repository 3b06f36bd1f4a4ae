//! Experimentation and model lifecycle over HTTP: reload and rollback,
//! the admin token, A/B arms, and shadow models.

use std::time::Duration;

use cascade::config::Secret;
use serde_json::{json, Value};

use crate::common::{
    add_ranker_like, admin, config_for, copy_version, known_users, metrics_text, send, temp_repo,
    TestServer,
};

/// What serves each stage of a known user's answer.
async fn served_ranker(s: &TestServer) -> String {
    let r = s
        .post_json("/v1/rank", &json!({"user_id": "1", "k": 5}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["models"]["ranker"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn reload_vets_new_versions_and_rollback_restores_the_previous_one() {
    let repo = temp_repo();
    let ranker = repo.path().join("ranker");
    let s = TestServer::start(config_for(repo.path())).await;
    assert_eq!(served_ranker(&s).await, "ranker@1");

    // Nothing new: reload changes nothing.
    let r = admin(&s, "POST", "/admin/models/ranker/reload", None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["serving"], "1");

    // A good version 2 is loaded, vetted and serves; the response cache
    // cannot hand out answers of version 1.
    copy_version(&ranker, 1, 2);
    let r = admin(&s, "POST", "/admin/models/ranker/reload", None)
        .await
        .json();
    assert_eq!(r["previous"], "1");
    assert_eq!(r["serving"], "2");
    assert_eq!(r["loaded"], json!(["2"]));
    assert_eq!(served_ranker(&s).await, "ranker@2");

    // A corrupt version 3 and a version 4 that fails its golden set are
    // refused; version 2 keeps serving.
    std::fs::create_dir(ranker.join("3")).unwrap();
    std::fs::write(ranker.join("3/model.onnx"), b"corrupt").unwrap();
    copy_version(&ranker, 1, 4);
    let mut g: Value =
        serde_json::from_str(&std::fs::read_to_string(ranker.join("4/golden.json")).unwrap())
            .unwrap();
    for x in g["outputs"].as_array_mut().unwrap() {
        *x = json!(x.as_f64().unwrap() + 0.5);
    }
    std::fs::write(ranker.join("4/golden.json"), g.to_string()).unwrap();
    let r = admin(&s, "POST", "/admin/models/ranker/reload", None).await;
    assert_eq!(r.status, 200);
    let r = r.json();
    assert_eq!(r["serving"], "2");
    let failed: Vec<&str> = r["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["version"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["3", "4"]);
    assert!(r["failed"][1]["error"]
        .as_str()
        .unwrap()
        .contains("vetting failed"));
    assert!(
        !r.to_string().contains(&repo.path().display().to_string()),
        "no host paths in admin answers"
    );
    assert_eq!(served_ranker(&s).await, "ranker@2");

    // Rollback: version 1 serves again, 2 is retired and a reload does not
    // bring it back.
    let r = admin(&s, "POST", "/admin/models/ranker/rollback", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["serving"], "1");
    assert_eq!(served_ranker(&s).await, "ranker@1");
    let r = admin(&s, "POST", "/admin/models/ranker/reload", None)
        .await
        .json();
    assert_eq!(r["serving"], "1");
    let models = admin(&s, "GET", "/admin/models", None).await.json();
    let entry = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "ranker")
        .unwrap()
        .clone();
    let states: Vec<&str> = entry["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ready", "retired", "failed", "failed"]);

    // Nothing below version 1: refused, naming the model.
    let r = admin(&s, "POST", "/admin/models/ranker/rollback", None).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("\"ranker\""));
    assert_eq!(served_ranker(&s).await, "ranker@1");

    // Unknown and hostile names never reach the file system.
    for path in [
        "/admin/models/nope/reload",
        "/admin/models/..%2F..%2Fetc/reload",
        "/admin/models/%2e%2e/reload",
        "/admin/models/.hidden/reload",
    ] {
        let r = admin(&s, "POST", path, None).await;
        assert_eq!(r.status, 404, "{path}");
    }
    assert_eq!(
        admin(&s, "GET", "/admin/models/ranker/reload", None)
            .await
            .status,
        405
    );
}

/// Requests racing a reload all succeed, each on one whole version.
#[tokio::test]
async fn requests_during_a_reload_see_one_version_or_the_other() {
    let repo = temp_repo();
    let mut config = config_for(repo.path());
    config.ranking.cache.enabled = false;
    let s = std::sync::Arc::new(TestServer::start(config).await);
    copy_version(&repo.path().join("ranker"), 1, 2);
    let known = known_users(20);
    let traffic = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..60 {
                let r = s
                    .post_json(
                        "/v1/rank",
                        &json!({"user_id": known[i % known.len()], "k": 5}),
                    )
                    .await;
                assert_eq!(r.status, 200);
                let v = r.json();
                assert!(v["fallback"].is_null(), "{v}");
                seen.push(v["models"]["ranker"].as_str().unwrap().to_string());
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = admin(&s, "POST", "/admin/models/ranker/reload", None).await;
    assert_eq!(r.status, 200);
    let seen = traffic.await.unwrap();
    assert!(seen.iter().all(|v| v == "ranker@1" || v == "ranker@2"));
    assert_eq!(served_ranker(&s).await, "ranker@2");
}

#[tokio::test]
async fn admin_calls_need_the_token_when_one_is_configured() {
    let mut config = config_for(&crate::common::shipped_models());
    config.server.admin_token = Some(Secret::new("correct-horse-battery"));
    let s = TestServer::start(config).await;
    let r = admin(&s, "GET", "/admin/models", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    for token in [
        "Bearer wrong-horse-battery",
        "Bearer correct-horse-batter",
        "correct-horse-battery",
    ] {
        let r = send(
            s.admin,
            "GET",
            "/admin/models",
            &[("Authorization", token)],
            b"",
        )
        .await;
        assert_eq!(r.status, 401, "{token}");
    }
    let r = send(s.admin, "POST", "/admin/models/ranker/rollback", &[], b"").await;
    assert_eq!(r.status, 401, "checked before anything else");
    let ok = [("Authorization", "Bearer correct-horse-battery")];
    assert_eq!(
        send(s.admin, "GET", "/admin/models", &ok, b"").await.status,
        200
    );
    assert_eq!(
        send(s.admin, "GET", "/admin/shadow", &ok, b"").await.status,
        200
    );
    // Scrapes and probes stay open; admin paths are never public.
    assert_eq!(send(s.admin, "GET", "/metrics", &[], b"").await.status, 200);
    assert_eq!(
        send(s.public, "GET", "/admin/models", &ok, b"")
            .await
            .status,
        404
    );
}

/// Ranks many distinct cold-start users in batches of 64 and returns
/// each one's variant.
async fn variants_of(s: &TestServer, users: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in users.chunks(64) {
        let requests: Vec<Value> = chunk
            .iter()
            .map(|u| json!({"user_id": u, "candidates": ["1", "2", "3"], "k": 1}))
            .collect();
        let r = s
            .post_json("/v1/rank/batch", &json!({"requests": requests}))
            .await;
        assert_eq!(r.status, 200);
        for answer in r.json()["responses"].as_array().unwrap() {
            out.push(answer["variant"].as_str().expect("a variant").to_string());
        }
    }
    out
}

fn experiment() -> Value {
    json!({
        "salt": "exp-1",
        "arms": [
            {"name": "control", "share": 0.7},
            {"name": "small_filter", "share": 0.3, "filter_keep": 20, "ranker_model": "ranker@1"}
        ]
    })
}

#[tokio::test]
async fn ab_arms_split_traffic_stably_and_by_share() {
    let mut config = config_for(&crate::common::shipped_models());
    config.ranking.max_batch_requests = 64;
    let s = TestServer::start(config.clone()).await;
    assert_eq!(
        admin(&s, "GET", "/admin/experiments", None).await.json()["arms"],
        json!([])
    );
    let r = admin(&s, "PUT", "/admin/experiments", Some(&experiment())).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let users: Vec<String> = (0..10_000).map(|i| format!("cold-{i}")).collect();
    let variants = variants_of(&s, &users).await;
    let treated = variants.iter().filter(|v| *v == "small_filter").count();
    assert_eq!(
        variants.iter().filter(|v| *v == "control").count() + treated,
        10_000
    );
    // Binomial(10000, 0.3): sd 45.8; allow 5 sd.
    assert!((treated as f64 - 3000.0).abs() < 230.0, "{treated}");

    // The same users land in the same arms again, and on another server
    // (a restart) configured from the file.
    let again = variants_of(&s, &users[..640]).await;
    assert_eq!(again, variants[..640]);
    let mut from_file = config;
    from_file.experiments = serde_json::from_value(experiment()).unwrap();
    let other = TestServer::start(from_file).await;
    assert_eq!(variants_of(&other, &users[..640]).await, variants[..640]);

    // The arm's overrides apply: known users in small_filter re-rank 20.
    let header = |arm: &'static str| {
        [
            ("Content-Type", "application/json"),
            ("X-Cascade-Variant", arm),
        ]
    };
    let body = serde_json::to_vec(&json!({"user_id": "1", "k": 5, "debug": true})).unwrap();
    let r = send(s.public, "POST", "/v1/rank", &header("small_filter"), &body).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["variant"], "small_filter");
    let filter = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["name"] == "filter")
        .unwrap()
        .clone();
    assert_eq!(filter["candidates_out"], 20);
    let r = send(s.public, "POST", "/v1/rank", &header("control"), &body).await;
    assert_eq!(r.json()["variant"], "control");
    let r = send(s.public, "POST", "/v1/rank", &header("nope"), &body).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("X-Cascade-Variant"));

    // Every rank metric carries the arm.
    let metrics = metrics_text(s.admin).await;
    for needle in [
        "cascade_rank_requests_total{variant=\"small_filter\"",
        "cascade_rank_requests_total{variant=\"control\"",
        "cascade_rank_duration_seconds_bucket{variant=\"small_filter\"",
        "variant=\"small_filter\"",
    ] {
        assert!(metrics.contains(needle), "{needle}");
    }

    // Bad experiments are refused by field, and the old one stays.
    for (body, field) in [
        (
            json!({"arms": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}]}),
            "arms: shares sum",
        ),
        (
            json!({"arms": [{"name": "a", "share": 1.0, "ranker_model": "nope"}]}),
            "arms[0].ranker_model",
        ),
        (
            json!({"arms": [{"name": "a", "share": 1.0, "ranker_model": "ranker@9"}]}),
            "arms[0].ranker_model",
        ),
        (
            json!({"arms": [{"name": "a", "share": "half"}]}),
            "arms[0].share",
        ),
        (
            json!({"arms": [{"name": "a/b", "share": 1.0}]}),
            "arms[0].name",
        ),
    ] {
        let r = admin(&s, "PUT", "/admin/experiments", Some(&body)).await;
        assert_eq!(r.status, 400, "{body}");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.starts_with(field), "{msg}");
    }
    assert_eq!(
        admin(&s, "GET", "/admin/experiments", None).await.json(),
        experiment()
    );
}

/// Known users with a fixed context: answers depend only on the models.
fn live_requests() -> Vec<Value> {
    known_users(30)
        .into_iter()
        .map(|u| json!({"user_id": u, "k": 10, "context": {"hour": 20, "weekday": 2}}))
        .collect()
}

async fn answers(s: &TestServer) -> Vec<Value> {
    let mut out = Vec::new();
    for body in live_requests() {
        let r = s.post_json("/v1/rank", &body).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        assert!(v["fallback"].is_null(), "{v}");
        out.push(json!({"items": v["items"], "models": v["models"]}));
    }
    out
}

/// Polls `GET /admin/shadow` until `done` holds for the stats (bounded).
async fn shadow_stats(s: &TestServer, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        let v = admin(s, "GET", "/admin/shadow", None).await.json();
        if done(&v["stats"]) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "shadow work did not finish: {}",
        admin(s, "GET", "/admin/shadow", None).await.json()
    );
}

#[tokio::test]
async fn shadows_compare_rankings_and_leave_live_answers_untouched() {
    let repo = temp_repo();
    let mut config = config_for(repo.path());
    config.ranking.cache.enabled = false;
    let log = repo.path().join("shadow.jsonl");
    config.shadow.log_file = Some(log.clone());
    config.shadow.queue_capacity = 1024;
    let s = TestServer::start(config).await;
    let before = answers(&s).await;

    let shadows = json!({"shadows": [
        {"name": "same_ranker", "stage": "rerank", "model": "ranker", "sample_rate": 1.0},
        {"name": "cold_as_ranker", "stage": "rerank", "model": "cold_start", "sample_rate": 1.0},
        {"name": "filter_twin", "stage": "filter", "model": "filter@1", "sample_rate": 1.0}
    ]});
    let r = admin(&s, "PUT", "/admin/shadow", Some(&shadows)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let during = answers(&s).await;
    assert_eq!(during, before, "live answers identical with shadows on");

    let n = live_requests().len() as u64;
    let v = shadow_stats(&s, |st| {
        ["same_ranker", "cold_as_ranker", "filter_twin"]
            .iter()
            .all(|name| st[name]["compared"].as_u64() == Some(n))
    })
    .await;
    let st = &v["stats"];
    // The same model on the same inputs agrees exactly.
    for name in ["same_ranker", "filter_twin"] {
        let x = &st[name];
        assert_eq!(x["mean_overlap"], 1.0, "{name}: {x}");
        assert!(
            x["mean_rank_correlation"].as_f64().unwrap() > 0.999,
            "{name}: {x}"
        );
        assert!(
            x["mean_abs_score_delta"].as_f64().unwrap() < 1e-6,
            "{name}: {x}"
        );
        assert_eq!(x["errors"], 0);
    }
    // Another model (with other features, assembled for it) disagrees.
    let other = &st["cold_as_ranker"];
    let overlap = other["mean_overlap"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&overlap), "{other}");
    assert!(other["mean_abs_score_delta"].as_f64().unwrap() > 0.0);

    let metrics = metrics_text(s.admin).await;
    assert!(metrics.contains(&format!(
        "cascade_shadow_requests_total{{shadow=\"same_ranker\",outcome=\"compared\"}} {n}"
    )));
    for name in [
        "cascade_shadow_overlap_ratio_bucket{shadow=\"cold_as_ranker\"",
        "cascade_shadow_rank_correlation_bucket{shadow=\"same_ranker\"",
        "cascade_shadow_score_delta_bucket{shadow=\"filter_twin\"",
        "cascade_shadow_duration_seconds_bucket{shadow=\"same_ranker\"",
    ] {
        assert!(metrics.contains(name), "{name}");
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, 3 * n);
    assert!(lines
        .iter()
        .any(|l| l["shadow"] == "same_ranker" && l["overlap"] == 1.0 && l["k"] == 10));

    // Off again; bad shadow lists are refused by field.
    let r = admin(&s, "PUT", "/admin/shadow", Some(&json!({"shadows": []}))).await;
    assert_eq!(r.status, 200);
    for (body, field) in [
        (
            json!({"shadows": [{"name": "x", "stage": "rerank", "model": "nope", "sample_rate": 1.0}]}),
            "shadows[0].model",
        ),
        (
            json!({"shadows": [{"name": "x", "stage": "rerank", "model": "ranker", "sample_rate": 2.0}]}),
            "shadows[0].sample_rate",
        ),
        (
            json!({"shadows": [{"name": "x", "stage": "middle", "model": "ranker", "sample_rate": 1.0}]}),
            "shadows[0].stage",
        ),
    ] {
        let r = admin(&s, "PUT", "/admin/shadow", Some(&body)).await;
        assert_eq!(r.status, 400, "{body}");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.starts_with(field), "{msg}");
    }
}

#[tokio::test]
async fn a_failing_or_slow_shadow_changes_nothing_live() {
    let repo = temp_repo();
    add_ranker_like(repo.path(), "nan_ranker", "nan_ranker_40");
    add_ranker_like(repo.path(), "slow_ranker", "slow_ranker_40");
    let mut config = config_for(repo.path());
    config.ranking.cache.enabled = false;
    config.shadow.queue_capacity = 2;
    let s = TestServer::start(config).await;
    let before = answers(&s).await;
    let shadows = json!({"shadows": [
        {"name": "broken", "stage": "rerank", "model": "nan_ranker", "sample_rate": 1.0},
        {"name": "slow", "stage": "rerank", "model": "slow_ranker", "sample_rate": 1.0}
    ]});
    assert_eq!(
        admin(&s, "PUT", "/admin/shadow", Some(&shadows))
            .await
            .status,
        200
    );
    // Live traffic while the shadows fail and fall behind: the same answers.
    assert_eq!(answers(&s).await, before);
    let n = live_requests().len() as u64;
    let v = shadow_stats(&s, |st| {
        ["broken", "slow"].iter().all(|name| {
            let x = &st[name];
            x["compared"].as_u64().unwrap_or(0)
                + x["dropped"].as_u64().unwrap_or(0)
                + x["errors"].as_u64().unwrap_or(0)
                == n
        })
    })
    .await;
    let st = &v["stats"];
    assert_eq!(st["broken"]["compared"], 0, "{st}");
    assert!(st["broken"]["errors"].as_u64().unwrap() > 0, "{st}");
    // The slow one cannot keep up with a queue of two: work is shed.
    assert!(st["slow"]["dropped"].as_u64().unwrap() > 0, "{st}");
    let metrics = metrics_text(s.admin).await;
    assert!(metrics.contains("cascade_shadow_requests_total{shadow=\"broken\",outcome=\"error\"}"));
    assert!(metrics.contains("cascade_shadow_requests_total{shadow=\"slow\",outcome=\"dropped\"}"));
}

/// With `models.poll_interval_s`, new versions are found without a call.
#[tokio::test]
async fn the_repository_is_rescanned_when_polling_is_on() {
    let repo = temp_repo();
    let mut config = config_for(repo.path());
    config.models.poll_interval_s = 1;
    config.ranking.cache.enabled = false;
    let s = TestServer::start(config).await;
    assert_eq!(served_ranker(&s).await, "ranker@1");
    copy_version(&repo.path().join("ranker"), 1, 2);
    for _ in 0..100 {
        if served_ranker(&s).await == "ranker@2" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("version 2 never served");
}
