//! Turns API responses into Arrow record batches with the fixed schemas of
//! `backlinks_model::schema`.
//!
//! A response body enters as bytes together with a [`RowContext`] (the
//! partition it belongs to, when it was fetched, its task id and cost); typed
//! batches leave, ready for any sink. Nested objects are flattened into
//! columns (`info.server` → `info_server`), maps become long rows
//! (`summary_breakdown`), and fields the schema does not know are kept in the
//! `extra` JSON column and reported by name so the run can count them.
//!
//! Main entry points: [`summary_rows`] and [`backlinks_page_rows`] (one page
//! of a target's backlinks, decoded straight into Arrow builders without a
//! JSON tree per item) for API responses, and [`ledger::requests_batch`] /
//! [`ledger::run_batch`] for the run ledger.

mod backlinks;
mod columns;
pub mod ledger;
mod summary;

use std::collections::BTreeMap;

use backlinks_model::PartitionKey;
use chrono::{DateTime, Utc};

pub use backlinks::{BacklinksPageRows, backlinks_page_rows};
pub use summary::{SummaryRows, summary_rows};

/// Errors while turning a response into rows. Each names the target and
/// keeps the error it comes from as its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value the data contract does not allow (summary responses, dates).
    #[error("target `{target}`: {source}")]
    Decode {
        target: String,
        #[source]
        source: backlinks_model::Error,
    },
    /// A response body that is not UTF-8.
    #[error("target `{target}`: malformed {endpoint} response: the body is not UTF-8: {source}")]
    NotUtf8 {
        target: String,
        endpoint: &'static str,
        #[source]
        source: std::str::Utf8Error,
    },
    /// A response body that is not the JSON the API documents; `path` is
    /// the JSON path of the offending value
    /// (`tasks[0].result[0].items[12].first_seen`).
    #[error("target `{target}`: malformed {endpoint} response at `{path}`: {source}")]
    Json {
        target: String,
        endpoint: &'static str,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("target `{target}`: building {dataset} rows: {source}")]
    Arrow {
        target: String,
        dataset: &'static str,
        #[source]
        source: arrow::error::ArrowError,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where rows come from: stamped on every row of a partition.
#[derive(Debug, Clone)]
pub struct RowContext<'a> {
    pub key: &'a PartitionKey,
    pub fetched_at: DateTime<Utc>,
    pub task_id: Option<&'a str>,
    pub cost: f64,
}

/// Names of fields the schema does not know, with how often each was seen.
pub type UnknownFields = BTreeMap<String, u64>;
