//! Never lose data, never pay twice: the real binary is killed, resumed,
//! replayed, capped and stopped against the sandbox, and both sinks are
//! compared with an uninterrupted run.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use backlinks_sandbox::{SUMMARY_TASK_COST, Sandbox, SandboxConfig, backlinks_total};
use common::*;
use serde_json::{Value, json};

const SNAPSHOT: &str = "2026-02-03";
const DATA_SEED: u64 = 11;
const MAX_IN_FLIGHT: usize = 4;
/// How many kill points the crash test tries (one seed each).
const CRASH_SEEDS: u64 = 24;
const DATASETS: [&str; 4] = [
    "summary",
    "summary_breakdown",
    "backlinks",
    "backlink_redirects",
];

/// A dozen targets: some with a few thousand backlinks (several pages),
/// some with a handful, one without results.
fn crash_targets() -> Vec<String> {
    let mut t: Vec<String> = [
        "items2600.alpha.com",
        "items1800.beta.org",
        "items3000.gamma.net",
        "items700.delta.io",
        "items40.epsilon.com",
        "items0.zeta.org",
        "noresults.eta.com",
    ]
    .map(String::from)
    .to_vec();
    t.extend((0..5).map(|i| format!("items{}.site{i}.example.com", 300 + 250 * i)));
    t
}

/// Writes `resume.toml` into `dir`: the targets, `endpoints` (a TOML
/// fragment), Parquet under `data`, Postgres on, state under `state`.
fn pipeline(dir: &Path, targets: &[String], endpoints: &str, extra: &str) -> PathBuf {
    let body = format!(
        r#"{endpoints}
[api]
requests_per_minute = 60000
max_in_flight = {MAX_IN_FLIGHT}
timeout_secs = 10
retry = {{ max_attempts = 4, initial_backoff_ms = 10, max_backoff_ms = 100 }}
{extra}
[sinks.parquet]
dir = "data"
[sinks.postgres]
enabled = true
"#
    );
    write_pipeline(&dir.join("resume.toml"), "resume", targets, &body)
}

const BOTH: &str = "[endpoints.summary]\n[endpoints.backlinks]\nlimit = 250\n";
const SUMMARY: &str = "[endpoints.summary]\n";

