//! The open-loop schedule: when each request is due, decided before the run.
//!
//! Request `i` of a phase is due at `phase.start + i / rate`, whatever happened
//! to the requests before it. Nothing in here looks at responses; that is the
//! whole point (a closed-loop client waits for answers and so slows down
//! exactly when the server does, hiding the queue it would have seen).

use std::time::Duration;

/// One stretch of constant arrival rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// `None` for the warm-up (sent, not recorded), else the stage index.
    pub stage: Option<usize>,
    /// Offered load, requests per second.
    pub rate: f64,
    /// Offset of the phase from the start of the run.
    pub start: Duration,
    pub duration: Duration,
}

impl Phase {
    /// How many requests the phase schedules: `floor(rate * duration)`.
    pub fn count(&self) -> u64 {
        // The epsilon keeps e.g. 0.1 s x 30 req/s at 3, not 2.999.. -> 2.
        (self.rate * self.duration.as_secs_f64() + 1e-9).floor() as u64
    }

    /// When request `i` of the phase is due, as an offset from the run start.
    /// Computed from `i` (never by adding up intervals), so it cannot drift.
    pub fn due(&self, i: u64) -> Duration {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    pub fn end(&self) -> Duration {
        self.start + self.duration
    }
}

/// The whole run: an optional warm-up at the first rate, then one stage per rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub phases: Vec<Phase>,
}

impl Plan {
    pub fn new(rates: &[f64], duration: Duration, warmup: Duration) -> Plan {
        let mut phases = Vec::with_capacity(rates.len() + 1);
        let mut start = Duration::ZERO;
        if !warmup.is_zero() {
            if let Some(&rate) = rates.first() {
                phases.push(Phase {
                    stage: None,
                    rate,
                    start,
                    duration: warmup,
                });
                start += warmup;
            }
        }
        for (i, &rate) in rates.iter().enumerate() {
            phases.push(Phase {
                stage: Some(i),
                rate,
                start,
                duration,
            });
            start += duration;
        }
        Plan { phases }
    }

    /// The recorded stages (warm-up excluded).
    pub fn stages(&self) -> impl Iterator<Item = &Phase> {
        self.phases.iter().filter(|p| p.stage.is_some())
    }

    /// When the last phase ends.
    pub fn length(&self) -> Duration {
        self.phases.last().map_or(Duration::ZERO, Phase::end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn request_i_is_due_at_i_over_rate() {
        let p = Phase {
            stage: Some(0),
            rate: 200.0,
            start: Duration::ZERO,
            duration: Duration::from_secs(10),
        };
        assert_eq!(p.count(), 2000);
        assert_eq!(p.due(0), Duration::ZERO);
        assert_eq!(p.due(1), ms(5));
        assert_eq!(p.due(1999), ms(9995));
        // No drift: the 1,000,000th request of a long run is still exactly on time.
        assert_eq!(p.due(1_000_000), Duration::from_secs(5000));
        // Strictly increasing, evenly spaced.
        for i in 1..2000 {
            let gap = p.due(i) - p.due(i - 1);
            assert!(
                gap.abs_diff(ms(5)) < Duration::from_nanos(10),
                "{i}: {gap:?}"
            );
        }
    }

    #[test]
    fn fractional_rates_and_short_phases() {
        let p = Phase {
            stage: Some(0),
            rate: 30.0,
            start: ms(100),
            duration: ms(100),
        };
        assert_eq!(p.count(), 3);
        assert!(p.due(2).abs_diff(Duration::from_nanos(166_666_667)) < Duration::from_nanos(2));
        let slow = Phase {
            stage: Some(0),
            rate: 0.5,
            start: Duration::ZERO,
            duration: Duration::from_secs(3),
        };
        assert_eq!(slow.count(), 1);
        assert_eq!(slow.due(1), Duration::from_secs(2));
    }

    #[test]
    fn plan_lays_stages_back_to_back_after_the_warmup() {
        let plan = Plan::new(
            &[100.0, 200.0, 400.0],
            Duration::from_secs(10),
            Duration::from_secs(2),
        );
        let starts: Vec<_> = plan
            .phases
            .iter()
            .map(|p| (p.stage, p.rate, p.start))
            .collect();
        assert_eq!(
            starts,
            vec![
                (None, 100.0, Duration::ZERO),
                (Some(0), 100.0, Duration::from_secs(2)),
                (Some(1), 200.0, Duration::from_secs(12)),
                (Some(2), 400.0, Duration::from_secs(22)),
            ]
        );
        assert_eq!(plan.length(), Duration::from_secs(32));
        assert_eq!(plan.stages().count(), 3);
        assert_eq!(plan.phases[2].due(3), Duration::from_secs(12) + ms(15));

        let no_warmup = Plan::new(&[50.0], Duration::from_secs(1), Duration::ZERO);
        assert_eq!(no_warmup.phases.len(), 1);
        assert_eq!(no_warmup.phases[0].start, Duration::ZERO);
    }
}
