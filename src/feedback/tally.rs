//! The counters the reports are computed from: per arm of the experiment
//! in force, the rankings served, the users they went to, and per outcome
//! kind the attributed outcomes with their positions; per shadow, where the
//! live model and the shadow ranked the items those outcomes named.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Value};

use super::stats::{self, Z_975};

/// Distinct users counted exactly per arm up to this many; past it the
/// report says the count is a lower bound.
const MAX_USERS_COUNTED: usize = 1_000_000;

/// One outcome kind's counters in one arm.
#[derive(Debug, Default, Clone)]
pub struct KindTally {
    pub count: u64,
    /// Σ over rankings of (outcomes of this kind on the ranking)²: the
    /// per-ranking variance of the rate.
    pub sum_sq: u64,
    pub sum_position: u64,
}

#[derive(Debug, Default)]
pub struct ArmTally {
    pub rankings: u64,
    users: HashSet<u64>,
    users_capped: bool,
    /// By outcome kind (the schema's order).
    pub kinds: Vec<KindTally>,
}

impl ArmTally {
    fn new(kinds: usize) -> ArmTally {
        ArmTally {
            kinds: vec![KindTally::default(); kinds],
            ..ArmTally::default()
        }
    }

    pub fn add_user(&mut self, user: u64) {
        if self.users.len() < MAX_USERS_COUNTED {
            self.users.insert(user);
        } else if !self.users.contains(&user) {
            self.users_capped = true;
        }
    }
}

/// Where the live model and one shadow put the items outcomes named.
#[derive(Debug, Default, Clone)]
pub struct ShadowKind {
    pub count: u64,
    pub live_position_sum: u64,
    pub live_top_k: u64,
    pub shadow_position_sum: u64,
    pub shadow_top_k: u64,
    /// Outcomes on items the shadow's ranking did not hold.
    pub shadow_missing: u64,
}

/// Everything counted since the experiment (or the shadows) was set.
#[derive(Debug, Default)]
pub struct Tally {
    /// Which experiment this counts (a new one starts over).
    pub experiment: u64,
    pub name: String,
    pub since_ms: i64,
    /// The configured arms and their shares (`control`, 1.0 outside any
    /// experiment).
    pub shares: Vec<(String, f64)>,
    pub arms: BTreeMap<String, ArmTally>,
    pub shadows_since_ms: i64,
    pub shadows: BTreeMap<String, Vec<ShadowKind>>,
    /// Outcome events this replica accepted, by what attribution found
    /// (in [`super::AttributionResult::ALL`] order).
    pub attribution: [u64; 5],
}

/// The rate of a kind per ranking and its standard error, from the
/// per-ranking variance (a ranking may lead to several outcomes).
fn rate_se(k: &KindTally, n: u64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let rate = k.count as f64 / nf;
    let var = if n > 1 {
        ((k.sum_sq as f64 / nf) - rate * rate).max(0.0) * nf / (nf - 1.0)
    } else {
        0.0
    };
    Some((rate, (var / nf).sqrt()))
}

/// The rate with its 95 % interval (normal; the lower end clipped at 0).
fn rate_ci(k: &KindTally, n: u64) -> Option<(f64, f64, f64)> {
    let (rate, se) = rate_se(k, n)?;
    Some((rate, (rate - Z_975 * se).max(0.0), rate + Z_975 * se))
}

fn round(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1e6).round() / 1e6)
    } else {
        Value::Null
    }
}

impl Tally {
    pub fn arm(&mut self, name: &str, kinds: usize) -> &mut ArmTally {
        if !self.arms.contains_key(name) {
            self.arms.insert(name.to_string(), ArmTally::new(kinds));
        }
        self.arms.get_mut(name).expect("just inserted")
    }

    pub fn shadow(&mut self, name: &str, kinds: usize) -> &mut Vec<ShadowKind> {
        self.shadows
            .entry(name.to_string())
            .or_insert_with(|| vec![ShadowKind::default(); kinds])
    }

