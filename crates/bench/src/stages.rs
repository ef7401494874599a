//! The stages on one core: the normalizer (pages → Arrow), the Parquet
//! sink and the Postgres sink, on the same pages, each alone and
//! normalize + sink together (what a page costs the pipeline).
//!
//! Every stage runs on the calling thread; only Postgres's own server
//! process works elsewhere. Each measurement repeats whole passes over the
//! pages until a minimum time has passed and reports rows of `backlinks`
//! per second over all passes.

use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use backlinks_model::{Dataset, PartitionKey, Secret};
use backlinks_normalizer::{RowContext, backlinks_page_rows};
use backlinks_sink_parquet::ParquetSink;
use backlinks_sink_postgres::PgSink;

use crate::pages::{Page, partition};
use crate::pg::Scratch;
use crate::report::{Goal, Section};
use crate::{Error, Result, Size, per_second, thousands};

/// Goal of normalize + Parquet, rows per second per core.
pub const GOAL_NORMALIZE_PARQUET: f64 = 400_000.0;
/// Goal of the Postgres sink, rows per second.
pub const GOAL_POSTGRES: f64 = 150_000.0;

const DATASETS: [Dataset; 2] = [Dataset::Backlinks, Dataset::BacklinkRedirects];

/// Rows of one pass and how long the passes took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// `backlinks` rows per pass.
    pub rows: u64,
    pub passes: u32,
    pub seconds: f64,
}

impl Timing {
    /// `backlinks` rows per second over all passes.
    pub fn rows_per_second(&self) -> f64 {
        per_second(self.rows as f64 * f64::from(self.passes), self.seconds)
    }
}

/// Everything the stage benchmarks measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StageFigures {
    pub pages: usize,
    /// Bytes of the response bodies.
    pub body_bytes: u64,
    /// `backlinks` and `backlink_redirects` rows of one pass.
    pub rows: u64,
    pub redirects: u64,
    pub normalize: Timing,
    pub parquet: Timing,
    pub normalize_parquet: Timing,
    /// Bytes of the `backlinks` and `backlink_redirects` files of one pass.
    pub parquet_bytes: (u64, u64),
    /// `Err` says why Postgres was skipped.
    pub postgres: std::result::Result<PgFigures, String>,
}

/// The Postgres part of [`StageFigures`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgFigures {
    pub copy: Timing,
    pub normalize_copy: Timing,
}

/// Minimum time of a measurement.
fn min_time(size: Size) -> Duration {
    match size {
        Size::Quick => Duration::ZERO,
        Size::Full => Duration::from_secs(4),
    }
}

/// Runs `pass` at least once and until `min` has passed.
fn repeat(min: Duration, mut pass: impl FnMut(u32) -> Result<()>) -> Result<(u32, f64)> {
    let start = Instant::now();
    let mut passes = 0;
    loop {
        pass(passes)?;
        passes += 1;
        if start.elapsed() >= min {
            return Ok((passes, start.elapsed().as_secs_f64()));
        }
    }
}

/// The same as [`repeat`], for async passes.
async fn repeat_async<F, Fut>(min: Duration, mut pass: F) -> Result<(u32, f64)>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let start = Instant::now();
    let mut passes = 0;
    loop {
        pass(passes).await?;
        passes += 1;
        if start.elapsed() >= min {
            return Ok((passes, start.elapsed().as_secs_f64()));
        }
    }
}

/// One page's batches: `backlinks` and `backlink_redirects`.
type Batches = (RecordBatch, RecordBatch);

fn normalize(key: &PartitionKey, page: &Page) -> Result<Batches> {
    let ctx = RowContext {
        key,
        fetched_at: page.fetched_at,
        task_id: page.task_id.as_deref(),
        cost: page.cost,
    };
    let rows = backlinks_page_rows(&ctx, page.first_position, &page.body)?;
    Ok((rows.backlinks, rows.redirects))
}

/// Normalizes every page.
pub fn normalize_all(key: &PartitionKey, pages: &[Page]) -> Result<Vec<Batches>> {
    pages.iter().map(|p| normalize(key, p)).collect()
}

/// Writes one partition of `batches` (or of pages normalized on the way)
/// into a Parquet sink at `dir`.
fn parquet_pass(dir: &Path, key: &PartitionKey, source: Source<'_>) -> Result<()> {
    let sink = ParquetSink::new(dir)?;
    let mut staged = sink.begin(key, &DATASETS)?;
    let mut write = |(links, redirects): &Batches| -> Result<()> {
        staged.write(Dataset::Backlinks, links)?;
        staged.write(Dataset::BacklinkRedirects, redirects)?;
        Ok(())
    };
    match source {
        Source::Batches(batches) => batches.iter().try_for_each(&mut write)?,
        Source::Pages(pages) => {
            for page in pages {
                write(&normalize(key, page)?)?;
            }
        }
    }
    staged.commit()?;
    Ok(())
}

