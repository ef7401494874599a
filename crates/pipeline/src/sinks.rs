//! Both sinks behind one door: a partition lands in each enabled sink, and
//! the request ledger streams into both while the run goes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use backlinks_model::{Dataset, PartitionKey, RequestRecord, RunRecord, Secret};
use backlinks_sink_parquet::{ParquetSink, StagedPartition};
pub use backlinks_sink_postgres::Timeouts;
use backlinks_sink_postgres::{PgPartition, PgSink};
use chrono::NaiveDate;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::PipelineSpec;
use crate::cpu::CpuPool;
use crate::error::{Context, Error, Result};

/// The enabled sinks of a run. Cheap to clone.
#[derive(Clone)]
pub struct Sinks {
    pub parquet: Option<Arc<ParquetSink>>,
    pub postgres: Option<Arc<PgSink>>,
    /// How many partitions may be open at once (see [`partition_slots`]).
    /// A partition of a paginated endpoint stays open across pages, so
    /// units queue here, without a timeout, rather than in the pool or in
    /// memory.
    partition_slots: Arc<Semaphore>,
    /// Where Parquet encoding and file work run.
    cpu: CpuPool,
}

impl Sinks {
    /// Opens the sinks the pipeline enables: creates the Parquet directory,
    /// connects to Postgres at `database_url` (and migrates it if the
    /// pipeline says so). Parquet encoding runs on `cpu`.
    pub async fn open(
        spec: &PipelineSpec,
        database_url: Option<&Secret>,
        cpu: CpuPool,
    ) -> Result<Self> {
        let parquet = match &spec.parquet_dir {
            Some(dir) => Some(Arc::new(ParquetSink::new(dir).with_context(|| {
                format!("opening the parquet directory {}", dir.display())
            })?)),
            None => None,
        };
        let slots = partition_slots(spec);
        let postgres = match &spec.postgres {
            Some(settings) => {
                let url = database_url.ok_or_else(|| {
                    Error::input(
                        "set DATABASE_URL (e.g. postgres://user@host:5432/db) to use the Postgres sink",
                    )
                })?;
                let sink = PgSink::connect_with(url, settings.max_connections, settings.timeouts())
                    .await
                    .context("connecting to postgres (DATABASE_URL)")?;
                if settings.migrate {
                    sink.migrate().await.context("applying migrations")?;
                }
                check_schema(&sink).await?;
                Some(Arc::new(sink))
            }
            None => None,
        };
        Ok(Self {
            parquet,
            postgres,
            partition_slots: Arc::new(Semaphore::new(slots)),
            cpu,
        })
    }

    /// Starts replacing one partition in every sink. Batches are then
    /// streamed into it with [`PartitionWriter::write`] (a paginated
    /// endpoint writes page by page) and land together on
    /// [`PartitionWriter::commit`]; dropping the writer instead leaves the
    /// previous partition intact in both sinks.
    pub async fn begin(&self, key: &PartitionKey, datasets: &[Dataset]) -> Result<PartitionWriter> {
        let slot = self
            .partition_slots
            .clone()
            .acquire_owned()
            .await
            .context("waiting for a partition slot")?;
        let parquet = match &self.parquet {
            Some(sink) => {
                let (sink, key, datasets) = (sink.clone(), key.clone(), datasets.to_vec());
                Some(
                    self.cpu
                        .run(move || sink.begin(&key, &datasets))
                        .await?
                        .context("staging the parquet files of the partition")?,
                )
            }
            None => None,
        };
        let postgres = match &self.postgres {
            Some(pg) => Some(
                pg.timed(
                    || format!("starting the transaction of {}", describe(key)),
                    pg.begin(key, datasets),
                )
                .await
                .context("starting the postgres transaction of the partition")?,
            ),
            None => None,
        };
        Ok(PartitionWriter {
            parquet,
            postgres,
            pg: self.postgres.clone(),
            cpu: self.cpu.clone(),
            _slot: slot,
        })
    }

    /// Replaces one partition in every sink with `parts`, all at once.
    pub async fn write_partition(
        &self,
        key: &PartitionKey,
        parts: &[(Dataset, RecordBatch)],
    ) -> Result<()> {
        let datasets: Vec<Dataset> = parts.iter().map(|(d, _)| *d).collect();
        let mut writer = self.begin(key, &datasets).await?;
        for (dataset, batch) in parts {
            writer.write(*dataset, batch).await?;
        }
        writer.commit().await
    }

    /// Records the run's row in Postgres (insert, then update at the end).
    pub async fn record_run(&self, run: &RunRecord) -> Result<()> {
        if let Some(pg) = &self.postgres {
            let batch =
                backlinks_normalizer::ledger::run_batch(run).context("building the run's row")?;
            pg.upsert_run(&batch)
                .await
                .context("recording the run in postgres")?;
        }
        Ok(())
    }

