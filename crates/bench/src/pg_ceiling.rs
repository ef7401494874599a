//! Postgres against its own ceiling: our load of a partition of
//! `backlinks` (`backlinks_sink_postgres`, batches ready, as the pipeline
//! loads) against the server loading the same rows from a file with its
//! own `COPY backlinks FROM '<file>'`, into the same table with the same
//! indexes, in the same scratch database; then both again without
//! `backlinks_domain_from_idx` (the dearest index; a large backfill may
//! build it after the load).
//!
//! The file is what the server itself wrote for the rows of our first
//! load (`COPY backlinks TO STDOUT`, its text format), kept where the
//! server can read it, so it holds exactly the same rows; the goal is
//! against that file. The same rows in the server's binary format (what
//! our load sends) are loaded too, for the record. Each pass starts from
//! an empty table (`TRUNCATE`) after a `CHECKPOINT`, and the passes of the
//! loads alternate.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::RecordBatch;
use backlinks_model::{Dataset, PartitionKey, Secret};
use backlinks_sink_postgres::PgSink;
use futures::StreamExt;
use sqlx::postgres::PgPoolCopyExt;

use crate::pages::{Page, partition};
use crate::pg::Scratch;
use crate::report::{Goal, Section};
use crate::{Error, Result, Size, per_second, thousands};

/// The goal: our rows/s ÷ the server's own `COPY` from a file.
pub const GOAL_SHARE: f64 = 0.90;

/// The index a large backfill may leave out.
pub const DOMAIN_INDEX: &str = "backlinks_domain_from_idx";

/// Pages of 1000 items loaded (one partition).
pub fn pages(size: Size) -> usize {
    match size {
        Size::Quick => 2,
        Size::Full => 200,
    }
}

/// Passes of each load per variant (the best is reported).
fn passes(size: Size) -> usize {
    match size {
        Size::Quick => 1,
        Size::Full => 3,
    }
}

/// A file format of the server's `COPY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Its text format (the default of `COPY`): the goal's ceiling.
    Text,
    /// Its binary format, what our load sends.
    Binary,
}

impl Format {
    /// The `COPY` options.
    fn options(self) -> &'static str {
        match self {
            Format::Text => "",
            Format::Binary => " (FORMAT binary)",
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Format::Text => "backlinks.txt",
            Format::Binary => "backlinks.bin",
        }
    }
}

/// Seconds of each pass of a load, or why it could not run.
pub type Times = std::result::Result<Vec<f64>, String>;

/// The loads of one set of indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// `the schema's three`, `without domain_from`.
    pub name: String,
    /// Seconds of each pass of ours.
    pub ours: Vec<f64>,
    /// The server's `COPY … FROM` the text file, then the binary one.
    pub text: Times,
    pub binary: Times,
}

fn min(times: &[f64]) -> Option<f64> {
    times.iter().copied().min_by(f64::total_cmp)
}

impl Variant {
    /// Ours ÷ the server from `times` in rows/s (its best time ÷ ours).
    pub fn share(&self, times: &Times) -> Option<f64> {
        let ours = min(&self.ours)?;
        let server = min(times.as_ref().ok()?)?;
        (ours > 0.0).then(|| server / ours)
    }
}

/// Everything measured.
#[derive(Debug, Clone, PartialEq)]
pub struct CeilingFigures {
    pub rows: u64,
    /// Bytes of the server's text and binary files of the rows.
    pub file_bytes: (u64, u64),
    pub variants: Vec<Variant>,
}

fn db(action: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    let action = action.into();
    move |source| Error::Database { action, source }
}

