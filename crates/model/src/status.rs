//! What the API's status codes mean for the pipeline (`docs/api-behaviour.md`).
//!
//! The HTTP status is usually 200 and the real outcome is the `status_code`
//! of the envelope and of the task. Both are classified here, once.

/// What to do with a response, derived from its status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// 20000 / 20100: success.
    Ok,
    /// 40102: the target has no data. Success with zero rows, still charged.
    NoResults,
    /// 40202 (or HTTP 429): per-minute rate limit exceeded. Retry, slow down.
    RateLimited,
    /// 40209: more requests in flight than the account allows. Retry.
    TooManyInFlight,
    /// Transient trouble on the API's side. Retry with backoff.
    Transient,
    /// Authentication, payment or account state (credentials, balance, a
    /// blocked account, the daily spending limit, a plan without this API,
    /// the duplicate-task limits, an IP not on the whitelist). Every further
    /// request fails too, so the run stops.
    Account,
    /// The request itself is wrong. Never retried; recorded against the unit.
    BadRequest,
}

impl Outcome {
    /// Whether a request with this outcome is worth sending again.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Outcome::RateLimited | Outcome::TooManyInFlight | Outcome::Transient
        )
    }

    /// Whether the response carries a usable (possibly empty) result.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::NoResults)
    }
}

/// Classifies an envelope or task `status_code`.
pub fn classify_api_status(code: i64) -> Outcome {
    match code {
        20000 | 20100 => Outcome::Ok,
        40102 => Outcome::NoResults,
        40202 => Outcome::RateLimited,
        40209 => Outcome::TooManyInFlight,
        40103 | 50000 | 50001 | 50301..=50303 | 50401 => Outcome::Transient,
        // 40203 daily spending limit reached, 40204 the plan lacks this API,
        // 40205/40206 duplicate-task limit per hour/day, 40207 IP not
        // whitelisted: refusals of the account, not of the request.
        40100 | 40101 | 40200 | 40201 | 40203..=40207 | 40210 => Outcome::Account,
        // 40000, 40001, 4050x and any other 4xxxx: the request is at fault.
        40000..=49999 => Outcome::BadRequest,
        // Unknown 5xxxx codes are on their side; anything else is unknown and
        // treated as transient so that a bounded number of retries decides.
        _ => Outcome::Transient,
    }
}

/// Classifies an HTTP status other than 200.
pub fn classify_http_status(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Ok,
        401..=403 => Outcome::Account,
        429 => Outcome::RateLimited,
        408 | 500..=599 => Outcome::Transient,
        _ => Outcome::BadRequest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_documented_codes() {
        assert_eq!(classify_api_status(20000), Outcome::Ok);
        assert_eq!(classify_api_status(40102), Outcome::NoResults);
        assert_eq!(classify_api_status(40202), Outcome::RateLimited);
        assert_eq!(classify_api_status(40209), Outcome::TooManyInFlight);
        for code in [40103, 50000, 50001, 50301, 50302, 50303, 50401] {
            assert_eq!(classify_api_status(code), Outcome::Transient, "{code}");
        }
        for code in [
            40100, 40101, 40200, 40201, 40203, 40204, 40205, 40206, 40207, 40210,
        ] {
            assert_eq!(classify_api_status(code), Outcome::Account, "{code}");
        }
        for code in [40000, 40001, 40006, 40208, 40501, 40503, 40400] {
            assert_eq!(classify_api_status(code), Outcome::BadRequest, "{code}");
        }
        assert_eq!(classify_http_status(401), Outcome::Account);
        assert_eq!(classify_http_status(402), Outcome::Account);
        assert_eq!(classify_http_status(500), Outcome::Transient);
        assert_eq!(classify_http_status(404), Outcome::BadRequest);
    }
}
