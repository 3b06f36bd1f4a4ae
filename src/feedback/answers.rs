//! The answers served recently, by request id: what an outcome naming a
//! `request_id` is attributed to. Bounded: an answer is kept for the
//! attribution window and, past `feedback.max_recent_answers`, the oldest
//! go first (counted). Sharded by the request id's hash, so concurrent
//! rankings rarely meet on a lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Shards of the index (a power of two).
const SHARDS: usize = 16;

/// One answer as shown: enough to attribute an outcome to it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub request_id: Box<str>,
    /// Epoch ms the answer was served.
    pub at_ms: i64,
    pub variant: Arc<str>,
    /// `name@version` of each stage model (`filter@1,ranker@3`).
    pub models: Arc<str>,
    /// The experiment it was served under (see [`super::Feedback`]).
    pub experiment: u64,
    /// Its items' catalog rows, in the order shown.
    pub items: Box<[u32]>,
    /// Per shadow that ran on the request: the stage's rows in the
    /// shadow's order (best first).
    pub shadows: Vec<(Arc<str>, Box<[u32]>)>,
    /// Outcomes attributed to it so far, per outcome kind (index into the
    /// schema's outcome kinds): what a per-ranking variance needs.
    pub counts: Vec<u32>,
}

#[derive(Default)]
struct Shard {
    by_id: HashMap<u64, Answer>,
    /// (request-id hash, served at), oldest first.
    order: VecDeque<(u64, i64)>,
}

/// What looking an answer up found.
pub enum Found<'a> {
    Answer(&'a mut Answer),
    /// Served, but longer ago than the window.
    Expired,
    Unknown,
}

pub struct RecentAnswers {
    shards: Vec<Mutex<Shard>>,
    window_ms: i64,
    /// Answers kept per shard at most.
    per_shard: usize,
    held: metrics::Gauge,
    dropped: metrics::Counter,
}

fn hash(request_id: &str) -> u64 {
    crate::pipeline::experiments::stable_hash("answers", request_id)
}

impl RecentAnswers {
    pub fn new(window_ms: i64, max_answers: usize) -> RecentAnswers {
        let dropped = metrics::counter!(crate::telemetry::metrics::RECENT_ANSWERS_DROPPED_TOTAL);
        dropped.increment(0);
        let held = metrics::gauge!(crate::telemetry::metrics::RECENT_ANSWERS);
        held.set(0.0);
        RecentAnswers {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            window_ms,
            per_shard: max_answers.div_ceil(SHARDS).max(1),
            held,
            dropped,
        }
    }

