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
use super::dedupe::{Dedupe, DedupeSnapshot};
use super::Event;
use crate::catalog::changes::{Changes, Generations};
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
    /// When the server last took an event of this user (epoch ms): the
    /// least recently active users go first past `state.max_users`.
    active_ms: i64,
}

#[derive(Default)]
struct ItemState {
    tally: Tally,
    /// Moves with every change of the tally.
    stamp: u32,
}

/// The live state, read under one lock for a whole assembly.
pub struct View {
    counters: Vec<Counter>,
    kinds: Vec<String>,
    /// Ids applied within `state.dedupe_window` of their arrival.
    applied: Dedupe,
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
    /// Events applied to users so far: a user's live state starts at this
    /// version, so one evicted and seen again never repeats a version a
    /// cached answer was keyed by.
    user_serial: u64,
}

/// `user`'s live state in `users`, created on first use at version
/// `serial` (see [`View::user_serial`]); marked active at `arrived_ms`.
fn user_state<'a>(
    users: &'a mut HashMap<String, History>,
    serial: &mut u64,
    user: &str,
    arrived_ms: i64,
) -> &'a mut History {
    *serial += 1;
    let at = *serial;
    let h = users.entry(user.to_string()).or_insert_with(|| History {
        version: at,
        fields: at,
        ..History::default()
    });
    h.active_ms = h.active_ms.max(arrived_ms);
    h
}

impl View {
    fn empty(counters: Vec<Counter>, kinds: Vec<String>, limits: &Limits, epoch: u64) -> View {
        View {
            counters,
            kinds,
            applied: Dedupe::new(limits.dedupe_window_ms, limits.max_ids),
            users: HashMap::new(),
            items: Vec::new(),
            items_held: 0,
            items_version: 0,
            buckets: 0,
            epoch,
            unavailable: Vec::new(),
            availability_version: 0,
            changes: Changes::default(),
            user_serial: 0,
        }
    }

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
    /// Ids by their events' timestamps (snapshots written before `dedupe`).
    #[serde(default)]
    applied: Vec<(String, i64)>,
    /// Ids as digests by arrival.
    #[serde(default)]
    dedupe: Option<DedupeSnapshot>,
    users: Vec<UserSnapshot>,
    /// (item id, tally, stamp).
    items: Vec<(String, Tally, u32)>,
    unavailable: Vec<String>,
    items_version: u64,
    availability_version: u64,
    /// Catalog changes (absent from snapshots written before they existed).
    #[serde(default)]
    changes: Changes,
    /// When each of `users` was last active (same order; absent before).
    #[serde(default)]
    active_ms: Vec<i64>,
    #[serde(default)]
    user_serial: u64,
}

/// (user id, history newest first as (item id, ms), tally, version).
type UserSnapshot = (String, Vec<(String, i64)>, Tally, u64);

/// [`Snapshot`] as it is written: borrowed from the view, each list
/// streamed as it is serialised.
#[derive(Serialize)]
struct SnapshotOut<'a, U, A, I, N> {
    counters: Vec<(String, Option<f64>, i64, u32)>,
    kinds: &'a [String],
    dedupe: super::dedupe::Serialized<'a>,
    users: U,
    active_ms: A,
    items: I,
    unavailable: N,
    items_version: u64,
    availability_version: u64,
    changes: &'a Changes,
    user_serial: u64,
}

/// A list serialised from the iterator `F` makes, without collecting it.
struct Lazy<F>(F);

impl<F, I> Serialize for Lazy<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((self.0)())
    }
}

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

/// `cascade_live_state_evictions_total{part}`, registered at 0 so that it
/// is scraped before the first eviction.
fn eviction_counter(part: &'static str) -> metrics::Counter {
    let c =
        metrics::counter!(crate::telemetry::metrics::LIVE_STATE_EVICTIONS_TOTAL, "part" => part);
    c.increment(0);
    c
}

