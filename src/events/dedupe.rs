//! The event ids applied within the dedupe window (`state.dedupe_window`),
//! by the server's clock: an id is remembered from the time its batch
//! arrived, whatever timestamp the event carries, so an event stamped in
//! the past or the future is forgotten neither sooner nor later than any
//! other.
//!
//! Memory: an id is held as a 128-bit digest (two SipHash passes), not as
//! its text — 16 bytes and a control byte in a hash set, ~20–40 bytes per
//! id against ~235 for a `String` key — in buckets of an eighth of the
//! window by arrival, so forgetting the oldest ids drops a whole bucket
//! instead of scanning every id. An id is remembered for at least the
//! window and at most an eighth more. A bucket holds at most
//! [`BUCKET_IDS`] ids (a full one is followed by another of the same
//! span): growing a set rehashes it, under the view's lock, and a set of
//! millions took 190 ms to grow. Two different ids share a digest with
//! probability ~n²/2¹²⁹: for a billion ids, about 10⁻²¹.
//!
//! Bounded whatever the event rate: past `state.max_ids` the oldest
//! bucket is forgotten early (counted): a retry of one of its events
//! would then count again, which is the price of a memory bound.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

/// An id's digest.
type Digest = u128;

/// Hashes a digest by its low 64 bits (it is already uniform).
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

type Digests = HashSet<Digest, BuildHasherDefault<DigestHasher>>;

/// `id`'s digest as 32 hex characters: what the shared store keys ids by
/// (a fixed length whatever the id, and rebuildable from a view).
pub fn digest_hex(id: &str) -> String {
    format!("{:032x}", digest(id))
}

fn digest(id: &str) -> Digest {
    #[allow(deprecated)]
    let half = |salt: u8| {
        // SipHash-2-4 with fixed keys: stable across processes and
        // versions (snapshots hold digests), unlike `RandomState`.
        let mut h = std::hash::SipHasher::new_with_keys(0x6361_7363_6164_6521, salt as u64);
        h.write(id.as_bytes());
        h.finish()
    };
    ((half(1) as u128) << 64) | half(2) as u128
}

/// Most ids one bucket holds: growing it costs at most a few ms.
pub const BUCKET_IDS: usize = 1 << 17;

/// Ids that arrived in `[start, start + span)`.
struct Bucket {
    start: i64,
    ids: Digests,
}

/// The ids applied within the window.
pub struct Dedupe {
    window_ms: i64,
    span_ms: i64,
    /// Ids held at most; past it the oldest bucket goes early.
    max_ids: usize,
    /// Oldest first.
    buckets: VecDeque<Bucket>,
    len: usize,
    /// Ids forgotten early (for `max_ids`) since the last look.
    forgotten_early: usize,
}

/// How a snapshot holds them: per bucket, its start and its digests as
/// one hex string (32 characters each).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DedupeSnapshot {
    pub window_ms: i64,
    pub buckets: Vec<(i64, String)>,
}

impl Dedupe {
    pub fn new(window_ms: i64, max_ids: usize) -> Dedupe {
        let window_ms = window_ms.max(1);
        Dedupe {
            window_ms,
            span_ms: (window_ms / 8).max(1),
            max_ids: max_ids.max(1),
            buckets: VecDeque::new(),
            len: 0,
            forgotten_early: 0,
        }
    }

    /// Ids forgotten before their window ended (past `max_ids`) since the
    /// last call.
    pub fn take_forgotten_early(&mut self) -> usize {
        std::mem::take(&mut self.forgotten_early)
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, id: &str) -> bool {
        let d = digest(id);
        self.buckets.iter().any(|b| b.ids.contains(&d))
    }

