//! An account slower than configured loses nothing, end to end: the real
//! binary against a sandbox that allows 1/30 of the configured rate and
//! fewer requests in flight than configured, with one attempt per request
//! for faults. The sandbox announces its limit in `X-RateLimit-Limit` and
//! `X-RateLimit-Remaining`; the run paces itself by them and lands every
//! target. (Its window is shortened to 5 s, announced as the per-minute
//! rate it stands for; the convergence over minutes, with and without the
//! headers, under rolling and fixed windows, is tested in paused time in
//! `crates/fetcher/tests/pacing.rs`.)

mod common;

use std::time::{Duration, Instant};

use backlinks_sandbox::SandboxConfig;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_slower_than_configured_loses_nothing() {
    // 10 per 5 s: 120 a minute, announced as such. Two in flight, each
    // answered after 100 ms: at the configured pace the third request is
    // sent before the first answer says the limit, and refused (40209).
    let sandbox = sandbox(SandboxConfig {
        requests_per_minute: 10,
        rate_window: Duration::from_secs(5),
        max_in_flight: 2,
        latency: Duration::from_millis(100),
        keep_log: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<String> = (0..30).map(|i| format!("slow{i}.example.com")).collect();
    // 3600 a minute configured, 8 in flight, and a single attempt: before,
    // the first 40202 or 40209 failed its unit.
    let body = r#"[endpoints.summary]
[api]
requests_per_minute = 3600
max_in_flight = 8
timeout_secs = 5
retry = { max_attempts = 1, initial_backoff_ms = 10, max_backoff_ms = 100 }
[sinks.parquet]
dir = "data"
[sinks.postgres]
enabled = false
"#;
    let pipeline = write_pipeline(&dir.path().join("slow.toml"), "slow", &targets, body);
    let started = Instant::now();
    let run = backlinks_async(
        vec![
            "run".into(),
            pipeline.to_str().unwrap().into(),
            "--as-of".into(),
            "2026-03-01".into(),
            "--log-level".into(),
            "info".into(),
        ],
        api_env(&sandbox),
        dir.path().to_path_buf(),
    )
    .await;
    let took = started.elapsed();
    let shown = format!("stdout:\n{}\nstderr:\n{}", run.stdout(), run.stderr());
    assert_eq!(run.code(), 0, "{shown}");
    assert_eq!(
        parquet_records(&dir.path().join("data"), "summary").len(),
        targets.len(),
        "{shown}"
    );
    let stats = sandbox.stats();
    assert_eq!(stats.ok, targets.len() as u64, "{stats:?}");
    // Paced by the announced limit from the first answers on: the only
    // refusals are of the requests sent before them, and each of those
    // was sent again although it had no attempt left.
    let refused = stats.rate_limited + stats.too_many_in_flight;
    assert!(
        (1..=8).contains(&refused),
        "{refused} refusals: {stats:?}\n{shown}"
    );
    assert_eq!(stats.requests, targets.len() as u64 + refused, "{stats:?}");
    assert!(
        run.stderr().contains(
            "the API allows 120 requests a minute, fewer than api.requests_per_minute (3600)"
        ),
        "{shown}"
    );
    // 30 requests at 120 a minute take 15 s; far less would have broken
    // the limit, far more would mean the pace collapsed.
    assert!(took > Duration::from_secs(10), "{took:?}");
    assert!(took < Duration::from_secs(45), "{took:?}\n{shown}");
    sandbox.shutdown().await;
}
