//! Model monitoring without labels: the distribution of each input feature
//! and of the score over a window of recent rows, compared with the
//! reference profile the training script shipped beside the model
//! (`models/<name>/<version>/profile.json`), as a population stability
//! index (PSI) per feature and for the score. Exported as gauges, logged
//! when above the configured threshold, and the scores also feed a
//! Prometheus histogram. Only a sample of requests is observed, so the hot
//! path pays a coin flip for the rest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::metrics as m;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Share of ranking requests whose rows are observed (0 turns it off).
    pub sample_rate: f64,
    /// Rows per comparison window; PSI is computed and reset at its end.
    pub window_rows: u64,
    /// PSI above this is logged as a warning (0.1 = watch, 0.25 = act).
    pub psi_threshold: f64,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            sample_rate: 0.1,
            window_rows: 20_000,
            psi_threshold: 0.25,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ProfileFile {
    features: std::collections::HashMap<String, BinsFile>,
    score: Option<BinsFile>,
}

#[derive(Debug, Deserialize)]
struct BinsFile {
    bins: Vec<f32>,
    fractions: Vec<f64>,
    #[serde(default)]
    mean: Option<f64>,
    #[serde(default)]
    std: Option<f64>,
}

/// Quantile bins of one variable: `edges` (k+1 of them) and the expected
/// share of rows in each of the k bins.
#[derive(Debug, Clone)]
struct Bins {
    edges: Vec<f32>,
    expected: Vec<f64>,
}

impl Bins {
    fn from_file(b: BinsFile) -> Option<Bins> {
        if let Some(bins) = Bins::zero_one(&b) {
            return Some(bins);
        }
        (b.bins.len() == b.fractions.len() + 1 && !b.fractions.is_empty()).then_some(Bins {
            edges: b.bins,
            expected: b.fractions,
        })
    }

    /// A 0/1 feature (a category flag, a comparison): its quantile edges
    /// collapse to the one bin [0, 1], where every row lands and PSI is
    /// always 0, so a shift in it could never show. Its mean is the share
    /// of ones, which gives two exact bins, [0, 0.5) and [0.5, 1]. A
    /// variable in [0, 1] has variance mean × (1 − mean) only when every
    /// value is 0 or 1, which tells such a feature from a continuous one.
    fn zero_one(b: &BinsFile) -> Option<Bins> {
        let (mean, std) = (b.mean?, b.std?);
        let one_bin = b.bins == [0.0, 1.0] && b.fractions.len() == 1;
        let bernoulli = (std * std - mean * (1.0 - mean)).abs() <= 1e-3;
        (one_bin && (0.0..=1.0).contains(&mean) && bernoulli).then(|| Bins {
            edges: vec![0.0, 0.5, 1.0],
            expected: vec![1.0 - mean, mean],
        })
    }

    /// Bin k = [edges[k], edges[k+1]), the last closed; values outside the
    /// edges count in the first or last bin (as the profile was computed).
    fn index(&self, v: f32) -> usize {
        let inner = &self.edges[1..self.edges.len() - 1];
        // The edges are sorted: the inner edges at or below `v` are the
        // bin. Counted, not searched: for the ten-odd edges of a profile a
        // branch-free count beats a binary search's mispredictions (NaN
        // counts none, as the search found none).
        inner.iter().filter(|e| **e <= v).count()
    }
}

/// Population stability index of `observed` counts against `expected`
/// shares; empty bins are smoothed so the logarithm stays finite.
pub fn psi(expected: &[f64], observed: &[u64]) -> f64 {
    let total: u64 = observed.iter().sum();
    if total == 0 {
        return 0.0;
    }
    const EPS: f64 = 1e-4;
    expected
        .iter()
        .zip(observed)
        .map(|(&e, &o)| {
            let a = (o as f64 / total as f64).max(EPS);
            let e = e.max(EPS);
            (a - e) * (a / e).ln()
        })
        .sum()
}

struct Window {
    features: Vec<Vec<u64>>,
    score: Vec<u64>,
    rows: u64,
}

