//! A nightly job an operator can trust: one run of a pipeline and day at
//! a time, nothing waits forever, one truthful outcome, errors that point
//! at the right place. Each test runs the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SNAPSHOT: &str = "2026-03-04";

/// A pipeline on the embedded sandbox whose answers take `latency_ms`
/// each, one at a time: a run of `targets` takes about their product.
fn slow_pipeline(dir: &Path, name: &str, targets: &[&str], latency_ms: u64) -> PathBuf {
    write_pipeline(
        &dir.join(format!("{name}.toml")),
        name,
        targets,
        &format!(
            r#"[endpoints.summary]
[api]
max_in_flight = 1
[sinks.parquet]
dir = "data"
[state]
dir = "state"
[sandbox]
latency_ms = {latency_ms}
latency_jitter_ms = 0
"#
        ),
    )
}

fn runs_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("state/runs")
        .join(name)
        .join(format!("snapshot_date={SNAPSHOT}"))
}

fn spawn(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Child {
    backlinks_command(args, env, cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

fn finish(child: Child) -> Run {
    Run {
        output: child.wait_with_output().expect("the binary ends"),
    }
}

/// Waits until a run of `name` has written its `running` manifest; returns
/// its run id.
fn running_run_id(dir: &Path, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = std::fs::read_dir(runs_dir(dir, name))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find_map(|n| {
                (!n.starts_with('.') && n.ends_with(".json"))
                    .then(|| n.trim_end_matches(".json").to_owned())
            });
        if let Some(id) = found {
            return id;
        }
        assert!(Instant::now() < deadline, "no run of {name} started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn output_of(run: &Run) -> String {
    format!(
        "code {}\nstdout:\n{}\nstderr:\n{}",
        run.code(),
        run.stdout(),
        run.stderr()
    )
}

#[test]
fn a_second_run_of_the_same_pipeline_and_day_refuses_at_once_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let p = slow_pipeline(dir.path(), "ops", &["a.example.com", "b.example.com"], 1500);
    let p = p.to_str().unwrap();
    let args = ["run", p, "--as-of", SNAPSHOT, "--no-progress"];
    let first = spawn(&args, &[], dir.path());
    let first_id = running_run_id(dir.path(), "ops");

    let started = Instant::now();
    let second = backlinks(&args, &[], dir.path());
    let took = started.elapsed();
    assert_eq!(second.code(), 5, "{}", output_of(&second));
    assert!(
        took < Duration::from_secs(2),
        "refused after {took:?}: {}",
        output_of(&second)
    );
    assert!(
        second.stderr().contains(&first_id) && second.stderr().contains("another run holds"),
        "{}",
        output_of(&second)
    );

    let first = finish(first);
    assert_eq!(first.code(), 0, "{}", output_of(&first));
    // The refused run left no trace: one manifest, that of the first.
    let manifests: Vec<_> = std::fs::read_dir(runs_dir(dir.path(), "ops"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect();
    assert_eq!(manifests, vec![format!("{first_id}.json")]);
}

#[test]
fn with_wait_the_second_run_waits_for_the_first_and_then_runs() {
    let dir = tempfile::tempdir().unwrap();
    let p = slow_pipeline(dir.path(), "opswait", &["a.example.com"], 1500);
    let p = p.to_str().unwrap();
    let args = ["run", p, "--as-of", SNAPSHOT, "--no-progress"];
    let first = spawn(&args, &[], dir.path());
    running_run_id(dir.path(), "opswait");
    let second = spawn(
        &["run", p, "--as-of", SNAPSHOT, "--no-progress", "--wait"],
        &[],
        dir.path(),
    );
    let first = finish(first);
    assert_eq!(first.code(), 0, "{}", output_of(&first));
    let second = finish(second);
    assert_eq!(second.code(), 0, "{}", output_of(&second));
    assert!(
        second.stderr().contains("waiting for another run"),
        "{}",
        output_of(&second)
    );
}

#[test]
fn a_killed_run_never_leaves_the_day_locked() {
    let dir = tempfile::tempdir().unwrap();
    let p = slow_pipeline(
        dir.path(),
        "opskill",
        &["a.example.com", "b.example.com"],
        3000,
    );
    let p = p.to_str().unwrap();
    let args = ["run", p, "--as-of", SNAPSHOT, "--no-progress"];
    let mut first = spawn(&args, &[], dir.path());
    running_run_id(dir.path(), "opskill");
    first.kill().unwrap(); // SIGKILL
    let killed = finish(first);
    assert_eq!(killed.code(), -1, "{}", output_of(&killed));

    let fast = slow_pipeline(
        dir.path(),
        "opskill",
        &["a.example.com", "b.example.com"],
        1,
    );
    let next = backlinks(
        &[
            "run",
            fast.to_str().unwrap(),
            "--as-of",
            SNAPSHOT,
            "--no-progress",
        ],
        &[],
        dir.path(),
    );
    assert_eq!(next.code(), 0, "{}", output_of(&next));
}

/// A server on 127.0.0.1 that accepts connections and never says a word;
/// returns its port. The connections stay open until the test ends.
fn silent_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    port
}

/// Runs the binary, killing it if it is still running after `limit`.
fn run_with_limit(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &Path,
    limit: Duration,
) -> (Run, Duration) {
    let started = Instant::now();
    let mut child = spawn(args, env, cwd);
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            let run = finish(child);
            panic!(
                "still running after {limit:?}, killed:\n{}",
                output_of(&run)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (finish(child), started.elapsed())
}

#[test]
fn migrate_against_a_silent_server_gives_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = silent_server();
    let url = format!("postgres://postgres@127.0.0.1:{port}/silent");
    let (run, took) = run_with_limit(
        &["migrate", "--connect-timeout-secs", "2"],
        &[("DATABASE_URL", &url)],
        dir.path(),
        Duration::from_secs(20),
    );
    assert_ne!(run.code(), 0, "{}", output_of(&run));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        run.stderr().contains(&format!("127.0.0.1:{port}")) && run.stderr().contains("2 s"),
        "{}",
        output_of(&run)
    );
}

#[test]
fn a_run_against_a_silent_server_gives_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = silent_server();
    let url = format!("postgres://postgres@127.0.0.1:{port}/silent");
    let p = write_pipeline(
        &dir.path().join("silent.toml"),
        "silent",
        &["a.example.com"],
        "[endpoints.summary]\n[sinks.postgres]\nenabled = true\nconnect_timeout_secs = 2\n[state]\ndir = \"state\"\n[sandbox]\nlatency_ms = 1\n",
    );
    let (run, took) = run_with_limit(
        &[
            "run",
            p.to_str().unwrap(),
            "--as-of",
            SNAPSHOT,
            "--no-progress",
        ],
        &[("DATABASE_URL", &url)],
        dir.path(),
        Duration::from_secs(20),
    );
    assert_ne!(run.code(), 0, "{}", output_of(&run));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        run.stderr().contains(&format!("127.0.0.1:{port}"))
            && run.stderr().contains("connect_timeout_secs"),
        "{}",
        output_of(&run)
    );
}

/// The status of `run_id` in the `runs` table of `db`, if it is there.
async fn run_status(db: &str, run_id: &str) -> Option<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db).await.expect("connect");
    sqlx::query_scalar("SELECT status FROM runs WHERE run_id = $1")
        .bind(run_id)
        .fetch_optional(&mut conn)
        .await
        .expect("select")
}

