//! `[state] backend = "redis"`: replicas share live state through one
//! Redis, as a shared log that each replica follows into its own
//! in-process view.
//!
//! - **Accepting** a batch is one Lua script, atomic in Redis: it checks
//!   that the shared state is the one this replica follows (its *epoch*,
//!   below), claims every event id as a key of its own
//!   (`<prefix>:id:<digest>`, `SET NX` with the dedupe window as its time
//!   to live), and appends the events whose id was new as one entry to a
//!   stream (`<prefix>:events`) with the next sequence number. Ids are
//!   therefore unique across replicas and restarts, and a retry after a
//!   timeout is a duplicate, never a double count.
//! - **Applying in stream order only.** No replica applies a batch when it
//!   accepts it: every replica, the accepting one included, applies the
//!   stream's entries in the stream's order, on its own follower thread
//!   (a blocking `XREAD`). The accepting replica answers once its follower
//!   has applied the entry its script wrote (waiting at most
//!   [`APPLY_WAIT`]), so its next ranking sees the batch. Since every view
//!   applies the same entries in the same order, the replicas converge:
//!   availability and fields are last-writer-wins in *stream* order.
//! - **Start**: a replica reads the shared snapshot (when there is one) and
//!   the stream after it before it serves; if Redis cannot be reached it
//!   starts on the catalog snapshot alone, says so, and catches up once
//!   Redis answers.
//! - **Redis down**: ranking goes on from the in-process view
//!   (`cascade_state_store_up` 0, one warning per 10 s), `POST /v1/events`
//!   answers 503 within the connect/IO timeout, and the follower retries
//!   with backoff and resumes from the last entry it applied.
//! - **Redis restarted empty** (no persistence, or a flush): the shared
//!   state carries an epoch (`<prefix>:epoch`). A replica that followed an
//!   epoch that is gone *re-seeds* the shared state from its own view: it
//!   writes its view as the snapshot, claims again every id it remembers,
//!   and publishes a new epoch (`s:…`); events are refused (503) until
//!   then. Every other replica sees the new epoch and reloads the
//!   snapshot. A replica that starts into an empty Redis creates a fresh
//!   epoch (`i:…`); a replica holding an older epoch still re-seeds over
//!   it, and the entries accepted meanwhile are applied on top (ids make
//!   that idempotent). What was accepted after the view that re-seeds last
//!   read the stream, and before the reset, is lost with Redis's data.
//! - **Bounded**: ids expire by themselves; past
//!   `state.redis_compact_entries` stream entries one replica (a lock key
//!   decides which) writes its view as the snapshot (`<prefix>:snapshot`:
//!   the view, the last entry and sequence number it covers, the epoch)
//!   and trims the stream up to it. Every entry carries a sequence number;
//!   a replica that finds a gap (it fell behind a trim) reloads the
//!   snapshot and reads on from there.
//! - **Supervised**: a panic in the follower is caught, counted
//!   (`cascade_state_follower_restarts_total`), shown as the store being
//!   down, and the follower starts over from the shared snapshot.
//!
//! Durability is Redis's: run it with `appendonly yes` (and
//! `appendfsync always` for the embedded log's guarantee).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::dedupe::digest_hex;
use super::online::Online;
use super::{store_failed, store_up, Event};
use crate::telemetry::metrics as m;

/// Connect, read and write timeout of every Redis call but the follower's
/// blocking read (which waits `BLOCK` longer).
const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the follower's `XREAD` waits for new entries.
const BLOCK_MS: u64 = 500;
/// Entries per read.
const READ_COUNT: usize = 500;
/// How long an accepting replica waits for its follower to apply what it
/// accepted before it answers anyway (the batch is recorded; it applies
/// when the follower gets there).
pub const APPLY_WAIT: Duration = Duration::from_secs(2);

/// Checks the epoch; claims each id (a key per id digest, expiring after
/// the dedupe window); appends the events whose id was new as one stream
/// entry with the next sequence number; returns that number (0: nothing
/// new) and their 0-based positions in the call.
/// KEYS: id-key prefix, stream, sequence, epoch. ARGV: window ms, epoch,
/// then digest, event pairs.
const ACCEPT: &str = r#"
if redis.call('GET', KEYS[4]) ~= ARGV[2] then
  return redis.error_reply('CASCADE_EPOCH the shared state is not the one this replica follows')
