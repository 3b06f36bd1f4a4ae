//! What one request runs with, fixed when it starts: its experiment arm,
//! the exact version of each stage model, the shadows that sample it.

use std::sync::Arc;

use metrics::{Counter, Histogram};

use super::experiments::{self, ModelRef};
use super::request::{Fallback, Stage, ValidRequest};
use super::shadow::{ActiveShadow, ShadowStage};
use super::stages::StageModel;
use super::{Pipeline, CONTROL};
use crate::data::features::Subject;
use crate::model::Registry;
use crate::telemetry::metrics as m;

/// What one request runs with, fixed when it starts: its arm, and the
/// exact model versions of its stages (a reload or an experiment change
/// mid-request does not touch it).
pub(super) struct Plan {
    pub(super) variant: Arc<str>,
    /// The experiment it was planned under (outcomes count for it only).
    pub(super) experiment: u64,
    /// The arm's metric handles.
    pub(super) metrics: Arc<ArmMetrics>,
    pub(super) filter: Option<Result<Arc<StageModel>, String>>,
    pub(super) rerank: Option<Result<Arc<StageModel>, String>>,
    pub(super) retrieve_n: usize,
    pub(super) filter_keep: usize,
    /// The shadows that sample this request, per stage, with their models.
    pub(super) filter_shadows: Vec<Shadowing>,
    pub(super) rerank_shadows: Vec<Shadowing>,
}

/// One arm's metric handles, registered once per arm when it is set: a
/// request records through them, without building label sets or looking
/// anything up in the registry.
pub(super) struct ArmMetrics {
    /// By outcome: `ok`, each [`Fallback`] in `Fallback::ALL` order, `error`.
    requests: [Counter; 6],
    duration: Histogram,
    /// By [`Stage`], in `Stage::ALL` order.
    stage_seconds: [Histogram; 5],
    stage_out: [Histogram; 5],
    /// By [`Fallback`], in `Fallback::ALL` order.
    fallbacks: [Counter; 4],
}

/// The `outcome` label of `cascade_rank_requests_total`, in the order of
/// [`ArmMetrics`]'s `requests`.
const OUTCOMES: [&str; 6] = [
    "ok",
    "cold_start",
    "deadline",
    "model_error",
    "overload",
    "error",
];

impl ArmMetrics {
    pub(super) fn register(variant: &str) -> ArmMetrics {
        let v = variant.to_string();
        let fallbacks = Fallback::ALL.map(|r| {
            let c = metrics::counter!(m::RANK_FALLBACKS_TOTAL, "reason" => r.as_str(), "variant" => v.clone());
            // Every reason is exported from the start, at 0.
            c.increment(0);
            c
        });
        ArmMetrics {
            requests: OUTCOMES.map(|o| {
                metrics::counter!(m::RANK_REQUESTS_TOTAL, "variant" => v.clone(), "outcome" => o)
            }),
            duration: metrics::histogram!(m::RANK_DURATION_SECONDS, "variant" => v.clone()),
            stage_seconds: Stage::ALL.map(|s| {
                metrics::histogram!(m::STAGE_DURATION_SECONDS, "stage" => s.as_str(), "variant" => v.clone())
            }),
            stage_out: Stage::ALL.map(|s| {
                metrics::histogram!(m::STAGE_CANDIDATES_OUT, "stage" => s.as_str(), "variant" => v.clone())
            }),
            fallbacks,
        }
    }

    /// An answer (or an error: `None` with `error`).
    pub(super) fn answered(&self, fallback: Option<Fallback>, error: bool, seconds: f64) {
        let i = match (error, fallback) {
            (true, _) => 5,
            (false, None) => 0,
            (false, Some(f)) => 1 + f as usize,
        };
        self.requests[i].increment(1);
        self.duration.record(seconds);
    }

    pub(super) fn stage(&self, stage: Stage, seconds: f64, out: usize) {
        self.stage_seconds[stage as usize].record(seconds);
        self.stage_out[stage as usize].record(out as f64);
    }

    pub(super) fn fallback(&self, reason: Fallback) {
        self.fallbacks[reason as usize].increment(1);
    }
}

pub(super) type Shadowing = (Arc<ActiveShadow>, Result<Arc<StageModel>, String>);

