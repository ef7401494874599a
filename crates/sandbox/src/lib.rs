//! A local, in-process imitation of the DataForSEO Backlinks API.
//!
//! [`Sandbox::start`] binds an HTTP server that answers like the real API
//! (`docs/api-behaviour.md`): the same paths (`POST /v3/backlinks/summary/live` and
//! the paged `POST /v3/backlinks/backlinks/live`), the same envelope
//! (`version`, `status_code`, `tasks[]` with `id`, `cost`, `data` echoing
//! the request, `result`), HTTP Basic auth, one task per live request, the
//! account's limits (a per-minute cap, rolling or fixed → 40202, announced
//! in `X-RateLimit-Limit` / `X-RateLimit-Remaining`; a cap on requests in
//! flight → 40209), latency, injectable [`Faults`] (HTTP 500, envelope
//! 50000, truncated bodies, rate-limit storms, slow answers) and refusals
//! of the account ([`AccountRefusal`]: 40203 spending limit, 40204 plan,
//! 40205/40206 duplicate tasks, 40207 IP whitelist). The demo, the
//! end-to-end tests and the benchmarks run against it; a pipeline that
//! works here must work against the real API.
//!
//! Data enters as POSTed JSON tasks and leaves as JSON envelopes whose
//! results are generated from the seed and the request only:
//! [`served_summary`] returns exactly what the server serves for a target,
//! and [`backlinks_total`] and [`served_backlink`] the length of a target's
//! backlinks list and its item at any position, so tests can compare
//! stored rows with them. Backlinks are paged by `offset` (up to 20,000)
//! and by `search_after_token` beyond; a page costs
//! [`BACKLINKS_TASK_COST`] plus [`BACKLINKS_ITEM_COST`] per item. Every
//! answer is counted in [`SandboxStats`] (and, with `keep_log`, logged as a
//! [`LoggedRequest`]). Each endpoint is one module under `endpoints`; the
//! server does what is common to all (auth, limits, faults, envelope,
//! accounting).

mod config;
mod data;
mod endpoints;
mod envelope;
mod faults;
mod json;
mod limits;
mod rng;
mod server;
mod stats;

use std::time::Duration;

pub use config::{AccountRefusal, Faults, RateWindowKind, SandboxConfig};
pub use endpoints::backlinks::{
    BACKLINKS_ITEM_COST, BACKLINKS_TASK_COST, backlinks_page_cost, backlinks_total, served_backlink,
};
pub use endpoints::summary::{SUMMARY_TASK_COST, ServedSummary, served_summary};
pub use faults::FaultKind;
pub use server::Sandbox;
pub use stats::{LoggedRequest, SandboxStats};

/// Why the sandbox refused a request as a whole. Each maps to the API's
/// HTTP status and envelope status code; none carries credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No endpoint at this path (HTTP 404, 40400).
    #[error("no endpoint at `{path}`")]
    NotFound { path: String },
    /// Endpoints take POST only (HTTP 405, 40500).
    #[error("`{path}` takes POST, not {method}")]
    MethodNotAllowed { path: String, method: String },
    /// Missing or wrong Basic-auth credentials (HTTP 401, 40100).
    #[error("missing or wrong credentials for `{path}`")]
    Unauthorized { path: String },
    /// The body is not one task in a JSON array, or is too large (40000).
    #[error("bad request to `{path}`: {reason}")]
    BadRequest { path: String, reason: String },
    /// Over the account's rolling cap (40202).
    #[error("more than {limit} requests within {window:?} to `{path}`")]
    RateLimited {
        path: String,
        limit: u32,
        window: Duration,
    },
    /// Over the account's cap of requests in flight (40209).
    #[error("more than {limit} requests in flight, at `{path}`")]
    TooManyInFlight { path: String, limit: u32 },
    /// The account refuses every request (40203–40207, …; see
    /// [`AccountRefusal`]).
    #[error("the account refuses requests to `{path}` with {code}")]
    AccountRefused { path: String, code: i64 },
}