/// Records a new catalog generation's build time and the changed rows
/// it holds (items, users).
fn record_rebuild(started: Instant, (items, users): (usize, usize)) {
    metrics::histogram!(crate::telemetry::metrics::CATALOG_REBUILD_SECONDS)
        .record(started.elapsed().as_secs_f64());
    for (entity, n) in [("items", items), ("users", users)] {
        metrics::gauge!(crate::telemetry::metrics::CATALOG_CHANGES, "entity" => entity)
            .set(n as f64);
    }
}

/// Forgets the least recently active users until `max_users` minus a
/// 1/64 margin are left (so the scan that finds them runs once per
/// max/64 new users, not once per user); returns how many went. Their
/// histories and counters go; catalog fields events set stay (they are
/// part of the catalog). A user evicted and seen again starts over, from
/// a version above any they held before ([`View::user_serial`]).
fn evict_users(view: &mut View, max_users: usize) -> usize {
    let keep = max_users - max_users / 64;
    let n = view.users.len();
    if n <= keep {
        return 0;
    }
    let mut by_age: Vec<(i64, &String)> =
        view.users.iter().map(|(u, h)| (h.active_ms, u)).collect();
    let cut = n - keep;
    by_age.select_nth_unstable(cut - 1);
    let gone: Vec<String> = by_age[..cut].iter().map(|(_, u)| (*u).clone()).collect();
    for u in &gone {
        if let Some(h) = view.users.remove(u) {
            view.buckets = view.buckets.saturating_sub(h.tally.buckets());
        }
    }
    cut
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

/// What live state may hold (`[state]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Interactions kept per user, newest first.
    pub max_history: usize,
    /// How long an applied id is remembered, from its arrival.
    pub dedupe_window_ms: i64,
    /// Users with live state; past it, the least recently active go.
    pub max_users: usize,
    /// Event ids remembered; past it, the oldest go before their window ends.
    pub max_ids: usize,
}

impl std::default::Default for Limits {
    fn default() -> Self {
        Limits {
            max_history: 500,
            dedupe_window_ms: 7 * 86_400_000,
            max_users: 1_000_000,
            max_ids: 10_000_000,
        }
    }
}

pub struct Online {
    view: RwLock<View>,
    /// The snapshot catalog, and the generation with every change so far
    /// laid over it (what requests read; replaced, never mutated).
    base: Arc<Catalog>,
    catalog: crate::snapshot::Snapshot<Catalog>,
    /// The parsed catalog changes the next generation is built from; its
    /// lock also makes batches apply one at a time.
    generations: Mutex<Generations>,
    limits: Limits,
    trending: Mutex<TrendingSlot>,
    /// `cascade_live_state_evictions_total{part="users"}` and `{part="ids"}`.
    evicted_users: metrics::Counter,
    evicted_ids: metrics::Counter,
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
    /// Whether the view holds anything of this user (events or fields):
    /// then their answers are their own, whether the catalog knows them
    /// or not.
    pub user_held: bool,
}

