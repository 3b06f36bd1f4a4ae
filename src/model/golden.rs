//! Golden sets: inputs and expected outputs written by the training script
//! (`models/<name>/<version>/golden.json`, outputs computed by Python
//! onnxruntime). A version without one, or whose outputs drift from it
//! beyond the tolerance, is not allowed to serve.
//!
//! Two forms. A feature model (`[input]` and `[output]` in its config.toml)
//! lists feature rows and one expected score per row:
//!
//! ```json
//! {"tolerance": 1e-4, "inputs": [[0.1, 0.2], [0.3, 0.4]], "outputs": [0.51, 0.77]}
//! ```
//!
//! and, optionally, a label per row (`"labels": [0, 1]`, with `"rows"`
//! saying where each row came from): vetting then also measures the
//! version's ranking quality on them (see [`super::quality`]).
//!
//! A `generic` model lists named tensors, as the inference protocol spells
//! them (flat `data`), and the outputs to compare:
//!
//! ```json
//! {"tolerance": 1e-4, "tensors": {
//!   "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
//!   "outputs": [{"name": "y", "data": [0.5]}]}}
//! ```

use std::sync::Arc;

use serde::Deserialize;

use super::backend::Backend;
use super::quality::{golden_set_digest, Labelled, Quality};
use super::spec::ModelSpec;
use super::{DataType, ModelError, Tensor, TensorData};

