//! The re-ranker's score cache: the scores of (model version, user,
//! context, item), so that a user paging through results, or coming back
//! within the TTL with other candidates, does not re-score the same items.
//!
//! One entry per (model version, user, context) holds that context's
//! scored items, sorted: a per-item entry would cost moka's ~300 bytes of
//! bookkeeping per score (measured: 1M entries grew a server by 400 MB),
//! where this costs 8 bytes per score plus one entry per context. The
//! capacity counts scores.
//!
//! For a known user every feature a stage model reads is fixed by the
//! user, the item and the context values its features read (user and item
//! fields come from the read-only catalog), so a cached score is exactly
//! the score the model would compute. The context part of the key is a
//! 64-bit fingerprint of exactly those values (see [`context_key`]). Only
//! known users are cached. The model part of the key is the prepared
//! version's id, so a reload can never serve a score of the old version.
//!
//! Features may also read live state (`count()`, `recency()`): the user's
//! own events and the clock's bucket then join the key (`live`), and each
//! cached score carries its item's live-state stamp from before it was
//! computed; a score whose item has moved on since is a miss, so an event
//! invalidates exactly the scores of the items and the user it touched.
//! (Days since an event, like `days_since()`, drift within the TTL.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use serde::{Deserialize, Serialize};

use crate::telemetry::metrics as m;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreCacheConfig {
    pub enabled: bool,
    /// Scores kept (8 bytes each, plus ~300 bytes per user context).
    pub max_scores: u64,
    /// Scores kept per (model version, user, context). A context
    /// that would grow past it starts over with the rows just scored, so
    /// one busy user cannot make every insert copy a huge list.
    pub max_scores_per_context: usize,
    pub ttl_ms: u64,
}