impl Plan {
    /// `name@version` of each stage model, for the cache key.
    pub(super) fn versions(&self) -> String {
        [&self.filter, &self.rerank]
            .into_iter()
            .map(|s| match s {
                None => "-".to_string(),
                Some(Ok(m)) => m.label().to_string(),
                Some(Err(_)) => "?".to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub(super) fn model_ref(key: &str, name: &Option<String>) -> Result<Option<ModelRef>, String> {
    match name.as_deref().filter(|n| !n.is_empty()) {
        None => Ok(None),
        Some(n) => ModelRef::parse(n)
            .map(Some)
            .map_err(|e| format!("ranking.{key}: {e}")),
    }
}

/// An experiment arm as requests use it, built when the experiment is set:
/// its model references parsed, its metric handles registered.
pub(super) struct Arm {
    pub(super) name: Arc<str>,
    filter: Option<ModelRef>,
    ranker: Option<ModelRef>,
    cold_start: Option<ModelRef>,
    retrieve_n: Option<usize>,
    filter_keep: Option<usize>,
    pub(super) metrics: Arc<ArmMetrics>,
}

impl Arm {
    /// Requests outside any experiment: the pipeline's own stage models.
    pub(super) fn control(metrics: Arc<ArmMetrics>) -> Arm {
        Arm {
            name: CONTROL.into(),
            filter: None,
            ranker: None,
            cold_start: None,
            retrieve_n: None,
            filter_keep: None,
            metrics,
        }
    }
}

/// The experiment in force: the config as set (what `GET
/// /admin/experiments` shows) and its arms, compiled in the same order.
#[derive(Default)]
pub(super) struct Experiment {
    pub(super) config: Arc<experiments::ExperimentsConfig>,
    arms: Vec<Arc<Arm>>,
    /// Its number in the feedback counters.
    pub(super) number: u64,
}

impl Pipeline {
    /// Parses an experiment's model references and registers its arms'
    /// metrics (the experiment is already validated).
    pub(super) fn compile_experiment(
        &self,
        config: experiments::ExperimentsConfig,
        number: u64,
    ) -> Result<Experiment, String> {
        let mut arms = Vec::with_capacity(config.arms.len());
        for a in &config.arms {
            let parse = |field: &str, v: &Option<String>| {
                v.as_deref()
                    .map(ModelRef::parse)
                    .transpose()
                    .map_err(|e| format!("arm \"{}\".{field}: {e}", a.name))
            };
            arms.push(Arc::new(Arm {
                name: a.name.as_str().into(),
                filter: parse("filter_model", &a.filter_model)?,
                ranker: parse("ranker_model", &a.ranker_model)?,
                cold_start: parse("cold_start_model", &a.cold_start_model)?,
                retrieve_n: a.retrieve_n,
                filter_keep: a.filter_keep,
                metrics: self.arm_metrics(&a.name),
            }));
        }
        Ok(Experiment {
            config: Arc::new(config),
            arms,
            number,
        })
    }

    /// The arm a request falls in: forced by name, or the stable hash of
    /// its user id (its request id when it has none); `control` outside
    /// any experiment.
    pub(super) fn arm_of(&self, req: &ValidRequest) -> (Arc<Arm>, u64) {
        let experiment = self.experiment.load();
        let config = &experiment.config;
        let index = match &req.variant {
            Some(name) => config.arms.iter().position(|a| &a.name == name),
            None if config.arms.is_empty() => None,
            None => config.assign_index(req.user_id.as_deref().unwrap_or(&req.request_id)),
        };
        let arm = index.map_or_else(|| self.control.clone(), |i| experiment.arms[i].clone());
        (arm, experiment.number)
    }

    pub(super) fn plan(&self, registry: &Registry, req: &ValidRequest, subject: &Subject) -> Plan {
        let (arm, experiment) = self.arm_of(req);
        let pick = |over: &Option<ModelRef>, default: &Option<ModelRef>| {
            over.as_ref()
                .or(default.as_ref())
                .map(|r| self.resolve(registry, r))
        };
        let (filter, rerank) = if subject.user.is_some() {
            (
                pick(&arm.filter, &self.filter),
                pick(&arm.ranker, &self.ranker),
            )
        } else {
            (None, pick(&arm.cold_start, &self.cold_start))
        };
        let shadows = |stage| -> Vec<Shadowing> {
            self.shadow
                .sampled(stage, &req.request_id)
                .into_iter()
                .map(|shadow| {
                    let model = match &shadow.model {
                        Ok(r) => self.resolve(registry, r),
                        Err(e) => Err(e.clone()),
                    };
                    (shadow, model)
                })
                .collect()
        };
        Plan {
            filter_shadows: shadows(ShadowStage::Filter),
            rerank_shadows: shadows(ShadowStage::Rerank),
            metrics: arm.metrics.clone(),
            variant: arm.name.clone(),
            experiment,
            filter,
            rerank,
            retrieve_n: arm.retrieve_n.unwrap_or(self.config.retrieve_n),
            filter_keep: arm.filter_keep.unwrap_or(self.config.filter_keep),
        }
    }
}

impl Pipeline {
    /// The metric handles of arm `variant`, registered on its first use
    /// (an arm set again, or set again later, keeps its handles).
    pub(super) fn arm_metrics(&self, variant: &str) -> Arc<ArmMetrics> {
        self.arm_metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(variant.to_string())
            .or_insert_with(|| Arc::new(ArmMetrics::register(variant)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ArmMetrics` indexes its handles by the enums' discriminants: they
    /// must follow the `ALL` orders the handles were registered in.
    #[test]
    fn handle_arrays_follow_the_enum_orders() {
        for (i, s) in Stage::ALL.into_iter().enumerate() {
            assert_eq!(s as usize, i, "{}", s.as_str());
        }
        for (i, f) in Fallback::ALL.into_iter().enumerate() {
            assert_eq!(f as usize, i, "{}", f.as_str());
        }
        for f in Fallback::ALL {
            assert_eq!(OUTCOMES[1 + f as usize], f.as_str());
        }
    }
}
