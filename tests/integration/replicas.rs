//! `[state] backend = "redis"`: replicas share live state through a real
//! Redis (Debian's `redis-server`, started here on a loopback port of its
//! own and stopped when the test ends). An event accepted by one replica
//! is in another's rankings within a second; Redis going away never fails
//! a ranking, refuses events with a fast 503, and both recover by
//! themselves when it is back.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{config_for, item_ids as ids, post_json_to, shipped_models, Resp, TestServer};

/// A `redis-server` child on a free loopback port, without persistence.
struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// `None`, with a message, where `redis-server` is not installed
    /// (`scripts/setup-test-env.sh` installs it from Debian's packages).
    fn start() -> Option<RedisServer> {
        let binary = PathBuf::from("/usr/bin/redis-server");
        let found = binary.exists()
            || Command::new("redis-server")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok();
        if !found {
            crate::common::skip(
                "a replica test on a real Redis",
                "redis-server is not installed (scripts/setup-test-env.sh installs Debian's redis-server)",
            );
            return None;
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.run();
        Some(server)
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One command's reply, as its first line (`:3`, `+OK`, `$-1`, ...).
    fn command(&self, args: &[&str]) -> String {
        use std::io::{BufRead, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn replica(redis: &RedisServer) -> TestServer {
    replica_compacting_past(redis, 100_000).await
}

async fn replica_compacting_past(redis: &RedisServer, entries: u64) -> TestServer {
    let mut config = config_for(&shipped_models());
    config.state.backend = "redis".into();
    config.state.redis_url = Some(redis.url());
    config.state.redis_compact_entries = entries;
    TestServer::start(config).await
}

fn rating(id: &str, user: &str, item: &str) -> Value {
    json!({"events": [{"type": "interaction", "id": id, "user_id": user, "item_id": item, "kind": "rating", "value": 5}]})
}

async fn events(s: &TestServer, body: &Value) -> Resp {
    s.post_json("/v1/events", body).await
}

/// Polls `ok` on `s`'s answer to `ask` until it holds or `within` passes;
/// returns how long it took.
async fn until(
    s: &TestServer,
    ask: &Value,
    within: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        let v = s.post_json("/v1/rank", ask).await.json();
        if ok(&v) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_agree_within_a_second() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b) = (replica(&redis).await, replica(&redis).await);
    let ask = json!({"user_id": "1", "k": 10, "context": {"hour": 3, "weekday": 1}});
    let top = ids(&b.post_json("/v1/rank", &ask).await.json())[0].clone();
    let r = events(&a, &rating("r-1", "1", &top)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"accepted": 1, "duplicates": 0}));
    // The accepting replica sees it at once...
    assert!(!ids(&a.post_json("/v1/rank", &ask).await.json()).contains(&top));
    // ...and the other within a second (its cached answer included).
    let took = until(&b, &ask, Duration::from_secs(1), |v| !ids(v).contains(&top)).await;
    assert!(took.is_some(), "replica b still offers {top} after 1 s");
    // Ids are shared: the same event sent to the other replica is a duplicate.
    let r = events(&b, &rating("r-1", "1", &top)).await;
    assert_eq!(r.json(), json!({"accepted": 0, "duplicates": 1}));
    // Catalog changes too: a new item inserted through one replica is
    // rankable on the other within a second.
    let new = json!({"events": [{"type": "item", "id": "r-2", "item_id": "new-r",
        "fields": {"embedding": vec![0.1; 32], "year": 1998, "popularity": 10}}]});
    assert_eq!(events(&b, &new).await.status, 200);
    let with_new = json!({"user_id": "1", "k": 2, "candidates": ["new-r", "50"]});
    let took = until(&a, &with_new, Duration::from_secs(1), |v| {
        ids(v).contains(&"new-r".to_string())
    })
    .await;
    assert!(took.is_some(), "replica a does not know new-r after 1 s");
    // A replica started later reads the shared log before it serves.
    let c = replica(&redis).await;
    assert!(!ids(&c.post_json("/v1/rank", &ask).await.json()).contains(&top));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_and_back_under_load_never_fails_a_ranking() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (a, b) = (replica(&redis).await, replica(&redis).await);
    let public = a.public;
    // Rankings on replica a, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let ask = json!({"user_id": format!("{}", 1 + n % 50), "k": 10});
                let r = post_json_to(public, "/v1/rank", &ask).await;
                statuses.push(r.status);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        })
    };
    let ask = json!({"user_id": "7", "k": 50});
    let top = ids(&b.post_json("/v1/rank", &ask).await.json())[0].clone();
    assert_eq!(events(&a, &rating("d-1", "8", &top)).await.status, 200);
    redis.stop();
    // Events are refused fast, with a reason and a retry hint.
    let t = Instant::now();
    let r = events(&a, &rating("d-2", "7", &top)).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["code"], "state_store_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Back (empty: this Redis keeps nothing), and events resume by
    // themselves: the caller's retry of the refused event goes through.
    redis.run();
    let started = Instant::now();
    let mut status = 0;
    while started.elapsed() < Duration::from_secs(10) {
        status = events(&a, &rating("d-2", "7", &top)).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "events did not resume");
    // The other replica's follower reconnected and sees it.
    let took = until(&b, &ask, Duration::from_secs(5), |v| !ids(v).contains(&top)).await;
    assert!(
        took.is_some(),
        "replica b never saw the event after the restart"
    );
    stop.store(true, Ordering::Relaxed);
    let statuses = load.await.unwrap();
    assert!(statuses.len() > 20, "{} rankings", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "a ranking failed while Redis was away: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    let text = crate::common::metrics_text(a.admin).await;
    assert!(
        text.lines().any(|l| l
            .starts_with("cascade_state_store_errors_total{backend=\"redis\",op=\"append\"}")
            && !l.ends_with(" 0")),
        "no append error counted"
    );
}

