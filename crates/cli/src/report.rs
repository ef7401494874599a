//! The one-screen summary at the end of a run.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

use backlinks_model::{Dataset, Endpoint, WorkUnit};
use backlinks_normalizer::UnknownFields;
use backlinks_scheduler::TargetList;
use chrono::NaiveDate;

use crate::run::RowCounts;

/// How many failures the summary lists one by one.
const FAILURES_LISTED: usize = 10;

/// Items a paginated unit expected (the API's `total_count`, capped by
/// `max_items`) and loaded.
#[derive(Debug, Clone, Copy)]
pub struct ItemCounts {
    pub expected: Option<u64>,
    pub loaded: u64,
}

pub enum UnitStatus {
    Ok,
    Failed(String),
    NotRun,
}

/// Totals of a run, rendered by [`Report::render`].
pub struct Report {
    pub run_id: String,
    pub pipeline: String,
    pub snapshot_date: NaiveDate,
    pub status: &'static str,
    pub targets: usize,
    pub rejected: usize,
    pub duplicates: u64,
    pub units_ok: u64,
    pub units_failed: u64,
    pub units_not_run: u64,
    pub rows: BTreeMap<Dataset, u64>,
    pub unknown: UnknownFields,
    pub failures: Vec<String>,
    /// Totals over the paginated units that landed.
    pub items_expected: u64,
    pub items_loaded: u64,
    /// Targets whose loaded items differ from what the API announced.
    pub item_mismatches: Vec<String>,
    pub item_mismatch_count: u64,
    pub requests: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub too_many_in_flight: u64,
    pub cost_usd: f64,
    /// Answers reused from the raw archive, and what they cost earlier.
    pub replayed: u64,
    pub replayed_cost: f64,
    /// The dead-letter file, when units failed.
    pub dead_letters: Option<PathBuf>,
    pub duration: Duration,
    pub parquet_dir: Option<PathBuf>,
    pub postgres: bool,
}

impl Report {
    pub fn new(
        run_id: String,
        pipeline: String,
        snapshot_date: NaiveDate,
        list: &TargetList,
        endpoints: &[Endpoint],
    ) -> Self {
        Self {
            run_id,
            pipeline,
            snapshot_date,
            status: "running",
            targets: list.targets.len(),
            rejected: list.rejected.len(),
            duplicates: list.duplicates,
            units_ok: 0,
            units_failed: 0,
            units_not_run: 0,
            rows: endpoints
                .iter()
                .flat_map(|e| e.datasets())
                .map(|d| (*d, 0))
                .collect(),
            unknown: UnknownFields::new(),
            failures: Vec::new(),
            items_expected: 0,
            items_loaded: 0,
            item_mismatches: Vec::new(),
            item_mismatch_count: 0,
            requests: 0,
            retries: 0,
            rate_limited: 0,
            too_many_in_flight: 0,
            cost_usd: 0.0,
            replayed: 0,
            replayed_cost: 0.0,
            dead_letters: None,
            duration: Duration::ZERO,
            parquet_dir: None,
            postgres: false,
        }
    }

    pub fn add_unit(
        &mut self,
        unit: &WorkUnit,
        status: UnitStatus,
        rows: &[(Dataset, u64)],
        unknown: &UnknownFields,
        items: Option<ItemCounts>,
    ) {
        if let (UnitStatus::Ok, Some(items)) = (&status, items) {
            self.items_loaded += items.loaded;
            self.items_expected += items.expected.unwrap_or(items.loaded);
            if items.expected.is_some_and(|e| e != items.loaded) {
                self.item_mismatch_count += 1;
                if self.item_mismatches.len() < FAILURES_LISTED {
                    self.item_mismatches.push(format!(
                        "{} {}: {} expected, {} loaded",
                        unit.endpoint,
                        unit.target,
                        items.expected.unwrap_or_default(),
                        items.loaded
                    ));
                }
            }
        }
        match status {
            UnitStatus::Ok => self.units_ok += 1,
            UnitStatus::NotRun => self.units_not_run += 1,
            UnitStatus::Failed(error) => {
                self.units_failed += 1;
                if self.failures.len() < FAILURES_LISTED {
                    self.failures
                        .push(format!("{} {}: {error}", unit.endpoint, unit.target));
                }
            }
        }
        for (dataset, n) in rows {
            *self.rows.entry(*dataset).or_default() += n;
        }
        for (name, n) in unknown {
            *self.unknown.entry(name.clone()).or_default() += n;
        }
    }

    pub fn rows_by_name(&self) -> RowCounts {
        self.rows.iter().map(|(d, n)| (d.name(), *n)).collect()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "\nrun {}  pipeline {}  snapshot {}  {} in {:.1}s",
            self.run_id,
            self.pipeline,
            self.snapshot_date,
            self.status,
            self.duration.as_secs_f64()
        );
        let _ = writeln!(
            w,
            "  units     {} ok, {} failed, {} not run   (targets: {} valid, {} rejected, {} duplicates)",
            self.units_ok,
            self.units_failed,
            self.units_not_run,
            self.targets,
            self.rejected,
            self.duplicates
        );
        let rows = self
            .rows
            .iter()
            .map(|(d, n)| format!("{} {n}", d.name()))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(w, "  rows      {rows}");
        if self.rows.contains_key(&Dataset::Backlinks) {
            let _ = writeln!(
                w,
                "  items     backlinks {} expected (total_count), {} loaded, {} targets differ",
                self.items_expected, self.items_loaded, self.item_mismatch_count
            );
            for line in &self.item_mismatches {
                let _ = writeln!(w, "  differs   {line}");
            }
        }
        let _ = writeln!(
            w,
            "  requests  {} sent, {} retries ({} rate-limited, {} too many in flight)",
            self.requests, self.retries, self.rate_limited, self.too_many_in_flight
        );
        let _ = writeln!(w, "  cost      ${:.5}", self.cost_usd);
        if self.replayed > 0 {
            let _ = writeln!(
                w,
                "  archive   {} answers reused from the archive (${:.5} paid earlier)",
                self.replayed, self.replayed_cost
            );
        }
        if !self.unknown.is_empty() {
            let names = self
                .unknown
                .iter()
                .map(|(k, n)| format!("{k} ({n})"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(w, "  new API fields kept in `extra`: {names}");
        }
        for failure in &self.failures {
            let _ = writeln!(w, "  failed    {failure}");
        }
        if self.units_failed as usize > self.failures.len() {
            let _ = writeln!(
                w,
                "  failed    ... and {} more (see the `requests` ledger)",
                self.units_failed as usize - self.failures.len()
            );
        }
        if let Some(path) = &self.dead_letters {
            let _ = writeln!(
                w,
                "  retry     the failed units are listed in {}; `backlinks run --retry-failed` retries only them",
                path.display()
            );
        }
        let sinks = match (&self.parquet_dir, self.postgres) {
            (Some(dir), true) => format!("parquet under {}/, postgres", dir.display()),
            (Some(dir), false) => format!("parquet under {}/", dir.display()),
            (None, true) => "postgres".into(),
            (None, false) => "none".into(),
        };
        let _ = writeln!(w, "  output    {sinks}");
        if let Some(dir) = &self.parquet_dir {
            let _ = writeln!(
                w,
                "  look      duckdb -c \"SELECT target, rank, backlinks, referring_domains FROM read_parquet('{}/summary/snapshot_date={}/*.parquet', hive_partitioning = false) ORDER BY backlinks DESC NULLS LAST LIMIT 10\"",
                dir.display(),
                self.snapshot_date
            );
        }
        out
    }
}