impl Default for ScoreCacheConfig {
    fn default() -> Self {
        ScoreCacheConfig {
            enabled: true,
            max_scores: 4_000_000,
            max_scores_per_context: 4096,
            ttl_ms: 300_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScoreKey {
    pub model: u32,
    pub user: u32,
    /// [`context_key`] of the context values the model reads.
    pub context: u64,
    /// The user's live-state version and the windows' time bucket, when
    /// the features read them (else 0).
    pub live: u64,
}

/// A fingerprint of `ctx` at `positions` (the values a model's features
/// read): the exact bits, mixed (splitmix64), so that two contexts a model
/// cannot tell apart share scores and any other two almost surely do not.
pub fn context_key(ctx: &[f32], positions: &[usize]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for &p in positions {
        let bits = ctx.get(p).map_or(u32::MAX, |v| v.to_bits());
        h ^= bits as u64 ^ ((p as u64) << 32);
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
    }
    h
}

/// Items, their scores and the items' live-state stamps, sorted by item.
type Scores = Arc<Vec<(u32, f32, u32)>>;

pub struct ScoreCache {
    cache: Cache<ScoreKey, Scores>,
    per_context: usize,
    /// Rows found and not found, for this cache alone (metrics are per process).
    hits: AtomicU64,
    misses: AtomicU64,
    metrics: super::cache::CacheMetrics,
}

impl ScoreCache {
    pub fn new(config: &ScoreCacheConfig) -> ScoreCache {
        let cache = Cache::builder()
            .max_capacity(config.max_scores)
            .weigher(|_k, v: &Scores| v.len().try_into().unwrap_or(u32::MAX))
            .time_to_live(Duration::from_millis(config.ttl_ms))
            .eviction_listener(super::cache::count_evictions("score"))
            .build();
        ScoreCache {
            cache,
            metrics: super::cache::CacheMetrics::register("score", m::SCORE_CACHE_SCORES),
            per_context: config.max_scores_per_context.max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Splits `rows` into the scores already known (by position) and the
    /// rows still to score, with their stamps. `stamps` are the rows'
    /// current live-state stamps (empty: all 0); a score stored under
    /// another stamp is stale.
    pub fn lookup(
        &self,
        key: ScoreKey,
        rows: &[u32],
        stamps: &[u32],
    ) -> (Vec<Option<f32>>, Vec<u32>, Vec<u32>) {
        let entry = self.cache.get(&key);
        let mut known = Vec::with_capacity(rows.len());
        let (mut missing, mut missing_stamps) = (Vec::new(), Vec::new());
        for (n, &item) in rows.iter().enumerate() {
            let stamp = stamps.get(n).copied().unwrap_or(0);
            let hit = entry.as_ref().and_then(|e| {
                e.binary_search_by_key(&item, |&(i, _, _)| i)
                    .ok()
                    .filter(|&at| e[at].2 == stamp)
                    .map(|at| e[at].1)
            });
            if hit.is_none() {
                missing.push(item);
                missing_stamps.push(stamp);
            }
            known.push(hit);
        }
        let hits = (rows.len() - missing.len()) as u64;
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        self.metrics.hits.increment(hits);
        self.metrics.misses.increment(missing.len() as u64);
        (known, missing, missing_stamps)
    }

    /// Rows found and rows not found so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Adds freshly scored rows to the context's entry (a new entry
    /// replaces the old one: readers never see a half-merged list). The
    /// fresh rows are sorted and merged in one pass, so an insert costs
    /// the entry's length, at most `max_scores_per_context`; a context
    /// that would pass it keeps only the fresh rows.
    /// `stamps` are the rows' stamps as [`ScoreCache::lookup`] gave them
    /// (empty: all 0).
    pub fn insert(&self, key: ScoreKey, rows: &[u32], scores: &[f32], stamps: &[u32]) {
        if rows.is_empty() {
            return;
        }
        let mut fresh: Vec<(u32, f32, u32)> = rows
            .iter()
            .zip(scores)
            .enumerate()
            .map(|(n, (&item, &score))| (item, score, stamps.get(n).copied().unwrap_or(0)))
            .collect();
        fresh.sort_unstable_by_key(|&(item, _, _)| item);
        fresh.dedup_by_key(|&mut (item, _, _)| item);
        fresh.truncate(self.per_context);
        let entry = match self.cache.get(&key) {
            Some(old) if old.len() + fresh.len() <= self.per_context => merge_sorted(&old, &fresh),
            _ => fresh,
        };
        self.cache.insert(key, Arc::new(entry));
        self.metrics.entries.set(self.cache.entry_count() as f64);
        self.metrics.size.set(self.cache.weighted_size() as f64);
    }
}

/// The union of two lists sorted by item with no repeats, sorted; where
/// both hold an item, `new`'s score wins.
fn merge_sorted(old: &[(u32, f32, u32)], new: &[(u32, f32, u32)]) -> Vec<(u32, f32, u32)> {
    let mut out = Vec::with_capacity(old.len() + new.len());
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
        if x.0 < y.0 {
            out.push(x);
            a.next();
        } else {
            if x.0 == y.0 {
                a.next();
            }
            out.push(y);
            b.next();
        }
    }
    out.extend(a);
    out.extend(b);
    out
}

/// Fills the gaps of `known` (in order) with `fresh`.
pub fn merge(known: Vec<Option<f32>>, fresh: &[f32]) -> Vec<f32> {
    let mut fresh = fresh.iter();
    known
        .into_iter()
        .map(|k| k.unwrap_or_else(|| *fresh.next().expect("one fresh score per gap")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(model: u32) -> ScoreKey {
        ScoreKey {
            model,
            user: 7,
            context: context_key(&[20.0, 2.0], &[0, 1]),
            live: 0,
        }
    }

    #[test]
    fn hits_and_misses_keep_their_positions() {
        let c = ScoreCache::new(&ScoreCacheConfig::default());
        c.insert(key(1), &[10, 12], &[0.5, 0.25], &[]);
        let (known, missing, _) = c.lookup(key(1), &[11, 10, 13, 12], &[]);
        assert_eq!(known, [None, Some(0.5), None, Some(0.25)]);
        assert_eq!(missing, [11, 13]);
        assert_eq!(merge(known, &[0.9, 0.1]), [0.9, 0.5, 0.1, 0.25]);
        // New rows join the context's entry; old ones stay.
        c.insert(key(1), &[13, 11], &[0.1, 0.9], &[]);
        let (known, missing, _) = c.lookup(key(1), &[10, 11, 12, 13], &[]);
        assert!(missing.is_empty());
        assert_eq!(merge(known, &[]), [0.5, 0.9, 0.25, 0.1]);
        assert_eq!(c.stats(), (6, 2));
    }

    #[test]
    fn merged_entries_stay_sorted_and_a_full_context_starts_over() {
        assert_eq!(
            merge_sorted(
                &[(1, 0.1, 0), (4, 0.4, 0), (9, 0.9, 0)],
                &[(0, 0.0, 0), (4, 4.0, 1), (10, 1.0, 0)]
            ),
            [
                (0, 0.0, 0),
                (1, 0.1, 0),
                (4, 4.0, 1),
                (9, 0.9, 0),
                (10, 1.0, 0)
            ]
        );
        assert_eq!(merge_sorted(&[], &[(3, 0.3, 0)]), [(3, 0.3, 0)]);
        let c = ScoreCache::new(&ScoreCacheConfig {
            max_scores_per_context: 5,
            ..ScoreCacheConfig::default()
        });
        c.insert(key(1), &[30, 10, 20], &[3.0, 1.0, 2.0], &[]);
        c.insert(key(1), &[40, 10], &[4.0, 1.0], &[]);
        let (known, missing, _) = c.lookup(key(1), &[10, 20, 30, 40], &[]);
        assert!(missing.is_empty());
        assert_eq!(merge(known, &[]), [1.0, 2.0, 3.0, 4.0]);
        // 4 + 2 > 5: only the fresh rows stay.
        c.insert(key(1), &[60, 50], &[6.0, 5.0], &[]);
        assert_eq!(c.lookup(key(1), &[10, 50, 60], &[]).1, [10]);
        // More fresh rows than the cap: the first five by item are kept.
        c.insert(key(2), &[7, 6, 5, 4, 3, 2, 1], &[0.0; 7], &[]);
        assert_eq!(c.lookup(key(2), &[1, 5, 6, 7], &[]).1, [6, 7]);
    }

    #[test]
    fn another_model_version_or_context_misses() {
        let c = ScoreCache::new(&ScoreCacheConfig::default());
        c.insert(key(1), &[10], &[0.5], &[]);
        assert_eq!(c.lookup(key(2), &[10], &[]).1, [10]);
        let other = context_key(&[21.0, 2.0], &[0, 1]);
        assert_eq!(
            c.lookup(
                ScoreKey {
                    context: other,
                    ..key(1)
                },
                &[10],
                &[]
            )
            .1,
            [10]
        );
        assert!(c.lookup(key(1), &[10], &[]).1.is_empty());
        let live = ScoreKey { live: 9, ..key(1) };
        assert_eq!(
            c.lookup(live, &[10], &[]).1,
            [10],
            "the user's events moved on"
        );
    }

    #[test]
    fn a_score_is_stale_once_its_item_stamp_moves() {
        let c = ScoreCache::new(&ScoreCacheConfig::default());
        let (_, missing, stamps) = c.lookup(key(1), &[10, 11], &[3, 5]);
        assert_eq!(
            (missing.as_slice(), stamps.as_slice()),
            (&[10, 11][..], &[3, 5][..])
        );
        c.insert(key(1), &missing, &[0.5, 0.6], &stamps);
        // Item 11 had an event since: only its score is recomputed.
        let (known, missing, stamps) = c.lookup(key(1), &[10, 11], &[3, 6]);
        assert_eq!(known, [Some(0.5), None]);
        assert_eq!((missing, stamps), (vec![11], vec![6]));
    }
}
