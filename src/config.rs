//! Typed configuration: defaults compiled in, then the TOML file, then
//! environment overrides (`CASCADE_<SECTION>__<KEY>=value`, e.g.
//! `CASCADE_SERVER__LISTEN=0.0.0.0:8080`), then command-line flags.
//! Validated once at start, with errors that name the key.
//!
//! Relative paths are resolved against the working directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::index::{HnswParams, IndexKind};
use crate::events::StateConfig;
use crate::model::BackendKind;
use crate::pipeline::cache::CacheConfig;
use crate::pipeline::experiments::ExperimentsConfig;
use crate::pipeline::request::Limits;
use crate::pipeline::rules::RulesConfig;
use crate::pipeline::score_cache::ScoreCacheConfig;
use crate::pipeline::shadow::ShadowConfig;
use crate::telemetry::drift::MonitoringConfig;

/// The prefix of environment overrides; `__` separates nested keys.
pub const ENV_PREFIX: &str = "CASCADE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}: {1}")]
    Read(String, String),
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub models: ModelsConfig,
    pub ranking: RankingConfig,
    pub monitoring: MonitoringConfig,
    pub logging: LoggingConfig,
    /// A/B arms (`[experiments]`); also `PUT /admin/experiments`.
    pub experiments: ExperimentsConfig,
    /// Shadow models (`[shadow]`); the list also `PUT /admin/shadow`.
    pub shadow: ShadowConfig,
    /// Live state from `POST /v1/events` (`[state]`).
    pub state: StateConfig,
    /// What users did with the answers (`[feedback]`, API.md §3).
    pub feedback: crate::feedback::FeedbackConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Public API: `/v1/*`, `/v2/*`, `/healthz`, `/readyz`.
    pub listen: String,
    /// Admin and metrics: `/metrics`, `/admin/*`, health. Keep it private.
    pub admin_listen: String,
    /// Request bodies above this are refused with 413.
    pub max_body_bytes: usize,
    /// Ranking and inference requests in flight at once; beyond it a fast
    /// 503 `overloaded` with `Retry-After`, so overload never turns into
    /// unbounded queueing.
    pub max_in_flight: usize,
    /// Connections open at once on the public listener; beyond it new
    /// connections wait in the kernel's backlog (never accepted unbounded).
    pub max_connections: usize,
    /// The same for the admin listener, so a public flood never locks the
    /// operator out.
    pub max_admin_connections: usize,
    /// Bytes a response may hold; a larger one is refused with 413 instead
    /// of being built (an inference asking for huge outputs).
    pub max_response_bytes: usize,
    /// A request whose headers take longer than this (from their first
    /// byte) is dropped.
    pub header_timeout_ms: u64,
    /// A keep-alive connection with no request for this long is closed. Keep
    /// it above the idle timeout of any load balancer in front (60 s on most).
    pub idle_timeout_ms: u64,
    /// A request whose whole body takes longer than this is refused with 400.
    pub body_timeout_ms: u64,
    /// After the body's first second, it must arrive at least this fast on
    /// average, or it is refused with 400 and the connection closed (a
    /// client trickling bytes holds nothing for long).
    pub min_body_rate_bytes_per_s: u64,
    /// On SIGTERM: report not-ready but keep accepting for this long, so
    /// load balancers stop sending first (SIGINT skips it).
    pub drain_delay_ms: u64,
    /// Then in-flight requests get this long to finish.
    pub shutdown_grace_ms: u64,
    /// Async worker threads (the reactor). Inference runs on separate,
    /// bounded threads: see `models.inference_threads`.
    pub worker_threads: usize,
    /// When set, every `/admin/*` call needs `Authorization: Bearer <token>`
    /// (401 otherwise). Best given as `CASCADE_SERVER__ADMIN_TOKEN`.
    pub admin_token: Option<Secret>,
}

