//! Closing the loop (API.md §3): outcomes that name a ranking's
//! `request_id` are attributed to its arm and the item's position, the
//! reports count them exactly, and every unattributed outcome says why.
//! (Other tests' servers share this process's metrics registry: exact
//! counts are read from each server's report.)

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{
    admin, config_for, golden, item_ids, known_users, metrics_text, send, shipped_models,
    TestServer,
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
    // Over the unit of assignment, 4 vs 2 users: χ² = 2/3, p = 0.4142.
    let by_users = report["srm"]["users_p_value"].as_f64().unwrap();
    assert!((by_users - 0.4142).abs() < 1e-3, "{report}");

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

    // What attribution found, per reason, since the experiment was set.
    assert_eq!(
        report["attribution"],
        json!({"attributed": 5, "unknown_request": 1, "expired": 0,
               "item_not_shown": 1, "no_request_id": 1})
    );
    // The same as Prometheus counters (process-wide: other tests' servers
    // in this process may have added theirs).
    let text = metrics_text(s.admin).await;
    for (series, at_least) in [
        (
            "cascade_outcome_attribution_total{result=\"attributed\"}",
            5.0,
        ),
        (
            "cascade_outcome_attribution_total{result=\"unknown_request\"}",
            1.0,
        ),
        (
            "cascade_outcome_attribution_total{result=\"item_not_shown\"}",
            1.0,
        ),
        (
            "cascade_outcome_attribution_total{result=\"no_request_id\"}",
            1.0,
        ),
        (
            "cascade_outcomes_total{variant=\"control\",kind=\"click\"}",
            4.0,
        ),
        ("cascade_outcomes_total{variant=\"b\",kind=\"click\"}", 1.0),
        (
            "cascade_shadow_outcomes_total{shadow=\"same\",kind=\"click\"}",
            4.0,
        ),
    ] {
        assert!(metric(&text, series) >= at_least, "{series}");
    }

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
    let report = admin(&t, "GET", "/admin/experiments/report", None)
        .await
        .json();
    assert_eq!(report["attribution"]["expired"], 1, "{report}");
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

/// The Parquet file `cascade dataset` wrote, as named columns of strings
/// or floats (missing: `None`).
fn read_parquet(path: &std::path::Path) -> std::collections::HashMap<String, Vec<Option<Value>>> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out: std::collections::HashMap<String, Vec<Option<Value>>> = Default::default();
    let mut order = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            if !out.contains_key(field.name()) {
                order.push(field.name().clone());
            }
            let values = out.entry(field.name().clone()).or_default();
            for i in 0..column.len() {
                values.push(if column.is_null(i) {
                    None
                } else if let Some(s) = column.as_string_opt::<i32>() {
                    Some(json!(s.value(i)))
                } else if let Some(f) = column.as_primitive_opt::<arrow_array::types::Float32Type>()
                {
                    Some(json!(f.value(i)))
                } else if let Some(f) = column.as_primitive_opt::<arrow_array::types::Float64Type>()
                {
                    Some(json!(f.value(i)))
                } else {
                    panic!("column {} of an unexpected type", field.name())
                });
            }
        }
    }
    out.insert(
        "__order".into(),
        order.into_iter().map(|n| Some(json!(n))).collect(),
    );
    out
}

