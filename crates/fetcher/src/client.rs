//! The fetcher proper: one client, bounded concurrency, pacing, retries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

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
use tracing::{debug, info, warn};

use crate::archive::{ArchiveIndex, ArchiveRecord, ArchiveWriter, RECORD_VERSION, request_key};
use crate::pacer::Quota;
use crate::{Budget, Error, FetcherConfig, Pacer, Result, account_advice, error_chain};

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
    /// Answered from the raw archive (paid by an earlier run), not the API.
    pub replayed: bool,
}

/// What one call of [`Fetcher::post`] produced: always a ledger record,
/// and the answer or why there is none.
#[derive(Debug)]
pub struct Exchange {
    pub record: RequestRecord,
    pub result: Result<Fetched>,
    /// The per-minute limit (`X-RateLimit-Limit`) announced in the last
    /// answer to this request that carried one; `None` when none did (or
    /// the answer came from the archive).
    pub announced_limit: Option<u32>,
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
    /// Requests answered from the raw archive instead of the API.
    pub replayed: u64,
    /// Answers that could not be written to the raw archive.
    pub archive_errors: u64,
    /// The per-minute limit the API announced last (`X-RateLimit-Limit`),
    /// if it announced any.
    pub announced_limit: Option<u32>,
}

#[derive(Debug, Default)]
struct Counters {
    attempts: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    too_many_in_flight: AtomicU64,
    replayed: AtomicU64,
    /// What the replayed answers cost when they were fetched, in nano-USD.
    replayed_cost_nanos: AtomicU64,
    archive_errors: AtomicU64,
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
    archive: Option<Arc<ArchiveWriter>>,
    replay: Option<Arc<ArchiveIndex>>,
    offline: bool,
    budget: Option<Arc<Budget>>,
}

/// One request as the retry loop needs it.
struct Request<'a> {
    endpoint: Endpoint,
    target: &'a str,
    page: i64,
    /// The task's JSON (the request body without the enclosing array).
    json: &'a [u8],
    /// The same JSON as a value, as the archive stores it.
    value: &'a serde_json::Value,
    /// [`request_key`] of the endpoint and `value`.
    key: &'a str,
    /// Estimated cost of one attempt, reserved from the budget.
    estimate: f64,
}