    fn shard(&self, h: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(h as usize) & (SHARDS - 1)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `answer` (replacing an earlier one with its request id, and
    /// keeping shadows recorded for it before it arrived); forgets what
    /// left the window, and the oldest past the bound (counted).
    pub fn insert(&self, mut answer: Answer) {
        let h = hash(&answer.request_id);
        let at = answer.at_ms;
        let mut shard = self.shard(h);
        let (added, removed, dropped) = {
            let shard = &mut *shard;
            if let Some(old) = shard.by_id.get_mut(&h) {
                if old.items.is_empty() && *old.request_id == *answer.request_id {
                    answer.shadows.append(&mut old.shadows);
                }
            }
            let added = shard.by_id.insert(h, answer).is_none();
            shard.order.push_back((h, at));
            let (mut removed, mut dropped) = (0u64, 0u64);
            while let Some(&(old, t)) = shard.order.front() {
                // Kept twice the window, so that an outcome just after it
                // is told "expired", not "unknown".
                let stale = t < at - 2 * self.window_ms;
                if !stale && shard.by_id.len() <= self.per_shard {
                    break;
                }
                shard.order.pop_front();
                // Only if this is still the entry that order names.
                if shard.by_id.get(&old).is_some_and(|a| a.at_ms == t) {
                    shard.by_id.remove(&old);
                    removed += 1;
                    if !stale {
                        dropped += 1;
                    }
                }
            }
            (added, removed, dropped)
        };
        drop(shard);
        self.held
            .increment(u64::from(added) as f64 - removed as f64);
        if dropped > 0 {
            self.dropped.increment(dropped);
        }
    }

    /// Records the order a shadow ranked the rows of request `request_id`
    /// in; the answer may arrive after it (the shadow runs beside the
    /// live stages).
    pub fn shadow(&self, request_id: &str, shadow: Arc<str>, rows: Box<[u32]>, at_ms: i64) {
        let h = hash(request_id);
        let mut shard = self.shard(h);
        match shard.by_id.get_mut(&h) {
            Some(a) if &*a.request_id == request_id => a.shadows.push((shadow, rows)),
            _ => {
                shard.by_id.insert(
                    h,
                    Answer {
                        request_id: request_id.into(),
                        at_ms,
                        variant: "".into(),
                        models: "".into(),
                        experiment: 0,
                        items: Box::new([]),
                        shadows: vec![(shadow, rows)],
                        counts: Vec::new(),
                    },
                );
                shard.order.push_back((h, at_ms));
                self.held.increment(1.0);
            }
        }
    }

    /// Runs `f` on the answer `request_id` names, as of `now_ms`.
    pub fn with<R>(&self, request_id: &str, now_ms: i64, f: impl FnOnce(Found<'_>) -> R) -> R {
        let h = hash(request_id);
        let mut shard = self.shard(h);
        match shard.by_id.get_mut(&h) {
            Some(a) if &*a.request_id == request_id && !a.items.is_empty() => {
                if now_ms - a.at_ms > self.window_ms {
                    f(Found::Expired)
                } else {
                    f(Found::Answer(a))
                }
            }
            _ => f(Found::Unknown),
        }
    }

    /// Counts one more outcome of kind `k` (of `kinds`) on the answer
    /// `request_id` names, whatever its age; returns how many it had
    /// before (0 when it is gone).
    pub fn bump(&self, request_id: &str, k: usize, kinds: usize) -> u32 {
        let h = hash(request_id);
        let mut shard = self.shard(h);
        match shard.by_id.get_mut(&h) {
            Some(a) if &*a.request_id == request_id => {
                a.counts.resize(kinds.max(k + 1), 0);
                a.counts[k] += 1;
                a.counts[k] - 1
            }
            _ => 0,
        }
    }

    /// Answers held (tests and reports).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).by_id.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: &str, at_ms: i64, items: &[u32]) -> Answer {
        Answer {
            request_id: id.into(),
            at_ms,
            variant: "control".into(),
            models: "ranker@1".into(),
            experiment: 1,
            items: items.into(),
            shadows: Vec::new(),
            counts: Vec::new(),
        }
    }

    fn found(a: &RecentAnswers, id: &str, now: i64) -> &'static str {
        a.with(id, now, |f| match f {
            Found::Answer(_) => "answer",
            Found::Expired => "expired",
            Found::Unknown => "unknown",
        })
    }

    #[test]
    fn answers_are_found_within_the_window_then_expired_then_forgotten() {
        let a = RecentAnswers::new(1_000, 1_000);
        a.insert(answer("r1", 0, &[5, 6]));
        assert_eq!(found(&a, "r1", 500), "answer");
        assert_eq!(found(&a, "r1", 1_500), "expired");
        assert_eq!(found(&a, "r2", 500), "unknown");
        // Past twice the window it is forgotten as later answers come to
        // its shard (these reach every shard).
        for i in 0..200 {
            a.insert(answer(&format!("n{i}"), 2_500, &[1]));
        }
        assert_eq!(found(&a, "r1", 2_600), "unknown");
        assert_eq!(a.len(), 200);
    }

    #[test]
    fn the_bound_drops_the_oldest_and_a_shadow_may_come_first() {
        let a = RecentAnswers::new(1_000_000, SHARDS);
        for i in 0..200 {
            a.insert(answer(&format!("r{i}"), i, &[1]));
        }
        assert!(a.len() <= 2 * SHARDS, "{}", a.len());
        assert_eq!(found(&a, "r199", 200), "answer");
        assert_eq!(found(&a, "r0", 200), "unknown");
        // A shadow's order recorded before the answer is kept with it.
        let b = RecentAnswers::new(1_000, 100);
        b.shadow("s1", "v2".into(), vec![9, 8, 7].into(), 0);
        assert_eq!(found(&b, "s1", 10), "unknown", "no answer yet");
        b.insert(answer("s1", 1, &[7, 8]));
        b.with("s1", 10, |f| match f {
            Found::Answer(a) => {
                assert_eq!(a.shadows.len(), 1);
                assert_eq!(&*a.shadows[0].1, &[9, 8, 7]);
            }
            _ => panic!("no answer"),
        });
    }
}
