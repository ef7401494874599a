//! The HTTP server: routing, Basic auth, limits, faults, latency and
//! accounting around the endpoints.
//!
//! A POST goes through, in order: path (404) → Basic auth (401) → the body
//! is read (at most [`MAX_BODY_BYTES`]) → the account's refusal, if one is
//! configured and due (40203–40207, …) → the in-flight cap (40209) → the
//! window (40202; every authorized request it admits counts, on arrival,
//! malformed ones included) → one task in a JSON array (40000) → the fault
//! draw → latency → the endpoint's answer. Every answer to an authorized
//! request carries `X-RateLimit-Limit` and `X-RateLimit-Remaining` (what
//! the window held when the request arrived, this one counted), unless
//! the account has no cap or the headers are off.
//! Refusals before the fault draw answer at once; processed requests wait
//! `latency` (+ jitter, + `slow_delay` when slow) while holding their
//! in-flight place. Processing runs in its own task, so a request whose
//! client gave up is still finished and charged, as at the API.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::Error;
use crate::config::SandboxConfig;
use crate::endpoints::{self, LiveEndpoint};
use crate::envelope;
use crate::faults::{FaultInjector, FaultKind};
use crate::limits::{Admission, InFlight, RateWindow};
use crate::rng::{Rng, combine};
use crate::stats::{LoggedRequest, Recorder, SandboxStats};

/// The per-minute ceiling the account announces with every answer.
const RATE_LIMIT_LIMIT: &str = "x-ratelimit-limit";
/// What is left of it in the current window.
const RATE_LIMIT_REMAINING: &str = "x-ratelimit-remaining";

/// Larger bodies are refused with 40000 (and not read further).
pub(crate) const MAX_BODY_BYTES: usize = 1 << 20;

/// How long [`Sandbox::shutdown`] waits for answers under way.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Paths and targets in logs and errors are cut to this many characters.
const SHOWN_CHARS: usize = 200;

