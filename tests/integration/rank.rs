//! `POST /v1/rank` and `/v1/rank/batch` over HTTP on the shipped models and
//! catalog, and the training/serving skew check on the golden sets.

use std::collections::HashSet;

use cascade::pipeline::request::RankRequest;
use serde_json::{json, Value};

use crate::common::{golden, send, TestServer};

fn items(v: &Value) -> Vec<(String, f64)> {
    v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {v}"))
        .iter()
        .map(|i| {
            (
                i["item_id"].as_str().unwrap().to_string(),
                i["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn assert_sorted_distinct(list: &[(String, f64)]) {
    assert!(
        list.windows(2).all(|w| w[0].1 >= w[1].1),
        "sorted by score: {list:?}"
    );
    let ids: HashSet<_> = list.iter().map(|(i, _)| i).collect();
    assert_eq!(ids.len(), list.len(), "distinct: {list:?}");
}

#[tokio::test]
async fn known_user_gets_k_distinct_sorted_items_none_excluded() {
    let s = TestServer::shipped().await;
    let base =
        json!({"user_id": "1", "k": 20, "context": {"hour": 21, "weekday": 3}, "debug": true});
    let first = s.post_json("/v1/rank", &base).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let v = first.json();
    let list = items(&v);
    assert_eq!(list.len(), 20);
    assert_sorted_distinct(&list);
    assert_eq!(v["fallback"], Value::Null);
    assert_eq!(v["variant"], "control");
    assert_eq!(v["cached"], false);
    assert_eq!(
        v["models"],
        json!({"filter": "filter@1", "ranker": "ranker@1"})
    );
    assert!(v["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    let stages: Vec<_> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stages, ["retrieve", "filter", "rerank", "select"]);
    assert_eq!(v["stages"][0]["candidates_out"], 300);
    assert_eq!(v["stages"][1]["candidates_out"], 100);

    // Exclude the top five: they never come back, the rest still does.
    let top5: Vec<String> = list[..5].iter().map(|(i, _)| i.clone()).collect();
    let mut req = base.clone();
    req["exclude"] = json!(top5);
    req["request_id"] = json!("r-42");
    let v = s.post_json("/v1/rank", &req).await.json();
    assert_eq!(v["request_id"], "r-42");
    let again = items(&v);
    assert_eq!(again.len(), 20);
    assert!(again.iter().all(|(i, _)| !top5.contains(i)), "{again:?}");
    assert!(v.get("stages").is_some());

    // Without debug there are no stages; the same request is deterministic.
    let mut plain = base.clone();
    plain["debug"] = json!(false);
    let v1 = s.post_json("/v1/rank", &plain).await.json();
    let v2 = s.post_json("/v1/rank", &plain).await.json();
    assert!(v1.get("stages").is_none());
    assert_eq!(items(&v1), items(&v2));
    assert_eq!(items(&v1), list);
}

#[tokio::test]
async fn caller_candidates_are_honoured() {
    let s = TestServer::shipped().await;
    let candidates = json!(["50", "181", "100", "258", "50", "no-such-item", "1", "286"]);
    let v = s
        .post_json(
            "/v1/rank",
            &json!({"user_id": "13", "candidates": candidates, "exclude": ["1"], "k": 10}),
        )
        .await
        .json();
    let list = items(&v);
    assert_sorted_distinct(&list);
    let got: HashSet<&str> = list.iter().map(|(i, _)| i.as_str()).collect();
    let want: HashSet<&str> = ["50", "181", "100", "258", "286"].into_iter().collect();
    assert_eq!(
        got, want,
        "known, non-excluded, deduplicated candidates only"
    );
    assert_eq!(v["fallback"], Value::Null);

    let v = s
        .post_json("/v1/rank", &json!({"candidates": ["nope", "nada"]}))
        .await
        .json();
    assert_eq!(
        items(&v),
        vec![],
        "no known candidate: an empty, valid answer"
    );
}

#[tokio::test]
async fn cold_start_users_get_a_marked_answer() {
    let s = TestServer::shipped().await;
    for body in [
        json!({"k": 10}),
        json!({"user_id": "no-such-user", "k": 10, "context": {"age": 25, "gender": "F", "occupation": "student"}}),
        json!({"k": 10, "recent_items": ["50", "172", "181"]}),
    ] {
        let r = s.post_json("/v1/rank", &body).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(v["fallback"], "cold_start", "{body}");
        assert_eq!(v["models"], json!({"cold_start": "cold_start@1"}));
        let list = items(&v);
        assert_eq!(list.len(), 10);
        assert_sorted_distinct(&list);
        if let Some(recent) = body["recent_items"].as_array() {
            for r in recent {
                assert!(
                    list.iter().all(|(i, _)| i != r.as_str().unwrap()),
                    "recent items are not re-recommended"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_one_ms_deadline_degrades_instead_of_failing() {
    let s = TestServer::shipped().await;
    for body in [
        json!({"user_id": "1", "k": 5, "deadline_ms": 1}),
        json!({"k": 5, "deadline_ms": 1}),
    ] {
        let r = s.post_json("/v1/rank", &body).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        let list = items(&v);
        assert_eq!(list.len(), 5);
        assert_sorted_distinct(&list);
        let expected = if body.get("user_id").is_some() {
            "deadline"
        } else {
            "cold_start"
        };
        assert_eq!(v["fallback"], expected, "{v}");
    }
}

#[tokio::test]
async fn invalid_fields_are_400_naming_the_field() {
    let s = TestServer::shipped().await;
    let long: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let cases = [
        (json!({"k": 0}), "k must be between 1 and 100, got 0"),
        (json!({"k": 101}), "k must be between 1"),
        (json!({"k": "ten"}), "k"),
        (json!({"user_id": 5}), "user_id"),
        (json!({"candidates": "50"}), "candidates"),
        (json!({"candidates": ["50", 7]}), "candidates[1]"),
        (json!({"exclude": long}), "exclude may hold at most 1000"),
        (json!({"deadline_ms": 0}), "deadline_ms"),
        (json!({"context": {"hour": 99}}), "context.hour"),
        (json!({"context": "evening"}), "context"),
        (json!({"debug": "yes"}), "debug"),
        (json!({"kk": 3}), "kk"),
        (json!([]), "JSON object"),
    ];
    for (body, needle) in cases {
        let r = s.post_json("/v1/rank", &body).await;
        assert_eq!(
            r.status,
            400,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["error"]["code"], "invalid_request");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg:?} lacks {needle:?}");
    }
    let empty = crate::common::send(
        s.public,
        "POST",
        "/v1/rank",
        &[("Content-Type", "application/json")],
        b"",
    )
    .await;
    assert_eq!(empty.status, 400);
    assert!(empty.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("empty"));
    let r = s.get("/v1/rank").await;
    assert_eq!(r.status, 405);
    let r = crate::common::send(
        s.public,
        "POST",
        "/v1/rank",
        &[("Content-Type", "text/plain")],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 415);
    // And the server is still answering.
    assert_eq!(
        s.post_json("/v1/rank", &json!({"user_id": "1"}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_batch_with_one_bad_request_answers_the_others() {
    let s = TestServer::shipped().await;
    let body = json!({"requests": [
        {"user_id": "1", "k": 3, "request_id": "a"},
        {"k": 0, "request_id": "b"},
        {"k": 2, "request_id": "c"},
        {"user_id": 7},
    ]});
    let r = s.post_json("/v1/rank/batch", &body).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let responses = v["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 4);
    assert_eq!(responses[0]["request_id"], "a");
    assert_eq!(items(&responses[0]).len(), 3);
    assert_eq!(responses[1]["error"]["code"], "invalid_request");
    assert!(responses[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("k must be"));
    assert_eq!(responses[2]["request_id"], "c");
    assert_eq!(responses[2]["fallback"], "cold_start");
    assert!(responses[3]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("user_id"));

    let too_many = json!({"requests": vec![json!({}); 65]});
    assert_eq!(s.post_json("/v1/rank/batch", &too_many).await.status, 400);
    assert_eq!(
        s.post_json("/v1/rank/batch", &json!({"reqs": []}))
            .await
            .status,
        400
    );
}

/// Training/serving skew: for every golden row (user, item, context), the
/// server's feature assembly yields the vector the training script wrote.
#[tokio::test]
async fn served_features_match_the_training_scripts_golden_inputs() {
    let s = TestServer::shipped().await;
    let pipeline = s.state.pipeline.as_ref().unwrap();
    for role in ["filter", "ranker", "cold_start"] {
        let g = golden(role);
        let model = pipeline.stage_model(&s.state.registry, role).unwrap();
        let set = model.features();
        assert_eq!(set.names, g.features, "{role}: feature order");
        let live: Vec<bool> = crate::data::decls(role)
            .iter()
            .map(crate::data::reads_live)
            .collect();
        assert!(
            !g.rows.is_empty(),
            "{role}: golden rows say where inputs came from"
        );
        for (i, row) in g.rows.iter().enumerate() {
            let req: RankRequest = serde_json::from_value(json!({
                "user_id": row["user_id"], "context": row["context"]
            }))
            .unwrap();
            let valid = req
                .validate(&pipeline.limits, pipeline.schema(), || "skew".into())
                .unwrap();
            let subject = pipeline.subject(&valid);
            assert_eq!(
                subject.user.is_some(),
                role != "cold_start",
                "{role} row {i}"
            );
            let item = pipeline
                .catalog()
                .items
                .row(row["item_id"].as_str().unwrap())
                .unwrap();
            let mut out = Vec::new();
            let mut missing = vec![0; set.width()];
            set.assemble(
                &pipeline.catalog().sources(),
                &subject,
                &[item],
                &mut out,
                &mut missing,
            );
            for (j, (got, want)) in out.iter().zip(&g.inputs[i]).enumerate() {
                if live[j] {
                    continue; // from interactions the tests do not have
                }
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{role} row {i} feature {}: served {got}, trained {want}",
                    set.names[j]
                );
            }
        }
    }
}

/// A ranker that passed vetting but yields NaN on live rows: the answer is
/// the filter's order, marked `model_error`, never a 5xx.
#[tokio::test]
async fn a_failing_ranker_falls_back_to_the_filter_order() {
    let repo = crate::common::temp_repo();
    let width = golden("ranker").inputs[0].len();
    assert_eq!(width, 40, "fixture is built for 40 features");
    crate::common::add_ranker_like(repo.path(), "nan_ranker", "nan_ranker_40");
    let mut config = crate::common::config_for(repo.path());
    config.ranking.ranker_model = Some("nan_ranker".into());
    let s = TestServer::start(config).await;
    let r = s
        .post_json("/v1/rank", &json!({"user_id": "1", "k": 10, "debug": true}))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["fallback"], "model_error");
    assert_eq!(v["models"], json!({"filter": "filter@1"}));
    let list = items(&v);
    assert_eq!(list.len(), 10);
    assert_sorted_distinct(&list);
    assert!(list.iter().all(|(_, s)| s.is_finite()));
}

/// `cascade eval` replays cases through the serving pipeline; here on two
/// hand-written cases (the real file is derived from the data set and not
/// shipped), checking the plumbing and the metric arithmetic end to end.
#[tokio::test]
async fn offline_replay_scores_cases_through_the_pipeline() {
    let s = TestServer::shipped().await;
    let top = items(
        &s.post_json(
            "/v1/rank",
            &json!({"user_id": "1", "k": 10, "context": {"hour": 1, "weekday": 4}}),
        )
        .await
        .json(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.jsonl");
    let lines = [
        json!({"segment": "known_users", "user_id": "1", "context": {"hour": 1, "weekday": 4}, "relevant": [top[0].0]}),
        json!({"segment": "cold_start_users", "user_id": null, "context": {"age": 30, "gender": "M"}, "relevant": ["no-such-item"]}),
    ];
    std::fs::write(
        &path,
        lines
            .iter()
            .map(|l| l.to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let cases = cascade::eval::read_cases(&path).unwrap();
    let scores = cascade::eval::run(&s.state, cases, 10, Vec::new())
        .await
        .unwrap();
    let known = &scores["known_users"];
    assert_eq!(known.users, 1);
    assert!(
        (known.ndcg_at_10 - 1.0).abs() < 1e-9,
        "the one relevant item is ranked first"
    );
    assert!((known.recall_at_k - 1.0).abs() < 1e-9);
    assert_eq!(scores["cold_start_users"].ndcg_at_10, 0.0);
    assert_eq!(known.degraded, 0);
}

/// `cascade eval --events`: the interactions are played as live events in
/// time order, each case ranked as of its timestamp after exactly the
/// interactions before it — here through the trending cold-start list.
#[tokio::test]
async fn offline_replay_plays_the_interactions_up_to_each_case() {
    let mut config = crate::common::config_for(&crate::common::shipped_models());
    config.ranking.cold_start_model = None; // the retrieval order itself
    let s = TestServer::start(config).await;
    let day = 86_400_000i64;
    let t = 1_000_000_000_000i64;
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.parquet");
    let log = [
        ("a", "1682", 5.0, (t - day) as f64),
        ("b", "1682", 5.0, (t - day / 2) as f64),
        ("c", "1681", 5.0, (t + day) as f64), // after the first case: not for it
    ];
    crate::common::write_interactions(&events, &log);
    let case = |segment: &str, at: i64, relevant: &str| cascade::eval::EvalCase {
        segment: segment.into(),
        user_id: None,
        context: serde_json::Map::new(),
        relevant: vec![relevant.into()],
        timestamp: Some(at),
        recent_items: Vec::new(),
    };
    // A session that has seen 1682: its recent items reach the request,
    // which never answers with them, however much they trend.
    let session = cascade::eval::EvalCase {
        recent_items: vec!["1682".into()],
        ..case("session", t + 2 * day, "1682")
    };
    // Given out of time order: the replay sorts them.
    let cases = vec![
        case("later", t + 2 * day, "1681"),
        case("first", t, "1682"),
        session,
    ];
    let played =
        cascade::offline::read_events(&s.state.pipeline.as_ref().unwrap().catalog(), &events)
            .unwrap();
    let scores = cascade::eval::run(&s.state, cases, 10, played)
        .await
        .unwrap();
    assert!(
        (scores["first"].ndcg_at_10 - 1.0).abs() < 1e-9,
        "{scores:?}"
    );
    // 1682 (two ratings) then 1681 (one): second place.
    let second = 1.0 / 3f64.log2();
    assert!(
        (scores["later"].ndcg_at_10 - second).abs() < 1e-9,
        "{scores:?}"
    );
    assert_eq!(scores["session"].ndcg_at_10, 0.0, "{scores:?}");
}

#[tokio::test]
async fn identical_requests_hit_the_response_cache() {
    let s = TestServer::shipped().await;
    let body = json!({"user_id": "13", "k": 7, "context": {"hour": 9, "weekday": 1}, "exclude": ["50", "181"], "request_id": "first"});
    let first = s.post_json("/v1/rank", &body).await.json();
    assert_eq!(first["cached"], false);
    let mut again = body.clone();
    again["request_id"] = json!("second");
    again["exclude"] = json!(["181", "50", "181"]);
    let second = s.post_json("/v1/rank", &again).await.json();
    assert_eq!(second["cached"], true, "exclusions are a set: same answer");
    assert_eq!(
        second["request_id"], "second",
        "the caller's own request id"
    );
    assert_eq!(items(&first), items(&second));

    for changed in [
        json!({"k": 8}),
        json!({"context": {"hour": 10, "weekday": 1}}),
        json!({"user_id": "14"}),
    ] {
        let mut other = body.clone();
        for (k, v) in changed.as_object().unwrap() {
            other[k] = v.clone();
        }
        assert_eq!(
            s.post_json("/v1/rank", &other).await.json()["cached"],
            false,
            "{changed}"
        );
    }
    // Debug answers report fresh stage timings: never from the cache.
    let mut debug = body.clone();
    debug["debug"] = json!(true);
    assert_eq!(
        s.post_json("/v1/rank", &debug).await.json()["cached"],
        false
    );
    // Degraded answers are not cached.
    let degraded =
        json!({"user_id": "13", "k": 7, "deadline_ms": 1, "context": {"hour": 3, "weekday": 2}});
    for _ in 0..2 {
        let v = s.post_json("/v1/rank", &degraded).await.json();
        assert_eq!(v["fallback"], "deadline");
        assert_eq!(v["cached"], false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_misses_compute_once() {
    let s = std::sync::Arc::new(TestServer::shipped().await);
    let body = json!({"user_id": "42", "k": 5, "context": {"hour": 20, "weekday": 5}});
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (s, body) = (s.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            s.post_json("/v1/rank", &body).await.json()
        }));
    }
    let mut computed = 0;
    let mut answers = HashSet::new();
    for t in tasks {
        let v = t.await.unwrap();
        computed += (v["cached"] == false) as usize;
        answers.insert(format!("{:?}", items(&v)));
    }
    assert_eq!(
        computed, 1,
        "one computation for 16 identical concurrent requests"
    );
    assert_eq!(answers.len(), 1);
}

/// The HTTP request id: the caller's `X-Request-Id` is echoed and becomes
/// the rank request's id when the body has none; otherwise one is generated.
#[tokio::test]
async fn request_ids_flow_from_the_header() {
    let s = TestServer::shipped().await;
    let body = serde_json::to_vec(&json!({"user_id": "1", "k": 2})).unwrap();
    let r = crate::common::send(
        s.public,
        "POST",
        "/v1/rank",
        &[
            ("Content-Type", "application/json"),
            ("X-Request-Id", "abc-123"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(r.json()["request_id"], "abc-123");
    let r = s.get("/healthz").await;
    assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));
}

/// Paging: the second page's re-rank scores come from the score cache,
/// equal to freshly computed ones; a new model version scores afresh.
#[tokio::test]
async fn paging_reuses_rerank_scores_of_the_same_model_version() {
    let repo = crate::common::temp_repo();
    let mut config = crate::common::config_for(repo.path());
    config.ranking.cache.enabled = false;
    let s = TestServer::start(config.clone()).await;
    let mut fresh_config = config;
    fresh_config.ranking.score_cache.enabled = false;
    let fresh = TestServer::start(fresh_config).await;
    let stats = |s: &TestServer| s.state.pipeline.as_ref().unwrap().score_cache_stats();
    assert_eq!(stats(&fresh), None);

    let page = |k: u64| json!({"user_id": "1", "k": k, "context": {"hour": 9, "weekday": 3}});
    let first = s.post_json("/v1/rank", &page(10)).await.json();
    let (hits, misses) = stats(&s).unwrap();
    assert_eq!(hits, 0);
    let rows = misses;
    assert!(rows >= 10, "the re-ranker scored {rows} rows");
    // The next page: same candidates, nothing re-scored.
    let second = s.post_json("/v1/rank", &page(20)).await.json();
    assert_eq!(stats(&s).unwrap(), (rows, rows));
    assert_eq!(items(&second)[..10], items(&first)[..]);
    // Cached scores are the scores the model computes.
    let recomputed = fresh.post_json("/v1/rank", &page(20)).await.json();
    assert_eq!(items(&second), items(&recomputed));
    // Another hour is another key.
    let other = json!({"user_id": "1", "k": 10, "context": {"hour": 10, "weekday": 3}});
    s.post_json("/v1/rank", &other).await;
    assert_eq!(stats(&s).unwrap().1, 2 * rows);

    // A new version of the ranker never reuses the old version's scores.
    let ranker = repo.path().join("ranker");
    std::fs::create_dir(ranker.join("2")).unwrap();
    for f in ["model.onnx", "golden.json", "profile.json"] {
        std::fs::copy(ranker.join("1").join(f), ranker.join("2").join(f)).unwrap();
    }
    let r = send(s.admin, "POST", "/admin/models/ranker/reload", &[], b"").await;
    assert_eq!(r.json()["serving"], "2");
    let after = s.post_json("/v1/rank", &page(10)).await.json();
    assert_eq!(after["models"]["ranker"], "ranker@2");
    assert_eq!(stats(&s).unwrap(), (rows, 3 * rows));
}
