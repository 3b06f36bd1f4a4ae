//! What one request runs with, fixed when it starts: its experiment arm,
//! the exact version of each stage model, the shadows that sample it.

use std::sync::Arc;

use super::experiments::{self, ModelRef};
use super::request::ValidRequest;
use super::shadow::{ShadowSpec, ShadowStage};
use super::stages::StageModel;
use super::{Pipeline, CONTROL};
use crate::data::features::Subject;
use crate::model::Registry;

/// What one request runs with, fixed when it starts: its arm, and the
/// exact model versions of its stages (a reload or an experiment change
/// mid-request does not touch it).
pub(super) struct Plan {
    pub(super) variant: Arc<str>,
    pub(super) filter: Option<Result<Arc<StageModel>, String>>,
    pub(super) rerank: Option<Result<Arc<StageModel>, String>>,
    pub(super) retrieve_n: usize,
    pub(super) filter_keep: usize,
    /// The shadows that sample this request, per stage, with their models.
    pub(super) filter_shadows: Vec<Shadowing>,
    pub(super) rerank_shadows: Vec<Shadowing>,
}

pub(super) type Shadowing = (ShadowSpec, Result<Arc<StageModel>, String>);

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

impl Pipeline {
    /// The arm a request falls in: forced by name, or the stable hash of
    /// its user id (its request id when it has none).
    pub fn arm_of(&self, req: &ValidRequest) -> Option<experiments::ArmConfig> {
        let experiments = self.experiments();
        if let Some(name) = &req.variant {
            return experiments.arm(name).cloned();
        }
        if experiments.arms.is_empty() {
            return None;
        }
        let unit = req.user_id.as_deref().unwrap_or(&req.request_id);
        experiments.assign(unit).cloned()
    }

    pub(super) fn plan(&self, registry: &Registry, req: &ValidRequest, subject: &Subject) -> Plan {
        let arm = self.arm_of(req);
        let pick = |over: Option<&String>,
                    default: &Option<ModelRef>|
         -> Option<Result<Arc<StageModel>, String>> {
            let r = match over {
                Some(o) => Some(ModelRef::parse(o)),
                None => default.clone().map(Ok),
            }?;
            Some(r.and_then(|r| self.resolve(registry, &r)))
        };
        let arm_ref = arm.as_ref();
        let (filter, rerank) = if subject.user.is_some() {
            (
                pick(arm_ref.and_then(|a| a.filter_model.as_ref()), &self.filter),
                pick(arm_ref.and_then(|a| a.ranker_model.as_ref()), &self.ranker),
            )
        } else {
            (
                None,
                pick(
                    arm_ref.and_then(|a| a.cold_start_model.as_ref()),
                    &self.cold_start,
                ),
            )
        };
        let shadows = |stage| -> Vec<Shadowing> {
            self.shadow
                .sampled(stage, &req.request_id)
                .into_iter()
                .map(|spec| {
                    let model =
                        ModelRef::parse(&spec.model).and_then(|r| self.resolve(registry, &r));
                    (spec, model)
                })
                .collect()
        };
        Plan {
            filter_shadows: shadows(ShadowStage::Filter),
            rerank_shadows: shadows(ShadowStage::Rerank),
            variant: arm_ref.map_or(CONTROL, |a| a.name.as_str()).into(),
            filter,
            rerank,
            retrieve_n: arm_ref
                .and_then(|a| a.retrieve_n)
                .unwrap_or(self.config.retrieve_n),
            filter_keep: arm_ref
                .and_then(|a| a.filter_keep)
                .unwrap_or(self.config.filter_keep),
        }
    }
}