    /// Marks the `runs` rows of `run_ids` that still say `running` as
    /// `crashed` (their manifests were, by `by_run`).
    pub async fn mark_crashed(&self, run_ids: &[String], by_run: &str) -> Result<()> {
        let Some(pg) = &self.postgres else {
            return Ok(());
        };
        if run_ids.is_empty() {
            return Ok(());
        }
        let error = crate::state::crashed_error(by_run);
        let update = async {
            sqlx::query(
                "UPDATE runs SET status = $1, error = $2 WHERE run_id = ANY($3) AND status = $4",
            )
            .bind(backlinks_model::ledger::RunStatus::Crashed.as_str())
            .bind(&error)
            .bind(run_ids)
            .bind(backlinks_model::ledger::RunStatus::Running.as_str())
            .execute(pg.pool())
            .await
            .map(|_| ())
            .map_err(|source| backlinks_sink_postgres::Error::Query {
                action: "marking crashed runs in runs".into(),
                source,
            })
        };
        pg.timed(|| "marking crashed runs in runs".into(), update)
            .await
            .context("recording the crashed runs in postgres")
    }

    /// Writes the final run row to Parquet (`runs/snapshot_date=…/`).
    pub fn finish_run_file(&self, run: &RunRecord) -> Result<()> {
        if let Some(sink) = &self.parquet {
            let batch =
                backlinks_normalizer::ledger::run_batch(run).context("building the run's row")?;
            let stem = format!("{}__{}", run.pipeline, run.run_id);
            let write = || -> backlinks_sink_parquet::Result<()> {
                let mut file = sink.create(Dataset::Runs, run.snapshot_date, &stem)?;
                file.write(&batch)?;
                file.finish()
            };
            write().context("writing the run's row to parquet")?;
        }
        Ok(())
    }
}

/// Checks that every table of the migrations has every column this
/// version writes, before anything is paid for: a database never migrated
/// (with `sinks.postgres.migrate = false`) or a column dropped by hand is
/// an input error that says to run `backlinks migrate`.
async fn check_schema(pg: &PgSink) -> Result<()> {
    let names: Vec<&str> = Dataset::ALL.iter().map(|d| d.name()).collect();
    let read = async {
        sqlx::query_as::<_, (String, String)>(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = ANY($1)",
        )
        .bind(&names)
        .fetch_all(pg.pool())
        .await
        .map_err(|source| backlinks_sink_postgres::Error::Query {
            action: "reading the columns of the tables".into(),
            source,
        })
    };
    let columns = pg
        .timed(|| "reading the columns of the tables".into(), read)
        .await
        .context("checking the postgres schema")?;
    let mut problems = Vec::new();
    for dataset in Dataset::ALL {
        let table = dataset.name();
        let present: Vec<&str> = columns
            .iter()
            .filter(|(t, _)| t == table)
            .map(|(_, c)| c.as_str())
            .collect();
        if present.is_empty() {
            problems.push(format!("table {table} is missing"));
            continue;
        }
        let missing: Vec<String> = dataset
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|name| !present.contains(&name.as_str()))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "table {table} lacks column{} {}",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::input(format!(
        "the tables of {} do not match this version of backlinks ({}); run `backlinks migrate` (or set sinks.postgres.migrate = true); nothing was fetched",
        pg.place(),
        problems.join("; ")
    )))
}

/// Applies the database migrations to the database at `url`, waiting for
/// the server at most as long as `timeouts` say. Returns the names of the
/// migrations it applied (`0002_backlinks`), none when the database was up
/// to date.
pub async fn migrate(url: &Secret, timeouts: Timeouts) -> Result<Vec<String>> {
    let sink = PgSink::connect_with(url, 1, timeouts)
        .await
        .context("connecting to postgres")?;
    let applied_before = async {
        let query = |source| backlinks_sink_postgres::Error::Query {
            action: "reading the applied migrations".into(),
            source,
        };
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(sink.pool())
            .await
            .map_err(query)?;
        if !exists {
            return Ok(Vec::new());
        }
        sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(sink.pool())
            .await
            .map_err(query)
    };
    let before = sink
        .timed(|| "reading the applied migrations".into(), applied_before)
        .await
        .context("reading the applied migrations")?;
    sink.migrate().await.context("applying migrations")?;
    Ok(backlinks_sink_postgres::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !before.contains(&m.version))
        .map(|m| format!("{:04}_{}", m.version, m.description.replace(' ', "_")))
        .collect())
}

