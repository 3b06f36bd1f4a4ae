//! `--find-max`: the highest offered rate the server *holds*.
//!
//! A search over open-loop steps. Each step is a short run at one rate
//! (`--warmup` unrecorded, then `--duration` recorded), judged by [`judge`]:
//! it holds when every request got a 2xx answer, the server kept up (achieved
//! within `tolerance` of what was scheduled) and p99 stayed within the bound.
//! [`Search`] decides the next rate: multiply by `step_factor` while steps
//! hold (divide while they don't, if the start rate already fails), then
//! bisect between the highest rate held and the lowest missed. The step count
//! is capped, so the search ends by itself.
//!
//! Nothing here sends requests; `lib.rs` runs the steps.

use serde::Serialize;

use crate::report::Header;
use crate::stats::StageSummary;

/// What a running search reports, as it goes.
pub enum Progress<'a> {
    /// Before the first step.
    Start(&'a Header, &'a FindMax),
    /// A step has ended.
    Step(&'a Step),
}

/// Settings of one search, validated by `cli`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FindMax {
    /// A step holds only if its p99 (from scheduled send time) is at most this.
    pub p99_bound_ms: f64,
    /// Rate of the first step (`--rate`).
    pub start_rps: f64,
    /// Each step up multiplies the rate by this (> 1).
    pub step_factor: f64,
    /// Bisection steps once a held and a missed rate bracket the maximum.
    pub bisect_steps: u32,
    /// Most steps in all; the search stops there whatever it has found.
    pub max_steps: u32,
    /// A step holds only if achieved >= (1 - tolerance) x scheduled / duration.
    pub tolerance: f64,
    /// Pause after a step that did not hold, so the backlog it left on the
    /// server drains before the next step's warm-up.
    pub cooldown_s: f64,
}

/// Why a step was run at its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// The start rate, or the last held rate times the factor.
    Up,
    /// The start rate did not hold: the last missed rate divided by the factor.
    Down,
    /// Midway between the highest rate held and the lowest missed.
    Bisect,
}

impl StepKind {
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Up => "up",
            StepKind::Down => "down",
            StepKind::Bisect => "bisect",
        }
    }
}

/// The step-by-step search for the highest rate held. Feed it each step's
/// verdict with [`Search::record`]; [`Search::next_step`] gives the next rate, or
/// `None` once the search is over (then [`Search::stopped`] says why).
#[derive(Debug, Clone)]
pub struct Search {
    start: f64,
    factor: f64,
    bisect_left: u32,
    steps_left: u32,
    /// Rates outside `[min_rate, max_rate]` are never tried.
    min_rate: f64,
    max_rate: f64,
    /// Highest rate held so far.
    held: Option<f64>,
    /// Lowest rate missed so far (always above `held`).
    missed: Option<f64>,
    /// The rate handed out by `next_step` and not yet recorded.
    pending: Option<f64>,
    started: bool,
    stopped: Option<&'static str>,
}

impl Search {
    pub fn new(settings: &FindMax, min_rate: f64, max_rate: f64) -> Search {
        Search {
            start: settings.start_rps.clamp(min_rate, max_rate),
            factor: settings.step_factor,
            bisect_left: settings.bisect_steps,
            steps_left: settings.max_steps,
            min_rate,
            max_rate,
            held: None,
            missed: None,
            pending: None,
            started: false,
            stopped: None,
        }
    }