#[derive(Debug, Clone, Deserialize)]
pub struct GoldenSet {
    #[serde(default = "default_tolerance")]
    pub tolerance: f32,
    /// Feature names, in order; must equal the model's `input.features`.
    #[serde(default)]
    pub features: Vec<String>,
    /// Where each row came from (user, item, context), for skew tests.
    #[serde(default)]
    pub rows: Vec<serde_json::Value>,
    /// Feature rows and their expected scores (feature models).
    #[serde(default)]
    pub inputs: Vec<Vec<f32>>,
    #[serde(default)]
    pub outputs: Vec<f32>,
    /// One label per feature row (1 = relevant), checked by [`GoldenSet::parse`].
    #[serde(skip)]
    pub labels: Option<Vec<bool>>,
    #[serde(default, rename = "labels")]
    raw_labels: Option<Vec<serde_json::Value>>,
    /// Named tensors in and out (generic models).
    #[serde(default)]
    pub tensors: Option<GoldenTensors>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenTensors {
    pub inputs: Vec<GoldenInput>,
    pub outputs: Vec<GoldenOutput>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenInput {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: String,
    /// Flat, row-major; booleans as 0/1.
    pub data: Vec<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenOutput {
    pub name: String,
    pub data: Vec<f64>,
}

fn default_tolerance() -> f32 {
    1e-4
}

/// The outcome of vetting one version, shown by the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Vetting {
    pub passed: bool,
    pub rows: usize,
    pub max_abs_error: f32,
    pub detail: String,
    /// Ranking quality on the labelled golden rows; `None` without labels
    /// or with one class only.
    pub quality: Option<Quality>,
}

impl GoldenSet {
    pub fn parse(text: &str, shown: &str) -> Result<GoldenSet, ModelError> {
        let mut g: GoldenSet =
            serde_json::from_str(text).map_err(|e| ModelError::load(shown, e.to_string()))?;
        if let Some(t) = &g.tensors {
            if g.raw_labels.is_some() {
                return Err(ModelError::load(
                    shown,
                    "labels: only for feature rows (inputs/outputs), not tensors",
                ));
            }
            if !g.inputs.is_empty() || !g.outputs.is_empty() {
                return Err(ModelError::load(
                    shown,
                    "give either feature rows (inputs/outputs) or tensors, not both",
                ));
            }
            if t.inputs.is_empty() || t.outputs.is_empty() {
                return Err(ModelError::load(
                    shown,
                    "tensors: need at least one input and one output",
                ));
            }
            return Ok(g);
        }
        if g.inputs.len() != g.outputs.len() || g.inputs.is_empty() {
            return Err(ModelError::load(
                shown,
                format!(
                    "{} input rows but {} outputs; need the same, at least one",
                    g.inputs.len(),
                    g.outputs.len()
                ),
            ));
        }
        g.labels = g
            .raw_labels
            .take()
            .map(|raw| parse_labels(&raw, g.inputs.len()))
            .transpose()
            .map_err(|e| ModelError::load(shown, e))?;
        Ok(g)
    }

    /// The golden inputs as one `[rows, width]` tensor named `input`.
    pub fn input_tensor(&self, input: &str) -> Result<Tensor, String> {
        let width = self.inputs[0].len();
        if let Some((i, _)) = self
            .inputs
            .iter()
            .enumerate()
            .find(|(_, r)| r.len() != width)
        {
            return Err(format!("golden row {i} has a different width"));
        }
        let flat: Vec<f32> = self.inputs.iter().flatten().copied().collect();
        Ok(Tensor::new(
            input,
            vec![self.inputs.len(), width],
            TensorData::F32(flat),
        ))
    }

    /// Runs the golden inputs through `backend` and compares the scores.
    pub fn vet(&self, spec: &ModelSpec, backend: &dyn Backend) -> Vetting {
        let fail = |detail: String| Vetting {
            passed: false,
            rows: self.inputs.len(),
            max_abs_error: f32::NAN,
            detail,
            quality: None,
        };
        if let Some(tensors) = &self.tensors {
            return self.vet_tensors(tensors, backend);
        }
        let (Some(input), Some(output)) = (&spec.input, &spec.output) else {
            return fail(
                "model declares no feature input / score output: its golden set needs the \"tensors\" form"
                    .into(),
            );
        };
        if !self.features.is_empty() && self.features != input.names() {
            return fail("golden features differ from config.toml input.features".into());
        }
        let tensor = match self.input_tensor(&input.name) {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        let sample = self.labels.clone().map(|labels| Labelled {
            width: self.inputs[0].len(),
            inputs: self.inputs.concat(),
            labels,
        });
        let scores = match scores(backend, tensor, &output.name, self.outputs.len()) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let mut max_err = 0f32;
        let mut worst = 0;
        for (i, (got, want)) in scores.iter().zip(&self.outputs).enumerate() {
            let err = (got - want).abs();
            if err > max_err || err.is_nan() {
                max_err = if err.is_nan() { f32::INFINITY } else { err };
                worst = i;
            }
        }
        let passed = max_err <= self.tolerance;
        let quality = sample.and_then(|sample| {
            let digest = golden_set_digest(&self.rows, &sample.labels);
            Quality::measure(&scores, Arc::new(sample), digest)
        });
        Vetting {
            passed,
            rows: self.outputs.len(),
            max_abs_error: max_err,
            quality,
            detail: if passed {
                format!("{} rows within {}", self.outputs.len(), self.tolerance)
            } else {
                format!(
                    "row {worst}: got {}, expected {} (tolerance {})",
                    scores[worst], self.outputs[worst], self.tolerance
                )
            },
        }
    }
}

impl GoldenSet {
    /// The tensor form: every listed output within the tolerance.
    fn vet_tensors(&self, t: &GoldenTensors, backend: &dyn Backend) -> Vetting {
        let outcome = (|| -> Result<(usize, f32), String> {
            let inputs = t
                .inputs
                .iter()
                .enumerate()
                .map(|(i, g)| g.tensor().map_err(|e| format!("tensors.inputs[{i}]: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let produced = backend.run(inputs).map_err(|e| e.to_string())?;
            let mut compared = 0;
            let mut max_err = 0f32;
            for (i, want) in t.outputs.iter().enumerate() {
                let got = produced
                    .iter()
                    .find(|p| p.name == want.name)
                    .ok_or_else(|| format!("tensors.outputs[{i}]: no output \"{}\"", want.name))?;
                let got = as_f64(&got.data);
                if got.len() != want.data.len() {
                    return Err(format!(
                        "tensors.outputs[{i}]: {} values, expected {}",
                        got.len(),
                        want.data.len()
                    ));
                }
                for (j, (g, w)) in got.iter().zip(&want.data).enumerate() {
                    let err = (g - w).abs() as f32;
                    if err.is_nan() || err > self.tolerance {
                        return Err(format!(
                            "output \"{}\"[{j}]: got {g}, expected {w} (tolerance {})",
                            want.name, self.tolerance
                        ));
                    }
                    max_err = max_err.max(err);
                }
                compared += got.len();
            }
            Ok((compared, max_err))
        })();
        match outcome {
            Ok((values, max_abs_error)) => Vetting {
                passed: true,
                rows: values,
                max_abs_error,
                detail: format!("{values} output values within {}", self.tolerance),
                quality: None,
            },
            Err(detail) => Vetting {
                passed: false,
                rows: 0,
                max_abs_error: f32::NAN,
                detail,
                quality: None,
            },
        }
    }
}

/// Runs `input` through `backend` and returns the FP32 output `output`,
/// one score per row of the `rows` expected.
pub(crate) fn scores(
    backend: &dyn Backend,
    input: Tensor,
    output: &str,
    rows: usize,
) -> Result<Vec<f32>, String> {
    let produced = backend.run(vec![input]).map_err(|e| e.to_string())?;
    let Some(TensorData::F32(scores)) = produced
        .into_iter()
        .find(|t| t.name == output)
        .map(|t| t.data)
    else {
        return Err(format!("output \"{output}\" missing or not FP32"));
    };
    if scores.len() != rows {
        return Err(format!("{} scores for {rows} golden rows", scores.len()));
    }
    Ok(scores)
}

/// `labels`: one 0 or 1 per input row.
fn parse_labels(raw: &[serde_json::Value], rows: usize) -> Result<Vec<bool>, String> {
    if raw.len() != rows {
        return Err(format!(
            "labels: {} labels for {rows} input rows; need one per row",
            raw.len()
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, v)| match v.as_f64() {
            Some(0.0) => Ok(false),
            Some(1.0) => Ok(true),
            _ => Err(format!("labels[{i}]: {v} is not 0 or 1")),
        })
        .collect()
}

impl GoldenInput {
    fn tensor(&self) -> Result<Tensor, String> {
        let dt = DataType::parse(&self.datatype)
            .ok_or_else(|| format!("datatype \"{}\" is not supported", self.datatype))?;
        let count: usize = self.shape.iter().product();
        if count != self.data.len() {
            return Err(format!(
                "shape {:?} needs {count} values, got {}",
                self.shape,
                self.data.len()
            ));
        }
        let d = &self.data;
        let data = match dt {
            DataType::Bool => TensorData::Bool(d.iter().map(|&x| x != 0.0).collect()),
            DataType::U8 => TensorData::U8(d.iter().map(|&x| x as u8).collect()),
            DataType::I8 => TensorData::I8(d.iter().map(|&x| x as i8).collect()),
            DataType::I32 => TensorData::I32(d.iter().map(|&x| x as i32).collect()),
            DataType::I64 => TensorData::I64(d.iter().map(|&x| x as i64).collect()),
            DataType::F32 => TensorData::F32(d.iter().map(|&x| x as f32).collect()),
            DataType::F64 => TensorData::F64(d.clone()),
        };
        Ok(Tensor::new(&self.name, self.shape.clone(), data))
    }
}

fn as_f64(data: &TensorData) -> Vec<f64> {
    match data {
        TensorData::Bool(v) => v.iter().map(|&b| b as u8 as f64).collect(),
        TensorData::U8(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::I8(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::F64(v) => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::GoldenSet;

    fn parse(labels: &str) -> Result<GoldenSet, String> {
        let text = format!(
            r#"{{"inputs": [[0.1], [0.2], [0.3]], "outputs": [0.1, 0.2, 0.3], "labels": {labels}}}"#
        );
        GoldenSet::parse(&text, "ranker/2/golden.json").map_err(|e| e.to_string())
    }

    #[test]
    fn labels_are_one_0_or_1_per_row() {
        assert_eq!(
            parse("[0, 1, 1]").unwrap().labels,
            Some(vec![false, true, true])
        );
        assert_eq!(
            parse("[0.0, 1.0, 0]").unwrap().labels,
            Some(vec![false, true, false])
        );
        let none = GoldenSet::parse(r#"{"inputs": [[0.1]], "outputs": [0.1]}"#, "g").unwrap();
        assert_eq!(none.labels, None);
        for (labels, error) in [
            (
                "[0, 1]",
                "labels: 2 labels for 3 input rows; need one per row",
            ),
            (
                "[0, 1, 1, 0]",
                "labels: 4 labels for 3 input rows; need one per row",
            ),
            ("[0, 2, 1]", "labels[1]: 2 is not 0 or 1"),
            ("[0, 1, true]", "labels[2]: true is not 0 or 1"),
            ("[0, 1, 0.5]", "labels[2]: 0.5 is not 0 or 1"),
            ("[0, \"1\", 1]", "labels[1]: \"1\" is not 0 or 1"),
        ] {
            assert_eq!(
                parse(labels).unwrap_err(),
                format!("ranker/2/golden.json: {error}")
            );
        }
        let e = GoldenSet::parse(
            r#"{"labels": [1], "tensors": {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": [{"name": "y", "data": [1]}]}}"#,
            "g/1/golden.json",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("g/1/golden.json: labels: "), "{e}");
    }
}
