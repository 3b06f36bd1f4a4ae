//! cascade-load against a tiny in-process HTTP server on 127.0.0.1:0 whose
//! delay, stall and failures the test controls. Runs are short (≤ 2 s) and
//! timing checks are generous: they look for effects of hundreds of ms.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;

use cascade_load::cli::Args;
use cascade_load::report::Summary;

/// What the test server does with each request.
#[derive(Default, Clone)]
struct Behavior {
    /// Service time of every request.
    delay: Duration,
    /// When the `n`-th request (1-based) arrives, stall everything for this
    /// long: that request and every request arriving meanwhile wait until the
    /// stall ends (a GC pause, a lock, a full queue...).
    stall: Option<(u64, Duration)>,
    /// Answer 503 to every `m`-th request.
    fail_every: Option<u64>,
    /// A fixed service capacity: at most `n` requests in service at once,
    /// each for this long, the rest waiting their turn in arrival order. Up
    /// to `n / time` req/s latency stays at the service time; above it the
    /// queue, and latency, grow for as long as the load lasts.
    servers: Option<(usize, Duration)>,
}

struct State {
    behavior: Behavior,
    hits: AtomicU64,
    /// Set by the stalling request; read by every request.
    stall_until: Mutex<Option<Instant>>,
    /// The service slots of `Behavior::servers` (fair: first come, first served).
    servers: tokio::sync::Semaphore,
}

struct TestServer {
    addr: SocketAddr,
    state: Arc<State>,
}

impl TestServer {
    async fn start(behavior: Behavior) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            hits: AtomicU64::new(0),
            stall_until: Mutex::new(None),
            servers: tokio::sync::Semaphore::new(behavior.servers.map_or(0, |(n, _)| n)),
            behavior,
        });
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestServer { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = state.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let b = &state.behavior;
    let well_formed = req.method() == hyper::Method::POST
        && req.uri().path() == "/v2/models/ranker/infer"
        && req
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/json")
        && req.headers().contains_key("host");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json_ok = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .is_some_and(|v| v["inputs"][0]["shape"] == serde_json::json!([4, 40]));

    let stall_until = {
        let mut until = state.stall_until.lock().unwrap();
        if let Some((at, length)) = b.stall {
            if n == at {
                *until = Some(Instant::now() + length);
            }
        }
        *until
    };
    if let Some(t) = stall_until {
        tokio::time::sleep_until(t).await; // returns at once when already past
    }
    tokio::time::sleep(b.delay).await;
    if let Some((_, service)) = b.servers {
        let _slot = state.servers.acquire().await.unwrap();
        tokio::time::sleep(service).await;
    }

    let status = if !(well_formed && json_ok) {
        400
    } else if b.fail_every.is_some_and(|m| n.is_multiple_of(m)) {
        503
    } else {
        200
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(b"{\"outputs\":[]}")));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    Ok(resp)
}