    /// Remembers `id`, arrived at `arrived_ms`; returns false when it was
    /// already held. Forgets the ids that left the window by then.
    pub fn insert(&mut self, id: &str, arrived_ms: i64) -> bool {
        let d = digest(id);
        if self.buckets.iter().any(|b| b.ids.contains(&d)) {
            return false;
        }
        self.forget_before(arrived_ms);
        let start = arrived_ms.div_euclid(self.span_ms) * self.span_ms;
        // Arrival times only move forward, but a replayed log may hold a
        // batch stamped a little before the newest: it joins the newest
        // bucket (remembered a little longer, never shorter).
        match self.buckets.back_mut() {
            Some(b) if b.start >= start && b.ids.len() < BUCKET_IDS => {
                b.ids.insert(d);
            }
            // Full: another bucket of the same span (never an earlier one).
            Some(b) if b.start >= start => {
                let start = b.start;
                let mut ids = Digests::default();
                ids.insert(d);
                self.buckets.push_back(Bucket { start, ids });
            }
            _ => {
                let mut ids = Digests::default();
                ids.insert(d);
                self.buckets.push_back(Bucket { start, ids });
            }
        }
        self.len += 1;
        // Over the bound: the oldest bucket goes (never the one just
        // written to).
        while self.len > self.max_ids && self.buckets.len() > 1 {
            let gone = self.buckets.pop_front().map_or(0, |b| b.ids.len());
            self.len -= gone;
            self.forgotten_early += gone;
        }
        true
    }

    /// Every id held, as hex, with when it may be forgotten (epoch ms: the
    /// end of its bucket's window).
    pub fn expiries(&self) -> Vec<(String, i64)> {
        self.buckets
            .iter()
            .flat_map(|b| {
                let until = b.start + self.span_ms + self.window_ms;
                b.ids.iter().map(move |d| (format!("{d:032x}"), until))
            })
            .collect()
    }

    /// Forgets every bucket whose ids all arrived more than the window
    /// before `now_ms`.
    pub fn forget_before(&mut self, now_ms: i64) {
        while let Some(b) = self.buckets.front() {
            if b.start + self.span_ms > now_ms.saturating_sub(self.window_ms) {
                break;
            }
            self.len -= b.ids.len();
            self.buckets.pop_front();
        }
    }

    /// The ids as a snapshot holds them ([`DedupeSnapshot`]'s shape),
    /// serialised straight from the buckets, without a copy.
    pub fn serialize(&self) -> Serialized<'_> {
        Serialized(self)
    }

    pub fn snapshot(&self) -> DedupeSnapshot {
        DedupeSnapshot {
            window_ms: self.window_ms,
            buckets: self
                .buckets
                .iter()
                .map(|b| {
                    let mut hex = String::with_capacity(32 * b.ids.len());
                    for d in &b.ids {
                        use std::fmt::Write;
                        let _ = write!(hex, "{d:032x}");
                    }
                    (b.start, hex)
                })
                .collect(),
        }
    }

    /// The ids of `snap`, under this window. A bucket that does not parse
    /// is an error.
    pub fn restore(&mut self, snap: &DedupeSnapshot) -> Result<(), String> {
        self.buckets.clear();
        self.len = 0;
        for (start, hex) in &snap.buckets {
            if hex.len() % 32 != 0 {
                return Err("the snapshot's event ids are damaged".into());
            }
            let mut ids = Digests::default();
            ids.reserve(hex.len() / 32);
            for at in (0..hex.len()).step_by(32) {
                let d = hex
                    .get(at..at + 32)
                    .and_then(|h| u128::from_str_radix(h, 16).ok())
                    .ok_or("the snapshot's event ids are damaged")?;
                ids.insert(d);
            }
            self.len += ids.len();
            self.buckets.push_back(Bucket { start: *start, ids });
        }
        Ok(())
    }

    /// Ids from a snapshot written before digests: each remembered from
    /// its event's timestamp.
    pub fn restore_ids(&mut self, ids: &[(String, i64)]) {
        let mut ids: Vec<&(String, i64)> = ids.iter().collect();
        ids.sort_unstable_by_key(|(_, t)| *t);
        for (id, t) in ids {
            self.insert(id, *t);
        }
    }
}

/// [`Dedupe::serialize`].
pub struct Serialized<'a>(&'a Dedupe);

/// A bucket's digests as one hex string, written as it is serialised.
struct Hex<'a>(&'a Digests);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|d| write!(f, "{d:032x}"))
    }
}

