//! Top-k by inner product over unit-norm item embeddings.
//!
//! Two implementations behind one trait: an exact SIMD scan (what small
//! catalogs want: 1,682 × 32 is a few µs, and it beats HNSW up to the size
//! measured in benches/RESULTS.md) and HNSW: the graph is built by hnsw_rs,
//! then frozen into flat arrays and searched by our own code ([`graph`]),
//! optionally dumped to a file and loaded at start ([`persist`]). Item
//! vectors are normalised once when the index is made; queries are checked
//! and normalised once in [`search`] before any index sees them.
//!
//! [`graph`]: super::graph
//! [`persist`]: super::persist

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::graph::{self, BuildParams, Graph, InnerProductDistance};
use super::{persist, simd, CatalogError};

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

/// HNSW build and search parameters (`[ranking.hnsw]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswParams {
    /// Links per node (M); layer 0 keeps 2M.
    pub max_connections: usize,
    pub ef_construction: usize,
    /// Search breadth; raised to k when k is larger.
    pub ef_search: usize,
    /// Walk the graph with an int8 copy of the vectors, re-scoring the
    /// `ef_search` survivors exactly.
    pub quantised: bool,
    /// A dump made by `cascade index build`, loaded instead of building the
    /// graph at start. It must have been built from this catalog's
    /// embeddings with these `max_connections` and `ef_construction`.
    pub index_file: Option<PathBuf>,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            max_connections: 16,
            ef_construction: 200,
            ef_search: 160,
            quantised: false,
            index_file: None,
        }
    }
}

