//! The run: targets → units → requests → rows → both sinks, with the
//! ledger, the raw archive, resume, dead letters and the spend cap.
//! [`Pipeline::run`] drives it and returns a [`RunReport`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use backlinks_fetcher::{ArchiveIndex, ArchiveWriter, Budget, Fetcher, FetcherConfig};
use backlinks_model::ledger::RunStatus;
use backlinks_model::{Endpoint, PartitionKey, RunRecord, Secret, WorkUnit};
use backlinks_scheduler::{TargetList, work_units};
use chrono::{NaiveDate, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::config::PipelineSpec;
use crate::cpu::CpuPool;
use crate::endpoints::{self, EndpointModule};
use crate::error::{Context, Error, Result, chain};
use crate::lock;
use crate::report::{RunReport, UnitStatus};
use crate::sinks::{self, Ledger, Sinks, partition_slots};
use crate::state;
use crate::targets;
use crate::unit::{MAX_PAGES_AHEAD, UnitContext, UnitOutcome, UnitTask, run_unit};

/// How a run gets its answers.
#[derive(Debug, Clone)]
pub enum Mode {
    /// From the API, reusing what unfinished runs of the same day archived
    /// (unless `refetch`); `retry_failed` runs only the dead letters of the
    /// latest run; `max_cost` overrides the pipeline's spend cap (0 lifts
    /// it).
    Fetch {
        api: Api,
        refetch: bool,
        retry_failed: bool,
        max_cost: Option<f64>,
    },
    /// From the archive only, never the network (`backlinks replay`);
    /// `run_id` restricts it to that run's archive files.
    Replay { run_id: Option<String> },
}

impl Mode {
    /// The command recorded in the run manifest.
    fn command(&self) -> &'static str {
        match self {
            Mode::Fetch {
                retry_failed: true, ..
            } => "run --retry-failed",
            Mode::Fetch { refetch: true, .. } => "run --refetch",
            Mode::Fetch { .. } => "run",
            Mode::Replay { .. } => "replay",
        }
    }
}

/// Where the API is and who we are to it.
#[derive(Debug, Clone)]
pub struct Api {
    pub base_url: String,
    pub login: String,
    pub password: Secret,
    /// What the log calls it (`embedded sandbox`, or the base URL).
    pub label: String,
}

/// What a run needs besides the pipeline.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The snapshot date of every row (today, or `--as-of`).
    pub snapshot_date: NaiveDate,
    pub mode: Mode,
    /// The Postgres connection string, when the Postgres sink is enabled.
    pub database_url: Option<Secret>,
    /// The effective settings recorded with the run (never credentials).
    pub settings: serde_json::Value,
    /// Where CPU work runs (default: [`CpuPool::per_core`]).
    pub cpu: Option<CpuPool>,
    /// The targets, when the caller already read them (default: the
    /// pipeline's target source is read at the start of the run).
    pub targets: Option<TargetList>,
    /// Drop the Postgres indexes a large load is better off building
    /// afterwards (`backlinks_sink_postgres::DEFERRABLE_INDEXES`) before the
    /// first unit, and build them when the units are done. Without it, a
    /// run builds any of them an earlier deferred load left missing.
    pub defer_indexes: bool,
}

/// How a run is asked to stop: `stop` (first Ctrl-C or SIGTERM) ends
/// dispatching and lets what is in flight finish and land; `abandon`
/// (second signal, or the grace period over) drops what is in flight, so
/// its partitions roll back.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub stop: CancellationToken,
    pub abandon: CancellationToken,
}

/// Hears about a run as it goes (a progress bar, a test).
pub trait Observer: Send + Sync {
    /// The run is about to start `units` units.
    fn started(&self, _units: u64) {}
    /// One unit ended.
    fn unit_done(&self, _unit: &WorkUnit, _status: &UnitStatus) {}
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {}

/// One run of a pipeline.
pub struct Pipeline {
    spec: PipelineSpec,
    options: RunOptions,
    shutdown: Shutdown,
    wait_for_lock: bool,
}

impl Pipeline {
    pub fn new(spec: PipelineSpec, options: RunOptions, shutdown: Shutdown) -> Self {
        Self {
            spec,
            options,
            shutdown,
            wait_for_lock: false,
        }
    }

