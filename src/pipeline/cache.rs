//! The response cache (moka): a ranked answer is reused for an identical
//! request while it is fresh.
//!
//! The key holds everything that determines the answer: the experiment
//! variant, the serving version of every stage model (so a version change
//! can never serve an answer the old version computed), the user, the
//! resolved context (every declared field, defaults applied), the
//! candidates, recent items, the exclusions (as a set), `k` and
//! `deadline_ms`. Concurrent identical misses compute once; the others wait
//! for that answer. The deadline is in the key so that a request never waits
//! on a computation with a longer budget than its own, and never receives a
//! degraded answer computed under a shorter one. Degraded answers
//! (deadline, model error, overload) are shared with the requests that
//! waited for them, never cached; every request gets its own `request_id`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use moka::notification::RemovalCause;
use serde::{Deserialize, Serialize};

use super::request::{Fallback, RankResponse, ValidRequest};
use crate::data::features::Subject;
use crate::telemetry::metrics as m;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Bytes of answers kept (estimated: ids, scores and bookkeeping); the
    /// least useful go first (TinyLFU).
    pub max_bytes: u64,
    /// How long an answer may be reused.
    pub ttl_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_bytes: 64 * 1024 * 1024,
            ttl_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    variant: String,
    versions: String,
    user: Option<String>,
    /// Every context value as served (defaults applied), as bits.
    context: Vec<u32>,
    candidates: Option<Vec<String>>,
    recent_items: Vec<String>,
    exclude: Vec<String>,
    k: usize,
    deadline_ms: u64,
    /// Live state the answer depends on: item availability, this user's
    /// events, the items' counters and the clock's bucket when something
    /// reads them, the trending list (see `Pipeline::live_key`).
    live: [u64; 5],
}

impl CacheKey {
    /// Heap bytes the key holds, roughly.
    fn approx_bytes(&self) -> usize {
        let list = |l: &[String]| l.iter().map(|s| s.len() + 24).sum::<usize>();
        128 + self.variant.len()
            + 4 * self.context.len()
            + self.versions.len()
            + self.user.as_ref().map_or(0, String::len)
            + self.candidates.as_deref().map_or(0, list)
            + list(&self.recent_items)
            + list(&self.exclude)
    }

    /// `versions` names the serving version of every stage model, e.g.
    /// `filter@1,ranker@3,cold_start@1`. `own_user`: the answer depends on
    /// who the user is — the catalog knows them, or live state holds their
    /// events — so the user id is part of the key; otherwise (no user, or
    /// a stranger with no events) identical requests share an answer.
    pub fn new(
        variant: &str,
        versions: String,
        req: &ValidRequest,
        subject: &Subject,
        own_user: bool,
        live: [u64; 5],
    ) -> CacheKey {
        let mut exclude = req.exclude.clone();
        exclude.sort_unstable();
        exclude.dedup();
        CacheKey {
            variant: variant.to_string(),
            versions,
            user: req.user_id.clone().filter(|_| own_user),
            context: subject.ctx.iter().map(|v| v.to_bits()).collect(),
            candidates: req.candidates.clone(),
            recent_items: req.recent_items.clone(),
            exclude,
            k: req.k,
            deadline_ms: req.deadline_ms,
            live,
        }
    }
}

/// What an answer costs in the cache: its strings and scores, plus moka's
/// and the allocator's bookkeeping (~300 bytes per entry).
fn approx_bytes(r: &RankResponse) -> usize {
    300 + r.request_id.len()
        + r.variant.len()
        + r.items.iter().map(|i| i.item_id.len() + 32).sum::<usize>()
        + r.models
            .iter()
            .map(|(k, v)| k.len() + v.to_string().len() + 48)
            .sum::<usize>()
}

/// Why an answer is not in the cache: it was degraded (it is still the
/// answer for whoever asked), or nothing could rank.
pub enum Uncached<E> {
    Degraded(RankResponse),
    Failed(E),
}

pub struct ResponseCache {
    cache: Cache<CacheKey, Arc<RankResponse>>,
    metrics: CacheMetrics,
}

/// A cache's metric handles, registered with the cache.
pub(super) struct CacheMetrics {
    pub(super) hits: metrics::Counter,
    pub(super) misses: metrics::Counter,
    pub(super) entries: metrics::Gauge,
    /// Bytes (response cache) or scores (score cache) held.
    pub(super) size: metrics::Gauge,
}

impl CacheMetrics {
    /// `size` is the name of the gauge of what the cache holds.
    pub(super) fn register(cache: &'static str, size: &'static str) -> CacheMetrics {
        let size = metrics::gauge!(size);
        size.set(0.0);
        CacheMetrics {
            hits: metrics::counter!(m::CACHE_REQUESTS_TOTAL, "cache" => cache, "result" => "hit"),
            misses: metrics::counter!(m::CACHE_REQUESTS_TOTAL, "cache" => cache, "result" => "miss"),
            entries: metrics::gauge!(m::CACHE_ENTRIES, "cache" => cache),
            size,
        }
    }
}

/// Registers `cache`'s eviction counter and entry gauge at zero (so they
/// are scraped before the first eviction) and returns the moka listener
/// that counts what leaves for size or age; replaced and invalidated
/// entries are not evictions.
pub(super) fn count_evictions<K, V>(
    cache: &'static str,
) -> impl Fn(Arc<K>, V, RemovalCause) + Send + Sync + 'static {
    let evictions = metrics::counter!(m::CACHE_EVICTIONS_TOTAL, "cache" => cache);
    evictions.increment(0);
    metrics::gauge!(m::CACHE_ENTRIES, "cache" => cache).set(0.0);
    move |_k, _v, cause| {
        if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
            evictions.increment(1);
        }
    }
}

impl ResponseCache {
    pub fn new(config: &CacheConfig) -> ResponseCache {
        let cache = Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|k: &CacheKey, v: &Arc<RankResponse>| {
                u32::try_from(k.approx_bytes() + approx_bytes(v)).unwrap_or(u32::MAX)
            })
            .time_to_live(Duration::from_millis(config.ttl_ms))
            .eviction_listener(count_evictions("response"))
            .build();
        ResponseCache {
            cache,
            metrics: CacheMetrics::register("response", m::RESPONSE_CACHE_BYTES),
        }
    }

    /// The cached answer for `key`, or the one `compute` produces (computed
    /// once for concurrent identical misses). Returns the answer and whether
    /// it came from the cache.
    pub async fn get_or_compute<E, F>(
        &self,
        key: CacheKey,
        compute: F,
    ) -> Result<(RankResponse, bool), Arc<Uncached<E>>>
    where
        F: std::future::Future<Output = Result<RankResponse, E>>,
        E: Send + Sync + 'static,
    {
        let computed_here = AtomicBool::new(false);
        let result = self
            .cache
            .try_get_with(key, async {
                computed_here.store(true, Ordering::Relaxed);
                match compute.await {
                    Ok(r) if matches!(r.fallback, None | Some(Fallback::ColdStart)) => {
                        Ok(Arc::new(r))
                    }
                    Ok(r) => Err(Uncached::Degraded(r)),
                    Err(e) => Err(Uncached::Failed(e)),
                }
            })
            .await;
        let hit = !computed_here.load(Ordering::Relaxed);
        let m = &self.metrics;
        if hit { &m.hits } else { &m.misses }.increment(1);
        m.entries.set(self.cache.entry_count() as f64);
        m.size.set(self.cache.weighted_size() as f64);
        result.map(|r| ((*r).clone(), hit))
    }
}
