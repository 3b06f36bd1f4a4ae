//! Closing the loop (API.md §3): outcomes that name a ranking's
//! `request_id` are attributed to its arm and the item's position, the
//! reports count them exactly, and every unattributed outcome says why.
//! (This is the only test that posts outcome events: the process-wide
//! attribution counters it reads move only with it.)

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{
    admin, config_for, item_ids, known_users, metrics_text, send, shipped_models, TestServer,
};

/// A ranking for `user` under `request_id`, forced into `arm` (when the
/// server runs an experiment).
async fn rank(s: &TestServer, arm: &str, user: &str, request_id: &str) -> Value {
    let body = json!({"request_id": request_id, "user_id": user, "k": 5,
                      "context": {"hour": 3, "weekday": 1}});
    let mut headers = vec![("Content-Type", "application/json")];
    if !s
        .state
        .pipeline
        .as_ref()
        .unwrap()
        .experiments()
        .arms
        .is_empty()
    {
        headers.push(("X-Cascade-Variant", arm));
    }
    let body = serde_json::to_vec(&body).unwrap();
    let r = send(s.public, "POST", "/v1/rank", &headers, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn click(id: &str, user: &str, item: &str, request_id: Option<&str>) -> Value {
    let mut e =
        json!({"type": "interaction", "id": id, "user_id": user, "item_id": item, "kind": "click"});
    if let Some(r) = request_id {
        e["request_id"] = json!(r);
    }
    e
}

async fn post_events(s: &TestServer, events: Vec<Value>) {
    let r = s.post_json("/v1/events", &json!({"events": events})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_attributed_and_both_reports_count_them_exactly() {
    let s = TestServer::shipped().await;
    let users = known_users(7);
    let set = json!({"salt": "exp-t", "arms": [{"name": "control", "share": 0.5},
                                                 {"name": "b", "share": 0.5, "ranker_model": "ranker@1"}]});
    let r = admin(&s, "PUT", "/admin/experiments", Some(&set)).await;
    assert_eq!(r.status, 200);
    // Every rerank runs a shadow: the serving ranker again, so its order is
    // the live one and the shadow report must say so.
    let shadow = json!({"shadows": [{"name": "same", "stage": "rerank", "model": "ranker@1", "sample_rate": 1.0}]});
    let r = admin(&s, "PUT", "/admin/shadow", Some(&shadow)).await;
    assert_eq!(r.status, 200);

    // Control: four catalog users, then the first one's request again (a
    // cache hit is shown too: a ranking). Arm b: two users, the first twice.
    let mut shown = std::collections::HashMap::new();
    for (arm, user, rid) in [
        ("control", 0, "c-1"),
        ("control", 1, "c-2"),
        ("control", 2, "c-3"),
        ("control", 3, "c-4"),
        ("control", 0, "c-5"),
        ("b", 4, "b-1"),
        ("b", 5, "b-2"),
        ("b", 4, "b-3"),
    ] {
        let v = rank(&s, arm, &users[user], rid).await;
        assert_eq!(
            (v["variant"].as_str(), v["fallback"].as_str()),
            (Some(arm), None)
        );
        shown.insert(rid, item_ids(&v));
    }
    assert_eq!(
        shown["c-5"], shown["c-1"],
        "a repeat: served from the cache"
    );
    // The shadow ran on the 6 computed answers (not the cache hits).
    let started = Instant::now();
    loop {
        let v = admin(&s, "GET", "/admin/shadow", None).await.json();
        if v["stats"]["same"]["compared"].as_u64() == Some(6) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "shadows: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at = |rid: &str, p: usize| shown[rid][p].clone();
    let not_shown = (1..=1682)
        .map(|i| i.to_string())
        .find(|i| !shown["c-3"].contains(i))
        .unwrap();
    post_events(
        &s,
        vec![
            click("k1", &users[0], &at("c-1", 0), Some("c-1")),
            click("k2", &users[0], &at("c-1", 2), Some("c-1")),
            click("k3", &users[1], &at("c-2", 1), Some("c-2")),
            click("k4", &users[0], &at("c-5", 4), Some("c-5")),
            click("k5", &users[4], &at("b-1", 3), Some("b-1")),
            // Unattributed, one of each reason.
            click("u1", &users[0], "50", Some("no-such-request")),
            click("u2", &users[2], &not_shown, Some("c-3")),
            click("u3", &users[3], "50", None),
        ],
    )
    .await;
    // A rating is no outcome: it names nothing and counts nowhere.
    post_events(
        &s,
        vec![json!({"type": "interaction", "id": "r1", "user_id": users[1], "item_id": at("c-2", 0), "kind": "rating", "value": 5})],
    )
    .await;

    let report = admin(&s, "GET", "/admin/experiments/report", None)
        .await
        .json();
    assert_eq!(report["experiment"], "exp-t");
    let arms = report["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 2);
    let (control, b) = (&arms[0], &arms[1]);
    assert_eq!(
        (control["name"].as_str(), b["name"].as_str()),
        (Some("control"), Some("b"))
    );
    assert_eq!(
        (control["rankings"].as_u64(), control["users"].as_u64()),
        (Some(5), Some(4))
    );
    assert_eq!(
        (b["rankings"].as_u64(), b["users"].as_u64()),
        (Some(3), Some(2))
    );
    let c = &control["outcomes"]["click"];
    assert_eq!(c["count"], 4);
    assert_eq!(c["rate"], json!(0.8));
    assert_eq!(c["mean_position"], json!(1.75), "(0 + 2 + 1 + 4) / 4");
    // Per-ranking clicks 2, 1, 0, 0, 1: variance 0.7, se √(0.7/5).
    let se = (0.7f64 / 5.0).sqrt();
    let ci = c["ci95"].as_array().unwrap();
    assert!(
        (ci[0].as_f64().unwrap() - (0.8 - 1.959964 * se)).abs() < 1e-5,
        "{c}"
    );
    assert!(
        (ci[1].as_f64().unwrap() - (0.8 + 1.959964 * se)).abs() < 1e-5,
        "{c}"
    );
    let bc = &b["outcomes"]["click"];
    assert_eq!(
        (bc["count"].as_u64(), bc["mean_position"].as_f64()),
        (Some(1), Some(3.0))
    );
    assert_eq!(bc["rate"], json!(0.333333));
    let vs = &report["vs_control"][0];
    assert_eq!(
        (vs["arm"].as_str(), vs["kind"].as_str()),
        (Some("b"), Some("click"))
    );
    assert_eq!(vs["lift"], json!(-0.583333), "(1/3) / 0.8 - 1");
    let p = vs["p_value"].as_f64().unwrap();
    assert!(p > 0.0 && p < 1.0, "{vs}");
    // 5 vs 3 rankings against 50/50: χ² = 0.5, p = 0.4795.
    let srm = report["srm"]["p_value"].as_f64().unwrap();
    assert!((srm - 0.4795).abs() < 1e-3, "{report}");

    // The shadow ranked as the live model did: the same positions.
    let shadows = admin(&s, "GET", "/admin/shadow/report", None).await.json();
    let same = &shadows["shadows"][0];
    assert_eq!(same["name"], "same");
    let sc = &same["outcomes"]["click"];
    // The cache hit ran no shadow: 4 of the 5 attributed outcomes.
    assert_eq!(sc["count"], 4, "{shadows}");
    assert_eq!(
        sc["live"]["mean_position"],
        json!(1.5),
        "(0 + 2 + 1 + 3) / 4"
    );
    assert_eq!(sc["shadow"]["mean_position"], sc["live"]["mean_position"]);
    assert_eq!(sc["shadow"]["share_top_k"], json!(1.0));
    assert_eq!(sc["shadow"]["missing"], 0);

    let text = metrics_text(s.admin).await;
    for (result, n) in [
        ("attributed", 5.0),
        ("unknown_request", 1.0),
        ("item_not_shown", 1.0),
        ("no_request_id", 1.0),
    ] {
        let series = format!("cascade_outcome_attribution_total{{result=\"{result}\"}}");
        assert_eq!(metric(&text, &series), n, "{series}");
    }
    assert_eq!(
        metric(
            &text,
            "cascade_outcomes_total{variant=\"control\",kind=\"click\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &text,
            "cascade_outcomes_total{variant=\"b\",kind=\"click\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "cascade_shadow_outcomes_total{shadow=\"same\",kind=\"click\"}"
        ),
        4.0
    );

    // A new experiment starts its counts over.
    let again = json!({"salt": "exp-u", "arms": [{"name": "control", "share": 1.0}]});
    assert_eq!(
        admin(&s, "PUT", "/admin/experiments", Some(&again))
            .await
            .status,
        200
    );
    let fresh = admin(&s, "GET", "/admin/experiments/report", None)
        .await
        .json();
    assert_eq!(fresh["experiment"], "exp-u");
    assert_eq!(fresh["arms"][0]["rankings"], 0);
    assert_eq!(fresh["arms"][0]["outcomes"]["click"]["count"], 0);
    assert_eq!(fresh["vs_control"], json!([]));
    assert_eq!(fresh["srm"]["p_value"], Value::Null);
    // An outcome on an answer of the old experiment is attributed (it was
    // shown), but counts for no arm of the new one.
    post_events(&s, vec![click("k6", &users[1], &at("c-2", 0), Some("c-2"))]).await;
    let fresh = admin(&s, "GET", "/admin/experiments/report", None)
        .await
        .json();
    assert_eq!(fresh["arms"][0]["outcomes"]["click"]["count"], 0);

    // Past the attribution window: expired (a server of its own, 1 s).
    let mut config = config_for(&shipped_models());
    config.feedback.attribution_window = "1s".into();
    let t = TestServer::start(config).await;
    let v = rank(&t, "control", &users[6], "e-1").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = t
        .post_json(
            "/v1/events",
            &json!({"events": [click("x1", &users[6], &item_ids(&v)[0], Some("e-1"))]}),
        )
        .await;
    assert_eq!(r.status, 200);
    let text = metrics_text(t.admin).await;
    assert_eq!(
        metric(
            &text,
            "cascade_outcome_attribution_total{result=\"expired\"}"
        ),
        1.0
    );
    // A request id that is not one is refused, naming the field.
    let bad = t
        .post_json(
            "/v1/events",
            &json!({"events": [click("x2", &users[6], "50", Some("a b"))]}),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("events[0].request_id: must be 1 to 128 visible ASCII"));
}
