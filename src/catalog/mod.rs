//! The item catalog and the user table the ranking pipeline reads: ids,
//! embeddings and the per-item / per-user statistics the models' features
//! need, loaded once at start from `models/catalog/` (safetensors for the
//! dense parts, JSON for ids), plus the vector index over item embeddings.
//!
//! - [`tables`]: struct-of-arrays item and user tables.
//! - [`index`]: top-k by inner product — exact scan or HNSW, the one the
//!   pipeline calls; below it [`graph`] (hnsw_rs's graph, frozen and searched
//!   by us), [`persist`] (the index dump), [`simd`] (dot-product kernels).
//! - [`synth`], [`npy`]: seeded synthetic embeddings and the `.npy` files
//!   the retrieval benchmark shares with Python; [`generate`]: whole
//!   synthetic catalogs at any scale, for benches and load tests.

pub mod generate;
pub mod graph;
pub mod index;
pub mod npy;
pub mod persist;
pub mod simd;
pub mod synth;
pub mod tables;

use std::path::Path;

pub use index::{IndexKind, VectorIndex};
pub use tables::{ItemStat, Items, Users};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// `file` is relative to the catalog folder, never a host path.
    #[error("catalog {file}: {reason}")]
    Load { file: String, reason: String },
    #[error("{0}")]
    Query(String),
}

impl CatalogError {
    pub fn load(file: &str, reason: impl std::fmt::Display) -> CatalogError {
        CatalogError::Load {
            file: file.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Everything about items and users the server knows.
pub struct Catalog {
    pub items: Items,
    pub users: Users,
    /// Item rows, most popular first: the cold-start retrieval list.
    pub popular: Vec<u32>,
    /// Occupation names in index order (for cold-start context).
    pub occupations: Vec<String>,
}

impl Catalog {
    pub fn load(dir: &Path) -> Result<Catalog, CatalogError> {
        let items = Items::load(dir)?;
        let (users, occupations) = Users::load(dir, &items)?;
        let popular = tables::popular_rows(dir, &items)?;
        if occupations.len() != items.n_occupations {
            return Err(CatalogError::load(
                "users.json",
                format!(
                    "{} occupations, but items.safetensors occupation_lift has {} columns",
                    occupations.len(),
                    items.n_occupations
                ),
            ));
        }
        Ok(Catalog {
            items,
            users,
            popular,
            occupations,
        })
    }

    pub fn occupation_index(&self, name: &str) -> Option<usize> {
        self.occupations.iter().position(|o| o == name)
    }
}
