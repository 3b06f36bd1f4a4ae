//! `[state] backend = "redis"`: replicas share live state through one
//! Redis, as a shared log that each replica follows into its own
//! in-process view.
//!
//! - Accepting a batch is one Lua script, atomic in Redis: every event id
//!   is added to a set (`<prefix>:ids`); the events whose id was new are
//!   appended as one entry to a stream (`<prefix>:events`), and their
//!   positions are returned. Ids are therefore unique across replicas and
//!   restarts, and a retry after a timeout is a duplicate, never a double
//!   count.
//! - The accepting replica applies its batch at once (its next ranking
//!   sees it); every replica, itself included, follows the stream with a
//!   blocking `XREAD` on its own thread and applies what it has not
//!   applied yet (the view skips known ids), so an event accepted anywhere
//!   is in every replica's rankings within about one round trip.
//! - At start a replica reads the stream from the beginning before it
//!   serves; if Redis cannot be reached it starts on the snapshot alone,
//!   says so, and catches up once Redis answers.
//! - Redis down: ranking goes on from the in-process view
//!   (`cascade_state_store_up` 0, one warning per 10 s), `POST /v1/events`
//!   answers 503 within the connect/IO timeout, and the follower retries
//!   with backoff and resumes from the last entry it applied.
//!
//! Durability is Redis's: run it with `appendonly yes` (and
//! `appendfsync always` for the embedded log's guarantee). The id set and
//! the stream grow with the events, like the embedded log: compaction is
//! still to come for both.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::online::Online;
use super::{store_failed, store_up, Event};
use crate::catalog::Catalog;
use crate::telemetry::metrics as m;

/// Connect, read and write timeout of every Redis call but the follower's
/// blocking read (which waits `BLOCK` longer).
const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the follower's `XREAD` waits for new entries.
const BLOCK_MS: u64 = 500;
/// Entries per read.
const READ_COUNT: usize = 500;

/// Adds each id to the set; appends the events whose id was new, as one
/// stream entry; returns their 0-based positions in the call.
const ACCEPT: &str = r#"
local fresh, at = {}, {}
for i = 1, #ARGV, 2 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    fresh[#fresh + 1] = ARGV[i + 1]
    at[#at + 1] = (i - 1) / 2
  end
end
if #fresh > 0 then
  redis.call('XADD', KEYS[2], '*', 'b', '[' .. table.concat(fresh, ',') .. ']')
end
return at
"#;

pub struct RedisStore {
    client: redis::Client,
    /// The connection `POST /v1/events` writes through (one batch at a
    /// time), re-opened after an error.
    writer: Mutex<Option<redis::Connection>>,
    ids: String,
    stream: String,
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
    pub fn new(url: &str, prefix: &str) -> Result<RedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| format!("state.redis_url: {e}"))?;
        for op in ["append", "follow"] {
            metrics::counter!(m::STATE_STORE_ERRORS_TOTAL, "backend" => "redis", "op" => op)
                .increment(0);
        }
        store_up("redis", false);
        Ok(RedisStore {
            client,
            writer: Mutex::new(None),
            ids: format!("{prefix}:ids"),
            stream: format!("{prefix}:events"),
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
            let mut call = self.accept.key(&self.ids);
            call.key(&self.stream);
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

    /// Reads what the stream holds after `last` into `online` until it is
    /// drained (at start, before serving). Returns the last entry applied,
    /// or an error when Redis cannot be read (the follower catches up).
    pub fn catch_up(
        &self,
        catalog: &Catalog,
        online: &Online,
        last: &mut String,
    ) -> Result<usize, String> {
        let mut con = connect(&self.client, IO_TIMEOUT).map_err(|e| e.to_string())?;
        let mut events = 0;
        loop {
            let read = read(&mut con, &self.stream, last, None).map_err(|e| e.to_string())?;
            if read.is_empty() {
                store_up("redis", true);
                return Ok(events);
            }
            events += apply(catalog, online, read, last);
        }
    }

    /// Follows the stream from `last` on a thread of its own until the
    /// store is dropped, applying every new entry to `online`; reconnects
    /// with backoff when Redis goes away and resumes where it stopped.
    pub fn follow(&self, catalog: Arc<Catalog>, online: Arc<Online>, mut last: String) {
        let stop = self.stop.clone();
        let client = self.client.clone();
        let stream = self.stream.clone();
        let spawned = std::thread::Builder::new()
            .name("cascade-state-follow".into())
            .spawn(move || {
                let mut con: Option<redis::Connection> = None;
                let mut backoff = Duration::from_millis(100);
                while !stop.load(Ordering::Relaxed) {
                    let result = (|| {
                        if con.is_none() {
                            let wait = IO_TIMEOUT + Duration::from_millis(BLOCK_MS);
                            con = Some(connect(&client, wait)?);
                        }
                        let c = con.as_mut().expect("just connected");
                        read(c, &stream, &last, Some(BLOCK_MS))
                    })();
                    match result {
                        Ok(read) => {
                            store_up("redis", true);
                            backoff = Duration::from_millis(100);
                            apply(&catalog, &online, read, &mut last);
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

/// One stream entry: its id and its batch.
type Entry = (String, Vec<Event>);

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
            let batch = fields
                .chunks(2)
                .find(|kv| kv.first().and_then(text) == Some("b"))
                .and_then(|kv| kv.get(1).and_then(text))
                .map(serde_json::from_str::<Vec<Event>>);
            match batch {
                Some(Ok(events)) => out.push((id.to_string(), events)),
                _ => {
                    tracing::warn!(
                        entry = id,
                        "state stream entry skipped: not a batch of events"
                    );
                    out.push((id.to_string(), Vec::new()));
                }
            }
        }
    }
    out
}

/// Applies `read` to `online`, moving `last` past it; records how long
/// each entry another replica accepted took from the shared log to this
/// view. Returns the events applied.
fn apply(catalog: &Catalog, online: &Online, read: Vec<Entry>, last: &mut String) -> usize {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut applied = 0;
    for (id, batch) in read {
        let accepted = online.apply(catalog, &batch).accepted;
        applied += accepted;
        // Batches this replica accepted itself were applied at once.
        let ms = id.split('-').next().and_then(|t| t.parse::<i64>().ok());
        if let Some(ms) = ms.filter(|_| accepted > 0) {
            metrics::histogram!(m::EVENT_APPLY_LAG_SECONDS)
                .record((now_ms - ms).max(0) as f64 / 1000.0);
        }
        *last = id;
    }
    if applied > 0 {
        online.report_size();
    }
    applied
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
                    Value::Array(vec![bulk("b"), bulk(batch)]),
                ]),
                Value::Array(vec![
                    bulk("11-0"),
                    Value::Array(vec![bulk("b"), bulk("not json")]),
                ]),
            ]),
        ])]);
        let got = entries(reply);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "10-0");
        assert_eq!(got[0].1[0].id(), "e");
        assert_eq!(got[1], ("11-0".to_string(), Vec::new()));
        assert!(entries(Value::Nil).is_empty());
    }
}
