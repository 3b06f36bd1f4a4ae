//! What one stage measured: a latency histogram, counts, and their summary.
//!
//! Latency is always "scheduled send time -> response complete", in
//! microseconds. The histogram holds every request that got an HTTP response
//! (any status) and every request that timed out (recorded at the moment it
//! was abandoned, a lower bound of its true latency). Requests that were never
//! answered for another reason (connect failure, connection cap) are counted
//! by error kind only.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Why a request got no HTTP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No response before `scheduled + --timeout-ms`.
    Timeout,
    /// The TCP connection (or HTTP handshake) could not be made.
    Connect,
    /// Every connection allowed by `--max-connections` was busy: the request
    /// was not sent at all (rather than being sent late, which would hide it).
    ClientSaturated,
    /// The connection failed while the request or response was in flight.
    Io,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 4] = [
        ErrorKind::Timeout,
        ErrorKind::Connect,
        ErrorKind::ClientSaturated,
        ErrorKind::Io,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::ClientSaturated => "client_saturated",
            ErrorKind::Io => "io",
        }
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    Error(ErrorKind),
}

/// Histogram range: 1 µs to 1 hour at 3 significant digits (0.1 % resolution).
const HIST_MAX_US: u64 = 3_600_000_000;

/// Raw measurements of one stage, filled in by the request tasks.
#[derive(Debug, Clone)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<ErrorKind, u64>,
    /// Requests handed to the transport (for a healthy generator: all scheduled).
    sent: u64,
    /// Requests by scenario kind ("known", "cold", "repeat", "infer", ...).
    kinds: BTreeMap<&'static str, u64>,
    /// How late the generator itself dispatched requests: if this grows, the
    /// generator (not the server) is the bottleneck.
    lag_us: Histogram<u64>,
    /// Offset of the last completion from the run start, for the achieved rate.
    last_done: Option<Duration>,
}

impl Default for Recorder {
    fn default() -> Self {
        let hist =
            || Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static bounds are valid");
        Recorder {
            latency_us: hist(),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            sent: 0,
            kinds: BTreeMap::new(),
            lag_us: hist(),
            last_done: None,
        }
    }
}

impl Recorder {
    pub fn record_sent(&mut self, kind: &'static str, lag: Duration) {
        self.sent += 1;
        *self.kinds.entry(kind).or_default() += 1;
        self.lag_us.saturating_record(micros(lag));
    }

    /// `latency` is measured from the scheduled send time; `done` is the
    /// completion's offset from the run start.
    pub fn record_outcome(&mut self, outcome: Outcome, latency: Duration, done: Duration) {
        match outcome {
            Outcome::Status(code) => {
                *self.statuses.entry(code).or_default() += 1;
                self.latency_us.saturating_record(micros(latency));
                self.last_done = Some(self.last_done.map_or(done, |d| d.max(done)));
            }
            Outcome::Error(kind) => {
                *self.errors.entry(kind).or_default() += 1;
                if kind == ErrorKind::Timeout {
                    self.latency_us.saturating_record(micros(latency));
                }
            }
        }
    }

