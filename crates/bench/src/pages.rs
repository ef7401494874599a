//! Real backlinks/live answers to measure the stages with: fetched once
//! by the run engine from an in-process sandbox (no cap, no latency, no
//! faults) and read back from its raw archive, exactly as the pipeline
//! receives them.

use std::path::Path;
use std::time::Duration;

use backlinks_fetcher::{Fetcher, FetcherConfig, RetryPolicy};
use backlinks_model::api::BacklinksPage;
use backlinks_model::{Endpoint, PartitionKey, Secret, Target};
use backlinks_sandbox::{Sandbox, SandboxConfig};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::library::BenchPipeline;
use crate::{Error, Result};

/// The target whose pages the stage benchmarks use: a million items, so
/// any number of distinct pages can be had.
pub const PAGES_TARGET: &str = "items1000000.example.com";

/// Items per page: the API's maximum, as the pipeline asks.
pub const PAGE_SIZE: u32 = 1000;

/// Login and password of the in-process sandboxes (loopback only).
pub(crate) const LOGIN: &str = "bench";
pub(crate) const PASSWORD: &str = "bench-sandbox-password";

/// One backlinks/live answer as the fetcher delivered it.
#[derive(Debug, Clone)]
pub struct Page {
    /// Position of the page's first item in the target's list.
    pub first_position: i64,
    /// The whole response body (the envelope).
    pub body: Bytes,
    pub task_id: Option<String>,
    pub cost: f64,
    pub fetched_at: DateTime<Utc>,
}

/// The partition the stage benchmarks write: `pipeline` and the pages'
/// target on a fixed snapshot date.
pub fn partition(pipeline: &str) -> PartitionKey {
    PartitionKey {
        pipeline: pipeline.into(),
        target: Target::from_normalized(PAGES_TARGET),
        snapshot_date: crate::library::snapshot_date(),
    }
}

/// A fetcher for an in-process sandbox at `base_url`.
pub(crate) fn fetcher(
    base_url: String,
    requests_per_minute: u32,
    max_in_flight: u32,
) -> Result<Fetcher> {
    let config = FetcherConfig {
        base_url,
        login: LOGIN.into(),
        password: Secret::new(PASSWORD),
        requests_per_minute,
        max_in_flight,
        timeout: Duration::from_secs(180),
        retry: RetryPolicy::default(),
    };
    Fetcher::new(config, CancellationToken::new()).map_err(|e| Error::Fetch {
        target: String::new(),
        page: 0,
        message: e.to_string(),
    })
}

/// A sandbox with the bench credentials and everything else from `config`.
pub(crate) async fn sandbox(config: SandboxConfig) -> Result<Sandbox> {
    let config = SandboxConfig {
        login: LOGIN.into(),
        password: PASSWORD.into(),
        ..config
    };
    Sandbox::start(config, ([127, 0, 0, 1], 0).into())
        .await
        .map_err(Error::Sandbox)
}

/// The first `count` pages of 1000 items of [`PAGES_TARGET`] (seed 42),
/// fetched by the run engine itself (`backlinks_pipeline`, capped at
/// `count` × 1000 items, into a throwaway state and Parquet directory),
/// then read back from the raw archive the run left: every answer exactly
/// as the engine received it, paged as the engine pages (by offset up to
/// 20,000, then by the previous page's `search_after_token`).
pub async fn fetch_pages(count: usize) -> Result<Vec<Page>> {
    let dir = tempfile::tempdir().map_err(|source| Error::Io {
        action: "creating a temporary directory",
        path: std::env::temp_dir(),
        source,
    })?;
    let pipeline = BenchPipeline {
        name: "bench-pages".into(),
        targets: vec![PAGES_TARGET.into()],
        max_items: Some(count as u64 * u64::from(PAGE_SIZE)),
        state_dir: dir.path().join("state"),
        parquet_dir: dir.path().join("data"),
    };
    crate::library::fetch(&pipeline).await?;
    let archive = pipeline.archive_dir();
    tokio::task::spawn_blocking(move || archived_pages(&archive))
        .await
        .map_err(|e| Error::Child {
            program: "raw archive".into(),
            message: e.to_string(),
        })?
}

/// The backlinks/live answers archived in `dir`, in page order, each with
/// the position of its first item (the items of the pages before it).
pub fn archived_pages(dir: &Path) -> Result<Vec<Page>> {
    let mut records = Vec::new();
    crate::library::for_each_record(dir, |record| {
        if record.endpoint == Endpoint::Backlinks.name() {
            records.push(record);
        }
        Ok(())
    })?;
    records.sort_by(|a, b| (&a.target, a.page).cmp(&(&b.target, b.page)));
    let mut pages = Vec::with_capacity(records.len());
    let mut position: u64 = 0;
    let mut target = None;
    for record in records {
        if target.as_ref() != Some(&record.target) {
            position = 0;
            target = Some(record.target.clone());
        }
        let body = Bytes::from(record.body);
        let info = BacklinksPage::from_body(&body).map_err(|e| Error::Fetch {
            target: record.target.clone(),
            page: record.page,
            message: e.to_string(),
        })?;
        pages.push(Page {
            first_position: i64::try_from(position).unwrap_or(i64::MAX),
            body,
            task_id: record.task_id,
            cost: record.cost,
            fetched_at: record.fetched_at,
        });
        position += info
            .items_count
            .map_or(0, |n| u64::try_from(n).unwrap_or(0));
    }
    Ok(pages)
}

/// Items on all `pages` (rows of `backlinks`).
pub fn items(pages: &[Page]) -> u64 {
    pages
        .iter()
        .filter_map(|p| BacklinksPage::from_body(&p.body).ok())
        .filter_map(|info| info.items_count)
        .map(|n| u64::try_from(n).unwrap_or(0))
        .sum()
}

/// Writes each page's body to `dir` as `page-NNNNN.json` (the peer reads
/// them), returning the bytes written.
pub fn write_pages(pages: &[Page], dir: &Path) -> Result<u64> {
    let mut total = 0;
    for (i, page) in pages.iter().enumerate() {
        let path = dir.join(format!("page-{i:05}.json"));
        std::fs::write(&path, &page.body).map_err(|source| Error::Io {
            action: "writing page",
            path,
            source,
        })?;
        total += page.body.len() as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_follow_on_past_the_offset_limit() {
        // 22 pages: by offset up to item 20,000 (page 20), then by token.
        let pages = fetch_pages(22).await.unwrap();
        assert_eq!(pages.len(), 22);
        assert_eq!(items(&pages), 22_000);
        let firsts: Vec<i64> = pages.iter().map(|p| p.first_position).collect();
        assert_eq!(firsts[21], 21_000);
        // The token page continues the list where page 20 ended.
        let last = backlinks_sandbox::served_backlink(42, PAGES_TARGET, "as_is", 21_000);
        let body: serde_json::Value = serde_json::from_slice(&pages[21].body).unwrap();
        assert_eq!(body["tasks"][0]["result"][0]["items"][0], last);
        let dir = tempfile::tempdir().unwrap();
        let written = write_pages(&pages[..2], dir.path()).unwrap();
        assert_eq!(written, (pages[0].body.len() + pages[1].body.len()) as u64);
        assert!(dir.path().join("page-00001.json").is_file());
    }
}