    /// The next rate to try and why, or `None` when the search is over.
    pub fn next_step(&mut self) -> Option<(f64, StepKind)> {
        assert!(self.pending.is_none(), "record the last step first");
        if self.stopped.is_some() {
            return None;
        }
        if self.steps_left == 0 {
            return self.stop("max steps reached");
        }
        let step = if !self.started {
            self.started = true;
            (self.start, StepKind::Up)
        } else {
            match (self.held, self.missed) {
                (Some(held), None) => {
                    if held >= self.max_rate {
                        return self.stop("the highest rate allowed held");
                    }
                    ((held * self.factor).min(self.max_rate), StepKind::Up)
                }
                (None, Some(missed)) => {
                    let rate = missed / self.factor;
                    if rate < self.min_rate {
                        return self.stop("nothing held down to the lowest rate allowed");
                    }
                    (rate, StepKind::Down)
                }
                (Some(held), Some(missed)) => {
                    // A bracket narrower than 1 % is as good as found.
                    if self.bisect_left == 0 || missed - held <= held * 0.01 {
                        return self.stop("bracketed");
                    }
                    self.bisect_left -= 1;
                    ((held + missed) / 2.0, StepKind::Bisect)
                }
                (None, None) => unreachable!("a step was recorded"),
            }
        };
        self.steps_left -= 1;
        self.pending = Some(step.0);
        Some(step)
    }

    /// The verdict of the step `next_step` last handed out.
    pub fn record(&mut self, held: bool) {
        let rate = self.pending.take().expect("a step to record");
        if held {
            self.held = Some(self.held.map_or(rate, |h| h.max(rate)));
        } else {
            self.missed = Some(self.missed.map_or(rate, |m| m.min(rate)));
        }
    }

    pub fn max_held(&self) -> Option<f64> {
        self.held
    }

    pub fn min_missed(&self) -> Option<f64> {
        self.missed
    }

    /// Why the search ended (`None` while it runs).
    pub fn stopped(&self) -> Option<&'static str> {
        self.stopped
    }

    fn stop(&mut self, why: &'static str) -> Option<(f64, StepKind)> {
        self.stopped = Some(why);
        None
    }
}

/// Why a step did not hold; empty if it held.
pub fn judge(s: &StageSummary, p99_bound_ms: f64, tolerance: f64) -> Vec<String> {
    let mut reasons = Vec::new();
    if s.scheduled == 0 {
        reasons.push("no request scheduled (rate x duration < 1)".to_string());
        return reasons;
    }
    let errors: Vec<String> = s
        .errors
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if !errors.is_empty() {
        reasons.push(format!("errors {}", errors.join(" ")));
    }
    let non_2xx: Vec<String> = s
        .status
        .iter()
        .filter(|(code, _)| !code.starts_with('2'))
        .map(|(code, n)| format!("{code}={n}"))
        .collect();
    if !non_2xx.is_empty() {
        reasons.push(format!("status {}", non_2xx.join(" ")));
    }
    if s.latency_ms.p99 > p99_bound_ms {
        reasons.push(format!(
            "p99 {:.3} ms > {p99_bound_ms} ms",
            s.latency_ms.p99
        ));
    }
    // Against what was actually scheduled (floor(rate x duration)), so a rate
    // that does not divide the duration evenly is not held against the server.
    let scheduled_rps = s.scheduled as f64 / s.duration_s;
    if s.achieved_rps < scheduled_rps * (1.0 - tolerance) {
        reasons.push(format!(
            "achieved {:.1} < {:.0} % of {:.1} req/s",
            s.achieved_rps,
            (1.0 - tolerance) * 100.0,
            scheduled_rps
        ));
    }
    reasons
}