    /// `GET /admin/experiments/report` (API.md §3).
    pub fn report(&self, kinds: &[String]) -> Value {
        let names: Vec<&str> = self.shares.iter().map(|(n, _)| n.as_str()).collect();
        let empty = ArmTally::new(kinds.len());
        let arm_of = |name: &str| self.arms.get(name).unwrap_or(&empty);
        let arms: Vec<Value> = names
            .iter()
            .map(|&name| {
                let a = arm_of(name);
                let outcomes: serde_json::Map<String, Value> = kinds
                    .iter()
                    .zip(&a.kinds)
                    .map(|(kind, k)| {
                        let v = match rate_ci(k, a.rankings) {
                            Some((rate, lo, hi)) => json!({
                                "count": k.count,
                                "rate": round(rate),
                                "ci95": [round(lo), round(hi)],
                                "mean_position": if k.count > 0 {
                                    round(k.sum_position as f64 / k.count as f64)
                                } else {
                                    Value::Null
                                },
                            }),
                            None => json!({"count": k.count, "rate": null, "ci95": null, "mean_position": null}),
                        };
                        (kind.clone(), v)
                    })
                    .collect();
                let mut arm = json!({
                    "name": name,
                    "rankings": a.rankings,
                    "users": a.users.len(),
                    "outcomes": outcomes,
                });
                if a.users_capped {
                    arm["users_at_least"] = json!(true);
                }
                arm
            })
            .collect();
        let mut vs_control = Vec::new();
        if names.contains(&crate::pipeline::CONTROL) {
            let control = arm_of(crate::pipeline::CONTROL);
            for &name in names.iter().filter(|n| **n != crate::pipeline::CONTROL) {
                let b = arm_of(name);
                for (i, kind) in kinds.iter().enumerate() {
                    vs_control.push(lift(
                        kind,
                        name,
                        &control.kinds[i],
                        control.rankings,
                        &b.kinds[i],
                        b.rankings,
                    ));
                }
            }
        }
        let observed: Vec<u64> = names.iter().map(|n| arm_of(n).rankings).collect();
        let shares: Vec<f64> = self.shares.iter().map(|(_, s)| *s).collect();
        json!({
            "experiment": self.name,
            "since": self.since_ms,
            "arms": arms,
            "vs_control": vs_control,
            "srm": {
                "p_value": stats::sample_ratio_p(&observed, &shares).map(round),
                "users_p_value": self.srm_p_value().map(round),
            },
            "attribution": super::AttributionResult::ALL
                .iter()
                .zip(self.attribution)
                .map(|(r, n)| (r.as_str().to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
        })
    }

    /// The sample-ratio-mismatch p-value over the unit of assignment —
    /// distinct users per arm (the gauge an alert reads). Rankings are not
    /// independent draws when users are assigned: a few heavy users in one
    /// arm move its rankings far more than χ² over rankings allows (a
    /// simulated A/B of 1,400 users and 9,000 rankings gave p = 0.009 on
    /// rankings with a sound split).
    pub fn srm_p_value(&self) -> Option<f64> {
        let observed: Vec<u64> = self
            .shares
            .iter()
            .map(|(n, _)| self.arms.get(n).map_or(0, |a| a.users.len() as u64))
            .collect();
        let shares: Vec<f64> = self.shares.iter().map(|(_, s)| *s).collect();
        stats::sample_ratio_p(&observed, &shares)
    }

    /// `GET /admin/shadow/report`.
    pub fn shadow_report(&self, kinds: &[String]) -> Value {
        let per = |sum: u64, n: u64| {
            if n > 0 {
                round(sum as f64 / n as f64)
            } else {
                Value::Null
            }
        };
        let shadows: Vec<Value> = self
            .shadows
            .iter()
            .map(|(name, by_kind)| {
                let outcomes: serde_json::Map<String, Value> = kinds
                    .iter()
                    .zip(by_kind)
                    .map(|(kind, s)| {
                        let ranked = s.count - s.shadow_missing;
                        (
                            kind.clone(),
                            json!({
                                "count": s.count,
                                "live": {
                                    "mean_position": per(s.live_position_sum, s.count),
                                    "share_top_k": per(s.live_top_k, s.count),
                                },
                                "shadow": {
                                    "mean_position": per(s.shadow_position_sum, ranked),
                                    "share_top_k": per(s.shadow_top_k, s.count),
                                    "missing": s.shadow_missing,
                                },
                            }),
                        )
                    })
                    .collect();
                json!({"name": name, "outcomes": outcomes})
            })
            .collect();
        json!({"since": self.shadows_since_ms, "shadows": shadows})
    }
}

/// One arm against control for one kind: the relative lift of the rate,
/// its 95 % interval and two-sided p-value by the delta method on the log
/// of the ratio (var log r ≈ se²/r²).
fn lift(kind: &str, arm: &str, a: &KindTally, na: u64, b: &KindTally, nb: u64) -> Value {
    let ((ra, sa), (rb, sb)) = match (rate_se(a, na), rate_se(b, nb)) {
        (Some(x), Some(y)) if x.0 > 0.0 && y.0 > 0.0 => (x, y),
        _ => return json!({"arm": arm, "kind": kind, "lift": null, "ci95": null, "p_value": null}),
    };
    let log_ratio = (rb / ra).ln();
    let se = ((sa / ra).powi(2) + (sb / rb).powi(2)).sqrt();
    let (lo, hi) = (
        (log_ratio - Z_975 * se).exp() - 1.0,
        (log_ratio + Z_975 * se).exp() - 1.0,
    );
    let p = if se > 0.0 {
        stats::two_sided_p(log_ratio / se)
    } else if log_ratio == 0.0 {
        1.0
    } else {
        0.0
    };
    json!({
        "arm": arm,
        "kind": kind,
        "lift": round(rb / ra - 1.0),
        "ci95": [round(lo), round(hi)],
        "p_value": round(p),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(count: u64, sum_sq: u64, sum_position: u64) -> KindTally {
        KindTally {
            count,
            sum_sq,
            sum_position,
        }
    }

    /// 1,000 rankings with 120 single clicks: rate 0.12, the binomial
    /// interval 0.12 ± 1.96·√(0.12·0.88/999·…).
    #[test]
    fn rates_intervals_and_the_lift_follow_the_formulas() {
        let a = kind(120, 120, 240);
        let (rate, lo, hi) = rate_ci(&a, 1000).unwrap();
        let se = ((0.12 - 0.0144) * 1000.0 / 999.0 / 1000.0f64).sqrt();
        assert!((rate - 0.12).abs() < 1e-12);
        assert!((lo - (0.12 - Z_975 * se)).abs() < 1e-12);
        assert!((hi - (0.12 + Z_975 * se)).abs() < 1e-12);
        // An arm with a 15 % higher rate.
        let b = kind(138, 138, 200);
        let v = lift("click", "b", &a, 1000, &b, 1000);
        assert_eq!(v["lift"], json!(0.15));
        let p = v["p_value"].as_f64().unwrap();
        assert!(p > 0.05 && p < 0.5, "{v}");
        let ci = v["ci95"].as_array().unwrap();
        assert!(ci[0].as_f64().unwrap() < 0.0 && ci[1].as_f64().unwrap() > 0.15);
        // No outcomes in one arm: nothing to compare.
        assert_eq!(
            lift("click", "b", &a, 1000, &kind(0, 0, 0), 1000)["lift"],
            Value::Null
        );
    }

    #[test]
    fn the_report_lists_every_configured_arm_in_order() {
        let mut t = Tally {
            name: "exp-7".into(),
            since_ms: 5,
            shares: vec![("control".into(), 0.5), ("b".into(), 0.5)],
            ..Tally::default()
        };
        let arm = t.arm("control", 1);
        arm.rankings = 10;
        arm.add_user(1);
        arm.add_user(1);
        arm.kinds[0] = kind(2, 2, 3);
        let r = t.report(&["click".into()]);
        assert_eq!(r["experiment"], "exp-7");
        assert_eq!(r["arms"][0]["users"], 1);
        assert_eq!(r["arms"][0]["outcomes"]["click"]["count"], 2);
        assert_eq!(r["arms"][0]["outcomes"]["click"]["rate"], json!(0.2));
        assert_eq!(
            r["arms"][0]["outcomes"]["click"]["mean_position"],
            json!(1.5)
        );
        assert_eq!(r["arms"][1]["name"], "b");
        assert_eq!(r["arms"][1]["rankings"], 0);
        assert_eq!(r["vs_control"][0]["lift"], Value::Null);
        assert!(r["srm"]["p_value"].as_f64().unwrap() < 0.01);
    }
}
