//! Scenarios: what each request says. A scenario is a deterministic stream of
//! ready-to-send requests (path + JSON body), generated from a seed, so two
//! runs with the same flags send byte-identical traffic.
//!
//! - [`rank`]: `POST /v1/rank` with a mix of known users, cold-start users,
//!   caller-supplied candidates and repeats (cache hits).
//! - [`infer`]: `POST /v2/models/{model}/infer` with real feature rows.
//! - [`events`]: `POST /v1/events` with batches of interactions.

pub mod events;
pub mod infer;
pub mod rank;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

/// One request, built before its send time so that sending costs nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub path: Arc<str>,
    pub body: Bytes,
    /// Which part of the mix it belongs to ("known", "cold", "infer", ...).
    pub kind: &'static str,
}

/// An endless, deterministic stream of requests.
pub trait Source: Send + 'static {
    fn next_request(&mut self) -> Prepared;
}

/// The model repository to read catalog and golden rows from: `explicit` if
/// given, else `./models`, else the workspace's `models/` next to this crate.
pub fn models_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let here = PathBuf::from("models");
    if here.join("catalog").is_dir() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
}

/// Reads and parses a JSON file, naming the file in every error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    use anyhow::Context as _;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