/// Monitoring state of one model version.
pub struct DriftMonitor {
    model: String,
    names: Vec<String>,
    features: Vec<Option<Bins>>,
    score: Option<Bins>,
    config: MonitoringConfig,
    window: Mutex<Window>,
    /// Cheap deterministic sampler: observe every n-th request.
    counter: AtomicU64,
    every: u64,
    /// `cascade_model_score{model}`, registered on first use.
    score_histogram: std::sync::OnceLock<metrics::Histogram>,
}

impl DriftMonitor {
    /// Reads `profile` (the text of profile.json) for a model whose input
    /// features are `names`, in order. Features missing from the profile are
    /// not monitored.
    pub fn new(
        model: &str,
        names: &[String],
        profile: &str,
        config: &MonitoringConfig,
    ) -> Result<DriftMonitor, String> {
        let mut file: ProfileFile = serde_json::from_str(profile).map_err(|e| e.to_string())?;
        let features: Vec<Option<Bins>> = names
            .iter()
            .map(|n| file.features.remove(n).and_then(Bins::from_file))
            .collect();
        let score = file.score.and_then(Bins::from_file);
        let window = Window {
            features: features
                .iter()
                .map(|b| vec![0; b.as_ref().map_or(0, |b| b.expected.len())])
                .collect(),
            score: vec![0; score.as_ref().map_or(0, |b| b.expected.len())],
            rows: 0,
        };
        let every = if config.sample_rate <= 0.0 {
            0
        } else {
            (1.0 / config.sample_rate.min(1.0)).round().max(1.0) as u64
        };
        Ok(DriftMonitor {
            model: model.to_string(),
            names: names.to_vec(),
            features,
            score,
            config: config.clone(),
            window: Mutex::new(window),
            counter: AtomicU64::new(0),
            every,
            score_histogram: std::sync::OnceLock::new(),
        })
    }