/// What a sink pass writes: batches normalized beforehand, or pages
/// normalized during the pass.
#[derive(Clone, Copy)]
enum Source<'a> {
    Batches(&'a [Batches]),
    Pages(&'a [Page]),
}

/// Sum of the sizes of the files under `dir/<dataset>/`.
fn dataset_bytes(dir: &Path, dataset: Dataset) -> u64 {
    fn walk(path: &Path) -> u64 {
        match std::fs::read_dir(path) {
            Ok(entries) => entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    Ok(_) => e.metadata().map_or(0, |m| m.len()),
                    Err(_) => 0,
                })
                .sum(),
            Err(_) => 0,
        }
    }
    walk(&dir.join(dataset.name()))
}

fn temp_dir() -> Result<tempfile::TempDir> {
    tempfile::tempdir().map_err(|source| Error::Io {
        action: "creating a temporary directory",
        path: std::env::temp_dir(),
        source,
    })
}

/// Measures the normalizer and the Parquet sink, then the Postgres sink
/// when a server is reachable.
pub async fn measure(size: Size, pages: &[Page]) -> Result<StageFigures> {
    let min = min_time(size);
    let key = partition("bench");
    let batches = normalize_all(&key, pages)?;
    let rows: u64 = batches.iter().map(|b| b.0.num_rows() as u64).sum();
    let redirects: u64 = batches.iter().map(|b| b.1.num_rows() as u64).sum();
    let timing = |(passes, seconds)| Timing {
        rows,
        passes,
        seconds,
    };

    eprintln!("stages: normalize {} pages ...", pages.len());
    let normalize = timing(repeat(min, |_| {
        for page in pages {
            std::hint::black_box(normalize(&key, page)?);
        }
        Ok(())
    })?);

    eprintln!("stages: Parquet ...");
    let dir = temp_dir()?;
    let parquet = timing(repeat(min, |_| {
        parquet_pass(dir.path(), &key, Source::Batches(&batches))
    })?);
    let parquet_bytes = (
        dataset_bytes(dir.path(), Dataset::Backlinks),
        dataset_bytes(dir.path(), Dataset::BacklinkRedirects),
    );
    let normalize_parquet = timing(repeat(min, |_| {
        parquet_pass(dir.path(), &key, Source::Pages(pages))
    })?);
    drop(dir);

    eprintln!("stages: Postgres ...");
    let postgres = match Scratch::create().await {
        Err(why) => {
            eprintln!("stages: Postgres skipped: {why}");
            Err(why)
        }
        Ok(scratch) => {
            let measured = postgres(min, &scratch, pages, rows).await;
            scratch.drop_database().await?;
            Ok(measured?)
        }
    };
    Ok(StageFigures {
        pages: pages.len(),
        body_bytes: pages.iter().map(|p| p.body.len() as u64).sum(),
        rows,
        redirects,
        normalize,
        parquet,
        normalize_parquet,
        parquet_bytes,
        postgres,
    })
}

/// One partition through `begin` / `write` (binary COPY) / `commit`.
async fn pg_pass(sink: &PgSink, key: &PartitionKey, source: Source<'_>) -> Result<()> {
    let mut partition = sink.begin(key, &DATASETS).await?;
    match source {
        Source::Batches(list) => {
            for (links, redirects) in list {
                partition.write(Dataset::Backlinks, links).await?;
                partition
                    .write(Dataset::BacklinkRedirects, redirects)
                    .await?;
            }
        }
        Source::Pages(pages) => {
            for page in pages {
                let (links, redirects) = normalize(key, page)?;
                partition.write(Dataset::Backlinks, &links).await?;
                partition
                    .write(Dataset::BacklinkRedirects, &redirects)
                    .await?;
            }
        }
    }
    partition.commit().await?;
    Ok(())
}

async fn postgres(
    min: Duration,
    scratch: &Scratch,
    pages: &[Page],
    rows: u64,
) -> Result<PgFigures> {
    let sink = PgSink::connect(&Secret::new(scratch.url.clone()), 2).await?;
    sink.migrate().await?;
    let timing = |(passes, seconds)| Timing {
        rows,
        passes,
        seconds,
    };
    // Each pass loads a partition of its own (a new pipeline name, as a
    // new snapshot of a nightly run would be), so no pass pays for deleting
    // the previous one's rows. The batches carry the partition's columns,
    // so each pass's are normalized first, outside the timing.
    let mut passes = 0;
    let mut seconds = 0.0;
    loop {
        let key = partition(&format!("copy-{passes}"));
        let batches = normalize_all(&key, pages)?;
        let start = Instant::now();
        pg_pass(&sink, &key, Source::Batches(&batches)).await?;
        seconds += start.elapsed().as_secs_f64();
        passes += 1;
        if seconds >= min.as_secs_f64() {
            break;
        }
    }
    let copy = timing((passes, seconds));
    let normalize_copy = timing(
        repeat_async(min, |pass| {
            let key = partition(&format!("normalize-copy-{pass}"));
            let sink = &sink;
            async move { pg_pass(sink, &key, Source::Pages(pages)).await }
        })
        .await?,
    );
    sink.pool().close().await;
    Ok(PgFigures {
        copy,
        normalize_copy,
    })
}