/// A credential: compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "toml::Value", into = "String")]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// Whether `given` equals the secret, in time independent of where
    /// they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        let want = self.0.as_bytes();
        let mut diff = u8::from(want.len() != given.len());
        for (i, w) in want.iter().enumerate() {
            diff |= w ^ given.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<Secret> for String {
    fn from(s: Secret) -> String {
        s.0
    }
}

/// An environment override of a token made of digits parses as a number:
/// take any scalar as its text.
impl TryFrom<toml::Value> for Secret {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Secret, String> {
        match v {
            toml::Value::String(s) => Ok(Secret(s)),
            toml::Value::Integer(i) => Ok(Secret(i.to_string())),
            toml::Value::Float(f) => Ok(Secret(f.to_string())),
            other => Err(format!("expected a string, got {}", other.type_str())),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            max_body_bytes: 4 * 1024 * 1024,
            max_in_flight: 512,
            max_connections: 4096,
            max_admin_connections: 64,
            max_response_bytes: 32 * 1024 * 1024,
            header_timeout_ms: 5_000,
            idle_timeout_ms: 75_000,
            body_timeout_ms: 10_000,
            min_body_rate_bytes_per_s: 16 * 1024,
            drain_delay_ms: 5_000,
            shutdown_grace_ms: 10_000,
            worker_threads: 2,
            admin_token: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// The model repository: `<repository>/<name>/<version>/model.onnx`.
    pub repository: PathBuf,
    /// Backend for every model without an override.
    pub backend: BackendKind,
    /// At most this many inferences run at once (across all models).
    pub inference_threads: usize,
    /// An inference expected (by the model's recent cost per row) to take
    /// less than this runs on the thread that asks for it; longer ones go
    /// to a blocking thread, so the reactor is never held longer. 0 sends
    /// every call to the blocking threads.
    pub inline_below_us: u64,
    /// `libonnxruntime.so` for the `ort` backend; when empty, the
    /// `ORT_DYLIB_PATH` environment variable, then `.ort/libonnxruntime.so`.
    pub ort_library: Option<PathBuf>,
    /// Per-model settings, e.g. `[models.overrides.ranker] backend = "ort"`.
    pub overrides: BTreeMap<String, ModelOverride>,
    /// Rescan the repository for new versions this often (seconds); 0 means
    /// only on `POST /admin/models/{name}/reload`.
    pub poll_interval_s: u64,
    /// The quality gate: a reload refuses a new version whose AUC on the
    /// labelled golden rows is below the serving version's on the same
    /// rows by more than `quality_tolerance`. Off: no comparison at all.
    pub quality_gate: bool,
    /// How much worse (absolute AUC, 0 to 1) a new version may rank than
    /// the serving one and still replace it.
    pub quality_tolerance: f64,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            repository: PathBuf::from("models"),
            backend: BackendKind::Tract,
            inference_threads: 2,
            inline_below_us: crate::model::executor::INLINE_BELOW_US,
            ort_library: None,
            overrides: BTreeMap::new(),
            poll_interval_s: 0,
            quality_gate: true,
            quality_tolerance: 0.02,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelOverride {
    pub backend: Option<BackendKind>,
}

/// What a ranking request gets when the re-ranker's batch queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOverload {
    #[default]
    Degrade,
    Reject,
}

/// The ranking cascade behind `/v1/rank` (see `pipeline`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankingConfig {
    /// Serve `/v1/rank`. Off, the server is a plain inference server.
    pub enabled: bool,
    /// Item catalog and user table (`items.*`, `users.*`).
    pub catalog: PathBuf,
    /// Stage models, by repository name; leave one out to skip its stage.
    pub filter_model: Option<String>,
    pub ranker_model: Option<String>,
    pub cold_start_model: Option<String>,
    /// Candidates retrieval hands to the filter (N).
    pub retrieve_n: usize,
    /// Candidates the filter hands to the re-ranker (M).
    pub filter_keep: usize,
    pub default_k: usize,
    pub max_k: usize,
    /// Longest `candidates`, `recent_items` or `exclude` list accepted.
    pub max_list_items: usize,
    /// Most requests in one `/v1/rank/batch` call.
    pub max_batch_requests: usize,
    /// Budget of a request without `deadline_ms`.
    pub default_deadline_ms: u64,
    pub max_deadline_ms: u64,
    /// Part of every deadline kept for replying: a model stage runs only if
    /// its estimated cost fits in what is left of the deadline minus this.
    pub deadline_reserve_ms: u64,
    /// Never retrieve items a known user already interacted with.
    pub exclude_seen: bool,
    /// Bulk re-ranker rows from concurrent requests into one inference
    /// (per model: `[batching]` in its config.toml sets rows and wait).
    pub batching: bool,
    /// Requests that may wait in a model's batch queue.
    pub batch_queue_capacity: usize,
    /// Batches of one model that may run at once.
    pub batch_workers: usize,
    /// When a batch queue is full: `degrade` (answer in the filter's order,
    /// `fallback: "overload"`) or `reject` (503 `overloaded`).
    pub on_overload: OnOverload,
    /// The response cache (`[ranking.cache]`).
    pub cache: CacheConfig,
    /// Re-rank scores of known users (`[ranking.score_cache]`).
    pub score_cache: ScoreCacheConfig,
    /// Drop and diversity rules (`[ranking.rules]`).
    pub rules: RulesConfig,
    /// `auto` (exact below `exact_below` items, else HNSW), `exact`, `hnsw`.
    pub index: IndexKind,
    pub exact_below: usize,
    pub hnsw: HnswParams,
}

impl Default for RankingConfig {
    fn default() -> Self {
        RankingConfig {
            enabled: true,
            catalog: PathBuf::from("models/catalog"),
            filter_model: Some("filter".into()),
            ranker_model: Some("ranker".into()),
            cold_start_model: Some("cold_start".into()),
            retrieve_n: 300,
            filter_keep: 100,
            default_k: 10,
            max_k: 100,
            max_list_items: 1000,
            max_batch_requests: 64,
            default_deadline_ms: 50,
            max_deadline_ms: 10_000,
            deadline_reserve_ms: 1,
            exclude_seen: true,
            batching: true,
            batch_queue_capacity: 1024,
            batch_workers: 2,
            on_overload: OnOverload::Degrade,
            cache: CacheConfig::default(),
            score_cache: ScoreCacheConfig::default(),
            rules: RulesConfig::default(),
            index: IndexKind::Auto,
            exact_below: 20_000,
            hnsw: HnswParams::default(),
        }
    }
}

impl RankingConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            default_k: self.default_k,
            max_k: self.max_k,
            max_list_items: self.max_list_items,
            default_deadline_ms: self.default_deadline_ms,
            max_deadline_ms: self.max_deadline_ms,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if !self.catalog.is_dir() {
            return Err(invalid(
                "ranking.catalog",
                format!("directory \"{}\" does not exist", self.catalog.display()),
            ));
        }
        let positive = [
            ("ranking.retrieve_n", self.retrieve_n),
            ("ranking.filter_keep", self.filter_keep),
            ("ranking.default_k", self.default_k),
            ("ranking.max_list_items", self.max_list_items),
            ("ranking.max_batch_requests", self.max_batch_requests),
            ("ranking.batch_queue_capacity", self.batch_queue_capacity),
            ("ranking.batch_workers", self.batch_workers),
            ("ranking.cache.ttl_ms", self.cache.ttl_ms as usize),
            ("ranking.cache.max_bytes", self.cache.max_bytes as usize),
            (
                "ranking.score_cache.max_scores",
                self.score_cache.max_scores as usize,
            ),
            (
                "ranking.score_cache.max_scores_per_context",
                self.score_cache.max_scores_per_context,
            ),
            (
                "ranking.score_cache.ttl_ms",
                self.score_cache.ttl_ms as usize,
            ),
            ("ranking.hnsw.max_connections", self.hnsw.max_connections),
            ("ranking.hnsw.ef_search", self.hnsw.ef_search),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(key, "must be at least 1"));
        }
        if self.hnsw.max_connections > 255 {
            return Err(invalid(
                "ranking.hnsw.max_connections",
                "must be at most 255",
            ));
        }
        if self.max_k < self.default_k {
            return Err(invalid(
                "ranking.max_k",
                "must be at least ranking.default_k",
            ));
        }
        if self.default_deadline_ms == 0 || self.default_deadline_ms > self.max_deadline_ms {
            return Err(invalid(
                "ranking.default_deadline_ms",
                "must be between 1 and ranking.max_deadline_ms",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// A `tracing` filter: `info`, `cascade=debug,hyper=warn`, …
    pub level: String,
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Defaults, then `file` (if any), then `CASCADE_*` overrides from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read(path.display().to_string(), e.to_string()))?;
                text.parse::<toml::Table>().map_err(|e| {
                    ConfigError::Parse(format!("{}: {}", path.display(), e.message()))
                })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut tree, env)?;
        serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
            let key = e.path().to_string();
            let problem = e.into_inner().message().to_string();
            if key == "." {
                ConfigError::Parse(problem)
            } else {
                ConfigError::Invalid { key, problem }
            }
        })
    }

    /// Checks everything that can be checked before binding or loading.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("server.listen", &self.server.listen)?;
        parse_addr("server.admin_listen", &self.server.admin_listen)?;
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        let server = &self.server;
        for (key, value) in [
            ("server.max_in_flight", server.max_in_flight as u64),
            ("server.max_connections", server.max_connections as u64),
            (
                "server.max_admin_connections",
                server.max_admin_connections as u64,
            ),
            ("server.header_timeout_ms", server.header_timeout_ms),
            ("server.idle_timeout_ms", server.idle_timeout_ms),
            ("server.body_timeout_ms", server.body_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.server.max_response_bytes < 1024 {
            return Err(invalid(
                "server.max_response_bytes",
                "must be at least 1024",
            ));
        }
        if self.server.worker_threads == 0 {
            return Err(invalid("server.worker_threads", "must be at least 1"));
        }
        if self.models.inference_threads == 0 {
            return Err(invalid("models.inference_threads", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.models.quality_tolerance) {
            return Err(invalid(
                "models.quality_tolerance",
                "must be between 0 and 1 (an absolute AUC); set models.quality_gate = false to turn the gate off",
            ));
        }
        let repo = &self.models.repository;
        if !repo.is_dir() {
            return Err(invalid(
                "models.repository",
                format!("directory \"{}\" does not exist", repo.display()),
            ));
        }
        self.ranking.validate()?;
        if self
            .server
            .admin_token
            .as_ref()
            .is_some_and(|t| t.0.len() < 8)
        {
            return Err(invalid(
                "server.admin_token",
                "must be at least 8 characters (or absent)",
            ));
        }
        if self.shadow.queue_capacity == 0 {
            return Err(invalid("shadow.queue_capacity", "must be at least 1"));
        }
        if !(1..=16).contains(&self.shadow.threads) {
            return Err(invalid("shadow.threads", "must be between 1 and 16"));
        }
        match (self.state.backend.as_str(), &self.state.redis_url) {
            ("embedded", _) => {}
            ("redis", Some(url)) if url.starts_with("redis://") => {}
            ("redis", _) => {
                return Err(invalid(
                    "state.redis_url",
                    "backend \"redis\" needs redis_url = \"redis://host:port/db\"",
                ))
            }
            (other, _) => {
                return Err(invalid(
                    "state.backend",
                    format!("\"{other}\" is not one of \"embedded\", \"redis\""),
                ))
            }
        }
        if self.state.redis_prefix.is_empty()
            || !self
                .state
                .redis_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-:.".contains(c))
        {
            return Err(invalid(
                "state.redis_prefix",
                "letters, digits and _ - : . only, at least one",
            ));
        }
        if let Err(e) = crate::data::schema::duration_ms(&self.state.dedupe_window) {
            return Err(invalid("state.dedupe_window", e));
        }
        if let Err(e) = crate::data::schema::duration_ms(&self.feedback.attribution_window) {
            return Err(invalid("feedback.attribution_window", e));
        }
        if self.feedback.max_recent_answers == 0 {
            return Err(invalid("feedback.max_recent_answers", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.feedback.log_sample_rate) {
            return Err(invalid(
                "feedback.log_sample_rate",
                "must be between 0 and 1",
            ));
        }
        if let Err(e) = crate::data::schema::duration_ms(&self.feedback.log_max_age) {
            return Err(invalid("feedback.log_max_age", e));
        }
        if self.feedback.log_max_bytes < 4096 {
            return Err(invalid("feedback.log_max_bytes", "must be at least 4096"));
        }
        if self.feedback.log_queue == 0 {
            return Err(invalid("feedback.log_queue", "must be at least 1"));
        }
        if self.state.redis_compact_entries == 0 {
            return Err(invalid("state.redis_compact_entries", "must be at least 1"));
        }
        if self.state.compact_bytes < 4096 {
            return Err(invalid("state.compact_bytes", "must be at least 4096"));
        }
        if self.state.max_batch_events == 0 {
            return Err(invalid("state.max_batch_events", "must be at least 1"));
        }
        if self.state.max_history == 0 {
            return Err(invalid("state.max_history", "must be at least 1"));
        }
        if self.state.max_users == 0 {
            return Err(invalid("state.max_users", "must be at least 1"));
        }
        if self.state.max_ids == 0 {
            return Err(invalid("state.max_ids", "must be at least 1"));
        }
        if let Err(e) = crate::data::schema::duration_ms(&self.state.max_clock_skew) {
            return Err(invalid("state.max_clock_skew", e));
        }
        let mon = &self.monitoring;
        if !(0.0..=1.0).contains(&mon.sample_rate) {
            return Err(invalid("monitoring.sample_rate", "must be between 0 and 1"));
        }
        if mon.window_rows == 0 {
            return Err(invalid("monitoring.window_rows", "must be at least 1"));
        }
        if self
            .logging
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(invalid(
                "logging.level",
                format!(
                    "\"{}\" is not a valid filter (try \"info\")",
                    self.logging.level
                ),
            ));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        parse_addr("server.listen", &self.server.listen).expect("validated")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        parse_addr("server.admin_listen", &self.server.admin_listen).expect("validated")
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("\"{value}\" is not an address like 127.0.0.1:8080"),
        )
    })
}

/// The configuration with every optional key set, serialised: the type of
/// each key an environment override may name.
fn key_types() -> toml::Table {
    let mut probe = Config::default();
    probe.server.admin_token = Some(Secret::new("x"));
    probe.models.ort_library = Some(PathBuf::from("x"));
    probe.ranking.filter_model = Some("x".into());
    probe.ranking.ranker_model = Some("x".into());
    probe.ranking.cold_start_model = Some("x".into());
    probe.ranking.hnsw.index_file = Some(PathBuf::from("x"));
    probe.shadow.log_file = Some(PathBuf::from("x"));
    match toml::Value::try_from(&probe) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    }
}

/// Merges `CASCADE_A__B=v` into `tree` as `a.b = v`, the value read by the
/// key's type: text for a string key whatever it looks like (a token
/// `0x7fffffff` stays that text, a salt `123` stays "123"), a TOML scalar
/// for a number or boolean key, and for keys of no fixed type (arrays,
/// per-model sections) a TOML value when it parses as one, else text.
fn apply_env(
    tree: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let types = key_types();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(invalid(&name, "empty key segment"));
        }
        let mut known = Some(&types);
        for key in &path[..path.len() - 1] {
            known = known
                .and_then(|t| t.get(key))
                .and_then(toml::Value::as_table);
        }
        let as_toml = || {
            format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
        };
        let text = || toml::Value::String(raw.clone());
        let value = match known.and_then(|t| t.get(&path[path.len() - 1])) {
            Some(toml::Value::String(_)) => text(),
            // A scalar that does not parse stays text, so deserialising
            // names the key and the type it wanted.
            Some(toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)) => {
                as_toml()
                    .filter(|v| !matches!(v, toml::Value::Array(_) | toml::Value::Table(_)))
                    .unwrap_or_else(text)
            }
            _ => as_toml().unwrap_or_else(text),
        };
        let mut table = &mut *tree;
        for key in &path[..path.len() - 1] {
            let slot = table
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = slot
                .as_table_mut()
                .ok_or_else(|| invalid(&name, format!("\"{key}\" is not a section")))?;
        }
        table.insert(path[path.len() - 1].clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn every_shipped_config_loads_and_validates() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("config");
        let mut seen = 0;
        let apps = std::fs::read_dir(root.join("examples"))
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path().join("config.toml"))
            .filter(|p| p.is_file());
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .chain(apps)
            .collect();
        for path in files {
            if path.extension().is_some_and(|e| e == "toml") {
                let config = Config::load(Some(&path), no_env())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                // Paths in shipped configs are relative to the project root.
                let mut rooted = config.clone();
                rooted.models.repository =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join(&config.models.repository);
                rooted.ranking.catalog =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join(&config.ranking.catalog);
                rooted
                    .validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 1, "no config files found in {}", dir.display());
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let env = vec![
            (
                "CASCADE_SERVER__LISTEN".to_string(),
                "0.0.0.0:1234".to_string(),
            ),
            (
                "CASCADE_MODELS__INFERENCE_THREADS".to_string(),
                "3".to_string(),
            ),
            (
                "CASCADE_MODELS__OVERRIDES__RANKER__BACKEND".to_string(),
                "ort".to_string(),
            ),
            ("CASCADE_UNRELATED".to_string(), "ignored".to_string()),
        ];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:1234");
        assert_eq!(c.models.inference_threads, 3);
        assert_eq!(c.models.overrides["ranker"].backend, Some(BackendKind::Ort));
        assert_eq!(c.server.admin_listen, ServerConfig::default().admin_listen);
    }

    #[test]
    fn env_values_are_read_by_the_keys_type() {
        let env = vec![
            (
                "CASCADE_SERVER__ADMIN_TOKEN".to_string(),
                "0x7fffffff".to_string(),
            ),
            ("CASCADE_EXPERIMENTS__SALT".to_string(), "123".to_string()),
            (
                "CASCADE_RANKING__FILTER_MODEL".to_string(),
                "1e3".to_string(),
            ),
            ("CASCADE_SHADOW__LOG_FILE".to_string(), "true".to_string()),
            (
                "CASCADE_SERVER__MAX_IN_FLIGHT".to_string(),
                "64".to_string(),
            ),
            ("CASCADE_RANKING__BATCHING".to_string(), "false".to_string()),
            (
                "CASCADE_MONITORING__SAMPLE_RATE".to_string(),
                "0.5".to_string(),
            ),
        ];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.server.admin_token, Some(Secret::new("0x7fffffff")));
        assert_eq!(c.experiments.salt, "123");
        assert_eq!(c.ranking.filter_model.as_deref(), Some("1e3"));
        assert_eq!(c.shadow.log_file, Some(PathBuf::from("true")));
        assert_eq!(c.server.max_in_flight, 64);
        assert!(!c.ranking.batching);
        assert_eq!(c.monitoring.sample_rate, 0.5);
        // A number key given text is an error naming the key.
        let env = vec![(
            "CASCADE_SERVER__MAX_IN_FLIGHT".to_string(),
            "lots".to_string(),
        )];
        let e = Config::load(None, env).unwrap_err().to_string();
        assert!(e.starts_with("server.max_in_flight: "), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let mut c = Config::default();
        c.ranking.enabled = false;
        c.models.repository = PathBuf::from("modls-does-not-exist");
        let e = c.validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "models.repository: directory \"modls-does-not-exist\" does not exist"
        );

        let mut c = Config::default();
        c.ranking.enabled = false;
        c.server.listen = "localhost".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("server.listen:"));

        for bad in [-0.1, 1.5, f64::NAN] {
            let mut c = Config::default();
            c.models.quality_tolerance = bad;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with("models.quality_tolerance: "), "{bad}: {e}");
        }
        let env = vec![
            (
                "CASCADE_MODELS__QUALITY_GATE".to_string(),
                "false".to_string(),
            ),
            (
                "CASCADE_MODELS__QUALITY_TOLERANCE".to_string(),
                "0.05".to_string(),
            ),
        ];
        let c = Config::load(None, env).unwrap();
        assert!(!c.models.quality_gate);
        assert_eq!(c.models.quality_tolerance, 0.05);

        let env = vec![("CASCADE_SERVER__LISTN".to_string(), "x".to_string())];
        let e = Config::load(None, env).unwrap_err().to_string();
        assert!(e.contains("listn"), "{e}");

        let env = vec![("CASCADE_MODELS__BACKEND".to_string(), "onnx".to_string())];
        let e = Config::load(None, env).unwrap_err().to_string();
        assert!(
            e.starts_with("models.backend: ") && e.contains("onnx"),
            "{e}"
        );

        for (backend, url, prefix, want) in [
            (
                "redis",
                None,
                "cascade",
                "state.redis_url: backend \"redis\" needs",
            ),
            ("redis", Some("http://x"), "cascade", "state.redis_url:"),
            (
                "sqlite",
                None,
                "cascade",
                "state.backend: \"sqlite\" is not one of",
            ),
            (
                "redis",
                Some("redis://127.0.0.1:6379/0"),
                "a b",
                "state.redis_prefix:",
            ),
        ] {
            let mut c = Config::default();
            c.ranking.enabled = false;
            c.state.backend = backend.into();
            c.state.redis_url = url.map(String::from);
            c.state.redis_prefix = prefix.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }
}
