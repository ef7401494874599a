//! The pipeline's one door to the API.
//!
//! A [`Fetcher`] owns one HTTP client and sends a task to an endpoint with
//! [`Fetcher::post`]: it waits for a place among `max_in_flight`, then for
//! its slot from the [`Pacer`] (requests evenly spaced at
//! `requests_per_minute`, or at the lower limit the API announces in
//! `X-RateLimit-Limit`, slowed down as `X-RateLimit-Remaining` nears zero
//! and when the API still says 40202/40209), sends, classifies the answer
//! by the status codes inside the envelope (`docs/api-behaviour.md`) and
//! retries what is worth retrying: transient errors with capped
//! exponential backoff and jitter, up to `max_attempts`; rate-limit
//! answers in the pacer's next slot, without using up an attempt, until
//! the run is cancelled. Account problems stop every further request.
//!
//! A task enters as a serialisable value; an [`Exchange`] leaves: the
//! [`RequestRecord`](backlinks_model::RequestRecord) for the ledger and, on
//! success, the response body (for the normalizer) with its task id and
//! cost. The fetcher knows nothing of rows.
//!
//! Optional capabilities are added with builder methods:
//! [`Fetcher::with_archive`] stores every successful answer in the raw
//! archive ([`ArchiveWriter`], see [`archive`]) before returning it;
//! [`Fetcher::with_replay`] answers requests already archived from an
//! [`ArchiveIndex`] without calling the API (resume after a crash, and
//! with [`Fetcher::offline`] a replay that never touches the network);
//! [`Fetcher::with_budget`] enforces a spend cap ([`Budget`]) with the
//! estimates passed to [`Fetcher::post_with_estimate`].

pub mod archive;
mod budget;
mod client;
mod pacer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use archive::{ArchiveIndex, ArchiveRecord, ArchiveWriter};
pub use budget::Budget;
pub use client::{Exchange, Fetched, Fetcher, FetcherStats};
pub use pacer::{Pacer, Quota, Slot};

use backlinks_model::Secret;
use chrono::{DateTime, NaiveTime, Utc};