end
local fresh, at = {}, {}
for i = 3, #ARGV, 2 do
  if redis.call('SET', KEYS[1] .. ARGV[i], 1, 'NX', 'PX', ARGV[1]) then
    fresh[#fresh + 1] = ARGV[i + 1]
    at[#at + 1] = (i - 3) / 2
  end
end
local seq = 0
if #fresh > 0 then
  seq = redis.call('INCR', KEYS[3])
  redis.call('XADD', KEYS[2], '*', 's', seq, 'b', '[' .. table.concat(fresh, ',') .. ']')
end
return {seq, at}
"#;

/// The keys one app uses in Redis.
#[derive(Clone)]
struct Keys {
    /// `<prefix>:id:` + id digest.
    id: String,
    stream: String,
    seq: String,
    snapshot: String,
    /// Who compacts now.
    lock: String,
    /// Which shared state this is (see the module's doc).
    epoch: String,
    /// Who re-seeds now.
    reseeding: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            id: format!("{prefix}:id:"),
            stream: format!("{prefix}:events"),
            seq: format!("{prefix}:seq"),
            snapshot: format!("{prefix}:snapshot"),
            lock: format!("{prefix}:compacting"),
            epoch: format!("{prefix}:epoch"),
            reseeding: format!("{prefix}:reseeding"),
        }
    }
}

/// When and how a follower compacts the shared log.
#[derive(Clone, Copy)]
pub struct Compaction {
    /// Stream entries past which a snapshot is written and the stream trimmed.
    pub entries: u64,
    /// How long ids are remembered, ms.
    pub window_ms: i64,
}

/// Where this replica's follower is: the epoch it follows and the last
/// sequence number it applied; writers wait on it.
#[derive(Default)]
struct Progress {
    state: Mutex<(Option<String>, u64)>,
    moved: Condvar,
}

impl Progress {
    fn set(&self, epoch: Option<&str>, seq: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0.as_deref() != epoch {
            s.0 = epoch.map(str::to_string);
        }
        s.1 = seq;
        self.moved.notify_all();
    }