/// A directory the server (another user on this machine) can read.
fn readable_dir() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("backlinks-bench-copy-")
        .tempdir()
        .map_err(|source| Error::Io {
            action: "creating a temporary directory",
            path: std::env::temp_dir(),
            source,
        })?;
    set_mode(dir.path(), 0o755)?;
    Ok(dir)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        Error::Io {
            action: "making readable",
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<()> {
    Ok(())
}

/// Empties both tables and checkpoints, so that every pass starts alike.
async fn reset(sink: &PgSink) -> Result<()> {
    sqlx::query("TRUNCATE backlinks, backlink_redirects")
        .execute(sink.pool())
        .await
        .map_err(db("emptying backlinks"))?;
    sqlx::query("CHECKPOINT")
        .execute(sink.pool())
        .await
        .map_err(db("checkpointing"))?;
    Ok(())
}

/// One load of ours: a partition of `backlinks` through `begin` / `write`
/// (binary `COPY` on the partition's loader task) / `commit`.
async fn ours(sink: &PgSink, key: &PartitionKey, batches: &[RecordBatch]) -> Result<f64> {
    reset(sink).await?;
    let start = Instant::now();
    let mut partition = sink.begin(key, &[Dataset::Backlinks]).await?;
    for batch in batches {
        partition.write(Dataset::Backlinks, batch).await?;
    }
    partition.commit().await?;
    Ok(start.elapsed().as_secs_f64())
}

/// One load by the server from `file`; `Err` says why it could not.
async fn server(
    sink: &PgSink,
    file: &Path,
    format: Format,
) -> Result<std::result::Result<f64, String>> {
    reset(sink).await?;
    let path = file.to_string_lossy().replace('\'', "''");
    let start = Instant::now();
    let loaded = sqlx::query(&format!("COPY backlinks FROM '{path}'{}", format.options()))
        .execute(sink.pool())
        .await;
    let seconds = start.elapsed().as_secs_f64();
    Ok(loaded.map(|_| seconds).map_err(|e| e.to_string()))
}

async fn count(sink: &PgSink) -> Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM backlinks")
        .fetch_one(sink.pool())
        .await
        .map_err(db("counting backlinks"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Writes the rows now in `backlinks` to `file` in the server's `format`,
/// readable by the server.
async fn export(sink: &PgSink, file: &Path, format: Format) -> Result<u64> {
    let failed = |source| Error::Io {
        action: "writing",
        path: file.to_path_buf(),
        source,
    };
    let mut out = tokio::io::BufWriter::new(tokio::fs::File::create(file).await.map_err(failed)?);
    let mut stream = sink
        .pool()
        .copy_out_raw(&format!("COPY backlinks TO STDOUT{}", format.options()))
        .await
        .map_err(db("exporting backlinks"))?;
    let mut bytes = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(db("exporting backlinks"))?;
        bytes += chunk.len() as u64;
        tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
            .await
            .map_err(failed)?;
    }
    tokio::io::AsyncWriteExt::flush(&mut out)
        .await
        .map_err(failed)?;
    set_mode(file, 0o644)?;
    Ok(bytes)
}

async fn measure(
    size: Size,
    scratch: &Scratch,
    pages: &[Page],
    dir: &Path,
) -> Result<CeilingFigures> {
    let sink = PgSink::connect(&Secret::new(scratch.url.clone()), 2).await?;
    sink.migrate().await?;
    let key = partition("bench-ceiling");
    let batches: Vec<RecordBatch> = crate::stages::normalize_all(&key, pages)?
        .into_iter()
        .map(|(links, _)| links)
        .collect();
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    // A first load, untimed: warms the server and gives the files.
    ours(&sink, &key, &batches).await?;
    let text_file: PathBuf = dir.join(Format::Text.file_name());
    let binary_file: PathBuf = dir.join(Format::Binary.file_name());
    let file_bytes = (
        export(&sink, &text_file, Format::Text).await?,
        export(&sink, &binary_file, Format::Binary).await?,
    );
    let check = |what: &str, loaded: u64| -> Result<()> {
        if loaded == rows {
            Ok(())
        } else {
            Err(Error::Child {
                program: what.into(),
                message: format!("loaded {loaded} rows of backlinks, not {rows}"),
            })
        }
    };
    let rate = |t: f64| thousands(per_second(rows as f64, t));
    let mut variants = Vec::new();
    for name in ["the schema's three", "without `domain_from`"] {
        if !variants.is_empty() {
            sqlx::query(&format!("DROP INDEX {DOMAIN_INDEX}"))
                .execute(sink.pool())
                .await
                .map_err(db(format!("dropping {DOMAIN_INDEX}")))?;
        }
        let mut variant = Variant {
            name: name.into(),
            ours: Vec::new(),
            text: Ok(Vec::new()),
            binary: Ok(Vec::new()),
        };
        for pass in 1..=passes(size) {
            let t = ours(&sink, &key, &batches).await?;
            check("Postgres sink", count(&sink).await?)?;
            eprintln!(
                "pg-ceiling:   {name}, pass {pass}: ours {t:.2} s ({} rows/s)",
                rate(t)
            );
            variant.ours.push(t);
            for (format, file) in [(Format::Text, &text_file), (Format::Binary, &binary_file)] {
                let times = match format {
                    Format::Text => &mut variant.text,
                    Format::Binary => &mut variant.binary,
                };
                let Ok(list) = times else { continue };
                match server(&sink, file, format).await? {
                    Ok(t) => {
                        check("Postgres COPY FROM file", count(&sink).await?)?;
                        eprintln!(
                            "pg-ceiling:   {name}, pass {pass}: server's COPY, {format:?} file {t:.2} s ({} rows/s)",
                            rate(t)
                        );
                        list.push(t);
                    }
                    Err(why) => {
                        eprintln!("pg-ceiling: the server's COPY from a file failed: {why}");
                        *times = Err(format!(
                            "the server could not load the file ({why}); it needs to run on this \
                             machine, with a role allowed to read server files"
                        ));
                    }
                }
            }
        }
        variants.push(variant);
    }
    sink.pool().close().await;
    Ok(CeilingFigures {
        rows,
        file_bytes,
        variants,
    })
}

/// Measures both loads when a server is reachable and renders the section.
pub async fn section(size: Size) -> Result<Section> {
    let command = format!(
        "cargo run --release -p backlinks-bench -- pg-ceiling{}",
        size.flag()
    );
    let count = pages(size);
    let scratch = match Scratch::create().await {
        Ok(s) => s,
        Err(why) => {
            eprintln!("pg-ceiling: skipped: {why}");
            return Ok(skipped(command, &why));
        }
    };
    eprintln!("pg-ceiling: fetching {count} pages with the engine ...");
    let measured = async {
        let pages = crate::pages::fetch_pages(count).await?;
        let dir = readable_dir()?;
        let figures = measure(size, &scratch, &pages, dir.path()).await;
        drop(dir);
        figures
    }
    .await;
    scratch.drop_database().await?;
    Ok(render(command, &measured?))
}

fn goal(variant: &str, share: Option<f64>) -> Goal {
    Goal {
        what: format!("Postgres load ÷ the server's own COPY from a text file, {variant}"),
        goal: format!("≥ {:.0} %", GOAL_SHARE * 100.0),
        measured: share.map_or("not measured".into(), |s| format!("{:.0} %", s * 100.0)),
        met: share.map(|s| s >= GOAL_SHARE),
    }
}

fn skipped(command: String, why: &str) -> Section {
    let mut section = Section::new(
        "Postgres against its own COPY",
        command,
        format!(
            "Skipped: {why}. Set `DATABASE_URL` to a server on this machine where the role may \
             create databases and read server files.\n"
        ),
    );
    section.goals.push(goal("schema's indexes", None));
    section.goals.push(goal("without domain_from", None));
    section
}

fn render(command: String, f: &CeilingFigures) -> Section {
    let rate = |t: Option<f64>| t.map_or("–".into(), |t| thousands(per_second(f.rows as f64, t)));
    let times = |ts: &[f64]| {
        ts.iter()
            .map(|t| format!("{t:.2} s"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let share = |s: Option<f64>| s.map_or("not measured".into(), |s| format!("{:.0} %", s * 100.0));
    let mut body = format!(
        "{} rows of `backlinks` (one partition: {} pages of 1000 items of `{}`, fetched by the \
         engine) into a scratch database (`backlinks_bench_<random>` on `DATABASE_URL`, \
         migrated, dropped afterwards). **Ours**: the batches, normalized beforehand, through \
         `PgSink::begin` / `PgPartition::write` / `commit` (binary `COPY` encoded on the \
         partition's loader task, as the pipeline loads). **Server's own COPY**: \
         `COPY backlinks FROM '<file>'`, the server reading a file of the same rows from this \
         machine's disk, with no client, no network and no encoding on our side: the goal's \
         ceiling is its text format ({:.0} MB, written by the server itself with \
         `COPY backlinks TO STDOUT` after a first, untimed load of ours); its binary format \
         ({:.0} MB, `(FORMAT binary)`, what our load sends) is shown too. Each pass starts from \
         an empty table (`TRUNCATE`, `CHECKPOINT`), the loads alternate, best of each. Then \
         `{DOMAIN_INDEX}` is dropped (the primary key and `(pipeline, snapshot_date)` stay: the \
         load path of a large backfill that builds it afterwards) and all are measured \
         again.\n\n\
         | indexes | ours | ours rows/s | server, text file | server rows/s | ours ÷ server | server, binary file | server rows/s | ours ÷ server |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        thousands(f.rows as f64),
        f.rows.div_ceil(1000),
        crate::pages::PAGES_TARGET,
        f.file_bytes.0 as f64 / 1e6,
        f.file_bytes.1 as f64 / 1e6,
    );
    let server = |t: &Times| match t {
        Ok(ts) => (times(ts), rate(min(ts))),
        Err(why) => (format!("not measured: {why}"), "–".into()),
    };
    let mut goals = Vec::new();
    for (v, label) in f
        .variants
        .iter()
        .zip(["schema's indexes", "without domain_from"])
    {
        let (text_times, text_rate) = server(&v.text);
        let (binary_times, binary_rate) = server(&v.binary);
        let _ = writeln!(
            body,
            "| {} | {} | {} | {text_times} | {text_rate} | {} | {binary_times} | {binary_rate} | {} |",
            v.name,
            times(&v.ours),
            rate(min(&v.ours)),
            share(v.share(&v.text)),
            share(v.share(&v.binary)),
        );
        goals.push(goal(label, v.share(&v.text)));
    }
    let mut section = Section::new("Postgres against its own COPY", command, body);
    section.goals = goals;
    section
}
