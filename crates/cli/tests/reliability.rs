//! The fault and bad-input catalogue (RELIABILITY.md lists every case):
//! the real binary against the sandbox, a hostile imitation of the API,
//! a Postgres that loses connections or restarts, and a Parquet directory
//! that turns read-only or fills up. Each test checks that no row is lost
//! or duplicated in either sink, that what landed before stays intact,
//! and that the run says clearly what happened (message and exit code).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backlinks_sandbox::{FaultKind, Faults, SandboxConfig, backlinks_total};
use common::*;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

const SNAPSHOT: &str = "2026-03-01";

/// Tests that use Postgres hold this for reading; the test that restarts
/// the server holds it for writing, so it never pulls the server from
/// under another test of this file.
static PG: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Writes `<dir>/<file>`: a pipeline `name` over `targets` with the given
/// `[endpoints…]` sections, fast retries and a 1 s client timeout.
fn pipeline_file(
    dir: &Path,
    file: &str,
    targets: &[String],
    endpoints: &str,
    postgres: bool,
) -> PathBuf {
    // 16 attempts: with every fault on at 5 % (storms answering 40202 to the
    // next 5 requests too), nearly half of all answers are faults, and they
    // come in runs; 10 attempts ran out about once in twenty runs.
    let body = format!(
        r#"{endpoints}
[api]
requests_per_minute = 30000
max_in_flight = 8
timeout_secs = 1
retry = {{ max_attempts = 16, initial_backoff_ms = 10, max_backoff_ms = 200 }}
[sinks.parquet]
dir = "data"
[sinks.postgres]
enabled = {postgres}
"#
    );
    write_pipeline(&dir.join(file), "rel", targets, &body)
}

fn run_args(pipeline: &Path) -> Vec<String> {
    ["run", pipeline.to_str().unwrap(), "--as-of", SNAPSHOT]
        .map(String::from)
        .to_vec()
}

fn with_db(mut env: Vec<(String, String)>, db: &str) -> Vec<(String, String)> {
    env.push(("DATABASE_URL".into(), db.to_owned()));
    env
}

/// The partitioned datasets and the columns that identify one row.
const DATASETS: [(&str, &[&str]); 4] = [
    ("summary", &["target"]),
    ("summary_breakdown", &["target", "dimension", "key"]),
    ("backlinks", &["target", "position"]),
    ("backlink_redirects", &["target", "position", "hop"]),
];

/// Records by their row key, with the run-specific columns (`fetched_at`,
/// `task_id`) set aside unless `keep_run_columns`; panics on a duplicate.
fn keyed(dataset: &str, records: Vec<Record>, keep_run_columns: bool) -> BTreeMap<String, Record> {
    let key_columns = DATASETS
        .iter()
        .find(|(d, _)| *d == dataset)
        .map(|(_, k)| *k)
        .unwrap();
    let mut out = BTreeMap::new();
    for mut r in records {
        if !keep_run_columns {
            r.remove("fetched_at");
            r.remove("task_id");
        }
        let key = key_columns
            .iter()
            .map(|c| r[*c].to_string())
            .collect::<Vec<_>>()
            .join("|");
        assert!(
            out.insert(key.clone(), r).is_none(),
            "duplicate {dataset} row {key}"
        );
    }
    out
}

/// Every partitioned dataset of both sinks, keyed (Postgres skipped when `db` is None).
async fn sink_contents(
    data: &Path,
    db: Option<&str>,
    keep_run_columns: bool,
) -> (Vec<BTreeMap<String, Record>>, Vec<BTreeMap<String, Record>>) {
    let mut parquet = Vec::new();
    let mut postgres = Vec::new();
    for (dataset, _) in DATASETS {
        parquet.push(keyed(
            dataset,
            parquet_records(data, dataset),
            keep_run_columns,
        ));
        if let Some(db) = db {
            postgres.push(keyed(
                dataset,
                postgres_records(db, dataset).await,
                keep_run_columns,
            ));
        }
    }
    (parquet, postgres)
}

fn assert_same_rows(
    sink: &str,
    got: &[BTreeMap<String, Record>],
    want: &[BTreeMap<String, Record>],
) {
    for (i, (dataset, _)) in DATASETS.iter().enumerate() {
        assert_eq!(got[i].len(), want[i].len(), "{sink} {dataset}: row count");
        for (key, row) in &want[i] {
            assert_eq!(got[i].get(key), Some(row), "{sink} {dataset} {key}");
        }
    }
}

