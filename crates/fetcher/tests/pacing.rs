//! An account slower than configured loses nothing: the fetcher against an
//! imitation of the API that allows 1/30 of the configured rate, in paused
//! time (five simulated minutes take about a second).
//!
//! The imitation speaks just enough HTTP/1.1 for the fetcher's client and
//! counts requests in a one-minute window, rolling or fixed (no source says
//! which the API uses), with or without the `X-RateLimit-Limit` /
//! `X-RateLimit-Remaining` headers. In every combination every request
//! succeeds (rate-limit answers use up no attempt), after the first minute
//! fewer than 5 % of the requests are refused with 40202, and the account's
//! rate is used to at least 90 %.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backlinks_fetcher::{Fetcher, FetcherConfig, RetryPolicy};
use backlinks_model::{Endpoint, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the pipeline is configured to send, and what the account allows.
const CONFIGURED: u32 = 1800;
const ALLOWED: usize = 60;
const WINDOW: Duration = Duration::from_secs(60);
const LATENCY: Duration = Duration::from_millis(50);
const RUN: Duration = Duration::from_secs(300);
const MAX_IN_FLIGHT: u32 = 30;
/// More callers than places in flight, as the engine has.
const CALLERS: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Rolling,
    Fixed,
}

/// The imitated account: its window and what arrived.
struct Account {
    kind: Window,
    headers: bool,
    /// Arrivals refused before the window is asked (alternately 40202 and
    /// 40209), whatever it holds.
    refuse_first: usize,
    start: Instant,
    state: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Rolling: admissions of the last minute.
    admitted: VecDeque<Instant>,
    /// Fixed: the current window (minutes since the start) and its count.
    window: u64,
    count: usize,
    /// Every arrival: when (since the start), and whether it was admitted.
    log: Vec<(Duration, bool)>,
}

impl Account {
    /// Counts a request arriving now: admitted or not, and how many more
    /// the window admits.
    fn arrive(&self) -> (bool, usize) {
        let now = Instant::now();
        let mut counts = self.state.lock().unwrap();
        if counts.log.len() < self.refuse_first {
            counts.log.push((now.duration_since(self.start), false));
            return (false, ALLOWED);
        }
        let used = match self.kind {
            Window::Rolling => {
                while counts
                    .admitted
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= WINDOW)
                {
                    counts.admitted.pop_front();
                }
                counts.admitted.len()
            }
            Window::Fixed => {
                let window = now.duration_since(self.start).as_secs() / WINDOW.as_secs();
                if window != counts.window {
                    counts.window = window;
                    counts.count = 0;
                }
                counts.count
            }
        };
        let admitted = used < ALLOWED;
        if admitted {
            match self.kind {
                Window::Rolling => counts.admitted.push_back(now),
                Window::Fixed => counts.count += 1,
            }
        }
        counts.log.push((now.duration_since(self.start), admitted));
        (admitted, ALLOWED - used - usize::from(admitted))
    }
}

const OK: &str = r#"{"version":"0.1","status_code":20000,"status_message":"Ok.","cost":0.02,"tasks_count":1,"tasks_error":0,"tasks":[{"id":"t","status_code":20000,"status_message":"Ok.","cost":0.02,"result_count":0,"result":[]}]}"#;
const LIMITED: &str = r#"{"version":"0.1","status_code":40202,"status_message":"Rate-limit exceeded.","cost":0,"tasks_count":0,"tasks_error":0,"tasks":null}"#;
const IN_FLIGHT: &str = r#"{"version":"0.1","status_code":40209,"status_message":"Too many requests in flight.","cost":0,"tasks_count":0,"tasks_error":0,"tasks":null}"#;

async fn serve(listener: TcpListener, account: Arc<Account>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(connection(stream, Arc::clone(&account)));
    }
}

