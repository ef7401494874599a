//! The Postgres sink of the backlinks pipeline.
//!
//! [`PgSink`] holds a connection pool and applies the embedded migrations of
//! `migrations/` ([`PgSink::migrate`]), whose tables mirror the Arrow schemas
//! of `backlinks_model::schema`. Data enters as Arrow `RecordBatch`es and
//! leaves as rows loaded with binary `COPY … FROM STDIN`, encoded column by
//! column against the table's column types (read once from the catalog and
//! cached). A partition (pipeline, target, snapshot date) is replaced whole
//! in one transaction, [`PgPartition`]: [`PgSink::begin`] locks the partition
//! and deletes its rows, [`PgPartition::write`] copies batches in,
//! [`PgPartition::commit`] makes the new rows visible at once. The run
//! ledger goes through [`PgSink::append`] (`requests`) and
//! [`PgSink::upsert_run`] (`runs`).
//!
//! Text cannot hold the NUL character in Postgres: it is stored as U+FFFD,
//! in `text`, `text[]` and `jsonb` columns alike. Errors name the table,
//! column and partition involved, never the database password.

mod catalog;
mod connect;
mod copy;
mod loader;
mod partition;

use arrow::array::RecordBatch;
use backlinks_model::{Dataset, PartitionKey, Secret};
use bytes::BytesMut;
use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::catalog::Catalog;
pub use crate::connect::RedactedError;
use crate::copy::{copy_in, quote_ident};
pub use crate::partition::PgPartition;

/// The migrations of `migrations/`, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// What went wrong in the Postgres sink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database URL is not one the driver accepts. The driver's
    /// error is kept (redacted) only when the password could be taken out
    /// of it.
    #[error(
        "the database URL is not valid (expected postgres://user:password@host:port/database){}",
        suffix(.source.as_ref())
    )]
    InvalidUrl {
        #[source]
        source: Option<RedactedError>,
    },
    /// No connection could be made. `place` names database, host, port and
    /// user, never the password; the driver's error and its sources are
    /// kept with the password taken out of every message.
    #[error("cannot connect to {place}: {source}")]
    Connect {
        place: String,
        #[source]
        source: RedactedError,
    },
    /// The server did not answer in time: `step` says what the sink was
    /// doing, `place` names database, host, port and user (never the
    /// password), `setting` the setting that bounds it.
    #[error("no answer from {place} after {} s while {step} (the limit of {setting})", .after.as_secs())]
    Timeout {
        step: String,
        place: String,
        after: std::time::Duration,
        setting: &'static str,
    },
    /// Applying the migrations failed.
    #[error("the database migrations could not be applied")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A statement failed; `action` says what the sink was doing, e.g.
    /// `replacing summary of example.com 2026-01-15 (pipeline nightly)`.
    #[error("{action}")]
    Query {
        action: String,
        #[source]
        source: sqlx::Error,
    },
    /// A value or an Arrow type that the table's column cannot take.
    #[error("cannot write column {column} of table {table}: {message}")]
    Encode {
        table: String,
        column: String,
        message: String,
    },
    /// The batch has a column the table lacks.
    #[error("table {table} has no column {column}")]
    UnknownColumn { table: String, column: String },
    /// [`PgPartition::write`] got a dataset not named in [`PgSink::begin`].
    #[error("{table} is not part of the open partition {partition}")]
    NotInPartition {
        table: &'static str,
        partition: String,
    },
    /// [`PgSink::begin`] got a dataset that is not replaced per partition
    /// (not in `Dataset::PARTITIONED`).
    #[error("{table} is not a partitioned dataset")]
    NotPartitioned { table: &'static str },
    /// The task loading an open partition ended before its commit without
    /// an error of its own (it panicked: `source`); nothing of the
    /// partition landed.
    #[error("the load of {partition} stopped before its commit: {reason}{}", suffix(.source.as_ref()))]
    LoadStopped {
        partition: String,
        reason: &'static str,
        #[source]
        source: Option<tokio::task::JoinError>,
    },
}

/// `: <message of source>`, or nothing.
fn suffix(source: Option<&impl std::fmt::Display>) -> String {
    source.map(|s| format!(": {s}")).unwrap_or_default()
}

/// The sink's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// How long the sink waits for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a connection (TCP, TLS, authentication).
    pub connect: std::time::Duration,
    /// Any one step that waits for the server's answer: a statement, a
    /// migration, the rows of a `COPY`, a commit.
    pub statement: std::time::Duration,
}

