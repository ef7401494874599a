//! The fetcher proper: one client, bounded concurrency, pacing, retries.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use backlinks_model::api::{Envelope, decode_envelope};
use backlinks_model::{
    Endpoint, Outcome, RequestRecord, classify_api_status, classify_http_status,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::IgnoredAny;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{Error, FetcherConfig, Pacer, Result};

/// A successful answer, ready for the normalizer.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The whole response body (the envelope).
    pub body: Bytes,
    /// `Ok` or `NoResults` (40102: zero rows, still charged).
    pub outcome: Outcome,
    pub task_id: Option<String>,
    /// Cost in USD of this answer, as the API reported it.
    pub cost: f64,
    pub fetched_at: DateTime<Utc>,
}

/// What one call of [`Fetcher::post`] produced: always a ledger record,
/// and the answer or why there is none.
#[derive(Debug)]
pub struct Exchange {
    pub record: RequestRecord,
    pub result: Result<Fetched>,
}

/// Counters over the fetcher's lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetcherStats {
    /// HTTP requests sent, retries included.
    pub attempts: u64,
    /// Attempts after the first of a request.
    pub retries: u64,
    /// 40202 (or HTTP 429) answers.
    pub rate_limited: u64,
    /// 40209 answers.
    pub too_many_in_flight: u64,
}

#[derive(Debug, Default)]
struct Counters {
    attempts: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    too_many_in_flight: AtomicU64,
}

/// See the crate documentation.
#[derive(Debug)]
pub struct Fetcher {
    client: reqwest::Client,
    config: FetcherConfig,
    pacer: Pacer,
    in_flight: Semaphore,
    cancel: CancellationToken,
    counters: Counters,
    account_problem: OnceLock<Error>,
}

/// The verdict on one attempt's answer.
struct Verdict {
    outcome: Outcome,
    http_status: Option<u16>,
    status_code: Option<i64>,
    message: String,
    task_id: Option<String>,
    cost: f64,
}