/// A running sandbox. Stop it with [`Sandbox::shutdown`]; dropping it
/// also stops the server, without waiting.
#[derive(Debug)]
pub struct Sandbox {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// State shared by every request.
#[derive(Debug)]
struct Shared {
    config: SandboxConfig,
    endpoints: HashMap<String, Arc<dyn LiveEndpoint>>,
    window: RateWindow,
    in_flight: InFlight,
    faults: FaultInjector,
    recorder: Recorder,
    /// Authorized POSTs so far, for [`SandboxConfig::account_refusal`].
    authorized: AtomicU64,
}

impl Sandbox {
    /// Binds `addr` (port 0 picks a free one) and serves until
    /// [`Sandbox::shutdown`].
    pub async fn start(config: SandboxConfig, addr: SocketAddr) -> std::io::Result<Sandbox> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let endpoints = endpoints::registry()
            .into_iter()
            .map(|e| (endpoints::url_path(e.as_ref()), Arc::from(e)))
            .collect();
        let shared = Arc::new(Shared {
            window: RateWindow::new(
                config.requests_per_minute,
                config.rate_window,
                config.rate_window_kind,
            ),
            in_flight: InFlight::new(config.max_in_flight),
            faults: FaultInjector::new(&config.faults, config.storm_length),
            recorder: Recorder::new(config.keep_log),
            authorized: AtomicU64::new(0),
            endpoints,
            config,
        });
        let router = Router::new()
            .fallback(dispatch)
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async {
                // A dropped sender stops the server too.
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                warn!(%addr, error = %e, "sandbox server stopped");
            }
        });
        debug!(%addr, "sandbox listening");
        Ok(Sandbox {
            addr,
            shared,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT` (the bound address; loopback when bound to
    /// all interfaces), without a trailing slash.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The counters so far.
    pub fn stats(&self) -> SandboxStats {
        self.shared.recorder.stats()
    }

    /// Every POST answered so far, in order of answer; empty unless
    /// `keep_log` is on.
    pub fn log(&self) -> Vec<LoggedRequest> {
        self.shared.recorder.log()
    }

    /// Stops accepting connections and waits (up to 10 s) for the answers
    /// under way.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut server) = self.server.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
            {
                warn!(addr = %self.addr, "sandbox connections still open after the grace period; closing them");
                server.abort();
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `s` cut to [`SHOWN_CHARS`] characters.
fn shown(s: &str) -> String {
    s.chars().take(SHOWN_CHARS).collect()
}

/// Every request of every path and method comes here.
async fn dispatch(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let is_post = parts.method == Method::POST;
    if is_post {
        shared.recorder.received();
    }
    let key = match path.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped,
        _ => path,
    };
    let Some(endpoint) = shared.endpoints.get(key).cloned() else {
        return shared.refuse(is_post, Error::NotFound { path: shown(path) }, None);
    };
    let path = shown(key);
    if !is_post {
        let method = shown(parts.method.as_str());
        return shared.refuse(false, Error::MethodNotAllowed { path, method }, None);
    }
    if !authorized(&parts.headers, &shared.config) {
        return shared.refuse(true, Error::Unauthorized { path }, None);
    }
    // Read before the limits, so that a refused request leaves the
    // connection reusable; the size cap bounds memory.
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES).await;
    let (response, admission) =
        authorized_post(Arc::clone(&shared), endpoint, path, body, arrived).await;
    shared.with_quota(response, admission)
}

/// An authorized POST past its account's checks, limits and faults: the
/// answer, and what the window said to it (for the rate-limit headers).
async fn authorized_post(
    shared: Arc<Shared>,
    endpoint: Arc<dyn LiveEndpoint>,
    path: String,
    body: std::result::Result<Bytes, axum::Error>,
    arrived: Instant,
) -> (Response, Admission) {
    let target = || {
        shared
            .recorder
            .keeps_log()
            .then(|| body.as_ref().ok().and_then(|b| peek_target(b)))
            .flatten()
    };
    if let Some(refusal) = shared.config.account_refusal {
        if shared.authorized.fetch_add(1, Ordering::Relaxed) >= refusal.after {
            let error = Error::AccountRefused {
                path,
                code: refusal.status_code,
            };
            let admission = shared.window.peek(Instant::now());
            return (shared.refuse(true, error, target()), admission);
        }
    }
    let Some(slot) = shared.in_flight.enter() else {
        let error = Error::TooManyInFlight {
            path,
            limit: shared.config.max_in_flight,
        };
        let admission = shared.window.peek(Instant::now());
        return (shared.refuse(true, error, target()), admission);
    };
    let admission = shared.window.admit(Instant::now());
    if !admission.admitted {
        drop(slot);
        let error = Error::RateLimited {
            path,
            limit: shared.config.requests_per_minute,
            window: shared.config.rate_window,
        };
        return (shared.refuse(true, error, target()), admission);
    }
    let Ok(body) = body else {
        let reason =
            format!("The request body must be a JSON array of at most {MAX_BODY_BYTES} bytes.");
        return (
            shared.refuse(true, Error::BadRequest { path, reason }, None),
            admission,
        );
    };
    let work = tokio::spawn(async move {
        let answer = shared
            .process(endpoint.as_ref(), path, &body, arrived)
            .await;
        drop(slot);
        answer
    });
    let response = work.await.unwrap_or_else(|e| {
        warn!(error = %e, "sandbox request task failed");
        internal_server_error()
    });
    (response, admission)
}

impl Shared {
    /// Answers a refused request with its envelope (nothing charged) and
    /// counts it when it was a POST.
    fn refuse(&self, counted: bool, error: Error, target: Option<String>) -> Response {
        let code = error.status_code();
        let http = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::OK);
        let tasks_error = u32::from(matches!(error, Error::BadRequest { .. }));
        let body = envelope::refusal(code, &error.status_message(), tasks_error, Duration::ZERO);
        if counted {
            let path = match &error {
                Error::NotFound { path }
                | Error::MethodNotAllowed { path, .. }
                | Error::Unauthorized { path }
                | Error::BadRequest { path, .. }
                | Error::RateLimited { path, .. }
                | Error::TooManyInFlight { path, .. }
                | Error::AccountRefused { path, .. } => path.clone(),
            };
            self.answered(LoggedRequest {
                path,
                target,
                status_code: Some(code),
                cost: 0.0,
                http_status: http.as_u16(),
                fault: None,
                task: None,
            });
        }
        let mut response = json_response(http, body.to_string().into_bytes());
        match error {
            Error::Unauthorized { .. } => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"DataForSEO API\""),
                );
            }
            Error::MethodNotAllowed { .. } => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            _ => {}
        }
        response
    }

    /// A request past auth and limits: parse, draw the fault, wait, answer.
    async fn process(
        &self,
        endpoint: &dyn LiveEndpoint,
        path: String,
        body: &Bytes,
        arrived: Instant,
    ) -> Response {
        let task = match single_task(body) {
            Ok(task) => task,
            Err(reason) => {
                let target = self
                    .recorder
                    .keeps_log()
                    .then(|| peek_target(body))
                    .flatten();
                return self.refuse(true, Error::BadRequest { path, reason }, target);
            }
        };
        let target = task.get("target").and_then(Value::as_str).map(shown);
        let sequence = self.faults.next_sequence();
        let mut rng = Rng::new(combine(self.config.seed, sequence));
        let fault = self.faults.draw(rng.f64());
        let mut log = LoggedRequest {
            path,
            target,
            status_code: None,
            cost: 0.0,
            http_status: 200,
            fault,
            task: self
                .recorder
                .keeps_log()
                .then(|| serde_json::to_string(&task).ok())
                .flatten(),
        };

        if fault == Some(FaultKind::RateLimitStorm) {
            let message = "Rate-limit exceeded. Please slow down your requests.";
            log.status_code = Some(40202);
            self.answered(log);
            let body = envelope::refusal(40202, message, 0, arrived.elapsed());
            return json_response(StatusCode::OK, body.to_string().into_bytes());
        }

        let mut delay = self.config.latency + self.config.latency_jitter.mul_f64(rng.f64());
        if fault == Some(FaultKind::Slow) {
            delay += self.config.faults.slow_delay;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }

        match fault {
            Some(FaultKind::Http500) => {
                log.http_status = 500;
                self.answered(log);
                return internal_server_error();
            }
            Some(FaultKind::Envelope50000) => {
                log.status_code = Some(50000);
                self.answered(log);
                let body = envelope::refusal(50000, "Internal Error.", 0, arrived.elapsed());
                return json_response(StatusCode::OK, body.to_string().into_bytes());
            }
            _ => {}
        }

        let answer = endpoint.answer(self.config.seed, &task);
        let id = envelope::task_id(self.config.seed, sequence);
        let mut bytes = envelope::single_task(endpoint, &task, &answer, &id, arrived.elapsed());
        if fault == Some(FaultKind::TruncatedJson) {
            // Charged all the same: the work was done, the delivery broke.
            bytes.truncate(bytes.len() / 2);
        }
        log.status_code = Some(answer.status_code);
        log.cost = answer.cost;
        self.answered(log);
        json_response(StatusCode::OK, bytes)
    }

    /// `response` with `X-RateLimit-Limit` and `X-RateLimit-Remaining`
    /// per minute (see [`SandboxConfig::rate_limit_headers`]), when the
    /// account has a cap and the headers are on.
    fn with_quota(&self, mut response: Response, admission: Admission) -> Response {
        if !self.config.rate_limit_headers || !self.window.is_capped() {
            return response;
        }
        let per_minute = |n: u32| {
            let window = self.config.rate_window.as_secs_f64();
            let scaled = if window > 0.0 {
                (f64::from(n) * 60.0 / window).floor()
            } else {
                f64::from(n)
            };
            HeaderValue::from(scaled.min(f64::from(u32::MAX)) as u32)
        };
        let headers = response.headers_mut();
        headers.insert(
            RATE_LIMIT_LIMIT,
            per_minute(self.config.requests_per_minute),
        );
        headers.insert(RATE_LIMIT_REMAINING, per_minute(admission.remaining));
        response
    }

    fn answered(&self, entry: LoggedRequest) {
        debug!(
            path = %entry.path,
            target = entry.target.as_deref().unwrap_or(""),
            http_status = entry.http_status,
            status_code = entry.status_code,
            cost = entry.cost,
            fault = ?entry.fault,
            "sandbox answered"
        );
        self.recorder.answered(entry);
    }
}

/// Whether the request carries the account's Basic-auth credentials.
fn authorized(headers: &HeaderMap, config: &SandboxConfig) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = STANDARD.decode(token.trim()) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|b| *b == b':') else {
        return false;
    };
    let (login, password) = (&decoded[..colon], &decoded[colon + 1..]);
    // Both compared whole, whichever differs.
    same_bytes(login, config.login.as_bytes()) & same_bytes(password, config.password.as_bytes())
}

/// Equality that does not stop at the first differing byte.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The one task of a live request, or why the body is not one.
fn single_task(body: &[u8]) -> std::result::Result<Map<String, Value>, String> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Err("Invalid JSON. The request body must be a JSON array of tasks.".into());
    };
    let Value::Array(mut tasks) = value else {
        return Err("The request body must be a JSON array of tasks.".into());
    };
    match (tasks.pop(), tasks.is_empty()) {
        (Some(Value::Object(task)), true) => Ok(task),
        (Some(_), true) => Err("A task must be a JSON object.".into()),
        (None, _) => Err("The request contains no task.".into()),
        (Some(_), false) => Err("You can set only one task at a time.".into()),
    }
}

/// The `target` of the first task, for the log of a refused request.
fn peek_target(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get(0)?.get("target")?.as_str().map(shown)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from(body),
    )
        .into_response()
}

fn internal_server_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        "Internal Server Error",
    )
        .into_response()
}

#[cfg(test)]
mod tests;
