//! The connection side of an open partition: a task that owns the
//! partition's transaction, encodes the batches it is handed and streams
//! them into `COPY`, so that the server loads one page while the caller
//! fetches, normalizes and writes the next.
//!
//! A `COPY` stays open while batches of the same statement keep coming, one
//! for many pages: the server is waited for only when the statement
//! changes, not after every batch. Batches of other statements that arrive
//! in the meantime (the redirects of each page of backlinks) are held, up
//! to [`HOLD_BYTES`] of Arrow memory, and loaded with one `COPY` each when
//! the open one ends. Rows are encoded into one buffer that is reused, so
//! the load allocates nothing per page.

use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::BytesMut;
use sqlx::{Postgres, Transaction};
use tokio::sync::mpsc;

use crate::catalog::TableColumns;
use crate::copy::{RowEncoder, close, open, send_rows};
use crate::{Error, Result};

/// Arrow memory of the batches of other statements held while a `COPY` is
/// open, at most; past it the open `COPY` ends and the held batches are
/// loaded.
pub(crate) const HOLD_BYTES: usize = 4 << 20;

/// A batch for one table, checked against its columns.
pub(crate) struct Rows {
    /// The table, for messages.
    pub(crate) table: &'static str,
    pub(crate) columns: Arc<TableColumns>,
    /// `COPY <table> (<columns>) FROM STDIN (FORMAT binary)`: batches of
    /// the same statement share one `COPY`.
    pub(crate) statement: Arc<str>,
    pub(crate) batch: RecordBatch,
}

/// What the loader is told.
pub(crate) enum Load {
    Rows(Rows),
    /// No more rows: end the open `COPY`, load what is held, and hand the
    /// transaction back for the commit.
    Finish,
}

/// The transaction with every row loaded, and the number of rows.
pub(crate) type Loaded = (Transaction<'static, Postgres>, u64);

/// What ended a `COPY`.
enum Then {
    /// [`Load::Finish`]: hand the transaction back after loading what is
    /// held.
    Finish,
    /// The held batches outgrew [`HOLD_BYTES`]: receive on after loading
    /// them.
    Receive,
}

/// Loads what `rx` brings into `tx` until [`Load::Finish`], then hands the
/// transaction back. `Ok(None)` when the channel closes without a finish:
/// the partition was dropped, and dropping the transaction rolls it back.
/// `partition` names the partition in errors.
pub(crate) async fn load(
    mut tx: Transaction<'static, Postgres>,
    partition: String,
    mut rx: mpsc::Receiver<Load>,
) -> Result<Option<Loaded>> {
    // The error of a failed query on `table`.
    let query_on = |table: &str| {
        let action = format!("replacing {table} of {partition}");
        move |source| Error::Query {
            action: action.clone(),
            source,
        }
    };
    let mut buf = BytesMut::new();
    let mut loaded = 0u64;
    let mut next = rx.recv().await;
    loop {
        let first = match next {
            None => return Ok(None),
            Some(Load::Finish) => return Ok(Some((tx, loaded))),
            Some(Load::Rows(rows)) => rows,
        };
        let mut held: Vec<Rows> = Vec::new();
        let mut held_bytes = 0;
        let then;
        {
            let query = query_on(first.table);
            let mut copy = open(&mut tx, &first.statement).await.map_err(&query)?;
            send(&mut copy, &first, &mut buf, &query).await?;
            then = loop {
                match rx.recv().await {
                    Some(Load::Rows(rows)) if rows.statement == first.statement => {
                        send(&mut copy, &rows, &mut buf, &query).await?;
                    }
                    Some(Load::Rows(rows)) => {
                        held_bytes += rows.batch.get_array_memory_size();
                        held.push(rows);
                        if held_bytes >= HOLD_BYTES {
                            break Then::Receive;
                        }
                    }
                    // Dropped without a finish: roll back, load nothing more.
                    None => return Ok(None),
                    Some(Load::Finish) => break Then::Finish,
                }
            };
            loaded += close(copy).await.map_err(query)?;
        }
        // One COPY per statement, in the order the statements first came.
        while !held.is_empty() {
            let statement = Arc::clone(&held[0].statement);
            let query = query_on(held[0].table);
            let mut copy = open(&mut tx, &statement).await.map_err(&query)?;
            let mut rest = Vec::with_capacity(held.len());
            for rows in held {
                if rows.statement == statement {
                    send(&mut copy, &rows, &mut buf, &query).await?;
                } else {
                    rest.push(rows);
                }
            }
            loaded += close(copy).await.map_err(query)?;
            held = rest;
        }
        tracing::debug!(partition, rows = loaded, "copied into the partition");
        match then {
            Then::Finish => return Ok(Some((tx, loaded))),
            Then::Receive => next = rx.recv().await,
        }
    }
}

/// Encodes `rows` into `buf` and sends them into the open `copy`.
async fn send(
    copy: &mut sqlx::postgres::PgCopyIn<&mut sqlx::PgConnection>,
    rows: &Rows,
    buf: &mut BytesMut,
    query: impl Fn(sqlx::Error) -> Error,
) -> Result<()> {
    let encoder = RowEncoder::new(&rows.columns, &rows.batch)?;
    send_rows(copy, &encoder, buf, query).await
}