impl Fetcher {
    /// Builds the client. `cancel` stops dispatching new requests; the
    /// fetcher cancels it itself on an account problem.
    pub fn new(config: FetcherConfig, cancel: CancellationToken) -> Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("backlinks/", env!("CARGO_PKG_VERSION")))
            .gzip(true)
            .timeout(config.timeout)
            .connect_timeout(std::time::Duration::from_secs(15))
            .pool_max_idle_per_host(config.max_in_flight as usize)
            .build()
            .map_err(|e| Error::Client(e.without_url().to_string()))?;
        Ok(Self {
            client,
            pacer: Pacer::new(config.requests_per_minute),
            in_flight: Semaphore::new(config.max_in_flight.max(1) as usize),
            config,
            cancel,
            counters: Counters::default(),
            account_problem: OnceLock::new(),
        })
    }

    pub fn stats(&self) -> FetcherStats {
        let c = &self.counters;
        FetcherStats {
            attempts: c.attempts.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            too_many_in_flight: c.too_many_in_flight.load(Ordering::Relaxed),
        }
    }

    /// The account problem that stopped the run, if any.
    pub fn account_problem(&self) -> Option<&Error> {
        self.account_problem.get()
    }

    /// Sends one task to `endpoint` (as the one-element array the API
    /// wants), retrying per the policy. `target` and `page` only label the
    /// ledger record and logs.
    pub async fn post<T: Serialize>(
        &self,
        endpoint: Endpoint,
        target: &str,
        page: i64,
        task: &T,
    ) -> Exchange {
        let start = Instant::now();
        let mut record = RequestRecord {
            endpoint,
            target: target.to_owned(),
            page,
            started_at: Utc::now(),
            attempts: 0,
            http_status: None,
            status_code: None,
            cost: 0.0,
            bytes: 0,
            latency_ms: 0,
            task_id: None,
            error: None,
        };
        let result = self
            .send_with_retries(endpoint, target, page, task, &mut record)
            .await;
        record.latency_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Err(e) = &result {
            record.error = Some(e.to_string());
            if !matches!(e, Error::Cancelled) {
                warn!(%endpoint, target, page, attempts = record.attempts, error = %e, "request failed");
            }
        }
        Exchange { record, result }
    }

    async fn send_with_retries<T: Serialize>(
        &self,
        endpoint: Endpoint,
        target: &str,
        page: i64,
        task: &T,
        record: &mut RequestRecord,
    ) -> Result<Fetched> {
        let body = Bytes::from(
            serde_json::to_vec(&[task])
                .map_err(|e| Error::Client(format!("encoding the task: {e}")))?,
        );
        let url = format!("{}{}", self.config.base_url, endpoint.path());
        let policy = &self.config.retry;
        let mut last = String::new();
        for attempt in 1..=policy.max_attempts.max(1) {
            if attempt > 1 {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                self.cancellable(tokio::time::sleep(policy.backoff(attempt - 1)))
                    .await?;
            }
            let permit = self.cancellable(self.in_flight.acquire()).await?;
            self.cancellable(self.pacer.acquire()).await?;
            record.attempts = attempt;
            self.counters.attempts.fetch_add(1, Ordering::Relaxed);
            // The exchange itself is not cancelled: it is bounded by the
            // client timeout, and an answer already paid for is kept.
            let answer = self.send_once(&url, body.clone()).await;
            drop(permit);

            let (verdict, response) = match answer {
                Ok((status, bytes)) => {
                    record.bytes += bytes.len() as u64;
                    (judge(status, &bytes), Some(bytes))
                }
                Err(message) => (
                    Verdict {
                        outcome: Outcome::Transient,
                        http_status: None,
                        status_code: None,
                        message,
                        task_id: None,
                        cost: 0.0,
                    },
                    None,
                ),
            };
            record.http_status = verdict.http_status;
            record.status_code = verdict.status_code;
            record.cost += verdict.cost;
            record.task_id.clone_from(&verdict.task_id);
            debug!(
                %endpoint, target, page, attempt,
                http_status = verdict.http_status,
                status_code = verdict.status_code,
                outcome = ?verdict.outcome,
                "answer"
            );

            match verdict.outcome {
                Outcome::Ok | Outcome::NoResults => {
                    self.pacer.on_success();
                    return Ok(Fetched {
                        body: response.unwrap_or_default(),
                        outcome: verdict.outcome,
                        task_id: verdict.task_id,
                        cost: verdict.cost,
                        fetched_at: Utc::now(),
                    });
                }
                Outcome::RateLimited | Outcome::TooManyInFlight => {
                    let counter = if verdict.outcome == Outcome::RateLimited {
                        &self.counters.rate_limited
                    } else {
                        &self.counters.too_many_in_flight
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    self.pacer.slow_down();
                    debug!(
                        interval_ms = self.pacer.interval().as_millis() as u64,
                        "slowing down"
                    );
                }
                Outcome::Transient => {}
                Outcome::Account => {
                    let error = Error::Account {
                        code: verdict.status_code.unwrap_or_default(),
                        message: verdict.message,
                    };
                    let _ = self.account_problem.set(error.clone());
                    self.cancel.cancel();
                    return Err(error);
                }
                Outcome::BadRequest => {
                    return Err(Error::BadRequest {
                        code: verdict
                            .status_code
                            .or(verdict.http_status.map(i64::from))
                            .unwrap_or_default(),
                        message: verdict.message,
                    });
                }
            }
            last = describe(&verdict);
        }
        Err(Error::Exhausted {
            attempts: record.attempts,
            last,
        })
    }

    /// One HTTP exchange: the status and the whole body, or why not.
    async fn send_once(&self, url: &str, body: Bytes) -> std::result::Result<(u16, Bytes), String> {
        let response = self
            .client
            .post(url)
            .basic_auth(&self.config.login, Some(self.config.password.expose()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
        Ok((status, bytes))
    }

    /// Runs `wait` unless the run is cancelled first.
    async fn cancellable<F: Future>(&self, wait: F) -> Result<F::Output> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(Error::Cancelled),
            out = wait => Ok(out),
        }
    }
}

/// A transport error, without the URL (which never holds credentials here,
/// but keeps messages short) and with its cause chain.
fn transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "broken response body"
    } else {
        "transport error"
    };
    let mut message = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn describe(v: &Verdict) -> String {
    match (v.http_status, v.status_code) {
        (_, Some(code)) => format!("{code} `{}`", v.message),
        (Some(http), None) => format!("HTTP {http} `{}`", v.message),
        (None, None) => v.message.clone(),
    }
}

