//! Selection rules every product needs, declared in `[ranking.rules]`:
//!
//! ```toml
//! [ranking.rules]
//! # Never return an item while this holds (an expression over item.*,
//! # user.*, ctx.*; a missing value keeps the item).
//! drop = ["item.in_stock == 0"]
//! # At most `max` items per value of an item category field in an answer.
//! diversity = [{ field = "brand", max = 2 }]
//! ```
//!
//! Drop rules run right after retrieval (their own `rules` stage in
//! `debug`), so no model scores an item that cannot be shown; diversity
//! runs in the select stage, walking the final order and passing over an
//! item whose value has already filled its quota.

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::data::expr::compile::LiveReads;
use crate::data::expr::eval::{column, Env, Live, Pool};
use crate::data::expr::{self, Num};
use crate::data::features::Subject;
use crate::data::schema::FieldType;
use crate::data::table::Slot;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    pub drop: Vec<String>,
    pub diversity: Vec<DiversityConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiversityConfig {
    /// An item field of type `category`.
    pub field: String,
    pub max: usize,
}

/// The rules, compiled against the catalog.
#[derive(Debug, Default)]
pub struct Rules {
    drop: Vec<Num>,
    /// What of live state the drop rules read.
    live: LiveReads,
    /// Row-table offset of each diversity field, and its quota.
    diversity: Vec<(usize, usize)>,
}

impl Rules {
    /// Compiles `config`; errors name the key (`ranking.rules.drop[0]: …`).
    pub fn compile(config: &RulesConfig, catalog: &Catalog) -> Result<Rules, String> {
        let tables = catalog.tables();
        let drop: Vec<Num> = config
            .drop
            .iter()
            .enumerate()
            .map(|(i, text)| {
                expr::plan(text, &tables).map_err(|e| format!("ranking.rules.drop[{i}]: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let mut diversity = Vec::new();
        for (i, d) in config.diversity.iter().enumerate() {
            let key = format!("ranking.rules.diversity[{i}]");
            let at = match catalog.schema.items.field(&d.field) {
                Some((f, field)) if matches!(field.ty, FieldType::Category(_)) => {
                    match catalog.items.slot(f) {
                        Slot::Row { at, .. } => at,
                        _ => unreachable!("categories live in the row table"),
                    }
                }
                _ => {
                    return Err(format!(
                        "{key}.field: \"{}\" is not a category field of the items",
                        d.field
                    ))
                }
            };
            if d.max == 0 {
                return Err(format!("{key}.max: must be at least 1"));
            }
            diversity.push((at, d.max));
        }
        let mut live = LiveReads::default();
        for rule in &drop {
            rule.live_reads(&mut live);
        }
        Ok(Rules {
            drop,
            live,
            diversity,
        })
    }

    pub fn has_drop(&self) -> bool {
        !self.drop.is_empty()
    }

    /// What of live state the drop rules read (`count(item, …) > 100`).
    pub fn live_reads(&self) -> &LiveReads {
        &self.live
    }

    /// Removes the candidates a drop rule applies to.
    pub fn drop_candidates(
        &self,
        catalog: &Catalog,
        live: Option<&dyn Live>,
        subject: &Subject,
        rows: &mut Vec<(u32, f32)>,
    ) {
        if self.drop.is_empty() || rows.is_empty() {
            return;
        }
        let env = Env {
            items: &catalog.items,
            users: &catalog.users,
            user: subject.user,
            ctx: &subject.ctx,
            now_ms: subject.now_ms,
            live,
            user_id: subject.user_id.as_deref(),
            session: subject.session.as_deref(),
        };
        let items: Vec<u32> = rows.iter().map(|(r, _)| *r).collect();
        let mut keep = vec![true; items.len()];
        let mut values = vec![0.0f32; items.len()];
        let mut pool = Pool::default();
        for rule in &self.drop {
            column(rule, &env, &items, &mut values, &mut pool);
            for (k, v) in keep.iter_mut().zip(&values) {
                // Missing (NaN) never drops.
                if *v != 0.0 && !v.is_nan() {
                    *k = false;
                }
            }
        }
        let mut i = 0;
        rows.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }

    /// Whether [`Rules::select`] only takes the first `k` (no quotas).
    pub fn takes_the_first(&self) -> bool {
        self.diversity.is_empty()
    }

    /// The first `k` of `sorted` that respect every diversity quota.
    pub fn select(&self, catalog: &Catalog, sorted: &mut Vec<(u32, f32)>, k: usize) {
        if self.diversity.is_empty() {
            sorted.truncate(k);
            return;
        }
        let mut counts: Vec<std::collections::HashMap<u32, usize>> =
            vec![Default::default(); self.diversity.len()];
        let mut kept = Vec::with_capacity(k);
        for &(row, score) in sorted.iter() {
            if kept.len() == k {
                break;
            }
            let codes: Vec<Option<u32>> = self
                .diversity
                .iter()
                .map(|&(at, _)| {
                    let c = catalog.items.scalar(row, at);
                    (!c.is_nan()).then_some(c as u32)
                })
                .collect();
            let full = codes
                .iter()
                .zip(&self.diversity)
                .zip(&counts)
                .any(|((c, (_, max)), n)| {
                    c.is_some_and(|c| n.get(&c).copied().unwrap_or(0) >= *max)
                });
            if full {
                continue;
            }
            for (c, n) in codes.iter().zip(counts.iter_mut()) {
                if let Some(c) = c {
                    *n.entry(*c).or_default() += 1;
                }
            }
            kept.push((row, score));
        }
        *sorted = kept;
    }
}
