//! The imitated account and the faults to inject.

use std::fmt;
use std::time::Duration;

/// How the sandbox behaves: the account it accepts, its limits, the latency
/// of an answer and the faults it injects. Build it with
/// `SandboxConfig { seed: 7, ..Default::default() }`.
#[derive(Clone)]
pub struct SandboxConfig {
    /// Seed of the generated data, of the fault draws and of the task ids.
    pub seed: u64,
    /// Basic-auth login the sandbox accepts.
    pub login: String,
    /// Basic-auth password the sandbox accepts. Never logged or echoed.
    pub password: String,
    /// Requests accepted per `rate_window` (rolling by default, see
    /// `rate_window_kind`): every authorized request it admits counts from
    /// its arrival (malformed ones included); requests it refuses with
    /// 40202 do not. 0 = no cap (and no rate-limit headers).
    pub requests_per_minute: u32,
    /// Length of the window of `requests_per_minute` (60 s, as the API's;
    /// tests and benchmarks shorten it).
    pub rate_window: Duration,
    /// Whether the window rolls (any `rate_window` holds at most the cap)
    /// or is fixed (the count starts again every `rate_window` from the
    /// start). Which one the API uses no source says; the client must be
    /// right under both.
    pub rate_window_kind: RateWindowKind,
    /// Send `X-RateLimit-Limit` and `X-RateLimit-Remaining` with every
    /// answer to an authorized request, as the API does (default). Both
    /// are per minute: the cap, and what is left of it in the current
    /// window, scaled by `60 s / rate_window` when the window is not a
    /// minute (so a shortened window announces the per-minute rate it
    /// stands for). Off, the client has only the answers to go by.
    pub rate_limit_headers: bool,
    /// Requests handled at once before answering 40209. 0 = no cap.
    pub max_in_flight: u32,
    /// Time every processed request takes before its answer.
    pub latency: Duration,
    /// A uniform extra in `[0, latency_jitter]` added to `latency`.
    pub latency_jitter: Duration,
    /// Probabilities of injected faults.
    pub faults: Faults,
    /// Keep a [`LoggedRequest`](crate::LoggedRequest) of every POST for
    /// [`Sandbox::log`](crate::Sandbox::log). The log grows with every
    /// request: for tests and short demos.
    pub keep_log: bool,
    /// How many requests after the one that starts a rate-limit storm also
    /// answer 40202 (default 5).
    pub storm_length: u32,
    /// Refuse every authorized request for a reason of the account (the
    /// daily spending limit, the plan, the duplicate-task limits, the IP
    /// whitelist) once some were served; `None` (the default) never does.
    pub account_refusal: Option<AccountRefusal>,
}

/// A refusal of the account, answered to every authorized request once
/// `after` of them were served: an envelope with `status_code` and the
/// API's kind of message, no task, nothing charged (HTTP 200; 402 for
/// 40200). It comes before the limits and the faults, as the account is
/// checked before the request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountRefusal {
    /// 40203 daily spending limit reached, 40204 the plan does not include
    /// this API, 40205 / 40206 duplicate-task limit per hour / per day,
    /// 40207 the caller's IP is not whitelisted; also 40200 (payment
    /// required), 40201 (account blocked) and 40210.
    pub status_code: i64,
    /// Authorized requests served as usual before the refusals start (0:
    /// the first one is refused already).
    pub after: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            login: "sandbox".into(),
            password: "sandbox".into(),
            requests_per_minute: 2000,
            rate_window: Duration::from_secs(60),
            rate_window_kind: RateWindowKind::Rolling,
            rate_limit_headers: true,
            max_in_flight: 30,
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            faults: Faults::default(),
            keep_log: false,
            storm_length: 5,
            account_refusal: None,
        }
    }
}

impl fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("seed", &self.seed)
            .field("login", &"<redacted>")
            .field("password", &"<redacted>")
            .field("requests_per_minute", &self.requests_per_minute)
            .field("rate_window", &self.rate_window)
            .field("rate_window_kind", &self.rate_window_kind)
            .field("rate_limit_headers", &self.rate_limit_headers)
            .field("max_in_flight", &self.max_in_flight)
            .field("latency", &self.latency)
            .field("latency_jitter", &self.latency_jitter)
            .field("faults", &self.faults)
            .field("keep_log", &self.keep_log)
            .field("storm_length", &self.storm_length)
            .field("account_refusal", &self.account_refusal)
            .finish()
    }
}

/// How the window of [`SandboxConfig::requests_per_minute`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RateWindowKind {
    /// At most the cap in any `rate_window`: each admission counts for
    /// `rate_window` from its arrival.
    #[default]
    Rolling,
    /// At most the cap per `rate_window` counted from the sandbox's start;
    /// the count starts again at each boundary.
    Fixed,
}

/// Per-request probabilities (0..=1) of injected faults. At most one fault
/// hits a request; they apply only to authorized, well-formed requests that
/// passed the account's limits. Values outside 0..=1 are clamped.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// HTTP 500 with the plain-text body `Internal Server Error`; not charged.
    pub http_500: f64,
    /// HTTP 200 with envelope status 50000 `Internal Error.` and no tasks;
    /// not charged.
    pub envelope_50000: f64,
    /// A successful answer cut in half mid-body. It **is** charged: the API
    /// did the work, only the delivery broke.
    pub truncated_json: f64,
    /// This request and the next `storm_length` well-formed ones answer
    /// 40202; not charged.
    pub rate_limit_storm: f64,
    /// The answer comes `slow_delay` later than usual, then normally.
    pub slow: f64,
    /// The extra delay of a `slow` answer.
    pub slow_delay: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_account() {
        let c = SandboxConfig::default();
        assert_eq!(c.seed, 42);
        assert_eq!(
            (c.login.as_str(), c.password.as_str()),
            ("sandbox", "sandbox")
        );
        assert_eq!(c.requests_per_minute, 2000);
        assert_eq!(c.rate_window, Duration::from_secs(60));
        assert_eq!(c.rate_window_kind, RateWindowKind::Rolling);
        assert!(c.rate_limit_headers);
        assert_eq!(c.max_in_flight, 30);
        assert_eq!(c.latency, Duration::ZERO);
        assert_eq!(c.faults, Faults::default());
        assert_eq!(c.storm_length, 5);
        assert_eq!(c.account_refusal, None);
        assert!(!c.keep_log);
    }

    #[test]
    fn debug_output_hides_the_credentials() {
        let c = SandboxConfig {
            login: "someone@example.com".into(),
            password: "Hunter2-secret".into(),
            ..Default::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("Hunter2-secret"), "{shown}");
        assert!(!shown.contains("someone@example.com"), "{shown}");
        assert!(shown.contains("requests_per_minute: 2000"), "{shown}");
    }
}
