//! The loaded catalog — an app's items and users, as its `schema.toml`
//! declares them and its Parquet snapshot holds them — and the vector
//! index over the item vectors.
//!
//! - [`index`]: top-k by inner product — exact scan or HNSW, the one the
//!   pipeline calls; below it [`graph`] (hnsw_rs's graph, frozen and searched
//!   by us), [`persist`] (the index dump), [`simd`] (dot-product kernels).
//! - [`synth`], [`npy`]: seeded synthetic embeddings and the `.npy` files
//!   the retrieval benchmark shares with Python; [`generate`]: whole
//!   synthetic catalogs at any scale, for benches and load tests.
//!
//! What a field means is the app's business: the catalog only knows the
//! roles `[retrieval]` gives fields (the vectors searched, the popularity
//! that orders the cold-start list, the items a user has seen).

pub mod changes;
pub mod generate;
pub mod graph;
pub mod index;
pub mod npy;
pub mod persist;
pub mod simd;
pub mod synth;

use std::path::Path;
use std::sync::Arc;

pub use index::{IndexKind, VectorIndex};

use crate::data::expr::Tables;
use crate::data::ids::Ids;
use crate::data::schema::{Entity, Schema};
use crate::data::table::{Slot, Table};
use crate::data::{parquet, DataError};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Load(#[from] DataError),
    #[error("{0}")]
    Query(String),
}

/// Everything about items and users the server knows.
#[derive(Clone)]
pub struct Catalog {
    pub schema: Arc<Schema>,
    pub items: Table,
    pub users: Table,
    /// Item rows by the popularity field, highest first (ties: lower row):
    /// the cold-start retrieval list.
    pub popular: Vec<u32>,
    popularity: Option<usize>,
    seen: Option<usize>,
    /// 0 for the snapshot; each catalog change from events makes the next.
    pub generation: u64,
}

/// The file that declares a catalog, in its folder.
pub const SCHEMA_FILE: &str = "schema.toml";

impl Catalog {
    /// Loads `schema.toml` and the snapshot files it names from `dir`.
    pub fn load(dir: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(dir.join(SCHEMA_FILE))
            .map_err(|e| DataError::load(SCHEMA_FILE, e.kind()))?;
        let schema = Schema::parse(&text).map_err(|e| DataError::load(SCHEMA_FILE, e))?;
        let r = &schema.retrieval;
        let items = parquet::read(dir, &schema.items, None, r.item_vector.as_deref())?;
        let users = if schema.users.fields.is_empty() && !dir.join(&schema.users.file).is_file() {
            Table::build(
                &Entity::default(),
                Ids::new(Vec::new(), &schema.users.file)?,
                Vec::new(),
                None,
            )
        } else {
            parquet::read(
                dir,
                &schema.users,
                Some(items.base_ids()),
                r.user_vector.as_deref(),
            )?
        };
        let row_of = |entity: &Entity, table: &Table, name: &Option<String>| {
            name.as_ref()
                .and_then(|n| entity.field(n))
                .map(|(i, _)| table.slot(i))
        };
        let popularity = match row_of(&schema.items, &items, &r.popularity) {
            Some(Slot::Row { at, .. }) => Some(at),
            _ => None,
        };
        let seen = match row_of(&schema.users, &users, &r.seen) {
            Some(Slot::List(i)) => Some(i),
            _ => None,
        };
        let mut catalog = Catalog {
            schema: Arc::new(schema),
            items,
            users,
            popular: Vec::new(),
            popularity,
            seen,
            generation: 0,
        };
        let mut popular: Vec<u32> = (0..catalog.items.len() as u32).collect();
        if popularity.is_some() {
            let p = |r: u32| catalog.popular_key(r);
            popular.sort_by(|&a, &b| p(b).total_cmp(&p(a)).then(a.cmp(&b)));
        }
        catalog.popular = popular;
        Ok(catalog)
    }

    /// What orders the cold-start list (highest first, ties: lower row):
    /// the popularity field (missing lowest), else row order.
    fn popular_key(&self, row: u32) -> f32 {
        match self.popularity {
            Some(at) => {
                let v = self.items.scalar(row, at);
                if v.is_nan() {
                    f32::NEG_INFINITY
                } else {
                    v
                }
            }
            None => 0.0,
        }
    }

    /// What a feature plan compiles against.
    pub fn tables(&self) -> Tables<'_> {
        Tables {
            schema: &self.schema,
            items: &self.items,
            users: &self.users,
        }
    }

    /// What assembly reads, without live state.
    pub fn sources(&self) -> crate::data::features::Sources<'_> {
        crate::data::features::Sources {
            items: &self.items,
            users: &self.users,
            live: None,
        }
    }

    /// The item vectors the index searches, `[items, dim]`, and `dim`.
    pub fn item_vectors(&self) -> Option<(&Arc<[f32]>, usize)> {
        self.items.vectors()
    }

    /// Dimension of the retrieval vectors (0 without them).
    pub fn dim(&self) -> usize {
        self.items.vectors().map_or(0, |(_, d)| d)
    }

    pub fn item_vector(&self, row: u32) -> &[f32] {
        self.items.vector(row)
    }

    /// A known user's retrieval vector (empty when the schema has none).
    pub fn user_vector(&self, row: u32) -> &[f32] {
        self.users.vector(row)
    }

    /// Item rows user `row` has seen (never retrieved for them again).
    pub fn seen(&self, row: u32) -> &[u32] {
        match self.seen {
            Some(i) => self.users.list(i, row),
            None => &[],
        }
    }

    /// The item's popularity (0 without a popularity field; missing is 0).
    pub fn popularity(&self, row: u32) -> f32 {
        match self.popularity {
            Some(at) => {
                let v = self.items.scalar(row, at);
                if v.is_nan() {
                    0.0
                } else {
                    v
                }
            }
            None => 0.0,
        }
    }

    pub fn item_id(&self, row: u32) -> &str {
        self.items.id(row)
    }
}
