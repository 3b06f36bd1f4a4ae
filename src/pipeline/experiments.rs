//! A/B experiment arms: named arms with traffic shares, each overriding
//! which model (or version) a stage uses and the stage sizes.
//!
//! A request's arm is a stable hash of the experiment's salt and the
//! `user_id` (a cold-start request without one is assigned by its request
//! id), so a user stays in their arm across requests and restarts; the
//! `X-Cascade-Variant` header forces an arm, for testing. The hash is
//! FNV-1a with a 64-bit finaliser, written out here so that it never
//! changes with the compiler or a dependency.

use serde::{Deserialize, Serialize};

/// `[experiments]` in the config file, and the body of
/// `GET`/`PUT /admin/experiments`. No arms: everyone is `control`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentsConfig {
    /// Changing the salt reshuffles who is in which arm.
    pub salt: String,
    pub arms: Vec<ArmConfig>,
}

/// One arm: its share of traffic and what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmConfig {
    pub name: String,
    /// Fraction of users, in [0, 1]; an experiment's shares sum to 1.
    pub share: f64,
    /// Stage models: `"name"` (its serving version) or `"name@version"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranker_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieve_n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_keep: Option<usize>,
}

/// A stage model named in config: the model and, optionally, a pinned
/// version (else whatever version serves).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    pub name: String,
    pub version: Option<u64>,
}

