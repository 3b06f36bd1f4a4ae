//! The data plane: what an app's data is and how features are computed
//! from it, declared in files, never in Rust.
//!
//! - [`schema`]: `schema.toml` — item, user and context fields, typed, with
//!   vocabularies, defaults and validation rules.
//! - [`parquet`]: the catalog snapshot (`items.parquet`, `users.parquet`)
//!   read into [`table`]s, checked against the schema.
//! - [`ids`]: entity ids and their rows.
//! - [`context`]: a request's `context` object, validated by the schema.
//! - [`expr`]: the feature language — parsed, type-checked and compiled
//!   once into a plan, evaluated a column at a time.
//! - [`features`]: a model's declared features, assembled into its input.

pub mod context;
pub mod expr;
pub mod features;
pub mod ids;
pub mod parquet;
pub mod schema;
pub mod table;

/// Why data could not be loaded. `file` is relative to the catalog folder,
/// never a host path.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("catalog {file}: {reason}")]
    Load { file: String, reason: String },
}

impl DataError {
    pub fn load(file: &str, reason: impl std::fmt::Display) -> DataError {
        DataError::Load {
            file: file.to_string(),
            reason: reason.to_string(),
        }
    }
}
