//! Golden sets: inputs and expected outputs written by the training script
//! (`models/<name>/<version>/golden.json`, outputs computed by Python
//! onnxruntime). A version whose outputs drift from its golden set beyond
//! the tolerance is not allowed to serve.

use serde::Deserialize;

use super::backend::Backend;
use super::spec::ModelSpec;
use super::{ModelError, Tensor, TensorData};

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
    pub inputs: Vec<Vec<f32>>,
    pub outputs: Vec<f32>,
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
}

impl GoldenSet {
    pub fn parse(text: &str, shown: &str) -> Result<GoldenSet, ModelError> {
        let g: GoldenSet =
            serde_json::from_str(text).map_err(|e| ModelError::load(shown, e.to_string()))?;
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
        };
        let (Some(input), Some(output)) = (&spec.input, &spec.output) else {
            return fail("model declares no feature input / score output".into());
        };
        if !self.features.is_empty() && self.features != input.features {
            return fail("golden features differ from config.toml input.features".into());
        }
        let tensor = match self.input_tensor(&input.name) {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        let outputs = match backend.run(vec![tensor]) {
            Ok(o) => o,
            Err(e) => return fail(e.to_string()),
        };
        let Some(TensorData::F32(scores)) = outputs
            .iter()
            .find(|t| t.name == output.name)
            .map(|t| &t.data)
        else {
            return fail(format!("output \"{}\" missing or not FP32", output.name));
        };
        if scores.len() != self.outputs.len() {
            return fail(format!(
                "{} scores for {} golden rows",
                scores.len(),
                self.outputs.len()
            ));
        }
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
        Vetting {
            passed,
            rows: self.outputs.len(),
            max_abs_error: max_err,
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