fn run_args(pipeline: &Path, more: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["run", pipeline.to_str().unwrap(), "--as-of", SNAPSHOT]
        .map(String::from)
        .to_vec();
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

fn env_for(sandbox: &Sandbox, db: &str) -> Vec<(String, String)> {
    let mut env = api_env(sandbox);
    env.push(("DATABASE_URL".into(), db.into()));
    env
}

fn spawn(args: &[String], env: &[(String, String)], cwd: &Path) -> Child {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    backlinks_command(&args, &env, cwd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// Waits for a spawned run off the runtime's threads.
async fn finish(child: Child) -> Run {
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    Run { output }
}

/// Polls until `check` holds (at most 30 s).
async fn wait_for(what: &str, check: impl Fn() -> bool) {
    for _ in 0..3000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn state_runs(dir: &Path) -> PathBuf {
    dir.join("state/runs/resume")
        .join(format!("snapshot_date={SNAPSHOT}"))
}

fn state_archive(dir: &Path) -> PathBuf {
    dir.join("state/archive/resume")
        .join(format!("snapshot_date={SNAPSHOT}"))
}

/// The manifests of the runs of the day, oldest first.
fn manifests(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state_runs(dir))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.ends_with(".json") && !name.starts_with('.')
    });
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// A pseudo-random kill delay in 50..1500 ms derived from the seed.
fn kill_delay(seed: u64) -> Duration {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Duration::from_millis(50 + z % 1450)
}

async fn crash_sandbox() -> Sandbox {
    sandbox(SandboxConfig {
        seed: DATA_SEED,
        keep_log: true,
        latency: Duration::from_millis(40),
        latency_jitter: Duration::from_millis(20),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_resumes_to_the_same_rows_without_paying_twice() {
    let targets = crash_targets();

    // The reference: one uninterrupted run.
    let reference = crash_sandbox().await;
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_db = scratch_database("resume_ref").await;
    let ref_pipeline = pipeline(ref_dir.path(), &targets, BOTH, "");
    let run = backlinks_async(
        run_args(&ref_pipeline, &[]),
        env_for(&reference, &ref_db),
        ref_dir.path().to_path_buf(),
    )
    .await;
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout(), run.stderr());
    let mut want = HashMap::new();
    for dataset in DATASETS {
        want.insert(
            dataset,
            comparable_records(&ref_db, &ref_dir.path().join("data"), dataset).await,
        );
    }
    assert!(want["backlinks"].0.len() > 8000, "a run of some size");
    let reference_requests = reference.log().len();
    reference.shutdown().await;

    let mut killed_mid_run = 0;
    let mut reused = 0;
    for seed in 0..CRASH_SEEDS {
        let sandbox = crash_sandbox().await;
        let dir = tempfile::tempdir().unwrap();
        let db = scratch_database("resume").await;
        let path = pipeline(dir.path(), &targets, BOTH, "");
        let args = run_args(&path, &[]);
        let env = env_for(&sandbox, &db);

        let mut child = spawn(&args, &env, dir.path());
        tokio::time::sleep(kill_delay(seed)).await;
        let was_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        let killed = finish(child).await;
        if was_running {
            killed_mid_run += 1;
            assert_eq!(killed.code(), -1, "seed {seed}: killed by SIGKILL");
        }
        let answered_before = sandbox.log().len();

        let resumed = backlinks_async(args.clone(), env.clone(), dir.path().to_path_buf()).await;
        assert_eq!(
            resumed.code(),
            0,
            "seed {seed}\n{}\n{}",
            resumed.stdout(),
            resumed.stderr()
        );
        if resumed.stdout().contains("answers reused from the archive") {
            reused += 1;
        }

        for dataset in DATASETS {
            let got = comparable_records(&db, &dir.path().join("data"), dataset).await;
            let expected = &want[dataset];
            assert!(
                got.0 == expected.0,
                "seed {seed}: postgres {dataset} differs from the uninterrupted run ({} rows, expected {})",
                got.0.len(),
                expected.0.len()
            );
            assert!(
                got.1 == expected.1,
                "seed {seed}: parquet {dataset} differs from the uninterrupted run ({} rows, expected {})",
                got.1.len(),
                expected.1.len()
            );
        }

        // Paid twice: a request answered with a charge in both runs. Only
        // answers in flight at the kill (served, never archived) may be.
        let log = sandbox.log();
        let mut charged: HashMap<(String, String), usize> = HashMap::new();
        for entry in log.iter().filter(|e| e.cost > 0.0) {
            let task = entry
                .task
                .clone()
                .expect("processed requests carry their task");
            *charged.entry((entry.path.clone(), task)).or_default() += 1;
        }
        let twice: Vec<_> = charged.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.len() <= MAX_IN_FLIGHT,
            "seed {seed}: {} requests paid twice (at most {MAX_IN_FLIGHT} may have been in flight): {twice:?}",
            twice.len()
        );
        assert!(
            log.len() <= reference_requests + MAX_IN_FLIGHT,
            "seed {seed}: {} requests served for a run of {reference_requests} ({answered_before} before the kill)",
            log.len()
        );
        sandbox.shutdown().await;
    }
    assert!(
        killed_mid_run >= 10,
        "only {killed_mid_run} of {CRASH_SEEDS} kills hit a running run"
    );
    assert!(
        reused >= 10,
        "only {reused} resumed runs reused archived answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reloads_the_archive_without_any_request() {
    let sandbox = crash_sandbox().await;
    let targets: Vec<String> = crash_targets().into_iter().take(5).collect();
    let dir = tempfile::tempdir().unwrap();
    let db = scratch_database("replay_src").await;
    let path = pipeline(dir.path(), &targets, BOTH, "");
    let run = backlinks_async(
        run_args(&path, &[]),
        env_for(&sandbox, &db),
        dir.path().to_path_buf(),
    )
    .await;
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let served = sandbox.stats().requests;

    // Into a fresh database and data directory, with no credentials and no API.
    let fresh = scratch_database("replay_dst").await;
    let replay = backlinks_async(
        vec![
            "replay".into(),
            path.to_str().unwrap().into(),
            "--as-of".into(),
            SNAPSHOT.into(),
        ],
        vec![
            ("DATABASE_URL".into(), fresh.clone()),
            ("BACKLINKS__SINKS__PARQUET__DIR".into(), "replayed".into()),
        ],
        dir.path().to_path_buf(),
    )
    .await;
    assert_eq!(replay.code(), 0, "{}\n{}", replay.stdout(), replay.stderr());
    assert!(
        replay.stdout().contains("answers reused from the archive"),
        "{}",
        replay.stdout()
    );
    assert_eq!(sandbox.stats().requests, served, "replay sent no request");
    for dataset in DATASETS {
        let original = comparable_records(&db, &dir.path().join("data"), dataset).await;
        let replayed = comparable_records(&fresh, &dir.path().join("replayed"), dataset).await;
        assert!(!original.0.is_empty() || dataset == "backlink_redirects");
        assert!(original.0 == replayed.0, "postgres {dataset} differs");
        assert!(original.1 == replayed.1, "parquet {dataset} differs");
    }
    // The ledger says where the answers came from, and nothing was paid.
    let requests = postgres_records(&fresh, "requests").await;
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|r| r["replayed"] == json!(true) && r["cost"].as_f64() == Some(0.0)),
        "{:?}",
        requests.first()
    );
    let runs = postgres_records(&fresh, "runs").await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["replayed"], json!(requests.len()));
    assert_eq!(runs[0]["cost_usd"].as_f64(), Some(0.0));

    // A run id that archived nothing is refused.
    let none = backlinks_async(
        vec![
            "replay".into(),
            path.to_str().unwrap().into(),
            "--as-of".into(),
            SNAPSHOT.into(),
            "--run-id".into(),
            "no-such-run".into(),
        ],
        vec![("DATABASE_URL".into(), fresh.to_string())],
        dir.path().to_path_buf(),
    )
    .await;
    assert_eq!(none.code(), 2, "{}", none.stderr());
    assert!(
        none.stderr().contains("nothing to replay"),
        "{}",
        none.stderr()
    );
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_runs_only_the_dead_letters() {
    let sandbox = crash_sandbox().await;
    let targets: Vec<String> = ["a.example.com", "badrequest.example.com", "b.example.org"]
        .map(String::from)
        .to_vec();
    let dir = tempfile::tempdir().unwrap();
    let db = scratch_database("retry").await;
    let path = pipeline(dir.path(), &targets, SUMMARY, "");
    let env = env_for(&sandbox, &db);

    let nothing = backlinks_async(
        run_args(&path, &["--retry-failed"]),
        env.clone(),
        dir.path().to_path_buf(),
    )
    .await;
    assert_eq!(nothing.code(), 2, "{}", nothing.stderr());
    assert!(
        nothing.stderr().contains("--retry-failed: no run"),
        "{}",
        nothing.stderr()
    );

    let first = backlinks_async(run_args(&path, &[]), env.clone(), dir.path().to_path_buf()).await;
    assert_eq!(first.code(), 1, "{}", first.stderr());
    assert!(
        first.stdout().contains("2 ok, 1 failed"),
        "{}",
        first.stdout()
    );
    assert!(
        first.stdout().contains("--retry-failed"),
        "{}",
        first.stdout()
    );
    let before = sandbox.stats().requests;
    assert_eq!(before, 3);

    let retry = backlinks_async(
        run_args(&path, &["--retry-failed"]),
        env,
        dir.path().to_path_buf(),
    )
    .await;
    assert_eq!(retry.code(), 1, "{}", retry.stderr());
    assert!(
        retry.stdout().contains("0 ok, 1 failed"),
        "{}",
        retry.stdout()
    );
    assert_eq!(sandbox.stats().requests, before + 1, "only the failed unit");
    let last = sandbox.log().pop().unwrap();
    assert_eq!(last.target.as_deref(), Some("badrequest.example.com"));
    let all = manifests(dir.path());
    assert_eq!(all.len(), 2);
    assert_eq!(all[1]["command"], json!("run --retry-failed"));
    assert_eq!(all[1]["units_total"], json!(1));
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spend_cap_stops_dispatching_and_exits_4() {
    let sandbox = crash_sandbox().await;
    let targets: Vec<String> = (0..8).map(|i| format!("t{i}.example.com")).collect();
    let dir = tempfile::tempdir().unwrap();
    let db = scratch_database("budget").await;
    let path = pipeline(dir.path(), &targets, SUMMARY, "");
    // Between 3 and 4 requests of summary/live.
    let cap = SUMMARY_TASK_COST * 3.5;
    let run = backlinks_async(
        run_args(&path, &["--max-cost", &cap.to_string()]),
        env_for(&sandbox, &db),
        dir.path().to_path_buf(),
    )
    .await;
    assert_eq!(run.code(), 4, "{}\n{}", run.stdout(), run.stderr());
    let message = format!(
        "spend cap of ${cap:.5} reached: ${:.5} spent; 5 units not run",
        SUMMARY_TASK_COST * 3.0
    );
    assert!(run.stderr().contains(&message), "{}", run.stderr());
    assert!(
        run.stdout().contains("budget_exhausted"),
        "{}",
        run.stdout()
    );

    let requests = postgres_records(&db, "requests").await;
    let spent: f64 = requests.iter().map(|r| r["cost"].as_f64().unwrap()).sum();
    assert!(spent <= cap, "{spent} > {cap}");
    assert!((spent - sandbox.stats().cost_charged).abs() < 1e-9);
    assert_eq!(sandbox.stats().requests, 3);
    let runs = postgres_records(&db, "runs").await;
    assert_eq!(runs[0]["status"], json!("budget_exhausted"));
    assert!((runs[0]["cost_usd"].as_f64().unwrap() - spent).abs() < 1e-9);
    // What was paid for landed, whole, in both sinks.
    let data = dir.path().join("data");
    assert_eq!(postgres_records(&db, "summary").await.len(), 3);
    assert_eq!(parquet_records(&data, "summary").len(), 3);
    assert!(leftover_temp_files(&data).is_empty());

    // Raising the cap and running again continues: the 3 paid answers are
    // reused, the other 5 fetched.
    let again = backlinks_async(
        run_args(&path, &["--max-cost", "1"]),
        env_for(&sandbox, &db),
        dir.path().to_path_buf(),
    )
    .await;
    assert_eq!(again.code(), 0, "{}", again.stderr());
    assert!(
        again.stdout().contains("3 answers reused from the archive"),
        "{}",
        again.stdout()
    );
    assert_eq!(sandbox.stats().requests, 8);
    assert_eq!(postgres_records(&db, "summary").await.len(), 8);
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimate_prints_requests_and_cost_without_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<String> = (0..4).map(|i| format!("t{i}.example.com")).collect();
    let path = pipeline(
        dir.path(),
        &targets,
        "[endpoints.summary]\n[endpoints.backlinks]\nlimit = 500\nmax_items = 1200\n",
        "[budget]\nmax_cost_usd = 2.5\n",
    );
    let run = backlinks(&["estimate", path.to_str().unwrap()], &[], dir.path());
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let out = run.stdout();
    for needle in [
        "4 targets",
        "summary    4 requests, $0.08012",
        // 4 × (0.02 + 500 × 0.00003) at least; 12 pages and 4 × 1200 items at most.
        "backlinks  4 to 12 requests",
        "$0.14000 to $0.38400",
        "depends on each target's total_count",
        "total      $0.22012 to $0.46412",
        "budget.max_cost_usd = $2.50000",
    ] {
        assert!(out.contains(needle), "{needle} missing in\n{out}");
    }

    let open = pipeline(dir.path(), &targets, BOTH, "");
    let run = backlinks(&["estimate", open.to_str().unwrap()], &[], dir.path());
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(
        run.stdout().contains("at least 4 requests") && run.stdout().contains("no upper bound"),
        "{}",
        run.stdout()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_runs_archive_failures_and_a_crashed_run() {
    let sandbox = sandbox(SandboxConfig {
        seed: DATA_SEED,
        latency: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let mut targets: Vec<String> = (0..40).map(|i| format!("t{i}.example.com")).collect();
    targets.push("badrequest.example.com".into());
    let dir = tempfile::tempdir().unwrap();
    let db = scratch_database("status").await;
    let path = pipeline(dir.path(), &targets[..3], SUMMARY, "");
    let env = env_for(&sandbox, &db);
    let status = |dir: PathBuf, path: PathBuf| async move {
        backlinks_async(
            vec![
                "status".into(),
                path.to_str().unwrap().into(),
                "--as-of".into(),
                SNAPSHOT.into(),
            ],
            vec![],
            dir,
        )
        .await
    };

    let empty = status(dir.path().to_path_buf(), path.clone()).await;
    assert_eq!(empty.code(), 0, "{}", empty.stderr());
    assert!(
        empty.stdout().contains("no runs recorded"),
        "{}",
        empty.stdout()
    );

    // A run with a failed unit.
    let path = pipeline(
        dir.path(),
        &[targets[0].clone(), targets[40].clone()],
        SUMMARY,
        "",
    );
    let run = backlinks_async(run_args(&path, &[]), env.clone(), dir.path().to_path_buf()).await;
    assert_eq!(run.code(), 1, "{}", run.stderr());
    let shown = status(dir.path().to_path_buf(), path.clone())
        .await
        .stdout();
    for needle in [
        "partial: 2 units, 1 ok, 1 failed, 0 not run",
        "archive 1 answers archived",
        "failed units of the latest run",
        "summary badrequest.example.com: request refused",
        "--retry-failed",
    ] {
        assert!(shown.contains(needle), "{needle} missing in\n{shown}");
    }

    // A run killed once it started: status says so and how to resume.
    let path = pipeline(dir.path(), &targets, SUMMARY, "");
    let args = run_args(&path, &[]);
    let mut child = spawn(&args, &env, dir.path());
    wait_for("the second run's manifest", || {
        manifests(dir.path()).len() == 2
    })
    .await;
    child.kill().unwrap();
    finish(child).await;
    let shown = status(dir.path().to_path_buf(), path.clone())
        .await
        .stdout();
    for needle in [
        "running or crashed (no end recorded)",
        "the latest run did not finish: run the same command again",
    ] {
        assert!(shown.contains(needle), "{needle} missing in\n{shown}");
    }
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_units_land_and_records_the_run_as_interrupted() {
    stop_with_sigterm("", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_grace_period_sigterm_abandons_in_flight_units_cleanly() {
    stop_with_sigterm("shutdown_grace_secs = 0", true).await;
}

/// Sends SIGTERM to a run once answers are being archived; `api` is a
/// TOML fragment of the `[api]` section.
async fn stop_with_sigterm(api: &str, abandons: bool) {
    let sandbox = sandbox(SandboxConfig {
        seed: DATA_SEED,
        latency: Duration::from_millis(60),
        ..Default::default()
    })
    .await;
    let targets: Vec<String> = (0..12)
        .map(|i| format!("items{}.s{i}.example.com", 1500 + 100 * i))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let db = scratch_database("sigterm").await;
    let path = pipeline(dir.path(), &targets, BOTH, api);
    let child = spawn(&run_args(&path, &[]), &env_for(&sandbox, &db), dir.path());
    // Once answers are being archived, ask it to stop.
    let archive = state_archive(dir.path());
    wait_for("the first archived answers", || {
        std::fs::read_dir(&archive)
            .map(|d| d.count() >= 2)
            .unwrap_or(false)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let run = finish(child).await;
    assert_eq!(run.code(), 1, "{}\n{}", run.stdout(), run.stderr());
    assert!(run.stdout().contains("interrupted"), "{}", run.stdout());
    assert!(
        run.stderr()
            .contains("run the same command again to resume"),
        "{}",
        run.stderr()
    );
    assert_eq!(
        run.stderr().contains("the units in flight were abandoned"),
        abandons,
        "{}",
        run.stderr()
    );

    let all = manifests(dir.path());
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["status"], json!("interrupted"));
    let runs = postgres_records(&db, "runs").await;
    assert_eq!(runs[0]["status"], json!("interrupted"));
    let data = dir.path().join("data");
    assert!(
        leftover_temp_files(&data).is_empty(),
        "{:?}",
        leftover_temp_files(&data)
    );
    assert!(
        leftover_temp_files(&state_runs(dir.path()))
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".tmp")),
        "no temporary manifest left"
    );
    // Every landed partition is complete; some did not land.
    let backlinks = postgres_records(&db, "backlinks").await;
    let mut per_target: HashMap<String, u64> = HashMap::new();
    for r in &backlinks {
        *per_target
            .entry(r["target"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(
        per_target.len() < targets.len(),
        "the stop came before the end"
    );
    for (target, n) in &per_target {
        assert_eq!(*n, backlinks_total(DATA_SEED, target, "as_is"), "{target}");
    }
    assert_eq!(parquet_records(&data, "backlinks").len(), backlinks.len());
    sandbox.shutdown().await;
}
