//! `POST /v2/models/{model}/infer` traffic (Open Inference Protocol, JSON tensors).
//!
//! Rows are real feature vectors: the `inputs` of the model's golden set
//! (`models/<model>/<version>/golden.json`, highest version that has one).
//! Request `j` carries `batch` consecutive rows starting at row `j mod rows`
//! (wrapping), so successive requests differ while staying reproducible.
//! All bodies are serialised up front.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::{read_json, Prepared, Source};

#[derive(Deserialize)]
struct Golden {
    inputs: Vec<Vec<f32>>,
}

/// `[input] name` of the model's `config.toml` (the ONNX input to feed).
#[derive(Deserialize)]
struct ModelConfig {
    input: Option<InputSection>,
}

#[derive(Deserialize)]
struct InputSection {
    name: String,
}

pub struct InferSource {
    bodies: Vec<Bytes>,
    next: usize,
    path: Arc<str>,
}

impl InferSource {
    pub fn new(models_dir: &Path, model: &str, batch: usize) -> anyhow::Result<InferSource> {
        if batch == 0 {
            bail!("--batch must be >= 1");
        }
        if model.is_empty() || model.contains(['/', '\\', '.', '?', '#', ' ']) {
            bail!("--model {model:?}: expected a plain model name such as ranker");
        }
        let model_dir = models_dir.join(model);
        let golden_path = latest_golden(&model_dir)?;
        let golden: Golden = read_json(&golden_path)?;
        let width = golden.inputs.first().map_or(0, Vec::len);
        if width == 0 || golden.inputs.iter().any(|r| r.len() != width) {
            bail!(
                "{}: \"inputs\" must be non-empty rows of equal length",
                golden_path.display()
            );
        }
        let input_name = input_name(&model_dir.join("config.toml"))?;

        let rows = &golden.inputs;
        let bodies = (0..rows.len())
            .map(|start| {
                let data: Vec<f32> = (0..batch).flat_map(|j| rows[(start + j) % rows.len()].iter().copied()).collect();
                let body = json!({
                    "inputs": [{"name": input_name, "shape": [batch, width], "datatype": "FP32", "data": data}]
                });
                Bytes::from(serde_json::to_vec(&body).expect("JSON values always serialise"))
            })
            .collect();
        Ok(InferSource {
            bodies,
            next: 0,
            path: Arc::from(format!("/v2/models/{model}/infer")),
        })
    }
}

impl Source for InferSource {
    fn next_request(&mut self) -> Prepared {
        let body = self.bodies[self.next % self.bodies.len()].clone();
        self.next += 1;
        Prepared {
            path: self.path.clone(),
            body,
            kind: "infer",
        }
    }
}

/// `golden.json` of the highest numeric version folder that has one.
fn latest_golden(model_dir: &Path) -> anyhow::Result<PathBuf> {
    let entries = std::fs::read_dir(model_dir)
        .with_context(|| format!("model {}: cannot read its folder", model_dir.display()))?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version: u64 = e.file_name().to_str()?.parse().ok()?;
            let golden = e.path().join("golden.json");
            golden.is_file().then_some((version, golden))
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, p)| p)
        .with_context(|| {
            format!(
                "{}: no <version>/golden.json to take rows from",
                model_dir.display()
            )
        })
}

fn input_name(config: &Path) -> anyhow::Result<String> {
    if !config.is_file() {
        return Ok("features".to_string());
    }
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let cfg: ModelConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    Ok(cfg.input.map_or_else(|| "features".to_string(), |i| i.name))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn builds_batches_of_golden_rows() {
        let dir = crate::scenario::models_dir(None);
        let mut src = InferSource::new(&dir, "ranker", 100).unwrap();
        let golden: Golden = read_json(&latest_golden(&dir.join("ranker")).unwrap()).unwrap();
        let (rows, width) = (golden.inputs.len(), golden.inputs[0].len());

        let first = src.next_request();
        assert_eq!(&*first.path, "/v2/models/ranker/infer");
        assert_eq!(first.kind, "infer");
        let v: Value = serde_json::from_slice(&first.body).unwrap();
        let input = &v["inputs"][0];
        assert_eq!(input["name"], "features");
        assert_eq!(input["datatype"], "FP32");
        assert_eq!(input["shape"], json!([100, width]));
        let data = input["data"].as_array().unwrap();
        assert_eq!(data.len(), 100 * width);
        // Row 0 first, then wrapping round the golden set.
        assert_eq!(data[0].as_f64().unwrap() as f32, golden.inputs[0][0]);
        assert_eq!(
            data[rows * width].as_f64().unwrap() as f32,
            golden.inputs[0][0]
        );

        let second: Value = serde_json::from_slice(&src.next_request().body).unwrap();
        assert_eq!(
            second["inputs"][0]["data"][0].as_f64().unwrap() as f32,
            golden.inputs[1][0]
        );
        for _ in 2..rows {
            src.next_request();
        }
        assert_eq!(
            src.next_request().body,
            first.body,
            "cycles after one pass over the rows"
        );
    }

    #[test]
    fn refuses_bad_models_and_batches() {
        let dir = crate::scenario::models_dir(None);
        assert!(InferSource::new(&dir, "ranker", 0).is_err());
        assert!(InferSource::new(&dir, "no_such_model", 1).is_err());
        assert!(InferSource::new(&dir, "../catalog", 1).is_err());
    }
}