async fn load(server_url: &str, extra: &[&str]) -> Summary {
    let mut argv = vec![
        "cascade-load",
        "--target",
        server_url,
        "--scenario",
        "infer",
        "--model",
        "ranker",
        "--batch",
        "4",
    ];
    argv.extend_from_slice(extra);
    let config = Args::try_parse_from(argv).unwrap().into_config().unwrap();
    cascade_load::execute(&config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_statuses_are_right() {
    let server = TestServer::start(Behavior {
        delay: Duration::from_millis(2),
        fail_every: Some(10),
        ..Behavior::default()
    })
    .await;
    let s = load(
        &server.url(),
        &["--rate", "200", "--duration", "1", "--warmup", "0.2"],
    )
    .await;
    let st = &s.stages[0];
    // 40 warm-up requests reach the server but are not recorded.
    assert_eq!(server.hits(), 240);
    assert_eq!((st.scheduled, st.sent, st.responses), (200, 200, 200));
    assert!(st.errors.values().all(|&n| n == 0), "{:?}", st.errors);
    assert!(
        !st.status.contains_key("400"),
        "malformed requests: {:?}",
        st.status
    );
    let (ok, unavailable) = (st.status["200"], st.status["503"]);
    assert_eq!(ok + unavailable, 200);
    assert!(
        (18..=22).contains(&unavailable),
        "every 10th request fails: {unavailable}"
    );
    assert!(
        st.achieved_rps > 150.0 && st.achieved_rps <= 200.5,
        "{}",
        st.achieved_rps
    );
    assert!(
        st.latency_ms.p50 >= 2.0 && st.latency_ms.p50 < 100.0,
        "{:?}",
        st.latency_ms
    );
    assert_eq!(st.latency_ms.count, 200);
    assert!(s.connections_opened >= 1 && s.connections_opened <= 256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stall_shows_in_p99() {
    // 200 req/s for 2 s; at the 100th request (0.5 s in) the server stalls for
    // 300 ms. About 60 requests are scheduled during the stall and wait for
    // it, 300 ms down to 0. A closed-loop client would have sent one request
    // during the stall and recorded one slow sample (p99 unaffected); measured
    // from the scheduled time, ~15 % of samples carry the stall.
    let server = TestServer::start(Behavior {
        delay: Duration::from_millis(1),
        stall: Some((100, Duration::from_millis(300))),
        ..Behavior::default()
    })
    .await;
    let s = load(
        &server.url(),
        &[
            "--rate",
            "200",
            "--duration",
            "2",
            "--warmup",
            "0",
            "--timeout-ms",
            "2000",
        ],
    )
    .await;
    let st = &s.stages[0];
    assert_eq!((st.responses, st.status["200"]), (400, 400));
    let p = &st.latency_ms;
    assert!(p.p50 < 50.0, "the stall must not move the median: {p:?}");
    assert!(
        p.p90 > 50.0,
        "~15 % of requests waited for the stall: {p:?}"
    );
    assert!(p.p99 > 200.0, "p99 must reflect the 300 ms stall: {p:?}");
    assert!(p.max > 250.0 && p.max < 1500.0, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_max_reports_a_rate_near_the_server_capacity() {
    // Two service slots of 10 ms: the server serves ~200 req/s at most (a
    // little less, as tokio's timer rounds sleeps up to its millisecond
    // tick), ~165 req/s here. Below that latency is ~12 ms; above, the queue
    // grows through the step, and p99 with it, past the 60 ms bound (chosen
    // well above the service time so that scheduling noise on a busy machine
    // does not fail a step) and the server falls behind the offered rate.
    let server = TestServer::start(Behavior {
        servers: Some((2, Duration::from_millis(10))),
        ..Behavior::default()
    })
    .await;
    let started = Instant::now();
    let argv = [
        "--find-max",
        "--rate",
        "50",
        "--step-factor",
        "1.5",
        "--bisect",
        "2",
        "--max-steps",
        "8",
        "--p99-ms",
        "60",
        "--duration",
        "0.6",
        "--warmup",
        "0.2",
        "--timeout-ms",
        "500",
        "--cooldown",
        "0.3",
    ];
    let config = Args::try_parse_from(
        [
            "cascade-load",
            "--target",
            &server.url(),
            "--scenario",
            "infer",
            "--batch",
            "4",
        ]
        .iter()
        .chain(&argv),
    )
    .unwrap()
    .into_config()
    .unwrap();
    let mut lines = Vec::new();
    let s = cascade_load::execute_find_max(&config, |p| {
        if let cascade_load::find_max::Progress::Step(step) = p {
            lines.push(cascade_load::report::step_line(step));
        }
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();
    let report = cascade_load::report::render_find_max(&s);

    // 50, 75, 112.5, 168.75 hold and 253.1 misses (on a quiet machine), then
    // two bisections; noise may end the climb a step early (a miss at 112.5
    // still bisects up to >= 93.75), never much later.
    let max = s.max_held_rps.unwrap_or(0.0);
    assert!((90.0..=260.0).contains(&max), "{report}");
    let missed = s.min_missed_rps.expect("some rate above capacity missed");
    assert!(missed > max && missed <= 400.0, "{report}");
    let best = s.max_held_step().expect("the step at the max held");
    assert!(best.result.latency_ms.p99 <= 60.0 && best.reasons.is_empty());
    assert!(s.steps.iter().any(|st| !st.held), "{report}");
    assert!(
        s.steps.len() <= 8 && lines.len() == s.steps.len(),
        "{report}"
    );
    assert_eq!(s.steps[0].result.offered_rps, 50.0);
    // Each step's rate is the last held one x1.5 until the first miss.
    for w in s.steps.windows(2).take_while(|w| w[0].held) {
        assert!((w[1].result.offered_rps / w[0].result.offered_rps - 1.5).abs() < 1e-9);
    }
    // 8 steps of 0.8 s (+ timeouts, cooldowns) at most: it stops by itself.
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}\n{report}");
    for needle in [
        "find-max: p99 <= 60 ms",
        "step  1 up",
        "held",
        "missed: p99",
        "highest rate held: ",
    ] {
        assert!(report.contains(needle), "missing {needle:?} in:\n{report}");
    }
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["mode"], "find_max");
    assert_eq!(json["max_held_rps"].as_f64(), Some(max));
    assert_eq!(json["find_max"]["p99_bound_ms"], 60.0);
    assert!(
        json["steps"][0]["result"]["latency_ms"]["p99"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_makes_client_saturated_errors_not_late_sends() {
    // Two connections, 200 ms per request: each carries at most 5 req/s, so at
    // 50 req/s most requests find no free connection.
    let server = TestServer::start(Behavior {
        delay: Duration::from_millis(200),
        ..Behavior::default()
    })
    .await;
    let s = load(
        &server.url(),
        &[
            "--rate",
            "50",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--max-connections",
            "2",
        ],
    )
    .await;
    let st = &s.stages[0];
    let saturated = st.errors["client_saturated"];
    assert_eq!(st.responses + saturated, 50, "{st:?}");
    assert!(saturated >= 30, "{st:?}");
    assert!(st.responses >= 4, "{st:?}");
    assert!(s.connections_opened <= 2);
    // Nothing was queued behind a busy connection: sent requests took one
    // service time, not several.
    assert!(st.latency_ms.max < 600.0, "{:?}", st.latency_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_counted_and_the_run_stops_by_itself() {
    let server = TestServer::start(Behavior {
        delay: Duration::from_secs(30),
        ..Behavior::default()
    })
    .await;
    let started = Instant::now();
    let s = load(
        &server.url(),
        &[
            "--rate",
            "20",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--timeout-ms",
            "100",
        ],
    )
    .await;
    let st = &s.stages[0];
    assert_eq!((st.responses, st.errors["timeout"]), (0, 10));
    assert!(
        st.latency_ms.p50 >= 100.0 && st.latency_ms.p50 < 400.0,
        "{:?}",
        st.latency_ms
    );
    assert_eq!(s.abandoned, 0);
    // 0.5 s of load + 100 ms timeout, far from the server's 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_connect_errors() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: nothing listens there now
    let url = format!("http://127.0.0.1:{port}");
    let s = load(
        &url,
        &["--rate", "40", "--duration", "0.25", "--warmup", "0"],
    )
    .await;
    assert_eq!(
        (s.stages[0].responses, s.stages[0].errors["connect"]),
        (0, 10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_a_report_and_writes_the_summary() {
    let server = TestServer::start(Behavior::default()).await;
    let out = std::env::temp_dir().join(format!("cascade-load-test-{}.json", std::process::id()));
    let url = server.url();
    let out_arg = out.to_str().unwrap().to_string();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cascade-load"))
            .args(["--target", &url, "--scenario", "infer", "--batch", "4"])
            .args([
                "--ramp",
                "20,40",
                "--duration",
                "0.5",
                "--warmup",
                "0",
                "--out",
                &out_arg,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for needle in [
        "stage 1/2: offered 20.0 req/s",
        "stage 2/2: offered 40.0 req/s",
        "total:",
        "p99.9",
        "status    200=30",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    std::fs::remove_file(&out).ok();
    assert_eq!(json["stages"][0]["responses"], 10);
    assert_eq!(json["stages"][1]["responses"], 20);
    assert_eq!(json["total"]["status"]["200"], 30);
    assert_eq!(json["scenario_params"]["batch"], 4);
    assert!(json["total"]["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_binary_refuses_a_non_loopback_target() {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_cascade-load"))
        .args([
            "--target",
            "http://192.0.2.10:8080",
            "--scenario",
            "infer",
            "--duration",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}
