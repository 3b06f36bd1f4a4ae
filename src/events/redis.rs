//! `[state] backend = "redis"`: replicas share live state through one
//! Redis, as a shared log that each replica follows into its own
//! in-process view.
//!
//! - Accepting a batch is one Lua script, atomic in Redis: every event id
//!   is claimed as a key of its own (`<prefix>:id:<id>`, `SET NX`); the
//!   events whose id was new are appended as one entry to a stream
//!   (`<prefix>:events`) with the next sequence number, and their
//!   positions are returned. Ids are therefore unique across replicas and
//!   restarts, and a retry after a timeout is a duplicate, never a double
//!   count.
//! - The accepting replica applies its batch at once (its next ranking
//!   sees it); every replica, itself included, follows the stream with a
//!   blocking `XREAD` on its own thread and applies what it has not
//!   applied yet (the view skips known ids), so an event accepted anywhere
//!   is in every replica's rankings within about one round trip.
//! - At start a replica reads the shared snapshot (when there is one) and
//!   the stream after it before it serves; if Redis cannot be reached it
//!   starts on the catalog snapshot alone, says so, and catches up once
//!   Redis answers.
//! - Redis down: ranking goes on from the in-process view
//!   (`cascade_state_store_up` 0, one warning per 10 s), `POST /v1/events`
//!   answers 503 within the connect/IO timeout, and the follower retries
//!   with backoff and resumes from the last entry it applied.
//! - Bounded: each id is its own key with a time to live of
//!   `state.dedupe_window`, so the ids expire by themselves; and past
//!   `state.redis_compact_entries` stream entries one replica (a lock key
//!   decides which) writes its view as a snapshot (`<prefix>:snapshot`: the
//!   view, the last entry and sequence number it covers) and trims the
//!   stream up to it. Every entry carries a sequence number; a replica
//!   that finds a gap (it fell behind a trim, or starts after one) reloads
//!   the snapshot and reads on from there.
//!
//! Durability is Redis's: run it with `appendonly yes` (and
//! `appendfsync always` for the embedded log's guarantee).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Claims each id (a key per id, expiring after the dedupe window);
/// appends the events whose id was new as one stream entry with the next
/// sequence number; returns their 0-based positions in the call.
/// KEYS: id-key prefix, stream, sequence. ARGV: window ms, then id, event
/// pairs.
const ACCEPT: &str = r#"
local fresh, at = {}, {}
for i = 2, #ARGV, 2 do
  if redis.call('SET', KEYS[1] .. ARGV[i], 1, 'NX', 'PX', ARGV[1]) then
    fresh[#fresh + 1] = ARGV[i + 1]
    at[#at + 1] = (i - 2) / 2
  end
end
if #fresh > 0 then
  local seq = redis.call('INCR', KEYS[3])
  redis.call('XADD', KEYS[2], '*', 's', seq, 'b', '[' .. table.concat(fresh, ',') .. ']')
end
return at
"#;

/// The keys one app uses in Redis.
#[derive(Clone)]
struct Keys {
    /// `<prefix>:id:` + event id.
    id: String,
    stream: String,
    seq: String,
    snapshot: String,
    lock: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            id: format!("{prefix}:id:"),
            stream: format!("{prefix}:events"),
            seq: format!("{prefix}:seq"),
            snapshot: format!("{prefix}:snapshot"),
            lock: format!("{prefix}:compacting"),
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

pub struct RedisStore {
    client: redis::Client,
    /// The connection `POST /v1/events` writes through (one batch at a
    /// time), re-opened after an error.
    writer: Mutex<Option<redis::Connection>>,
    keys: Keys,
    compaction: Compaction,
    accept: redis::Script,
    stop: Arc<AtomicBool>,
}

/// Why a batch could not be recorded.
#[derive(Debug, thiserror::Error)]
#[error("the state store (Redis) is unavailable: {0}")]
pub struct Unavailable(String);

impl RedisStore {
    /// A store on `url` (`redis://host:port/db`) under `prefix`; nothing
    /// is contacted yet.
    pub fn new(url: &str, prefix: &str, compaction: Compaction) -> Result<RedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| format!("state.redis_url: {e}"))?;
        for op in ["append", "follow", "compact"] {
            metrics::counter!(m::STATE_STORE_ERRORS_TOTAL, "backend" => "redis", "op" => op)
                .increment(0);
        }
        store_up("redis", false);
        Ok(RedisStore {
            client,
            writer: Mutex::new(None),
            keys: Keys::new(prefix),
            compaction,
            accept: redis::Script::new(ACCEPT),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Records `fresh` (none applied here before) in the shared log and
    /// returns the ones no replica had recorded, in order.
    pub fn append(&self, fresh: Vec<Event>) -> Result<Vec<Event>, Unavailable> {
        if fresh.is_empty() {
            return Ok(fresh);
        }
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let result = (|| {
            if writer.is_none() {
                *writer = Some(connect(&self.client, IO_TIMEOUT)?);
            }
            let con = writer.as_mut().expect("just connected");
            let mut call = self.accept.key(&self.keys.id);
            call.key(&self.keys.stream)
                .key(&self.keys.seq)
                .arg(self.compaction.window_ms.max(1));
            for e in &fresh {
                let json = serde_json::to_string(e).expect("events serialize");
                call.arg(e.id()).arg(json);
            }
            call.invoke::<Vec<usize>>(con)
        })();
        match result {
            Ok(at) => {
                store_up("redis", true);
                let mut fresh: Vec<Option<Event>> = fresh.into_iter().map(Some).collect();
                Ok(at
                    .into_iter()
                    .filter_map(|i| fresh.get_mut(i)?.take())
                    .collect())
            }
            Err(e) => {
                // Whether the script ran is unknown: the caller retries,
                // and the ids make a retry harmless.
                *writer = None;
                store_failed("redis", "append", &e);
                Err(Unavailable(e.to_string()))
            }
        }
    }

    /// A follower of this store's stream into `online`, from the start.
    pub fn follower(&self, online: Arc<Online>) -> Follower {
        Follower {
            client: self.client.clone(),
            keys: self.keys.clone(),
            compaction: self.compaction,
            online,
            last: "0-0".into(),
            seq: 0,
            since_snapshot: 0,
            resynced: false,
        }
    }

    /// Runs `follower` on a thread of its own until the store is dropped:
    /// applies every new entry, compacts when it is the one to, reconnects
    /// with backoff when Redis goes away and resumes where it stopped.
    pub fn follow(&self, mut follower: Follower) {
        let stop = self.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("cascade-state-follow".into())
            .spawn(move || {
                let mut con: Option<redis::Connection> = None;
                let mut backoff = Duration::from_millis(100);
                while !stop.load(Ordering::Relaxed) {
                    let result = (|| {
                        if con.is_none() {
                            let wait = IO_TIMEOUT + Duration::from_millis(BLOCK_MS);
                            con = Some(connect(&follower.client, wait)?);
                        }
                        let c = con.as_mut().expect("just connected");
                        follower.step(c, Some(BLOCK_MS))?;
                        follower.maybe_compact(c)
                    })();
                    match result {
                        Ok(()) => {
                            store_up("redis", true);
                            backoff = Duration::from_millis(100);
                        }
                        Err(e) => {
                            con = None;
                            store_failed("redis", "follow", &e);
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the state follower thread");
        }
    }
}

/// Where one replica is in the shared log, and what it applies it to.
pub struct Follower {
    client: redis::Client,
    keys: Keys,
    compaction: Compaction,
    online: Arc<Online>,
    /// The last entry applied, and its sequence number (0: none yet).
    last: String,
    seq: u64,
    /// Entries applied since this replica last looked at compacting.
    since_snapshot: u64,
    /// Whether the last read found a gap and reloaded the snapshot.
    resynced: bool,
}

impl Follower {
    /// Reads everything there is (the snapshot first, when there is one)
    /// before the server starts: the stream entries read after the
    /// snapshot, or an error when Redis cannot be read (the follower
    /// thread catches up later).
    pub fn catch_up(&mut self) -> Result<usize, String> {
        let mut con = connect(&self.client, IO_TIMEOUT).map_err(|e| e.to_string())?;
        self.load_snapshot(&mut con).map_err(|e| e.to_string())?;
        let mut entries = 0;
        loop {
            match self.step(&mut con, None).map_err(|e| e.to_string())? {
                0 => {
                    store_up("redis", true);
                    return Ok(entries);
                }
                n => entries += n,
            }
        }
    }

    /// Replaces the view with the shared snapshot, when there is one, and
    /// moves to the entry it covers. Returns the users it held.
    fn load_snapshot(&mut self, con: &mut redis::Connection) -> redis::RedisResult<usize> {
        let (last, seq, view): (Option<String>, Option<u64>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(&self.keys.snapshot)
            .arg("last")
            .arg("seq")
            .arg("view")
            .query(con)?;
        let (Some(last), Some(seq), Some(view)) = (last, seq, view) else {
            return Ok(0);
        };
        let users = self
            .online
            .restore(&view)
            .map_err(|e| redis::RedisError::from((redis::ErrorKind::Client, "snapshot", e)))?;
        tracing::info!(users, entry = %last, seq, "live state loaded from the shared snapshot");
        self.last = last;
        self.seq = seq;
        self.online.report_size();
        Ok(users)
    }

    /// One read of the entries after `last` (waiting up to `block_ms` when
    /// given), applied in order. A gap in the sequence numbers (entries
    /// trimmed before this replica read them) reloads the snapshot instead.
    /// Returns the entries read.
    fn step(
        &mut self,
        con: &mut redis::Connection,
        block_ms: Option<u64>,
    ) -> redis::RedisResult<usize> {
        let entries = read(con, &self.keys.stream, &self.last, block_ms)?;
        let n = entries.len();
        if let Some(first) = entries.first().and_then(|e| e.seq) {
            if first != self.seq + 1 {
                if !self.resynced {
                    tracing::warn!(
                        applied = self.seq,
                        next = first,
                        "entries were trimmed before this replica read them: reloading the snapshot"
                    );
                    self.resynced = true;
                    self.load_snapshot(con)?;
                    return Ok(n);
                }
                // Still a gap right after reloading: Redis lost entries
                // (restarted without persistence); follow on from here.
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
            self.last = e.id;
            self.seq = e.seq.unwrap_or(self.seq + 1);
            self.since_snapshot += 1;
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
        let won: Option<String> = redis::cmd("SET")
            .arg(&self.keys.lock)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(60_000)
            .query(con)?;
        if won.is_none() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let view = self.online.snapshot(self.compaction.window_ms);
        let result = (|| {
            redis::cmd("HSET")
                .arg(&self.keys.snapshot)
                .arg("last")
                .arg(&self.last)
                .arg("seq")
                .arg(self.seq)
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

/// Applies one entry to `online`; records how long an entry another
/// replica accepted took from the shared log to this view.
fn apply(online: &Online, entry: &Entry) {
    let accepted = online.apply(&entry.events).accepted;
    // Batches this replica accepted itself were applied at once.
    let ms = entry
        .id
        .split('-')
        .next()
        .and_then(|t| t.parse::<i64>().ok());
    if let Some(ms) = ms.filter(|_| accepted > 0) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        metrics::histogram!(m::EVENT_APPLY_LAG_SECONDS)
            .record((now_ms - ms).max(0) as f64 / 1000.0);
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
}
