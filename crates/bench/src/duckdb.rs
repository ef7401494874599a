//! The DuckDB peer: DuckDB reading the same response bodies as the replay
//! benchmark and writing Parquet with zstd, on the same cores, against
//! our replay of the same archive by the library.
//!
//! The archive's records are first written out as newline-delimited JSON
//! (untimed): one line per answer, `{"target", "page", "fetched_at",
//! "body"}` with the response body embedded as it is (not as an escaped
//! string), so that DuckDB parses each body once, as we do. Then
//! `scripts/bench-peer/duckdb_peer.py` (in the peers' virtual environment,
//! `scripts/bench-peer/setup.sh`) times one statement, [`statement`]:
//! `read_json` with the columns declared (nothing sampled or inferred),
//! `unnest` of `tasks[1].result[1].items` into one row per backlink with
//! the columns of our `backlinks` dataset, `COPY … TO` Parquet with zstd.

use std::fmt::Write as _;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use backlinks_model::Endpoint;
use backlinks_model::schema::{
    BACKLINK_INDIRECT_PATH, BACKLINK_ITEM_FIELDS, BACKLINK_RANKED_KEYWORDS, ItemType,
};
use serde::Deserialize;

use crate::library::{for_each_record, snapshot_date};
use crate::replay::{Archive, ReplayFigures, best};
use crate::report::{Goal, Section};
use crate::{Error, Result, Size, per_second, thousands};

/// The goal: our replay's rows/s ÷ DuckDB's.
pub const GOAL_RATIO: f64 = 2.0;

const SCRIPT: &str = "scripts/bench-peer/duckdb_peer.py";

/// What the peer printed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DuckOutput {
    pub duckdb_version: String,
    pub threads: u64,
    /// Rows the `COPY` wrote.
    pub rows: Option<u64>,
    pub seconds: f64,
    /// CPU time of the process during the statement (user + system, every
    /// thread).
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
}

/// One DuckDB run and the size of its file.
#[derive(Debug, Clone, PartialEq)]
pub struct DuckRun {
    pub output: DuckOutput,
    pub parquet_bytes: u64,
}