/// Removes the temporary Parquet files of `pipeline` on `date` under
/// `dir` (`<dir>/<dataset>/snapshot_date=D/.<pipeline>__….parquet.tmp-…`):
/// left by a run that died while staging a partition. Only a run holding
/// the lock of that pipeline and day may call this (no other run of it is
/// writing them). Returns the files removed.
pub fn remove_stale_temp_files(
    dir: &Path,
    pipeline: &str,
    date: NaiveDate,
) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let datasets = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let prefix = format!(".{pipeline}__");
    for dataset in datasets.flatten() {
        let day = dataset.path().join(format!("snapshot_date={date}"));
        let Ok(files) = std::fs::read_dir(&day) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.contains(".parquet.tmp-") {
                let path = file.path();
                std::fs::remove_file(&path).with_context(|| {
                    format!("removing the stale temporary file {}", path.display())
                })?;
                removed.push(path);
            }
        }
    }
    Ok(removed)
}

/// A partition, for messages: `target snapshot_date (pipeline p)`.
fn describe(key: &PartitionKey) -> String {
    format!(
        "{} {} (pipeline {})",
        key.target, key.snapshot_date, key.pipeline
    )
}

/// How many partitions may be open at once: at most
/// `sinks.parquet.max_open_partitions` (each holds Parquet writers that
/// buffer a row group), and one per pooled Postgres connection but one
/// (which stays free for the ledger).
pub(crate) fn partition_slots(spec: &PipelineSpec) -> usize {
    let parquet = spec.parquet_open_partitions.unwrap_or(u32::MAX);
    let postgres = spec
        .postgres
        .as_ref()
        .map_or(u32::MAX, |pg| pg.max_connections.saturating_sub(1).max(1));
    usize::try_from(parquet.min(postgres).max(1))
        .unwrap_or(Semaphore::MAX_PERMITS)
        .min(Semaphore::MAX_PERMITS)
}

/// One partition being replaced in every enabled sink: Parquet files
/// staged under temporary names, a Postgres transaction.
pub struct PartitionWriter {
    parquet: Option<StagedPartition>,
    postgres: Option<PgPartition>,
    /// The sink of `postgres`, whose statement timeout bounds each step.
    pg: Option<Arc<PgSink>>,
    cpu: CpuPool,
    _slot: OwnedSemaphorePermit,
}

impl PartitionWriter {
    /// Appends a batch to `dataset` of the partition in every sink: the
    /// Parquet encoding on the CPU pool while the Postgres loader takes
    /// its copy.
    pub async fn write(&mut self, dataset: Dataset, batch: &RecordBatch) -> Result<()> {
        let Self {
            parquet: staged,
            postgres,
            pg,
            cpu,
            ..
        } = self;
        let parquet = async {
            let Some(mut taken) = staged.take() else {
                return Ok(());
            };
            let batch = batch.clone();
            let (taken, written) = cpu
                .run(move || {
                    let written = taken.write(dataset, &batch);
                    (taken, written)
                })
                .await?;
            *staged = Some(taken);
            written.with_context(|| format!("writing {} to parquet", dataset.name()))
        };
        let postgres = async {
            match (postgres, pg) {
                (Some(tx), Some(pg)) => pg
                    .timed(
                        || format!("writing {} rows to {}", batch.num_rows(), dataset.name()),
                        tx.write(dataset, batch),
                    )
                    .await
                    .with_context(|| format!("writing {} to postgres", dataset.name())),
                _ => Ok(()),
            }
        };
        let (parquet, postgres) = tokio::join!(parquet, postgres);
        parquet.and(postgres)
    }

    /// Lands the partition: the Parquet files are finished and fsync'd under
    /// their temporary names, the Postgres transaction commits, then the
    /// files are renamed into place. A failure before the Postgres commit
    /// leaves the previous partition intact in both sinks; after it, only a
    /// rename in the same directory is left to do.
    pub async fn commit(mut self) -> Result<()> {
        // Whatever can fail for lack of space or a broken disk (footers,
        // fsync) happens before Postgres commits; after it, only renames.
        let staged = match self.parquet.take() {
            Some(mut staged) => {
                let (staged, prepared) = self
                    .cpu
                    .run(move || {
                        let prepared = staged.prepare();
                        (staged, prepared)
                    })
                    .await?;
                prepared.context("finishing the parquet files of the partition")?;
                Some(staged)
            }
            None => None,
        };
        if let (Some(tx), Some(pg)) = (self.postgres.take(), &self.pg) {
            pg.timed(|| "committing the partition".into(), tx.commit())
                .await
                .context("committing the partition to postgres")?;
        }
        if let Some(staged) = staged {
            self.cpu
                .run(move || staged.commit())
                .await?
                .context("renaming the parquet files of the partition into place")?;
        }
        Ok(())
    }
}

