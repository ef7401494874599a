//! What a run did: the [`RunReport`] the engine hands back, from which the
//! binary prints its one-screen summary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use backlinks_model::ledger::RunStatus;
use backlinks_model::{Dataset, Endpoint, WorkUnit};
use backlinks_normalizer::UnknownFields;
use backlinks_scheduler::TargetList;
use chrono::NaiveDate;

/// Rows per dataset name, for the run record.
pub type RowCounts = BTreeMap<&'static str, u64>;

/// How many failures the summary lists one by one.
const FAILURES_LISTED: usize = 10;

/// Items a paginated unit expected (the API's `total_count`, capped by
/// `max_items`) and loaded.
#[derive(Debug, Clone, Copy)]
pub struct ItemCounts {
    pub expected: Option<u64>,
    pub loaded: u64,
}

/// What became of one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitStatus {
    /// Its partition landed in every sink.
    Ok,
    /// It failed for good (the reason); its previous partition stays.
    Failed(String),
    /// It was not run: the run stopped (signal, spend cap, account problem).
    NotRun,
}

/// Totals of a run and how it ended.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: String,
    pub pipeline: String,
    pub snapshot_date: NaiveDate,
    pub status: RunStatus,
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
    /// The per-minute limit the API announced last (`X-RateLimit-Limit`).
    pub announced_limit: Option<u32>,
    pub cost_usd: f64,
    /// Answers reused from the raw archive, and what they cost earlier.
    pub replayed: u64,
    pub replayed_cost: f64,
    /// The dead-letter file, when units failed.
    pub dead_letters: Option<PathBuf>,
    pub duration: Duration,
    pub parquet_dir: Option<PathBuf>,
    pub postgres: bool,
    /// Why the account stopped the run (status `account_error`).
    pub account_problem: Option<String>,
    /// The spend cap that stopped dispatching (status `budget_exhausted`).
    pub budget_problem: Option<String>,
    /// A signal stopped the run; `abandoned` when units in flight were
    /// abandoned (second signal or grace period over).
    pub interrupted: bool,
    pub abandoned: bool,
    /// The request ledger or the raw archive could not be written.
    pub ledger_error: Option<String>,
    pub archive_error: Option<String>,
    /// The indexes a deferred load dropped could not be built again (the
    /// next run builds them).
    pub index_error: Option<String>,
}

impl RunReport {
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
            status: RunStatus::Running,
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
            announced_limit: None,
            cost_usd: 0.0,
            replayed: 0,
            replayed_cost: 0.0,
            dead_letters: None,
            duration: Duration::ZERO,
            parquet_dir: None,
            postgres: false,
            account_problem: None,
            budget_problem: None,
            interrupted: false,
            abandoned: false,
            ledger_error: None,
            archive_error: None,
            index_error: None,
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
}
