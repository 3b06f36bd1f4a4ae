//! The answers replicas share through Redis, so that an outcome posted to
//! one replica for an answer another served is attributed
//! ([`crate::feedback::SharedAnswers`]).
//!
//! Each answer shown is a hash `<prefix>:answer:<request id>` (field `a`:
//! the answer; `s:<shadow>`: a shadow's order of the stage's items),
//! expiring after the attribution window. Publishing never waits: the
//! records go through a bounded queue to one writer thread, which sends
//! them in pipelined batches (a full queue drops the record, counted in
//! `cascade_shared_answers_dropped_total`; a failed batch is counted in
//! `cascade_state_store_errors_total{op="share"}`). A lookup is one
//! pipelined round trip for a batch's unknown request ids.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::Duration;

use crate::feedback::{SharedAnswer, SharedAnswers};
use crate::telemetry::metrics as m;

/// Records sent to Redis in one pipeline at most.
const BATCH: usize = 512;
/// How long the writer sleeps when there is nothing to send (it polls, so
/// a ranking's publish never wakes a thread).
const POLL: Duration = Duration::from_millis(5);
const TIMEOUT: Duration = Duration::from_millis(500);

enum Msg {
    /// (key, field, value).
    Set(String, String, String),
}

pub struct RedisAnswers {
    client: redis::Client,
    /// `<prefix>:answer:`.
    prefix: String,
    tx: SyncSender<Msg>,
    reader: Mutex<Option<redis::Connection>>,
    dropped: metrics::Counter,
}

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(TIMEOUT)?;
    con.set_read_timeout(Some(TIMEOUT))?;
    con.set_write_timeout(Some(TIMEOUT))?;
    Ok(con)
}

impl RedisAnswers {
    /// Starts the writer; answers expire after `window_ms`.
    pub fn start(
        client: redis::Client,
        prefix: &str,
        window_ms: i64,
        queue: usize,
    ) -> Result<RedisAnswers, String> {
        let (tx, rx) = sync_channel(queue.max(1));
        let writer_client = client.clone();
        metrics::counter!(m::STATE_STORE_ERRORS_TOTAL, "backend" => "redis", "op" => "share")
            .increment(0);
        std::thread::Builder::new()
            .name("shared-answers".into())
            .spawn(move || write(writer_client, rx, window_ms.max(1)))
            .map_err(|e| format!("cannot start the shared-answers writer: {e}"))?;
        let dropped = metrics::counter!(m::SHARED_ANSWERS_DROPPED_TOTAL);
        dropped.increment(0);
        Ok(RedisAnswers {
            client,
            prefix: format!("{prefix}:answer:"),
            tx,
            reader: Mutex::new(None),
            dropped,
        })
    }

    fn send(&self, msg: Msg) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(msg) {
            self.dropped.increment(1);
        }
    }
}

/// The writer: batches of records, pipelined, until the sender goes.
fn write(client: redis::Client, rx: Receiver<Msg>, window_ms: i64) {
    let mut con: Option<redis::Connection> = None;
    loop {
        let mut batch = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(msg) => {
                    batch.push(msg);
                    if batch.len() >= BATCH {
                        break;
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) if batch.is_empty() => return,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            }
        }
        if batch.is_empty() {
            std::thread::sleep(POLL);
            continue;
        }
        let sent = (|| {
            if con.is_none() {
                con = Some(connect(&client)?);
            }
            let mut p = redis::pipe();
            for Msg::Set(key, field, value) in &batch {
                p.cmd("HSET").arg(key).arg(field).arg(value).ignore();
                p.cmd("PEXPIRE").arg(key).arg(window_ms).ignore();
            }
            p.query::<()>(con.as_mut().expect("connected"))
        })();
        if let Err(e) = sent {
            con = None;
            super::store_failed("redis", "share", &e);
        }
    }
}

impl SharedAnswers for RedisAnswers {
    fn publish(&self, request_id: &str, answer: SharedAnswer) {
        let json = serde_json::to_string(&answer).expect("answers serialise");
        self.send(Msg::Set(
            format!("{}{request_id}", self.prefix),
            "a".into(),
            json,
        ));
    }

    fn publish_shadow(&self, request_id: &str, shadow: &str, items: Vec<String>) {
        let json = serde_json::to_string(&items).expect("ids serialise");
        self.send(Msg::Set(
            format!("{}{request_id}", self.prefix),
            format!("s:{shadow}"),
            json,
        ));
    }

    fn lookup(&self, request_ids: &[&str]) -> Vec<Option<SharedAnswer>> {
        if request_ids.is_empty() {
            return Vec::new();
        }
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let found = (|| {
            if reader.is_none() {
                *reader = Some(connect(&self.client)?);
            }
            let mut p = redis::pipe();
            for id in request_ids {
                p.cmd("HGETALL").arg(format!("{}{id}", self.prefix));
            }
            p.query::<Vec<Vec<(String, String)>>>(reader.as_mut().expect("connected"))
        })();
        match found {
            Ok(hashes) => hashes.into_iter().map(parse).collect(),
            Err(e) => {
                *reader = None;
                super::store_failed("redis", "share", &e);
                vec![None; request_ids.len()]
            }
        }
    }
}

/// An answer from its hash's fields (none when it holds no answer).
fn parse(fields: Vec<(String, String)>) -> Option<SharedAnswer> {
    let mut answer: SharedAnswer =
        serde_json::from_str(&fields.iter().find(|(k, _)| k == "a")?.1).ok()?;
    for (k, v) in &fields {
        if let (Some(shadow), Ok(items)) = (k.strip_prefix("s:"), serde_json::from_str(v)) {
            answer.shadows.push((shadow.to_string(), items));
        }
    }
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_gives_its_answer_and_shadows() {
        let a = SharedAnswer {
            at_ms: 5,
            variant: "b".into(),
            models: "ranker@2".into(),
            experiment: 3,
            served_by: "r1".into(),
            items: vec!["7".into(), "9".into()],
            shadows: Vec::new(),
        };
        let fields = vec![
            ("s:v2".to_string(), "[\"9\",\"7\"]".to_string()),
            ("a".to_string(), serde_json::to_string(&a).unwrap()),
        ];
        let back = parse(fields).unwrap();
        assert_eq!(back.items, a.items);
        assert_eq!(
            back.shadows,
            vec![("v2".to_string(), vec!["9".to_string(), "7".to_string()])]
        );
        assert_eq!(parse(vec![("s:v2".into(), "[]".into())]), None);
    }
}
