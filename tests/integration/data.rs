//! The data plane end to end: `cascade features` computes the training
//! matrix with the serving code, and a broken schema, snapshot or feature
//! expression stops the server at start with an error naming file and place.

use std::path::Path;
use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use cascade::catalog::Catalog;
use cascade::data::parquet::{write, Out};
use cascade::model::spec::ModelSpec;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::common::{config_for, golden, project_root, shipped_models, temp_repo};

/// The golden rows of `role` as a rows file for `cascade features`.
fn golden_rows(role: &str, path: &Path) -> usize {
    let g = golden(role);
    let str_col = |key: &str| -> Vec<Option<String>> {
        g.rows
            .iter()
            .map(|r| r[key].as_str().map(String::from))
            .collect()
    };
    let ctx_str = |key: &str| -> Vec<Option<String>> {
        g.rows
            .iter()
            .map(|r| r["context"][key].as_str().map(String::from))
            .collect()
    };
    let ctx_num = |key: &str| -> Vec<Option<f32>> {
        g.rows
            .iter()
            .map(|r| r["context"][key].as_f64().map(|x| x as f32))
            .collect()
    };
    write(
        path,
        vec![
            ("user_id", Out::OptStrings(str_col("user_id"))),
            ("item_id", Out::OptStrings(str_col("item_id"))),
            ("hour", Out::OptF32(ctx_num("hour"))),
            ("weekday", Out::OptF32(ctx_num("weekday"))),
            ("age", Out::OptF32(ctx_num("age"))),
            ("gender", Out::OptStrings(ctx_str("gender"))),
            ("occupation", Out::OptStrings(ctx_str("occupation"))),
        ],
    )
    .unwrap();
    g.rows.len()
}

/// Reads a `cascade features` output: the column names and the matrix.
fn read_matrix(path: &Path) -> (Vec<String>, Vec<Vec<f32>>) {
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut names = Vec::new();
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        names = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let cols: Vec<Vec<f32>> = batch
            .columns()
            .iter()
            .map(|c| c.as_primitive::<Float32Type>().values().to_vec())
            .collect();
        for r in 0..batch.num_rows() {
            rows.push(cols.iter().map(|c| c[r]).collect());
        }
    }
    (names, rows)
}

/// Whether a declaration reads live state (`count()`, `recency()`): its
/// golden values came from the training period's interactions, which are
/// derived from the data set and never shipped, so the skew tests cannot
/// rebuild them (`models/train/verify.py` does, from those interactions).
pub(crate) fn reads_live(decl: &cascade::data::features::FeatureDecl) -> bool {
    decl.expr.contains("count(") || decl.expr.contains("recency(")
}

pub(crate) fn decls(role: &str) -> Vec<cascade::data::features::FeatureDecl> {
    let text = std::fs::read_to_string(shipped_models().join(role).join("config.toml")).unwrap();
    ModelSpec::parse(&text, "config.toml")
        .unwrap()
        .input
        .unwrap()
        .features
}

/// One definition for training and serving: `cascade features` over the
/// rows the training script drew its golden inputs from gives those inputs.
#[test]
fn offline_features_reproduce_the_golden_inputs() {
    let catalog = Catalog::load(&shipped_models().join("catalog")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut live = 0;
    for role in ["filter", "ranker", "cold_start"] {
        let rows = dir.path().join(format!("{role}-rows.parquet"));
        let out = dir.path().join(format!("{role}.parquet"));
        let n = golden_rows(role, &rows);
        let (stored, kept): (Vec<_>, Vec<_>) = decls(role).into_iter().partition(reads_live);
        live += stored.len();
        assert_eq!(
            cascade::offline::run(&catalog, &kept, &rows, None, &out),
            Ok(n)
        );
        let (names, matrix) = read_matrix(&out);
        let g = golden(role);
        let kept_names: Vec<&String> = kept.iter().map(|d| &d.name).collect();
        assert_eq!(
            names.iter().collect::<Vec<_>>(),
            kept_names,
            "{role}: in order"
        );
        let cols: Vec<usize> = names
            .iter()
            .map(|n| g.features.iter().position(|f| f == n).unwrap())
            .collect();
        assert!(
            cols.windows(2).all(|w| w[0] < w[1]),
            "{role}: the model's order"
        );
        assert_eq!(matrix.len(), g.inputs.len());
        for (i, (got, want)) in matrix.iter().zip(&g.inputs).enumerate() {
            for (j, a) in got.iter().enumerate() {
                let b = want[cols[j]];
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{role} row {i} {}: {a} vs golden {b}",
                    names[j]
                );
            }
        }
    }
    assert_eq!(live, 1, "only cold_start's item_trending reads live state");
}