impl Online {
    /// An empty view for `catalog`'s counters and interaction kinds.
    pub fn new(catalog: Arc<Catalog>, limits: Limits) -> Online {
        let limits = Limits {
            max_history: limits.max_history.max(1),
            max_users: limits.max_users.max(1),
            ..limits
        };
        Online {
            view: RwLock::new(View::empty(
                catalog.schema.counters.clone(),
                catalog.schema.event_kinds.clone(),
                &limits,
                0,
            )),
            catalog: crate::snapshot::Snapshot::from_arc(catalog.clone()),
            generations: Mutex::new(Generations::new(catalog.clone())),
            base: catalog,
            limits,
            trending: Mutex::new(TrendingSlot::default()),
            evicted_users: eviction_counter("users"),
            evicted_ids: eviction_counter("ids"),
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
            .filter(|e| !view.applied.contains(e.id()) && ids.insert(e.id().to_string()))
            .collect();
        let duplicates = total - fresh.len();
        (fresh, duplicates)
    }

    /// Applies events (already logged) that arrived no later than their
    /// newest timestamp: offline replays, where arrival does not matter.
    pub fn apply(&self, batch: &[Event]) -> Applied {
        let arrived = batch.iter().map(Event::timestamp).max().unwrap_or(0);
        self.apply_arrived(batch, arrived)
    }

    /// Applies events (already logged) that the server took at
    /// `arrived_ms` (its clock: ids are remembered from then). Ids seen
    /// before are skipped, so a replayed log applies each event once.
    /// Items no longer in the catalog (a newer snapshot) are skipped too;
    /// returns what was applied.
    pub fn apply_arrived(&self, batch: &[Event], arrived_ms: i64) -> Applied {
        // One batch at a time: the next generation is built from the last.
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        // 1. The batch's catalog changes (of events not applied before), as
        // the next catalog generation: built and published before the view
        // takes the events that may name its new rows, and outside the
        // view's lock — rankings go on meanwhile, on the view as it was.
        if batch.iter().any(Event::sets_fields) {
            let started = Instant::now();
            let changed: Vec<&Event> = self.read(|view| {
                let mut seen = HashSet::new();
                batch
                    .iter()
                    .filter(|e| seen.insert(e.id()) && !view.applied.contains(e.id()))
                    .filter(|e| e.sets_fields())
                    .collect()
            });
            if !changed.is_empty() {
                let items = changed.iter().filter_map(|e| match e {
                    Event::Item {
                        item_id,
                        fields: Some(f),
                        ..
                    } => Some((item_id.as_str(), f)),
                    _ => None,
                });
                let users = changed.iter().filter_map(|e| match e {
                    Event::User {
                        user_id, fields, ..
                    } => Some((user_id.as_str(), fields)),
                    _ => None,
                });
                generations.add(items, users);
                let next = generations.build(self.generation() + 1);
                let counts = (next.items.delta_len(), next.users.delta_len());
                self.catalog.store(Arc::new(next));
                record_rebuild(started, counts);
            }
        }
        // 2. The view.
        let mut guard = self.view.write().unwrap_or_else(|e| e.into_inner());
        let view = &mut *guard;
        let mut done = Applied::default();
        let catalog = self.catalog();
        let users_before = view.users.len();
        for e in batch {
            if !view.applied.insert(e.id(), arrived_ms) {
                done.duplicates += 1;
                continue;
            }
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
                    let Some(row) = catalog.items.row(item_id) else {
                        continue;
                    };
                    let k = view
                        .kinds
                        .iter()
                        .position(|x| x == kind)
                        .unwrap_or(usize::MAX);
                    let kinds = view.kinds.len();
                    let h = user_state(&mut view.users, &mut view.user_serial, user_id, arrived_ms);
                    h.items.retain(|(r, _)| *r != row);
                    let at = h.items.partition_point(|(_, t)| *t >= *timestamp);
                    h.items.insert(at, (row, *timestamp));
                    h.items.truncate(self.limits.max_history);
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
                        view.availability_version += 1;
                        // Scores cached for the item are stale.
                        if let Some(row) = catalog.items.row(item_id) {
                            bump_item(view, row, catalog.items.len());
                        }
                    }
                    let Some(available) = available else { continue };
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
                    let h = user_state(&mut view.users, &mut view.user_serial, user_id, arrived_ms);
                    h.version += 1;
                    h.fields += 1;
                }
            }
        }
        if view.users.len() > self.limits.max_users && view.users.len() > users_before {
            let evicted = evict_users(view, self.limits.max_users);
            self.evicted_users.increment(evicted as u64);
        }
        let forgotten = view.applied.take_forgotten_early();
        if forgotten > 0 {
            self.evicted_ids.increment(forgotten as u64);
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
        self.read(|view| {
            let user = user_id.and_then(|u| view.users.get(u));
            Versions {
                availability: view.availability_version ^ (view.epoch << 40),
                user: user.map_or(0, |h| h.version) ^ (view.epoch << 40),
                items: view.items_version ^ (view.epoch << 40),
                user_fields: user.map_or(0, |h| h.fields) ^ (view.epoch << 40),
                user_held: user.is_some(),
            }
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

    /// The view as a snapshot (JSON), in memory.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_snapshot(&mut out)
            .expect("writing to memory cannot fail");
        out
    }

    /// Streams the view as a snapshot (JSON) into `w`, under the view's
    /// read lock (rankings go on; events wait), without a copy of it in
    /// memory: items by id (rows change between catalog snapshots).
    pub fn write_snapshot(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.read(|view| {
            // Read under the view's lock: every row the view holds is in
            // this generation (one is published before events use it).
            let catalog = self.catalog();
            let id = |row: u32| catalog.items.id(row);
            let snap = SnapshotOut {
                counters: counter_keys(&view.counters),
                kinds: &view.kinds,
                dedupe: view.applied.serialize(),
                users: Lazy(|| {
                    view.users.iter().map(|(u, h)| {
                        let items: Vec<(&str, i64)> =
                            h.items.iter().map(|&(r, t)| (id(r), t)).collect();
                        (u, items, &h.tally, h.version)
                    })
                }),
                active_ms: Lazy(|| view.users.values().map(|h| h.active_ms)),
                items: Lazy(|| {
                    view.items.iter().enumerate().filter_map(|(r, s)| {
                        let s = s.as_ref()?;
                        Some((id(r as u32), &s.tally, s.stamp))
                    })
                }),
                unavailable: Lazy(|| view.unavailable.iter().map(|&r| id(r))),
                items_version: view.items_version,
                availability_version: view.availability_version,
                changes: &view.changes,
                user_serial: view.user_serial,
            };
            serde_json::to_writer(std::io::BufWriter::new(w), &snap).map_err(std::io::Error::from)
        })
    }

    /// Replaces the view with a snapshot. Items the catalog no longer
    /// holds are dropped; counters whose declarations changed start over.
    /// Returns the users restored.
    pub fn restore(&self, bytes: &[u8]) -> Result<usize, String> {
        let snap: Snapshot = serde_json::from_slice(bytes)
            .map_err(|e| format!("the live-state snapshot cannot be read: {e}"))?;
        // Locks in the order batches take them: generations, then the view.
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let mut guard = self.view.write().unwrap_or_else(|e| e.into_inner());
        let fresh = View::empty(
            guard.counters.clone(),
            guard.kinds.clone(),
            &self.limits,
            guard.epoch + 1,
        );
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
        let catalog = {
            let started = Instant::now();
            generations.reset(&view.changes);
            let next = Arc::new(generations.build(self.generation() + 1));
            self.catalog.store(next.clone());
            record_rebuild(started, (next.items.delta_len(), next.users.delta_len()));
            next
        };
        let row = |id: &str| catalog.items.row(id);
        match &snap.dedupe {
            Some(d) => view.applied.restore(d)?,
            None => view.applied.restore_ids(&snap.applied),
        }
        view.buckets = 0;
        view.user_serial = snap.user_serial;
        let active = snap.active_ms.into_iter().chain(std::iter::repeat(0));
        for ((user, items, mut tally, version), active_ms) in snap.users.into_iter().zip(active) {
            view.user_serial = view.user_serial.max(version);
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
                    active_ms,
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

    /// Every applied id held (as its digest's hex) and when it may be
    /// forgotten: what re-claims them in a shared store that lost them.
    pub fn applied_expiries(&self) -> Vec<(String, i64)> {
        self.read(|view| view.applied.expiries())
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

    fn history(max_history: usize) -> Limits {
        Limits {
            max_history,
            ..Limits::default()
        }
    }

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
            request_id: None,
            attribution: None,
        }
    }

    fn rated(id: &str, user: &str, item: &str, t: i64) -> Event {
        rating(id, user, item, None, t)
    }

    #[test]
    fn histories_are_newest_first_bounded_and_applied_once() {
        let catalog = shipped();
        let row = |id: &str| catalog.items.row(id).unwrap();
        let online = Online::new(catalog.clone(), history(3));
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
        // A user's version starts at the events applied so far (never one they
        // held before an eviction) and moves with each of theirs.
        assert_eq!((v.availability, v.user, v.items), (0, 6, 5));
        assert_eq!(online.versions(Some("v")).user, 0);
        let (fresh, dups) = online.fresh(vec![rated("a", "u", "1", 1), rated("z", "u", "1", 1)]);
        assert_eq!((fresh.len(), dups), (1, 1));
    }

    #[test]
    fn counters_stamps_and_the_trending_list_follow_the_events() {
        let catalog = shipped();
        let row = |id: &str| catalog.items.row(id).unwrap();
        let online = Online::new(catalog.clone(), history(10));
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

    /// Past `max_users` the least recently active users go (a 1/64 margin
    /// at a time), their buckets with them; a user seen again starts over
    /// at a version they never held, so no cached answer comes back.
    #[test]
    fn past_max_users_the_least_recently_active_are_forgotten() {
        let catalog = shipped();
        let online = Online::new(
            catalog.clone(),
            Limits {
                max_users: 128,
                ..Limits::default()
            },
        );
        let before = online.versions(Some("u0"));
        online.apply_arrived(&[rated("first", "u0", "1", 1)], 1);
        let held = online.versions(Some("u0"));
        for i in 1..=128 {
            let e = rated(&format!("e{i}"), &format!("u{i}"), "1", i);
            online.apply_arrived(&[e], 100 + i);
        }
        // 129 users > 128: down to 126, the oldest three gone, u0 first.
        let (users, _, _) = online.size();
        assert_eq!(users, 126);
        assert!(online.history("u0").is_empty());
        assert!(online.history("u1").is_empty() && online.history("u2").is_empty());
        assert_eq!(online.history("u3").len(), 1);
        let gone = online.versions(Some("u0"));
        assert_eq!(
            (gone.user, gone.user_fields, gone.user_held),
            (before.user, before.user_fields, before.user_held),
            "as if never seen"
        );
        online.apply_arrived(&[rated("back", "u0", "1", 500)], 500);
        let back = online.versions(Some("u0"));
        assert!(back.user > held.user, "{back:?} vs {held:?}");
        // The dedupe window is unchanged by evictions.
        let (fresh, dups) = online.fresh(vec![rated("first", "u0", "1", 1)]);
        assert_eq!((fresh.len(), dups), (0, 1));
    }

    #[test]
    fn a_snapshot_restores_the_view_and_forgets_old_ids() {
        let catalog = shipped();
        let day = 86_400_000;
        let now = 1_000 * day;
        let event = |id: &str, user: &str, item: &str, t: i64| rating(id, user, item, Some(5.0), t);
        let online = Online::new(catalog.clone(), history(10));
        // Ids are remembered from their arrival: "old" arrived 30 days ago.
        online.apply_arrived(&[event("old", "u", "1", now - 30 * day)], now - 30 * day);
        online.apply_arrived(
            &[
                event("a", "u", "2", now - day),
                event("b", "v", "2", now),
                Event::Item {
                    id: "off".into(),
                    item_id: "3".into(),
                    available: Some(false),
                    fields: None,
                    timestamp: now,
                },
            ],
            now,
        );
        let bytes = online.snapshot();
        let back = Online::new(catalog.clone(), history(10));
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
        let online = Online::new(catalog.clone(), history(10));
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
        // One generation per batch, published before its events apply (the
        // interaction finds the item the same batch inserts).
        assert_eq!((now.generation, online.generation()), (1, 1));
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

        let back = Online::new(catalog.clone(), history(10));
        back.restore(&online.snapshot()).unwrap();
        let restored = back.catalog();
        assert_eq!(restored.items.row("new"), Some(row));
        assert_eq!(restored.users.scalar(u, at), 99.0);
        assert_eq!(back.history("v"), [row]);
    }
}
