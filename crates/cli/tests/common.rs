//! Shared helpers of the end-to-end tests: a sandbox, a scratch database,
//! the binary, and readers that turn both sinks into comparable records.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use backlinks_sandbox::{Sandbox, SandboxConfig};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

pub const LOGIN: &str = "e2e-login@example.com";
pub const PASSWORD: &str = "e2e-Pa55w0rd-never-printed";

/// A record in canonical form: column name → JSON value; timestamps as
/// microseconds since the epoch, dates as `YYYY-MM-DD`, JSON columns parsed.
pub type Record = BTreeMap<String, Value>;

pub async fn sandbox(config: SandboxConfig) -> Sandbox {
    Sandbox::start(
        SandboxConfig {
            login: LOGIN.into(),
            password: PASSWORD.into(),
            ..config
        },
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .expect("sandbox starts")
}

/// `DATABASE_URL`, or the local server with trust auth.
pub fn base_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Writes a pipeline file at `path`: `name = <name>`, `[targets]` with the
/// inline `targets`, then `body` (endpoints, api, sinks: what differs
/// between the test files).
pub fn write_pipeline(path: &Path, name: &str, targets: &[impl AsRef<str>], body: &str) -> PathBuf {
    let list = targets
        .iter()
        .map(|t| format!("{:?}", t.as_ref()))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!("name = {name:?}\n[targets]\nlist = [{list}]\n{body}");
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Every file under `root` (recursively), sorted.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Scratch databases older than this are dropped when a test creates one.
const SCRATCH_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// A fresh database on the server of `DATABASE_URL`, dropped when the
/// returned guard is dropped, unless the test is failing (the thread is
/// panicking): then it is kept for inspection. The name is unique per call;
/// the databases kept by earlier failed runs (older than
/// [`SCRATCH_KEPT_FOR`], by the time in their UUIDv7) are dropped here, so
/// a machine that runs the tests every day does not fill up with them.
pub async fn scratch_database(tag: &str) -> ScratchDatabase {
    let base = base_database_url();
    let mut admin = PgConnection::connect(&base)
        .await
        .expect("DATABASE_URL reachable");
    drop_stale_scratch_databases(&mut admin).await;
    // The whole UUID: its first half is mostly the time, and two tests
    // with the same tag can start in the same millisecond. Tags stay short
    // enough for Postgres' 63-byte names.
    let name = format!("backlinks_e2e_{tag}_{}", uuid::Uuid::now_v7().simple());
    assert!(name.len() <= 63, "tag {tag:?} too long for a database name");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create database");
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    url.set_path(&name);
    ScratchDatabase {
        url: url.to_string(),
        name,
    }
}

/// A scratch database: its URL (the guard dereferences to it), dropped
/// with the guard when the test passes.
#[derive(Debug)]
pub struct ScratchDatabase {
    url: String,
    name: String,
}

impl ScratchDatabase {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for ScratchDatabase {
    type Target = String;
    fn deref(&self) -> &String {
        &self.url
    }
}

impl AsRef<str> for ScratchDatabase {
    fn as_ref(&self) -> &str {
        &self.url
    }
}

impl std::fmt::Display for ScratchDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "keeping the scratch database {} of the failed test",
                self.name
            );
            return;
        }
        // On a thread of its own: the test's runtime may be the one
        // dropping the guard, and it cannot block on itself.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&base_database_url()).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .ok()
                    .map(|_| ())
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            // Left for `drop_stale_scratch_databases` of a later run.
            eprintln!("could not drop the scratch database {}", self.name);
        }
    }
}

/// Drops the scratch databases of earlier test runs; errors (another test
/// dropping the same one, a connection still open) are left for next time.
async fn drop_stale_scratch_databases(admin: &mut PgConnection) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname LIKE 'backlinks\\_e2e\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    for name in names {
        let created = name
            .rsplit('_')
            .next()
            .and_then(|id| uuid::Uuid::try_parse(id).ok())
            .and_then(|id| id.get_timestamp())
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                std::time::Duration::new(secs, nanos)
            });
        if created.is_some_and(|at| now.saturating_sub(at) > SCRATCH_KEPT_FOR) {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut *admin)
                .await;
        }
    }
}

pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

/// Runs the binary with a clean environment plus `env`.
pub fn backlinks(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Run {
    let output = backlinks_command(args, env, cwd)
        .output()
        .expect("the binary runs");
    Run { output }
}

/// Runs the binary on a blocking thread (the sandbox lives on the test's runtime).
pub async fn backlinks_async(args: Vec<String>, env: Vec<(String, String)>, cwd: PathBuf) -> Run {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        backlinks(&args, &env, &cwd)
    })
    .await
    .expect("runner thread")
}

pub fn api_env(sandbox: &Sandbox) -> Vec<(String, String)> {
    vec![
        ("DATAFORSEO_BASE_URL".into(), sandbox.base_url()),
        ("DATAFORSEO_LOGIN".into(), LOGIN.into()),
        ("DATAFORSEO_PASSWORD".into(), PASSWORD.into()),
    ]
}

