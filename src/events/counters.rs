//! Windowed counters: how many interactions of a kind (with a value of at
//! least some threshold) an item or a user had in the last N time buckets.
//!
//! Each (entity, counter) keeps the running total at the end of every
//! bucket that saw an interaction — a sparse cumulative series — so a
//! window of any length is two binary searches and a subtraction, whatever
//! the traffic: `through(now) − through(now − n)`. Buckets older than the
//! counter keeps are folded into a base total and dropped, so memory is
//! bounded by the buckets with activity inside `keep`, not by the events.
//! Counts are `u32` with wrapping arithmetic: a difference stays right
//! even after the running total wraps.

use serde::{Deserialize, Serialize};

use crate::data::schema::Counter;

/// One entity's cumulative counts by bucket, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets {
    /// The total of every bucket already dropped.
    base: u32,
    /// (bucket, total through the end of that bucket).
    cum: Vec<(i64, u32)>,
}

impl Buckets {
    /// The total through the end of bucket `b`.
    fn through(&self, b: i64) -> u32 {
        match self.cum.partition_point(|(x, _)| *x <= b) {
            0 => self.base,
            i => self.cum[i - 1].1,
        }
    }

    /// Interactions in the `n` buckets ending with bucket `now`.
    pub fn window(&self, now: i64, n: u32) -> u32 {
        self.through(now)
            .wrapping_sub(self.through(now - i64::from(n)))
    }

    /// Counts one interaction in bucket `b` (late ones too), then drops the
    /// buckets that no window of `keep` buckets ending at or after the
    /// newest can reach. Returns the change in buckets held.
    pub fn add(&mut self, b: i64, keep: u32) -> isize {
        let held = self.cum.len() as isize;
        let i = self.cum.partition_point(|(x, _)| *x < b);
        if self.cum.get(i).is_none_or(|(x, _)| *x != b) {
            let before = if i == 0 { self.base } else { self.cum[i - 1].1 };
            self.cum.insert(i, (b, before));
        }
        for e in &mut self.cum[i..] {
            e.1 = e.1.wrapping_add(1);
        }
        let newest = self.cum.last().map_or(b, |(x, _)| *x);
        let cut = self
            .cum
            .partition_point(|(x, _)| *x <= newest - i64::from(keep));
        if cut > 0 {
            self.base = self.cum[cut - 1].1;
            self.cum.drain(..cut);
        }
        self.cum.len() as isize - held
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.cum.len()
    }
}

/// Everything counted for one item or one user: a series per declared
/// counter, and the time of the last interaction of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    counts: Vec<Buckets>,
    /// Epoch ms per kind (index into `events.kinds`); `i64::MIN` = never.
    last: Vec<i64>,
}

impl Tally {
    /// Forgets the counts (the schema's counters changed) and, when the
    /// kinds changed too, the last times.
    pub fn reset(&mut self, counts: bool, last: bool) {
        if counts {
            self.counts.clear();
        }
        if last {
            self.last.clear();
        }
    }

    /// Buckets held across counters.
    pub fn buckets(&self) -> usize {
        self.counts.iter().map(|b| b.cum.len()).sum()
    }

    /// Adds one interaction of kind `name` (index `kind` of `kinds`) at
    /// `t`; returns the change in buckets held.
    pub fn add(
        &mut self,
        counters: &[Counter],
        kinds: usize,
        kind: usize,
        name: &str,
        value: Option<f64>,
        t: i64,
    ) -> isize {
        if self.counts.len() != counters.len() {
            self.counts.resize_with(counters.len(), Buckets::default);
        }
        if self.last.len() != kinds {
            self.last.resize(kinds, i64::MIN);
        }
        let mut grew = 0;
        for (c, series) in counters.iter().zip(&mut self.counts) {
            if c.counts(name, value) {
                grew += series.add(c.bucket(t), c.keep);
            }
        }
        if let Some(last) = self.last.get_mut(kind) {
            *last = (*last).max(t);
        }
        grew
    }

    /// Counter `counter`'s interactions in its last `buckets` buckets as of `now_ms`.
    pub fn count(&self, counters: &[Counter], counter: usize, buckets: u32, now_ms: f64) -> u32 {
        match (self.counts.get(counter), counters.get(counter)) {
            (Some(series), Some(c)) => series.window(c.bucket(now_ms.floor() as i64), buckets),
            _ => 0,
        }
    }

    /// The last interaction of `kind` (any kind when `None`).
    pub fn last(&self, kind: Option<usize>) -> Option<i64> {
        let t = match kind {
            Some(k) => self.last.get(k).copied().unwrap_or(i64::MIN),
            None => self.last.iter().copied().max().unwrap_or(i64::MIN),
        };
        (t != i64::MIN).then_some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every interaction time, counted the slow way: the reference.
    fn brute(times: &[i64], now: i64, n: u32) -> u32 {
        times
            .iter()
            .filter(|&&b| b <= now && b > now - i64::from(n))
            .count() as u32
    }

    #[test]
    fn windows_match_a_brute_force_count_with_late_events_and_pruning() {
        let keep = 30;
        let mut b = Buckets::default();
        let mut seen: Vec<i64> = Vec::new();
        // A deterministic walk forward with some late (out-of-order) events.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut clock = 0i64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            clock += (x % 3) as i64;
            let at = clock - (x >> 20) as i64 % 5; // up to 4 buckets late
            let held = b.len() as isize;
            assert_eq!(b.add(at, keep), b.len() as isize - held);
            seen.push(at);
            let newest = *seen.iter().max().unwrap();
            for n in [1, 7, keep] {
                for now in [newest, newest + 3] {
                    assert_eq!(b.window(now, n), brute(&seen, now, n), "n={n} now={now}");
                }
            }
        }
        assert!(b.len() <= keep as usize + 1, "{} buckets kept", b.len());
    }

    #[test]
    fn a_tally_counts_by_kind_and_value_and_remembers_the_last_time() {
        let day = 86_400_000;
        let counters = [
            Counter {
                kind: "rating".into(),
                min_value: Some(4.0),
                bucket_ms: day,
                keep: 30,
            },
            Counter {
                kind: "click".into(),
                min_value: None,
                bucket_ms: day,
                keep: 7,
            },
        ];
        let mut t = Tally::default();
        t.add(&counters, 2, 0, "rating", Some(5.0), 10 * day + 5);
        t.add(&counters, 2, 0, "rating", Some(3.0), 11 * day);
        t.add(&counters, 2, 0, "rating", None, 11 * day);
        t.add(&counters, 2, 1, "click", None, 12 * day);
        let now = (12 * day) as f64;
        assert_eq!(t.count(&counters, 0, 30, now), 1);
        assert_eq!(
            t.count(&counters, 0, 2, now),
            0,
            "day 10 is outside the last 2 days"
        );
        assert_eq!(t.count(&counters, 0, 3, now), 1);
        assert_eq!(t.count(&counters, 1, 7, now), 1);
        assert_eq!(
            t.count(&counters, 1, 7, (20 * day) as f64),
            0,
            "it slid out"
        );
        assert_eq!(t.last(Some(0)), Some(11 * day));
        assert_eq!(t.last(None), Some(12 * day));
        assert_eq!(Tally::default().last(None), None);
    }
}