/// `session.*`: a row's `recent_items` are its request's session. The
/// shipped cold-start model reads how close each item is to the mean of
/// their embeddings (the MIPS coordinate zeroed, as retrieval's query) and
/// whether there is a session at all; without one, the defaults.
#[test]
fn recent_items_are_the_session_the_features_read() {
    let catalog = Catalog::load(&shipped_models().join("catalog")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.parquet");
    let session = vec!["50".to_string(), "181".to_string()];
    write(
        &rows,
        vec![
            ("item_id", Out::Strings(vec!["1".into(), "1".into()])),
            ("recent_items", Out::StringLists(vec![session, vec![]])),
        ],
    )
    .unwrap();
    let kept: Vec<_> = decls("cold_start")
        .into_iter()
        .filter(|d| d.expr.contains("session."))
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let out = dir.path().join("out.parquet");
    assert_eq!(
        cascade::offline::run(&catalog, &kept, &rows, None, &out),
        Ok(2)
    );
    let (names, m) = read_matrix(&out);
    // Independently, in f64: the mean of the two, last coordinate 0.
    let v = |id: &str| catalog.item_vector(catalog.items.row(id).unwrap()).to_vec();
    let (a, b, x) = (v("50"), v("181"), v("1"));
    let mut q: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(p, r)| (*p as f64 + *r as f64) / 2.0)
        .collect();
    *q.last_mut().unwrap() = 0.0;
    let norm = |v: &[f64]| v.iter().map(|p| p * p).sum::<f64>().sqrt();
    let x: Vec<f64> = x.iter().map(|r| *r as f64).collect();
    let cos = q.iter().zip(&x).map(|(p, r)| p * r).sum::<f64>() / (norm(&q) * norm(&x));
    let col = |n: &str| names.iter().position(|c| c == n).unwrap();
    let (sim, given) = (col("session_similarity"), col("session_given"));
    assert!(
        (m[0][sim] as f64 - cos).abs() < 1e-5,
        "{} vs {cos}",
        m[0][sim]
    );
    assert_eq!(m[0][given], 1.0);
    assert_eq!(
        (m[1][sim], m[1][given]),
        (0.0, 0.0),
        "no session: the defaults"
    );
}

/// The command line does the same, and names a bad row.
#[test]
fn the_features_command_writes_the_matrix_and_names_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.parquet");
    let n = golden_rows("ranker", &rows);
    let out = dir.path().join("ranker.parquet");
    let run = |rows: &Path| {
        Command::new(env!("CARGO_BIN_EXE_cascade"))
            .args(["features", "--model", "ranker", "--rows"])
            .arg(rows)
            .arg("--out")
            .arg(&out)
            .current_dir(project_root())
            .output()
            .unwrap()
    };
    let result = run(&rows);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(read_matrix(&out).1.len(), n);
    write(
        &rows,
        vec![(
            "item_id",
            Out::Strings(vec!["1".into(), "no-such-item".into()]),
        )],
    )
    .unwrap();
    let result = run(&rows);
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains(
            "rows.parquet: column \"item_id\", row 1: item \"no-such-item\" is not in the catalog"
        ),
        "{stderr}"
    );
}