impl ModelRef {
    /// `"ranker"` or `"ranker@2"`.
    pub fn parse(s: &str) -> Result<ModelRef, String> {
        let (name, version) = match s.split_once('@') {
            None => (s, None),
            Some((name, v)) => match v.parse::<u64>() {
                Ok(n) if n > 0 => (name, Some(n)),
                _ => {
                    return Err(format!(
                        "\"{s}\": the version after '@' must be a positive integer"
                    ))
                }
            },
        };
        if name.is_empty() {
            return Err(format!("\"{s}\": model name is empty"));
        }
        Ok(ModelRef {
            name: name.to_string(),
            version,
        })
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Arm and shadow names become metric labels: short and plain.
pub fn valid_label(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// Most arms in one experiment (they are metric label values).
pub const MAX_ARMS: usize = 16;

/// Longest salt accepted: it is hashed for every request.
pub const MAX_SALT_BYTES: usize = 256;

impl ExperimentsConfig {
    /// Checks names, shares and model references; `prefix` is where this
    /// section lives (`experiments` in the file, empty for the admin body)
    /// and `model_ok` says whether a model reference can serve a stage.
    pub fn validate(
        &self,
        prefix: &str,
        model_ok: &dyn Fn(&ModelRef) -> Result<(), String>,
    ) -> Result<(), String> {
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        if self.salt.len() > MAX_SALT_BYTES {
            return Err(format!(
                "{}: at most {MAX_SALT_BYTES} bytes, got {}",
                key("salt"),
                self.salt.len()
            ));
        }
        if self.arms.is_empty() {
            return Ok(());
        }
        if self.arms.len() > MAX_ARMS {
            return Err(format!("{}: at most {MAX_ARMS} arms", key("arms")));
        }
        let mut total = 0.0;
        for (i, arm) in self.arms.iter().enumerate() {
            let at = |field: &str| key(&format!("arms[{i}].{field}"));
            if !valid_label(&arm.name) {
                return Err(format!(
                    "{}: 1 to 32 letters, digits, '_' or '-', got {:?}",
                    at("name"),
                    arm.name
                ));
            }
            if self.arms[..i].iter().any(|a| a.name == arm.name) {
                return Err(format!("{}: \"{}\" appears twice", at("name"), arm.name));
            }
            if !(0.0..=1.0).contains(&arm.share) {
                return Err(format!("{}: must be between 0 and 1", at("share")));
            }
            total += arm.share;
            for (field, value) in [
                ("filter_model", &arm.filter_model),
                ("ranker_model", &arm.ranker_model),
                ("cold_start_model", &arm.cold_start_model),
            ] {
                if let Some(v) = value {
                    ModelRef::parse(v)
                        .and_then(|r| model_ok(&r))
                        .map_err(|e| format!("{}: {e}", at(field)))?;
                }
            }
            for (field, value) in [
                ("retrieve_n", arm.retrieve_n),
                ("filter_keep", arm.filter_keep),
            ] {
                if value == Some(0) {
                    return Err(format!("{}: must be at least 1", at(field)));
                }
            }
        }
        if (total - 1.0).abs() > 1e-6 {
            return Err(format!("{}: shares sum to {total}, not 1", key("arms")));
        }
        Ok(())
    }

    /// The arm of `unit` (a user id, or a request id when there is none);
    /// `None` when there is no experiment.
    pub fn assign(&self, unit: &str) -> Option<&ArmConfig> {
        self.assign_index(unit).map(|i| &self.arms[i])
    }

    /// [`ExperimentsConfig::assign`], as the arm's position in `arms`.
    pub fn assign_index(&self, unit: &str) -> Option<usize> {
        let point = unit_interval(stable_hash(&self.salt, unit));
        let mut upper = 0.0;
        for (i, arm) in self.arms.iter().enumerate() {
            upper += arm.share;
            if point < upper {
                return Some(i);
            }
        }
        // Rounding can leave a sliver at the top: it goes to the last arm
        // with traffic.
        self.arms.iter().rposition(|a| a.share > 0.0)
    }

    pub fn arm(&self, name: &str) -> Option<&ArmConfig> {
        self.arms.iter().find(|a| a.name == name)
    }
}

/// FNV-1a over `salt`, a separator and `unit`, then the splitmix64
/// finaliser so that nearby ids spread over the whole range.
pub fn stable_hash(salt: &str, unit: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes().chain([0xff]).chain(unit.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The top 53 bits of `h` as a number in [0, 1).
fn unit_interval(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(name: &str, share: f64) -> ArmConfig {
        ArmConfig {
            name: name.into(),
            share,
            filter_model: None,
            ranker_model: None,
            cold_start_model: None,
            retrieve_n: None,
            filter_keep: None,
        }
    }

    fn experiment(shares: &[(&str, f64)]) -> ExperimentsConfig {
        ExperimentsConfig {
            salt: "s1".into(),
            arms: shares.iter().map(|(n, s)| arm(n, *s)).collect(),
        }
    }

    #[test]
    fn the_hash_is_pinned() {
        // Assignment must survive restarts and upgrades: these values are
        // part of the contract with running experiments.
        // (Computed independently, in Python, from the definition.)
        assert_eq!(stable_hash("", ""), 0x4f2d_b50f_1240_40cd);
        assert_eq!(stable_hash("s1", "user-42"), 0x6fb3_7ef1_e625_ba05);
        assert_ne!(stable_hash("s1", "user-42"), stable_hash("s2", "user-42"));
        assert_ne!(stable_hash("s1", "ab"), stable_hash("s1a", "b"));
    }

    #[test]
    fn shares_are_honoured_within_tolerance() {
        let e = experiment(&[("control", 0.7), ("b", 0.2), ("c", 0.1)]);
        let n = 100_000;
        let mut counts = [0usize; 3];
        for u in 0..n {
            let a = e.assign(&format!("u{u}")).unwrap();
            counts[["control", "b", "c"]
                .iter()
                .position(|x| *x == a.name)
                .unwrap()] += 1;
        }
        for (count, share) in counts.iter().zip([0.7, 0.2, 0.1]) {
            let expected = share * n as f64;
            let sd = (n as f64 * share * (1.0 - share)).sqrt();
            assert!(
                (*count as f64 - expected).abs() < 5.0 * sd,
                "{count} vs {expected}"
            );
        }
    }

    #[test]
    fn zero_share_arms_get_nobody_and_bad_configs_name_the_field() {
        let e = experiment(&[("control", 1.0), ("off", 0.0)]);
        assert!((0..1000).all(|u| e.assign(&u.to_string()).unwrap().name == "control"));
        let ok = |_: &ModelRef| Ok(());
        let err = experiment(&[("a", 0.5), ("b", 0.4)])
            .validate("experiments", &ok)
            .unwrap_err();
        assert!(
            err.starts_with("experiments.arms: shares sum to 0.9"),
            "{err}"
        );
        let err = experiment(&[("a", 0.5), ("a", 0.5)])
            .validate("", &ok)
            .unwrap_err();
        assert!(err.starts_with("arms[1].name"), "{err}");
        let err = experiment(&[("a b", 1.0)]).validate("", &ok).unwrap_err();
        assert!(err.starts_with("arms[0].name"), "{err}");
        let mut e = experiment(&[("a", 1.0)]);
        e.arms[0].ranker_model = Some("ranker@x".into());
        let err = e.validate("", &ok).unwrap_err();
        assert!(err.starts_with("arms[0].ranker_model"), "{err}");
        e.arms[0].ranker_model = Some("nope".into());
        let err = e
            .validate("", &|r: &ModelRef| Err(format!("no model \"{}\"", r.name)))
            .unwrap_err();
        assert_eq!(err, "arms[0].ranker_model: no model \"nope\"");
    }

    #[test]
    fn a_salt_has_a_length_limit() {
        let ok = |_: &ModelRef| Ok(());
        let mut e = experiment(&[("a", 1.0)]);
        e.salt = "s".repeat(MAX_SALT_BYTES);
        assert!(e.validate("", &ok).is_ok());
        e.salt.push('s');
        let err = e.validate("experiments", &ok).unwrap_err();
        assert!(
            err.starts_with("experiments.salt: at most 256 bytes"),
            "{err}"
        );
        // Also without arms.
        e.arms.clear();
        assert!(e.validate("", &ok).unwrap_err().starts_with("salt: "));
    }

    #[test]
    fn model_refs_parse() {
        assert_eq!(
            ModelRef::parse("ranker@2").unwrap(),
            ModelRef {
                name: "ranker".into(),
                version: Some(2)
            }
        );
        assert_eq!(ModelRef::parse("ranker").unwrap().version, None);
        assert!(ModelRef::parse("@2").is_err());
        assert!(ModelRef::parse("ranker@0").is_err());
        assert_eq!(ModelRef::parse("ranker@2").unwrap().to_string(), "ranker@2");
    }
}
