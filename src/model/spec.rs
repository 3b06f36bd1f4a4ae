//! `models/<name>/config.toml`: what a model is for and the features it
//! takes, in order, each a named expression over the app's data (see
//! `data::features`). The order is the contract between the training
//! script and the server's feature assembly.

use std::collections::HashSet;

use serde::Deserialize;

use super::{DataType, ModelError, TensorSpec};
use crate::data::features::FeatureDecl;

/// What the ranking pipeline uses a model for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Lightweight scorer that cuts retrieved candidates down.
    Filter,
    /// Heavy re-ranker; its rows are bulked by the dynamic batcher.
    Ranker,
    /// Ranker for users without history.
    ColdStart,
    /// Served through the inference protocol only.
    #[default]
    Generic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default)]
    pub role: Role,
    #[serde(default)]
    pub description: String,
    /// The feature matrix input; required for ranking roles.
    pub input: Option<FeatureInput>,
    /// The score output; required for ranking roles.
    pub output: Option<ScoreOutput>,
    #[serde(default)]
    pub batching: Batching,
}

/// A 2-D FP32 input `[N, features.len()]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureInput {
    pub name: String,
    pub features: Vec<FeatureDecl>,
}

impl FeatureInput {
    /// The features' names, in column order.
    pub fn names(&self) -> Vec<String> {
        self.features.iter().map(|f| f.name.clone()).collect()
    }
}

/// An FP32 output `[N, 1]` (or `[N]`) holding one score per row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreOutput {
    pub name: String,
}

/// Dynamic batching policy for this model.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batching {
    /// A batch closes when it holds this many rows…
    pub max_batch_rows: usize,
    /// …or when its oldest row has waited this long.
    pub max_wait_us: u64,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_batch_rows: 1024,
            max_wait_us: 500,
        }
    }
}

impl ModelSpec {
    /// Parses and checks a model's `config.toml`; `shown` names the file in errors.
    pub fn parse(text: &str, shown: &str) -> Result<ModelSpec, ModelError> {
        let spec: ModelSpec =
            toml::from_str(text).map_err(|e| ModelError::load(shown, e.message()))?;
        spec.check(shown)?;
        Ok(spec)
    }

    fn check(&self, shown: &str) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::load(shown, m));
        if self.role != Role::Generic && (self.input.is_none() || self.output.is_none()) {
            return bad(format!(
                "role \"{}\" needs an [input] with features and an [output]",
                serde_json::to_value(self.role)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("?")
            ));
        }
        if let Some(input) = &self.input {
            if input.features.is_empty() {
                return bad("input.features: must name at least one feature".into());
            }
            let mut seen = HashSet::new();
            for f in &input.features {
                if !seen.insert(&f.name) {
                    return bad(format!("input.features: \"{}\" appears twice", f.name));
                }
            }
        }
        if self.batching.max_batch_rows == 0 {
            return bad("batching.max_batch_rows: must be at least 1".into());
        }
        Ok(())
    }

    /// Checks that the loaded model really has the declared feature input and
    /// score output.
    pub fn check_signature(
        &self,
        inputs: &[TensorSpec],
        outputs: &[TensorSpec],
        shown: &str,
    ) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::load(shown, m));
        if let Some(input) = &self.input {
            let Some(spec) = inputs.iter().find(|s| s.name == input.name) else {
                let names: Vec<_> = inputs.iter().map(|s| s.name.as_str()).collect();
                return bad(format!(
                    "input.name: the model has no input \"{}\" (it has {names:?})",
                    input.name
                ));
            };
            if inputs.len() != 1 {
                return bad(format!(
                    "input: a feature model must have exactly one input, this one has {}",
                    inputs.len()
                ));
            }
            let width = input.features.len();
            if spec.datatype != DataType::F32
                || spec.shape.len() != 2
                || spec.shape[1] != Some(width)
            {
                return bad(format!(
                    "input.features: {width} features declared, but the model input \"{}\" is {} {:?}; expected FP32 [-1, {width}]",
                    spec.name,
                    spec.datatype,
                    spec.wire_shape()
                ));
            }
        }
        if let Some(output) = &self.output {
            let Some(spec) = outputs.iter().find(|s| s.name == output.name) else {
                let names: Vec<_> = outputs.iter().map(|s| s.name.as_str()).collect();
                return bad(format!(
                    "output.name: the model has no output \"{}\" (it has {names:?})",
                    output.name
                ));
            };
            let one_per_row = match spec.shape.as_slice() {
                [_] => true,
                [_, last] => *last == Some(1),
                _ => false,
            };
            if spec.datatype != DataType::F32 || !one_per_row {
                return bad(format!(
                    "output.name: \"{}\" is {} {:?}; a score output must be FP32 [-1, 1] or [-1]",
                    spec.name,
                    spec.datatype,
                    spec.wire_shape()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANKER: &str = r#"
role = "ranker"
description = "test"
[input]
name = "features"
features = [
  { name = "a", expr = "item.x" },
  { name = "b", expr = "log1p(item.y)", default = 1.5 },
  { name = "c", expr = "ctx.hour" },
]
[output]
name = "score"
[batching]
max_batch_rows = 256
max_wait_us = 300
"#;

    fn spec(name: &str, dt: DataType, shape: &[Option<usize>]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype: dt,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn parses_a_ranker_config() {
        let s = ModelSpec::parse(RANKER, "ranker/config.toml").unwrap();
        assert_eq!(s.role, Role::Ranker);
        let input = s.input.as_ref().unwrap();
        assert_eq!(input.names(), ["a", "b", "c"]);
        assert_eq!(input.features[1].expr, "log1p(item.y)");
        assert_eq!(input.features[1].default, 1.5);
        assert_eq!(s.batching.max_batch_rows, 256);
    }

    #[test]
    fn rejects_unknown_keys_and_duplicate_features() {
        let e = ModelSpec::parse("rolee = \"ranker\"", "m/config.toml").unwrap_err();
        assert!(e.to_string().contains("rolee"), "{e}");
        let dup = RANKER.replace("name = \"c\"", "name = \"a\"");
        let e = ModelSpec::parse(&dup, "m/config.toml").unwrap_err();
        assert!(e.to_string().contains("\"a\" appears twice"), "{e}");
        let e = ModelSpec::parse("role = \"filter\"", "m/config.toml").unwrap_err();
        assert!(e.to_string().contains("needs an [input]"), "{e}");
    }

    #[test]
    fn signature_must_match_features() {
        let s = ModelSpec::parse(RANKER, "m").unwrap();
        let out = [spec("score", DataType::F32, &[None, Some(1)])];
        let ok = [spec("features", DataType::F32, &[None, Some(3)])];
        s.check_signature(&ok, &out, "m").unwrap();
        let wide = [spec("features", DataType::F32, &[None, Some(4)])];
        let e = s.check_signature(&wide, &out, "m").unwrap_err();
        assert!(e.to_string().contains("3 features declared"), "{e}");
        let e = s
            .check_signature(&ok, &[spec("prob", DataType::F32, &[None, Some(1)])], "m")
            .unwrap_err();
        assert!(e.to_string().contains("no output \"score\""), "{e}");
    }
}
