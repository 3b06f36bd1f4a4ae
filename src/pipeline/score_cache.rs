//! The re-ranker's score cache: one score per (model version, user, hour,
//! weekday, item), so that a user paging through results, or coming back
//! within the TTL with other candidates, does not re-score the same items.
//!
//! For a known user every feature a stage model reads is fixed by those
//! five values (user and item statistics come from the read-only catalog;
//! the context enters as hour and weekday), so a cached score is exactly
//! the score the model would compute. Cold-start requests carry free-form
//! demographics and are not cached. The model part of the key is the
//! prepared version's id, so a reload can never serve a score of the old
//! version.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};

use crate::telemetry::metrics as m;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreCacheConfig {
    pub enabled: bool,
    /// Scores kept; each entry costs about 64 bytes with moka's overhead.
    pub max_entries: u64,
    pub ttl_ms: u64,
}

impl Default for ScoreCacheConfig {
    fn default() -> Self {
        ScoreCacheConfig {
            enabled: true,
            max_entries: 1_000_000,
            ttl_ms: 300_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScoreKey {
    pub model: u32,
    pub user: u32,
    pub hour: u8,
    pub weekday: u8,
    pub item: u32,
}

pub struct ScoreCache {
    cache: Cache<ScoreKey, f32>,
    /// Rows found and not found, for this cache alone (metrics are per process).
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ScoreCache {
    pub fn new(config: &ScoreCacheConfig) -> ScoreCache {
        let cache = Cache::builder()
            .max_capacity(config.max_entries)
            .time_to_live(Duration::from_millis(config.ttl_ms))
            .eviction_listener(|_k, _v, cause| {
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    metrics::counter!(m::CACHE_EVICTIONS_TOTAL, "cache" => "score").increment(1);
                }
            })
            .build();
        metrics::counter!(m::CACHE_EVICTIONS_TOTAL, "cache" => "score").increment(0);
        metrics::gauge!(m::CACHE_ENTRIES, "cache" => "score").set(0.0);
        ScoreCache {
            cache,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Splits `rows` into the scores already known (by position) and the
    /// rows still to score.
    pub fn lookup(&self, key: ScoreKey, rows: &[u32]) -> (Vec<Option<f32>>, Vec<u32>) {
        let mut known = Vec::with_capacity(rows.len());
        let mut missing = Vec::new();
        for &item in rows {
            let hit = self.cache.get(&ScoreKey { item, ..key });
            if hit.is_none() {
                missing.push(item);
            }
            known.push(hit);
        }
        let hits = (rows.len() - missing.len()) as u64;
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        metrics::counter!(m::CACHE_REQUESTS_TOTAL, "cache" => "score", "result" => "hit")
            .increment(hits);
        metrics::counter!(m::CACHE_REQUESTS_TOTAL, "cache" => "score", "result" => "miss")
            .increment(missing.len() as u64);
        (known, missing)
    }

    /// Rows found and rows not found so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    pub fn insert(&self, key: ScoreKey, rows: &[u32], scores: &[f32]) {
        for (&item, &score) in rows.iter().zip(scores) {
            self.cache.insert(ScoreKey { item, ..key }, score);
        }
        metrics::gauge!(m::CACHE_ENTRIES, "cache" => "score").set(self.cache.entry_count() as f64);
    }
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
            hour: 20,
            weekday: 2,
            item: 0,
        }
    }

    #[test]
    fn hits_and_misses_keep_their_positions() {
        let c = ScoreCache::new(&ScoreCacheConfig::default());
        c.insert(key(1), &[10, 12], &[0.5, 0.25]);
        let (known, missing) = c.lookup(key(1), &[11, 10, 13, 12]);
        assert_eq!(known, [None, Some(0.5), None, Some(0.25)]);
        assert_eq!(missing, [11, 13]);
        assert_eq!(merge(known, &[0.9, 0.1]), [0.9, 0.5, 0.1, 0.25]);
    }

    #[test]
    fn another_model_version_or_context_misses() {
        let c = ScoreCache::new(&ScoreCacheConfig::default());
        c.insert(key(1), &[10], &[0.5]);
        assert_eq!(c.lookup(key(2), &[10]).1, [10]);
        assert_eq!(c.lookup(ScoreKey { hour: 21, ..key(1) }, &[10]).1, [10]);
        assert!(c.lookup(key(1), &[10]).1.is_empty());
    }
}