impl HnswParams {
    pub fn build_params(&self) -> BuildParams {
        BuildParams {
            max_connections: self.max_connections,
            ef_construction: self.ef_construction,
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

/// Queries up to this dimension are normalised on the stack.
const STACK_DIM: usize = 256;

/// Checks and normalises `query`, then searches: a wrong dimension, a
/// non-finite value or a zero vector is an error, never a panic.
pub fn search(
    index: &dyn VectorIndex,
    query: &[f32],
    k: usize,
    skip: &dyn Fn(u32) -> bool,
) -> Result<Vec<(u32, f32)>, CatalogError> {
    search_with_segment(index, query, k, skip, &[], &[])
}

/// [`search`] over the index and, beside it, a segment searched exactly:
/// `rows` (sorted) with their unit vectors `units` (`[rows, dim]`; an
/// all-zero one is never returned). The index's own entries for those rows
/// are skipped; the two answers are merged by score.
pub fn search_with_segment(
    index: &dyn VectorIndex,
    query: &[f32],
    k: usize,
    skip: &dyn Fn(u32) -> bool,
    rows: &[u32],
    units: &[f32],
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
    // In f64: a finite f32 vector's squared norm can overflow f32.
    let norm = query
        .iter()
        .map(|&x| x as f64 * x as f64)
        .sum::<f64>()
        .sqrt();
    if norm < 1e-12 {
        return Err(CatalogError::Query("query is a zero vector".into()));
    }
    if (index.is_empty() && rows.is_empty()) || k == 0 {
        return Ok(Vec::new());
    }
    let mut stack = [0f32; STACK_DIM];
    let mut heap = Vec::new();
    let unit: &mut [f32] = if query.len() <= STACK_DIM {
        &mut stack[..query.len()]
    } else {
        heap.resize(query.len(), 0.0);
        &mut heap
    };
    for (u, &x) in unit.iter_mut().zip(query) {
        *u = (x as f64 / norm) as f32;
    }
    if rows.is_empty() {
        return Ok(index.search_unit(unit, k, skip));
    }
    let dim = unit.len();
    let found = RowSet::with(rows, |segment| {
        index.search_unit(unit, k, &|r| skip(r) || segment.contains(r))
    });
    Ok(with_keys(|keys| {
        keys.extend(found.iter().map(|&(row, s)| key(s, row)));
        let kern = simd::kernels();
        for (v, &row) in units.chunks_exact(dim).zip(rows) {
            if skip(row) {
                continue;
            }
            let s = kern.dot(unit, v);
            // An all-zero vector (an event cleared it) scores 0 and is
            // never an answer.
            if s == 0.0 && v.iter().all(|&x| x == 0.0) {
                continue;
            }
            keys.push(key(s, row));
        }
        best_of(keys, k)
    }))
}

/// Inner product with the fastest kernel this CPU has.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    simd::kernels().dot(a, b)
}

/// The rows of a `[len, dim]` matrix scaled to unit length (a zero or
/// non-finite row becomes all zeros: it scores 0 against every query).
pub fn unit_rows(vectors: &[f32], dim: usize) -> Vec<f32> {
    let mut out = vectors.to_vec();
    for row in out.chunks_exact_mut(dim) {
        to_unit(row);
    }
    out
}

/// One row of [`unit_rows`], in place.
fn to_unit(row: &mut [f32]) {
    let norm = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    if norm.is_finite() && norm > 1e-12 {
        row.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    } else {
        row.iter_mut().for_each(|x| *x = 0.0);
    }
}

/// Exact top-k over a `[len, dim]` matrix: every row's score first, then
/// the k best of the rows not skipped, selected and sorted as integer keys
/// (one `u64` per row: the score's total order, then the row), which is
/// cheaper than a heap of float pairs when k is a sizeable share of the
/// rows (300 of 1,682 in the shipped app).
pub fn exact_top_k(
    vectors: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    skip: &dyn Fn(u32) -> bool,
) -> Vec<(u32, f32)> {
    if k == 0 || dim == 0 {
        return Vec::new();
    }
    if query.len() != dim {
        debug_assert!(false, "a {}-long query over {dim}-long rows", query.len());
        return Vec::new();
    }
    with_buffer(&SCORES, |scores| {
        // Every row in one call (skipped ones too: a few percent of them,
        // cheaper than a call per row), then the keys of those kept.
        simd::kernels().dots(query, vectors, scores);
        with_keys(|keys| {
            keys.extend(
                scores
                    .iter()
                    .enumerate()
                    .filter(|(row, _)| !skip(*row as u32))
                    .map(|(row, &s)| key(s, row as u32)),
            );
            best_of(keys, k)
        })
    })
}

/// Keeps the `keep` best of `scored` (score descending, ties by row
/// ascending), sorted: a selection then a sort of what is kept, as integer
/// keys.
pub fn top_scored(scored: &mut Vec<(u32, f32)>, keep: usize) {
    let best = with_keys(|keys| {
        keys.extend(scored.iter().map(|&(row, s)| key(s, row)));
        best_of(keys, keep)
    });
    *scored = best;
}

/// The `k` smallest keys, sorted, as (row, score).
fn best_of(keys: &mut Vec<u64>, k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    if keys.len() > k {
        keys.select_nth_unstable(k - 1);
        keys.truncate(k);
    }
    keys.sort_unstable();
    keys.iter().map(|&key| unkey(key)).collect()
}

/// Runs `f` with this thread's (emptied) key buffer.
fn with_keys<R>(f: impl FnOnce(&mut Vec<u64>) -> R) -> R {
    with_buffer(&KEYS, f)
}

/// Runs `f` with this thread's (emptied) buffer `key`.
fn with_buffer<T: 'static, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>,
    f: impl FnOnce(&mut Vec<T>) -> R,
) -> R {
    key.with(|cell| {
        // A nested call (none today) gets a buffer of its own.
        let mut own = Vec::new();
        let mut guard = cell.try_borrow_mut();
        let buf = match guard.as_deref_mut() {
            Ok(buf) => buf,
            Err(_) => &mut own,
        };
        buf.clear();
        f(buf)
    })
}

thread_local! {
    /// Per-thread score buffer of [`exact_top_k`].
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread selection buffer of [`exact_top_k`] and [`top_scored`].
    static KEYS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A key whose ascending order is score descending (in `f32::total_cmp`'s
/// order), then row ascending.
#[inline]
fn key(score: f32, row: u32) -> u64 {
    let bits = score.to_bits();
    // Flip the magnitude of negatives, then the sign bit: ascending u32
    // order is now total_cmp order. Inverted for descending.
    let ordered = (bits ^ ((((bits as i32) >> 31) as u32) >> 1)) ^ 0x8000_0000;
    ((!ordered as u64) << 32) | row as u64
}

#[inline]
fn unkey(key: u64) -> (u32, f32) {
    let ordered = !((key >> 32) as u32) ^ 0x8000_0000;
    let bits = ordered ^ ((((ordered as i32) >> 31) as u32) >> 1);
    (key as u32, f32::from_bits(bits))
}

/// A set of catalog rows, one bit each: what retrieval asks of every row it
/// considers ("skip this one?") costs a load and a mask, whatever the set's
/// size. The bits live in a per-thread buffer that only grows; [`RowSet::with`]
/// clears what it set before returning.
pub struct RowSet {
    bits: Vec<u64>,
}

impl RowSet {
    #[inline]
    pub fn contains(&self, row: u32) -> bool {
        self.bits
            .get(row as usize / 64)
            .is_some_and(|w| w & (1 << (row % 64)) != 0)
    }

    /// Runs `f` with the set of `rows` (duplicates are fine).
    pub fn with<R>(rows: &[u32], f: impl FnOnce(&RowSet) -> R) -> R {
        let mut set = ROW_SETS
            .with(|cell| cell.borrow_mut().pop())
            .unwrap_or(RowSet { bits: Vec::new() });
        for &row in rows {
            let word = row as usize / 64;
            if word >= set.bits.len() {
                set.bits.resize(word + 1, 0);
            }
            set.bits[word] |= 1 << (row % 64);
        }
        let out = f(&set);
        for &row in rows {
            set.bits[row as usize / 64] = 0;
        }
        ROW_SETS.with(|cell| cell.borrow_mut().push(set));
        out
    }
}

thread_local! {
    /// Spare [`RowSet`]s (a stack, so a nested `with` gets its own).
    static ROW_SETS: std::cell::RefCell<Vec<RowSet>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Brute force over a contiguous `[len, dim]` matrix of unit vectors.
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
        exact_top_k(&self.vectors, self.dim, query, k, skip)
    }
}

/// HNSW over the item embeddings: hnsw_rs's graph, frozen and searched by
/// [`Graph`].
pub struct HnswIndex {
    graph: Graph,
    ef_search: usize,
}

impl HnswIndex {
    /// Builds the graph (on the rayon pool) from a `[len, dim]` matrix,
    /// normalising the rows first; `progress(done, total)` between slices.
    pub fn build_with_progress(
        vectors: &[f32],
        dim: usize,
        params: &HnswParams,
        progress: &mut dyn FnMut(usize, usize),
    ) -> HnswIndex {
        let unit = unit_rows(vectors, dim);
        let build = params.build_params();
        let hnsw =
            graph::build_hnsw_rs(&unit, dim, build, InnerProductDistance::default(), progress);
        let graph = Graph::from_hnsw_rs(&hnsw, unit, dim, build);
        HnswIndex::from_graph(graph, params)
    }

    pub fn build(vectors: &[f32], dim: usize, params: &HnswParams) -> HnswIndex {
        HnswIndex::build_with_progress(vectors, dim, params, &mut |_, _| {})
    }

    /// Wraps a built or loaded graph with the search settings of `params`.
    pub fn from_graph(mut graph: Graph, params: &HnswParams) -> HnswIndex {
        graph.set_quantised(params.quantised);
        HnswIndex {
            graph,
            ef_search: params.ef_search,
        }
    }

    /// Loads a dump and checks that it is the graph of exactly these
    /// vectors with these build parameters; `shared`, when given, is the
    /// same matrix in an `Arc` the index may keep instead of its own copy.
    pub fn load(
        path: &Path,
        vectors: &[f32],
        shared: Option<&Arc<[f32]>>,
        dim: usize,
        params: &HnswParams,
    ) -> Result<HnswIndex, String> {
        let graph = persist::load(path)?;
        let len = vectors.len() / dim;
        if graph.dim() != dim || graph.len() != len {
            return Err(format!(
                "the dump holds {} items of dimension {}, the catalog {len} of dimension {dim}",
                graph.len(),
                graph.dim()
            ));
        }
        let (got, want) = (graph.params(), params.build_params());
        if got != want {
            return Err(format!(
                "the dump was built with max_connections {} and ef_construction {}, \
                 [ranking.hnsw] says {} and {}",
                got.max_connections,
                got.ef_construction,
                want.max_connections,
                want.ef_construction
            ));
        }
        // Row by row, without a unit copy of the whole matrix (256 MB more
        // at start-up at a million 64-dim items): the dump must hold the
        // catalog's embeddings at unit length, bit for bit.
        let mut shared = shared.filter(|v| v.len() == vectors.len());
        let mut unit = vec![0.0f32; dim];
        for (i, (row, dumped)) in vectors
            .chunks_exact(dim)
            .zip(graph.vectors().chunks_exact(dim))
            .enumerate()
        {
            unit.copy_from_slice(row);
            to_unit(&mut unit);
            if dumped != unit.as_slice() {
                return Err(
                    "the dump was built from other item embeddings than the catalog's".into(),
                );
            }
            // Catalog embeddings that are unit already (to float rounding)
            // are the dump's vectors: keep one copy (256 MB at a million
            // 64-dim items). Scores then differ from the dump's by rounding only.
            shared = shared.filter(|v| {
                v[i * dim..(i + 1) * dim]
                    .iter()
                    .zip(&unit)
                    .all(|(a, b)| (a - b).abs() <= 1e-6)
            });
        }
        let mut graph = graph;
        if let Some(shared) = shared {
            graph.vectors = shared.clone();
        }
        Ok(HnswIndex::from_graph(graph, params))
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn set_ef_search(&mut self, ef: usize) {
        self.ef_search = ef;
    }
}

impl VectorIndex for HnswIndex {
    fn name(&self) -> &'static str {
        "hnsw"
    }

    fn len(&self) -> usize {
        self.graph.len()
    }

    fn dim(&self) -> usize {
        self.graph.dim()
    }

    fn search_unit(&self, query: &[f32], k: usize, skip: &dyn Fn(u32) -> bool) -> Vec<(u32, f32)> {
        let found = self.graph.search(query, k, self.ef_search, skip);
        if found.len() < k && found.len() < self.len() {
            // The skip list hid most of what the beam reached: scan, so that
            // k items come back whenever k remain.
            return exact_top_k(self.graph.vectors(), self.dim(), query, k, skip);
        }
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
    if uses_hnsw(kind, exact_below, vectors.len() / dim) {
        Box::new(HnswIndex::build(vectors, dim, params))
    } else {
        Box::new(ExactIndex::new(unit_rows(vectors, dim), dim))
    }
}

fn uses_hnsw(kind: IndexKind, exact_below: usize, len: usize) -> bool {
    match kind {
        IndexKind::Exact => false,
        IndexKind::Hnsw => true,
        IndexKind::Auto => len >= exact_below,
    }
}

/// [`build`], or when `params.index_file` is set and the kind calls for
/// HNSW, loads that dump; errors name the config key.
pub fn open(
    kind: IndexKind,
    exact_below: usize,
    vectors: &Arc<[f32]>,
    dim: usize,
    params: &HnswParams,
) -> Result<Box<dyn VectorIndex>, String> {
    match &params.index_file {
        Some(path) if kind != IndexKind::Exact => {
            let index = HnswIndex::load(path, vectors, Some(vectors), dim, params)
                .map_err(|e| format!("ranking.hnsw.index_file \"{}\": {e}", path.display()))?;
            Ok(Box::new(index))
        }
        _ => Ok(build(kind, exact_below, vectors, dim, params)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_score_then_row(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
        b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
    }

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
    fn keys_order_by_score_descending_then_row_and_round_trip() {
        let scores = [
            f32::INFINITY,
            1.0,
            0.5,
            1e-30,
            0.0,
            -0.0,
            -1e-30,
            -0.5,
            -1.0,
            f32::NEG_INFINITY,
        ];
        let mut pairs: Vec<(u32, f32)> = scores
            .iter()
            .enumerate()
            .flat_map(|(i, &s)| [(i as u32 + 100, s), (i as u32, s)])
            .collect();
        let mut keys: Vec<u64> = pairs.iter().map(|&(r, s)| key(s, r)).collect();
        keys.sort_unstable();
        pairs.sort_by(by_score_then_row);
        let back: Vec<(u32, f32)> = keys.iter().map(|&k| unkey(k)).collect();
        assert_eq!(back.len(), pairs.len());
        for (b, p) in back.iter().zip(&pairs) {
            assert_eq!(b.0, p.0);
            assert_eq!(
                b.1.to_bits(),
                p.1.to_bits(),
                "exact bits back, sign of zero too"
            );
        }
    }

    #[test]
    fn row_sets_hold_their_rows_and_leave_the_buffer_clean() {
        let rows = [3u32, 64, 65, 3, 100_000];
        RowSet::with(&rows, |set| {
            for r in [3, 64, 65, 100_000] {
                assert!(set.contains(r), "{r}");
            }
            for r in [0, 2, 4, 63, 66, 99_999, 100_001, u32::MAX] {
                assert!(!set.contains(r), "{r}");
            }
            // A nested set is its own.
            RowSet::with(&[5], |inner| {
                assert!(inner.contains(5) && !inner.contains(3));
            });
        });
        // The reused buffer starts empty again.
        RowSet::with(&[7], |set| {
            assert!(set.contains(7));
            assert!(!set.contains(3) && !set.contains(64) && !set.contains(100_000));
        });
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

    fn small_params() -> HnswParams {
        HnswParams {
            max_connections: 8,
            ef_construction: 64,
            ef_search: 32,
            ..HnswParams::default()
        }
    }

    #[test]
    fn hnsw_never_panics_on_bad_queries_or_empty_catalogs() {
        let params = small_params();
        let idx = HnswIndex::build(&vectors(300, 8, 5), 8, &params);
        assert!(search(&idx, &[0.0; 8], 3, &|_| false).is_err());
        assert!(search(&idx, &[f32::INFINITY; 8], 3, &|_| false).is_err());
        assert!(search(&idx, &[1.0; 7], 3, &|_| false).is_err());
        // Huge but finite components: normalised in f64, not overflowed.
        let big = search(&idx, &[3e38; 8], 3, &|_| false).unwrap();
        assert_eq!(big.len(), 3);
        // k beyond the catalog: everything, once.
        assert_eq!(
            search(&idx, &[1.0; 8], 1000, &|_| false).unwrap().len(),
            300
        );
        let empty = HnswIndex::build(&[], 8, &params);
        assert!(empty.is_empty());
        assert!(search(&empty, &[1.0; 8], 3, &|_| false).unwrap().is_empty());
        // Zero and NaN rows in the catalog become zero vectors, not panics.
        let mut odd = vectors(50, 4, 9);
        odd[..4].fill(0.0);
        odd[4] = f32::NAN;
        for index in [
            build(IndexKind::Hnsw, 0, &odd, 4, &params),
            build(IndexKind::Exact, 0, &odd, 4, &params),
        ] {
            assert_eq!(
                search(index.as_ref(), &[1.0, 0.0, 0.0, 0.0], 50, &|_| false)
                    .unwrap()
                    .len(),
                50
            );
        }
    }

    #[test]
    fn hnsw_returns_k_when_the_skip_list_hides_almost_everything() {
        let idx = HnswIndex::build(&vectors(2000, 16, 2), 16, &small_params());
        let q = vectors(1, 16, 77);
        let got = search(&idx, &q, 10, &|r| r >= 6).unwrap();
        let mut rows: Vec<u32> = got.iter().map(|x| x.0).collect();
        rows.sort();
        assert_eq!(rows, vec![0, 1, 2, 3, 4, 5]);
        let got = search(&idx, &q, 10, &|r| r % 50 != 0).unwrap();
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|(r, _)| r % 50 == 0));
    }

    #[test]
    fn a_dump_loads_only_for_its_own_catalog_and_params() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("items.hnsw");
        let v: Arc<[f32]> = vectors(500, 8, 4).into();
        let mut params = small_params();
        let built = HnswIndex::build(&v, 8, &params);
        persist::save(built.graph(), &file).unwrap();
        params.index_file = Some(file.clone());

        let loaded = open(IndexKind::Auto, 1_000_000, &v, 8, &params).unwrap();
        assert_eq!(loaded.name(), "hnsw", "a configured dump wins over auto");
        let q = &v[..8];
        // The same items; scores equal up to the rounding of the catalog's
        // own normalisation, whose copy the loaded index keeps.
        let (got, want) = (
            search(loaded.as_ref(), q, 10, &|_| false).unwrap(),
            search(&built, q, 10, &|_| false).unwrap(),
        );
        assert_eq!(
            got.iter().map(|x| x.0).collect::<Vec<_>>(),
            want.iter().map(|x| x.0).collect::<Vec<_>>()
        );
        assert!(got.iter().zip(&want).all(|(a, b)| (a.1 - b.1).abs() < 1e-5));
        // Unit catalog rows are kept once: the index uses the catalog's copy.
        let shared = HnswIndex::load(&file, &v, Some(&v), 8, &params).unwrap();
        assert!(std::ptr::eq(shared.graph().vectors().as_ptr(), v.as_ptr()));
        // Rows twice as long are the same unit rows (the dump loads) but
        // not unit themselves: the index keeps the dump's copy.
        let doubled: Arc<[f32]> = v.iter().map(|x| x * 2.0).collect();
        let own = HnswIndex::load(&file, &doubled, Some(&doubled), 8, &params).unwrap();
        assert!(!std::ptr::eq(
            own.graph().vectors().as_ptr(),
            doubled.as_ptr()
        ));
        assert_eq!(own.graph().vectors(), unit_rows(&v, 8).as_slice());
        let exact = open(IndexKind::Exact, 0, &v, 8, &params).unwrap();
        assert_eq!(exact.name(), "exact");

        let err = |r: Result<Box<dyn VectorIndex>, String>| r.err().expect("must be refused");
        let other: Arc<[f32]> = vectors(500, 8, 5).into();
        assert!(err(open(IndexKind::Hnsw, 0, &other, 8, &params)).contains("other item embeddings"));
        let fewer: Arc<[f32]> = v[..8 * 499].into();
        assert!(err(open(IndexKind::Hnsw, 0, &fewer, 8, &params)).contains("499"));
        let as_4d = err(open(IndexKind::Hnsw, 0, &v, 4, &params));
        assert!(as_4d.starts_with("ranking.hnsw.index_file"), "{as_4d}");
        let mut wider = params.clone();
        wider.max_connections = 16;
        assert!(err(open(IndexKind::Hnsw, 0, &v, 8, &wider)).contains("max_connections"));
        let mut missing = params.clone();
        missing.index_file = Some(dir.path().join("nope"));
        assert!(err(open(IndexKind::Hnsw, 0, &v, 8, &missing)).contains("ranking.hnsw.index_file"));
    }
}