/// Served answers (a cache hit among them) are logged with the feature
/// rows their stages read; clicks naming them are posted and the server is
/// killed at once; `cascade dataset` then holds one row per shown item,
/// in the answers' order, every click counted in its label (from the
/// event log: the acknowledged outcomes survive kill -9), and feature
/// rows that are exactly what the re-ranker scored.
#[test]
fn the_dataset_holds_what_was_served_and_what_users_did() {
    use crate::lifecycle::spawn_binary_with;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = crate::common::fresh_state_dir();
    let logs = tempfile::tempdir().unwrap();
    let (state_s, logs_s) = (
        state.to_string_lossy().to_string(),
        logs.path().to_string_lossy().to_string(),
    );
    let env = [
        ("CASCADE_STATE__DIR", state_s.as_str()),
        ("CASCADE_FEEDBACK__LOG_DIR", logs_s.as_str()),
    ];
    let users = known_users(3);
    let (mut child, public, _) = spawn_binary_with(&env);
    let answers: Vec<(String, Vec<String>)> = rt.block_on(async {
        let mut answers = Vec::new();
        for (i, rid) in ["d-1", "d-2", "d-3", "d-4"].iter().enumerate() {
            let body = json!({"request_id": rid, "user_id": users[i % 3], "k": 5,
                              "context": {"hour": 3, "weekday": 1}});
            let v = crate::common::post_json_to(public, "/v1/rank", &body)
                .await
                .json();
            assert_eq!(v["cached"], json!(i == 3), "d-4 repeats d-1: {v}");
            answers.push((rid.to_string(), item_ids(&v)));
        }
        answers
    });
    // The writer is off the hot path: wait for its four lines.
    let started = Instant::now();
    loop {
        let lines: usize = cascade::feedback::log::files(logs.path())
            .unwrap()
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .filter(|l| l.contains("\"type\":\"ranking\""))
                    .count()
            })
            .sum();
        if lines == 4 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{lines} ranking lines"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let item = |a: usize, p: usize| answers[a].1[p].clone();
    rt.block_on(async {
        let r = crate::common::post_json_to(
            public,
            "/v1/events",
            &json!({"events": [
                click("o-1", &users[0], &item(0, 1), Some("d-1")),
                click("o-2", &users[1], &item(1, 0), Some("d-2")),
                click("o-3", &users[1], &item(1, 0), Some("d-2")),
                click("o-4", &users[0], &item(3, 0), Some("d-4")),
            ]}),
        )
        .await;
        assert_eq!(r.json(), json!({"accepted": 4, "duplicates": 0}));
    });
    // Killed right after the 200: the outcome lines may not be written yet.
    child.kill().unwrap();
    child.wait().unwrap();
    let out = logs.path().join("dataset.parquet");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_cascade"))
        .args(["dataset", "--config", "config/default.toml", "--out"])
        .arg(&out)
        .current_dir(crate::common::project_root())
        .envs(env)
        .status()
        .unwrap();
    assert!(status.success());
    let t = read_parquet(&out);
    let text = |c: &str, i: usize| {
        t[c][i]
            .as_ref()
            .and_then(|v| v.as_str().map(str::to_string))
    };
    let num = |c: &str, i: usize| t[c][i].as_ref().and_then(Value::as_f64);
    assert_eq!(t["request_id"].len(), 20, "4 answers of 5 items");
    for (a, (rid, items)) in answers.iter().enumerate() {
        for (p, id) in items.iter().enumerate() {
            let i = a * 5 + p;
            assert_eq!(text("request_id", i).as_deref(), Some(rid.as_str()));
            assert_eq!(text("item_id", i).as_deref(), Some(id.as_str()));
            assert_eq!(num("position", i), Some(p as f64));
            assert_eq!(num("cached", i), Some(if a == 3 { 1.0 } else { 0.0 }));
            assert_eq!(text("model_ranker", i).as_deref(), Some("ranker@1"));
            let clicks = match (a, p) {
                (0, 1) | (3, 0) => 1.0,
                (1, 0) => 2.0,
                _ => 0.0,
            };
            assert_eq!(num("label_click", i), Some(clicks), "{rid} position {p}");
        }
    }
    // The logged row is what the re-ranker scored: scored again through
    // the inference protocol, it gives the logged score.
    let names: Vec<String> = t["__order"]
        .iter()
        .filter_map(|n| n.as_ref()?.as_str().map(str::to_string))
        .filter(|n| n.starts_with("ranker."))
        .collect();
    assert_eq!(names.len(), golden("ranker").inputs[0].len());
    let row: Vec<f32> = names.iter().map(|n| num(n, 6).unwrap() as f32).collect();
    rt.block_on(async {
        let s = TestServer::shipped().await;
        let v = s
            .post_json(
                "/v2/models/ranker/infer",
                &json!({"inputs": [{"name": "features", "shape": [1, row.len()], "datatype": "FP32", "data": row}]}),
            )
            .await
            .json();
        let score = v["outputs"][0]["data"][0].as_f64().unwrap();
        let logged = num("score_ranker", 6).unwrap();
        assert!((score - logged).abs() < 1e-5, "{score} vs logged {logged}");
    });
}

/// The ranking log on a full disk (a 512 KiB tmpfs): every ranking is
/// answered, the same as a server without the log; the records the disk
/// refused are counted, never waited for. Needs root (SKIPPED elsewhere,
/// a failure under CI=true).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_ranking_log_never_touches_a_ranking() {
    use std::process::Command;
    let root = tempfile::tempdir().unwrap();
    let mount = root.path().join("logs");
    std::fs::create_dir(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        crate::common::skip(
            "a_full_disk_under_the_ranking_log_never_touches_a_ranking",
            "mounting a tmpfs needs root",
        );
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let mut logged = config_for(&shipped_models());
    logged.feedback.log_dir = Some(mount.clone());
    logged.ranking.cache.enabled = false;
    let mut plain = config_for(&shipped_models());
    plain.ranking.cache.enabled = false;
    let (a, b) = (
        TestServer::start(logged).await,
        TestServer::start(plain).await,
    );
    let users = known_users(50);
    for (i, u) in users.iter().enumerate() {
        let body = json!({"request_id": format!("f-{i}"), "user_id": u, "k": 100,
                          "context": {"hour": 3, "weekday": 1}});
        let (va, vb) = (
            a.post_json("/v1/rank", &body).await,
            b.post_json("/v1/rank", &body).await,
        );
        assert_eq!((va.status, vb.status), (200, 200));
        assert_eq!(item_ids(&va.json()), item_ids(&vb.json()), "{u}");
    }
    // Every record was written or refused by the disk (or dropped).
    let started = Instant::now();
    loop {
        let text = metrics_text(a.admin).await;
        let [w, f, d] = ["written", "failed", "dropped"].map(|r| {
            metric(
                &text,
                &format!("cascade_rankings_logged_total{{result=\"{r}\"}}"),
            )
        });
        if w + f + d >= 50.0 {
            assert!(
                w > 0.0 && f + d > 0.0,
                "written {w}, failed {f}, dropped {d}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "written {w}, failed {f}, dropped {d}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