fn manifest_status(dir: &Path, name: &str, run_id: &str) -> serde_json::Value {
    let path = runs_dir(dir, name).join(format!("{run_id}.json"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    manifest["status"].clone()
}

#[tokio::test]
async fn the_next_run_marks_a_killed_run_crashed_and_removes_its_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let db = scratch_database("crashed").await;
    let body = |latency_ms: u64| {
        format!(
            "[endpoints.summary]\n[api]\nmax_in_flight = 1\n[sinks.parquet]\ndir = \"data\"\n[sinks.postgres]\nenabled = true\n[state]\ndir = \"state\"\n[sandbox]\nlatency_ms = {latency_ms}\nlatency_jitter_ms = 0\n"
        )
    };
    let targets = ["a.example.com", "b.example.com"];
    let p = write_pipeline(
        &dir.path().join("crash.toml"),
        "crash",
        &targets,
        &body(5000),
    );
    let p = p.to_str().unwrap().to_owned();
    let args = ["run", p.as_str(), "--as-of", SNAPSHOT, "--no-progress"];
    let env = [("DATABASE_URL", db.as_str())];
    let mut first = spawn(&args, &env, dir.path());
    let killed_id = running_run_id(dir.path(), "crash");
    let deadline = Instant::now() + Duration::from_secs(30);
    while run_status(&db, &killed_id).await.is_none() {
        assert!(Instant::now() < deadline, "the run never recorded itself");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap(); // SIGKILL
    let killed = finish(first);
    assert_eq!(killed.code(), -1, "{}", output_of(&killed));
    assert_eq!(manifest_status(dir.path(), "crash", &killed_id), "running");
    assert_eq!(
        run_status(&db, &killed_id).await.as_deref(),
        Some("running")
    );

    // What a run killed while staging partitions leaves behind, and what
    // belongs to others: another pipeline, another day.
    let litter = [
        "data/summary/snapshot_date=2026-03-04/.crash__a.example.com.parquet.tmp-AbC123",
        "data/requests/snapshot_date=2026-03-04/.crash__0190.parquet.tmp-XyZ789",
    ];
    let others = [
        "data/summary/snapshot_date=2026-03-04/.other__a.example.com.parquet.tmp-AbC123",
        "data/summary/snapshot_date=2026-03-05/.crash__a.example.com.parquet.tmp-AbC123",
    ];
    for f in litter.iter().chain(&others) {
        let path = dir.path().join(f);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"half a file").unwrap();
    }

    write_pipeline(&dir.path().join("crash.toml"), "crash", &targets, &body(1));
    let next = backlinks(&args, &env, dir.path());
    assert_eq!(next.code(), 0, "{}", output_of(&next));
    assert_eq!(manifest_status(dir.path(), "crash", &killed_id), "crashed");
    assert_eq!(
        run_status(&db, &killed_id).await.as_deref(),
        Some("crashed")
    );
    for f in litter {
        assert!(!dir.path().join(f).exists(), "{f} is still there");
    }
    for f in others {
        assert!(dir.path().join(f).exists(), "{f} was removed");
    }
    let status = backlinks(
        &["status", p.as_str(), "--as-of", SNAPSHOT],
        &[],
        dir.path(),
    );
    assert!(
        status.stdout().contains("crashed"),
        "{}",
        output_of(&status)
    );
}

#[test]
fn validate_and_run_agree_and_the_message_matches_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let body = "[endpoints.summary]\n[sandbox]\nlatency_ms = 1\n[state]\ndir = \"state\"\n";
    // Rejected targets: not valid, exit code 2.
    let p = write_pipeline(
        &dir.path().join("rej.toml"),
        "rej",
        &["example.com", "not a domain"],
        body,
    );
    let run = backlinks(&["validate", p.to_str().unwrap()], &[], dir.path());
    assert_eq!(run.code(), 2, "{}", output_of(&run));
    assert!(!run.stdout().contains("is valid"), "{}", output_of(&run));
    assert!(run.stdout().contains("is not valid"), "{}", output_of(&run));
    // No targets at all: `run` refuses, and so does validate, alike.
    let empty: [&str; 0] = [];
    let p = write_pipeline(&dir.path().join("empty.toml"), "empty", &empty, body);
    let validated = backlinks(&["validate", p.to_str().unwrap()], &[], dir.path());
    let ran = backlinks(
        &["run", p.to_str().unwrap(), "--no-progress"],
        &[],
        dir.path(),
    );
    assert_eq!(ran.code(), 2, "{}", output_of(&ran));
    assert_eq!(validated.code(), 2, "{}", output_of(&validated));
    assert!(
        !validated.stdout().contains("is valid"),
        "{}",
        output_of(&validated)
    );
    assert!(
        validated.stderr().contains("no valid targets")
            && ran.stderr().contains("no valid targets"),
        "{}\n{}",
        output_of(&validated),
        output_of(&ran)
    );
    // Good targets: valid, exit code 0.
    let p = write_pipeline(
        &dir.path().join("good.toml"),
        "good",
        &["example.com"],
        body,
    );
    let run = backlinks(&["validate", p.to_str().unwrap()], &[], dir.path());
    assert_eq!(run.code(), 0, "{}", output_of(&run));
    assert!(run.stdout().contains("is valid"), "{}", output_of(&run));
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let p = slow_pipeline(dir.path(), "pipe", &["a.example.com"], 1);
    let bin = env!("CARGO_BIN_EXE_backlinks");
    for args in [
        format!("status {} --as-of {SNAPSHOT}", p.display()),
        format!("validate {} --explain", p.display()),
        format!("estimate {}", p.display()),
    ] {
        // `true` ends at once: the binary writes into a pipe nobody reads.
        let script = format!("(sleep 0.3; '{bin}' {args}; echo \"code $?\" >&2) | true");
        let run = Run {
            output: std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .current_dir(dir.path())
                .output()
                .unwrap(),
        };
        assert!(
            run.stderr().contains("code 0"),
            "{args}: {}",
            output_of(&run)
        );
        assert!(
            !run.stderr().contains("panicked"),
            "{args}: {}",
            output_of(&run)
        );
    }
}