/// One keep-alive connection: requests in turn, each answered after
/// [`LATENCY`] when admitted, at once when refused.
async fn connection(mut stream: TcpStream, account: Arc<Account>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().expect("a content length"));
        while buf.len() < head_end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        let (admitted, remaining) = account.arrive();
        let arrivals = account.state.lock().unwrap().log.len();
        let body = if admitted {
            tokio::time::sleep(LATENCY).await;
            OK
        } else if arrivals <= account.refuse_first && arrivals % 2 == 0 {
            IN_FLIGHT
        } else {
            LIMITED
        };
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        if account.headers {
            answer.push_str(&format!(
                "x-ratelimit-limit: {ALLOWED}\r\nx-ratelimit-remaining: {remaining}\r\n"
            ));
        }
        answer.push_str("\r\n");
        answer.push_str(body);
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// What one run came to.
struct Outcome {
    /// Arrivals at the account: since its start, admitted or not.
    log: Vec<(Duration, bool)>,
    /// Requests whose result was not a success, with why.
    failures: Vec<String>,
    successes: usize,
    announced: Option<u32>,
    rate_limited: u64,
}

/// [`CALLERS`] callers post for [`RUN`] against the account, then finish
/// what they started.
/// The account served on 127.0.0.1, a fetcher for it with `retry`, and
/// the tasks to abort at the end (the server and a ticker).
async fn setup(
    account: Account,
    retry: RetryPolicy,
    cancel: CancellationToken,
) -> (Arc<Account>, Arc<Fetcher>, [tokio::task::JoinHandle<()>; 2]) {
    // Paused time jumps to the next timer when the runtime is idle, also
    // while bytes are on their way through the loopback device: a timer
    // every millisecond keeps such a jump that short.
    let ticker = tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let account = Arc::new(account);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(serve(listener, Arc::clone(&account)));
    let fetcher = Fetcher::new(
        FetcherConfig {
            base_url,
            login: "login".into(),
            password: Secret::new("password"),
            requests_per_minute: CONFIGURED,
            max_in_flight: MAX_IN_FLIGHT,
            timeout: Duration::from_secs(180),
            retry,
        },
        cancel,
    )
    .unwrap();
    (account, Arc::new(fetcher), [server, ticker])
}

fn account(kind: Window, headers: bool, refuse_first: usize) -> Account {
    Account {
        kind,
        headers,
        refuse_first,
        start: Instant::now(),
        state: Mutex::new(Counts::default()),
    }
}

async fn run(kind: Window, headers: bool) -> Outcome {
    let (account, fetcher, [server, ticker]) = setup(
        account(kind, headers, 0),
        RetryPolicy::default(),
        CancellationToken::new(),
    )
    .await;
    let stop = Instant::now() + RUN;
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let fetcher = Arc::clone(&fetcher);
            tokio::spawn(async move {
                let (mut successes, mut failures) = (0, Vec::new());
                let mut n = 0;
                while Instant::now() < stop {
                    let target = format!("c{caller}-{n}.example.com");
                    n += 1;
                    let task = serde_json::json!({ "target": target });
                    let exchange = fetcher.post(Endpoint::Summary, &target, 0, &task).await;
                    match exchange.result {
                        Ok(_) => successes += 1,
                        Err(e) => failures.push(format!("{target}: {e}")),
                    }
                }
                (successes, failures)
            })
        })
        .collect();
    let (mut successes, mut failures) = (0, Vec::new());
    for caller in callers {
        let (s, f) = caller.await.unwrap();
        successes += s;
        failures.extend(f);
    }
    server.abort();
    ticker.abort();
    let stats = fetcher.stats();
    let log = std::mem::take(&mut account.state.lock().unwrap().log);
    Outcome {
        log,
        failures,
        successes,
        announced: stats.announced_limit,
        rate_limited: stats.rate_limited,
    }
}

