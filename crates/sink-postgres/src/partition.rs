//! One partition replaced in one transaction.

use std::sync::Arc;

use backlinks_model::{Dataset, PartitionKey};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::catalog::TableColumns;
use crate::copy::{RowEncoder, quote_ident};
use crate::loader::{Load, Loaded, Rows, load};
use crate::{Error, PgSink, Result};

/// Batches on their way to the loader, at most: with
/// [`HOLD_BYTES`](crate::loader::HOLD_BYTES), what bounds the memory an
/// open partition keeps beyond the batch being written.
const QUEUED_BATCHES: usize = 2;

/// An open partition: a transaction that holds the partition's advisory
/// lock and has deleted its previous rows from the named datasets.
///
/// [`write`](Self::write) batches into it, then [`commit`](Self::commit).
/// Dropping it without committing rolls everything back, the previous rows
/// included.
///
/// The transaction lives on a task of its own that streams the rows into
/// `COPY` while the caller goes on (see the `loader` module), so an
/// error of the server about a batch (a broken connection, say) may be
/// reported by a later write or by the commit rather than by the write of
/// that batch; either way nothing of the partition lands.
pub struct PgPartition {
    key: PartitionKey,
    /// The datasets named at `begin`, with their table's columns.
    datasets: Vec<(Dataset, Arc<TableColumns>)>,
    loads: mpsc::Sender<Load>,
    /// `None` once awaited (after an error, or by the commit).
    loader: Option<JoinHandle<Result<Option<Loaded>>>>,
}

/// `example.com 2026-01-15 (pipeline nightly)`: a partition in messages.
pub(crate) fn describe(key: &PartitionKey) -> String {
    format!(
        "{} {} (pipeline {})",
        key.target, key.snapshot_date, key.pipeline
    )
}

/// A stable 64-bit key of one dataset of a partition for
/// `pg_advisory_xact_lock`: FNV-1a over the length-prefixed pipeline,
/// target, date and table, the same in every process and build. Locking per
/// table lets the summary and the backlinks of one target load side by side
/// while two writers of the same table of a partition exclude each other.
pub(crate) fn lock_key(key: &PartitionKey, dataset: Dataset) -> i64 {
    use std::hash::Hasher;
    // The `fnv` crate's hasher is FNV-1a: the keys are those of earlier
    // versions, so an old and a new process still exclude each other.
    let date = key.snapshot_date.format("%Y-%m-%d").to_string();
    let mut hash = fnv::FnvHasher::default();
    for part in [
        &*key.pipeline,
        key.target.as_str(),
        date.as_str(),
        dataset.name(),
    ] {
        hash.write(&(part.len() as u64).to_le_bytes());
        hash.write(part.as_bytes());
    }
    i64::from_ne_bytes(hash.finish().to_ne_bytes())
}

impl PgPartition {
    /// See [`PgSink::begin`].
    pub(crate) async fn begin(
        sink: &PgSink,
        key: &PartitionKey,
        datasets: &[Dataset],
    ) -> Result<Self> {
        let mut names = Vec::with_capacity(datasets.len());
        for dataset in datasets {
            if !Dataset::PARTITIONED.contains(dataset) {
                return Err(Error::NotPartitioned {
                    table: dataset.name(),
                });
            }
            if !names.contains(dataset) {
                names.push(*dataset);
            }
        }
        // Locks are always taken in the same (name) order, so two writers
        // of overlapping dataset sets cannot deadlock.
        names.sort_by_key(|d| d.name());
        let partition = describe(key);
        let mut tx = sink.pool.begin().await.map_err(|source| Error::Query {
            action: format!("starting the transaction of {partition}"),
            source,
        })?;
        for dataset in &names {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(lock_key(key, *dataset))
                .execute(&mut *tx)
                .await
                .map_err(|source| Error::Query {
                    action: format!("locking {} of {partition}", dataset.name()),
                    source,
                })?;
        }
        for dataset in &names {
            let table = dataset.name();
            let deleted = sqlx::query(&format!(
                "DELETE FROM {} WHERE pipeline = $1 AND target = $2 AND snapshot_date = $3",
                quote_ident(table)
            ))
            .bind(&*key.pipeline)
            .bind(key.target.as_str())
            .bind(key.snapshot_date)
            .execute(&mut *tx)
            .await
            .map_err(|source| Error::Query {
                action: format!("replacing {table} of {partition}"),
                source,
            })?
            .rows_affected();
            tracing::debug!(table, target = %key.target, deleted, "cleared the partition");
        }
        let mut datasets = Vec::with_capacity(names.len());
        for dataset in names {
            datasets.push((
                dataset,
                sink.catalog.columns(&mut tx, dataset.name()).await?,
            ));
        }
        let (loads, rx) = mpsc::channel(QUEUED_BATCHES);
        // The loader logs inside the caller's span (the run and the unit).
        let loader = tokio::spawn(load(tx, partition, rx).in_current_span());
        Ok(Self {
            key: key.clone(),
            datasets,
            loads,
            loader: Some(loader),
        })
    }