/// Every record of every Parquet file of `dataset` under `root`.
pub fn parquet_records(root: &Path, dataset: &str) -> Vec<Record> {
    let mut records = Vec::new();
    let dir = root.join(dataset);
    let Ok(dates) = std::fs::read_dir(&dir) else {
        return records;
    };
    for date in dates {
        let date = date.expect("dir entry").path();
        for file in std::fs::read_dir(&date).expect("date dir") {
            let path = file.expect("dir entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".parquet") || name.starts_with('.') {
                continue;
            }
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                records.extend(batch_records(&batch.unwrap()));
            }
        }
    }
    records
}

/// Names of temporary files left anywhere under `root`.
pub fn leftover_temp_files(root: &Path) -> Vec<PathBuf> {
    files_under(root)
        .into_iter()
        .filter(|path| {
            !path.to_string_lossy().ends_with(".parquet")
                || path.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .collect()
}

const JSON_COLUMNS: [&str; 4] = ["extra", "rows", "unknown_fields", "settings"];

pub fn batch_records(batch: &RecordBatch) -> Vec<Record> {
    let schema = batch.schema();
    (0..batch.num_rows())
        .map(|row| {
            schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, field)| {
                    let value = cell(batch.column(i).as_ref(), row);
                    let value = match (JSON_COLUMNS.contains(&field.name().as_str()), value) {
                        (true, Value::String(s)) => serde_json::from_str(&s).unwrap(),
                        (_, v) => v,
                    };
                    (field.name().clone(), value)
                })
                .collect()
        })
        .collect()
}

fn cell(array: &dyn Array, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Utf8 => json!(array.as_string::<i32>().value(row)),
        DataType::Int64 => json!(array.as_primitive::<Int64Type>().value(row)),
        DataType::Float64 => json!(array.as_primitive::<Float64Type>().value(row)),
        DataType::Boolean => json!(array.as_boolean().value(row)),
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(row);
            let date = chrono::NaiveDate::default() + chrono::Duration::days(i64::from(days));
            json!(date.to_string())
        }
        DataType::Timestamp(_, _) => {
            json!(array.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(row);
            let strings = list.as_string::<i32>();
            Value::Array(
                (0..strings.len())
                    .map(|i| {
                        if strings.is_null(i) {
                            Value::Null
                        } else {
                            json!(strings.value(i))
                        }
                    })
                    .collect(),
            )
        }
        other => panic!("unexpected type {other}"),
    }
}

/// Every row of a Postgres table, canonical like [`parquet_records`].
pub async fn postgres_records(url: &str, table: &str) -> Vec<Record> {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let rows: Vec<(Value,)> = sqlx::query_as(&format!("SELECT to_jsonb(t) FROM {table} t"))
        .fetch_all(&mut conn)
        .await
        .expect("select");
    let timestamp_columns: Vec<(String,)> = sqlx::query_as(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1 AND data_type = 'timestamp with time zone'",
    )
    .bind(table)
    .fetch_all(&mut conn)
    .await
    .expect("columns");
    rows.into_iter()
        .map(|(row,)| {
            let Value::Object(map) = row else {
                panic!("row is an object")
            };
            map.into_iter()
                .map(|(k, v)| {
                    let v = match (&v, timestamp_columns.iter().any(|(c,)| *c == k)) {
                        (Value::String(s), true) => json!(
                            chrono::DateTime::parse_from_rfc3339(s)
                                .unwrap_or_else(|e| panic!("{k}: {s}: {e}"))
                                .timestamp_micros()
                        ),
                        _ => v,
                    };
                    (k, v)
                })
                .collect()
        })
        .collect()
}

/// Microseconds since the epoch of an API date string.
pub fn api_micros(s: &str) -> i64 {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S %:z")
        .unwrap()
        .timestamp_micros()
}

/// The binary as a [`Command`] with a clean environment (none of the
/// caller's credentials, overrides or log settings) plus `env`; tests that
/// spawn it and signal it use it directly.
pub fn backlinks_command(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backlinks"));
    cmd.args(args).current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("DATAFORSEO_")
            || k.starts_with("BACKLINKS__")
            || k == "DATABASE_URL"
            || k == "RUST_LOG"
        {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The records of `dataset` in both sinks, each without the columns a run
/// decides (`fetched_at`, `task_id`), as sorted JSON lines: equal for two
/// runs that landed the same data.
pub async fn comparable_records(
    db: &str,
    data: &Path,
    dataset: &str,
) -> (Vec<String>, Vec<String>) {
    let canon = |records: Vec<Record>| {
        let mut lines: Vec<String> = records
            .into_iter()
            .map(|mut r| {
                r.remove("fetched_at");
                r.remove("task_id");
                serde_json::to_string(&r).unwrap()
            })
            .collect();
        lines.sort();
        lines
    };
    (
        canon(postgres_records(db, dataset).await),
        canon(parquet_records(data, dataset)),
    )
}