    /// Adds another stage's measurements (for the run total).
    pub fn merge(&mut self, other: &Recorder) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.lag_us.add(&other.lag_us).expect("same bounds");
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_default() += v;
        }
        for (k, v) in &other.kinds {
            *self.kinds.entry(k).or_default() += v;
        }
        self.sent += other.sent;
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Summarises the stage that ran at `offered_rps` from `start` for `duration`
    /// and scheduled `scheduled` requests.
    pub fn summarize(
        &self,
        offered_rps: f64,
        scheduled: u64,
        start: Duration,
        duration: Duration,
    ) -> StageSummary {
        let responses: u64 = self.statuses.values().sum();
        let ok: u64 = self
            .statuses
            .iter()
            .filter(|(code, _)| (200..300).contains(*code))
            .map(|(_, n)| n)
            .sum();
        // Answers that trickle in after the stage's end stretch its window, so a
        // server that falls behind cannot look like it kept up.
        let window = self
            .last_done
            .map_or(duration, |d| d.saturating_sub(start).max(duration))
            .as_secs_f64();
        let rate = |n: u64| if window > 0.0 { n as f64 / window } else { 0.0 };
        let mut errors: BTreeMap<&'static str, u64> =
            ErrorKind::ALL.iter().map(|k| (k.name(), 0)).collect();
        for (k, v) in &self.errors {
            errors.insert(k.name(), *v);
        }
        StageSummary {
            offered_rps,
            duration_s: duration.as_secs_f64(),
            scheduled,
            sent: self.sent,
            responses,
            achieved_rps: rate(responses),
            ok_rps: rate(ok),
            status: self
                .statuses
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            errors,
            kinds: self
                .kinds
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            latency_ms: Percentiles::of(&self.latency_us),
            send_lag_ms: Percentiles::of(&self.lag_us),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(hist: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        if hist.is_empty() {
            return Percentiles {
                count: 0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                max: 0.0,
            };
        }
        Percentiles {
            count: hist.len(),
            mean: hist.mean() / 1000.0,
            p50: ms(hist.value_at_quantile(0.50)),
            p90: ms(hist.value_at_quantile(0.90)),
            p99: ms(hist.value_at_quantile(0.99)),
            p99_9: ms(hist.value_at_quantile(0.999)),
            max: ms(hist.max()),
        }
    }
}

/// One stage's results, as printed and as written to the JSON summary.
#[derive(Debug, Clone, Serialize)]
pub struct StageSummary {
    pub offered_rps: f64,
    pub duration_s: f64,
    /// Requests the schedule called for.
    pub scheduled: u64,
    /// Requests the generator dispatched (equal to `scheduled` unless stopped early).
    pub sent: u64,
    /// Requests that got an HTTP response, any status.
    pub responses: u64,
    /// `responses` per second over the stage (stretched to its last response).
    pub achieved_rps: f64,
    /// Same, 2xx responses only.
    pub ok_rps: f64,
    /// Responses by HTTP status code.
    pub status: BTreeMap<String, u64>,
    /// Requests without a response, by error kind (every kind listed, 0 included).
    pub errors: BTreeMap<&'static str, u64>,
    /// Requests by scenario kind.
    pub kinds: BTreeMap<String, u64>,
    /// From scheduled send time to response complete (responses and timeouts).
    pub latency_ms: Percentiles,
    /// How late the generator dispatched each request after its scheduled time.
    pub send_lag_ms: Percentiles,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: u64) -> Duration {
        Duration::from_micros(v)
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut r = Recorder::default();
        // 1..=1000 ms, one each: p50 = 500 ms, p90 = 900 ms, p99 = 990 ms, max = 1 s.
        for ms in 1..=1000u64 {
            r.record_sent("infer", Duration::ZERO);
            r.record_outcome(Outcome::Status(200), us(ms * 1000), Duration::from_secs(1));
        }
        let s = r.summarize(1000.0, 1000, Duration::ZERO, Duration::from_secs(1));
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-9;
        assert!(close(s.latency_ms.p50, 500.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.p90, 900.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.p99, 990.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.p99_9, 999.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.max, 1000.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.mean, 500.5), "{:?}", s.latency_ms);
        assert_eq!(s.latency_ms.count, 1000);
        assert_eq!(s.responses, 1000);
        assert!((s.achieved_rps - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn a_few_slow_requests_show_in_the_tail_only() {
        let mut r = Recorder::default();
        for _ in 0..990 {
            r.record_outcome(Outcome::Status(200), us(1_000), Duration::ZERO);
        }
        for _ in 0..10 {
            r.record_outcome(Outcome::Status(200), us(300_000), Duration::ZERO);
        }
        let p = r
            .summarize(1.0, 1000, Duration::ZERO, Duration::from_secs(1))
            .latency_ms;
        assert!(
            (p.p50 - 1.0).abs() < 0.01 && (p.p90 - 1.0).abs() < 0.01,
            "{p:?}"
        );
        assert!((p.p99 - 1.0).abs() < 0.01, "{p:?}"); // exactly 1 % slow: p99 is the last fast one
        assert!((p.p99_9 - 300.0).abs() < 0.5, "{p:?}");
        assert!((p.max - 300.0).abs() < 0.5, "{p:?}");
    }

    #[test]
    fn counts_statuses_errors_and_rates() {
        let mut r = Recorder::default();
        let start = Duration::from_secs(5);
        for i in 0..10 {
            r.record_sent(if i % 2 == 0 { "known" } else { "cold" }, us(100));
        }
        for _ in 0..6 {
            r.record_outcome(
                Outcome::Status(200),
                us(2_000),
                start + Duration::from_millis(500),
            );
        }
        r.record_outcome(
            Outcome::Status(503),
            us(2_000),
            start + Duration::from_secs(4),
        );
        r.record_outcome(Outcome::Error(ErrorKind::Timeout), us(50_000), start);
        r.record_outcome(Outcome::Error(ErrorKind::ClientSaturated), us(0), start);
        r.record_outcome(Outcome::Error(ErrorKind::Connect), us(0), start);
        let s = r.summarize(5.0, 10, start, Duration::from_secs(2));
        assert_eq!(s.sent, 10);
        assert_eq!(s.responses, 7);
        assert_eq!(s.status.get("200"), Some(&6));
        assert_eq!(s.status.get("503"), Some(&1));
        assert_eq!(s.errors["timeout"], 1);
        assert_eq!(s.errors["client_saturated"], 1);
        assert_eq!(s.errors["connect"], 1);
        assert_eq!(s.errors["io"], 0);
        assert_eq!(s.kinds["known"], 5);
        // 7 responses + the timeout are latencies; the last response came 4 s in,
        // which stretches the 2 s stage window to 4 s.
        assert_eq!(s.latency_ms.count, 8);
        assert!(
            (s.achieved_rps - 7.0 / 4.0).abs() < 1e-9,
            "{}",
            s.achieved_rps
        );
        assert!((s.ok_rps - 6.0 / 4.0).abs() < 1e-9, "{}", s.ok_rps);
        assert!((s.send_lag_ms.max - 0.1).abs() < 1e-3);

        let mut total = Recorder::default();
        total.merge(&r);
        total.merge(&r);
        let t = total.summarize(5.0, 20, start, Duration::from_secs(4));
        assert_eq!((t.sent, t.responses, t.errors["timeout"]), (20, 14, 2));
    }

    #[test]
    fn empty_stage_summarises_to_zeros() {
        let s = Recorder::default().summarize(10.0, 0, Duration::ZERO, Duration::from_secs(1));
        assert_eq!(s.latency_ms.count, 0);
        assert_eq!(s.latency_ms.p99, 0.0);
        assert_eq!(s.achieved_rps, 0.0);
    }
}