/// One step as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// 1-based.
    pub step: u32,
    pub kind: StepKind,
    pub held: bool,
    /// Why it did not hold (empty when it held).
    pub reasons: Vec<String>,
    /// Requests unfinished at the step's hard stop (normally 0).
    pub abandoned: usize,
    pub result: StageSummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(start: f64, factor: f64, bisect: u32, max_steps: u32) -> FindMax {
        FindMax {
            p99_bound_ms: 20.0,
            start_rps: start,
            step_factor: factor,
            bisect_steps: bisect,
            max_steps,
            tolerance: 0.05,
            cooldown_s: 0.0,
        }
    }

    /// Runs a search against a server that holds exactly the rates <= `capacity`.
    fn trace(search: &mut Search, capacity: f64) -> Vec<(f64, StepKind)> {
        let mut steps = Vec::new();
        while let Some((rate, kind)) = search.next_step() {
            steps.push((rate, kind));
            search.record(rate <= capacity);
        }
        steps
    }

    #[test]
    fn steps_up_then_bisects() {
        let mut s = Search::new(&settings(100.0, 1.5, 2, 12), 1.0, 100_000.0);
        let steps = trace(&mut s, 300.0);
        use StepKind::*;
        assert_eq!(
            steps,
            vec![
                (100.0, Up),
                (150.0, Up),
                (225.0, Up),
                (337.5, Up),
                (281.25, Bisect),
                (309.375, Bisect),
            ]
        );
        assert_eq!(s.max_held(), Some(281.25));
        assert_eq!(s.min_missed(), Some(309.375));
        assert_eq!(s.stopped(), Some("bracketed"));
    }

    #[test]
    fn steps_down_when_the_start_rate_fails() {
        let mut s = Search::new(&settings(1000.0, 2.0, 1, 12), 1.0, 100_000.0);
        let steps = trace(&mut s, 300.0);
        use StepKind::*;
        assert_eq!(
            steps,
            vec![(1000.0, Up), (500.0, Down), (250.0, Down), (375.0, Bisect)]
        );
        assert_eq!((s.max_held(), s.min_missed()), (Some(250.0), Some(375.0)));
    }

    #[test]
    fn stops_at_max_steps_and_at_the_rate_limits() {
        let mut s = Search::new(&settings(100.0, 2.0, 2, 3), 1.0, 100_000.0);
        assert_eq!(trace(&mut s, f64::INFINITY).len(), 3);
        assert_eq!(
            (s.max_held(), s.stopped()),
            (Some(400.0), Some("max steps reached"))
        );

        let mut s = Search::new(&settings(100.0, 2.0, 2, 50), 1.0, 500.0);
        let rates: Vec<f64> = trace(&mut s, f64::INFINITY).iter().map(|s| s.0).collect();
        assert_eq!(rates, vec![100.0, 200.0, 400.0, 500.0]);
        assert_eq!(s.stopped(), Some("the highest rate allowed held"));

        let mut s = Search::new(&settings(100.0, 2.0, 2, 50), 20.0, 500.0);
        let rates: Vec<f64> = trace(&mut s, 0.0).iter().map(|s| s.0).collect();
        assert_eq!(rates, vec![100.0, 50.0, 25.0]);
        assert_eq!(s.max_held(), None);
    }

    fn stage(scheduled: u64, achieved: f64, p99: f64) -> StageSummary {
        use crate::stats::{Outcome, Recorder};
        use std::time::Duration;
        let mut r = Recorder::default();
        for _ in 0..scheduled {
            r.record_sent("infer", Duration::ZERO);
            r.record_outcome(
                Outcome::Status(200),
                Duration::from_secs_f64(p99 / 1000.0),
                Duration::ZERO,
            );
        }
        let mut s = r.summarize(100.0, scheduled, Duration::ZERO, Duration::from_secs(1));
        s.achieved_rps = achieved;
        s
    }

    #[test]
    fn a_step_holds_only_when_fast_complete_and_error_free() {
        assert!(judge(&stage(100, 99.0, 5.0), 20.0, 0.05).is_empty());
        let slow = judge(&stage(100, 99.0, 25.0), 20.0, 0.05);
        assert_eq!(slow.len(), 1);
        assert!(slow[0].starts_with("p99 25.0"), "{slow:?}");
        let behind = judge(&stage(100, 90.0, 5.0), 20.0, 0.05);
        assert!(behind[0].starts_with("achieved 90.0 < 95 %"), "{behind:?}");

        let mut failing = stage(100, 99.0, 5.0);
        failing.status.insert("503".into(), 3);
        failing.errors.insert("timeout", 1);
        let reasons = judge(&failing, 20.0, 0.05);
        assert_eq!(reasons, vec!["errors timeout=1", "status 503=3"]);
        assert!(!judge(&stage(0, 0.0, 0.0), 20.0, 0.05).is_empty());
    }
}