    /// When another run of the same pipeline and snapshot date is going
    /// on, wait for it to end instead of refusing at once (the default,
    /// an error of kind [`ErrorKind::Held`](crate::ErrorKind::Held)).
    pub fn wait_for_lock(mut self, wait: bool) -> Self {
        self.wait_for_lock = wait;
        self
    }

    /// Runs every unit and lands what it can. An `Err` means the run could
    /// not start or could not record its end (bad input, another run of
    /// the same pipeline and day going on, a sink or the state directory
    /// unreachable); what happened to the units is in the report.
    ///
    /// The run first takes the lock of its pipeline and snapshot date
    /// (see [`crate::lock`]) and holds it to the end.
    pub async fn run(self, observer: &dyn Observer) -> Result<RunReport> {
        let run_id = uuid::Uuid::now_v7().to_string();
        let span = info_span!(
            "run",
            %run_id,
            pipeline = %self.spec.name,
            snapshot_date = %self.options.snapshot_date,
        );
        self.execute(run_id, observer).instrument(span).await
    }

    async fn execute(self, run_id: String, observer: &dyn Observer) -> Result<RunReport> {
        let Pipeline {
            spec,
            options,
            shutdown,
            wait_for_lock,
        } = self;
        let clock = Instant::now();
        let snapshot_date = options.snapshot_date;
        let runs_dir = state::runs_dir(&spec.state_dir, &spec.name, snapshot_date);
        // Held until this function returns; the OS releases it if the
        // process dies.
        let _lock = lock::acquire(&runs_dir, &run_id, wait_for_lock, &shutdown.stop).await?;
        // Holding the lock, no other run of this pipeline and day is alive:
        // one still `running` died, and its temporary files are litter.
        let crashed = state::mark_crashed(&runs_dir, &run_id)?;
        if !crashed.is_empty() {
            warn!(
                runs = crashed.join(", "),
                "marked runs that died without recording their end as crashed"
            );
        }
        if let Some(dir) = &spec.parquet_dir {
            let removed = sinks::remove_stale_temp_files(dir, &spec.name, snapshot_date)?;
            if !removed.is_empty() {
                info!(
                    files = removed.len(),
                    "removed temporary parquet files left by a run that died"
                );
            }
        }
        let started_at = Utc::now();
        let mode = options.mode;
        let list = match options.targets {
            Some(list) => list,
            None => targets::load(&spec).await?,
        };
        targets::require_some(&list, &spec.targets)?;
        let archive_dir = state::archive_dir(&spec.state_dir, &spec.name, snapshot_date);
        let modules = endpoints::modules(&spec);
        let endpoints: Vec<Endpoint> = modules.iter().map(|m| m.endpoint()).collect();
        let mut units: Vec<WorkUnit> = work_units(&list.targets, &endpoints).collect();
        if let Mode::Fetch {
            retry_failed: true, ..
        } = mode
        {
            units = retry_units(units, &runs_dir, &spec.name, snapshot_date)?;
        }
        let max_cost = spend_cap(&mode, spec.max_cost_usd)?;
        let index = archive_index(&mode, &archive_dir, &runs_dir, &spec.name, snapshot_date)?;

        let cpu = options.cpu.clone().unwrap_or_else(CpuPool::per_core);
        let sinks = Sinks::open(&spec, options.database_url.as_ref(), cpu.clone()).await?;
        sinks.mark_crashed(&crashed, &run_id).await?;
        // The fetcher cancels its own token on an account problem or the
        // spend cap; a signal cancels the run's.
        let cancel = shutdown.stop.child_token();
        let (fetcher, archive, api_label) =
            fetcher(&spec, &mode, index, max_cost, &archive_dir, &run_id, cancel)?;

        let mut record = RunRecord {
            run_id: run_id.clone(),
            pipeline: spec.name.to_string(),
            snapshot_date,
            started_at,
            finished_at: None,
            status: RunStatus::Running,
            units_total: units.len() as i64,
            units_ok: 0,
            units_failed: 0,
            requests: 0,
            retries: 0,
            cost_usd: 0.0,
            rows: "{}".into(),
            unknown_fields: "{}".into(),
            settings: options.settings.to_string(),
            error: None,
            replayed: 0,
            replayed_cost_usd: 0.0,
        };
        let manifest = state::Manifest::of_run(&record, mode.command(), BTreeMap::new());
        write_manifest(&cpu, &runs_dir, manifest).await?;
        sinks.record_run(&record).await?;
        info!(
            targets = list.targets.len(),
            units = units.len(),
            max_cost_usd = max_cost,
            api = %api_label,
            cpu_jobs = cpu.size(),
            "run started"
        );

        prepare_indexes(&sinks, options.defer_indexes).await?;
        let cx = Arc::new(UnitContext {
            fetcher,
            sinks: sinks.clone(),
            cpu: cpu.clone(),
            pages_ahead: pages_ahead(&spec),
        });
        let ledger = Ledger::start(
            sinks.clone(),
            run_id.clone(),
            spec.name.clone(),
            snapshot_date,
        );
        let dead_letters = Arc::new(state::DeadLetters::new(&runs_dir, &run_id));
        let mut report = RunReport::new(
            run_id.clone(),
            spec.name.to_string(),
            snapshot_date,
            &list,
            &endpoints,
        );
        let units_total = units.len() as u64;
        observer.started(units_total);
        let by_endpoint: HashMap<Endpoint, Arc<dyn EndpointModule>> = modules
            .iter()
            .map(|m| (m.endpoint(), Arc::clone(m)))
            .collect();
        // Each unit is a task of its own, so one unit's CPU work never holds
        // up another's requests. More units than request slots are in
        // progress at once, so that landing one never leaves a slot idle.
        let concurrency = spec.max_in_flight as usize * 2;
        let units = units.into_iter().filter_map(|unit| {
            let module = by_endpoint.get(&unit.endpoint).cloned()?;
            Some((unit, module))
        });
        let mut outcomes = Box::pin(
            futures::stream::iter(units)
                .map(|(unit, module)| {
                    let key = PartitionKey {
                        pipeline: spec.name.clone(),
                        target: unit.target.clone(),
                        snapshot_date,
                    };
                    let span = info_span!(
                        "unit",
                        endpoint = unit.endpoint.name(),
                        target = %unit.target,
                    );
                    let task = UnitTask(tokio::spawn(
                        run_unit(Arc::clone(&cx), module, key, unit.clone()).instrument(span),
                    ));
                    task.outcome(unit)
                })
                .buffer_unordered(concurrency),
        );
        let mut abandoned = false;
        loop {
            let outcome = tokio::select! {
                biased;
                () = shutdown.abandon.cancelled() => {
                    abandoned = true;
                    break;
                }
                next = outcomes.next() => match next {
                    Some(outcome) => outcome,
                    None => break,
                },
            };
            land_outcome(outcome, &ledger, &dead_letters, &mut report, observer).await;
        }
        // Abandoned units roll back: their tasks are aborted, their Parquet
        // files removed, their Postgres transactions never committed.
        drop(outcomes);
        report.units_not_run = units_total - report.units_ok - report.units_failed;

        if options.defer_indexes {
            report.index_error = build_indexes(&sinks).await.err().map(|e| chain(&e));
        }
        let ledger_result = ledger.finish().await;
        let archive_result = match archive {
            Some(writer) => cpu
                .run(move || writer.finish())
                .await?
                .context("closing the raw archive"),
            None => Ok(()),
        };
        let stats = cx.fetcher.stats();
        report.requests = stats.attempts;
        report.retries = stats.retries;
        report.rate_limited = stats.rate_limited;
        report.too_many_in_flight = stats.too_many_in_flight;
        report.announced_limit = stats.announced_limit;
        report.replayed = stats.replayed;
        report.replayed_cost = cx.fetcher.replayed_cost();
        report.duration = clock.elapsed();
        report.parquet_dir = spec.parquet_dir.clone();
        report.postgres = spec.postgres.is_some();
        report.dead_letters = (dead_letters.count() > 0).then(|| dead_letters.path().to_path_buf());
        report.account_problem = cx.fetcher.account_problem().map(ToString::to_string);
        report.budget_problem = cx.fetcher.budget().filter(|b| b.exhausted()).map(|b| {
            format!(
                "spend cap of ${:.5} reached: ${:.5} spent; {} units not run",
                b.cap(),
                b.spent(),
                report.units_not_run
            )
        });
        report.interrupted = shutdown.stop.is_cancelled() || abandoned;
        report.abandoned = abandoned;
        report.ledger_error = ledger_result.as_ref().err().map(|e| chain(e));
        report.archive_error = archive_result.as_ref().err().map(|e| chain(e));
        report.status = outcome_status(&report);

        let rows = report.rows_by_name();
        end_record(&mut record, &report)?;
        let manifest = state::Manifest::of_run(
            &record,
            mode.command(),
            rows.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        );
        let recorded = sinks.record_run(&record).await;
        let run_file = {
            let (sinks, record) = (sinks.clone(), record.clone());
            cpu.run(move || sinks.finish_run_file(&record)).await?
        };
        write_manifest(&cpu, &runs_dir, manifest).await?;
        recorded?;
        run_file?;
        info!(
            status = %report.status,
            units_ok = report.units_ok,
            units_failed = report.units_failed,
            cost_usd = report.cost_usd,
            replayed = report.replayed,
            "run finished"
        );
        Ok(report)
    }
}

/// The fetcher of a run: the API of the mode (none for a replay), the
/// archived answers it may reuse (`index`), the raw archive it writes
/// (not for a replay), the spend cap. Returns it, the archive writer and
/// what the log calls the API.
fn fetcher(
    spec: &PipelineSpec,
    mode: &Mode,
    index: Option<ArchiveIndex>,
    max_cost: Option<f64>,
    archive_dir: &std::path::Path,
    run_id: &str,
    cancel: CancellationToken,
) -> Result<(Fetcher, Option<Arc<ArchiveWriter>>, String)> {
    let (api, offline) = match mode {
        Mode::Fetch { api, .. } => (api.clone(), false),
        // Replay never calls anything: the client is built but never used.
        Mode::Replay { .. } => (
            Api {
                base_url: "http://127.0.0.1:9".into(),
                login: String::new(),
                password: Secret::new(""),
                label: "none (replay from the archive)".into(),
            },
            true,
        ),
    };
    let mut fetcher = Fetcher::new(
        FetcherConfig {
            base_url: api.base_url,
            login: api.login,
            password: api.password,
            requests_per_minute: spec.requests_per_minute,
            max_in_flight: spec.max_in_flight,
            timeout: spec.timeout,
            retry: spec.retry.clone(),
        },
        cancel,
    )
    .context("building the HTTP client")?;
    if let Some(index) = index {
        fetcher = fetcher.with_replay(Arc::new(index));
    }
    let archive = if offline {
        fetcher = fetcher.offline();
        None
    } else {
        let writer = Arc::new(
            ArchiveWriter::new(archive_dir, run_id.to_owned())
                .context("opening the raw archive")?,
        );
        fetcher = fetcher.with_archive(writer.clone());
        Some(writer)
    };
    if let Some(cap) = max_cost {
        fetcher = fetcher.with_budget(Arc::new(Budget::new(cap)));
    }
    Ok((fetcher, archive, api.label))
}

/// The run's row as it ended, from its report.
fn end_record(record: &mut RunRecord, report: &RunReport) -> Result<()> {
    record.finished_at = Some(Utc::now());
    record.status = report.status;
    record.units_ok = report.units_ok as i64;
    record.units_failed = report.units_failed as i64;
    record.requests = report.requests as i64;
    record.retries = report.retries as i64;
    record.cost_usd = report.cost_usd;
    record.rows =
        serde_json::to_string(&report.rows_by_name()).context("recording the rows per dataset")?;
    record.unknown_fields =
        serde_json::to_string(&report.unknown).context("recording the unknown fields")?;
    record.replayed = report.replayed as i64;
    record.replayed_cost_usd = report.replayed_cost;
    record.error = report
        .account_problem
        .clone()
        .or(report.budget_problem.clone())
        .or(report.ledger_error.clone())
        .or(report.index_error.clone())
        .or(report.archive_error.clone());
    Ok(())
}

/// Records one unit's outcome: its requests in the ledger, a failure in
/// the dead letters, its counts in the report.
async fn land_outcome(
    outcome: UnitOutcome,
    ledger: &Ledger,
    dead_letters: &Arc<state::DeadLetters>,
    report: &mut RunReport,
    observer: &dyn Observer,
) {
    let last_status_code = outcome.records.last().and_then(|r| r.status_code);
    for request in outcome.records {
        report.cost_usd += request.cost;
        ledger.record(request).await;
    }
    if let UnitStatus::Failed(error) = &outcome.status {
        let letter = state::DeadLetter {
            endpoint: outcome.unit.endpoint.name().into(),
            target: outcome.unit.target.to_string(),
            error: error.clone(),
            status_code: last_status_code,
        };
        let letters = Arc::clone(dead_letters);
        let appended = tokio::task::spawn_blocking(move || letters.append(&letter)).await;
        match appended {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %chain(&e), "could not record a failed unit"),
            Err(e) => warn!(error = %e, "could not record a failed unit"),
        }
    }
    observer.unit_done(&outcome.unit, &outcome.status);
    report.add_unit(
        &outcome.unit,
        outcome.status,
        &outcome.rows,
        &outcome.unknown,
        outcome.items,
    );
}