    /// Whether this request's rows should be observed.
    pub fn sample(&self) -> bool {
        self.every != 0
            && self
                .counter
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.every)
    }

    /// Adds a `[rows, width]` feature matrix and its scores to the window;
    /// at the window's end exports PSI and starts a new window.
    pub fn observe(&self, matrix: &[f32], scores: &[f32]) {
        let width = self.names.len();
        if width == 0 || matrix.len() != scores.len() * width {
            return;
        }
        let histogram = self
            .score_histogram
            .get_or_init(|| metrics::histogram!(m::MODEL_SCORE, "model" => self.model.clone()));
        for &s in scores {
            histogram.record(s as f64);
        }
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        for row in matrix.chunks_exact(width) {
            for (j, bins) in self.features.iter().enumerate() {
                if let Some(b) = bins {
                    w.features[j][b.index(row[j])] += 1;
                }
            }
        }
        if let Some(b) = &self.score {
            for &s in scores {
                let i = b.index(s);
                w.score[i] += 1;
            }
        }
        w.rows += scores.len() as u64;
        if w.rows >= self.config.window_rows {
            self.publish(&w);
            w.features.iter_mut().for_each(|c| c.fill(0));
            w.score.fill(0);
            w.rows = 0;
        }
    }

    fn publish(&self, w: &Window) {
        for (j, bins) in self.features.iter().enumerate() {
            let Some(b) = bins else { continue };
            let value = psi(&b.expected, &w.features[j]);
            metrics::gauge!(m::FEATURE_PSI, "model" => self.model.clone(), "feature" => self.names[j].clone())
                .set(value);
            if value > self.config.psi_threshold {
                tracing::warn!(
                    model = self.model,
                    feature = self.names[j],
                    psi = value,
                    rows = w.rows,
                    "feature drift above threshold"
                );
            }
        }
        if let Some(b) = &self.score {
            let value = psi(&b.expected, &w.score);
            metrics::gauge!(m::SCORE_PSI, "model" => self.model.clone()).set(value);
            if value > self.config.psi_threshold {
                tracing::warn!(
                    model = self.model,
                    psi = value,
                    rows = w.rows,
                    "score drift above threshold"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_is_zero_for_the_reference_and_grows_with_shift() {
        let expected = [0.25, 0.25, 0.25, 0.25];
        assert!(psi(&expected, &[250, 250, 250, 250]).abs() < 1e-12);
        let mild = psi(&expected, &[300, 250, 250, 200]);
        let strong = psi(&expected, &[700, 100, 100, 100]);
        assert!(mild > 0.0 && mild < 0.1, "{mild}");
        assert!(strong > 0.25, "{strong}");
        assert_eq!(psi(&expected, &[0, 0, 0, 0]), 0.0);
    }

    #[test]
    fn bins_follow_the_profile_convention() {
        let b = Bins {
            edges: vec![0.0, 1.0, 2.0, 3.0],
            expected: vec![0.3, 0.3, 0.4],
        };
        assert_eq!(b.index(-5.0), 0);
        assert_eq!(b.index(0.5), 0);
        assert_eq!(b.index(1.0), 1);
        assert_eq!(b.index(2.999), 2);
        assert_eq!(b.index(3.0), 2, "last bin closed");
        assert_eq!(b.index(99.0), 2);
        assert_eq!(b.index(f32::NAN), 0);
        // Repeated quantile edges (a value most rows share).
        let b = Bins {
            edges: vec![0.0, 0.0, 0.0, 1.0, 2.0],
            expected: vec![0.0, 0.5, 0.25, 0.25],
        };
        let search = |v: f32| b.edges[1..4].partition_point(|e| *e <= v);
        for v in [-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0] {
            assert_eq!(b.index(v), search(v), "{v}");
        }
    }

    #[test]
    fn zero_one_features_get_two_bins_from_their_mean() {
        let file = |bins: Vec<f32>, fractions: Vec<f64>, mean: f64, std: f64| BinsFile {
            bins,
            fractions,
            mean: Some(mean),
            std: Some(std),
        };
        // As the shipped profiles give a 0/1 feature: one bin, mean 0.81.
        let m: f64 = 0.8095;
        let b =
            Bins::from_file(file(vec![0.0, 1.0], vec![1.0], m, (m * (1.0 - m)).sqrt())).unwrap();
        assert_eq!(b.edges, [0.0, 0.5, 1.0]);
        assert!((b.expected[0] - 0.1905).abs() < 1e-9 && (b.expected[1] - m).abs() < 1e-9);
        assert_eq!((b.index(0.0), b.index(1.0)), (0, 1));
        // All ones where 81 % were expected: PSI well past the threshold.
        assert!(psi(&b.expected, &[0, 1000]) > 0.25);
        assert!(psi(&b.expected, &[190, 810]) < 0.01);
        // A continuous feature on [0, 1] in one bin (variance below
        // mean × (1 − mean)) keeps its bins, and so do ordinary profiles.
        let c = Bins::from_file(file(vec![0.0, 1.0], vec![1.0], 0.5, 0.2)).unwrap();
        assert_eq!(c.edges, [0.0, 1.0]);
        let q = Bins::from_file(file(vec![0.0, 1.0, 2.0], vec![0.5, 0.5], 0.5, 0.5)).unwrap();
        assert_eq!(q.edges, [0.0, 1.0, 2.0]);
        let no_stats = BinsFile {
            bins: vec![0.0, 1.0],
            fractions: vec![1.0],
            mean: None,
            std: None,
        };
        assert_eq!(Bins::from_file(no_stats).unwrap().edges, [0.0, 1.0]);
    }

    #[test]
    fn a_shifted_window_reports_drift() {
        let profile = r#"{"features": {"a": {"bins": [0, 1, 2], "fractions": [0.5, 0.5]}},
                          "score": {"bins": [0, 0.5, 1], "fractions": [0.5, 0.5]}}"#;
        let config = MonitoringConfig {
            sample_rate: 1.0,
            window_rows: 1_000_000,
            psi_threshold: 0.25,
        };
        let mon = DriftMonitor::new("m", &["a".into(), "b".into()], profile, &config).unwrap();
        assert!(mon.sample() && mon.sample(), "rate 1 samples every request");
        // Every row in the upper bin of `a`: strong drift; `b` has no profile.
        let matrix: Vec<f32> = (0..100).flat_map(|_| [1.5, 7.0]).collect();
        let scores = vec![0.9f32; 100];
        mon.observe(&matrix, &scores);
        let w = mon.window.lock().unwrap();
        assert_eq!(w.features[0], vec![0, 100]);
        assert!(w.features[1].is_empty());
        assert_eq!(w.score, vec![0, 100]);
        assert!(psi(&[0.5, 0.5], &w.features[0]) > 0.25);
    }
}
