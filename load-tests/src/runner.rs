//! The open loop: dispatch each request at its scheduled time, never waiting
//! for earlier ones, and measure it from that scheduled time.
//!
//! One task per request: the dispatcher sleeps until request `i` is due,
//! spawns it and moves on. A request's latency is `completion - due`, so time
//! a request spends waiting because the server (or the generator itself) is
//! behind is counted, not hidden ("coordinated omission"). Each request gets
//! `due + timeout` to finish; the run as a whole ends by
//! `plan length + timeout + grace`, whatever the server does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::client::Transport;
use crate::scenario::Source;
use crate::schedule::Plan;
use crate::stats::{ErrorKind, Outcome, Recorder, StageSummary};

/// How the dispatcher waits for a request's due time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// `tokio::time::sleep_until` only. Tokio's timer ticks in whole
    /// milliseconds and rounds deadlines up, so requests leave ~1 ms late on
    /// average and every measured latency carries that ~1 ms. Exact under a
    /// paused test clock, which is what it is for.
    Coarse,
    /// Tokio's timer to within 2 ms of the due time, then the OS timer
    /// (`nanosleep`, tens of µs of slack) on a blocking thread for the rest.
    /// No busy-waiting, so the server under test keeps its CPU.
    Precise,
}

impl Pacing {
    async fn wait_until(self, due: Instant) {
        match self {
            Pacing::Coarse => sleep_until(due).await,
            Pacing::Precise => {
                // Never hand tokio a deadline that is near or already past:
                // it rounds it up to its next millisecond tick.
                if let Some(coarse) = due.checked_sub(Duration::from_millis(2)) {
                    if coarse > Instant::now() {
                        sleep_until(coarse).await;
                    }
                }
                let rest = due.saturating_duration_since(Instant::now());
                if !rest.is_zero() {
                    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
                }
            }
        }
    }
}

/// What a run measured: one summary per stage and their total.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub stages: Vec<StageSummary>,
    pub total: StageSummary,
    /// Requests still unfinished when the run's hard end came (normally 0:
    /// each request has its own timeout well before that).
    pub abandoned: usize,
}