/// Before the units: drops the deferrable indexes for a deferred load, or
/// builds those an earlier one left missing (it died before its end).
async fn prepare_indexes(sinks: &Sinks, defer: bool) -> Result<()> {
    let Some(pg) = &sinks.postgres else {
        return Ok(());
    };
    if defer {
        let dropped = pg
            .drop_deferrable_indexes()
            .await
            .context("dropping the indexes the load builds afterwards (--defer-indexes)")?;
        info!(indexes = ?dropped, "indexes dropped for the load; they are built again when the units are done");
    } else {
        let started = Instant::now();
        let built = pg
            .build_missing_indexes()
            .await
            .context("building the indexes an earlier deferred load left missing")?;
        if !built.is_empty() {
            warn!(indexes = ?built, secs = started.elapsed().as_secs_f64(), "built the indexes an earlier deferred load left missing");
        }
    }
    Ok(())
}

/// After the units of a deferred load: builds the indexes it dropped.
async fn build_indexes(sinks: &Sinks) -> Result<()> {
    let Some(pg) = &sinks.postgres else {
        return Ok(());
    };
    let started = Instant::now();
    let built = pg.build_missing_indexes().await.context(
        "building the indexes dropped for the load (--defer-indexes); the next run builds them",
    )?;
    info!(indexes = ?built, secs = started.elapsed().as_secs_f64(), "indexes built after the load");
    Ok(())
}