/// Classifies one answer by HTTP status, then envelope, then task status.
fn judge(http_status: u16, body: &[u8]) -> Verdict {
    let mut verdict = Verdict {
        outcome: Outcome::Ok,
        http_status: Some(http_status),
        status_code: None,
        message: String::new(),
        task_id: None,
        cost: 0.0,
    };
    let envelope = decode_envelope::<IgnoredAny>("api", body);
    if http_status != 200 {
        verdict.outcome = classify_http_status(http_status);
        if verdict.outcome == Outcome::Ok {
            verdict.outcome = Outcome::Transient;
        }
        match envelope {
            Ok(env) => {
                verdict.status_code = env.status_code;
                verdict.message = short(env.status_message.as_deref().unwrap_or("")).into();
            }
            Err(_) => verdict.message = format!("HTTP {http_status}"),
        }
        return verdict;
    }
    let envelope: Envelope<IgnoredAny> = match envelope {
        Ok(env) => env,
        Err(e) => {
            verdict.outcome = Outcome::Transient;
            verdict.message = short(&e.to_string()).into();
            return verdict;
        }
    };
    verdict.status_code = envelope.status_code;
    verdict.message = short(envelope.status_message.as_deref().unwrap_or("")).into();
    verdict.cost = envelope.cost.unwrap_or(0.0);
    let Some(code) = envelope.status_code else {
        verdict.outcome = Outcome::Transient;
        verdict.message = "response without a status_code".into();
        return verdict;
    };
    verdict.outcome = classify_api_status(code);
    if verdict.outcome != Outcome::Ok {
        return verdict;
    }
    let Some(task) = envelope.tasks.into_iter().flatten().next() else {
        verdict.outcome = Outcome::Transient;
        verdict.message = "response without a task".into();
        return verdict;
    };
    if let Some(cost) = task.cost {
        verdict.cost = cost;
    }
    verdict.task_id = task.id;
    verdict.status_code = task.status_code;
    verdict.message = short(task.status_message.as_deref().unwrap_or("")).into();
    verdict.outcome = task
        .status_code
        .map_or(Outcome::Transient, classify_api_status);
    verdict
}

/// API messages are short; a hostile one is cut.
fn short(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_codes_inside_http_200() {
        let ok = judge(200, br#"{"status_code":20000,"cost":0.02,"tasks":[{"id":"t","status_code":20000,"cost":0.02}]}"#);
        assert_eq!(
            (ok.outcome, ok.cost, ok.task_id.as_deref()),
            (Outcome::Ok, 0.02, Some("t"))
        );
        let none = judge(
            200,
            br#"{"status_code":20000,"tasks":[{"status_code":40102,"cost":0.02,"result":null}]}"#,
        );
        assert_eq!((none.outcome, none.cost), (Outcome::NoResults, 0.02));
        let limited = judge(
            200,
            br#"{"status_code":40202,"status_message":"Rate-limit exceeded.","tasks":[]}"#,
        );
        assert_eq!(
            (limited.outcome, limited.status_code),
            (Outcome::RateLimited, Some(40202))
        );
        let account = judge(200, br#"{"status_code":20000,"tasks":[{"status_code":40200,"status_message":"Payment Required."}]}"#);
        assert_eq!(account.outcome, Outcome::Account);
        assert_eq!(account.message, "Payment Required.");
    }

    #[test]
    fn judges_http_errors_and_broken_bodies() {
        assert_eq!(
            judge(401, br#"{"status_code":40100}"#).outcome,
            Outcome::Account
        );
        assert_eq!(
            judge(500, b"Internal Server Error").outcome,
            Outcome::Transient
        );
        let truncated = judge(200, br#"{"status_code":20000,"tasks":[{"status_co"#);
        assert_eq!(truncated.outcome, Outcome::Transient);
        assert!(
            truncated.message.contains("malformed"),
            "{}",
            truncated.message
        );
        assert_eq!(
            judge(200, br#"{"status_code":20000,"tasks":[]}"#).outcome,
            Outcome::Transient
        );
        assert_eq!(judge(200, br#"{"tasks":[]}"#).outcome, Outcome::Transient);
    }

    #[test]
    fn hostile_messages_are_cut() {
        let long = "é".repeat(10_000);
        assert_eq!(short(&long).chars().count(), 200);
    }
}
