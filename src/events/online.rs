//! The in-process view of live state that `/v1/rank` reads: per user, the
//! items they interacted with (newest first, bounded); per item and per
//! user, the windowed counters the schema declares and the last time of
//! each interaction kind; the items made unavailable; the ids already
//! applied (idempotency).
//!
//! Versions move with every change so that no cached answer outlives the
//! events that changed it (see `pipeline::cache` and `score_cache`): one
//! per user (their history and counters), one per item (its counters: a
//! cached score carries the stamp it was computed at), one for all items'
//! live state together, one for availability.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::counters::Tally;
use super::Event;
use crate::catalog::changes::Changes;
use crate::catalog::Catalog;
use crate::data::expr::eval::{Live, Who};
use crate::data::schema::{Counter, Window};

#[derive(Default)]
struct History {
    /// (item row, timestamp ms), newest first, each item once.
    items: Vec<(u32, i64)>,
    tally: Tally,
    version: u64,
    /// Moves when an event changes the user's catalog fields.
    fields: u64,
}

#[derive(Default)]
struct ItemState {
    tally: Tally,
    /// Moves with every change of the tally.
    stamp: u32,
}

/// The live state, read under one lock for a whole assembly.
#[derive(Default)]
pub struct View {
    counters: Vec<Counter>,
    kinds: Vec<String>,
    /// Ids applied, with their events' timestamps (forgotten past
    /// `state.dedupe_window` at compaction).
    applied: HashMap<String, i64>,
    users: HashMap<String, History>,
    /// By item row, allocated on an item's first event: a lookup per
    /// candidate row is an index, not a hash.
    items: Vec<Option<Box<ItemState>>>,
    /// Items with live state.
    items_held: usize,
    /// Moves with every change of any item's live state.
    items_version: u64,
    /// Counter buckets held by every user and item.
    buckets: usize,
    /// Restores so far: mixed into every version and stamp, so that a view
    /// replaced by a snapshot never matches what was cached before.
    epoch: u64,
    /// Sorted rows of unavailable items.
    unavailable: Vec<u32>,
    /// Moves with availability and with every catalog change (either can
    /// change any answer's candidates).
    availability_version: u64,
    /// Items and users events inserted or changed.
    changes: Changes,
}

impl View {
    /// The item's stamp: a cached score computed at another stamp is stale.
    pub fn stamp(&self, row: u32) -> u32 {
        let stamp = self.item(row).map_or(0, |s| s.stamp);
        stamp ^ (self.epoch as u32).wrapping_mul(0x9e37_79b9)
    }

    fn item(&self, row: u32) -> Option<&ItemState> {
        self.items.get(row as usize)?.as_deref()
    }
}

impl Live for View {
    fn count(&self, who: Who<'_>, w: Window, now_ms: f64) -> u32 {
        let tally = match who {
            Who::Item(row) => self.item(row).map(|s| &s.tally),
            Who::User(id) => self.users.get(id).map(|h| &h.tally),
        };
        tally.map_or(0, |t| t.count(&self.counters, w.counter, w.buckets, now_ms))
    }

    fn last(&self, who: Who<'_>, kind: Option<usize>) -> Option<i64> {
        match who {
            Who::Item(row) => self.item(row)?.tally.last(kind),
            Who::User(id) => self.users.get(id)?.tally.last(kind),
        }
    }
}

/// The view as a snapshot writes it: items by id (rows change between
/// catalog snapshots), the counters' declarations to check them against.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    /// (kind, min_value, bucket ms, keep) of each counter.
    counters: Vec<(String, Option<f64>, i64, u32)>,
    kinds: Vec<String>,
    applied: Vec<(String, i64)>,
    users: Vec<UserSnapshot>,
    /// (item id, tally, stamp).
    items: Vec<(String, Tally, u32)>,
    unavailable: Vec<String>,
    items_version: u64,
    availability_version: u64,
    /// Catalog changes (absent from snapshots written before they existed).
    #[serde(default)]
    changes: Changes,
}

/// (user id, history newest first as (item id, ms), tally, version).
type UserSnapshot = (String, Vec<(String, i64)>, Tally, u64);

