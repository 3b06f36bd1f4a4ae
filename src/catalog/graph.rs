//! The HNSW graph that hnsw_rs builds, frozen into flat arrays and searched
//! by our own code.
//!
//! hnsw_rs keeps every point behind an `Arc`, every neighbour list behind a
//! `RwLock`, every edge as another `Arc` allocation, and allocates a hash map
//! and two heaps of fresh `Arc`s on each search. Read out once after the
//! build, the same graph becomes:
//!
//! - `vectors`: the unit vectors, `[len, dim]`, row = item row;
//! - `links0`: layer 0, a fixed `1 + m0` `u32` slots per node (count, then
//!   neighbour rows), so a node's edges are one contiguous read;
//! - `upper_start`/`upper_links`: layers 1.. for the few nodes that reach
//!   them, `1 + m` slots per layer;
//! - optionally an `i8` copy of the vectors (one cache line per 64-dim vector
//!   instead of four) that the beam search walks with, re-scoring the
//!   survivors exactly.
//!
//! Search state (visited stamps, heaps) lives in a per-thread scratch that is
//! reused, so a search allocates only its answer. The edges are hnsw_rs's,
//! unchanged: recall at a given `ef` compares directly (see benches/RESULTS.md).

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::prelude::Hnsw;

use super::simd::{self, Kernels};

/// `1 − a·b` for unit vectors, clamped at 0 so rounding never yields a
/// negative distance (and nothing in hnsw_rs asserts), with the SIMD kernel
/// this CPU runs.
#[derive(Clone, Copy)]
pub struct InnerProductDistance(pub Kernels);

impl Default for InnerProductDistance {
    fn default() -> Self {
        InnerProductDistance(*simd::kernels())
    }
}

impl Distance<f32> for InnerProductDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - self.0.dot(a, b)).max(0.0)
    }
}

/// How the graph was built; stored in dumps and checked against the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildParams {
    pub max_connections: usize,
    pub ef_construction: usize,
}

/// Builds hnsw_rs's graph over `[len, dim]` unit vectors on the rayon pool,
/// inserting in slices so that `progress(done, total)` is called between
/// them.
pub fn build_hnsw_rs(
    vectors: &[f32],
    dim: usize,
    params: BuildParams,
    distance: InnerProductDistance,
    progress: &mut dyn FnMut(usize, usize),
) -> Hnsw<'static, f32, InnerProductDistance> {
    let len = vectors.len() / dim;
    let graph = Hnsw::new(
        params.max_connections,
        len.max(1),
        16,
        params.ef_construction,
        distance,
    );
    let points: Vec<(&[f32], usize)> = vectors.chunks_exact(dim).zip(0..).collect();
    // Slices big enough for rayon to keep both cores busy.
    for slice in points.chunks(10_000) {
        graph.parallel_insert_slice(&slice.to_vec());
        progress(slice.last().map_or(0, |p| p.1 + 1), len);
    }
    graph
}

/// A score and the row it belongs to, ordered by score (then row, so that
/// ties break the same way on every run).
#[derive(Clone, Copy, PartialEq)]
struct Scored {
    score: f32,
    row: u32,
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.row.cmp(&self.row))
    }
}

/// Per-thread search state, reused across searches and graphs.
#[derive(Default)]
struct Scratch {
    /// `visited[row] == stamp` iff `row` was seen in this search.
    visited: Vec<u32>,
    stamp: u32,
    /// Best first: nodes still to expand.
    candidates: BinaryHeap<Scored>,
    /// Worst first: the best `ef` unskipped nodes so far.
    best: BinaryHeap<Reverse<Scored>>,
    fresh: Vec<u32>,
}