impl DuckRun {
    pub fn rows_per_second(&self) -> f64 {
        per_second(self.output.rows.unwrap_or(0) as f64, self.output.seconds)
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Writes the backlinks/live answers archived in `dir` to `out`, one JSON
/// object per line: target, page, fetch time and the body itself. Returns
/// the lines and the bytes of the bodies.
pub fn write_ndjson(dir: &Path, out: &Path) -> Result<(u64, u64)> {
    let failed = |source| Error::Io {
        action: "writing",
        path: out.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(out).map_err(failed)?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let mut lines = 0;
    let mut body_bytes = 0;
    for_each_record(dir, |record| {
        if record.endpoint != Endpoint::Backlinks.name() {
            return Ok(());
        }
        // A body is one JSON document; one written over several lines is
        // written again compactly.
        let body = if record.body.contains('\n') {
            serde_json::from_str::<serde_json::Value>(&record.body)
                .map(|v| v.to_string())
                .map_err(|e| Error::Child {
                    program: "raw archive".into(),
                    message: format!("a body of {} is not JSON: {e}", record.target),
                })?
        } else {
            record.body
        };
        body_bytes += body.len() as u64;
        write!(
            writer,
            "{{\"target\":{},\"page\":{},\"fetched_at\":{},\"body\":",
            json_string(&record.target),
            record.page,
            json_string(&record.fetched_at.to_rfc3339())
        )
        .map_err(failed)?;
        writer.write_all(body.as_bytes()).map_err(failed)?;
        writer.write_all(b"}\n").map_err(failed)?;
        lines += 1;
        Ok(())
    })?;
    writer.flush().map_err(failed)?;
    Ok((lines, body_bytes))
}

/// `'text'` as an SQL string literal.
fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `"name"` as an SQL identifier.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// DuckDB's type for an item field as JSON gives it (API dates stay text
/// and are parsed in the `SELECT`).
fn json_type(ty: ItemType) -> &'static str {
    match ty {
        ItemType::Text | ItemType::Timestamp => "VARCHAR",
        ItemType::Boolean => "BOOLEAN",
        ItemType::Int64 => "BIGINT",
        ItemType::TextList => "VARCHAR[]",
    }
}

/// The `COPY` DuckDB times: `ndjson` (from [`write_ndjson`]) → one row per
/// backlink with the columns of our `backlinks` dataset, in its order →
/// `parquet` (zstd). `extra` (the fields the schema does not name) is
/// left NULL, and `backlink_redirects` is not written.
pub fn statement(ndjson: &Path, parquet: &Path, pipeline: &str) -> String {
    let mut item = String::new();
    for (name, ty) in BACKLINK_ITEM_FIELDS {
        let _ = write!(item, "{} {}, ", ident(name), json_type(ty));
    }
    let (ranked, counts) = BACKLINK_RANKED_KEYWORDS;
    let ranked_type = counts
        .iter()
        .map(|c| format!("{} BIGINT", ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = write!(
        item,
        "{} STRUCT({ranked_type}), \"is_indirect_link\" BOOLEAN, {} STRUCT(\"type\" VARCHAR, \"status_code\" BIGINT, \"url\" VARCHAR)[]",
        ident(ranked),
        ident(BACKLINK_INDIRECT_PATH.0),
    );
    let body_type = format!(
        "STRUCT(tasks STRUCT(id VARCHAR, result STRUCT(target VARCHAR, items STRUCT({item})[])[])[])"
    );
    let columns = format!(
        "{{target: 'VARCHAR', page: 'BIGINT', fetched_at: 'TIMESTAMPTZ', body: {}}}",
        sql_string(&body_type)
    );
    let select = columns_of_backlinks(pipeline)
        .into_iter()
        .map(|(value, name)| format!("{value} AS {}", ident(&name)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "COPY (\n\
         WITH pages AS (\n  \
           SELECT target, page, fetched_at, body.tasks[1].id AS task_id, body.tasks[1].result[1].items AS items\n  \
           FROM read_json({}, format = 'newline_delimited', maximum_object_size = 268435456, columns = {columns})\n\
         ), numbered AS (\n  \
           SELECT *, CAST(coalesce(sum(len(items)) OVER (PARTITION BY target ORDER BY page ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS BIGINT) AS first_position\n  \
           FROM pages\n\
         ), flat AS (\n  \
           SELECT target, fetched_at, task_id, first_position, generate_subscripts(items, 1) - 1 AS page_index, unnest(items) AS it\n  \
           FROM numbered\n\
         )\n\
         SELECT {select}\n\
         FROM flat\n\
         ) TO {} (FORMAT parquet, COMPRESSION zstd)\n",
        sql_string(&ndjson.to_string_lossy()),
        sql_string(&parquet.to_string_lossy()),
    )
}

/// The `SELECT` list over the unnested items (`it`, with `target`,
/// `fetched_at`, `task_id`, `first_position` and `page_index` beside it):
/// `(value, column)` for each column of `backlinks`, in its order.
fn columns_of_backlinks(pipeline: &str) -> Vec<(String, String)> {
    let mut columns = vec![
        (sql_string(pipeline), "pipeline".to_owned()),
        ("target".to_owned(), "target".to_owned()),
        (
            format!("DATE {}", sql_string(&snapshot_date().to_string())),
            "snapshot_date".to_owned(),
        ),
        ("fetched_at".to_owned(), "fetched_at".to_owned()),
        (
            "first_position + page_index".to_owned(),
            "position".to_owned(),
        ),
        ("task_id".to_owned(), "task_id".to_owned()),
    ];
    for (name, ty) in BACKLINK_ITEM_FIELDS {
        let field = format!("it.{}", ident(name));
        let value = match ty {
            ItemType::Timestamp => format!("strptime({field}, '%Y-%m-%d %H:%M:%S %z')"),
            _ => field,
        };
        columns.push((value, name.to_owned()));
    }
    let (ranked, counts) = BACKLINK_RANKED_KEYWORDS;
    for count in counts {
        columns.push((
            format!("it.{}.{}", ident(ranked), ident(count)),
            count.to_owned(),
        ));
    }
    columns.push((
        "it.\"is_indirect_link\"".to_owned(),
        "is_indirect_link".to_owned(),
    ));
    columns.push((
        format!("len(it.{})", ident(BACKLINK_INDIRECT_PATH.0)),
        BACKLINK_INDIRECT_PATH.1.to_owned(),
    ));
    columns.push(("NULL::VARCHAR".to_owned(), "extra".to_owned()));
    columns
}

/// The peer's script, or why it cannot run.
fn locate() -> std::result::Result<(PathBuf, PathBuf), String> {
    let script = crate::peer::find_up(SCRIPT).ok_or_else(|| {
        format!("`{SCRIPT}` not found above the working directory (run from the repository)")
    })?;
    let python = crate::peer::python().ok_or_else(|| {
        "DuckDB is not installed: run `scripts/bench-peer/setup.sh` to create `.venv-bench-peer`"
            .to_owned()
    })?;
    let imports = Command::new(&python)
        .args(["-c", "import duckdb"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} cannot be run: {e}", python.display()))?;
    if !imports.status.success() {
        return Err(
            "the peers' environment has no DuckDB: run `scripts/bench-peer/setup.sh` again"
                .to_owned(),
        );
    }
    Ok((python, script))
}

/// Runs DuckDB once on `sql` with `threads` threads (blocking).
fn run(python: &Path, script: &Path, sql: &Path, threads: usize, dir: &Path) -> Result<DuckOutput> {
    let failed = |message: String| Error::Child {
        program: "bench peer (DuckDB)".into(),
        message,
    };
    let output = Command::new(python)
        .arg(script)
        .arg("--sql")
        .arg(sql)
        .arg("--threads")
        .arg(threads.to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(e.to_string()))?;
    crate::peer::report_of(&output, failed)
}

/// Runs DuckDB on the archive (`runs` times, each into a new file) and
/// renders the section with the ratio against our library replay.
pub async fn section(size: Size, archive: &Archive, ours: &ReplayFigures) -> Result<Section> {
    let command = format!(
        "scripts/bench-peer/setup.sh && cargo run --release -p backlinks-bench -- duckdb{}",
        size.flag()
    );
    let located = locate();
    if let Err(why) = &located {
        eprintln!("duckdb: skipped: {why}");
    }
    let dir = tempfile::Builder::new()
        .prefix("duckdb-")
        .tempdir_in(&archive.scratch)
        .map_err(|source| Error::Io {
            action: "creating a directory in",
            path: archive.scratch.clone(),
            source,
        })?;
    // The bodies are written out even when DuckDB is missing, so that
    // `--quick` keeps this path working.
    let ndjson = dir.path().join("answers.ndjson");
    eprintln!("duckdb: writing the archived answers as NDJSON (untimed) ...");
    let (answers_dir, out) = (archive.answers_dir(), ndjson.clone());
    let (lines, body_bytes) = tokio::task::spawn_blocking(move || write_ndjson(&answers_dir, &out))
        .await
        .map_err(|e| Error::Child {
            program: "raw archive".into(),
            message: e.to_string(),
        })??;
    let ndjson_bytes = std::fs::metadata(&ndjson).map_or(0, |m| m.len());
    let (python, script) = match located {
        Ok(found) => found,
        Err(why) => return Ok(skipped(command, &why)),
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let runs = match size {
        Size::Quick => 1,
        Size::Full => 2,
    };
    let mut measured = Vec::new();
    for i in 0..runs {
        let parquet = dir.path().join(format!("backlinks-{i}.parquet"));
        let sql = dir.path().join(format!("copy-{i}.sql"));
        std::fs::write(&sql, statement(&ndjson, &parquet, crate::replay::PIPELINE)).map_err(
            |source| Error::Io {
                action: "writing",
                path: sql.clone(),
                source,
            },
        )?;
        let (py, sc, work) = (python.clone(), script.clone(), dir.path().to_path_buf());
        let result = tokio::task::spawn_blocking(move || run(&py, &sc, &sql, threads, &work))
            .await
            .map_err(|e| Error::Child {
                program: "bench peer (DuckDB)".into(),
                message: e.to_string(),
            })?;
        let output = match result {
            Ok(o) => o,
            Err(e) => {
                eprintln!("duckdb: failed: {e}");
                return Ok(skipped(command, &format!("DuckDB failed: {e}")));
            }
        };
        let run = DuckRun {
            parquet_bytes: std::fs::metadata(&parquet).map_or(0, |m| m.len()),
            output,
        };
        let _ = std::fs::remove_file(&parquet);
        eprintln!(
            "duckdb:   run {}: {:.2} s, {} rows/s",
            i + 1,
            run.output.seconds,
            thousands(run.rows_per_second())
        );
        measured.push(run);
    }
    drop(dir);
    Ok(render(
        command,
        &measured,
        ours,
        lines,
        body_bytes,
        ndjson_bytes,
    ))
}

fn skipped(command: String, why: &str) -> Section {
    let mut section = Section::new(
        "Peer: DuckDB, answers → Parquet",
        command,
        format!("Skipped: {why}. No ratio is given.\n"),
    );
    section.goals.push(Goal {
        what: "answers → Parquet, 1M items: ours ÷ DuckDB".into(),
        goal: format!("≥ {GOAL_RATIO:.0}×"),
        measured: "not measured".into(),
        met: None,
    });
    section
}

fn render(
    command: String,
    runs: &[DuckRun],
    ours: &ReplayFigures,
    lines: u64,
    body_bytes: u64,
    ndjson_bytes: u64,
) -> Section {
    let mb = |b: u64| b as f64 / 1e6;
    let cpu = |c: Option<f64>| c.map_or("–".into(), |c| format!("{c:.1} s"));
    let duck = runs
        .iter()
        .min_by(|a, b| a.output.seconds.total_cmp(&b.output.seconds));
    let library = best(&ours.library);
    let version = duck.map_or("?", |d| d.output.duckdb_version.as_str());
    let threads = duck.map_or(0, |d| d.output.threads);
    let mut body = format!(
        "DuckDB {version} (the Python package, `scripts/bench-peer/duckdb_peer.py`, installed by \
         `scripts/bench-peer/setup.sh`), {threads} threads, reads the {} answers of the replay \
         benchmark's archive and writes one Parquet file with zstd. Beforehand and untimed, the \
         archive's records were written out as newline-delimited JSON, one line per answer: \
         target, page, fetch time and the response body embedded as JSON ({:.0} MB of bodies, \
         {:.0} MB in all). Timed: one statement, from the call to the end of the write (not \
         Python's start): `read_json` with every column declared (no sampling), the pages' \
         first positions by a window over the pages of each target, \
         `unnest(body.tasks[1].result[1].items)` into one row per backlink with the columns of \
         our `backlinks` dataset in its order (partition columns, `position`, `task_id`, the 44 \
         item fields with API dates parsed as timestamps, the three ranked-keyword counts, \
         `is_indirect_link`, the number of redirect hops), then `COPY … TO '….parquet' (FORMAT \
         parquet, COMPRESSION zstd)`. It does not collect the fields our schema does not name \
         into `extra` (left NULL), check each answer's status, or write `backlink_redirects`, \
         the ledger and the run's files, which ours does. Ours is the library replay of the \
         same archive (replay section: `Pipeline::run`, {} cores). {}.\n\n\
         CPU time is user + system of every thread during the timed part, of the best run.\n\n\
         | | rows | time | CPU time | backlinks rows/s | `backlinks` Parquet |\n|---|---|---|---|---|---|\n",
        thousands(lines as f64),
        mb(body_bytes),
        mb(ndjson_bytes),
        ours.cores,
        if runs.len() > 1 {
            format!("Best of {} runs each", runs.len())
        } else {
            "One run each".to_owned()
        },
    );
    if let Some(l) = library {
        let _ = writeln!(
            body,
            "| ours (library replay) | {} | {:.2} s | {} | {} | {:.1} MB |",
            thousands(l.rows as f64),
            l.seconds,
            cpu(l.cpu_seconds),
            thousands(l.rows_per_second()),
            mb(l.parquet_bytes)
        );
    }
    if let Some(d) = duck {
        let times: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.2} s", r.output.seconds))
            .collect();
        let _ = writeln!(
            body,
            "| DuckDB | {} | {} | {} | {} | {:.1} MB |",
            d.output.rows.map_or("?".into(), |r| thousands(r as f64)),
            times.join(", "),
            cpu(d.output.cpu_seconds),
            thousands(d.rows_per_second()),
            mb(d.parquet_bytes)
        );
    }
    let ratio = match (library, duck) {
        (Some(l), Some(d)) if d.rows_per_second() > 0.0 => {
            Some(l.rows_per_second() / d.rows_per_second())
        }
        _ => None,
    };
    let _ = writeln!(
        body,
        "\nOurs ÷ DuckDB (rows/s, best against best): **{}** (goal ≥ {GOAL_RATIO:.0}×).",
        ratio.map_or("not measured".into(), |r| format!("{r:.2}×"))
    );
    let cpu_ratio = match (
        library.and_then(|l| l.cpu_seconds),
        duck.and_then(|d| d.output.cpu_seconds),
    ) {
        (Some(ours), Some(theirs)) if ours > 0.0 => Some(theirs / ours),
        _ => None,
    };
    if let Some(r) = cpu_ratio {
        let _ = writeln!(
            body,
            "In CPU time for the same rows (DuckDB's ÷ ours, the same runs): {r:.2}×: the work \
             each does, whatever else ran on the machine."
        );
    }
    let mut section = Section::new("Peer: DuckDB, answers → Parquet", command, body);
    section.goals.push(Goal {
        what: "answers → Parquet, 1M items: ours ÷ DuckDB".into(),
        goal: format!("≥ {GOAL_RATIO:.0}×"),
        measured: ratio.map_or("not measured".into(), |r| format!("{r:.2}×")),
        met: ratio.map(|r| r >= GOAL_RATIO),
    });
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_has_every_backlinks_column_in_order() {
        let sql = statement(
            Path::new("/tmp/a'b.ndjson"),
            Path::new("/tmp/o.parquet"),
            "p",
        );
        assert!(sql.contains("read_json('/tmp/a''b.ndjson'"), "{sql}");
        assert!(sql.contains("TO '/tmp/o.parquet' (FORMAT parquet, COMPRESSION zstd)"));
        let names: Vec<String> = columns_of_backlinks("p").into_iter().map(|c| c.1).collect();
        let schema = backlinks_model::Dataset::Backlinks.schema();
        let expected: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, expected);
        assert!(
            sql.contains("strptime(it.\"first_seen\", '%Y-%m-%d %H:%M:%S %z') AS \"first_seen\"")
        );
    }

    #[test]
    fn answers_become_one_line_each_with_the_body_embedded() {
        let dir = tempfile::tempdir().unwrap();
        let writer = backlinks_fetcher::ArchiveWriter::new(dir.path(), "01TESTRUN").unwrap();
        let record = |page: i64, body: &str| backlinks_fetcher::archive::ArchiveRecord {
            v: backlinks_fetcher::archive::RECORD_VERSION,
            run_id: "01TESTRUN".into(),
            endpoint: "backlinks".into(),
            target: "items2.example.com".into(),
            page,
            key: format!("{page:032x}"),
            request: serde_json::json!({"page": page}),
            http_status: Some(200),
            status_code: Some(20000),
            task_id: Some("t".into()),
            cost: 0.02,
            fetched_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            body: body.into(),
        };
        writer
            .append(Endpoint::Backlinks, &record(0, r#"{"tasks":[{"id":"a"}]}"#))
            .unwrap();
        writer
            .append(Endpoint::Backlinks, &record(1, "{\n  \"tasks\": []\n}"))
            .unwrap();
        writer.finish().unwrap();
        let out = dir.path().join("answers.ndjson");
        let (lines, _) = write_ndjson(dir.path(), &out).unwrap();
        assert_eq!(lines, 2);
        let text = std::fs::read_to_string(&out).unwrap();
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0]["body"]["tasks"][0]["id"], "a");
        assert_eq!(parsed[1]["page"], 1);
        assert_eq!(parsed[1]["body"], serde_json::json!({"tasks": []}));
        assert_eq!(parsed[0]["target"], "items2.example.com");
    }
}