pub async fn run<S: Source, T: Transport>(
    plan: &Plan,
    source: &mut S,
    transport: Arc<T>,
    timeout: Duration,
    grace: Duration,
    pacing: Pacing,
) -> RunResult {
    let n_stages = plan.stages().count();
    // One recorder per stage, shared with the request tasks; each lock is held
    // for a histogram update only.
    let recorders: Arc<Vec<Mutex<Recorder>>> =
        Arc::new((0..n_stages).map(|_| Mutex::default()).collect());
    let mut tasks = JoinSet::new();
    let t0 = Instant::now();

    for phase in &plan.phases {
        for i in 0..phase.count() {
            // Build the request before its time so sending costs nothing.
            let req = source.next_request();
            let due = t0 + phase.due(i);
            pacing.wait_until(due).await;
            let stage = phase.stage;
            if let Some(s) = stage {
                let lag = Instant::now().saturating_duration_since(due);
                recorders[s]
                    .lock()
                    .expect("recorder lock")
                    .record_sent(req.kind, lag);
            }
            let transport = transport.clone();
            let recorders = recorders.clone();
            tasks.spawn(async move {
                let outcome = timeout_at(due + timeout, transport.send(req))
                    .await
                    .unwrap_or(Outcome::Error(ErrorKind::Timeout));
                let now = Instant::now();
                if let Some(s) = stage {
                    let mut rec = recorders[s].lock().expect("recorder lock");
                    rec.record_outcome(outcome, now - due, now - t0);
                }
            });
            // Reap finished tasks so the set stays as small as what is in flight.
            while tasks.try_join_next().is_some() {}
        }
    }

    let hard_end = t0 + plan.length() + timeout + grace;
    let _ = timeout_at(hard_end, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let abandoned = tasks.len();
    tasks.abort_all();

    let mut total = Recorder::default();
    let mut stages = Vec::with_capacity(n_stages);
    let (mut scheduled, mut stage_time) = (0, Duration::ZERO);
    for phase in plan.stages() {
        let rec = recorders[phase.stage.expect("stages have an index")]
            .lock()
            .expect("recorder lock");
        stages.push(rec.summarize(phase.rate, phase.count(), phase.start, phase.duration));
        total.merge(&rec);
        scheduled += phase.count();
        stage_time += phase.duration;
    }
    let first_start = plan.stages().next().map_or(Duration::ZERO, |p| p.start);
    let offered = if stage_time.is_zero() {
        0.0
    } else {
        scheduled as f64 / stage_time.as_secs_f64()
    };
    RunResult {
        total: total.summarize(offered, scheduled, first_start, stage_time),
        stages,
        abandoned,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::scenario::Prepared;

    /// Counts requests, hands out ids, and names every fourth one "fourth".
    struct Numbered(u64);

    impl Source for Numbered {
        fn next_request(&mut self) -> Prepared {
            self.0 += 1;
            Prepared {
                path: Arc::from("/"),
                body: Bytes::from(self.0.to_string()),
                kind: if self.0.is_multiple_of(4) {
                    "fourth"
                } else {
                    "other"
                },
            }
        }
    }

    /// A server that never answers, recording when each request reached it.
    #[derive(Default)]
    struct BlackHole {
        arrivals: Mutex<Vec<(u64, Instant)>>,
    }

    impl Transport for BlackHole {
        async fn send(&self, req: Prepared) -> Outcome {
            let n: u64 = std::str::from_utf8(&req.body).unwrap().parse().unwrap();
            self.arrivals.lock().unwrap().push((n, Instant::now()));
            std::future::pending().await
        }
    }

    /// Answers after a fixed delay, except during a stall window that holds
    /// every request until the window ends.
    struct Stalling {
        t0: Instant,
        service: Duration,
        stall: (Duration, Duration),
        served: AtomicU64,
    }

    impl Transport for Stalling {
        async fn send(&self, _req: Prepared) -> Outcome {
            let now = Instant::now() - self.t0;
            if now >= self.stall.0 && now < self.stall.1 {
                sleep_until(self.t0 + self.stall.1).await;
            }
            tokio::time::sleep(self.service).await;
            self.served.fetch_add(1, Ordering::Relaxed);
            Outcome::Status(200)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn dispatches_at_i_over_rate_even_when_nothing_ever_answers() {
        let plan = Plan::new(&[50.0], Duration::from_secs(2), Duration::from_millis(200));
        let hole = Arc::new(BlackHole::default());
        let start = Instant::now();
        let result = run(
            &plan,
            &mut Numbered(0),
            hole.clone(),
            Duration::from_millis(300),
            Duration::from_secs(1),
            Pacing::Coarse,
        )
        .await;

        // 10 warm-up + 100 recorded requests, each exactly on its slot of 20 ms.
        let arrivals = hole.arrivals.lock().unwrap().clone();
        assert_eq!(arrivals.len(), 110);
        for (n, at) in &arrivals {
            assert_eq!(
                *at - start,
                Duration::from_millis(20) * (*n as u32 - 1),
                "request {n}"
            );
        }
        // Every recorded request timed out, measured from its scheduled time.
        let s = &result.stages[0];
        assert_eq!((s.scheduled, s.sent, s.responses), (100, 100, 0));
        assert_eq!(s.errors["timeout"], 100);
        assert!((s.latency_ms.p50 - 300.0).abs() < 0.5, "{:?}", s.latency_ms);
        assert_eq!(
            s.send_lag_ms.max, 0.001,
            "paused clock: no lag (1 µs is the histogram floor)"
        );
        assert_eq!((s.kinds["fourth"], s.kinds["other"]), (25, 75));
        // ... and the run stopped by itself: last due 2.18 s, + 300 ms timeout.
        assert!(Instant::now() - start <= Duration::from_millis(2500));
        assert_eq!(result.abandoned, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_shows_up_in_the_tail_not_hidden() {
        // 100 req/s for 2 s, 1 ms service time; the server stalls from 1.0 s to 1.3 s.
        let t0 = Instant::now();
        let server = Arc::new(Stalling {
            t0,
            service: Duration::from_millis(1),
            stall: (Duration::from_millis(1000), Duration::from_millis(1300)),
            served: AtomicU64::new(0),
        });
        let plan = Plan::new(&[100.0], Duration::from_secs(2), Duration::ZERO);
        let result = run(
            &plan,
            &mut Numbered(0),
            server.clone(),
            Duration::from_secs(1),
            Duration::from_secs(1),
            Pacing::Coarse,
        )
        .await;
        let s = &result.stages[0];
        assert_eq!((s.responses, s.status["200"]), (200, 200));
        // 30 of 200 requests arrive during the stall and wait 1..300 ms for it:
        // p50 stays at the service time, p90 and above reflect the stall.
        assert!((s.latency_ms.p50 - 1.0).abs() < 0.01, "{:?}", s.latency_ms);
        assert!(s.latency_ms.p90 > 100.0, "{:?}", s.latency_ms);
        assert!((s.latency_ms.p99 - 281.0).abs() < 1.0, "{:?}", s.latency_ms);
        assert!((s.latency_ms.max - 301.0).abs() < 1.0, "{:?}", s.latency_ms);
        assert!((s.achieved_rps - 100.0).abs() < 0.5, "{}", s.achieved_rps);
        assert_eq!(server.served.load(Ordering::Relaxed), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn ramp_reports_each_stage_and_a_total() {
        let server = Arc::new(Stalling {
            t0: Instant::now(),
            service: Duration::from_millis(2),
            stall: (Duration::ZERO, Duration::ZERO),
            served: AtomicU64::new(0),
        });
        let plan = Plan::new(
            &[10.0, 20.0, 40.0],
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let result = run(
            &plan,
            &mut Numbered(0),
            server.clone(),
            Duration::from_secs(1),
            Duration::ZERO,
            Pacing::Coarse,
        )
        .await;
        let counts: Vec<_> = result
            .stages
            .iter()
            .map(|s| (s.offered_rps, s.responses))
            .collect();
        assert_eq!(counts, vec![(10.0, 10), (20.0, 20), (40.0, 40)]);
        assert_eq!((result.total.scheduled, result.total.responses), (70, 70));
        assert!((result.total.offered_rps - 70.0 / 3.0).abs() < 1e-9);
        assert_eq!(
            server.served.load(Ordering::Relaxed),
            80,
            "warm-up is sent but not recorded"
        );
    }
}