impl Timeouts {
    /// The setting that bounds opening a connection, for messages.
    pub const CONNECT_SETTING: &'static str = "sinks.postgres.connect_timeout_secs";
    /// The setting that bounds one step, for messages.
    pub const STATEMENT_SETTING: &'static str = "sinks.postgres.statement_timeout_secs";
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: std::time::Duration::from_secs(30),
            statement: std::time::Duration::from_secs(600),
        }
    }
}

/// Secondary indexes that a large load may drop and build after its rows
/// instead of keeping them up to date row by row (`run --defer-indexes`):
/// the index and the statement that builds it, as the migrations do.
pub const DEFERRABLE_INDEXES: &[(&str, &str)] = &[(
    "backlinks_domain_from_idx",
    "CREATE INDEX IF NOT EXISTS backlinks_domain_from_idx ON backlinks (domain_from)",
)];

/// A connection pool to the warehouse database, with the column types of
/// the tables written so far. Share it behind an `Arc`.
#[derive(Debug)]
pub struct PgSink {
    pool: PgPool,
    catalog: Catalog,
    /// Database, host, port and user, for messages.
    place: String,
    timeouts: Timeouts,
}

impl PgSink {
    /// Connects to `url` (`postgres://user:password@host:port/database`)
    /// with a pool of at most `max_connections`, sessions named `backlinks`
    /// and a 30 s wait for a free connection. Fails unless one connection
    /// can be made.
    pub async fn connect(url: &Secret, max_connections: u32) -> Result<PgSink> {
        Self::connect_with(url, max_connections, Timeouts::default()).await
    }

    /// [`PgSink::connect`] with these timeouts: opening a connection
    /// gives up after `timeouts.connect`, and every step of the sink that
    /// waits for the server after `timeouts.statement`, with an
    /// [`Error::Timeout`] naming the server.
    pub async fn connect_with(
        url: &Secret,
        max_connections: u32,
        timeouts: Timeouts,
    ) -> Result<PgSink> {
        let (pool, place) = connect::pool(url, max_connections, timeouts).await?;
        Ok(PgSink {
            pool,
            catalog: Catalog::default(),
            place,
            timeouts,
        })
    }

    /// A sink on an existing pool.
    pub fn from_pool(pool: PgPool) -> PgSink {
        let place = connect::describe(&pool.connect_options());
        PgSink {
            pool,
            catalog: Catalog::default(),
            place,
            timeouts: Timeouts::default(),
        }
    }

    /// Database, host, port and user (never the password).
    pub fn place(&self) -> &str {
        &self.place
    }