/// Errors of one request (all attempts together), and of the raw archive.
/// Messages quote the API's status code and message, never credentials.
/// An error that another one caused carries it as its
/// [`source`](std::error::Error::source), behind an `Arc` so that errors
/// stay `Clone` (downcast to `Arc<reqwest::Error>`, `Arc<std::io::Error>`,
/// …); the message shows the source's own message, not its sources in turn.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Authentication, payment or account state: the run must stop.
    /// `advice` says what to do about it ([`account_advice`]).
    #[error("account problem: the API answered {code} `{message}`; {advice}")]
    Account {
        code: i64,
        message: String,
        advice: String,
    },
    /// The request is wrong; sending it again would not help.
    #[error("request refused: the API answered {code} `{message}`")]
    BadRequest { code: i64, message: String },
    /// `attempts` attempts (the policy's `max_attempts`) failed with a
    /// transient error; answers that only refused the rate (40202, 40209)
    /// are not counted. `last` says how the last attempt failed: the API's
    /// code and message, or the kind of transport failure (`timed out`,
    /// `could not connect`, …), whose error (without the URL) is then
    /// `cause`.
    #[error("gave up after {attempts} attempts; last error: {last}{}", suffix(.cause.as_deref()))]
    Exhausted {
        attempts: u32,
        last: String,
        #[source]
        cause: Option<Arc<reqwest::Error>>,
    },
    /// The run was stopped (Ctrl-C, account problem elsewhere) first.
    #[error("cancelled before an answer arrived")]
    Cancelled,
    /// The HTTP client could not be built (TLS backend, bad settings).
    #[error("building the HTTP client: {0}")]
    Client(#[source] Arc<reqwest::Error>),
    /// The task could not be written as JSON.
    #[error("encoding the task: {0}")]
    EncodeTask(#[source] Arc<serde_json::Error>),
    /// Sending would have pushed the spend past the cap; nothing was sent
    /// and the run stops dispatching.
    #[error("spend cap of ${cap:.5} reached: ${spent:.5} spent")]
    BudgetExhausted { cap: f64, spent: f64 },
    /// Offline (replay) and the archive holds no answer to this request.
    #[error("not in the archive (replay sends no request)")]
    NotArchived,
    /// A file or directory of the raw archive could not be created, opened,
    /// listed, read, written or synced; `action` says which.
    #[error("raw archive: {action} {}: {source}", .path.display())]
    ArchiveIo {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A record could not be written as JSON.
    #[error("raw archive: encoding a record for {}: {source}", .path.display())]
    ArchiveEncode {
        path: PathBuf,
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// An answer whose compressed record is larger than a record may be.
    #[error("raw archive: an answer of {bytes} compressed bytes is too big to archive in {}", .path.display())]
    ArchiveTooBig { path: PathBuf, bytes: usize },
    /// A file among the archives that is not one (or is damaged at
    /// `offset`, where `head` are the first bytes found).
    #[error(
        "raw archive: {} is not a backlinks archive (or is damaged at byte {offset}, {head:02x?})",
        .path.display()
    )]
    NotAnArchive {
        path: PathBuf,
        offset: u64,
        head: Vec<u8>,
    },
    /// The record frame at `offset` does not decompress.
    #[error("raw archive: {} is damaged at byte {offset}: {source}", .path.display())]
    ArchiveDamaged {
        path: PathBuf,
        offset: u64,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The record at `offset` decompresses but is not a record.
    #[error("raw archive: {} holds an unreadable record at byte {offset}: {source}", .path.display())]
    ArchiveUnreadable {
        path: PathBuf,
        offset: u64,
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// The blocking task writing an answer to the archive panicked.
    #[error("raw archive: the archive writer failed: {0}")]
    ArchiveWriter(#[source] Arc<tokio::task::JoinError>),
}

/// What to do about an account problem with status `code` (the envelope's
/// or task's `status_code`, or the HTTP status when there is none) that
/// arrived at `now`. Every further request would fail the same way, so the
/// run stops; the advice says what lifts the refusal.
pub fn account_advice(code: i64, now: DateTime<Utc>) -> String {
    match code {
        40100 | 401 => "check the API login and password (the API password from the dashboard's \
             API Access page, not the account's own password)"
            .into(),
        40200 | 402 => "the account's balance or payment needs attention: top it up in the \
             DataForSEO dashboard, then run the same command again"
            .into(),
        40201 => "the account is blocked for the moment (suspicious activity): contact \
             DataForSEO support"
            .into(),
        40203 => {
            let reset = next_utc_midnight(now);
            let left = reset - now;
            format!(
                "the account's daily spending limit is reached; it resets at 00:00 UTC, next \
                 at {} (in {} h {:02} min): run the same command again after that, or raise \
                 the limit in the DataForSEO dashboard",
                reset.format("%Y-%m-%d %H:%M UTC"),
                left.num_hours(),
                left.num_minutes() % 60
            )
        }
        40204 => "the account's plan does not include this API: subscribe to it in the \
             DataForSEO dashboard, then run the same command again"
            .into(),
        40205 => "the account's limit on duplicate tasks per hour is reached: raise or lift \
             it in the DataForSEO dashboard, or run the same command again in an hour"
            .into(),
        40206 => "the account's limit on duplicate tasks per day is reached: raise or lift \
             it in the DataForSEO dashboard, or run the same command again tomorrow"
            .into(),
        40207 => "this machine's IP address is not on the account's whitelist: add it in the \
             DataForSEO dashboard (API access settings), or run from a whitelisted machine"
            .into(),
        _ => "every further request would fail too".into(),
    }
}

/// The first 00:00 UTC after `now`, when the daily spending limit resets.
fn next_utc_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = now.date_naive() + chrono::Days::new(1);
    tomorrow.and_time(NaiveTime::MIN).and_utc()
}

/// `: <message of cause>`, or nothing.
fn suffix(cause: Option<&reqwest::Error>) -> String {
    cause.map(|c| format!(": {c}")).unwrap_or_default()
}

/// An error and its sources on one line (`backlinks_model::error::chain`).
pub(crate) use backlinks_model::error::chain as error_chain;

pub type Result<T> = std::result::Result<T, Error>;

/// How often and how patiently to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per request that may fail with a transient error, the
    /// first included (≥ 1). Rate-limit answers (40202, 40209, HTTP 429)
    /// do not count: a request refused for the rate goes again once the
    /// pace allows, until it is answered or the run is cancelled.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time.
    pub initial_backoff: Duration,
    /// Cap of the backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Backoff before attempt `attempt + 1` (after `attempt` failures):
    /// "equal jitter", half fixed and half random, so waits never collapse
    /// to zero and concurrent retries spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max_backoff);
        let half = capped / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Everything the fetcher needs to talk to the API.
#[derive(Debug, Clone)]
pub struct FetcherConfig {
    /// Scheme, host and optional port, without a trailing slash.
    pub base_url: String,
    pub login: String,
    pub password: Secret,
    pub requests_per_minute: u32,
    pub max_in_flight: u32,
    /// Per attempt; must exceed the API's own 120 s for live requests.
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_problems_say_what_to_do() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let now = at("2026-03-01T21:47:30Z");
        let spending = account_advice(40203, now);
        assert!(
            spending.contains("resets at 00:00 UTC, next at 2026-03-02 00:00 UTC (in 2 h 12 min)"),
            "{spending}"
        );
        // Just before midnight, and at midnight itself: the next one.
        assert!(
            account_advice(40203, at("2026-12-31T23:59:59Z"))
                .contains("2027-01-01 00:00 UTC (in 0 h 00 min)")
        );
        assert!(
            account_advice(40203, at("2026-03-02T00:00:00Z"))
                .contains("2026-03-03 00:00 UTC (in 24 h 00 min)")
        );
        for (code, words) in [
            (40100, "login and password"),
            (401, "login and password"),
            (40200, "balance"),
            (402, "balance"),
            (40201, "support"),
            (40204, "plan does not include this API"),
            (40205, "duplicate tasks per hour"),
            (40206, "duplicate tasks per day"),
            (40207, "IP address is not on the account's whitelist"),
            (40210, "every further request would fail too"),
        ] {
            let advice = account_advice(code, now);
            assert!(advice.contains(words), "{code}: {advice}");
        }
        let error = Error::Account {
            code: 40207,
            message: "Access denied. Your IP is not whitelisted.".into(),
            advice: account_advice(40207, now),
        };
        assert_eq!(
            error.to_string(),
            format!(
                "account problem: the API answered 40207 `Access denied. Your IP is not whitelisted.`; {}",
                account_advice(40207, now)
            )
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = policy.backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = policy.backoff(30);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }
}