/// A copy of the shipped catalog with `change` applied, loaded by a server.
fn startup_error(change: impl FnOnce(&Path)) -> String {
    let catalog = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(shipped_models().join("catalog")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), catalog.path().join(entry.file_name())).unwrap();
    }
    change(catalog.path());
    let mut config = config_for(&shipped_models());
    config.ranking.catalog = catalog.path().to_path_buf();
    match cascade::state::AppState::load(config) {
        Ok(_) => panic!("the server started"),
        Err(e) => e.to_string(),
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn a_bad_schema_or_snapshot_stops_the_server_naming_file_and_place() {
    let e = startup_error(|dir| {
        edit(
            &dir.join("schema.toml"),
            "fields.year = { type = \"number\" }",
            "fields.year = { type = \"decimal\" }",
        )
    });
    assert!(
        e.starts_with("catalog schema.toml: items.fields.year.type: \"decimal\" is not a type"),
        "{e}"
    );
    let e = startup_error(|dir| {
        edit(
            &dir.join("schema.toml"),
            "fields.year = { type = \"number\" }",
            "fields.year = { type = \"number\" }\nfields.price = { type = \"number\" }",
        )
    });
    assert!(
        e.starts_with("catalog items.parquet: no column \"price\""),
        "{e}"
    );
    let e = startup_error(|dir| {
        // Both vectors, so that the schema itself stays consistent.
        for _ in 0..2 {
            edit(
                &dir.join("schema.toml"),
                "fields.embedding = { type = \"vector\", dim = 32 }",
                "fields.embedding = { type = \"vector\", dim = 31 }",
            )
        }
    });
    assert!(
        e.starts_with(
            "catalog items.parquet: column \"embedding\", row 0: has 32 values, the schema says 31"
        ),
        "{e}"
    );
    let e = startup_error(|dir| std::fs::write(dir.join("users.parquet"), b"not parquet").unwrap());
    assert!(
        e.starts_with("catalog users.parquet: not a readable Parquet file"),
        "{e}"
    );
}

#[test]
fn a_bad_feature_expression_is_refused_naming_model_feature_and_place() {
    let repo = temp_repo();
    edit(
        &repo.path().join("ranker/config.toml"),
        "expr = \"abs(coalesce(user.age, ctx.age) - item.mean_rater_age)\"",
        "expr = \"abs(coalesce(user.age, ctx.age) - item.mean_rater_ag)\"",
    );
    let e = match cascade::state::AppState::load(config_for(repo.path())) {
        Ok(_) => panic!("the server started"),
        Err(e) => e.to_string(),
    };
    assert!(e.starts_with("ranker/1: features: feature \"age_gap\": items have no field \"mean_rater_ag\", at character 35"), "{e}");
    // A category used as a number.
    let repo = temp_repo();
    edit(
        &repo.path().join("ranker/config.toml"),
        "expr = \"code(user.occupation)\"",
        "expr = \"user.occupation + 1\"",
    );
    let e = match cascade::state::AppState::load(config_for(repo.path())) {
        Ok(_) => panic!("the server started"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(
            "feature \"user_occupation\": this is a category of \"occupation\", not a number"
        ),
        "{e}"
    );
}

/// The shop app's configuration, its paths made absolute.
fn shop_config() -> cascade::config::Config {
    let root = project_root();
    let mut c = cascade::config::Config::load(
        Some(&root.join("examples/shop/config.toml")),
        Vec::<(String, String)>::new(),
    )
    .unwrap();
    c.models.repository = root.join(&c.models.repository);
    c.ranking.catalog = root.join(&c.ranking.catalog);
    c.server.drain_delay_ms = 0;
    c.state.dir = crate::common::fresh_state_dir();
    c
}

/// A second app of another domain, from files alone: it ranks known and
/// new users under its rules (nothing out of stock, at most two items per
/// brand), and serves its models through the inference protocol.
#[tokio::test]
async fn the_shop_app_ranks_under_its_rules() {
    use serde_json::json;
    let s = crate::common::TestServer::start(shop_config()).await;
    let catalog = &s.state.pipeline.as_ref().unwrap().catalog();
    let field = |name: &str| match catalog
        .items
        .slot(catalog.schema.items.field(name).unwrap().0)
    {
        cascade::data::table::Slot::Row { at, .. } => at,
        other => panic!("{other:?}"),
    };
    let (in_stock, brand) = (field("in_stock"), field("brand"));
    let users: Vec<String> = catalog
        .users
        .base_ids()
        .iter()
        .take(40)
        .map(String::from)
        .collect();
    let mut answers = Vec::new();
    for u in &users {
        answers.push((
            true,
            s.post_json(
                "/v1/rank",
                &json!({"user_id": u, "k": 10, "context": {"device": "app"}, "debug": true}),
            )
            .await,
        ));
    }
    answers.push((false, s.post_json("/v1/rank", &json!({"k": 10})).await));
    for (known, r) in answers {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        if known {
            assert!(v["fallback"].is_null(), "{v}");
            assert_eq!(
                v["models"],
                json!({"filter": "filter@1", "ranker": "ranker@1"})
            );
            let stages: Vec<&str> = v["stages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap())
                .collect();
            assert_eq!(stages, ["retrieve", "rules", "filter", "rerank", "select"]);
        } else {
            assert_eq!(v["fallback"], "cold_start");
        }
        let items: Vec<u32> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| catalog.items.row(i["item_id"].as_str().unwrap()).unwrap())
            .collect();
        assert_eq!(items.len(), 10, "{v}");
        let mut per_brand = std::collections::HashMap::new();
        for &row in &items {
            assert_eq!(
                catalog.items.scalar(row, in_stock),
                1.0,
                "out of stock: {v}"
            );
            *per_brand
                .entry(catalog.items.scalar(row, brand) as u32)
                .or_insert(0) += 1;
        }
        assert!(per_brand.values().all(|&n| n <= 2), "{per_brand:?}");
    }
    // The inference protocol answers with the golden scores.
    let g: cascade::model::golden::GoldenSet = serde_json::from_str(
        &std::fs::read_to_string(project_root().join("examples/shop/models/ranker/1/golden.json"))
            .unwrap(),
    )
    .unwrap();
    let width = g.inputs[0].len();
    let r = s
        .post_json(
            "/v2/models/ranker/infer",
            &json!({"inputs": [{"name": "features", "shape": [g.inputs.len(), width], "datatype": "FP32",
                                "data": g.inputs.iter().flatten().collect::<Vec<_>>()}]}),
        )
        .await;
    assert_eq!(r.status, 200);
    let scores = r.json()["outputs"][0]["data"].clone();
    for (got, want) in scores.as_array().unwrap().iter().zip(&g.outputs) {
        assert!((got.as_f64().unwrap() as f32 - want).abs() <= 1e-5);
    }
}

/// The shop's training matrix came from `cascade features`: its golden
/// rows (with their timestamps) give its golden inputs again.
#[test]
fn the_shop_golden_inputs_are_what_the_features_command_computes() {
    let c = shop_config();
    let catalog = Catalog::load(&c.ranking.catalog).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for role in ["filter", "ranker"] {
        let root = project_root().join("examples/shop/models").join(role);
        let g: cascade::model::golden::GoldenSet =
            serde_json::from_str(&std::fs::read_to_string(root.join("1/golden.json")).unwrap())
                .unwrap();
        let rows = dir.path().join("rows.parquet");
        write(
            &rows,
            vec![
                (
                    "user_id",
                    Out::OptStrings(
                        g.rows
                            .iter()
                            .map(|r| r["user_id"].as_str().map(String::from))
                            .collect(),
                    ),
                ),
                (
                    "item_id",
                    Out::OptStrings(
                        g.rows
                            .iter()
                            .map(|r| r["item_id"].as_str().map(String::from))
                            .collect(),
                    ),
                ),
                (
                    "timestamp",
                    Out::OptF64(g.rows.iter().map(|r| r["timestamp"].as_f64()).collect()),
                ),
                (
                    "device",
                    Out::OptStrings(
                        g.rows
                            .iter()
                            .map(|r| r["context"]["device"].as_str().map(String::from))
                            .collect(),
                    ),
                ),
            ],
        )
        .unwrap();
        let spec = ModelSpec::parse(
            &std::fs::read_to_string(root.join("config.toml")).unwrap(),
            "c",
        )
        .unwrap();
        let out = dir.path().join("out.parquet");
        cascade::offline::run(&catalog, &spec.input.unwrap().features, &rows, None, &out).unwrap();
        let (_, matrix) = read_matrix(&out);
        for (got, want) in matrix.iter().zip(&g.inputs) {
            for (a, b) in got.iter().zip(want) {
                assert_eq!(a.to_bits(), b.to_bits(), "{role}: {got:?} vs {want:?}");
            }
        }
    }
}

/// One command serves the shop app: `cascade serve --config examples/shop/config.toml`.
#[test]
fn the_shop_app_starts_with_one_command() {
    let mut child = crate::lifecycle::Reaped(
        Command::new(env!("CARGO_BIN_EXE_cascade"))
            .args([
                "serve",
                "--config",
                "examples/shop/config.toml",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .current_dir(project_root())
            .env("CASCADE_STATE__DIR", crate::common::fresh_state_dir())
            .env("RUST_LOG", "info")
            .env("CASCADE_SERVER__DRAIN_DELAY_MS", "0")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let public: std::net::SocketAddr = loop {
        let line = lines
            .next()
            .expect("the server logged its address")
            .unwrap();
        if let Some(rest) = line.split("public=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(crate::common::send(
        public,
        "POST",
        "/v1/rank",
        &[("Content-Type", "application/json")],
        br#"{"user_id": "c00001", "k": 5}"#,
    ));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 5);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}

/// `cascade features --events`: live features for historical rows replay
/// the interactions in time order, and each row sees exactly the ones
/// before its own timestamp.
#[test]
fn offline_live_features_replay_the_interactions_before_each_row() {
    let catalog = Catalog::load(&shipped_models().join("catalog")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400_000.0;
    let t0 = 1.0e12; // a day boundary is not needed: buckets are whole UTC days
    let events = dir.path().join("events.parquet");
    // (user, item, value, time)
    let log = [
        ("a", "1", 5.0, t0),
        ("b", "1", 4.0, t0 + 1.0),
        ("c", "1", 2.0, t0 + 2.0),
        ("a", "2", 5.0, t0 + 3.0 * day),
        ("b", "1", 5.0, t0 + 40.0 * day),
    ];
    crate::common::write_interactions(&events, &log);
    // Rows out of time order, to show the replay sorts them.
    let rows_at = [
        ("a", "1", t0 + 41.0 * day),
        ("a", "1", t0 + 2.0),
        ("z", "2", t0 + 4.0 * day),
        ("a", "1", t0),
    ];
    let rows = dir.path().join("rows.parquet");
    write(
        &rows,
        vec![
            (
                "user_id",
                Out::Strings(rows_at.iter().map(|r| r.0.to_string()).collect()),
            ),
            (
                "item_id",
                Out::Strings(rows_at.iter().map(|r| r.1.to_string()).collect()),
            ),
            (
                "timestamp",
                Out::OptF64(rows_at.iter().map(|r| Some(r.2)).collect()),
            ),
        ],
    )
    .unwrap();
    let decls: Vec<cascade::data::features::FeatureDecl> = [
        (
            "pos30",
            "count(item, kind = 'rating', min_value = 4, last = '30d')",
        ),
        ("all60", "count(item, kind = 'rating')"),
        ("mine", "count(user, kind = 'rating', last = '7d')"),
        ("idle", "recency(user, kind = 'rating')"),
    ]
    .iter()
    .map(|(name, expr)| cascade::data::features::FeatureDecl {
        name: name.to_string(),
        expr: expr.to_string(),
        default: -1.0,
    })
    .collect();
    let out = dir.path().join("out.parquet");
    let run = |events| cascade::offline::run(&catalog, &decls, &rows, events, &out);
    let e = run(None).unwrap_err();
    assert!(e.contains("--events"), "{e}");
    assert_eq!(run(Some(&events)), Ok(4));
    let (_, m) = read_matrix(&out);
    let days = |ms: f64| (ms / day) as f32;
    // Day 41: the day-0 ratings left the 30-day window (not the 60-day
    // one of all ratings); day 40's is in.
    assert_eq!(m[0], [1.0, 4.0, 0.0, days(38.0 * day)]);
    // Two ms in: the ratings at 0 and 1 ms only (the one at 2 ms is the
    // row's own moment, not before it).
    assert_eq!(m[1], [2.0, 2.0, 1.0, days(2.0)]);
    // A user with no events: counts 0, recency missing (the default).
    assert_eq!(m[2], [1.0, 1.0, 0.0, -1.0]);
    assert_eq!(m[3], [0.0, 0.0, 0.0, -1.0]);
}