/// The verdict on one attempt's answer.
struct Verdict {
    outcome: Outcome,
    http_status: Option<u16>,
    status_code: Option<i64>,
    message: String,
    task_id: Option<String>,
    cost: f64,
    /// The transport error, when there was no answer.
    cause: Option<reqwest::Error>,
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
            .map_err(|e| Error::Client(Arc::new(e.without_url())))?;
        Ok(Self {
            client,
            pacer: Pacer::new(config.requests_per_minute),
            in_flight: Semaphore::new(config.max_in_flight.max(1) as usize),
            config,
            cancel,
            counters: Counters::default(),
            account_problem: OnceLock::new(),
            archive: None,
            replay: None,
            offline: false,
            budget: None,
        })
    }

    /// Stores every successful answer in `archive` before returning it.
    #[must_use]
    pub fn with_archive(mut self, archive: Arc<ArchiveWriter>) -> Self {
        self.archive = Some(archive);
        self
    }

    /// Answers every request archived in `index` from the archive, without
    /// calling the API (resume, replay). Such answers cost nothing now.
    #[must_use]
    pub fn with_replay(mut self, index: Arc<ArchiveIndex>) -> Self {
        self.replay = Some(index);
        self
    }

    /// Never calls the API: a request that is not in the replay index
    /// fails with [`Error::NotArchived`].
    #[must_use]
    pub fn offline(mut self) -> Self {
        self.offline = true;
        self
    }

    /// Sends no attempt that could push the spend past `budget` (see
    /// [`Budget`]); the first refusal cancels the run's token.
    #[must_use]
    pub fn with_budget(mut self, budget: Arc<Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The spend cap, if any.
    pub fn budget(&self) -> Option<&Budget> {
        self.budget.as_deref()
    }

    /// What the answers replayed from the archive cost when they were
    /// fetched (by earlier runs), in USD.
    pub fn replayed_cost(&self) -> f64 {
        self.counters.replayed_cost_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    pub fn stats(&self) -> FetcherStats {
        let c = &self.counters;
        FetcherStats {
            attempts: c.attempts.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            too_many_in_flight: c.too_many_in_flight.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            archive_errors: c.archive_errors.load(Ordering::Relaxed),
            announced_limit: self.pacer.announced_limit(),
        }
    }

    /// The account problem that stopped the run, if any.
    pub fn account_problem(&self) -> Option<&Error> {
        self.account_problem.get()
    }

    /// Sends one task to `endpoint` (as the one-element array the API
    /// wants), retrying per the policy. `target` and `page` only label the
    /// ledger record and logs. Same as [`Fetcher::post_with_estimate`]
    /// with an estimate of 0.
    pub async fn post<T: Serialize>(
        &self,
        endpoint: Endpoint,
        target: &str,
        page: i64,
        task: &T,
    ) -> Exchange {
        self.post_with_estimate(endpoint, target, page, task, 0.0)
            .await
    }

    /// [`Fetcher::post`] with the estimated cost of one attempt in USD,
    /// which the spend cap reserves before each attempt. An answer archived
    /// in the replay index is returned from there, without any attempt.
    pub async fn post_with_estimate<T: Serialize>(
        &self,
        endpoint: Endpoint,
        target: &str,
        page: i64,
        task: &T,
        estimate: f64,
    ) -> Exchange {
        let start = Instant::now();
        let mut announced_limit = None;
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
            replayed: false,
            announced_limit: None,
        };
        // The key is computed from the JSON as a value, the form the
        // archive stores the request in.
        let encoded = serde_json::to_vec(task).and_then(|json| {
            let value: serde_json::Value = serde_json::from_slice(&json)?;
            Ok((json, value))
        });
        let result = match encoded {
            Ok((json, value)) => {
                let key = request_key(endpoint, &value);
                match self.answer_from_archive(&key, &mut record) {
                    Some(result) => result,
                    None if self.offline => Err(Error::NotArchived),
                    None => {
                        let request = Request {
                            endpoint,
                            target,
                            page,
                            json: &json,
                            value: &value,
                            key: &key,
                            estimate,
                        };
                        self.send_with_retries(&request, &mut record, &mut announced_limit)
                            .await
                    }
                }
            }
            Err(e) => Err(Error::EncodeTask(Arc::new(e))),
        };
        record.latency_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Err(e) = &result {
            let error = error_chain(e);
            if !matches!(e, Error::Cancelled | Error::BudgetExhausted { .. }) {
                warn!(%endpoint, target, page, attempts = record.attempts, %error, "request failed");
            }
            record.error = Some(error);
        }
        record.announced_limit = announced_limit;
        Exchange {
            record,
            result,
            announced_limit,
        }
    }

    /// The archived answer to `key`, if the replay index has one.
    fn answer_from_archive(
        &self,
        key: &str,
        record: &mut RequestRecord,
    ) -> Option<Result<Fetched>> {
        let index = self.replay.as_ref()?;
        let archived = match index.answer(key) {
            Ok(Some(archived)) => archived,
            Ok(None) => return None,
            Err(e) => {
                warn!(target = record.target, page = record.page, error = %error_chain(&e), "could not read the archived answer; asking the API");
                return None;
            }
        };
        record.replayed = true;
        record.http_status = archived.http_status;
        record.status_code = archived.status_code;
        record.task_id.clone_from(&archived.task_id);
        record.bytes = archived.body.len() as u64;
        self.counters.replayed.fetch_add(1, Ordering::Relaxed);
        let nanos = (archived.cost.max(0.0) * 1e9).round() as u64;
        self.counters
            .replayed_cost_nanos
            .fetch_add(nanos, Ordering::Relaxed);
        let outcome = match archived.status_code {
            Some(code) if classify_api_status(code) == Outcome::NoResults => Outcome::NoResults,
            _ => Outcome::Ok,
        };
        debug!(endpoint = %record.endpoint, target = record.target, page = record.page, "answered from the archive");
        Some(Ok(Fetched {
            body: archived.body,
            outcome,
            task_id: archived.task_id,
            cost: archived.cost,
            fetched_at: archived.fetched_at,
            replayed: true,
        }))
    }

    /// Stores a successful answer in the archive, if there is one, on a
    /// blocking thread (file IO never stalls the pacing of other
    /// requests). A failure is logged and counted: the answer is still used.
    async fn archive_answer(
        &self,
        request: &Request<'_>,
        fetched: &Fetched,
        record: &RequestRecord,
    ) {
        let Some(archive) = self.archive.clone() else {
            return;
        };
        let entry = ArchiveRecord {
            v: RECORD_VERSION,
            run_id: archive.run_id().to_owned(),
            endpoint: request.endpoint.name().to_owned(),
            target: request.target.to_owned(),
            page: request.page,
            key: request.key.to_owned(),
            request: request.value.clone(),
            http_status: record.http_status,
            status_code: record.status_code,
            task_id: fetched.task_id.clone(),
            cost: fetched.cost,
            fetched_at: fetched.fetched_at,
            body: String::from_utf8_lossy(&fetched.body).into_owned(),
        };
        let endpoint = request.endpoint;
        let written = tokio::task::spawn_blocking(move || archive.append(endpoint, &entry))
            .await
            .unwrap_or_else(|e| Err(Error::ArchiveWriter(Arc::new(e))));
        if let Err(e) = written {
            self.counters.archive_errors.fetch_add(1, Ordering::Relaxed);
            warn!(endpoint = %request.endpoint, target = request.target, page = request.page, error = %error_chain(&e), "could not archive the answer");
        }
    }

    /// Sends the request until it is answered for good. Faults (transient
    /// errors) use up the policy's attempts, with backoff in between;
    /// rate-limit answers (40202, 40209, HTTP 429) do not: they are not
    /// the request's fault, the pacer slows down for them, and the request
    /// goes again in its next slot until it is answered or the run is
    /// cancelled.
    async fn send_with_retries(
        &self,
        request: &Request<'_>,
        record: &mut RequestRecord,
        announced_limit: &mut Option<u32>,
    ) -> Result<Fetched> {
        let (endpoint, target, page) = (request.endpoint, request.target, request.page);
        let mut body = Vec::with_capacity(request.json.len() + 2);
        body.push(b'[');
        body.extend_from_slice(request.json);
        body.push(b']');
        let body = Bytes::from(body);
        let url = format!("{}{}", self.config.base_url, endpoint.path());
        let policy = &self.config.retry;
        let max_faults = policy.max_attempts.max(1);
        let mut faults = 0u32;
        let mut limited_in_a_row = 0u32;
        let mut backoff = None;
        loop {
            if record.attempts > 0 {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(wait) = backoff.take() {
                self.cancellable(tokio::time::sleep(wait)).await?;
            }
            let permit = self.cancellable(self.in_flight.acquire()).await?;
            let slot = self.cancellable(self.pacer.acquire()).await?;
            // The run may have stopped while this caller waited for its slot
            // (an account problem answered elsewhere): send nothing more.
            if self.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if let Some(budget) = &self.budget {
                if !budget.reserve(request.estimate) {
                    self.cancel.cancel();
                    return Err(Error::BudgetExhausted {
                        cap: budget.cap(),
                        spent: budget.spent(),
                    });
                }
            }
            record.attempts += 1;
            self.counters.attempts.fetch_add(1, Ordering::Relaxed);
            // The exchange itself is not cancelled: it is bounded by the
            // client timeout, and an answer already paid for is kept.
            // The place among `max_in_flight` is held until the answer is
            // archived: at any moment at most that many answers can have
            // been paid for without being kept.
            let answer = self.send_once(&url, body.clone()).await;

            let (verdict, response, quota) = match answer {
                Ok((status, quota, bytes)) => {
                    record.bytes += bytes.len() as u64;
                    if quota.limit.is_some() {
                        *announced_limit = quota.limit;
                    }
                    if let Some(limit) = self.pacer.observe(slot, endpoint, quota) {
                        self.announced(limit);
                    }
                    (judge(status, &bytes), Some(bytes), quota)
                }
                Err(error) => (
                    Verdict {
                        outcome: Outcome::Transient,
                        http_status: None,
                        status_code: None,
                        message: transport_failure(&error).to_owned(),
                        task_id: None,
                        cost: 0.0,
                        cause: Some(error.without_url()),
                    },
                    None,
                    Quota::default(),
                ),
            };
            if let Some(budget) = &self.budget {
                budget.settle(request.estimate, verdict.cost);
            }
            record.http_status = verdict.http_status;
            record.status_code = verdict.status_code;
            record.cost += verdict.cost;
            record.task_id.clone_from(&verdict.task_id);
            debug!(
                %endpoint, target, page, attempt = record.attempts,
                http_status = verdict.http_status,
                status_code = verdict.status_code,
                outcome = ?verdict.outcome,
                "answer"
            );

            match verdict.outcome {
                Outcome::Ok | Outcome::NoResults => {
                    self.pacer.on_success(slot);
                    let fetched = Fetched {
                        body: response.unwrap_or_default(),
                        outcome: verdict.outcome,
                        task_id: verdict.task_id,
                        cost: verdict.cost,
                        fetched_at: Utc::now(),
                        replayed: false,
                    };
                    self.archive_answer(request, &fetched, record).await;
                    return Ok(fetched);
                }
                Outcome::RateLimited | Outcome::TooManyInFlight => {
                    if verdict.outcome == Outcome::RateLimited {
                        self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                        self.pacer.on_rate_limited(slot, quota);
                    } else {
                        self.counters
                            .too_many_in_flight
                            .fetch_add(1, Ordering::Relaxed);
                        self.pacer.on_too_many_in_flight(slot);
                    }
                    limited_in_a_row += 1;
                    let interval_ms = self.pacer.interval().as_millis() as u64;
                    let rate = self.pacer.rate().round() as u64;
                    if [10, 100, 1000, 10_000].contains(&limited_in_a_row) {
                        warn!(
                            %endpoint, target, page, answers = limited_in_a_row,
                            last = %describe(&verdict), per_minute = rate, interval_ms,
                            "still refused for the rate; waiting for the pace to settle"
                        );
                    } else {
                        debug!(per_minute = rate, interval_ms, "slowing down");
                    }
                    // Not a fault of the request: no attempt is used up and
                    // no backoff waited; the next slot is the wait.
                    drop(permit);
                    continue;
                }
                Outcome::Transient => {
                    if response.is_some() {
                        // The API counted it, whatever went wrong.
                        self.pacer.on_admitted(slot);
                    }
                }
                Outcome::Account => {
                    let code = verdict
                        .status_code
                        .or(verdict.http_status.map(i64::from))
                        .unwrap_or_default();
                    let error = Error::Account {
                        code,
                        advice: account_advice(code, Utc::now()),
                        message: verdict.message,
                    };
                    let _ = self.account_problem.set(error.clone());
                    self.cancel.cancel();
                    return Err(error);
                }
                Outcome::BadRequest => {
                    self.pacer.on_admitted(slot);
                    return Err(Error::BadRequest {
                        code: verdict
                            .status_code
                            .or(verdict.http_status.map(i64::from))
                            .unwrap_or_default(),
                        message: verdict.message,
                    });
                }
            }
            drop(permit);
            limited_in_a_row = 0;
            faults += 1;
            if faults >= max_faults {
                return Err(Error::Exhausted {
                    attempts: faults,
                    last: describe(&verdict),
                    cause: verdict.cause.map(Arc::new),
                });
            }
            backoff = Some(policy.backoff(faults));
        }
    }

    /// Logs a limit the API announced for the first time or changed.
    fn announced(&self, limit: u32) {
        let configured = self.config.requests_per_minute;
        if limit < configured {
            warn!(
                announced = limit,
                configured,
                "the API allows {limit} requests a minute, fewer than api.requests_per_minute \
                 ({configured}): pacing at {limit}"
            );
        } else {
            info!(
                announced = limit,
                configured, "the API allows {limit} requests a minute"
            );
        }
    }

    /// One HTTP exchange: the status, the rate-limit headers and the whole
    /// body, or why not.
    async fn send_once(
        &self,
        url: &str,
        body: Bytes,
    ) -> std::result::Result<(u16, Quota, Bytes), reqwest::Error> {
        let response = self
            .client
            .post(url)
            .basic_auth(&self.config.login, Some(self.config.password.expose()))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let quota = quota(response.headers());
        let bytes = response.bytes().await?;
        Ok((status, quota, bytes))
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

/// `X-RateLimit-Limit` and `X-RateLimit-Remaining` of an answer. A value
/// that is not a whole number of requests (after trimming; a decimal is
/// rounded down) counts as absent.
fn quota(headers: &reqwest::header::HeaderMap) -> Quota {
    let count = |name: &str| {
        let text = headers.get(name)?.to_str().ok()?.trim();
        text.parse::<u32>().ok().or_else(|| {
            let n = text.parse::<f64>().ok()?;
            (n.is_finite() && n >= 0.0).then(|| n.min(f64::from(u32::MAX)) as u32)
        })
    };
    Quota {
        limit: count("x-ratelimit-limit"),
        remaining: count("x-ratelimit-remaining"),
    }
}

/// What kind of transport failure `e` is, for messages. The error itself
/// (without the URL, which never holds credentials here but makes messages
/// long) is kept as the cause.
fn transport_failure(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "broken response body"
    } else {
        "transport error"
    }
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
        cause: None,
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
            // Kept as a message cut like the API's own: the decoding error
            // quotes the path of keys in the body, which the API chooses.
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

    fn offline_config() -> FetcherConfig {
        FetcherConfig {
            // Nothing listens here; the tests below must not need it.
            base_url: "http://127.0.0.1:9".into(),
            login: "l".into(),
            password: backlinks_model::Secret::new("p"),
            requests_per_minute: 60_000,
            max_in_flight: 2,
            timeout: std::time::Duration::from_secs(1),
            retry: crate::RetryPolicy::default(),
        }
    }

    #[tokio::test]
    async fn archived_answers_are_replayed_without_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let task = serde_json::json!({"target": "a.com", "limit": 10});
        let key = request_key(Endpoint::Summary, &task);
        let writer = ArchiveWriter::new(dir.path(), "r1").unwrap();
        let body = r#"{"status_code":20000,"tasks":[{"id":"t1","status_code":40102,"cost":0.02}]}"#;
        writer
            .append(
                Endpoint::Summary,
                &ArchiveRecord {
                    v: RECORD_VERSION,
                    run_id: "r1".into(),
                    endpoint: "summary".into(),
                    target: "a.com".into(),
                    page: 0,
                    key,
                    request: task.clone(),
                    http_status: Some(200),
                    status_code: Some(40102),
                    task_id: Some("t1".into()),
                    cost: 0.02,
                    fetched_at: Utc::now(),
                    body: body.into(),
                },
            )
            .unwrap();
        writer.finish().unwrap();
        let files = crate::archive::archive_files(dir.path()).unwrap();
        let index = Arc::new(ArchiveIndex::build(&files).unwrap());
        let fetcher = Fetcher::new(offline_config(), CancellationToken::new())
            .unwrap()
            .with_replay(index)
            .offline();

        let hit = fetcher.post(Endpoint::Summary, "a.com", 0, &task).await;
        let fetched = hit.result.unwrap();
        assert_eq!(&fetched.body[..], body.as_bytes());
        assert_eq!(
            (fetched.outcome, fetched.cost, fetched.replayed),
            (Outcome::NoResults, 0.02, true)
        );
        let r = &hit.record;
        assert_eq!(
            (r.replayed, r.attempts, r.cost, r.status_code),
            (true, 0, 0.0, Some(40102))
        );
        assert_eq!(r.task_id.as_deref(), Some("t1"));

        let other = serde_json::json!({"target": "a.com", "limit": 11});
        let miss = fetcher.post(Endpoint::Summary, "a.com", 0, &other).await;
        assert!(matches!(miss.result, Err(Error::NotArchived)));
        assert_eq!(miss.record.attempts, 0);
        let stats = fetcher.stats();
        assert_eq!((stats.replayed, stats.attempts), (1, 0));
        assert!((fetcher.replayed_cost() - 0.02).abs() < 1e-12);
    }

    /// A task as the pipeline sends it: a struct whose fields are not in
    /// alphabetical order.
    #[derive(Serialize)]
    struct Task {
        target: &'static str,
        limit: u32,
        offset: u32,
        filters: Vec<serde_json::Value>,
    }

    #[tokio::test]
    async fn a_day_archived_by_an_older_version_still_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let task = |offset| Task {
            target: "a.com",
            limit: 1000,
            offset,
            filters: vec!["dofollow".into(), "=".into(), true.into()],
        };
        let body = r#"{"status_code":20000,"tasks":[{"id":"t1","status_code":20000,"cost":0.02}]}"#;
        // What the older version stored: the task's JSON read back as a
        // value, and a key of its older hash (which is not looked at).
        let path = crate::archive::archive_file(dir.path(), "r0", Endpoint::Backlinks);
        for offset in [0, 1000] {
            let json = serde_json::to_vec(&task(offset)).unwrap();
            let request: serde_json::Value = serde_json::from_slice(&json).unwrap();
            crate::archive::tests::append_format_1(
                &path,
                &ArchiveRecord {
                    v: 1,
                    run_id: "r0".into(),
                    endpoint: "backlinks".into(),
                    target: "a.com".into(),
                    page: i64::from(offset / 1000),
                    key: String::new(),
                    request,
                    http_status: Some(200),
                    status_code: Some(20000),
                    task_id: Some("t1".into()),
                    cost: 0.02,
                    fetched_at: Utc::now(),
                    body: body.into(),
                },
            );
        }
        let files = crate::archive::archive_files(dir.path()).unwrap();
        let index = Arc::new(ArchiveIndex::build(&files).unwrap());
        let fetcher = Fetcher::new(offline_config(), CancellationToken::new())
            .unwrap()
            .with_replay(index)
            .offline();
        for (page, offset) in [(0, 0), (1, 1000)] {
            let hit = fetcher
                .post(Endpoint::Backlinks, "a.com", page, &task(offset))
                .await;
            let fetched = hit.result.unwrap();
            assert!(fetched.replayed);
            assert_eq!(&fetched.body[..], body.as_bytes());
        }
        let miss = fetcher
            .post(Endpoint::Backlinks, "a.com", 2, &task(2000))
            .await;
        assert!(matches!(miss.result, Err(Error::NotArchived)));
        assert_eq!((fetcher.stats().replayed, fetcher.stats().attempts), (2, 0));
    }

    #[tokio::test]
    async fn a_transport_failure_is_kept_as_the_source() {
        let mut config = offline_config();
        config.retry = crate::RetryPolicy {
            max_attempts: 2,
            initial_backoff: std::time::Duration::from_millis(1),
            max_backoff: std::time::Duration::from_millis(1),
        };
        let fetcher = Fetcher::new(config, CancellationToken::new()).unwrap();
        let task = serde_json::json!({"target": "a.com"});
        let exchange = fetcher.post(Endpoint::Summary, "a.com", 0, &task).await;
        let err = exchange.result.unwrap_err();
        let Error::Exhausted {
            attempts: 2,
            last,
            cause: Some(cause),
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(last, "could not connect");
        assert!(cause.is_connect(), "{cause:?}");
        assert!(cause.url().is_none(), "the URL is left out");
        let source = std::error::Error::source(&err).unwrap();
        // Sources are behind an `Arc`, so that errors stay `Clone`.
        let source = source.downcast_ref::<Arc<reqwest::Error>>().unwrap();
        assert!(source.is_connect());
        // The ledger gets the whole chain, each message once.
        let ledger = exchange.record.error.unwrap();
        assert!(
            ledger.starts_with(&format!("{err}: ")) && ledger.len() > err.to_string().len(),
            "{ledger}"
        );
        assert_eq!(ledger.matches(&cause.to_string()).count(), 1, "{ledger}");
        assert!(!ledger.contains("127.0.0.1:9/"), "{ledger}");
    }

    #[tokio::test]
    async fn a_request_past_the_cap_is_never_sent_and_stops_the_run() {
        let cancel = CancellationToken::new();
        let fetcher = Fetcher::new(offline_config(), cancel.clone())
            .unwrap()
            .with_budget(Arc::new(Budget::new(0.03)));
        let task = serde_json::json!({"target": "a.com"});
        let refused = fetcher
            .post_with_estimate(Endpoint::Backlinks, "a.com", 0, &task, 0.05)
            .await;
        assert!(
            matches!(refused.result, Err(Error::BudgetExhausted { cap, spent }) if cap == 0.03 && spent == 0.0),
            "{:?}",
            refused.result
        );
        assert_eq!(refused.record.attempts, 0, "nothing was sent");
        assert_eq!(fetcher.stats().attempts, 0);
        assert!(cancel.is_cancelled(), "dispatching stops");
        assert!(fetcher.budget().unwrap().exhausted());
    }

    #[test]
    fn rate_limit_headers_are_read_leniently() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, HeaderValue::from_static(v));
            }
            quota(&map)
        };
        assert_eq!(
            headers(&[
                ("X-RateLimit-Limit", "2000"),
                ("x-ratelimit-remaining", " 1999 ")
            ]),
            Quota {
                limit: Some(2000),
                remaining: Some(1999)
            }
        );
        assert_eq!(
            headers(&[
                ("x-ratelimit-limit", "60.9"),
                ("x-ratelimit-remaining", "-1")
            ]),
            Quota {
                limit: Some(60),
                remaining: None
            }
        );
        assert_eq!(headers(&[("x-ratelimit-limit", "lots")]), Quota::default());
        assert_eq!(headers(&[]), Quota::default());
    }

    #[test]
    fn hostile_messages_are_cut() {
        let long = "é".repeat(10_000);
        assert_eq!(short(&long).chars().count(), 200);
    }
}