/// Rows per target of one dataset.
fn count_by_target(records: &[Record]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in records {
        *out.entry(r["target"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    out
}

fn database_name(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned()
}

/// Every file under `root` with its bytes.
fn file_bytes(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(root)
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

fn output_of(run: &Run) -> String {
    format!("stdout:\n{}\nstderr:\n{}", run.stdout(), run.stderr())
}

/// Whether the tests run under CI (`CI` set, and not to `false` or `0`).
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A test whose precondition is missing here. Under CI that fails the test:
/// the CI machines provide every precondition (they run as root, may mount
/// a tmpfs, and have a local Postgres cluster managed by `pg_ctlcluster`),
/// so a missing one means the test silently stopped testing. Elsewhere the
/// test says why it did nothing and passes; the caller returns.
fn skip_or_fail(reason: &str) {
    assert!(!under_ci(), "CI is set, and this test cannot run: {reason}");
    eprintln!("note: skipped: {reason}");
}

// ---------------------------------------------------------------------------
// Faults injected by the sandbox
// ---------------------------------------------------------------------------

fn fault_targets() -> Vec<String> {
    let mut t: Vec<String> = [
        "items2600.f1.example.com",
        "items1800.f2.example.com",
        "items999.f3.example.com",
        "items1000.f4.example.com",
        "items1001.f5.example.com",
        "items0.f6.example.com",
        "noresults.f7.example.com",
        "nullresult.f8.example.com",
    ]
    .map(String::from)
    .to_vec();
    t.extend((0..8).map(|i| format!("plain{i}.example.org")));
    t
}

const BOTH_ENDPOINTS: &str = "[endpoints.summary]\n[endpoints.backlinks]\nlimit = 500";

/// Runs the fault-free reference and the faulty run (both sinks) of the
/// same data and holds the faulty one to the reference, row for row.
async fn faults_change_nothing(seed: u64, faults: Faults, kinds: &[FaultKind]) {
    let _pg = PG.read().await;
    let targets = fault_targets();

    let reference = sandbox(SandboxConfig {
        seed,
        ..Default::default()
    })
    .await;
    let ref_dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline_file(ref_dir.path(), "rel.toml", &targets, BOTH_ENDPOINTS, false);
    let run = backlinks_async(
        run_args(&pipeline),
        api_env(&reference),
        ref_dir.path().to_path_buf(),
    )
    .await;
    assert_eq!(run.code(), 0, "reference run\n{}", output_of(&run));
    reference.shutdown().await;
    let (want, _) = sink_contents(&ref_dir.path().join("data"), None, false).await;
    let backlinks = count_by_target(&want[2].values().cloned().collect::<Vec<_>>());
    for t in &targets {
        assert_eq!(
            backlinks.get(t).copied().unwrap_or(0),
            backlinks_total(seed, t, "as_is"),
            "reference run: backlinks of {t}"
        );
    }
    assert_eq!(want[0].len(), targets.len());

    let faulty = sandbox(SandboxConfig {
        seed,
        keep_log: true,
        latency: Duration::from_millis(2),
        latency_jitter: Duration::from_millis(5),
        faults,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline_file(dir.path(), "rel.toml", &targets, BOTH_ENDPOINTS, true);
    let db = scratch_database("faults").await;
    let run = backlinks_async(
        run_args(&pipeline),
        with_db(api_env(&faulty), &db),
        dir.path().to_path_buf(),
    )
    .await;
    assert_eq!(run.code(), 0, "{}", output_of(&run));
    let log = faulty.log();
    for kind in kinds {
        assert!(
            log.iter().any(|l| l.fault == Some(*kind)),
            "the sandbox injected {kind:?}: {:?}",
            faulty.stats()
        );
    }
    faulty.shutdown().await;
    assert!(
        run.stdout()
            .contains(&format!("{} ok, 0 failed", 2 * targets.len())),
        "{}",
        run.stdout()
    );

    let data = dir.path().join("data");
    let (parquet, postgres) = sink_contents(&data, Some(&db), false).await;
    assert_same_rows("parquet", &parquet, &want);
    assert_same_rows("postgres", &postgres, &want);
    assert!(
        leftover_temp_files(&data).is_empty(),
        "{:?}",
        leftover_temp_files(&data)
    );
}

fn five_percent(kind: FaultKind) -> Faults {
    let mut f = Faults {
        slow_delay: Duration::from_millis(1500),
        ..Default::default()
    };
    match kind {
        FaultKind::Http500 => f.http_500 = 0.05,
        FaultKind::Envelope50000 => f.envelope_50000 = 0.05,
        FaultKind::TruncatedJson => f.truncated_json = 0.05,
        FaultKind::RateLimitStorm => f.rate_limit_storm = 0.05,
        FaultKind::Slow => f.slow = 0.05,
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_http_500_loses_and_duplicates_nothing() {
    faults_change_nothing(31, five_percent(FaultKind::Http500), &[FaultKind::Http500]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_envelope_50000_loses_and_duplicates_nothing() {
    faults_change_nothing(
        32,
        five_percent(FaultKind::Envelope50000),
        &[FaultKind::Envelope50000],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_truncated_json_loses_and_duplicates_nothing() {
    faults_change_nothing(
        33,
        five_percent(FaultKind::TruncatedJson),
        &[FaultKind::TruncatedJson],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_rate_limit_storms_lose_and_duplicate_nothing() {
    faults_change_nothing(
        34,
        five_percent(FaultKind::RateLimitStorm),
        &[FaultKind::RateLimitStorm],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_answers_slower_than_the_timeout_lose_and_duplicate_nothing() {
    faults_change_nothing(35, five_percent(FaultKind::Slow), &[FaultKind::Slow]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_faults_together_lose_and_duplicate_nothing() {
    let faults = Faults {
        http_500: 0.05,
        envelope_50000: 0.05,
        truncated_json: 0.05,
        rate_limit_storm: 0.05,
        slow: 0.05,
        slow_delay: Duration::from_millis(1500),
    };
    faults_change_nothing(
        36,
        faults,
        &[
            FaultKind::Http500,
            FaultKind::Envelope50000,
            FaultKind::TruncatedJson,
            FaultKind::RateLimitStorm,
            FaultKind::Slow,
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------
// Postgres losing its connections or restarting mid-load
// ---------------------------------------------------------------------------

const PG_TARGETS: usize = 8;
const PG_ITEMS: u64 = 3000;
const PG_PREVIOUS: u64 = 1000;

fn pg_targets(tag: &str) -> Vec<String> {
    (0..PG_TARGETS)
        .map(|i| format!("items{PG_ITEMS}.{tag}{i}.example.com"))
        .collect()
}

/// Backlinks rows per target in both sinks.
async fn backlink_counts(data: &Path, db: &str) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let parquet = keyed("backlinks", parquet_records(data, "backlinks"), false);
    let postgres = keyed("backlinks", postgres_records(db, "backlinks").await, false);
    (
        count_by_target(&parquet.into_values().collect::<Vec<_>>()),
        count_by_target(&postgres.into_values().collect::<Vec<_>>()),
    )
}

/// The three rounds of a Postgres outage: a clean run lands `PG_PREVIOUS`
/// items per target; a full run suffers `disturb` while it loads; a clean
/// re-run lands everything. After the disturbed run each target holds its
/// previous rows or all of them, never a part, in both sinks, and the
/// Parquet partition never lands without the Postgres one.
async fn postgres_outage<F, Fut>(tag: &str, disturb: F) -> Option<Run>
where
    F: FnOnce(String, tokio::task::JoinHandle<Run>, Arc<backlinks_sandbox::Sandbox>) -> Fut,
    Fut: std::future::Future<Output = Option<Run>>,
{
    let seed = 3;
    let sandbox = Arc::new(
        sandbox(SandboxConfig {
            seed,
            latency: Duration::from_millis(120),
            ..Default::default()
        })
        .await,
    );
    let targets = pg_targets(tag);
    let dir = tempfile::tempdir().unwrap();
    let db = scratch_database(tag).await;
    let env = with_db(api_env(&sandbox), &db);
    let env_fast: Vec<(String, String)> = env
        .iter()
        .cloned()
        .chain([("BACKLINKS__API__MAX_IN_FLIGHT".to_string(), "2".to_string())])
        .collect();
    let data = dir.path().join("data");

    // Round 1: the previous data, PG_PREVIOUS items per target.
    let pipeline = pipeline_file(
        dir.path(),
        "rel.toml",
        &targets,
        &format!("[endpoints.backlinks]\nlimit = 500\nmax_items = {PG_PREVIOUS}"),
        true,
    );
    let run = backlinks_async(run_args(&pipeline), env.clone(), dir.path().to_path_buf()).await;
    assert_eq!(run.code(), 0, "round 1\n{}", output_of(&run));
    let before = file_bytes(&data);

    // Round 2: everything, disturbed.
    let pipeline = pipeline_file(
        dir.path(),
        "rel.toml",
        &targets,
        "[endpoints.backlinks]\nlimit = 500",
        true,
    );
    let handle = tokio::spawn(backlinks_async(
        run_args(&pipeline),
        env_fast,
        dir.path().to_path_buf(),
    ));
    let run = disturb(db.clone(), handle, Arc::clone(&sandbox)).await?;
    let (parquet, postgres) = backlink_counts(&data, &db).await;
    let mut landed = 0;
    for t in &targets {
        let p = parquet.get(t).copied().unwrap_or(0);
        let q = postgres.get(t).copied().unwrap_or(0);
        assert!(
            p == PG_PREVIOUS || p == PG_ITEMS,
            "parquet holds {p} rows of {t}: a partition was half written\n{}",
            output_of(&run)
        );
        assert!(
            q == PG_PREVIOUS || q == PG_ITEMS,
            "postgres holds {q} rows of {t}: a partition was half written\n{}",
            output_of(&run)
        );
        // Postgres commits first, then the Parquet files are renamed in.
        assert!(
            p == PG_PREVIOUS || q == PG_ITEMS,
            "{t}: parquet landed ({p}) without postgres ({q})"
        );
        if p == PG_ITEMS {
            landed += 1;
        }
    }
    match run.code() {
        0 => assert_eq!(landed, targets.len(), "exit 0 but not every target landed"),
        1 => {
            let out = output_of(&run);
            assert!(
                out.contains("failed") || out.contains("error"),
                "a partial run says so\n{out}"
            );
        }
        code => panic!("exit code {code}\n{}", output_of(&run)),
    }
    // Previous files of targets that did not land are untouched.
    let after = file_bytes(&data);
    for (path, bytes) in &before {
        let name = path.to_string_lossy();
        if name.contains("/backlinks/") {
            let target_landed = targets
                .iter()
                .any(|t| name.contains(t.as_str()) && parquet.get(t) == Some(&PG_ITEMS));
            if !target_landed {
                assert_eq!(after.get(path), Some(bytes), "{name} changed");
            }
        }
    }
    assert!(
        leftover_temp_files(&data).is_empty(),
        "{:?}",
        leftover_temp_files(&data)
    );

    // Round 3: a clean re-run lands everything, once.
    let rerun = backlinks_async(run_args(&pipeline), env, dir.path().to_path_buf()).await;
    assert_eq!(rerun.code(), 0, "round 3\n{}", output_of(&rerun));
    let (parquet, postgres) = backlink_counts(&data, &db).await;
    for t in &targets {
        assert_eq!(parquet.get(t), Some(&PG_ITEMS), "parquet {t}");
        assert_eq!(postgres.get(t), Some(&PG_ITEMS), "postgres {t}");
    }
    Some(run)
}

/// Terminates the pipeline's sessions on database `db`; returns how many.
async fn terminate_sessions(db: &str) -> i64 {
    let mut admin = PgConnection::connect(&base_database_url()).await.unwrap();
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'backlinks' AND pid <> pg_backend_pid()) t",
    )
    .bind(database_name(db))
    .fetch_one(&mut admin)
    .await
    .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_mid_load_leave_whole_partitions() {
    let _pg = PG.read().await;
    let run = postgres_outage("pgkill", |db, handle, sandbox| async move {
        // Wait until pages are flowing, then kill the sessions a few times.
        while sandbox.stats().requests < 6 && !handle.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut killed = 0;
        for _ in 0..4 {
            if handle.is_finished() {
                break;
            }
            killed += terminate_sessions(&db).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let run = handle.await.unwrap();
        assert!(
            killed > 0,
            "no session was killed: the load ended too soon\n{}",
            output_of(&run)
        );
        Some(run)
    })
    .await
    .unwrap();
    assert_eq!(run.code(), 1, "{}", output_of(&run));
    let out = output_of(&run);
    // Each target that did not land has a line in the summary, e.g.
    // `failed    backlinks items3000.pgkill3.example.com: writing
    // backlink_redirects to postgres: replacing backlinks of
    // items3000.pgkill3.example.com 2026-03-01 (pipeline rel): error
    // communicating with database: Broken pipe (os error 32)`: the target,
    // the sink and what it was doing, the partition, and the driver's
    // account of the lost connection.
    let targets = pg_targets("pgkill");
    let stdout = run.stdout();
    let failures: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("failed    backlinks "))
        .collect();
    assert!(!failures.is_empty(), "no failed target is listed\n{out}");
    for failure in failures {
        let (target, reason) = failure
            .split_once(": ")
            .unwrap_or_else(|| panic!("`{failure}` names no target\n{out}"));
        assert!(
            targets.iter().any(|t| t == target),
            "`{failure}` names no target of the run\n{out}"
        );
        let partition = format!(" of {target} {SNAPSHOT} (pipeline rel): ");
        let (doing, cause) = reason
            .split_once(&partition)
            .unwrap_or_else(|| panic!("`{failure}` does not name the partition\n{out}"));
        assert!(
            doing.contains("postgres"),
            "`{failure}` does not say the Postgres sink failed\n{out}"
        );
        assert!(
            LOST_CONNECTION.contains(&cause),
            "`{failure}` does not end in what the driver says of a lost connection ({LOST_CONNECTION:?})\n{out}"
        );
    }
}

/// What the Postgres driver reports when the server ends a session
/// (`pg_terminate_backend`): the server's own message when the client was
/// waiting for its reply, or the closed socket when the client next read or
/// wrote on it.
const LOST_CONNECTION: [&str; 4] = [
    "error returned from database: terminating connection due to administrator command",
    "error communicating with database: expected to read 5 bytes, got 0 bytes at EOF",
    "error communicating with database: Broken pipe (os error 32)",
    "error communicating with database: Connection reset by peer (os error 104)",
];

/// Starts the local cluster again if it is down when dropped.
struct PostgresRunning {
    version: String,
}

impl Drop for PostgresRunning {
    fn drop(&mut self) {
        for _ in 0..30 {
            let ready = Command::new("pg_isready")
                .args(["-q", "-h", "127.0.0.1"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            let _ = Command::new("pg_ctlcluster")
                .args(["--skip-systemctl-redirect", &self.version, "main", "start"])
                .status();
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run_leaves_whole_partitions() {
    let _pg = PG.write().await;
    let local = url::Url::parse(&base_database_url())
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .is_some_and(|h| h == "127.0.0.1" || h == "localhost");
    let version = std::fs::read_dir("/etc/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next();
    let (true, Some(version)) = (local, version) else {
        skip_or_fail(
            "DATABASE_URL is not a local Postgres cluster managed by pg_ctlcluster (/etc/postgresql)",
        );
        return;
    };
    if Command::new("pg_ctlcluster")
        .arg("--help")
        .output()
        .is_err()
    {
        skip_or_fail("pg_ctlcluster is not installed");
        return;
    }
    let _guard = PostgresRunning {
        version: version.clone(),
    };
    let run = postgres_outage("pgrestart", |_db, handle, sandbox| async move {
        while sandbox.stats().requests < 6 && !handle.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!handle.is_finished(), "the load ended before the restart");
        let status = tokio::task::spawn_blocking(move || {
            Command::new("pg_ctlcluster")
                .args(["--skip-systemctl-redirect", &version, "main", "restart"])
                .output()
        })
        .await
        .unwrap();
        match status {
            Ok(out) if out.status.success() => {}
            other => {
                let _ = handle.await;
                skip_or_fail(&format!("cannot restart Postgres here: {other:?}"));
                return None;
            }
        }
        Some(handle.await.unwrap())
    })
    .await;
    if let Some(run) = run {
        assert!(matches!(run.code(), 0 | 1), "{}", output_of(&run));
    }
}

// ---------------------------------------------------------------------------
// The Parquet directory read-only or full
// ---------------------------------------------------------------------------

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `2m`) on `dir`; None when not permitted.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        out.status.success().then(|| Tmpfs(dir.to_path_buf()))
    }

    fn remount_read_only(&self) -> bool {
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Whether `chmod 0o555` stops this process from creating files (not for root).
fn chmod_stops_writes() -> bool {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let created = std::fs::File::create(dir.path().join("probe")).is_ok();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    !created
}

fn set_tree_mode(root: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            }
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_parquet_directory_fails_clearly_and_damages_nothing() {
    let _pg = PG.read().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let by_chmod = chmod_stops_writes();
    let mount = if by_chmod {
        None
    } else {
        match Tmpfs::mount(&data, "64m") {
            Some(m) => Some(m),
            None => {
                skip_or_fail(
                    "running as root (chmod does not stop writes) and mounting a tmpfs is not permitted",
                );
                return;
            }
        }
    };
    let sandbox = sandbox(SandboxConfig::default()).await;
    let targets: Vec<String> = [
        "items1200.ro.example.com",
        "ro1.example.com",
        "ro2.example.net",
    ]
    .map(String::from)
    .to_vec();
    let pipeline = pipeline_file(dir.path(), "rel.toml", &targets, BOTH_ENDPOINTS, true);
    let db = scratch_database("readonly").await;
    let env = with_db(api_env(&sandbox), &db);
    let run = backlinks_async(run_args(&pipeline), env.clone(), dir.path().to_path_buf()).await;
    assert_eq!(run.code(), 0, "{}", output_of(&run));
    let files = file_bytes(&data);
    let (parquet_before, postgres_before) = sink_contents(&data, Some(&db), true).await;

    if by_chmod {
        set_tree_mode(&data, 0o555);
    } else {
        assert!(
            mount.as_ref().unwrap().remount_read_only(),
            "remounting the tmpfs read-only"
        );
    }
    let run = backlinks_async(run_args(&pipeline), env.clone(), dir.path().to_path_buf()).await;
    if by_chmod {
        set_tree_mode(&data, 0o755);
    }
    let out = output_of(&run);
    assert!(matches!(run.code(), 1 | 2), "{out}");
    assert!(
        out.contains("Read-only file system") || out.contains("Permission denied"),
        "the error says why\n{out}"
    );
    // The pipeline names the directory `data`, relative to the working directory.
    assert!(
        out.contains("data/summary/snapshot_date=")
            || out.contains("data/backlinks/snapshot_date="),
        "the error names the path\n{out}"
    );
    assert_eq!(file_bytes(&data), files, "the earlier files are intact");
    let (parquet_after, postgres_after) = sink_contents(&data, Some(&db), true).await;
    assert_same_rows("parquet", &parquet_after, &parquet_before);
    // A partition that cannot land in Parquet does not land in Postgres either.
    assert_same_rows("postgres", &postgres_after, &postgres_before);
    sandbox.shutdown().await;
    drop(mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_clearly_and_leaves_whole_files_only() {
    full_disk(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_leaves_the_sinks_disagreeing() {
    full_disk(true).await;
}

/// Fills a 2 MiB Parquet directory mid-run; `sinks_agree` also holds
/// Postgres to the Parquet partition, target by target.
async fn full_disk(sinks_agree: bool) {
    let _pg = PG.read().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(mount) = Tmpfs::mount(&data, "2m") else {
        skip_or_fail("mounting a tmpfs is not permitted here");
        return;
    };
    let seed = 9;
    let sandbox = sandbox(SandboxConfig {
        seed,
        ..Default::default()
    })
    .await;
    let targets: Vec<String> = (1..=4)
        .map(|i| format!("items8000.full{i}.example.com"))
        .collect();
    let db = scratch_database("diskfull").await;
    let env = with_db(api_env(&sandbox), &db);

    // The previous data: 300 items per target.
    let small = 300u64;
    let pipeline = pipeline_file(
        dir.path(),
        "rel.toml",
        &targets,
        &format!("[endpoints.summary]\n[endpoints.backlinks]\nmax_items = {small}"),
        true,
    );
    let run = backlinks_async(run_args(&pipeline), env.clone(), dir.path().to_path_buf()).await;
    assert_eq!(run.code(), 0, "{}", output_of(&run));
    let before = file_bytes(&data);

    // 4 × 8000 items do not fit in 2 MiB.
    let pipeline = pipeline_file(
        dir.path(),
        "rel.toml",
        &targets,
        "[endpoints.summary]\n[endpoints.backlinks]",
        true,
    );
    let run = backlinks_async(run_args(&pipeline), env.clone(), dir.path().to_path_buf()).await;
    let out = output_of(&run);
    assert_eq!(run.code(), 1, "{out}");
    assert!(
        out.contains("No space left on device"),
        "the error says why\n{out}"
    );
    // The pipeline names the directory `data`, relative to the working directory.
    assert!(
        out.contains("data/summary/snapshot_date=")
            || out.contains("data/backlinks/snapshot_date="),
        "the error names the path\n{out}"
    );
    assert!(
        leftover_temp_files(&data).is_empty(),
        "{:?}",
        leftover_temp_files(&data)
    );
    // Every file is whole (parquet_records reads each one), each target
    // holds its previous rows or all of them, and the Postgres partition
    // matches the Parquet one.
    let parquet = count_by_target(&parquet_records(&data, "backlinks"));
    let postgres = count_by_target(&postgres_records(&db, "backlinks").await);
    let after = file_bytes(&data);
    for t in &targets {
        let p = parquet.get(t).copied().unwrap_or(0);
        let q = postgres.get(t).copied().unwrap_or(0);
        assert!(p == small || p == 8000, "parquet {t}: {p}");
        assert!(q == small || q == 8000, "postgres {t}: {q}");
        if sinks_agree {
            assert_eq!(p, q, "{t}: parquet and postgres differ\n{out}");
        }
        if p == small {
            for (path, bytes) in &before {
                if path.to_string_lossy().contains(t.as_str())
                    && path.to_string_lossy().contains("/backlinks/")
                {
                    assert_eq!(after.get(path), Some(bytes), "{} changed", path.display());
                }
            }
        }
    }
    assert!(
        parquet.values().any(|n| *n == small),
        "the disk filled up before every target landed: {parquet:?}"
    );
    sandbox.shutdown().await;
    drop(mount);
}

// ---------------------------------------------------------------------------
// Hostile API responses
// ---------------------------------------------------------------------------

/// Answer bodies by (endpoint, target); `summary` or `backlinks`.
type Bodies = Arc<Mutex<HashMap<(String, String), String>>>;

/// A tiny imitation of the API that answers the body set for each
/// (endpoint, target). Returns its base URL.
async fn hostile_api(bodies: Bodies) -> (String, tokio::task::JoinHandle<()>) {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{StatusCode, Uri, header};
    use axum::response::IntoResponse;

    async fn answer(
        State(bodies): State<Bodies>,
        uri: Uri,
        body: Bytes,
    ) -> axum::response::Response {
        let endpoint = if uri.path().contains("/summary/") {
            "summary"
        } else {
            "backlinks"
        };
        let target = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v[0]["target"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let found = bodies
            .lock()
            .unwrap()
            .get(&(endpoint.to_owned(), target.clone()))
            .cloned();
        match found {
            Some(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
            None => (
                StatusCode::NOT_FOUND,
                format!("no body for {endpoint} {target}"),
            )
                .into_response(),
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(answer).with_state(bodies);
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), server)
}

fn envelope(endpoint: &str, target: &str, round: u32, result: Value) -> Value {
    json!({
        "version": "0.1.20260101", "status_code": 20000, "status_message": "Ok.",
        "time": "0.1 sec.", "cost": 0.02, "tasks_count": 1, "tasks_error": 0,
        "tasks": [{
            "id": format!("r{round}-{endpoint}-{target}"),
            "status_code": 20000, "status_message": "Ok.", "time": "0.1 sec.",
            "cost": 0.02, "result_count": 1,
            "path": ["v3", "backlinks", endpoint, "live"],
            "data": {"api": "backlinks", "function": endpoint, "target": target},
            "result": [result]
        }]
    })
}

fn summary_item(target: &str, round: u32) -> Value {
    json!({
        "target": target, "rank": round, "backlinks": 100 + round,
        "first_seen": "2021-05-01 10:00:00 +00:00", "referring_domains": 7,
        "info": {"server": "nginx", "cms": "wordpress", "platform_type": ["blogs"],
                 "ip_address": "192.0.2.1", "country": "US", "is_ip": false, "target_spam_score": 3},
        "referring_links_tld": {"com": 3, "": 1}
    })
}

fn backlinks_result(target: &str, round: u32) -> Value {
    let items: Vec<Value> = (0..3)
        .map(|i| {
            json!({
                "type": "backlink", "domain_from": "from.example", "url_from": format!("https://from.example/p{i}"),
                "url_to": format!("https://{target}/"), "anchor": format!("anchor {i}"),
                "dofollow": true, "rank": round * 10 + i, "attributes": ["noopener"],
                "first_seen": "2022-01-01 00:00:00 +00:00"
            })
        })
        .collect();
    json!({"target": target, "mode": "as_is", "total_count": 3, "items_count": 3,
           "items": items, "search_after_token": "tok"})
}

/// A JSON array nested `depth` deep.
fn deep(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

const HUGE: usize = 5 * 1024 * 1024;

/// How a hostile answer must end.
enum Expect {
    /// The unit fails; the report names the target and these words.
    Fails(&'static [&'static str]),
    /// The unit lands (the odd value is handled).
    Lands,
}

/// The hostile answers of round 2: (endpoint, target, body, expectation).
fn hostile_cases() -> Vec<(&'static str, &'static str, String, Expect)> {
    let s = |t: &str, f: &dyn Fn(&mut Value)| {
        let mut item = summary_item(t, 2);
        f(&mut item);
        envelope("summary", t, 2, item).to_string()
    };
    let b = |t: &str, f: &dyn Fn(&mut Value)| {
        let mut result = backlinks_result(t, 2);
        f(&mut result);
        envelope("backlinks", t, 2, result).to_string()
    };
    vec![
        (
            "summary",
            "s-wrong-type.example.com",
            s("s-wrong-type.example.com", &|i| i["rank"] = json!("high")),
            Expect::Fails(&["tasks[0].result[0].rank"]),
        ),
        (
            "summary",
            "s-array-for-object.example.com",
            s("s-array-for-object.example.com", &|i| {
                i["info"] = json!([1, 2])
            }),
            Expect::Fails(&["tasks[0].result[0].info"]),
        ),
        (
            "summary",
            "s-result-object.example.com",
            {
                let mut e = envelope("summary", "s-result-object.example.com", 2, json!({}));
                e["tasks"][0]["result"] = json!({"rank": 1});
                e.to_string()
            },
            Expect::Fails(&["tasks[0].result"]),
        ),
        (
            "summary",
            "s-deep.example.com",
            s("s-deep.example.com", &|i| i["nested"] = json!("@@DEEP@@"))
                .replace("\"@@DEEP@@\"", &deep(100_000)),
            Expect::Fails(&["recursion limit"]),
        ),
        (
            "summary",
            "s-missing-fields.example.com",
            s("s-missing-fields.example.com", &|i| {
                *i = json!({"target": "s-missing-fields.example.com"})
            }),
            Expect::Lands,
        ),
        (
            "summary",
            "s-huge-string.example.com",
            s("s-huge-string.example.com", &|i| {
                i["info"]["server"] = json!("s".repeat(HUGE))
            }),
            Expect::Lands,
        ),
        (
            "backlinks",
            "b-wrong-type.example.com",
            b("b-wrong-type.example.com", &|r| {
                r["items"][1]["dofollow"] = json!("yes")
            }),
            Expect::Fails(&["items[1].dofollow"]),
        ),
        (
            "backlinks",
            "b-array-for-object.example.com",
            b("b-array-for-object.example.com", &|r| {
                r["items"][0] = json!(["a"])
            }),
            Expect::Fails(&["items[0]"]),
        ),
        (
            "backlinks",
            "b-items-object.example.com",
            b("b-items-object.example.com", &|r| {
                r["items"] = json!({"a": 1})
            }),
            Expect::Fails(&["items"]),
        ),
        (
            "backlinks",
            "b-deep.example.com",
            b("b-deep.example.com", &|r| {
                r["items"][0]["nested"] = json!("@@DEEP@@")
            })
            .replace("\"@@DEEP@@\"", &deep(100_000)),
            Expect::Fails(&["recursion limit"]),
        ),
        (
            "backlinks",
            "b-missing-fields.example.com",
            b(
                "b-missing-fields.example.com",
                &|r| *r = json!({"items": [{"url_from": "https://from.example/only"}]}),
            ),
            Expect::Lands,
        ),
        (
            "backlinks",
            "b-huge-anchor.example.com",
            b("b-huge-anchor.example.com", &|r| {
                r["items"][2]["anchor"] = json!("a".repeat(HUGE))
            }),
            Expect::Lands,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_fail_their_unit_by_name_and_damage_nothing() {
    let _pg = PG.read().await;
    let cases = hostile_cases();
    let mut targets: Vec<String> = cases.iter().map(|(_, t, _, _)| t.to_string()).collect();
    targets.push("fine.example.com".into());
    targets.sort();
    targets.dedup();
    let bodies: Bodies = Arc::default();
    let set_round = |round: u32| {
        let mut map = bodies.lock().unwrap();
        for t in &targets {
            map.insert(
                ("summary".into(), t.clone()),
                envelope("summary", t, round, summary_item(t, round)).to_string(),
            );
            map.insert(
                ("backlinks".into(), t.clone()),
                envelope("backlinks", t, round, backlinks_result(t, round)).to_string(),
            );
        }
    };
    let (base_url, server) = hostile_api(Arc::clone(&bodies)).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline_file(
        dir.path(),
        "rel.toml",
        &targets,
        "[endpoints.summary]\n[endpoints.backlinks]",
        true,
    );
    let db = scratch_database("hostile").await;
    let env = with_db(
        vec![
            ("DATAFORSEO_BASE_URL".into(), base_url),
            ("DATAFORSEO_LOGIN".into(), LOGIN.into()),
            ("DATAFORSEO_PASSWORD".into(), PASSWORD.into()),
            ("BACKLINKS__API__RETRY__MAX_ATTEMPTS".into(), "2".into()),
        ],
        &db,
    );
    let data = dir.path().join("data");

    // Round 1: every answer well-formed.
    set_round(1);
    let run = backlinks_async(run_args(&pipeline), env.clone(), dir.path().to_path_buf()).await;
    assert_eq!(run.code(), 0, "{}", output_of(&run));

    // Round 2: hostile answers for some units, new data for the others.
    set_round(2);
    for (endpoint, target, body, _) in &cases {
        bodies
            .lock()
            .unwrap()
            .insert((endpoint.to_string(), target.to_string()), body.clone());
    }
    let run = backlinks_async(run_args(&pipeline), env.clone(), dir.path().to_path_buf()).await;
    let out = output_of(&run);
    assert_eq!(run.code(), 1, "{out}");
    let failing = cases
        .iter()
        .filter(|c| matches!(c.3, Expect::Fails(_)))
        .count();
    assert!(
        run.stdout().contains(&format!(
            "{} ok, {failing} failed",
            2 * targets.len() - failing
        )),
        "{out}"
    );
    // The report lists each failure with its target and JSON path.
    let report = run.stdout();
    for (endpoint, target, _, expect) in &cases {
        if let Expect::Fails(words) = expect {
            let line = report
                .lines()
                .find(|l| l.contains("failed") && l.contains(target))
                .unwrap_or_else(|| panic!("no failure line for {endpoint} {target}\n{out}"));
            for word in *words {
                assert!(line.contains(word), "{word} missing in {line:?}");
            }
        }
    }

    // Which round each partition holds: a failed unit keeps round 1.
    for sink in ["parquet", "postgres"] {
        for (dataset, endpoint) in [("summary", "summary"), ("backlinks", "backlinks")] {
            let records = if sink == "parquet" {
                parquet_records(&data, dataset)
            } else {
                postgres_records(&db, dataset).await
            };
            let records = keyed(dataset, records, true);
            for t in &targets {
                let case = cases.iter().find(|c| c.0 == endpoint && c.1 == t.as_str());
                let want_round = match case {
                    Some((_, _, _, Expect::Fails(_))) => 1,
                    _ => 2,
                };
                let rows: Vec<&Record> = records
                    .values()
                    .filter(|r| r["target"] == json!(t))
                    .collect();
                assert!(!rows.is_empty(), "{sink} {dataset} {t}: no rows");
                for r in &rows {
                    assert_eq!(
                        r["task_id"],
                        json!(format!("r{want_round}-{endpoint}-{t}")),
                        "{sink} {dataset} {t}"
                    );
                }
                match t.as_str() {
                    "s-huge-string.example.com" if dataset == "summary" => {
                        assert_eq!(
                            rows[0]["info_server"].as_str().map(str::len),
                            Some(HUGE),
                            "{sink}"
                        );
                    }
                    "s-missing-fields.example.com" if dataset == "summary" => {
                        assert_eq!(rows[0]["rank"], Value::Null, "{sink}");
                        assert_eq!(rows[0]["backlinks"], Value::Null, "{sink}");
                    }
                    "b-huge-anchor.example.com" if dataset == "backlinks" => {
                        let big = rows.iter().find(|r| r["position"] == json!(2)).unwrap();
                        assert_eq!(big["anchor"].as_str().map(str::len), Some(HUGE), "{sink}");
                    }
                    "b-missing-fields.example.com" if dataset == "backlinks" => {
                        assert_eq!(rows.len(), 1, "{sink}");
                        assert_eq!(rows[0]["url_from"], json!("https://from.example/only"));
                        assert_eq!(rows[0]["anchor"], Value::Null);
                    }
                    _ if dataset == "backlinks" => assert_eq!(rows.len(), 3, "{sink} {t}"),
                    _ => assert_eq!(rows.len(), 1, "{sink} {t}"),
                }
            }
        }
    }
    assert!(leftover_temp_files(&data).is_empty());
    server.abort();
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_anything_a_backlinks_run_writes() {
    use base64::Engine;
    let _pg = PG.read().await;
    let sandbox = sandbox(SandboxConfig {
        faults: Faults {
            http_500: 0.1,
            truncated_json: 0.1,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<String> = [
        "items1200.secret.example.com",
        "plain.secret.example.org",
        "badrequest.secret.example.com",
        "failat500.items1500.secret.example.com",
    ]
    .map(String::from)
    .to_vec();
    let pipeline = pipeline_file(
        dir.path(),
        "rel.toml",
        &targets,
        "[endpoints.summary]\n[endpoints.backlinks]\nlimit = 400",
        true,
    );
    let db = scratch_database("relsecrets").await;
    let db_password = "rel-Db-Secret-3141";
    let mut admin = PgConnection::connect(&db).await.unwrap();
    sqlx::query(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'backlinks_rel') THEN CREATE ROLE backlinks_rel LOGIN SUPERUSER; END IF; END $$"
    )
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query(&format!(
        "ALTER ROLE backlinks_rel PASSWORD '{db_password}'"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let mut db_url = url::Url::parse(&db).unwrap();
    db_url.set_username("backlinks_rel").unwrap();
    db_url.set_password(Some(db_password)).unwrap();
    let env = with_db(api_env(&sandbox), db_url.as_str());

    let mut outputs = String::new();
    for format in ["text", "json"] {
        let mut args = run_args(&pipeline);
        args.extend(["--log-level", "trace", "--log-format", format].map(String::from));
        let run = backlinks_async(args, env.clone(), dir.path().to_path_buf()).await;
        assert_eq!(run.code(), 1, "two targets fail: {}", output_of(&run));
        assert!(run.stderr().len() > 10_000, "trace logging is on");
        outputs.push_str(&run.stdout());
        outputs.push_str(&run.stderr());
    }
    // A wrong API password (account problem) at trace level.
    let wrong_api = "wrong-Api-Pass-2718";
    let mut bad = env.clone();
    bad.retain(|(k, _)| k != "DATAFORSEO_PASSWORD");
    bad.push(("DATAFORSEO_PASSWORD".into(), wrong_api.into()));
    let mut args = run_args(&pipeline);
    args.extend(["--log-level", "trace"].map(String::from));
    let run = backlinks_async(args, bad, dir.path().to_path_buf()).await;
    assert_eq!(run.code(), 3, "{}", output_of(&run));
    outputs.push_str(&run.stdout());
    outputs.push_str(&run.stderr());

    // Everything written under the working directory (data, state, …).
    let written: Vec<u8> = file_bytes(dir.path())
        .into_iter()
        .filter(|(p, _)| p.extension().is_none_or(|e| e != "toml"))
        .flat_map(|(_, b)| b)
        .collect();
    // Every table of the database, as text.
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(tables.iter().any(|(t,)| t == "requests"));
    let mut stored = String::new();
    for (table,) in &tables {
        let (text,): (Option<String>,) = sqlx::query_as(&format!(
            "SELECT string_agg(to_jsonb(t)::text, ' ') FROM {table} t"
        ))
        .fetch_one(&mut admin)
        .await
        .unwrap();
        stored.push_str(&text.unwrap_or_default());
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{LOGIN}:{PASSWORD}"));
    let wrong_basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{LOGIN}:{wrong_api}"));
    for secret in [
        LOGIN,
        PASSWORD,
        db_password,
        wrong_api,
        &basic,
        &wrong_basic,
    ] {
        assert!(!outputs.contains(secret), "{secret} in logs");
        assert!(!stored.contains(secret), "{secret} in the database");
        assert!(
            !written
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "{secret} in files"
        );
    }
    sandbox.shutdown().await;
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

const CSV_PIPELINE: &str = "name = \"p\"\n[targets]\ncsv = \"targets.csv\"\n[endpoints.summary]\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_million_line_csv_is_counted_exactly() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "p.toml", CSV_PIPELINE);
    // 1,000,000 rows over 250,000 domains; every 20,000th row is invalid.
    {
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(dir.path().join("targets.csv")).unwrap());
        writeln!(out, "\u{feff}target,note").unwrap();
        for i in 0..1_000_000u32 {
            let n = i % 250_000;
            if i % 20_000 == 19_999 {
                write!(out, "bad target {i},x\r\n").unwrap();
            } else if i % 2 == 0 {
                write!(out, "site{n}.example.com,\"a, b\"\r\n").unwrap();
            } else {
                write!(out, "https://www.SITE{n}.example.com/,\r\n").unwrap();
            }
        }
    }
    let run = backlinks(&["validate", p.to_str().unwrap()], &[], dir.path());
    assert_eq!(
        run.code(),
        2,
        "rejected rows make validate fail: {}",
        run.stderr()
    );
    let rejected = 1_000_000 / 20_000;
    let distinct = 250_000;
    assert!(
        run.stdout().contains(&format!(
            "{distinct} targets ({rejected} rejected, {} duplicates)",
            1_000_000 - rejected - distinct
        )),
        "{}",
        &run.stdout()[..run.stdout().len().min(2000)]
    );
    // Row i is on line i + 2.
    assert!(
        run.stdout().contains("targets.csv:1000001"),
        "the last bad row is named"
    );
    assert!(
        run.stdout().contains("targets.csv:20001"),
        "the first bad row is named"
    );
}

#[test]
fn csv_quirks_are_read_with_the_right_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "p.toml", CSV_PIPELINE);
    write(
        dir.path(),
        "targets.csv",
        concat!(
            "\u{feff}\r\n",
            "owner,\"Target\",note\r\n",
            "a,\"example.com\",\"comma, inside\"\r\n",
            "\r\n",
            "b,\"https://example.org/a,b\",\"two\r\nlines\"\r\n",
            "c,\"bad, target\",x\r\n",
            "d,EXAMPLE.com,\r\n",
            "e\r\n",
            "f,example.net",
        ),
    );
    let run = backlinks(&["validate", p.to_str().unwrap()], &[], dir.path());
    let out = run.stdout();
    assert_eq!(run.code(), 2, "{out}\n{}", run.stderr());
    assert!(
        out.contains("3 targets (2 rejected, 1 duplicates)"),
        "{out}"
    );
    assert!(
        out.contains("targets.csv:7: target \"bad, target\": contains whitespace"),
        "{out}"
    );
    // A row without the target column is rejected with its line.
    assert!(out.contains("targets.csv:9"), "{out}");
}

#[test]
fn hostile_target_values_are_rejected_by_line_and_never_escape_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "p.toml", CSV_PIPELINE);
    let long_label = format!("{}.com", "a".repeat(64));
    let long_domain = format!("{}.com", vec!["b".repeat(60); 5].join("."));
    let long_url = format!("https://example.com/{}", "p".repeat(3000));
    let rows = [
        ("exa mple.com", Some("contains whitespace")),
        ("https://Example.COM", None),
        ("../../etc/passwd", Some("contains `..`")),
        ("https://example.com/a/../../b", Some("contains `..`")),
        ("example.com/a/b", Some("")),
        ("example.com\\evil", Some("contains a backslash")),
        ("a\u{7}b.com", Some("contains a control character")),
        ("a\u{0}b.com", Some("contains a control character")),
        (
            long_label.as_str(),
            Some("a domain label is at most 63 characters"),
        ),
        (
            long_domain.as_str(),
            Some("a domain name is at most 253 characters"),
        ),
        (long_url.as_str(), Some("longer than 2048 characters")),
        ("Bücher.de", None),
        ("https://example.com/dir%2F..%2Fx", Some("")),
    ];
    let mut csv = String::from("target\n");
    for (value, _) in &rows {
        csv.push('"');
        csv.push_str(value);
        csv.push_str("\"\n");
    }
    write(dir.path(), "targets.csv", &csv);
    let run = backlinks(&["validate", p.to_str().unwrap()], &[], dir.path());
    let out = run.stdout();
    assert_eq!(run.code(), 2, "{out}\n{}", run.stderr());
    for (i, (value, reason)) in rows.iter().enumerate() {
        let place = format!("targets.csv:{}:", i + 2);
        match reason {
            Some(reason) => {
                let line = out
                    .lines()
                    .find(|l| l.contains(&place))
                    .unwrap_or_else(|| panic!("{value:?} not rejected\n{out}"));
                assert!(line.contains(reason), "{line}");
                assert!(
                    !line.contains('\u{0}') && !line.contains('\u{7}'),
                    "control characters are escaped: {line:?}"
                );
            }
            None => assert!(!out.contains(&place), "{value:?} rejected\n{out}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_valid_targets_land_inside_the_data_directory() {
    let sandbox = sandbox(SandboxConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<String> = [
        "https://example.com/a/b/../c",
        "https://example.com/%2e%2e/%2e%2e/etc",
        "https://example.com/dir/sub/page?x=/y",
        "Bücher.de",
        &format!("https://example.com/{}", "q".repeat(1500)),
    ]
    .map(String::from)
    .to_vec();
    let pipeline = pipeline_file(
        dir.path(),
        "rel.toml",
        &targets,
        "[endpoints.summary]",
        false,
    );
    let run = backlinks_async(
        run_args(&pipeline),
        api_env(&sandbox),
        dir.path().to_path_buf(),
    )
    .await;
    let out = output_of(&run);
    assert!(matches!(run.code(), 0 | 1), "{out}");
    let summary_dir = dir
        .path()
        .join("data/summary")
        .join(format!("snapshot_date={SNAPSHOT}"));
    // Every file written sits directly in its partition directory.
    for path in file_bytes(&dir.path().join("data")).keys() {
        let parent = path.parent().unwrap();
        assert!(
            parent
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snapshot_date="),
            "{} is outside a partition directory",
            path.display()
        );
        assert!(path.starts_with(dir.path().join("data")));
    }
    let landed = count_by_target(&parquet_records(&dir.path().join("data"), "summary"));
    assert!(landed.contains_key("xn--bcher-kva.de"), "{landed:?}\n{out}");
    assert!(summary_dir.is_dir());
    for t in landed.keys() {
        assert!(!t.contains(".."), "{t} kept a `..`");
    }
    sandbox.shutdown().await;
}

#[test]
fn config_mistakes_name_the_file_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "targets.csv", "target\nexample.com\n");
    let long_tag = "t".repeat(256);
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "tags.toml",
            format!(
                "{CSV_PIPELINE}tag = \"{long_tag}\"\n[endpoints.backlinks]\ntag = \"{long_tag}\"\n"
            ),
            vec![
                "endpoints.summary.tag is 256 characters long",
                "endpoints.backlinks.tag is 256 characters long",
            ],
        ),
        (
            "nested_unknown.toml",
            format!("{CSV_PIPELINE}[endpoints.backlinks]\nlimitt = 5\n"),
            vec!["limitt", "nested_unknown.toml"],
        ),
        (
            "section.toml",
            format!("{CSV_PIPELINE}[sinkz]\ndir = \"x\"\n"),
            vec!["sinkz", "section.toml"],
        ),
        (
            "types.toml",
            format!("{CSV_PIPELINE}[sinks.postgres]\nenabled = \"maybe\"\n"),
            vec!["enabled", "types.toml"],
        ),
        (
            "negative.toml",
            format!("{CSV_PIPELINE}[api]\nrequests_per_minute = -5\n"),
            vec!["requests_per_minute", "negative.toml"],
        ),
        (
            "syntax.toml",
            format!("{CSV_PIPELINE}[api\nmax_in_flight = 3\n"),
            vec!["syntax.toml", "line 5"],
        ),
        (
            "ranges.toml",
            format!(
                "{CSV_PIPELINE}internal_list_limit = 1001\n[api]\nmax_in_flight = 31\n[endpoints.backlinks]\nlimit = 0\n"
            ),
            vec![
                "internal_list_limit = 1001",
                "api.max_in_flight = 31",
                "endpoints.backlinks.limit = 0",
            ],
        ),
    ];
    for (file, text, needles) in cases {
        let p = write(dir.path(), file, &text);
        let run = backlinks(&["validate", p.to_str().unwrap()], &[], dir.path());
        assert_eq!(run.code(), 2, "{file}: {}", run.stderr());
        for needle in needles {
            assert!(
                run.stderr().contains(needle),
                "{file}: {needle} missing in\n{}",
                run.stderr()
            );
        }
    }
}