impl Scratch {
    fn start(&mut self, len: usize) {
        if self.visited.len() < len {
            self.visited.resize(len, 0);
        }
        if self.stamp == u32::MAX {
            self.visited.iter_mut().for_each(|v| *v = 0);
            self.stamp = 0;
        }
        self.stamp += 1;
        self.candidates.clear();
        self.best.clear();
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The int8 copy: `row ≈ codes / scale`.
pub struct Quantised {
    pub codes: Vec<i8>,
    pub scale: f32,
}

impl Quantised {
    pub fn new(vectors: &[f32]) -> Quantised {
        let max = vectors.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
        let scale = 127.0 / max;
        let codes = vectors
            .iter()
            .map(|x| (x * scale).round().clamp(-127.0, 127.0) as i8)
            .collect();
        Quantised { codes, scale }
    }
}

/// A frozen HNSW graph with its vectors.
pub struct Graph {
    pub(super) dim: usize,
    pub(super) len: usize,
    pub(super) params: BuildParams,
    /// Unit vectors, `[len, dim]`; shared with the catalog when its
    /// embeddings are unit already (see `HnswIndex::load`).
    pub(super) vectors: Arc<[f32]>,
    /// Links per node above layer 0 (`m`) and on layer 0 (`m0 = 2m`).
    pub(super) m: usize,
    pub(super) m0: usize,
    /// `[len, 1 + m0]`: count, then neighbour rows.
    pub(super) links0: Vec<u32>,
    /// Node `r`'s upper layers are `upper_links[upper_start[r]..upper_start[r + 1]]`,
    /// `1 + m` slots a layer from layer 1 up.
    pub(super) upper_start: Vec<u32>,
    pub(super) upper_links: Vec<u32>,
    pub(super) entry: u32,
    pub(super) max_level: usize,
    pub(super) quantised: Option<Quantised>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("len", &self.len)
            .field("dim", &self.dim)
            .field("params", &self.params)
            .field("max_level", &self.max_level)
            .field("quantised", &self.quantised.is_some())
            .finish()
    }
}

impl Graph {
    /// Reads the edges out of a built hnsw_rs graph over `vectors` (the same
    /// unit vectors, inserted with their row as id).
    pub fn from_hnsw_rs(
        hnsw: &Hnsw<'_, f32, InnerProductDistance>,
        vectors: Vec<f32>,
        dim: usize,
        params: BuildParams,
    ) -> Graph {
        let len = vectors.len() / dim;
        let m = params.max_connections;
        let m0 = 2 * m;
        let mut links0 = vec![0u32; len * (1 + m0)];
        let mut levels = vec![0u8; len];
        let mut upper: Vec<Vec<Vec<u32>>> = vec![Vec::new(); len];
        let (mut entry, mut max_level) = (0u32, 0usize);
        // (hnsw_rs's point iterator panics on an empty graph.)
        let points = (len > 0).then(|| hnsw.get_point_indexation().into_iter());
        for point in points.into_iter().flatten() {
            let row = point.get_origin_id();
            let level = point.get_point_id().0 as usize;
            let layers = point.get_neighborhood_id();
            let ids = |l: usize, cap: usize| -> Vec<u32> {
                layers.get(l).map_or(Vec::new(), |ns| {
                    ns.iter()
                        .map(|n| n.d_id as u32)
                        .filter(|&r| r as usize != row && (r as usize) < len)
                        .take(cap)
                        .collect()
                })
            };
            let l0 = ids(0, m0);
            let slot = &mut links0[row * (1 + m0)..(row + 1) * (1 + m0)];
            slot[0] = l0.len() as u32;
            slot[1..=l0.len()].copy_from_slice(&l0);
            levels[row] = level as u8;
            upper[row] = (1..=level).map(|l| ids(l, m)).collect();
            if level > max_level {
                (entry, max_level) = (row as u32, level);
            }
        }
        let mut upper_start = Vec::with_capacity(len + 1);
        let mut upper_links = Vec::new();
        for lists in &upper {
            upper_start.push(upper_links.len() as u32);
            for list in lists {
                upper_links.push(list.len() as u32);
                upper_links.extend_from_slice(list);
                upper_links.resize(upper_links.len() + m - list.len(), 0);
            }
        }
        upper_start.push(upper_links.len() as u32);
        Graph {
            dim,
            len,
            params,
            vectors: vectors.into(),
            m,
            m0,
            links0,
            upper_start,
            upper_links,
            entry,
            max_level,
            quantised: None,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn params(&self) -> BuildParams {
        self.params
    }

    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    /// Walk the graph with an int8 copy of the vectors (`true`) or the f32
    /// vectors themselves.
    pub fn set_quantised(&mut self, on: bool) {
        self.quantised = on.then(|| Quantised::new(&self.vectors));
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.vectors.len() * 4
            + (self.links0.len() + self.upper_start.len() + self.upper_links.len()) * 4
            + self.quantised.as_ref().map_or(0, |q| q.codes.len())
    }

    fn row(&self, r: u32) -> &[f32] {
        let r = r as usize;
        &self.vectors[r * self.dim..(r + 1) * self.dim]
    }

    fn layer0(&self, r: u32) -> &[u32] {
        let at = r as usize * (1 + self.m0);
        let n = self.links0[at] as usize;
        &self.links0[at + 1..at + 1 + n]
    }

    fn upper(&self, r: u32, layer: usize) -> &[u32] {
        let start = self.upper_start[r as usize] as usize;
        let end = self.upper_start[r as usize + 1] as usize;
        let at = start + (layer - 1) * (1 + self.m);
        if at >= end {
            return &[];
        }
        let n = self.upper_links[at] as usize;
        &self.upper_links[at + 1..at + 1 + n]
    }

    /// Up to `ef.max(k)` best unskipped rows by `query · row`, best first,
    /// then cut to `k`. `query` is unit-norm of dimension `dim`.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        skip: &dyn Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        if self.len == 0 || k == 0 {
            return Vec::new();
        }
        let kern = simd::kernels();
        let ef = ef.max(k);
        let mut found = match &self.quantised {
            None => self.beam(ef, skip, |r| kern.dot(query, self.row(r))),
            Some(q) => {
                let dim = self.dim;
                let mut found = self.beam(ef, skip, |r| {
                    let r = r as usize;
                    kern.dot_i8(query, &q.codes[r * dim..(r + 1) * dim])
                });
                for (r, s) in &mut found {
                    *s = kern.dot(query, self.row(*r));
                }
                found
            }
        };
        found.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        found.truncate(k);
        found
    }