impl Serialize for Serialized<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Buckets<'a>(&'a VecDeque<Bucket>);
        struct One<'a>(&'a Bucket);
        impl Serialize for One<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeTuple;
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(&self.0.start)?;
                t.serialize_element(&format_args!("{}", Hex(&self.0.ids)))?;
                t.end()
            }
        }
        impl Serialize for Buckets<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(One))
            }
        }
        let mut st = s.serialize_struct("DedupeSnapshot", 2)?;
        st.serialize_field("window_ms", &self.0.window_ms)?;
        st.serialize_field("buckets", &Buckets(&self.0.buckets))?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn ids_are_held_for_the_window_by_arrival_and_then_forgotten() {
        let mut d = Dedupe::new(7 * DAY, usize::MAX);
        let t0 = 1_000 * DAY;
        assert!(d.insert("a", t0));
        assert!(!d.insert("a", t0 + 1), "a duplicate");
        assert!(d.insert("b", t0 + 3 * DAY));
        assert!(d.contains("a") && d.contains("b") && !d.contains("c"));
        assert_eq!(d.len(), 2);
        // Still within the window (plus at most one bucket).
        d.forget_before(t0 + 7 * DAY);
        assert!(d.contains("a"));
        d.forget_before(t0 + 7 * DAY + 7 * DAY / 8 + 1);
        assert!(!d.contains("a") && d.contains("b"));
        assert_eq!(d.len(), 1);
        // An event stamped far ahead changes nothing: only arrivals count.
        assert!(d.insert("c", t0 + 8 * DAY));
        assert!(d.contains("b"));
    }

    #[test]
    fn past_max_ids_the_oldest_bucket_goes_early_and_is_counted() {
        let mut d = Dedupe::new(7 * DAY, 2 * BUCKET_IDS);
        for i in 0..2 * BUCKET_IDS + 1 {
            d.insert(&i.to_string(), 5);
        }
        assert_eq!(d.len(), BUCKET_IDS + 1);
        assert_eq!(d.take_forgotten_early(), BUCKET_IDS);
        assert_eq!(d.take_forgotten_early(), 0);
        assert!(!d.contains("0") && d.contains(&(2 * BUCKET_IDS).to_string()));
    }

    #[test]
    fn a_bucket_holds_a_bounded_number_of_ids() {
        let mut d = Dedupe::new(7 * DAY, usize::MAX);
        for i in 0..BUCKET_IDS + 10 {
            assert!(d.insert(&i.to_string(), 5));
        }
        assert_eq!(d.buckets.len(), 2);
        assert!(d.buckets.iter().all(|b| b.ids.len() <= BUCKET_IDS));
        assert!(d.contains("0") && d.contains(&(BUCKET_IDS + 9).to_string()));
        assert!(!d.insert("3", 6), "a duplicate across buckets");
        // Both go together once their span left the window.
        d.forget_before(5 + 8 * DAY);
        assert!(d.is_empty());
    }

    #[test]
    fn a_snapshot_round_trips_and_old_snapshots_are_read() {
        let mut d = Dedupe::new(7 * DAY, usize::MAX);
        for i in 0..100 {
            d.insert(&format!("id-{i}"), i * DAY / 100);
        }
        let snap = d.snapshot();
        let text = serde_json::to_string(&snap).unwrap();
        assert_eq!(text, serde_json::to_string(&d.serialize()).unwrap());
        let mut back = Dedupe::new(7 * DAY, usize::MAX);
        back.restore(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back.len(), 100);
        assert!((0..100).all(|i| back.contains(&format!("id-{i}"))));
        assert!(!back.contains("id-100"));
        let mut bad = snap;
        bad.buckets[0].1.push('z');
        assert!(back.restore(&bad).is_err());
        let mut old = Dedupe::new(7 * DAY, usize::MAX);
        old.restore_ids(&[("x".into(), 5), ("y".into(), 3)]);
        assert!(old.contains("x") && old.contains("y"));
    }

    #[test]
    fn digests_are_stable_and_distinct() {
        assert_eq!(digest("e-1"), digest("e-1"));
        assert_ne!(digest("e-1"), digest("e-2"));
        let all: HashSet<u128> = (0..100_000).map(|i| digest(&i.to_string())).collect();
        assert_eq!(all.len(), 100_000);
    }
}