/// Past `state.redis_compact_entries` a replica writes its view as the
/// shared snapshot and trims the stream: the stream stays short, a replica
/// started afterwards loads the snapshot and the rest, and ids are still
/// recognised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_shared_log_stays_short_and_late_replicas_load_its_snapshot() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = replica_compacting_past(&redis, 5).await;
    let ask = json!({"user_id": "1", "k": 10, "context": {"hour": 3, "weekday": 1}});
    let top = ids(&a.post_json("/v1/rank", &ask).await.json())[0].clone();
    assert_eq!(events(&a, &rating("s-0", "1", &top)).await.status, 200);
    for i in 1..40 {
        let r = events(&a, &rating(&format!("s-{i}"), &format!("u{i}"), "100")).await;
        assert_eq!(r.status, 200);
    }
    // The follower compacts once it has read past the threshold.
    let started = Instant::now();
    while redis.command(&["EXISTS", "cascade:snapshot"]) != ":1" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no snapshot written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let len: u64 = redis.command(&["XLEN", "cascade:events"])[1..]
        .parse()
        .unwrap();
    assert!(len < 40, "the stream still holds {len} entries");
    // Ids are keys (by digest) that expire after the dedupe window, not a
    // growing set.
    let key = format!("cascade:id:{}", cascade::events::dedupe::digest_hex("s-0"));
    let ttl: i64 = redis.command(&["PTTL", &key])[1..].parse().unwrap();
    assert!(ttl > 0 && ttl <= 7 * 86_400_000, "{ttl}");
    let c = replica(&redis).await;
    assert!(
        !ids(&c.post_json("/v1/rank", &ask).await.json()).contains(&top),
        "the late replica lost the first event (trimmed, so only in the snapshot)"
    );
    let r = events(&c, &rating("s-0", "1", &top)).await;
    assert_eq!(r.json(), json!({"accepted": 0, "duplicates": 1}));
    // A late replica knows new items from the snapshot and the stream.
    let new = json!({"events": [{"type": "item", "id": "s-new", "item_id": "new-s",
        "fields": {"embedding": vec![0.1; 32], "year": 1998}}]});
    assert_eq!(events(&a, &new).await.status, 200);
    let d = replica(&redis).await;
    let with_new = json!({"user_id": "1", "k": 2, "candidates": ["new-s", "50"]});
    let v = d.post_json("/v1/rank", &with_new).await.json();
    assert!(ids(&v).contains(&"new-s".to_string()), "{v}");
}

