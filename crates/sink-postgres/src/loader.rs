//! The connection side of an open partition: a task that owns the
//! partition's transaction and streams encoded rows into `COPY`, so that the
//! server loads one page while the caller encodes the next (and fetches it,
//! and writes it to Parquet).
//!
//! A `COPY` stays open while rows of the same statement keep coming, one
//! for many pages: the server is waited for only when the statement
//! changes, not after every batch. Rows of other statements that arrive in
//! the meantime (the redirects of each page of backlinks) are held, up to
//! [`HOLD_BYTES`], and loaded with one `COPY` each when the open one ends.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sqlx::postgres::PgCopyIn;
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::mpsc;

use crate::copy::{write_header, write_trailer};
use crate::{Error, Result};

/// Encoded rows of other statements held while a `COPY` is open, at most;
/// past it the open `COPY` ends and the held rows are loaded.
pub(crate) const HOLD_BYTES: usize = 4 << 20;

/// Encoded rows of one table, in the binary `COPY` row format (no header,
/// no trailer).
pub(crate) struct Rows {
    /// The table, for messages.
    pub(crate) table: &'static str,
    /// `COPY <table> (<columns>) FROM STDIN (FORMAT binary)`: rows of the
    /// same statement share one `COPY`.
    pub(crate) statement: Arc<str>,
    pub(crate) data: Bytes,
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
    /// A message to act on after it.
    Act(Option<Load>),
    /// The held rows outgrew [`HOLD_BYTES`]: receive on after loading them.
    Receive,
}

/// Rows held for one statement.
struct Held {
    table: &'static str,
    statement: Arc<str>,
    chunks: Vec<Bytes>,
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
    let mut loaded = 0u64;
    let mut next = rx.recv().await;
    loop {
        let first = match next {
            None => return Ok(None),
            Some(Load::Finish) => return Ok(Some((tx, loaded))),
            Some(Load::Rows(rows)) => rows,
        };
        let query = |table: &str| {
            let action = format!("replacing {table} of {partition}");
            move |source| Error::Query { action, source }
        };
        let mut held: Vec<Held> = Vec::new();
        let mut held_bytes = 0;
        let then;
        {
            let mut copy = open(&mut tx, &first.statement)
                .await
                .map_err(query(first.table))?;
            copy.send(first.data).await.map_err(query(first.table))?;
            then = loop {
                match rx.recv().await {
                    Some(Load::Rows(rows)) if rows.statement == first.statement => {
                        copy.send(rows.data).await.map_err(query(first.table))?;
                    }
                    Some(Load::Rows(rows)) => {
                        held_bytes += rows.data.len();
                        hold(&mut held, rows);
                        if held_bytes >= HOLD_BYTES {
                            break Then::Receive;
                        }
                    }
                    // Dropped without a finish: roll back, load nothing more.
                    None => return Ok(None),
                    finish @ Some(Load::Finish) => break Then::Act(finish),
                }
            };
            loaded += close(copy).await.map_err(query(first.table))?;
        }
        for Held {
            table,
            statement,
            chunks,
        } in held
        {
            let mut copy = open(&mut tx, &statement).await.map_err(query(table))?;
            for chunk in chunks {
                copy.send(chunk).await.map_err(query(table))?;
            }
            loaded += close(copy).await.map_err(query(table))?;
        }
        tracing::debug!(partition, rows = loaded, "copied into the partition");
        next = match then {
            Then::Act(message) => message,
            Then::Receive => rx.recv().await,
        };
    }
}

/// Starts `statement` (a binary `COPY … FROM STDIN`) and sends the stream
/// header.
async fn open<'c>(
    conn: &'c mut PgConnection,
    statement: &str,
) -> sqlx::Result<PgCopyIn<&'c mut PgConnection>> {
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut header = BytesMut::new();
    write_header(&mut header);
    copy.send(header).await?;
    Ok(copy)
}

/// Sends the stream trailer and waits for the server to take every row;
/// returns their number.
async fn close(mut copy: PgCopyIn<&mut PgConnection>) -> sqlx::Result<u64> {
    let mut trailer = BytesMut::new();
    write_trailer(&mut trailer);
    copy.send(trailer).await?;
    copy.finish().await
}

/// Adds `rows` to the held rows of its statement.
fn hold(held: &mut Vec<Held>, rows: Rows) {
    match held.iter_mut().find(|h| h.statement == rows.statement) {
        Some(h) => h.chunks.push(rows.data),
        None => held.push(Held {
            table: rows.table,
            statement: rows.statement,
            chunks: vec![rows.data],
        }),
    }
}
