//! Top-k by inner product over unit-norm item embeddings.
//!
//! Two implementations behind one trait: an exact scan (what small catalogs
//! want: 1,682 × 32 is a few µs) and HNSW from `hnsw_rs` with our own
//! distance (`1 − dot`, clamped at 0), which never asserts on slightly
//! non-unit vectors the way `DistDot` does. Queries are checked and
//! normalised once in [`search`] before any index sees them.

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::prelude::{FilterT, Hnsw};
use serde::{Deserialize, Serialize};

use super::CatalogError;

/// How retrieval finds the nearest items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// Exact below `exact_below` items, HNSW above.
    #[default]
    Auto,
    Exact,
    Hnsw,
}

/// HNSW build and search parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswParams {
    /// Links per node (M).
    pub max_connections: usize,
    pub ef_construction: usize,
    /// Search breadth; raised to k when k is larger.
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            max_connections: 16,
            ef_construction: 200,
            ef_search: 128,
        }
    }
}

pub trait VectorIndex: Send + Sync {
    fn name(&self) -> &'static str;
    fn len(&self) -> usize;
    fn dim(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `k` rows with the largest `query · row`, skipping rows for which
    /// `skip` is true; sorted by score descending, ties by row ascending.
    /// `query` is unit-norm and of the right dimension (see [`search`]).
    fn search_unit(&self, query: &[f32], k: usize, skip: &dyn Fn(u32) -> bool) -> Vec<(u32, f32)>;
}

/// Checks and normalises `query`, then searches: a wrong dimension, a
/// non-finite value or a zero vector is an error, never a panic.
pub fn search(
    index: &dyn VectorIndex,
    query: &[f32],
    k: usize,
    skip: &dyn Fn(u32) -> bool,
) -> Result<Vec<(u32, f32)>, CatalogError> {
    if query.len() != index.dim() {
        return Err(CatalogError::Query(format!(
            "query has dimension {}, the index {}",
            query.len(),
            index.dim()
        )));
    }
    if query.iter().any(|x| !x.is_finite()) {
        return Err(CatalogError::Query("query has a non-finite value".into()));
    }
    let norm = dot(query, query).sqrt();
    if norm < 1e-12 {
        return Err(CatalogError::Query("query is a zero vector".into()));
    }
    if index.is_empty() || k == 0 {
        return Ok(Vec::new());
    }
    let unit: Vec<f32> = query.iter().map(|x| x / norm).collect();
    Ok(index.search_unit(&unit, k, skip))
}

/// Inner product with eight independent accumulators, so the compiler
/// vectorises it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn by_score_then_row(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Brute force over a contiguous `[len, dim]` matrix.
pub struct ExactIndex {
    vectors: Vec<f32>,
    dim: usize,
}

impl ExactIndex {
    pub fn new(vectors: Vec<f32>, dim: usize) -> ExactIndex {
        assert!(dim > 0 && vectors.len().is_multiple_of(dim), "matrix shape");
        ExactIndex { vectors, dim }
    }
}

impl VectorIndex for ExactIndex {
    fn name(&self) -> &'static str {
        "exact"
    }

    fn len(&self) -> usize {
        self.vectors.len() / self.dim
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn search_unit(&self, query: &[f32], k: usize, skip: &dyn Fn(u32) -> bool) -> Vec<(u32, f32)> {
        let mut scored: Vec<(u32, f32)> = self
            .vectors
            .chunks_exact(self.dim)
            .enumerate()
            .filter(|(row, _)| !skip(*row as u32))
            .map(|(row, v)| (row as u32, dot(query, v)))
            .collect();
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, by_score_then_row);
            scored.truncate(k);
        }
        scored.sort_unstable_by(by_score_then_row);
        scored
    }
}

/// `1 − a·b` for unit vectors, clamped at 0 so rounding never yields a
/// negative distance (and nothing asserts).
#[derive(Debug, Clone, Copy, Default)]
pub struct InnerProductDistance;

impl Distance<f32> for InnerProductDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

struct Skip<'a>(&'a dyn Fn(u32) -> bool);

impl FilterT for Skip<'_> {
    fn hnsw_filter(&self, id: &usize) -> bool {
        !(self.0)(*id as u32)
    }
}

/// HNSW graph over the item embeddings (hnsw_rs).
pub struct HnswIndex {
    graph: Hnsw<'static, f32, InnerProductDistance>,
    len: usize,
    dim: usize,
    ef_search: usize,
}