impl Error {
    /// The envelope's `status_code`.
    pub fn status_code(&self) -> i64 {
        match self {
            Error::NotFound { .. } => 40400,
            Error::MethodNotAllowed { .. } => 40500,
            Error::Unauthorized { .. } => 40100,
            Error::BadRequest { .. } => 40000,
            Error::RateLimited { .. } => 40202,
            Error::TooManyInFlight { .. } => 40209,
            Error::AccountRefused { code, .. } => *code,
        }
    }

    /// The HTTP status of the answer.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::NotFound { .. } => 404,
            Error::MethodNotAllowed { .. } => 405,
            Error::Unauthorized { .. } => 401,
            Error::AccountRefused { code: 40200, .. } => 402,
            Error::BadRequest { .. }
            | Error::RateLimited { .. }
            | Error::TooManyInFlight { .. }
            | Error::AccountRefused { .. } => 200,
        }
    }

    /// The envelope's `status_message`, worded like the API's.
    pub fn status_message(&self) -> String {
        match self {
            Error::NotFound { .. } => "Not Found. Requested endpoint not found.".into(),
            Error::MethodNotAllowed { .. } => "Method Not Allowed. Use POST.".into(),
            Error::Unauthorized { .. } => {
                "You are not authorized to access this resource. Check the login and password of your API access.".into()
            }
            Error::BadRequest { reason, .. } => reason.clone(),
            Error::RateLimited { limit, window, .. } => format!(
                "Rate-limit exceeded. Your account can send {limit} requests per {} seconds.",
                window.as_secs_f64()
            ),
            Error::TooManyInFlight { limit, .. } => format!(
                "Too many simultaneous requests. Your account can have {limit} requests in progress at once."
            ),
            Error::AccountRefused { code, .. } => account_message(*code).into(),
        }
    }
}

/// The `status_message` of an account refusal, worded like the API's.
fn account_message(code: i64) -> &'static str {
    match code {
        40200 => "Payment Required. Top up the balance of your account.",
        40201 => "Your account was temporarily blocked for suspicious activity.",
        40203 => "Cost limit exceeded. Your account's daily spending limit was reached.",
        40204 => {
            "Access denied. Your plan does not include this API: activate a subscription to get access."
        }
        40205 => "Duplicate tasks limit per hour exceeded.",
        40206 => "Duplicate tasks limit per day exceeded.",
        40207 => "Access denied. Your IP address is not whitelisted.",
        _ => "Access denied for your account.",
    }
}

/// Results of this crate's fallible operations.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_the_apis_codes() {
        let path = String::from("/v3/backlinks/summary/live");
        let cases = [
            (
                Error::NotFound {
                    path: "/v3/nope".into(),
                },
                404,
                40400,
            ),
            (
                Error::MethodNotAllowed {
                    path: path.clone(),
                    method: "GET".into(),
                },
                405,
                40500,
            ),
            (Error::Unauthorized { path: path.clone() }, 401, 40100),
            (
                Error::BadRequest {
                    path: path.clone(),
                    reason: "You can set only one task at a time.".into(),
                },
                200,
                40000,
            ),
            (
                Error::RateLimited {
                    path: path.clone(),
                    limit: 3,
                    window: Duration::from_secs(60),
                },
                200,
                40202,
            ),
            (
                Error::TooManyInFlight {
                    path: path.clone(),
                    limit: 30,
                },
                200,
                40209,
            ),
            (
                Error::AccountRefused {
                    path: path.clone(),
                    code: 40203,
                },
                200,
                40203,
            ),
            (Error::AccountRefused { path, code: 40200 }, 402, 40200),
        ];
        for (error, http, code) in cases {
            assert_eq!(
                (error.http_status(), error.status_code()),
                (http, code),
                "{error}"
            );
        }
        let rl = Error::RateLimited {
            path: "/x".into(),
            limit: 2000,
            window: Duration::from_secs(60),
        };
        assert!(
            rl.status_message().starts_with("Rate-limit exceeded."),
            "{}",
            rl.status_message()
        );
        assert!(rl.status_message().contains("2000 requests per 60 seconds"));
    }
}
