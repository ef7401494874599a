//! What the sandbox served: counters and, on request, a log per POST.

use std::sync::Mutex;

use crate::faults::FaultKind;

/// Counters over the sandbox's lifetime. Only POST requests are counted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SandboxStats {
    /// Every POST received, refused ones included.
    pub requests: u64,
    /// Answers delivered whole whose task succeeded (20000, or 40102 "no
    /// results"); slow answers included.
    pub ok: u64,
    /// Sum in USD of the costs of the answers that carried a charge
    /// (truncated ones included: the API did the work).
    pub cost_charged: f64,
    /// 40202 answers of the rolling window (not those of an injected storm).
    pub rate_limited: u64,
    /// 40209 answers.
    pub too_many_in_flight: u64,
    /// Answers changed by an injected fault (each answer of a storm counts).
    pub injected_faults: u64,
    /// HTTP 401 answers.
    pub unauthorized: u64,
    /// Requests refused as malformed: envelope 40000, unknown path (40400)
    /// and tasks refused for an invalid field (4050x).
    pub bad_requests: u64,
    /// Requests refused for a reason of the account (40200, 40201,
    /// 40203–40207, 40210: see [`AccountRefusal`](crate::AccountRefusal)).
    pub account_refused: u64,
}

/// One POST as the sandbox answered it (kept when `keep_log` is on).
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRequest {
    /// The request path, e.g. `/v3/backlinks/summary/live` (cut at 200
    /// characters).
    pub path: String,
    /// The task's `target`, when the body could be read (cut at 200
    /// characters).
    pub target: Option<String>,
    /// The task's status code, or the envelope's when no task ran; `None`
    /// when the body was not an envelope (HTTP 500).
    pub status_code: Option<i64>,
    /// What the answer charged, in USD.
    pub cost: f64,
    /// The HTTP status of the answer (200, 401, 404 or 500).
    pub http_status: u16,
    /// The fault injected into this answer, if any.
    pub fault: Option<FaultKind>,
    /// The task as the sandbox read it, as compact JSON with sorted keys
    /// (paging fields included), when the request was processed and
    /// `keep_log` is on; `None` for refused requests. It tells two requests
    /// of the same target apart.
    pub task: Option<String>,
}

/// The counters and the log behind one lock.
#[derive(Debug)]
pub(crate) struct Recorder {
    keep_log: bool,
    inner: Mutex<(SandboxStats, Vec<LoggedRequest>)>,
}

impl Recorder {
    pub(crate) fn new(keep_log: bool) -> Self {
        Self {
            keep_log,
            inner: Mutex::new((SandboxStats::default(), Vec::new())),
        }
    }

    pub(crate) fn keeps_log(&self) -> bool {
        self.keep_log
    }

    pub(crate) fn received(&self) {
        self.lock().0.requests += 1;
    }

    /// Counts one answer to a POST.
    pub(crate) fn answered(&self, entry: LoggedRequest) {
        let mut inner = self.lock();
        let stats = &mut inner.0;
        stats.cost_charged += entry.cost;
        match entry.fault {
            Some(fault) => {
                stats.injected_faults += 1;
                if fault.answer_is_normal() && matches!(entry.status_code, Some(20000 | 40102)) {
                    stats.ok += 1;
                }
            }
            None => match (entry.http_status, entry.status_code) {
                (401, _) => stats.unauthorized += 1,
                (200, Some(20000 | 40102)) => stats.ok += 1,
                (_, Some(40202)) => stats.rate_limited += 1,
                (_, Some(40209)) => stats.too_many_in_flight += 1,
                (_, Some(40000 | 40400 | 40500..=40599)) => stats.bad_requests += 1,
                (_, Some(40200 | 40201 | 40203..=40207 | 40210)) => stats.account_refused += 1,
                _ => {}
            },
        }
        if self.keep_log {
            inner.1.push(entry);
        }
    }

    pub(crate) fn stats(&self) -> SandboxStats {
        self.lock().0
    }

    pub(crate) fn log(&self) -> Vec<LoggedRequest> {
        self.lock().1.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (SandboxStats, Vec<LoggedRequest>)> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        http_status: u16,
        status_code: Option<i64>,
        cost: f64,
        fault: Option<FaultKind>,
    ) -> LoggedRequest {
        LoggedRequest {
            path: "/v3/backlinks/summary/live".into(),
            target: Some("example.com".into()),
            status_code,
            cost,
            http_status,
            fault,
            task: None,
        }
    }

    #[test]
    fn answers_land_in_the_right_counters() {
        let r = Recorder::new(true);
        for _ in 0..10 {
            r.received();
        }
        r.answered(entry(200, Some(20000), 0.02, None));
        r.answered(entry(200, Some(40102), 0.02, None));
        r.answered(entry(401, Some(40100), 0.0, None));
        r.answered(entry(200, Some(40202), 0.0, None));
        r.answered(entry(200, Some(40209), 0.0, None));
        r.answered(entry(200, Some(40501), 0.0, None));
        r.answered(entry(200, Some(40203), 0.0, None));
        r.answered(entry(
            200,
            Some(20000),
            0.02,
            Some(FaultKind::TruncatedJson),
        ));
        r.answered(entry(
            200,
            Some(40202),
            0.0,
            Some(FaultKind::RateLimitStorm),
        ));
        r.answered(entry(200, Some(20000), 0.02, Some(FaultKind::Slow)));
        let s = r.stats();
        assert_eq!(s.requests, 10);
        assert_eq!(s.ok, 3, "20000, 40102 and the slow one");
        assert_eq!(s.unauthorized, 1);
        assert_eq!(
            s.rate_limited, 1,
            "the storm's 40202 is a fault, not the window"
        );
        assert_eq!(s.too_many_in_flight, 1);
        assert_eq!(s.bad_requests, 1);
        assert_eq!(s.account_refused, 1);
        assert_eq!(s.injected_faults, 3);
        assert!((s.cost_charged - 0.08).abs() < 1e-12, "{}", s.cost_charged);
        assert_eq!(r.log().len(), 10);
    }

    #[test]
    fn no_log_unless_asked() {
        let r = Recorder::new(false);
        r.answered(entry(200, Some(20000), 0.02, None));
        assert!(r.log().is_empty());
        assert_eq!(r.stats().ok, 1);
    }
}