impl HnswIndex {
    /// Builds the graph (in parallel) from a `[len, dim]` matrix of unit vectors.
    pub fn build(vectors: &[f32], dim: usize, params: &HnswParams) -> HnswIndex {
        let len = vectors.len() / dim;
        let layers = 16;
        let graph = Hnsw::new(
            params.max_connections,
            len.max(1),
            layers,
            params.ef_construction,
            InnerProductDistance,
        );
        let points: Vec<(&[f32], usize)> = vectors.chunks_exact(dim).zip(0..).collect();
        graph.parallel_insert_slice(&points);
        let mut graph = graph;
        graph.set_searching_mode(true);
        HnswIndex {
            graph,
            len,
            dim,
            ef_search: params.ef_search,
        }
    }
}

impl VectorIndex for HnswIndex {
    fn name(&self) -> &'static str {
        "hnsw"
    }

    fn len(&self) -> usize {
        self.len
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn search_unit(&self, query: &[f32], k: usize, skip: &dyn Fn(u32) -> bool) -> Vec<(u32, f32)> {
        let filter = Skip(skip);
        let ef = self.ef_search.max(k);
        let mut found: Vec<(u32, f32)> = self
            .graph
            .search_filter(query, k, ef, Some(&filter))
            .into_iter()
            .map(|n| (n.d_id as u32, 1.0 - n.distance))
            .collect();
        found.sort_unstable_by(by_score_then_row);
        found.truncate(k);
        found
    }
}

/// Picks and builds the index for `kind` over a `[len, dim]` matrix.
pub fn build(
    kind: IndexKind,
    exact_below: usize,
    vectors: &[f32],
    dim: usize,
    params: &HnswParams,
) -> Box<dyn VectorIndex> {
    let len = vectors.len() / dim;
    let use_hnsw = match kind {
        IndexKind::Exact => false,
        IndexKind::Hnsw => true,
        IndexKind::Auto => len >= exact_below,
    };
    if use_hnsw {
        Box::new(HnswIndex::build(vectors, dim, params))
    } else {
        Box::new(ExactIndex::new(vectors.to_vec(), dim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random unit vectors.
    fn vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.max(1);
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let row: Vec<f32> = (0..dim)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            let norm = dot(&row, &row).sqrt();
            out.extend(row.iter().map(|x| x / norm));
        }
        out
    }

    #[test]
    fn exact_returns_sorted_top_k_and_honours_skip() {
        let v = vectors(500, 16, 7);
        let idx = ExactIndex::new(v.clone(), 16);
        let q = &v[16 * 42..16 * 43];
        let top = search(&idx, q, 10, &|_| false).unwrap();
        assert_eq!(top.len(), 10);
        assert_eq!(top[0].0, 42, "a vector is its own nearest neighbour");
        assert!((top[0].1 - 1.0).abs() < 1e-5);
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
        let skipped = search(&idx, q, 10, &|r| r == 42).unwrap();
        assert!(skipped.iter().all(|(r, _)| *r != 42));
        assert_eq!(skipped[..9], top[1..]);
    }

    #[test]
    fn bad_queries_are_errors_not_panics() {
        let idx = ExactIndex::new(vectors(10, 4, 3), 4);
        assert!(search(&idx, &[0.0; 4], 3, &|_| false).is_err());
        assert!(search(&idx, &[1.0, f32::NAN, 0.0, 0.0], 3, &|_| false).is_err());
        assert!(search(&idx, &[1.0; 5], 3, &|_| false).is_err());
        // Non-unit queries are normalised, not rejected.
        assert_eq!(
            search(&idx, &[3.0, 0.0, 0.0, 0.0], 3, &|_| false)
                .unwrap()
                .len(),
            3
        );
        let empty = ExactIndex::new(Vec::new(), 4);
        assert!(search(&empty, &[1.0; 4], 3, &|_| false).unwrap().is_empty());
    }

    #[test]
    fn hnsw_recall_against_exact() {
        let (n, dim) = (3000, 32);
        let v = vectors(n, dim, 11);
        let exact = ExactIndex::new(v.clone(), dim);
        let hnsw = HnswIndex::build(&v, dim, &HnswParams::default());
        let (mut hit, mut total) = (0, 0);
        for q in 0..50 {
            let query = &v[dim * q * 7..dim * (q * 7 + 1)];
            let want: Vec<u32> = search(&exact, query, 20, &|r| r % 5 == 0)
                .unwrap()
                .iter()
                .map(|x| x.0)
                .collect();
            let got = search(&hnsw, query, 20, &|r| r % 5 == 0).unwrap();
            assert!(got.iter().all(|(r, _)| r % 5 != 0), "filter honoured");
            hit += got.iter().filter(|(r, _)| want.contains(r)).count();
            total += want.len();
        }
        let recall = hit as f64 / total as f64;
        assert!(recall >= 0.9, "recall@20 {recall}");
    }
}
