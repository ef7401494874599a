//! `--defer-indexes`: a large load drops the `domain_from` index of
//! `backlinks` and builds it once at the end; a run that died before
//! building it leaves it to the next run.

mod common;

use std::path::Path;

use backlinks_sandbox::SandboxConfig;
use common::*;
use sqlx::Connection;

const INDEX: &str = "backlinks_domain_from_idx";

async fn index_exists(url: &str) -> bool {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(INDEX)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn backlinks_rows(url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM backlinks")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn pipeline(dir: &Path) -> std::path::PathBuf {
    write_pipeline(
        &dir.join("ix.toml"),
        "ix",
        &["items1500.example.com", "items700.example.com"],
        r#"[endpoints.backlinks]
[api]
requests_per_minute = 20000
[sinks.parquet]
enabled = false
[sinks.postgres]
enabled = true
"#,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deferred_load_builds_the_index_at_the_end_and_a_missing_one_is_built_by_the_next_run() {
    let sandbox = sandbox(SandboxConfig {
        requests_per_minute: 0,
        ..Default::default()
    })
    .await;
    let database = scratch_database("ix").await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline(dir.path()).display().to_string();
    let mut env = api_env(&sandbox);
    env.push(("DATABASE_URL".into(), database.to_string()));

    let run = |args: &[&str]| {
        let mut all = vec!["run".to_owned(), pipeline.clone()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        backlinks_async(all, env.clone(), dir.path().to_path_buf())
    };
    let deferred = run(&["--as-of", "2026-04-01", "--defer-indexes"]).await;
    assert_eq!(deferred.code(), 0, "{}", deferred.stderr());
    assert!(
        deferred.stderr().contains("indexes dropped for the load")
            && deferred.stderr().contains("indexes built after the load"),
        "{}",
        deferred.stderr()
    );
    assert!(index_exists(&database).await, "built again at the end");
    assert_eq!(backlinks_rows(&database).await, 2200);

    // A deferred load that died before its end leaves the index missing:
    // the next run, deferred or not, builds it.
    let mut conn = sqlx::PgConnection::connect(&database).await.unwrap();
    sqlx::query(&format!("DROP INDEX {INDEX}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let next = run(&["--as-of", "2026-04-02"]).await;
    assert_eq!(next.code(), 0, "{}", next.stderr());
    assert!(
        next.stderr()
            .contains("built the indexes an earlier deferred load left missing"),
        "{}",
        next.stderr()
    );
    assert!(index_exists(&database).await);
    assert_eq!(backlinks_rows(&database).await, 4400);
}
