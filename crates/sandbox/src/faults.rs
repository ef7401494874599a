//! Drawing injected faults, request by request.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::config::Faults;

/// A fault the sandbox injected into an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// HTTP 500, plain-text body.
    Http500,
    /// Envelope status 50000, no tasks.
    Envelope50000,
    /// A successful, charged answer cut in half.
    TruncatedJson,
    /// Envelope status 40202: the request that started a storm or one of
    /// the `storm_length` after it.
    RateLimitStorm,
    /// A normal answer, delayed by `slow_delay`.
    Slow,
}

impl FaultKind {
    /// Whether the client still gets a usable, normal answer.
    pub fn answer_is_normal(self) -> bool {
        self == FaultKind::Slow
    }
}

/// Decides the fault of each well-formed request. Holds the request
/// sequence (which seeds each request's PRNG) and the storm in progress.
#[derive(Debug)]
pub(crate) struct FaultInjector {
    /// Cumulative thresholds in draw order, each clamped to 0..=1.
    thresholds: [(f64, FaultKind); 5],
    storm_length: u32,
    storm_left: AtomicU32,
    sequence: AtomicU64,
}

impl FaultInjector {
    pub(crate) fn new(faults: &Faults, storm_length: u32) -> Self {
        let p = |x: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
        let mut total = 0.0;
        let mut next = |x: f64, kind| {
            total += p(x);
            (total, kind)
        };
        let thresholds = [
            next(faults.http_500, FaultKind::Http500),
            next(faults.envelope_50000, FaultKind::Envelope50000),
            next(faults.truncated_json, FaultKind::TruncatedJson),
            next(faults.rate_limit_storm, FaultKind::RateLimitStorm),
            next(faults.slow, FaultKind::Slow),
        ];
        Self {
            thresholds,
            storm_length,
            storm_left: AtomicU32::new(0),
            sequence: AtomicU64::new(0),
        }
    }

    /// The sequence number of the next well-formed request (0, 1, 2, …).
    pub(crate) fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// The fault of one request, given its uniform draw `u` in `[0, 1)`.
    /// A storm in progress takes precedence over the draw.
    pub(crate) fn draw(&self, u: f64) -> Option<FaultKind> {
        let in_storm = self
            .storm_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if in_storm {
            return Some(FaultKind::RateLimitStorm);
        }
        let kind = self
            .thresholds
            .iter()
            .find(|(threshold, _)| u < *threshold)
            .map(|(_, kind)| *kind)?;
        if kind == FaultKind::RateLimitStorm {
            self.storm_left
                .fetch_max(self.storm_length, Ordering::AcqRel);
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_cumulative_probabilities() {
        let faults = Faults {
            http_500: 0.1,
            envelope_50000: 0.1,
            truncated_json: 0.1,
            slow: 0.1,
            ..Default::default()
        };
        let inj = FaultInjector::new(&faults, 5);
        assert_eq!(inj.draw(0.05), Some(FaultKind::Http500));
        assert_eq!(inj.draw(0.15), Some(FaultKind::Envelope50000));
        assert_eq!(inj.draw(0.25), Some(FaultKind::TruncatedJson));
        // rate_limit_storm is 0: its band is empty.
        assert_eq!(inj.draw(0.35), Some(FaultKind::Slow));
        assert_eq!(inj.draw(0.45), None);
        assert_eq!(inj.draw(0.99), None);
    }

    #[test]
    fn a_storm_covers_the_next_storm_length_requests() {
        let faults = Faults {
            rate_limit_storm: 0.5,
            ..Default::default()
        };
        let inj = FaultInjector::new(&faults, 3);
        assert_eq!(inj.draw(0.1), Some(FaultKind::RateLimitStorm));
        // The next three answer 40202 whatever their draw.
        for _ in 0..3 {
            assert_eq!(inj.draw(0.9), Some(FaultKind::RateLimitStorm));
        }
        assert_eq!(inj.draw(0.9), None);
    }

    #[test]
    fn no_faults_configured_means_none_drawn() {
        let inj = FaultInjector::new(&Faults::default(), 5);
        for i in 0..100 {
            assert_eq!(inj.draw(f64::from(i) / 100.0), None);
        }
        assert_eq!((inj.next_sequence(), inj.next_sequence()), (0, 1));
    }

    #[test]
    fn out_of_range_probabilities_are_clamped() {
        let faults = Faults {
            http_500: f64::NAN,
            truncated_json: 7.0,
            slow: -1.0,
            ..Default::default()
        };
        let inj = FaultInjector::new(&faults, 5);
        assert_eq!(inj.draw(0.0), Some(FaultKind::TruncatedJson));
        assert_eq!(inj.draw(0.999), Some(FaultKind::TruncatedJson));
    }
}