#[tokio::test]
async fn a_database_that_does_not_match_the_migrations_is_refused_before_any_request() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let db = scratch_database("schema").await;
    let env = [("DATABASE_URL", db.as_str())];
    let body = |migrate: bool| {
        format!(
            "[endpoints.summary]\n[sinks.postgres]\nenabled = true\nmigrate = {migrate}\n[state]\ndir = \"state\"\n[sandbox]\nlatency_ms = 1\n"
        )
    };
    // A run of pipeline `name` is refused with exit code 2, saying
    // `problem` and to migrate, before any run started.
    let refused = |name: &str, migrate: bool, problem: &str| {
        let p = write_pipeline(
            &dir.path().join(format!("{name}.toml")),
            name,
            &["a.example.com"],
            &body(migrate),
        );
        let args = [
            "run",
            p.to_str().unwrap(),
            "--as-of",
            SNAPSHOT,
            "--no-progress",
        ];
        let run = backlinks(&args, &env, dir.path());
        assert_eq!(run.code(), 2, "{}", output_of(&run));
        assert!(
            run.stderr().contains(problem) && run.stderr().contains("backlinks migrate"),
            "{}",
            output_of(&run)
        );
        let no_run_started = std::fs::read_dir(runs_dir(dir.path(), name))
            .into_iter()
            .flatten()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".json"));
        assert!(no_run_started, "{name}");
    };
    // Never migrated.
    refused("never", false, "table runs is missing");

    // Migrated, then a column dropped by hand.
    let migrated = backlinks(&["migrate"], &env, dir.path());
    assert_eq!(migrated.code(), 0, "{}", output_of(&migrated));
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    sqlx::query("ALTER TABLE backlinks DROP COLUMN anchor")
        .execute(&mut conn)
        .await
        .unwrap();
    refused("dropped", true, "table backlinks lacks column anchor");
}

