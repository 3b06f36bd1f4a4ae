//! The quality gate over HTTP: a reload refuses a new version that ranks
//! worse than the serving one on the same labelled golden rows, swaps in
//! one that ranks as well or better, and with the gate off swaps in
//! whatever passes vetting.
//!
//! The models are 2-feature re-rankers from `tests/fixtures`
//! (`make_fixtures.py`): `sum_ranker_2` scores the sum of its features and
//! ranks the labelled golden set well (AUC 0.9028); `neg_sum_ranker_2`
//! scores minus the sum and ranks the same rows badly (AUC 0.0972).

use std::path::Path;

use serde_json::{json, Value};

use crate::common::{admin, config_for, install_fixture, metrics_text, temp_repo, TestServer};

const GOOD_AUC: f64 = 0.9027777777777778;
const BAD_AUC: f64 = 0.09722222222222222;

/// Adds model `name` to `repo`: the 2-feature config of a re-ranker, and
/// `versions` as (onnx fixture, golden fixture) pairs, numbered from 1.
fn add_model(repo: &Path, name: &str, versions: &[(&str, &str)]) {
    let dir = repo.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        concat!(
            "role = \"ranker\"\n",
            "output = { name = \"score\" }\n",
            "input = { name = \"features\", features = [",
            "{ name = \"item_mean_rating\", expr = \"item.mean_rating\" }, ",
            "{ name = \"item_pos_rate\", expr = \"item.pos_rate\" }] }\n",
        ),
    )
    .unwrap();
    for (i, (onnx, golden)) in versions.iter().enumerate() {
        add_version(&dir, i as u64 + 1, onnx, golden);
    }
}

/// Publishes version `v` of a model (written aside, then renamed in one
/// step) from fixtures.
fn add_version(dir: &Path, v: u64, onnx: &str, golden: &str) {
    let staging = dir.join(format!(".staging-{v}"));
    std::fs::create_dir_all(&staging).unwrap();
    install_fixture(&staging, onnx, golden);
    std::fs::rename(staging, dir.join(v.to_string())).unwrap();
}

const GOOD: (&str, &str) = ("sum_ranker_2", "sum_ranker_2.labelled");
const BAD: (&str, &str) = ("neg_sum_ranker_2", "neg_sum_ranker_2");

/// `GET /admin/models`'s entry for `name`.
async fn entry(s: &TestServer, name: &str) -> Value {
    let all = admin(s, "GET", "/admin/models", None).await.json();
    all["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {all}"))
        .clone()
}