/// How the run ended, from what the report holds.
fn outcome_status(report: &RunReport) -> RunStatus {
    if report.account_problem.is_some() {
        RunStatus::AccountError
    } else if report.interrupted {
        RunStatus::Interrupted
    } else if report.budget_problem.is_some() {
        RunStatus::BudgetExhausted
    } else if report.units_failed > 0 && report.units_ok == 0 {
        RunStatus::Failed
    } else if report.units_failed > 0
        || report.units_not_run > 0
        || report.ledger_error.is_some()
        || report.index_error.is_some()
        || report.archive_error.is_some()
    {
        RunStatus::Partial
    } else {
        RunStatus::Succeeded
    }
}

async fn write_manifest(
    cpu: &CpuPool,
    dir: &std::path::Path,
    manifest: state::Manifest,
) -> Result<()> {
    let dir = dir.to_path_buf();
    cpu.run(move || state::write_manifest(&dir, &manifest))
        .await?
}

/// The spend cap of the run: `--max-cost` wins over the pipeline's;
/// `--max-cost 0` lifts it.
fn spend_cap(mode: &Mode, pipeline_cap: Option<f64>) -> Result<Option<f64>> {
    match mode {
        Mode::Fetch {
            max_cost: Some(cap),
            ..
        } => {
            if !cap.is_finite() || *cap < 0.0 {
                return Err(Error::input(format!(
                    "--max-cost {cap}: give an amount in USD (0 = no cap)"
                )));
            }
            Ok((*cap > 0.0).then_some(*cap))
        }
        _ => Ok(pipeline_cap),
    }
}