    /// Bulk loads `batch` into `dataset` with a binary `COPY`. May be called
    /// any number of times per dataset; the rows become visible at
    /// [`commit`](Self::commit). Every column of the batch must exist in the
    /// table with a type it can be written to (others get their default,
    /// NULL): that is checked here. The rows are then encoded and loaded
    /// while the caller goes on, so a value that cannot be written, or an
    /// error of the server, fails a later write or the commit. After an
    /// error, drop the partition (which rolls back) instead of writing on.
    pub async fn write(
        &mut self,
        dataset: Dataset,
        batch: &arrow::array::RecordBatch,
    ) -> Result<()> {
        let table = dataset.name();
        let Some((_, columns)) = self.datasets.iter().find(|(d, _)| *d == dataset) else {
            return Err(Error::NotInPartition {
                table,
                partition: describe(&self.key),
            });
        };
        let encoder = RowEncoder::new(columns, batch)?;
        if encoder.rows() == 0 {
            return Ok(());
        }
        let rows = Rows {
            table,
            columns: Arc::clone(columns),
            statement: encoder.copy_statement(table).into(),
            batch: batch.clone(),
        };
        self.send(Load::Rows(rows)).await
    }

    /// Commits the partition: the new rows replace the old ones at once.
    pub async fn commit(mut self) -> Result<()> {
        let partition = describe(&self.key);
        self.send(Load::Finish).await?;
        let (tx, rows) = self.join().await?;
        tx.commit().await.map_err(|source| Error::Query {
            action: format!("committing {partition}"),
            source,
        })?;
        tracing::debug!(partition, rows, "committed the partition");
        Ok(())
    }

    /// Hands `load` to the loader, or returns what stopped it.
    async fn send(&mut self, load: Load) -> Result<()> {
        if self.loads.send(load).await.is_ok() {
            return Ok(());
        }
        // The loader ended before a finish: with an error, or a panic.
        Err(match self.join().await {
            Err(e) => e,
            Ok(_) => self.stopped("it ended early"),
        })
    }

    /// Waits for the loader to end: the transaction with every row loaded,
    /// or what stopped it.
    async fn join(&mut self) -> Result<Loaded> {
        let Some(loader) = self.loader.take() else {
            return Err(self.stopped("it had already ended"));
        };
        match loader.await {
            Ok(Ok(Some(loaded))) => Ok(loaded),
            Ok(Err(e)) => Err(e),
            Ok(Ok(None)) => Err(self.stopped("it ended early")),
            Err(e) => Err(Error::LoadStopped {
                partition: describe(&self.key),
                reason: "its task failed",
                source: Some(e),
            }),
        }
    }

    fn stopped(&self, reason: &'static str) -> Error {
        Error::LoadStopped {
            partition: describe(&self.key),
            reason,
            source: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use backlinks_model::Target;
    use chrono::NaiveDate;

    use super::*;

    fn key(pipeline: &str, target: &str, day: u32) -> PartitionKey {
        PartitionKey {
            pipeline: pipeline.into(),
            target: Target::from_normalized(target),
            snapshot_date: NaiveDate::from_ymd_opt(2026, 1, day).unwrap(),
        }
    }

    // FNV-1a of the length-prefixed parts, computed independently.
    const LOCK_KEY_OF_A: i64 = 6_302_203_641_059_085_265;

    #[test]
    fn the_lock_key_is_stable_and_tells_partitions_apart() {
        let s = Dataset::Summary;
        let a = key("nightly", "example.com", 15);
        // A fixed value: the key must not change between builds, or two
        // versions running side by side would not exclude each other.
        assert_eq!(lock_key(&a, s), LOCK_KEY_OF_A);
        assert_ne!(
            lock_key(&a, s),
            lock_key(&key("nightly", "example.com", 16), s)
        );
        assert_ne!(
            lock_key(&a, s),
            lock_key(&key("nightly", "example.org", 15), s)
        );
        assert_ne!(lock_key(&a, s), lock_key(&a, Dataset::Backlinks));
        // Length prefixes keep the parts apart.
        assert_ne!(
            lock_key(&key("ab", "c", 15), s),
            lock_key(&key("a", "bc", 15), s)
        );
    }

    #[test]
    fn messages_name_the_partition() {
        assert_eq!(
            describe(&key("nightly", "example.com", 15)),
            "example.com 2026-01-15 (pipeline nightly)"
        );
    }
}