/// The availability of 60 items flipped on both replicas at once (b sets
/// it off while a sets it on, for every item): the shared log orders the
/// flips, every replica applies them in that order, so both end — and a
/// replica started later starts — in the same state. Then Redis restarts
/// empty: a replica re-seeds it from its view, events resume, old ids are
/// still duplicates, and a replica started afterwards has the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_under_racing_flips_and_survive_a_redis_reset() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (a, b) = (replica(&redis).await, replica(&redis).await);
    let items: Vec<String> = (1..=60).map(|i| i.to_string()).collect();
    let flip = |id: String, item: &str, available: bool| json!({"events": [{"type": "item", "id": id, "item_id": item, "available": available}]});
    for round in 0..3 {
        let mut posts = Vec::new();
        for item in &items {
            let off = flip(format!("off-{round}-{item}"), item, false);
            let on = flip(format!("on-{round}-{item}"), item, true);
            let (pa, pb) = (a.public, b.public);
            posts.push(tokio::spawn(async move {
                post_json_to(pb, "/v1/events", &off).await.status
            }));
            posts.push(tokio::spawn(async move {
                post_json_to(pa, "/v1/events", &on).await.status
            }));
        }
        for p in posts {
            assert_eq!(p.await.unwrap(), 200);
        }
    }
    let ask = json!({"user_id": "1", "k": 60, "candidates": items});
    let shown = |v: &Value| {
        let mut got = ids(v);
        got.sort();
        got
    };
    // Each accepting replica answered after applying its own entry: both
    // have applied everything (within a moment for the other's last one).
    let mut agreed = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let (va, vb) = (
            a.post_json("/v1/rank", &ask).await.json(),
            b.post_json("/v1/rank", &ask).await.json(),
        );
        if shown(&va) == shown(&vb) {
            agreed = Some(shown(&va));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = agreed.expect("the replicas disagree on which items are available");
    let c = replica(&redis).await;
    assert_eq!(shown(&c.post_json("/v1/rank", &ask).await.json()), before);
    drop(c);

    // Redis loses everything.
    redis.stop();
    redis.run();
    let started = Instant::now();
    loop {
        let r = events(&a, &rating("after-reset-1", "5", "100")).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "events never resumed after the reset: {}",
            String::from_utf8_lossy(&r.body)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let epoch = redis.command(&["GET", "cascade:epoch"]);
    assert!(epoch.starts_with('$'), "no epoch after the reset: {epoch}");
    // Ids accepted before the reset are still duplicates, on either replica.
    for (s, id, item) in [(&a, "off-0-1", "1"), (&b, "on-2-60", "60")] {
        let r = events(s, &flip(id.into(), item, true)).await;
        assert_eq!(r.json(), json!({"accepted": 0, "duplicates": 1}), "{id}");
    }
    // The state is the same on both, and on a replica started now.
    for s in [&a, &b] {
        let took = until(s, &ask, Duration::from_secs(2), |v| shown(v) == before).await;
        assert!(took.is_some(), "a replica's state changed across the reset");
    }
    let d = replica(&redis).await;
    assert_eq!(shown(&d.post_json("/v1/rank", &ask).await.json()), before);
    // (Replicas in one test process share one metrics registry.)
    let text = crate::common::metrics_text(a.admin).await;
    let reseeds: f64 = text
        .lines()
        .filter(|l| l.starts_with("cascade_state_reseeds_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(reseeds >= 1.0, "no replica re-seeded");
}

/// An outcome posted to one replica for an answer another replica served
/// is attributed (the answers are shared through Redis) and counted by the
/// replica that served it: the reports of the two add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_on_another_replicas_answer_is_attributed_and_counted_by_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b) = (replica(&redis).await, replica(&redis).await);
    let user = crate::common::known_users(1).remove(0);
    let ask = json!({"request_id": "x-1", "user_id": user, "k": 5});
    let shown = ids(&a.post_json("/v1/rank", &ask).await.json());
    // Shared off the ranking path: within moments.
    let started = Instant::now();
    while redis.command(&["EXISTS", "cascade:answer:x-1"]) != ":1" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the answer was never shared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let click = |id: &str, item: &str| {
        json!({"events": [{"type": "interaction", "id": id, "user_id": user, "item_id": item,
                            "kind": "click", "request_id": "x-1"}]})
    };
    assert_eq!(events(&b, &click("xc-1", &shown[2])).await.status, 200);
    let not_shown = (1..=1682)
        .map(|i| i.to_string())
        .find(|i| !shown.contains(i))
        .unwrap();
    assert_eq!(events(&b, &click("xc-2", &not_shown)).await.status, 200);
    let report = |s: &TestServer| {
        let admin = s.admin;
        async move {
            crate::common::send(admin, "GET", "/admin/experiments/report", &[], b"")
                .await
                .json()
        }
    };
    let started = Instant::now();
    loop {
        let r = report(&a).await;
        if r["arms"][0]["outcomes"]["click"]["count"] == 1 {
            assert_eq!(
                r["arms"][0]["outcomes"]["click"]["mean_position"], 2.0,
                "{r}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the serving replica never counted it: {r}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The accepting replica served nothing: it counts nothing.
    let r = report(&b).await;
    assert_eq!(r["arms"][0]["outcomes"]["click"]["count"], 0, "{r}");
}