    /// The sink's timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Runs `step` (`what` the sink is doing) with the statement timeout:
    /// an [`Error::Timeout`] naming the server when it takes longer.
    pub async fn timed<T>(
        &self,
        what: impl FnOnce() -> String,
        step: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let after = self.timeouts.statement;
        match tokio::time::timeout(after, step).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                step: what(),
                place: self.place.clone(),
                after,
                setting: Timeouts::STATEMENT_SETTING,
            }),
        }
    }

    /// Applies the migrations not yet applied.
    pub async fn migrate(&self) -> Result<()> {
        self.timed(|| "applying the migrations".into(), async {
            MIGRATOR.run(&self.pool).await.map_err(Error::Migrate)
        })
        .await?;
        // Tables may have changed.
        self.catalog.clear();
        Ok(())
    }

    /// Drops the [`DEFERRABLE_INDEXES`] before a large load, so rows go in
    /// without keeping them up to date; [`PgSink::build_missing_indexes`]
    /// builds them again. Returns the names dropped.
    pub async fn drop_deferrable_indexes(&self) -> Result<Vec<&'static str>> {
        let mut dropped = Vec::new();
        for (name, _) in DEFERRABLE_INDEXES {
            let sql = format!("DROP INDEX IF EXISTS {}", copy::quote_ident(name));
            self.execute(&format!("dropping the index {name}"), &sql)
                .await?;
            dropped.push(*name);
        }
        Ok(dropped)
    }

    /// Builds the [`DEFERRABLE_INDEXES`] that are missing: after a load that
    /// dropped them, or one that died before building them again. Readers
    /// are not blocked while an index builds; writers of the table wait.
    /// Returns the names built.
    pub async fn build_missing_indexes(&self) -> Result<Vec<&'static str>> {
        let mut built = Vec::new();
        for (name, definition) in DEFERRABLE_INDEXES {
            let action = format!("building the index {name}");
            let missing: bool = self
                .timed(|| action.clone(), async {
                    sqlx::query_scalar("SELECT to_regclass($1) IS NULL")
                        .bind(*name)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(|source| Error::Query {
                            action: action.clone(),
                            source,
                        })
                })
                .await?;
            if missing {
                self.execute(&action, definition).await?;
                built.push(*name);
            }
        }
        Ok(built)
    }

    /// Runs one statement (`action` says what it does, for errors) with
    /// the statement timeout.
    async fn execute(&self, action: &str, sql: &str) -> Result<()> {
        self.timed(|| action.to_owned(), async {
            sqlx::query(sql)
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(|source| Error::Query {
                    action: action.to_owned(),
                    source,
                })
        })
        .await
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Opens the partition `key` for replacement: starts a transaction,
    /// waits for the partition's advisory lock (so two runs of the same
    /// partition never interleave) and deletes the partition's rows from
    /// each of `datasets`, which must be partitioned datasets
    /// (`Dataset::PARTITIONED`).
    pub async fn begin(&self, key: &PartitionKey, datasets: &[Dataset]) -> Result<PgPartition> {
        PgPartition::begin(self, key, datasets).await
    }

    /// Adds the rows of `batch` to `dataset` with one `COPY` (one
    /// statement, so all rows land or none), deleting nothing: the request
    /// ledger.
    pub async fn append(&self, dataset: Dataset, batch: &RecordBatch) -> Result<()> {
        self.timed(
            || format!("appending {} rows to {}", batch.num_rows(), dataset.name()),
            self.append_now(dataset, batch),
        )
        .await
    }

    async fn append_now(&self, dataset: Dataset, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let table = dataset.name();
        let action = || format!("appending {} rows to {table}", batch.num_rows());
        let mut conn = self.pool.acquire().await.map_err(|source| Error::Query {
            action: action(),
            source,
        })?;
        let columns = self.catalog.columns(&mut conn, table).await?;
        let mut buf = BytesMut::new();
        let rows = copy_in(&mut conn, table, &columns, batch, &mut buf, &action).await?;
        tracing::debug!(table, rows, "appended");
        Ok(())
    }

    /// Inserts the rows of a `runs` batch, or updates every column of a run
    /// that is already there (same `run_id`).
    pub async fn upsert_run(&self, batch: &RecordBatch) -> Result<()> {
        self.timed(
            || "recording the run in runs".into(),
            self.upsert(Dataset::Runs, batch, &["run_id"]),
        )
        .await
    }

    /// Upserts `batch` into `dataset` by `key`: copies it into a temporary
    /// table shaped like the target, then `INSERT … ON CONFLICT DO UPDATE`
    /// of every other column, in one transaction.
    async fn upsert(&self, dataset: Dataset, batch: &RecordBatch, key: &[&str]) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let table = dataset.name();
        let action = || format!("upserting {} rows into {table}", batch.num_rows());
        let query = |source| Error::Query {
            action: action(),
            source,
        };
        let mut tx = self.pool.begin().await.map_err(query)?;
        let columns = self.catalog.columns(&mut tx, table).await?;
        let stage = format!("backlinks_stage_{table}");
        sqlx::query(&format!(
            "CREATE TEMPORARY TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP",
            quote_ident(&stage),
            quote_ident(table)
        ))
        .execute(&mut *tx)
        .await
        .map_err(query)?;
        let mut buf = BytesMut::new();
        copy_in(&mut tx, &stage, &columns, batch, &mut buf, &action).await?;

        let names: Vec<String> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| quote_ident(f.name()))
            .collect();
        let list = names.join(", ");
        let updates: Vec<String> = batch
            .schema_ref()
            .fields()
            .iter()
            .filter(|f| !key.contains(&f.name().as_str()))
            .map(|f| format!("{0} = EXCLUDED.{0}", quote_ident(f.name())))
            .collect();
        let conflict: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        sqlx::query(&format!(
            "INSERT INTO {} ({list}) SELECT {list} FROM {} ON CONFLICT ({}) {on_conflict}",
            quote_ident(table),
            quote_ident(&stage),
            conflict.join(", "),
        ))
        .execute(&mut *tx)
        .await
        .map_err(query)?;
        tx.commit().await.map_err(query)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