fn counter_keys(counters: &[Counter]) -> Vec<(String, Option<f64>, i64, u32)> {
    counters
        .iter()
        .map(|c| (c.kind.clone(), c.min_value, c.bucket_ms, c.keep))
        .collect()
}

/// Item `row`'s live state, allocated on first use.
fn item_state<'a>(
    items: &'a mut Vec<Option<Box<ItemState>>>,
    held: &mut usize,
    row: u32,
    len: usize,
) -> &'a mut ItemState {
    let at = row as usize;
    if items.len() <= at {
        items.resize_with(len.max(at + 1), || None);
    }
    let slot = &mut items[at];
    if slot.is_none() {
        *held += 1;
    }
    slot.get_or_insert_with(Box::default)
}

/// Moves item `row`'s stamp (and the items' version): what was cached
/// for it is stale.
fn bump_item(view: &mut View, row: u32, items: usize) {
    let item = item_state(&mut view.items, &mut view.items_held, row, items);
    item.stamp = item.stamp.wrapping_add(1);
    view.items_version += 1;
}

/// The most-counted items of a window, as of `key`.
#[derive(Debug, Default, PartialEq)]
pub struct Trending {
    /// (items version, now bucket) the list was computed at: part of a
    /// cached answer's key.
    pub key: (u64, i64),
    /// (item row, count), most first (ties: lower row), counts above 0.
    pub rows: Vec<(u32, u32)>,
}

/// The trending list is recomputed no sooner than this many times its
/// last computation took (at most 1/20 of a core while events stream in),
/// and no later than after [`TRENDING_STALE_MAX`]; one cheaper than
/// [`TRENDING_CHEAP`] is recomputed whenever the state moved.
const TRENDING_SPACING: u32 = 20;
const TRENDING_CHEAP: Duration = Duration::from_micros(200);
const TRENDING_STALE_MAX: Duration = Duration::from_millis(500);

/// Items the trending list holds at most.
const TRENDING_MAX: usize = 1000;

pub struct Online {
    view: RwLock<View>,
    /// The snapshot catalog, and the generation with every change so far
    /// laid over it (what requests read; replaced, never mutated).
    base: Arc<Catalog>,
    catalog: crate::snapshot::Snapshot<Catalog>,
    max_history: usize,
    trending: Mutex<TrendingSlot>,
}

/// The last trending list, the state it was last checked against, and
/// when that was and what it took.
#[derive(Default)]
struct TrendingSlot {
    list: Arc<Trending>,
    seen: (u64, i64),
    last: Option<(Instant, Duration)>,
}

/// What applying a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub accepted: usize,
    pub duplicates: usize,
}

/// The live-state versions a cached answer for one user depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Versions {
    pub availability: u64,
    pub user: u64,
    pub items: u64,
    /// The user's catalog fields.
    pub user_fields: u64,
}

impl Online {
    /// An empty view for `catalog`'s counters and interaction kinds.
    pub fn new(catalog: Arc<Catalog>, max_history: usize) -> Online {
        Online {
            view: RwLock::new(View {
                counters: catalog.schema.counters.clone(),
                kinds: catalog.schema.event_kinds.clone(),
                ..View::default()
            }),
            catalog: crate::snapshot::Snapshot::from_arc(catalog.clone()),
            base: catalog,
            max_history: max_history.max(1),
            trending: Mutex::new(TrendingSlot::default()),
        }
    }