/// The normalize, Parquet and Postgres sections.
pub fn sections(size: Size, f: &StageFigures) -> Vec<Section> {
    let mb = |b: u64| b as f64 / 1e6;
    let input = format!(
        "{} pages of 1000 backlinks of `{}` from the sandbox's generator (seed 42): {} items, \
         {} redirect hops, {:.1} MB of JSON ({:.0} bytes per item).",
        f.pages,
        crate::pages::PAGES_TARGET,
        thousands(f.rows as f64),
        thousands(f.redirects as f64),
        mb(f.body_bytes),
        per_second(f.body_bytes as f64, f.rows as f64)
    );
    let line = |what: &str, t: &Timing| {
        format!(
            "| {what} | {} | {} | {:.2} s | {} |\n",
            t.passes,
            thousands((t.rows * u64::from(t.passes)) as f64),
            t.seconds,
            thousands(t.rows_per_second())
        )
    };
    let head = "| measured | passes | rows | time | rows/s |\n|---|---|---|---|---|\n";
    let cmd = |sub: &str| {
        format!(
            "cargo run --release -p backlinks-bench -- {sub}{}",
            size.flag()
        )
    };

    let mut normalize = Section::new(
        "Normalize",
        cmd("stages"),
        format!(
            "{input} One thread: `backlinks_page_rows` on each body (rows of `backlinks` \
             and `backlink_redirects`), then the same followed by the Parquet sink \
             (`begin` / `write` / `commit`, zstd, files fsynced and renamed).\n\n{head}{}{}",
            line("normalize (JSON → Arrow)", &f.normalize),
            line("normalize + Parquet write", &f.normalize_parquet),
        ),
    );
    let np = f.normalize_parquet.rows_per_second();
    normalize.goals.push(Goal {
        what: "normalize + Parquet, rows/s on one core".into(),
        goal: format!("≥ {}", thousands(GOAL_NORMALIZE_PARQUET)),
        measured: thousands(np),
        met: Some(np >= GOAL_NORMALIZE_PARQUET),
    });

    let per_row = |bytes: u64| per_second(bytes as f64, f.rows as f64);
    let parquet = Section::new(
        "Parquet sink",
        cmd("stages"),
        format!(
            "The batches of the same pages, normalized beforehand, written by `ParquetSink` \
             (one partition per pass, zstd).\n\n{head}{}\n\
             Size: `backlinks` {:.1} MB ({:.0} bytes per row), `backlink_redirects` {:.1} MB; \
             {:.0} bytes of Parquet per backlink in all, against {:.0} bytes of JSON.\n",
            line("Parquet write", &f.parquet),
            mb(f.parquet_bytes.0),
            per_row(f.parquet_bytes.0),
            mb(f.parquet_bytes.1),
            per_row(f.parquet_bytes.0 + f.parquet_bytes.1),
            per_second(f.body_bytes as f64, f.rows as f64),
        ),
    );

    let mut postgres = match &f.postgres {
        Ok(pg) => Section::new(
            "Postgres sink",
            cmd("stages"),
            format!(
                "The same batches into `backlinks` and `backlink_redirects` of a scratch \
                 database (`backlinks_bench_<random>` on `DATABASE_URL`, migrated, dropped \
                 afterwards) through the real load path: `PgSink::begin` (transaction, \
                 advisory lock, delete of the partition), `PgPartition::write` (the batch \
                 goes to the partition's loader task, which encodes it into a binary \
                 `COPY` kept open across batches), `commit`. Each pass loads a new \
                 partition. The client is the calling thread and the loader task; the \
                 server works on the same cores.\n\n{head}{}{}",
                line("COPY (batches ready)", &pg.copy),
                line("normalize + COPY", &pg.normalize_copy),
            ),
        ),
        Err(why) => Section::new(
            "Postgres sink",
            cmd("stages"),
            format!(
                "Skipped: {why}. Set `DATABASE_URL` to a server where the role may create databases.\n"
            ),
        ),
    };
    let (measured, met) = match &f.postgres {
        Ok(pg) => {
            let r = pg.copy.rows_per_second();
            (thousands(r), Some(r >= GOAL_POSTGRES))
        }
        Err(_) => ("skipped (no Postgres)".into(), None),
    };
    postgres.goals.push(Goal {
        what: "Postgres sink (COPY), rows/s".into(),
        goal: format!("≥ {}", thousands(GOAL_POSTGRES)),
        measured,
        met,
    });
    vec![normalize, parquet, postgres]
}