    fn epoch(&self) -> Option<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Waits until entry `seq` of `epoch` is applied (or the epoch moved
    /// on, or `within` passed); whether it was.
    fn wait(&self, epoch: &str, seq: u64, within: Duration) -> bool {
        let until = Instant::now() + within;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if s.0.as_deref() != Some(epoch) {
                return false;
            }
            if s.1 >= seq {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .moved
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

pub struct RedisStore {
    client: redis::Client,
    /// The connection `POST /v1/events` writes through (one batch at a
    /// time), re-opened after an error.
    writer: Mutex<Option<redis::Connection>>,
    keys: Keys,
    compaction: Compaction,
    accept: redis::Script,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
}

/// Why a batch could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("the state store (Redis) is unavailable: {0}")]
    Down(String),
    /// Redis lost its data and this replica has not caught up with the
    /// re-seeded state yet.
    #[error("the state store (Redis) was reset and is being re-seeded")]
    Reset,
}

/// What a recorded batch is: the events no replica had recorded, and
/// whether this replica's view has applied them already.
pub struct Recorded {
    pub fresh: Vec<Event>,
    pub applied: bool,
}

impl RedisStore {
    /// A store on `url` (`redis://host:port/db`) under `prefix`; nothing
    /// is contacted yet.
    pub fn new(url: &str, prefix: &str, compaction: Compaction) -> Result<RedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| format!("state.redis_url: {e}"))?;
        for op in ["append", "follow", "compact", "reseed"] {
            metrics::counter!(m::STATE_STORE_ERRORS_TOTAL, "backend" => "redis", "op" => op)
                .increment(0);
        }
        metrics::counter!(m::STATE_FOLLOWER_RESTARTS_TOTAL).increment(0);
        metrics::counter!(m::STATE_RESEEDS_TOTAL).increment(0);
        store_up("redis", false);
        Ok(RedisStore {
            client,
            writer: Mutex::new(None),
            keys: Keys::new(prefix),
            compaction,
            accept: redis::Script::new(ACCEPT),
            progress: Arc::new(Progress::default()),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Records `fresh` (none applied here before) in the shared log and
    /// returns the ones no replica had recorded, in order, once this
    /// replica's follower has applied them (or [`APPLY_WAIT`] passed).
    pub fn append(&self, fresh: Vec<Event>) -> Result<Recorded, Unavailable> {
        if fresh.is_empty() {
            return Ok(Recorded {
                fresh,
                applied: true,
            });
        }
        let Some(epoch) = self.progress.epoch() else {
            return Err(Unavailable::Down(
                "this replica has not read the shared state yet".into(),
            ));
        };
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let result = (|| {
            if writer.is_none() {
                *writer = Some(connect(&self.client, IO_TIMEOUT)?);
            }
            let con = writer.as_mut().expect("just connected");
            let mut call = self.accept.key(&self.keys.id);
            call.key(&self.keys.stream)
                .key(&self.keys.seq)
                .key(&self.keys.epoch)
                .arg(self.compaction.window_ms.max(1))
                .arg(&epoch);
            for e in &fresh {
                let json = serde_json::to_string(e).expect("events serialize");
                call.arg(digest_hex(e.id())).arg(json);
            }
            call.invoke::<(u64, Vec<usize>)>(con)
        })();
        drop(writer);
        match result {
            Ok((seq, at)) => {
                store_up("redis", true);
                let mut fresh: Vec<Option<Event>> = fresh.into_iter().map(Some).collect();
                let fresh: Vec<Event> = at
                    .into_iter()
                    .filter_map(|i| fresh.get_mut(i)?.take())
                    .collect();
                let applied = seq == 0 || self.progress.wait(&epoch, seq, APPLY_WAIT);
                if !applied {
                    tracing::warn!(seq, "events recorded, but this replica's follower has not applied them yet; answering anyway");
                }
                Ok(Recorded { fresh, applied })
            }
            Err(e) if e.code() == Some("CASCADE_EPOCH") => Err(Unavailable::Reset),
            Err(e) => {
                // Whether the script ran is unknown: the caller retries,
                // and the ids make a retry harmless.
                *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = None;
                store_failed("redis", "append", &e);
                Err(Unavailable::Down(e.to_string()))
            }
        }
    }

    /// A follower of this store's stream into `online`, from the start;
    /// `feedback` counts the outcomes of this replica's answers.
    pub fn follower(
        &self,
        online: Arc<Online>,
        feedback: Arc<crate::feedback::Feedback>,
    ) -> Follower {
        Follower {
            client: self.client.clone(),
            keys: self.keys.clone(),
            compaction: self.compaction,
            online,
            feedback,
            progress: self.progress.clone(),
            epoch: None,
            last: "0-0".into(),
            seq: 0,
            since_snapshot: 0,
            resynced: false,
            reload: false,
        }
    }

    /// Runs `follower` on a thread of its own until the store is dropped:
    /// applies every new entry, compacts when it is the one to, reconnects
    /// with backoff when Redis goes away and resumes where it stopped. A
    /// panic is caught and counted, and the follower starts over from the
    /// shared snapshot.
    pub fn follow(&self, mut follower: Follower) {
        let stop = self.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("cascade-state-follow".into())
            .spawn(move || {
                let mut con: Option<redis::Connection> = None;
                supervise(
                    &stop,
                    |restart| {
                        if restart {
                            con = None;
                            follower.reload = true;
                        }
                        if con.is_none() {
                            let wait = IO_TIMEOUT + Duration::from_millis(BLOCK_MS);
                            con = Some(connect(&follower.client, wait)?);
                        }
                        let c = con.as_mut().expect("just connected");
                        let stepped = follower
                            .step(c, Some(BLOCK_MS))
                            .and_then(|_| follower.maybe_compact(c));
                        if stepped.is_err() {
                            con = None;
                        }
                        stepped
                    },
                    Duration::from_millis(100),
                );
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the state follower thread");
        }
    }
}

/// Runs `step` until `stop`: after an error it backs off (from `first`,
/// doubling to 2 s) and marks the store down; after a panic it also logs
/// and counts it and calls the next step with `restart` set, so the step
/// starts over from a known state. The thread never dies of a panic.
fn supervise(
    stop: &AtomicBool,
    mut step: impl FnMut(bool) -> redis::RedisResult<()>,
    first: Duration,
) {
    let mut backoff = first;
    let mut restart = false;
    while !stop.load(Ordering::Relaxed) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(restart)));
        restart = false;
        match outcome {
            Ok(Ok(())) => {
                store_up("redis", true);
                backoff = first;
                continue;
            }
            Ok(Err(e)) => store_failed("redis", "follow", &e),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, "the state follower panicked; starting over from the shared snapshot");
                metrics::counter!(m::STATE_FOLLOWER_RESTARTS_TOTAL).increment(1);
                store_up("redis", false);
                restart = true;
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Where one replica is in the shared log, and what it applies it to.
pub struct Follower {
    client: redis::Client,
    keys: Keys,
    compaction: Compaction,
    online: Arc<Online>,
    feedback: Arc<crate::feedback::Feedback>,
    progress: Arc<Progress>,
    /// The epoch the view follows (`None`: none read yet).
    epoch: Option<String>,
    /// The last entry applied, and its sequence number (0: none yet).
    last: String,
    seq: u64,
    /// Entries applied since this replica last looked at compacting.
    since_snapshot: u64,
    /// Whether the last read found a gap and reloaded the snapshot.
    resynced: bool,
    /// Start over from the shared snapshot at the next step (after a panic).
    reload: bool,
}

/// A fresh epoch name: `i:` (a new, empty shared state) or `s:` (seeded
/// from a replica's view).
fn new_epoch(kind: char) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{kind}:{:016x}", h.finish())
}

impl Follower {
    /// Reads everything there is (the snapshot first, when there is one)
    /// before the server starts: the stream entries read after the
    /// snapshot, or an error when Redis cannot be read (the follower
    /// thread catches up later).
    pub fn catch_up(&mut self) -> Result<usize, String> {
        let mut con = connect(&self.client, IO_TIMEOUT).map_err(|e| e.to_string())?;
        let mut entries = 0;
        loop {
            match self.step(&mut con, None).map_err(|e| e.to_string())? {
                0 if self.epoch.is_some() => {
                    store_up("redis", true);
                    return Ok(entries);
                }
                n => entries += n,
            }
        }
    }

    /// Makes sure the view follows the shared state's current epoch:
    /// creates one in an empty Redis, re-seeds one that lost the state this
    /// view holds, reloads the snapshot of one another replica re-seeded.
    /// Returns whether the view follows `current` now.
    fn check_epoch(
        &mut self,
        con: &mut redis::Connection,
        current: Option<String>,
    ) -> redis::RedisResult<bool> {
        if current.is_some() && current == self.epoch && !self.reload {
            return Ok(true);
        }
        match (&self.epoch, current) {
            // First contact with an empty Redis: a fresh shared state.
            (None, None) => {
                let e = new_epoch('i');
                let _: Option<String> = redis::cmd("SET")
                    .arg(&self.keys.epoch)
                    .arg(&e)
                    .arg("NX")
                    .query(con)?;
                Ok(false)
            }
            // First contact, or after a panic: the snapshot of `current`.
            (None, Some(current)) => {
                self.reload = false;
                self.load_snapshot(con, &current)?;
                Ok(true)
            }
            (Some(_), current) if self.reload => {
                self.reload = false;
                match current {
                    Some(c) => {
                        self.load_snapshot(con, &c)?;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
            // Another replica re-seeded after a reset: its snapshot.
            (Some(_), Some(current)) if current.starts_with("s:") => {
                tracing::warn!(epoch = %current, "the shared state was re-seeded by another replica: reloading it");
                self.load_snapshot(con, &current)?;
                Ok(true)
            }
            // The state this view follows is gone (or replaced by a fresh
            // one): seed it from this view.
            (Some(_), current) => {
                self.reseed(con, current)?;
                Ok(false)
            }
        }
    }

    /// Writes this view as the shared snapshot of a new epoch, claims
    /// again every id it remembers, then publishes the epoch — when this
    /// replica wins the re-seeding lock; the others reload it.
    fn reseed(
        &mut self,
        con: &mut redis::Connection,
        current: Option<String>,
    ) -> redis::RedisResult<()> {
        if !take_lock(con, &self.keys.reseeding)? {
            return Ok(());
        }
        let result = (|| {
            // Someone may have finished while this replica asked.
            let now: Option<String> = redis::cmd("GET").arg(&self.keys.epoch).query(con)?;
            if now != current {
                return Ok(());
            }
            let started = Instant::now();
            let epoch = new_epoch('s');
            let view = self.online.snapshot();
            redis::cmd("HSET")
                .arg(&self.keys.snapshot)
                .arg("last")
                .arg("0-0")
                .arg("seq")
                .arg(0)
                .arg("epoch")
                .arg(&epoch)
                .arg("view")
                .arg(&view)
                .query::<()>(con)?;
            let now_ms = now_ms();
            let ids = self.online.applied_expiries();
            for chunk in ids.chunks(1000) {
                let mut p = redis::pipe();
                for (hex, until) in chunk {
                    let ttl = until - now_ms;
                    if ttl > 0 {
                        p.cmd("SET")
                            .arg(format!("{}{hex}", self.keys.id))
                            .arg(1)
                            .arg("PX")
                            .arg(ttl)
                            .ignore();
                    }
                }
                p.query::<()>(con)?;
            }
            redis::cmd("SET")
                .arg(&self.keys.epoch)
                .arg(&epoch)
                .query::<()>(con)?;
            tracing::warn!(
                epoch = %epoch,
                lost = ?current,
                ids = ids.len(),
                snapshot_bytes = view.len(),
                millis = started.elapsed().as_millis() as u64,
                "the shared state had been reset: re-seeded it from this replica's view"
            );
            metrics::counter!(m::STATE_RESEEDS_TOTAL).increment(1);
            // This view is the snapshot; the entries accepted since the
            // reset (if any) follow from the start of the stream.
            self.epoch = Some(epoch);
            self.last = "0-0".into();
            self.seq = 0;
            self.progress.set(self.epoch.as_deref(), 0);
            Ok(())
        })();
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.keys.reseeding).query(con);
        if let Err(e) = &result {
            store_failed("redis", "reseed", e);
        }
        result
    }

    /// Replaces the view with the shared snapshot of `epoch`, when there
    /// is one, and moves to the entry it covers; without one, starts
    /// `epoch` from the beginning of its stream. Returns the users it held.
    fn load_snapshot(
        &mut self,
        con: &mut redis::Connection,
        epoch: &str,
    ) -> redis::RedisResult<usize> {
        type Fields = (Option<String>, Option<u64>, Option<Vec<u8>>, Option<String>);
        let (last, seq, view, of): Fields = redis::cmd("HMGET")
            .arg(&self.keys.snapshot)
            .arg("last")
            .arg("seq")
            .arg("view")
            .arg("epoch")
            .query(con)?;
        let mut users = 0;
        match (last, seq, view) {
            // A snapshot of this epoch (or one written before epochs).
            (Some(last), Some(seq), Some(view)) if of.as_deref().is_none_or(|e| e == epoch) => {
                users = self.online.restore(&view).map_err(|e| {
                    redis::RedisError::from((redis::ErrorKind::Client, "snapshot", e))
                })?;
                tracing::info!(users, entry = %last, seq, "live state loaded from the shared snapshot");
                self.last = last;
                self.seq = seq;
            }
            _ => {
                self.last = "0-0".into();
                self.seq = 0;
            }
        }
        self.epoch = Some(epoch.to_string());
        self.progress.set(self.epoch.as_deref(), self.seq);
        self.online.report_size();
        Ok(users)
    }

    /// One read of the entries after `last` (waiting up to `block_ms` when
    /// given), applied in order, after making sure the view follows the
    /// current epoch. A gap in the sequence numbers (entries trimmed before
    /// this replica read them) reloads the snapshot instead. Returns the
    /// entries read.
    fn step(
        &mut self,
        con: &mut redis::Connection,
        block_ms: Option<u64>,
    ) -> redis::RedisResult<usize> {
        let current: Option<String> = redis::cmd("GET").arg(&self.keys.epoch).query(con)?;
        if !self.check_epoch(con, current)? {
            // Another replica is re-seeding, or an epoch was just made:
            // look again shortly.
            if block_ms.is_some() {
                std::thread::sleep(Duration::from_millis(50));
            }
            return Ok(0);
        }
        let entries = read(con, &self.keys.stream, &self.last, block_ms)?;
        let n = entries.len();
        if let Some(first) = entries.first().and_then(|e| e.seq) {
            if first != self.seq + 1 {
                let epoch = self.epoch.clone().expect("checked above");
                if !self.resynced {
                    tracing::warn!(
                        applied = self.seq,
                        next = first,
                        "entries were trimmed before this replica read them: reloading the snapshot"
                    );
                    self.resynced = true;
                    self.load_snapshot(con, &epoch)?;
                    return Ok(n);
                }
                // Still a gap right after reloading: entries were lost
                // under a live epoch; follow on from here.
                tracing::warn!(
                    applied = self.seq,
                    next = first,
                    "the shared log has a gap no snapshot covers (Redis lost data?); following on"
                );
            }
        }
        self.resynced = false;
        for e in entries {
            apply(&self.online, &e);
            self.feedback.count(&e.events);
            self.last = e.id;
            self.seq = e.seq.unwrap_or(self.seq + 1);
            self.since_snapshot += 1;
            self.progress.set(self.epoch.as_deref(), self.seq);
        }
        if n > 0 {
            self.online.report_size();
        }
        Ok(n)
    }

    /// Past `compaction.entries` entries in the stream, writes this view as
    /// the snapshot and trims what it covers — when this replica wins the
    /// lock; others keep following (and reload if they fall behind).
    fn maybe_compact(&mut self, con: &mut redis::Connection) -> redis::RedisResult<()> {
        if self.since_snapshot < self.compaction.entries.min(1000) {
            return Ok(());
        }
        self.since_snapshot = 0;
        let len: u64 = redis::cmd("XLEN").arg(&self.keys.stream).query(con)?;
        if len <= self.compaction.entries || self.seq == 0 {
            return Ok(());
        }
        let Some(epoch) = self.epoch.clone() else {
            return Ok(());
        };
        if !take_lock(con, &self.keys.lock)? {
            return Ok(());
        }
        let started = Instant::now();
        let view = self.online.snapshot();
        let result = (|| {
            redis::cmd("HSET")
                .arg(&self.keys.snapshot)
                .arg("last")
                .arg(&self.last)
                .arg("seq")
                .arg(self.seq)
                .arg("epoch")
                .arg(&epoch)
                .arg("view")
                .arg(&view)
                .query::<()>(con)?;
            // Everything up to `last` is in the snapshot now.
            redis::cmd("XTRIM")
                .arg(&self.keys.stream)
                .arg("MINID")
                .arg(next_id(&self.last))
                .query::<u64>(con)
        })();
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.keys.lock).query(con);
        match result {
            Ok(trimmed) => {
                metrics::counter!(m::STATE_COMPACTIONS_TOTAL).increment(1);
                tracing::info!(
                    trimmed,
                    snapshot_bytes = view.len(),
                    millis = started.elapsed().as_millis() as u64,
                    "shared event log compacted into a snapshot"
                );
                Ok(())
            }
            Err(e) => {
                store_failed("redis", "compact", &e);
                Ok(())
            }
        }
    }
}

/// Takes the lock key `key` for a minute (a holder that dies frees it by
/// then); whether this replica got it. The holder deletes it when done.
fn take_lock(con: &mut redis::Connection, key: &str) -> redis::RedisResult<bool> {
    let won: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(60_000)
        .query(con)?;
    Ok(won.is_some())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The smallest stream id after `id` (`ms-seq` → `ms-(seq+1)`).
fn next_id(id: &str) -> String {
    match id.split_once('-') {
        Some((ms, seq)) => format!("{ms}-{}", seq.parse::<u64>().map_or(0, |s| s + 1)),
        None => id.to_string(),
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn connect(
    client: &redis::Client,
    read_timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(IO_TIMEOUT)?;
    con.set_read_timeout(Some(read_timeout))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// One stream entry.
#[derive(Debug, PartialEq)]
struct Entry {
    id: String,
    /// Its sequence number (entries written before they had one: none).
    seq: Option<u64>,
    events: Vec<Event>,
}

impl Entry {
    /// When Redis took it (the stream id's milliseconds).
    fn arrived_ms(&self) -> Option<i64> {
        self.id.split('-').next()?.parse().ok()
    }
}

/// `XREAD [BLOCK ms] COUNT n STREAMS key last`: the entries after `last`.
fn read(
    con: &mut redis::Connection,
    stream: &str,
    last: &str,
    block_ms: Option<u64>,
) -> redis::RedisResult<Vec<Entry>> {
    let mut cmd = redis::cmd("XREAD");
    if let Some(ms) = block_ms {
        cmd.arg("BLOCK").arg(ms);
    }
    cmd.arg("COUNT")
        .arg(READ_COUNT)
        .arg("STREAMS")
        .arg(stream)
        .arg(last);
    let reply: redis::Value = cmd.query(con)?;
    Ok(entries(reply))
}

fn text(v: &redis::Value) -> Option<&str> {
    match v {
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok(),
        redis::Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn items(v: &redis::Value) -> &[redis::Value] {
    match v {
        redis::Value::Array(a) | redis::Value::Set(a) => a,
        _ => &[],
    }
}

/// The entries of an `XREAD` reply (nil when the wait timed out): per
/// stream `[key, [[id, [field, value, …]], …]]`. An entry that does not
/// parse is reported and skipped (another version's format), never fatal.
fn entries(reply: redis::Value) -> Vec<Entry> {
    let per_stream: Vec<&redis::Value> = match &reply {
        redis::Value::Map(pairs) => pairs.iter().map(|(_, v)| v).collect(),
        other => items(other)
            .iter()
            .filter_map(|s| items(s).get(1))
            .collect(),
    };
    let mut out = Vec::new();
    for list in per_stream {
        for entry in items(list) {
            let parts = items(entry);
            let (Some(id), Some(fields)) = (parts.first().and_then(text), parts.get(1)) else {
                continue;
            };
            let fields = items(fields);
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|kv| kv.first().and_then(text) == Some(name))
                    .and_then(|kv| kv.get(1).and_then(text))
            };
            let seq = field("s").and_then(|s| s.parse().ok());
            let events = match field("b").map(serde_json::from_str::<Vec<Event>>) {
                Some(Ok(events)) => events,
                _ => {
                    tracing::warn!(
                        entry = id,
                        "state stream entry skipped: not a batch of events"
                    );
                    Vec::new()
                }
            };
            out.push(Entry {
                id: id.to_string(),
                seq,
                events,
            });
        }
    }
    out
}

/// Applies one entry to `online`, as arrived when Redis took it; records
/// how long the entry took from the shared log to this view.
fn apply(online: &Online, entry: &Entry) {
    let now = now_ms();
    let arrived = entry.arrived_ms().unwrap_or(now);
    let accepted = online.apply_arrived(&entry.events, arrived).accepted;
    if accepted > 0 {
        metrics::histogram!(m::EVENT_APPLY_LAG_SECONDS)
            .record((now - arrived).max(0) as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn an_xread_reply_gives_its_batches_in_order() {
        let batch = r#"[{"type":"item","id":"e","item_id":"5","available":false,"timestamp":3}]"#;
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("cascade:events"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("10-0"),
                    Value::Array(vec![bulk("s"), bulk("7"), bulk("b"), bulk(batch)]),
                ]),
                Value::Array(vec![
                    bulk("11-0"),
                    Value::Array(vec![bulk("b"), bulk("not json")]),
                ]),
            ]),
        ])]);
        let got = entries(reply);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].id.as_str(), got[0].seq), ("10-0", Some(7)));
        assert_eq!(got[0].arrived_ms(), Some(10));
        assert_eq!(got[0].events[0].id(), "e");
        assert_eq!(
            got[1],
            Entry {
                id: "11-0".into(),
                seq: None,
                events: Vec::new()
            }
        );
        assert!(entries(Value::Nil).is_empty());
        assert_eq!(next_id("1700-3"), "1700-4");
    }