/// What earlier runs of the day archived, as the mode uses it: the
/// unfinished runs' answers for a fetch (none with `refetch`), every
/// answer (or one run's) for a replay.
fn archive_index(
    mode: &Mode,
    archive_dir: &std::path::Path,
    runs_dir: &std::path::Path,
    pipeline: &str,
    snapshot_date: NaiveDate,
) -> Result<Option<ArchiveIndex>> {
    let all_archives = backlinks_fetcher::archive::archive_files(archive_dir)
        .context("listing the raw archive")?;
    match mode {
        Mode::Fetch { refetch: true, .. } => Ok(None),
        Mode::Fetch { .. } => {
            let manifests = state::read_manifests(runs_dir)?;
            let (files, runs) = state::resumable_archive_files(&all_archives, &manifests);
            let index = ArchiveIndex::build(&files).context("reading the raw archive")?;
            if !index.is_empty() {
                info!(
                    answers = index.len(),
                    runs = runs.join(", "),
                    "resuming: answers archived by unfinished runs of this day are reused, not fetched again"
                );
            }
            Ok(Some(index))
        }
        Mode::Replay { run_id } => {
            let files: Vec<PathBuf> = all_archives
                .iter()
                .filter(|p| {
                    run_id
                        .as_ref()
                        .is_none_or(|id| state::archive_run_id(p).as_deref() == Some(id))
                })
                .cloned()
                .collect();
            if files.is_empty() {
                return Err(Error::input(format!(
                    "nothing to replay: no archived answers{} for pipeline `{pipeline}` on {snapshot_date} in {}",
                    run_id
                        .as_ref()
                        .map(|id| format!(" of run {id}"))
                        .unwrap_or_default(),
                    archive_dir.display()
                )));
            }
            Ok(Some(
                ArchiveIndex::build(&files).context("reading the raw archive")?,
            ))
        }
    }
}