/// Streams request records into the `requests` dataset of both sinks in
/// batches, so the ledger never waits for the end of the run (and memory
/// does not grow with it).
pub struct Ledger {
    tx: mpsc::Sender<RequestRecord>,
    task: JoinHandle<Result<u64>>,
}

const LEDGER_BATCH: usize = 500;

impl Ledger {
    pub fn start(
        sinks: Sinks,
        run_id: String,
        pipeline: Arc<str>,
        snapshot_date: NaiveDate,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<RequestRecord>(LEDGER_BATCH * 2);
        let task = tokio::spawn(
            async move {
                let mut file = match &sinks.parquet {
                    Some(sink) => Some(
                        sink.create(
                            Dataset::Requests,
                            snapshot_date,
                            &format!("{pipeline}__{run_id}"),
                        )
                        .context("creating the request ledger file")?,
                    ),
                    None => None,
                };
                let mut written = 0u64;
                let mut buffer = Vec::with_capacity(LEDGER_BATCH);
                loop {
                    let open = rx.recv_many(&mut buffer, LEDGER_BATCH).await > 0;
                    if !buffer.is_empty() {
                        let batch = backlinks_normalizer::ledger::requests_batch(
                            &run_id,
                            &pipeline,
                            snapshot_date,
                            &buffer,
                        )
                        .context("building a batch of the request ledger")?;
                        if let Some(pg) = &sinks.postgres {
                            pg.append(Dataset::Requests, &batch)
                                .await
                                .context("writing the request ledger to postgres")?;
                        }
                        if let Some(mut open_file) = file.take() {
                            let (back, result) = sinks
                                .cpu
                                .run(move || {
                                    let result = open_file.write(&batch);
                                    (open_file, result)
                                })
                                .await?;
                            result.context("writing the request ledger to parquet")?;
                            file = Some(back);
                        }
                        written += buffer.len() as u64;
                        buffer.clear();
                    }
                    if !open {
                        break;
                    }
                }
                if let Some(file) = file {
                    sinks
                        .cpu
                        .run(move || file.finish())
                        .await?
                        .context("closing the request ledger file")?;
                }
                Ok(written)
            }
            .in_current_span(),
        );
        Self { tx, task }
    }

    pub async fn record(&self, record: RequestRecord) {
        // If the ledger task died, its error is reported by `finish`.
        let _ = self.tx.send(record).await;
    }

    /// Flushes the ledger; returns the number of records written.
    pub async fn finish(self) -> Result<u64> {
        drop(self.tx);
        self.task.await.context("the ledger task panicked")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pipelines_temporary_files_of_the_day_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 3, 4).unwrap();
        let files = [
            "summary/snapshot_date=2026-03-04/.p__a.com.parquet.tmp-x1",
            "requests/snapshot_date=2026-03-04/.p__run1.parquet.tmp-x2",
            "summary/snapshot_date=2026-03-04/p__a.com.parquet",
            "summary/snapshot_date=2026-03-04/.q__a.com.parquet.tmp-x3",
            "summary/snapshot_date=2026-03-05/.p__a.com.parquet.tmp-x4",
        ];
        for f in files {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"x").unwrap();
        }
        let mut removed = remove_stale_temp_files(dir.path(), "p", day).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            vec![dir.path().join(files[1]), dir.path().join(files[0])]
        );
        for f in &files[2..] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        assert!(
            remove_stale_temp_files(&dir.path().join("none"), "p", day)
                .unwrap()
                .is_empty()
        );
    }

    fn spec(sinks: &str) -> PipelineSpec {
        let text = format!(
            "name = \"p\"\n[targets]\nlist = [\"example.com\"]\n[endpoints.summary]\n{sinks}"
        );
        toml::from_str::<crate::config::RawPipeline>(&text)
            .expect("valid toml")
            .validate(Path::new("."))
            .expect("valid pipeline")
    }

    #[test]
    fn open_partitions_are_bounded_by_both_sinks() {
        assert_eq!(partition_slots(&spec("")), 8);
        assert_eq!(
            partition_slots(&spec("[sinks.parquet]\nmax_open_partitions = 3\n")),
            3
        );
        // One connection stays free for the ledger.
        assert_eq!(
            partition_slots(&spec(
                "[sinks.postgres]\nenabled = true\nmax_connections = 4\n"
            )),
            3
        );
        assert_eq!(
            partition_slots(&spec(
                "[sinks.parquet]\nenabled = false\n[sinks.postgres]\nenabled = true\nmax_connections = 20\n"
            )),
            19
        );
        assert_eq!(
            partition_slots(&spec(
                "[sinks.postgres]\nenabled = true\nmax_connections = 1\n"
            )),
            1
        );
    }
}