    /// A step that panics is caught, counted and restarted (told so), and
    /// the loop goes on until stopped: the follower never dies silently.
    #[test]
    fn a_panicking_follower_is_restarted_not_lost() {
        let stop = AtomicBool::new(false);
        let mut calls = Vec::new();
        supervise(
            &stop,
            |restart| {
                calls.push(restart);
                match calls.len() {
                    1 => panic!("a bug in the follower"),
                    2 => Err(redis::RedisError::from(std::io::Error::other("down"))),
                    4 => {
                        stop.store(true, Ordering::Relaxed);
                        Ok(())
                    }
                    _ => Ok(()),
                }
            },
            Duration::from_millis(1),
        );
        assert_eq!(calls, [false, true, false, false]);
    }

    #[test]
    fn a_writer_waits_for_its_entry_or_an_epoch_change_never_longer_than_asked() {
        let p = Arc::new(Progress::default());
        p.set(Some("i:1"), 3);
        assert!(p.wait("i:1", 3, Duration::ZERO));
        let mover = {
            let p = p.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                p.set(Some("i:1"), 5);
            })
        };
        assert!(p.wait("i:1", 5, Duration::from_secs(10)));
        mover.join().unwrap();
        assert!(!p.wait("i:1", 6, Duration::from_millis(10)), "times out");
        p.set(Some("s:2"), 0);
        assert!(!p.wait("i:1", 6, Duration::from_secs(10)), "epoch moved on");
        assert!(new_epoch('s').starts_with("s:"));
        assert_ne!(new_epoch('i'), new_epoch('i'));
    }
}