/// The units of `--retry-failed`: those in the dead letters of the latest
/// run of this pipeline and date.
fn retry_units(
    units: Vec<WorkUnit>,
    runs_dir: &std::path::Path,
    pipeline: &str,
    snapshot_date: NaiveDate,
) -> Result<Vec<WorkUnit>> {
    let manifests = state::read_manifests(runs_dir)?;
    let Some(latest) = manifests.last() else {
        return Err(Error::input(format!(
            "--retry-failed: no run of pipeline `{pipeline}` on {snapshot_date} is recorded in {}",
            runs_dir.display()
        )));
    };
    let letters = state::read_dead_letters(runs_dir, &latest.run_id)?;
    if letters.is_empty() {
        return Err(Error::input(format!(
            "--retry-failed: the latest run {} of pipeline `{pipeline}` on {snapshot_date} ({}) has no failed units",
            latest.run_id, latest.status
        )));
    }
    let wanted: HashSet<(String, String)> = letters
        .into_iter()
        .map(|l| (l.endpoint, l.target))
        .collect();
    let units: Vec<WorkUnit> = units
        .into_iter()
        .filter(|u| wanted.contains(&(u.endpoint.name().to_owned(), u.target.to_string())))
        .collect();
    if units.len() < wanted.len() {
        warn!(
            missing = wanted.len() - units.len(),
            "some failed units are no longer among the pipeline's targets and endpoints"
        );
    }
    info!(run_id = %latest.run_id, units = units.len(), "retrying the failed units of the latest run");
    Ok(units)
}

/// Pages requested ahead per target: enough for the targets that may be
/// open at once (`sinks.parquet.max_open_partitions`, Postgres connections)
/// to keep `api.max_in_flight` requests busy.
fn pages_ahead(spec: &PipelineSpec) -> usize {
    // At least one slot: the division is safe.
    let open = partition_slots(spec);
    (spec.max_in_flight as usize)
        .div_ceil(open)
        .min(MAX_PAGES_AHEAD)
}