    /// Greedy descent through the upper layers, then the ef-wide beam on
    /// layer 0; `score` is the similarity used to walk.
    fn beam(
        &self,
        ef: usize,
        skip: &dyn Fn(u32) -> bool,
        score: impl Fn(u32) -> f32,
    ) -> Vec<(u32, f32)> {
        let line = match &self.quantised {
            Some(_) => self.dim,
            None => self.dim * 4,
        };
        let prefetch = |r: u32| {
            let r = r as usize;
            match &self.quantised {
                Some(q) => simd::prefetch(q.codes[r * self.dim..].as_ptr()),
                None => {
                    let base = self.vectors[r * self.dim..].as_ptr() as *const u8;
                    for off in (0..line).step_by(64) {
                        simd::prefetch(base.wrapping_add(off));
                    }
                }
            }
        };
        let mut cur = self.entry;
        let mut cur_score = score(cur);
        // One pass over the current node's links per upper layer, moving to
        // the best (what hnsw_rs's own search does). Iterating each layer to
        // a local optimum, as the paper does, measured lower recall on this
        // graph at equal ef: 1M clustered items, ef 100, recall@100 0.961
        // against 0.972 with one pass.
        for layer in (1..=self.max_level).rev() {
            let (mut best, mut best_score) = (cur, cur_score);
            for &n in self.upper(cur, layer) {
                let s = score(n);
                if s > best_score {
                    (best, best_score) = (n, s);
                }
            }
            (cur, cur_score) = (best, best_score);
        }
        SCRATCH.with(|cell| {
            let scratch = &mut *cell.borrow_mut();
            scratch.start(self.len);
            let stamp = scratch.stamp;
            let Scratch {
                visited,
                candidates,
                best,
                fresh,
                ..
            } = scratch;
            visited[cur as usize] = stamp;
            let first = Scored {
                score: cur_score,
                row: cur,
            };
            candidates.push(first);
            if !skip(cur) {
                best.push(Reverse(first));
            }
            while let Some(c) = candidates.pop() {
                let worst = best.peek().map_or(f32::NEG_INFINITY, |w| w.0.score);
                if best.len() >= ef && c.score < worst {
                    break;
                }
                fresh.clear();
                for &n in self.layer0(c.row) {
                    let seen = &mut visited[n as usize];
                    if *seen != stamp {
                        *seen = stamp;
                        prefetch(n);
                        fresh.push(n);
                    }
                }
                for &n in fresh.iter() {
                    let s = score(n);
                    let worst = best.peek().map_or(f32::NEG_INFINITY, |w| w.0.score);
                    if best.len() < ef || s > worst {
                        let node = Scored { score: s, row: n };
                        candidates.push(node);
                        if !skip(n) {
                            best.push(Reverse(node));
                            if best.len() > ef {
                                best.pop();
                            }
                        }
                    }
                }
            }
            best.drain().map(|Reverse(s)| (s.row, s.score)).collect()
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::synth::Clustered;

    fn exact(v: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<u32> {
        let mut all: Vec<(u32, f32)> = v
            .chunks_exact(dim)
            .enumerate()
            .map(|(r, x)| (r as u32, x.iter().zip(q).map(|(a, b)| a * b).sum()))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.into_iter().take(k).map(|x| x.0).collect()
    }

    pub(crate) fn small_graph(n: usize, dim: usize) -> Graph {
        let v = Clustered::new(dim, 20, 0.6, 5).items(n);
        let params = BuildParams {
            max_connections: 12,
            ef_construction: 100,
        };
        let hnsw = build_hnsw_rs(
            &v,
            dim,
            params,
            InnerProductDistance::default(),
            &mut |_, _| {},
        );
        Graph::from_hnsw_rs(&hnsw, v, dim, params)
    }

    #[test]
    fn frozen_graph_keeps_hnsw_rs_edges_and_finds_neighbours() {
        let (n, dim) = (4000, 24);
        let mut g = small_graph(n, dim);
        assert!(g
            .links0
            .chunks_exact(1 + g.m0)
            .all(|s| (s[0] as usize) <= g.m0));
        assert!(g
            .links0
            .chunks_exact(1 + g.m0)
            .all(|s| s[1..=s[0] as usize].iter().all(|&r| (r as usize) < n)));
        let queries = Clustered::new(dim, 20, 0.6, 5).queries(40);
        for quant in [false, true] {
            g.set_quantised(quant);
            let (mut hit, mut total) = (0, 0);
            for q in queries.chunks_exact(dim) {
                let want = exact(&g.vectors, dim, q, 10);
                let got = g.search(q, 10, 64, &|_| false);
                assert_eq!(got.len(), 10);
                assert!(got.windows(2).all(|w| w[0].1 >= w[1].1), "sorted");
                hit += got.iter().filter(|(r, _)| want.contains(r)).count();
                total += 10;
            }
            let recall = hit as f64 / total as f64;
            assert!(recall > 0.9, "recall@10 {recall} (quantised {quant})");
        }
    }

    #[test]
    fn skipped_rows_never_come_back() {
        let g = small_graph(2000, 16);
        let q = g.row(7).to_vec();
        let got = g.search(&q, 50, 64, &|r| r % 3 == 0);
        assert_eq!(got.len(), 50);
        assert!(got.iter().all(|(r, _)| r % 3 != 0));
        // Everything skipped: nothing found, no panic.
        assert!(g.search(&q, 5, 64, &|_| true).is_empty());
    }
}