    /// The catalog as events have changed it (rows only ever grow: a row
    /// of an older generation means the same entity in a newer one).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.get()
    }

    /// The current catalog generation.
    pub fn generation(&self) -> u64 {
        self.catalog.load().generation
    }

    /// The snapshot catalog, without changes from events (its schema is
    /// every generation's).
    pub fn base(&self) -> &Arc<Catalog> {
        &self.base
    }

    /// Lays `view`'s changes over the snapshot catalog and publishes it.
    fn rebuild(&self, view: &View) -> Arc<Catalog> {
        let started = Instant::now();
        // Built outside the catalog's lock (requests keep reading the old
        // generation meanwhile); rebuilds are serialised by the view's lock.
        let next = Arc::new(self.base.with_changes(&view.changes, self.generation() + 1));
        self.catalog.store(next.clone());
        metrics::histogram!(crate::telemetry::metrics::CATALOG_REBUILD_SECONDS)
            .record(started.elapsed().as_secs_f64());
        for (entity, n) in [
            ("items", view.changes.items.len()),
            ("users", view.changes.users.len()),
        ] {
            metrics::gauge!(crate::telemetry::metrics::CATALOG_CHANGES, "entity" => entity)
                .set(n as f64);
        }
        next
    }

    /// Runs `f` on the view under its read lock (held only while `f`
    /// runs: an assembly reads one consistent state).
    pub fn read<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        f(&self.view.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The events of `batch` whose ids have not been applied (nor appear
    /// earlier in the batch), in order: what must be logged and applied.
    pub fn fresh(&self, batch: Vec<Event>) -> (Vec<Event>, usize) {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        let mut ids = HashSet::new();
        let total = batch.len();
        let fresh: Vec<Event> = batch
            .into_iter()
            .filter(|e| !view.applied.contains_key(e.id()) && ids.insert(e.id().to_string()))
            .collect();
        let duplicates = total - fresh.len();
        (fresh, duplicates)
    }

    /// Applies events (already logged). Ids seen before are skipped, so a
    /// replayed log applies each event once. Items no longer in the catalog
    /// (a newer snapshot) are skipped too; returns what was applied.
    pub fn apply(&self, batch: &[Event]) -> Applied {
        let mut guard = self.view.write().unwrap_or_else(|e| e.into_inner());
        let view = &mut *guard;
        let mut done = Applied::default();
        let mut catalog = self.catalog();
        // Catalog changes not yet laid over `catalog`.
        let mut dirty = false;
        for e in batch {
            if view.applied.contains_key(e.id()) {
                done.duplicates += 1;
                continue;
            }
            view.applied.insert(e.id().to_string(), e.timestamp());
            done.accepted += 1;
            match e {
                Event::Interaction {
                    user_id,
                    item_id,
                    kind,
                    value,
                    timestamp,
                    ..
                } => {
                    if dirty && catalog.items.row(item_id).is_none() {
                        catalog = self.rebuild(view);
                        dirty = false;
                    }
                    let Some(row) = catalog.items.row(item_id) else {
                        continue;
                    };
                    let k = view
                        .kinds
                        .iter()
                        .position(|x| x == kind)
                        .unwrap_or(usize::MAX);
                    let kinds = view.kinds.len();
                    let h = view.users.entry(user_id.clone()).or_default();
                    h.items.retain(|(r, _)| *r != row);
                    let at = h.items.partition_point(|(_, t)| *t >= *timestamp);
                    h.items.insert(at, (row, *timestamp));
                    h.items.truncate(self.max_history);
                    let mut grew = h
                        .tally
                        .add(&view.counters, kinds, k, kind, *value, *timestamp);
                    h.version += 1;
                    let item = item_state(
                        &mut view.items,
                        &mut view.items_held,
                        row,
                        catalog.items.len(),
                    );
                    grew += item
                        .tally
                        .add(&view.counters, kinds, k, kind, *value, *timestamp);
                    view.buckets = view.buckets.saturating_add_signed(grew);
                    item.stamp = item.stamp.wrapping_add(1);
                    view.items_version += 1;
                }
                Event::Item {
                    item_id,
                    available,
                    fields,
                    ..
                } => {
                    if let Some(fields) = fields {
                        view.changes.items.merge(item_id, fields);
                        dirty = true;
                        view.availability_version += 1;
                        // Scores cached for the item are stale.
                        if let Some(row) = catalog.items.row(item_id) {
                            bump_item(view, row, catalog.items.len());
                        }
                    }
                    let Some(available) = available else { continue };
                    if dirty && catalog.items.row(item_id).is_none() {
                        catalog = self.rebuild(view);
                        dirty = false;
                    }
                    let Some(row) = catalog.items.row(item_id) else {
                        continue;
                    };
                    let pos = view.unavailable.binary_search(&row);
                    match (available, pos) {
                        (false, Err(at)) => view.unavailable.insert(at, row),
                        (true, Ok(at)) => {
                            view.unavailable.remove(at);
                        }
                        _ => continue,
                    }
                    view.availability_version += 1;
                }
                Event::User {
                    user_id, fields, ..
                } => {
                    view.changes.users.merge(user_id, fields);
                    dirty = true;
                    let h = view.users.entry(user_id.clone()).or_default();
                    h.version += 1;
                    h.fields += 1;
                }
            }
        }
        if dirty {
            self.rebuild(view);
        }
        done
    }

    /// Rows `user_id` has interacted with, newest first.
    pub fn history(&self, user_id: &str) -> Vec<u32> {
        self.read(|view| {
            view.users
                .get(user_id)
                .map(|h| h.items.iter().map(|(r, _)| *r).collect())
                .unwrap_or_default()
        })
    }

    /// Sorted rows of the items no answer may hold.
    pub fn unavailable(&self) -> Vec<u32> {
        self.read(|view| view.unavailable.clone())
    }

    /// What a cached answer for this user depends on.
    pub fn versions(&self, user_id: Option<&str>) -> Versions {
        self.read(|view| Versions {
            availability: view.availability_version ^ (view.epoch << 40),
            user: user_id
                .and_then(|u| view.users.get(u))
                .map_or(0, |h| h.version)
                ^ (view.epoch << 40),
            items: view.items_version ^ (view.epoch << 40),
            user_fields: user_id
                .and_then(|u| view.users.get(u))
                .map_or(0, |h| h.fields)
                ^ (view.epoch << 40),
        })
    }

    /// The bucket of `now_ms` of every counter in `counters`, mixed into one
    /// number: windows slide when it changes.
    pub fn time_key<'a>(&self, counters: impl IntoIterator<Item = &'a usize>, now_ms: f64) -> u64 {
        let mut counters = counters.into_iter().peekable();
        if counters.peek().is_none() {
            return 0;
        }
        self.read(|view| {
            counters.fold(0u64, |h, &c| {
                let b = view
                    .counters
                    .get(c)
                    .map_or(0, |c| c.bucket(now_ms.floor() as i64));
                (h ^ b as u64)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .rotate_left(17)
            })
        })
    }

    /// The items `window` counts most as of `now_ms`. Recomputed when an
    /// event or the clock changed it — when it costs more than 200 µs, no
    /// sooner than 20 times its last cost while events stream in (a few
    /// times a second on a large catalog), never more than 0.5 s behind;
    /// the list says which state it reflects.
    pub fn trending(&self, window: Window, now_ms: f64) -> Arc<Trending> {
        let mut slot = self.trending.lock().unwrap_or_else(|e| e.into_inner());
        let key = self.read(|view| {
            let bucket = view
                .counters
                .get(window.counter)
                .map_or(0, |c| c.bucket(now_ms.floor() as i64));
            (view.items_version, bucket)
        });
        let wait = slot.last.is_some_and(|(at, took)| {
            took >= TRENDING_CHEAP
                && at.elapsed() < (took * TRENDING_SPACING).min(TRENDING_STALE_MAX)
        });
        if slot.seen == key || (wait && slot.seen.1 == key.1) {
            return slot.list.clone();
        }
        let started = Instant::now();
        let rows = self.read(|view| {
            let mut rows: Vec<(u32, u32)> = view
                .items
                .iter()
                .enumerate()
                .filter_map(|(row, s)| {
                    let n = s.as_ref()?.tally.count(
                        &view.counters,
                        window.counter,
                        window.buckets,
                        now_ms,
                    );
                    Some((row as u32, n))
                })
                .filter(|&(_, n)| n > 0)
                .collect();
            rows.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            rows.truncate(TRENDING_MAX);
            rows
        });
        // An event that changed nothing in the list keeps its key, and
        // the answers cached under it.
        if rows != slot.list.rows || slot.list.key.1 != key.1 {
            slot.list = Arc::new(Trending { key, rows });
        }
        slot.seen = key;
        slot.last = Some((started, started.elapsed()));
        slot.list.clone()
    }

    /// Forgets the ids of events more than `window_ms` older than the
    /// newest one (duplicates older than that are no longer recognised),
    /// then writes the view as a snapshot (JSON).
    pub fn snapshot(&self, window_ms: i64) -> Vec<u8> {
        let catalog = self.catalog();
        {
            let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
            let newest = view.applied.values().copied().max().unwrap_or(0);
            view.applied
                .retain(|_, t| *t >= newest.saturating_sub(window_ms));
        }
        self.read(|view| {
            let id = |row: u32| catalog.items.id(row).to_string();
            let snap = Snapshot {
                counters: counter_keys(&view.counters),
                kinds: view.kinds.clone(),
                applied: view.applied.iter().map(|(k, t)| (k.clone(), *t)).collect(),
                users: view
                    .users
                    .iter()
                    .map(|(u, h)| {
                        let items = h.items.iter().map(|&(r, t)| (id(r), t)).collect();
                        (u.clone(), items, h.tally.clone(), h.version)
                    })
                    .collect(),
                items: view
                    .items
                    .iter()
                    .enumerate()
                    .filter_map(|(r, s)| {
                        let s = s.as_ref()?;
                        Some((id(r as u32), s.tally.clone(), s.stamp))
                    })
                    .collect(),
                unavailable: view.unavailable.iter().map(|&r| id(r)).collect(),
                items_version: view.items_version,
                availability_version: view.availability_version,
                changes: view.changes.clone(),
            };
            serde_json::to_vec(&snap).expect("the view serialises")
        })
    }

    /// Replaces the view with a snapshot. Items the catalog no longer
    /// holds are dropped; counters whose declarations changed start over.
    /// Returns the users restored.
    pub fn restore(&self, bytes: &[u8]) -> Result<usize, String> {
        let snap: Snapshot = serde_json::from_slice(bytes)
            .map_err(|e| format!("the live-state snapshot cannot be read: {e}"))?;
        let mut guard = self.view.write().unwrap_or_else(|e| e.into_inner());
        let fresh = View {
            counters: guard.counters.clone(),
            kinds: guard.kinds.clone(),
            epoch: guard.epoch + 1,
            ..View::default()
        };
        *guard = fresh;
        *self.trending.lock().unwrap_or_else(|e| e.into_inner()) = TrendingSlot::default();
        let view = &mut *guard;
        let counters_changed = snap.counters != counter_keys(&view.counters);
        let kinds_changed = snap.kinds != view.kinds;
        if counters_changed || kinds_changed {
            tracing::warn!(
                counters_changed,
                kinds_changed,
                "the schema's counters or kinds changed since the snapshot: those counts start over"
            );
        }
        view.changes = snap.changes;
        let catalog = self.rebuild(view);
        let row = |id: &str| catalog.items.row(id);
        view.applied = snap.applied.into_iter().collect();
        view.buckets = 0;
        for (user, items, mut tally, version) in snap.users {
            tally.reset(counters_changed, kinds_changed);
            view.buckets += tally.buckets();
            let items = items
                .iter()
                .filter_map(|(i, t)| Some((row(i)?, *t)))
                .collect();
            view.users.insert(
                user,
                History {
                    items,
                    tally,
                    version,
                    // Versions restart with the epoch, which every key mixes in.
                    fields: 0,
                },
            );
        }
        view.items = vec![];
        view.items.resize_with(catalog.items.len(), || None);
        for (item, mut tally, stamp) in snap.items {
            let Some(r) = row(&item) else { continue };
            tally.reset(counters_changed, kinds_changed);
            view.buckets += tally.buckets();
            view.items[r as usize] = Some(Box::new(ItemState { tally, stamp }));
            view.items_held += 1;
        }
        view.unavailable = snap.unavailable.iter().filter_map(|i| row(i)).collect();
        view.unavailable.sort_unstable();
        view.unavailable.dedup();
        view.items_version = snap.items_version;
        view.availability_version = snap.availability_version;
        Ok(view.users.len())
    }

    /// Users and items with live state, and the counter buckets they hold.
    pub fn size(&self) -> (usize, usize, usize) {
        self.read(|view| (view.users.len(), view.items_held, view.buckets))
    }

    /// Sets the live-state size gauges.
    pub fn report_size(&self) {
        let (users, items, buckets) = self.size();
        for (part, n) in [("users", users), ("items", items), ("buckets", buckets)] {
            metrics::gauge!(crate::telemetry::metrics::LIVE_STATE_SIZE, "part" => part)
                .set(n as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Arc<Catalog> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        Arc::new(Catalog::load(&root.join("models/catalog")).unwrap())
    }

    /// A rating of `item` by `user` at `t`.
    fn rating(id: &str, user: &str, item: &str, value: Option<f64>, t: i64) -> Event {
        Event::Interaction {
            id: id.into(),
            user_id: user.into(),
            item_id: item.into(),
            kind: "rating".into(),
            value,
            timestamp: t,
        }
    }

    fn rated(id: &str, user: &str, item: &str, t: i64) -> Event {
        rating(id, user, item, None, t)
    }

    #[test]
    fn histories_are_newest_first_bounded_and_applied_once() {
        let catalog = shipped();
        let row = |id: &str| catalog.items.row(id).unwrap();
        let online = Online::new(catalog.clone(), 3);
        let batch = [
            rated("a", "u", "1", 10),
            rated("b", "u", "2", 30),
            rated("c", "u", "3", 20), // late: goes behind the newer one
            rated("a", "u", "9", 40), // an id seen before: skipped
        ];
        assert_eq!(
            online.apply(&batch),
            Applied {
                accepted: 3,
                duplicates: 1
            }
        );
        assert_eq!(online.history("u"), [row("2"), row("3"), row("1")]);
        // Again the same item: it moves up, nothing duplicates; the oldest
        // falls off past the bound.
        online.apply(&[rated("d", "u", "1", 50), rated("e", "u", "4", 45)]);
        assert_eq!(online.history("u"), [row("1"), row("4"), row("2")]);
        let v = online.versions(Some("u"));
        assert_eq!((v.availability, v.user, v.items), (0, 5, 5));
        assert_eq!(online.versions(Some("v")).user, 0);
        let (fresh, dups) = online.fresh(vec![rated("a", "u", "1", 1), rated("z", "u", "1", 1)]);
        assert_eq!((fresh.len(), dups), (1, 1));
    }

    #[test]
    fn counters_stamps_and_the_trending_list_follow_the_events() {
        let catalog = shipped();
        let row = |id: &str| catalog.items.row(id).unwrap();
        let online = Online::new(catalog.clone(), 10);
        let positive = catalog
            .schema
            .window("rating", Some(4.0), Some("30d"))
            .unwrap();
        let now = 1.0e12;
        let at = now as i64;
        let event =
            |id: &str, user: &str, item: &str, value: f64| rating(id, user, item, Some(value), at);
        let empty = online.trending(positive, now);
        assert!(empty.rows.is_empty());
        online.apply(&[
            event("1", "a", "7", 5.0),
            event("2", "b", "7", 4.0),
            event("3", "a", "9", 5.0),
            event("4", "c", "8", 1.0),
        ]);
        online.read(|view| {
            assert_eq!(view.count(Who::Item(row("7")), positive, now), 2);
            assert_eq!(view.count(Who::Item(row("8")), positive, now), 0);
            assert_eq!(view.count(Who::User("a"), positive, now), 2);
            assert_eq!(view.last(Who::User("c"), Some(0)), Some(at));
            assert_eq!(view.last(Who::User("nobody"), None), None);
            assert_eq!((view.stamp(row("7")), view.stamp(row("1"))), (2, 0));
        });
        let list = online.trending(positive, now);
        assert_eq!(list.rows, [(row("7"), 2), (row("9"), 1)]);
        assert_ne!(list.key, empty.key);
        // A rating below the threshold changes no list: same key, so the
        // answers cached under it stay good.
        online.apply(&[event("5", "d", "8", 2.0)]);
        assert_eq!(online.trending(positive, now).key, list.key);
        // Thirty days on, everything slid out of the window.
        let later = online.trending(positive, now + 31.0 * 86_400_000.0);
        assert!(later.rows.is_empty());
        let (users, items, buckets) = online.size();
        assert_eq!((users, items), (4, 3));
        assert!(buckets > 0);
    }

    #[test]
    fn a_snapshot_restores_the_view_and_forgets_old_ids() {
        let catalog = shipped();
        let day = 86_400_000;
        let now = 1_000 * day;
        let event = |id: &str, user: &str, item: &str, t: i64| rating(id, user, item, Some(5.0), t);
        let online = Online::new(catalog.clone(), 10);
        online.apply(&[
            event("old", "u", "1", now - 30 * day),
            event("a", "u", "2", now - day),
            event("b", "v", "2", now),
            Event::Item {
                id: "off".into(),
                item_id: "3".into(),
                available: Some(false),
                fields: None,
                timestamp: now,
            },
        ]);
        let bytes = online.snapshot(7 * day);
        let back = Online::new(catalog.clone(), 10);
        assert_eq!(back.restore(&bytes), Ok(2));
        let positive = catalog
            .schema
            .window("rating", Some(4.0), Some("30d"))
            .unwrap();
        for o in [&online, &back] {
            assert_eq!(o.history("u"), online.history("u"));
            assert_eq!(o.unavailable(), [catalog.items.row("3").unwrap()]);
            o.read(|v| {
                let row = catalog.items.row("2").unwrap();
                assert_eq!(v.count(Who::Item(row), positive, now as f64), 2);
            });
            assert_eq!(o.size(), online.size());
        }
        // A replaced view never matches a cache entry of the one before.
        assert_ne!(back.versions(Some("u")), online.versions(Some("u")));
        let row = catalog.items.row("2").unwrap();
        assert_ne!(back.read(|v| v.stamp(row)), online.read(|v| v.stamp(row)));
        // Ids within the window are still duplicates; the old one is forgotten.
        let (fresh, dups) =
            back.fresh(vec![event("a", "u", "2", now), event("old", "u", "1", now)]);
        assert_eq!((fresh.len(), dups), (1, 1));
        assert_eq!(fresh[0].id(), "old");
        assert!(back.restore(b"{").is_err());
    }

    #[test]
    fn catalog_changes_publish_a_generation_and_survive_a_snapshot() {
        let catalog = shipped();
        let online = Online::new(catalog.clone(), 10);
        let fields = |v: serde_json::Value| v.as_object().unwrap().clone();
        let new_item = Event::Item {
            id: "i".into(),
            item_id: "new".into(),
            available: None,
            fields: Some(fields(
                serde_json::json!({"year": 2001, "embedding": vec![0.5; 32]}),
            )),
            timestamp: 5,
        };
        let user = Event::User {
            id: "u".into(),
            user_id: "1".into(),
            fields: fields(serde_json::json!({"age": 99})),
            timestamp: 6,
        };
        let before = online.versions(Some("1"));
        online.apply(&[new_item, rated("r", "v", "new", 7), user]);
        let now = online.catalog();
        // One generation for the interaction to find its new item, one for
        // the rest of the batch.
        assert_eq!((now.generation, online.generation()), (2, 2));
        let row = now.items.row("new").unwrap();
        assert_eq!(
            row as usize,
            catalog.items.len(),
            "the row after the snapshot's"
        );
        assert_eq!(now.items.vector_rows(), &[row]);
        assert_eq!(online.history("v"), [row]);
        let u = now.users.row("1").unwrap();
        let age = now.schema.users.field("age").unwrap().0;
        let crate::data::table::Slot::Row { at, .. } = now.users.slot(age) else {
            panic!("age is a scalar")
        };
        assert_eq!(now.users.scalar(u, at), 99.0);
        let after = online.versions(Some("1"));
        assert_ne!(before.user_fields, after.user_fields);
        assert_ne!(before.availability, after.availability);
        assert_eq!(
            catalog.items.row("new"),
            None,
            "the snapshot catalog is untouched"
        );

        let back = Online::new(catalog.clone(), 10);
        back.restore(&online.snapshot(86_400_000)).unwrap();
        let restored = back.catalog();
        assert_eq!(restored.items.row("new"), Some(row));
        assert_eq!(restored.users.scalar(u, at), 99.0);
        assert_eq!(back.history("v"), [row]);
    }
}
