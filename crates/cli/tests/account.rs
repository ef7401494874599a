//! Refusals of the account stop the run: the real binary against a sandbox
//! that starts answering 40203 (daily spending limit), 40204 (plan without
//! this API), 40205 / 40206 (duplicate-task limit per hour / day) or 40207
//! (IP not whitelisted) after a few requests. Each run ends with exit code
//! 3 and status `account_error`, says what the API answered and what to
//! do, and sends almost nothing after the first refusal.

mod common;

use std::path::PathBuf;

use backlinks_sandbox::{AccountRefusal, SandboxConfig};
use common::*;

/// Requests served before the account refuses.
const SERVED: u64 = 5;
const MAX_IN_FLIGHT: usize = 4;
const TARGETS: usize = 60;

fn pipeline(dir: &std::path::Path) -> PathBuf {
    let targets: Vec<String> = (0..TARGETS)
        .map(|i| format!("acct{i}.example.com"))
        .collect();
    let body = format!(
        r#"[endpoints.summary]
[api]
requests_per_minute = 6000
max_in_flight = {MAX_IN_FLIGHT}
timeout_secs = 5
retry = {{ max_attempts = 4, initial_backoff_ms = 10, max_backoff_ms = 100 }}
[sinks.parquet]
dir = "data"
[sinks.postgres]
enabled = false
"#
    );
    write_pipeline(&dir.join("account.toml"), "account", &targets, &body)
}

/// Runs the pipeline against a sandbox that refuses with `code` after
/// [`SERVED`] requests; checks the exit code, the status, the message
/// (the API's code and message and `advice`) and that the run stopped at
/// once. Returns stderr for further checks.
async fn the_run_stops_on(code: i64, api_message: &str, advice: &[&str]) -> String {
    let sandbox = sandbox(SandboxConfig {
        keep_log: true,
        account_refusal: Some(AccountRefusal {
            status_code: code,
            after: SERVED,
        }),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline(dir.path());
    let run = backlinks_async(
        vec![
            "run".into(),
            pipeline.to_str().unwrap().into(),
            "--as-of".into(),
            "2026-03-01".into(),
        ],
        api_env(&sandbox),
        dir.path().to_path_buf(),
    )
    .await;
    let (stdout, stderr) = (run.stdout(), run.stderr());
    let shown = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(run.code(), 3, "{code}: {shown}");
    assert!(stdout.contains("account_error"), "{code}: {shown}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: account problem"))
        .unwrap_or_else(|| panic!("{code}: no account problem on stderr: {shown}"));
    assert!(
        error.contains(&format!("the API answered {code} `{api_message}`")),
        "{code}: {error}"
    );
    for words in advice {
        assert!(error.contains(words), "{code}: `{words}` missing: {error}");
    }
    assert!(error.contains("exit code 3"), "{code}: {error}");

    // The run stopped after the first refusal instead of trying every
    // target: only requests already in flight (at most `max_in_flight`
    // but the refused one) can have been sent after it.
    let log = sandbox.log();
    let first = log
        .iter()
        .position(|l| l.status_code == Some(code))
        .unwrap_or_else(|| panic!("{code}: the sandbox never refused: {log:?}"));
    assert_eq!(first as u64, SERVED, "{code}: {log:?}");
    let after = log.len() - first - 1;
    assert!(
        after < MAX_IN_FLIGHT,
        "{code}: {after} requests after the first refusal: {log:?}"
    );
    let stats = sandbox.stats();
    assert_eq!(stats.ok, SERVED, "{code}: {stats:?}");
    assert!(
        stats.requests < SERVED + MAX_IN_FLIGHT as u64 + 1,
        "{code}: {stats:?}"
    );
    sandbox.shutdown().await;
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_spending_limit_stops_the_run_and_says_when_it_resets() {
    let before = chrono::Utc::now().date_naive();
    let stderr = the_run_stops_on(
        40203,
        "Cost limit exceeded. Your account's daily spending limit was reached.",
        &[
            "daily spending limit is reached",
            "resets at 00:00 UTC",
            "raise the limit",
        ],
    )
    .await;
    let after = chrono::Utc::now().date_naive();
    // The next 00:00 UTC after the refusal (a run across midnight may
    // name either day).
    let next = |d: chrono::NaiveDate| format!("next at {} 00:00 UTC", d + chrono::Days::new(1));
    assert!(
        stderr.contains(&next(before)) || stderr.contains(&next(after)),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_without_this_api_stops_the_run() {
    the_run_stops_on(
        40204,
        "Access denied. Your plan does not include this API: activate a subscription to get access.",
        &["plan does not include this API", "subscribe"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hourly_duplicate_task_limit_stops_the_run() {
    the_run_stops_on(
        40205,
        "Duplicate tasks limit per hour exceeded.",
        &["duplicate tasks per hour", "in an hour"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_duplicate_task_limit_stops_the_run() {
    the_run_stops_on(
        40206,
        "Duplicate tasks limit per day exceeded.",
        &["duplicate tasks per day", "tomorrow"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_not_on_the_whitelist_stops_the_run() {
    the_run_stops_on(
        40207,
        "Access denied. Your IP address is not whitelisted.",
        &[
            "IP address is not on the account's whitelist",
            "whitelisted machine",
        ],
    )
    .await;
}