#[tokio::test]
async fn migrate_lists_what_it_applied() {
    let dir = tempfile::tempdir().unwrap();
    let db = scratch_database("migrate").await;
    let env = [("DATABASE_URL", db.as_str())];
    let first = backlinks(&["migrate"], &env, dir.path());
    assert_eq!(first.code(), 0, "{}", output_of(&first));
    for name in ["0001_initial", "0002_backlinks", "0003_archive_and_budget"] {
        assert!(
            first
                .stdout()
                .contains(&format!("applied migration {name}")),
            "{}",
            output_of(&first)
        );
    }
    let again = backlinks(&["migrate"], &env, dir.path());
    assert_eq!(again.code(), 0, "{}", output_of(&again));
    assert!(
        again.stdout().contains("up to date"),
        "{}",
        output_of(&again)
    );
    assert!(
        !again.stdout().contains("applied migration"),
        "{}",
        output_of(&again)
    );
}

#[test]
fn errors_point_at_the_right_place() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("password");
    std::fs::write(&secret_file, "from-the-file\n").unwrap();
    let p = write_pipeline(
        &dir.path().join("api.toml"),
        "api",
        &["a.example.com"],
        "[endpoints.summary]\n[state]\ndir = \"state\"\n",
    );
    // Both passwords: which one would be used is not clear.
    let run = backlinks(
        &["run", p.to_str().unwrap(), "--no-progress"],
        &[
            ("DATAFORSEO_LOGIN", "me@example.com"),
            ("DATAFORSEO_PASSWORD", "from-the-env"),
            ("DATAFORSEO_PASSWORD_FILE", secret_file.to_str().unwrap()),
        ],
        dir.path(),
    );
    assert_eq!(run.code(), 2, "{}", output_of(&run));
    assert!(
        run.stderr()
            .contains("DATAFORSEO_PASSWORD and DATAFORSEO_PASSWORD_FILE"),
        "{}",
        output_of(&run)
    );
    assert!(!run.stderr().contains("from-the-"), "{}", output_of(&run));

    // A database that is not Postgres: refused with the reason, the URL
    // (and its password) never shown.
    let run = backlinks(
        &["migrate"],
        &[("DATABASE_URL", "mysql://me:hunter2@db:3306/x")],
        dir.path(),
    );
    assert_eq!(run.code(), 2, "{}", output_of(&run));
    assert!(
        run.stderr().contains("`mysql`") && run.stderr().contains("PostgreSQL"),
        "{}",
        output_of(&run)
    );
    assert!(!run.stderr().contains("hunter2"), "{}", output_of(&run));

    // A snapshot date in the future is allowed, with a warning.
    let p = slow_pipeline(dir.path(), "future", &["a.example.com"], 1);
    let run = backlinks(
        &[
            "run",
            p.to_str().unwrap(),
            "--as-of",
            "2999-01-01",
            "--no-progress",
        ],
        &[],
        dir.path(),
    );
    assert_eq!(run.code(), 0, "{}", output_of(&run));
    assert!(
        run.stderr().contains("in the future"),
        "{}",
        output_of(&run)
    );
}