async fn reload(s: &TestServer, name: &str) -> Value {
    let r = admin(s, "POST", &format!("/admin/models/{name}/reload"), None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// A version `GET /admin/models` lists as failed, by the quality gate.
fn assert_refused_by_the_gate(version: &Value) {
    assert_eq!(version["state"], "failed", "{version}");
    let error = version["error"].as_str().unwrap_or_default();
    assert!(error.contains(": quality gate: "), "{version}");
}

fn auc(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn near(got: f64, want: f64) -> bool {
    (got - want).abs() < 1e-9
}

/// The value of the `cascade_model_quality` series of `name`@`version`.
fn quality_series(text: &str, name: &str, version: &str) -> Option<f64> {
    let series =
        format!("cascade_model_quality{{name=\"{name}\",version=\"{version}\",metric=\"auc\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn a_reload_refuses_a_version_that_ranks_worse_and_the_old_one_keeps_serving() {
    let repo = temp_repo();
    add_model(repo.path(), "gate_worse", &[GOOD]);
    let s = TestServer::start(config_for(repo.path())).await;

    // Version 1's quality on its golden set is recorded and shown.
    let e = entry(&s, "gate_worse").await;
    let q = &e["versions"][0]["vetting"]["quality"];
    assert_eq!(q["metric"], "auc");
    assert!(near(auc(&q["value"]), GOOD_AUC), "{q}");
    assert_eq!(
        (q["rows"].as_u64(), q["positives"].as_u64()),
        (Some(24), Some(12))
    );
    assert!(q["golden_set"].is_string(), "{q}");

    add_version(&repo.path().join("gate_worse"), 2, BAD.0, BAD.1);
    let r = reload(&s, "gate_worse").await;
    assert_eq!(r["serving"], "1", "{r}");
    assert_eq!(r["loaded"], json!([]), "{r}");
    assert_eq!(r["failed"][0]["version"], "2", "{r}");
    let error = r["failed"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("gate_worse/2/golden.json: quality gate: version 2 has AUC 0.0972 against 0.9028 for serving version 1"),
        "{error}"
    );
    let gate = &r["quality_gate"][0];
    assert_eq!(gate["outcome"], "refused", "{r}");
    assert_eq!(
        (&gate["candidate"], &gate["serving"]),
        (&json!("2"), &json!("1"))
    );
    assert!(near(auc(&gate["candidate_value"]), BAD_AUC), "{gate}");
    assert!(near(auc(&gate["serving_value"]), GOOD_AUC), "{gate}");
    assert_eq!(gate["rows"], 24);

    // Kept out exactly like a version that fails vetting.
    let e = entry(&s, "gate_worse").await;
    assert_eq!(e["serving"], "1");
    assert_refused_by_the_gate(&e["versions"][1]);
    let meta = s.get("/v2/models/gate_worse").await.json();
    assert_eq!(meta["versions"], json!(["1"]));
    let rows = json!({"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]});
    let r = s
        .post_json("/v2/models/gate_worse/infer", &rows)
        .await
        .json();
    assert_eq!(r["model_version"], "1", "{r}");
    assert!(
        near(r["outputs"][0]["data"][0].as_f64().unwrap(), 3.0),
        "{r}"
    );

    // An operator's reload tries it again, and the gate refuses it again.
    let r = reload(&s, "gate_worse").await;
    assert_eq!(
        (&r["serving"], &r["quality_gate"][0]["outcome"]),
        (&json!("1"), &json!("refused"))
    );

    let text = metrics_text(s.admin).await;
    assert!(
        near(quality_series(&text, "gate_worse", "1").unwrap(), GOOD_AUC),
        "{text}"
    );
    assert_eq!(
        quality_series(&text, "gate_worse", "2"),
        None,
        "a refused version has no quality series"
    );
    assert!(
        text.contains("cascade_model_loads_total{name=\"gate_worse\",outcome=\"failed\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_version_that_ranks_as_well_or_better_is_swapped_in() {
    let repo = temp_repo();
    add_model(repo.path(), "gate_same", &[GOOD]);
    add_model(repo.path(), "gate_better", &[BAD]);
    let s = TestServer::start(config_for(repo.path())).await;

    add_version(&repo.path().join("gate_same"), 2, GOOD.0, GOOD.1);
    let r = reload(&s, "gate_same").await;
    assert_eq!(
        (&r["previous"], &r["serving"]),
        (&json!("1"), &json!("2")),
        "{r}"
    );
    let gate = &r["quality_gate"][0];
    assert_eq!(gate["outcome"], "passed", "{r}");
    assert!(near(auc(&gate["candidate_value"]), GOOD_AUC), "{gate}");
    assert!(near(auc(&gate["serving_value"]), GOOD_AUC), "{gate}");

    add_version(&repo.path().join("gate_better"), 2, GOOD.0, GOOD.1);
    let r = reload(&s, "gate_better").await;
    assert_eq!(r["serving"], "2", "{r}");
    let gate = &r["quality_gate"][0];
    assert_eq!(gate["outcome"], "passed", "{r}");
    assert!(near(auc(&gate["serving_value"]), BAD_AUC), "{gate}");
    assert!(
        gate["detail"]
            .as_str()
            .unwrap()
            .starts_with("quality gate passed: version 2 has AUC 0.9028 against 0.0972"),
        "{gate}"
    );
    assert_eq!(entry(&s, "gate_better").await["serving"], "2");

    // A rollback is the operator's call: not gated.
    let r = admin(&s, "POST", "/admin/models/gate_better/rollback", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["serving"], "1");
}

#[tokio::test]
async fn with_the_gate_off_a_worse_version_is_swapped_in() {
    let repo = temp_repo();
    add_model(repo.path(), "gate_off", &[GOOD]);
    let mut config = config_for(repo.path());
    config.models.quality_gate = false;
    let s = TestServer::start(config).await;
    let all = admin(&s, "GET", "/admin/models", None).await.json();
    assert_eq!(all["quality_gate"]["enabled"], false);

    add_version(&repo.path().join("gate_off"), 2, BAD.0, BAD.1);
    let r = reload(&s, "gate_off").await;
    assert_eq!(r["serving"], "2", "{r}");
    assert_eq!(r["failed"], json!([]), "{r}");
    assert_eq!(r["quality_gate"], json!([]), "{r}");
    // Its quality is still recorded.
    let e = entry(&s, "gate_off").await;
    assert!(
        near(
            auc(&e["versions"][1]["vetting"]["quality"]["value"]),
            BAD_AUC
        ),
        "{e}"
    );
}

/// Without labels (the shipped models' golden sets so far) nothing can be
/// compared: the new version is accepted and the report says why.
#[tokio::test]
async fn without_labels_the_gate_accepts_and_says_it_could_not_compare() {
    let repo = temp_repo();
    add_model(repo.path(), "gate_unlabelled", &[GOOD]);
    let dir = repo.path().join("gate_unlabelled");
    let strip = |v: &str| {
        let file = dir.join(v).join("golden.json");
        let mut g: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        g.as_object_mut().unwrap().remove("labels");
        std::fs::write(&file, g.to_string()).unwrap();
    };
    strip("1");
    let s = TestServer::start(config_for(repo.path())).await;
    assert_eq!(
        entry(&s, "gate_unlabelled").await["versions"][0]["vetting"]["quality"],
        Value::Null
    );

    add_version(&dir, 2, BAD.0, BAD.1);
    strip("2");
    let r = reload(&s, "gate_unlabelled").await;
    assert_eq!(r["serving"], "2", "{r}");
    let gate = &r["quality_gate"][0];
    assert_eq!(gate["outcome"], "not_comparable", "{r}");
    assert!(
        gate["detail"].as_str().unwrap().contains("no labels"),
        "{gate}"
    );
}

/// The poller applies the same gate as an operator's reload.
#[tokio::test]
async fn the_poller_gates_new_versions_too() {
    let repo = temp_repo();
    add_model(repo.path(), "gate_polled", &[GOOD]);
    let s = TestServer::start(config_for(repo.path())).await;
    add_version(&repo.path().join("gate_polled"), 2, BAD.0, BAD.1);
    let state = s.state.clone();
    tokio::task::spawn_blocking(move || {
        // The first scan sees the change, the second sees it settled.
        state.poll_model("gate_polled");
        state.poll_model("gate_polled");
    })
    .await
    .unwrap();
    let e = entry(&s, "gate_polled").await;
    assert_eq!(e["serving"], "1", "{e}");
    assert_refused_by_the_gate(&e["versions"][1]);
}