/// Runs and checks one combination; returns the outcome for more checks.
async fn converges(kind: Window, headers: bool) -> Outcome {
    let outcome = run(kind, headers).await;
    let label = format!("{kind:?} window, headers {headers}");
    let log = &outcome.log;
    assert!(
        outcome.failures.is_empty(),
        "{label}: {} requests failed: {:?}",
        outcome.failures.len(),
        &outcome.failures[..outcome.failures.len().min(5)]
    );
    let refused = log.iter().filter(|(_, ok)| !ok).count();
    let admitted = log.len() - refused;
    assert_eq!(
        admitted, outcome.successes,
        "{label}: every admission is a success"
    );
    assert_eq!(refused as u64, outcome.rate_limited, "{label}");

    // After the first minute: few refusals, and the account's rate used.
    let later: Vec<bool> = log
        .iter()
        .filter(|(at, _)| *at >= WINDOW && *at < RUN)
        .map(|(_, ok)| *ok)
        .collect();
    let later_refused = later.iter().filter(|ok| !**ok).count();
    let later_admitted = later.len() - later_refused;
    let share = later_refused as f64 / later.len() as f64;
    let minutes = (RUN - WINDOW).as_secs_f64() / 60.0;
    let achieved = later_admitted as f64 / minutes;
    let per_minute: Vec<usize> = (0..RUN.as_secs() / 60)
        .map(|m| {
            log.iter()
                .filter(|(at, ok)| *ok && at.as_secs() / 60 == m)
                .count()
        })
        .collect();
    eprintln!(
        "{label}: {} requests, {refused} refused ({later_refused} after the first minute, {:.1} %), \
         {achieved:.1} taken a minute after the first ({:.1} % of {ALLOWED}); taken per minute {per_minute:?}",
        log.len(),
        share * 100.0,
        achieved / ALLOWED as f64 * 100.0
    );
    assert!(
        share < 0.05,
        "{label}: {later_refused} of {} requests refused after the first minute",
        later.len()
    );
    assert!(
        achieved >= 0.9 * ALLOWED as f64,
        "{label}: only {achieved:.1} requests a minute taken of {ALLOWED}"
    );
    outcome
}

#[tokio::test(start_paused = true)]
async fn announced_limit_rolling_window() {
    let outcome = converges(Window::Rolling, true).await;
    assert_eq!(outcome.announced, Some(ALLOWED as u32));
    // Paced by the headers from the first answer on: never refused.
    assert_eq!(outcome.rate_limited, 0);
}

#[tokio::test(start_paused = true)]
async fn announced_limit_fixed_window() {
    let outcome = converges(Window::Fixed, true).await;
    assert_eq!(outcome.announced, Some(ALLOWED as u32));
    assert_eq!(outcome.rate_limited, 0);
}

#[tokio::test(start_paused = true)]
async fn no_headers_rolling_window() {
    let outcome = converges(Window::Rolling, false).await;
    assert_eq!(outcome.announced, None);
}

#[tokio::test(start_paused = true)]
async fn no_headers_fixed_window() {
    let outcome = converges(Window::Fixed, false).await;
    assert_eq!(outcome.announced, None);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_answers_use_up_no_attempt() {
    // One attempt allowed, twelve refusals (40209 and 40202 in turn) first.
    let retry = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    let (account, fetcher, tasks) = setup(
        account(Window::Rolling, true, 12),
        retry,
        CancellationToken::new(),
    )
    .await;
    let task = serde_json::json!({ "target": "a.com" });
    let exchange = fetcher.post(Endpoint::Summary, "a.com", 0, &task).await;
    assert!(exchange.result.is_ok(), "{:?}", exchange.result);
    assert_eq!(exchange.record.attempts, 13);
    assert_eq!(exchange.announced_limit, Some(ALLOWED as u32));
    let stats = fetcher.stats();
    assert_eq!(
        (
            stats.attempts,
            stats.retries,
            stats.rate_limited,
            stats.too_many_in_flight
        ),
        (13, 12, 6, 6)
    );
    assert_eq!(account.state.lock().unwrap().log.len(), 13);
    tasks.iter().for_each(|t| t.abort());
}

#[tokio::test(start_paused = true)]
async fn only_the_run_stopping_ends_the_wait_of_a_refused_request() {
    let cancel = CancellationToken::new();
    let (account, fetcher, tasks) = setup(
        account(Window::Rolling, false, usize::MAX),
        RetryPolicy::default(),
        cancel.clone(),
    )
    .await;
    let post = {
        let fetcher = Arc::clone(&fetcher);
        tokio::spawn(async move {
            let task = serde_json::json!({ "target": "a.com" });
            fetcher.post(Endpoint::Summary, "a.com", 0, &task).await
        })
    };
    // Ten minutes of refusals: still waiting, at the pace of the probes.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(!post.is_finished());
    let refused = account.state.lock().unwrap().log.len();
    assert!(refused > 6, "{refused}");
    assert!(refused < 600, "{refused} in ten minutes");
    cancel.cancel();
    let exchange = post.await.unwrap();
    assert!(
        matches!(exchange.result, Err(backlinks_fetcher::Error::Cancelled)),
        "{:?}",
        exchange.result
    );
    assert_eq!(u64::from(exchange.record.attempts), refused as u64);
    assert_eq!(exchange.announced_limit, None, "no headers");
    tasks.iter().for_each(|t| t.abort());
}
