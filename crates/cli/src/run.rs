//! `backlinks run`, `backlinks replay` and `backlinks validate`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use backlinks_fetcher::{ArchiveIndex, ArchiveWriter, Budget, Fetcher, FetcherConfig};
use backlinks_model::api::{BacklinksRequest, SummaryRequest};
use backlinks_model::{Dataset, Endpoint, PartitionKey, RunRecord, Secret, WorkUnit};
use backlinks_normalizer::{RowContext, UnknownFields, backlinks_page_rows, summary_rows};
use backlinks_scheduler::{TargetList, TargetSource, read_targets, work_units};
use chrono::{NaiveDate, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{self, BacklinksSpec, PipelineSpec, RawPipeline, RawPricing, RawSandbox};
use crate::report::{ItemCounts, Report, UnitStatus};
use crate::sinks::{Ledger, Sinks};
use crate::{InputError, RunArgs, credentials, exit, state};

/// How many rejected targets are logged one by one before only counting.
const REJECTED_LOGGED: usize = 20;

/// Loads, overrides and validates a pipeline; every problem is an
/// [`InputError`] naming the file and key.
pub(crate) fn load_spec(
    path: &Path,
    targets: Option<&Path>,
    strict: bool,
) -> anyhow::Result<(RawPipeline, PipelineSpec)> {
    let raw = config::load(path).map_err(|e| InputError(format!("{e:#}")))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut spec = raw.validate(dir).map_err(|problems| {
        InputError(format!(
            "pipeline {} is invalid:\n  - {}",
            path.display(),
            problems.join("\n  - ")
        ))
    })?;
    if let Some(csv) = targets {
        spec.targets = TargetSource::Csv(csv.to_path_buf());
    }
    spec.strict_targets |= strict;
    if let Some(url) = credentials::base_url_override() {
        config::check_base_url(&url)
            .map_err(|problem| InputError(format!("DATAFORSEO_BASE_URL: {problem}")))?;
        spec.base_url = url.trim_end_matches('/').to_owned();
    }
    Ok((raw, spec))
}

pub(crate) async fn load_targets(spec: &PipelineSpec) -> anyhow::Result<TargetList> {
    let source = spec.targets.clone();
    let strict = spec.strict_targets;
    let list = tokio::task::spawn_blocking(move || read_targets(&source, strict))
        .await
        .context("the target reader panicked")?
        .map_err(|e| InputError(e.to_string()))?;
    for rejected in list.rejected.iter().take(REJECTED_LOGGED) {
        warn!("skipping target {rejected}");
    }
    if list.rejected.len() > REJECTED_LOGGED {
        warn!(
            more = list.rejected.len() - REJECTED_LOGGED,
            "more targets skipped (run `backlinks validate` to list them all)"
        );
    }
    Ok(list)
}

pub(crate) fn endpoints(spec: &PipelineSpec) -> Vec<Endpoint> {
    let mut endpoints = Vec::new();
    if spec.summary.is_some() {
        endpoints.push(Endpoint::Summary);
    }
    if spec.backlinks.is_some() {
        endpoints.push(Endpoint::Backlinks);
    }
    endpoints
}

/// `backlinks validate`: checks the pipeline and its targets, no API call.
pub async fn validate(path: &Path, explain: bool, targets: Option<&Path>) -> anyhow::Result<u8> {
    let (raw, spec) = load_spec(path, targets, false)?;
    let list = load_targets(&spec).await?;
    println!(
        "pipeline `{}` is valid: {} targets ({} rejected, {} duplicates), endpoints: {}",
        spec.name,
        list.targets.len(),
        list.rejected.len(),
        list.duplicates,
        endpoints(&spec)
            .iter()
            .map(|e| e.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for rejected in &list.rejected {
        println!("  rejected {rejected}");
    }
    if explain {
        println!("\n# effective settings (defaults included)");
        print!(
            "{}",
            toml::to_string_pretty(&raw).context("printing the settings")?
        );
        println!(
            "# api.base_url after DATAFORSEO_BASE_URL: {}",
            spec.base_url
        );
        println!(
            "# state.dir (raw archive, run manifests and failed units; BACKLINKS__STATE__DIR overrides it): {}",
            spec.state_dir.display()
        );
        println!(
            "# budget: {} (pricing is used for estimates only; recorded costs come from the API)",
            spec.max_cost_usd
                .map_or("no spend cap".to_owned(), |cap| format!(
                    "spend cap ${cap:.5} per run"
                ))
        );
    }
    Ok(if list.rejected.is_empty() {
        exit::OK
    } else {
        exit::BAD_INPUT
    })
}

/// Everything a unit needs, shared by all units of a run.
struct RunContext {
    pipeline: Arc<str>,
    snapshot_date: NaiveDate,
    summary: Option<SummaryRequest>,
    backlinks: Option<BacklinksSpec>,
    pricing: RawPricing,
    fetcher: Fetcher,
    sinks: Sinks,
    /// Pages of one backlinks target requested ahead of the one being
    /// landed (see [`PagesAhead`]).
    pages_ahead: usize,
}

/// What became of one unit.
struct UnitOutcome {
    unit: WorkUnit,
    /// The ledger records of the requests it sent (one per page).
    records: Vec<backlinks_model::RequestRecord>,
    status: UnitStatus,
    rows: Vec<(Dataset, u64)>,
    unknown: UnknownFields,
    /// Items the API announced and items loaded, for paginated endpoints.
    items: Option<ItemCounts>,
}

/// How a run gets its answers.
#[derive(Debug, Clone)]
pub enum Mode {
    /// From the API, reusing what unfinished runs of the same day archived
    /// (unless `refetch`); `retry_failed` runs only the dead letters of the
    /// latest run.
    Fetch {
        refetch: bool,
        retry_failed: bool,
        max_cost: Option<f64>,
    },
    /// From the archive only, never the network (`backlinks replay`);
    /// `run_id` restricts it to that run's archive files.
    Replay { run_id: Option<String> },
}

impl Mode {
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

/// `backlinks run`.
pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let mode = Mode::Fetch {
        refetch: args.refetch,
        retry_failed: args.retry_failed,
        max_cost: args.max_cost,
    };
    execute(args, mode).await
}

/// The units of `--retry-failed`: those in the dead letters of the latest
/// run of this pipeline and date.
fn retry_units(
    units: Vec<WorkUnit>,
    runs_dir: &Path,
    pipeline: &str,
    snapshot_date: NaiveDate,
) -> anyhow::Result<Vec<WorkUnit>> {
    let manifests = state::read_manifests(runs_dir)?;
    let Some(latest) = manifests.last() else {
        return Err(InputError(format!(
            "--retry-failed: no run of pipeline `{pipeline}` on {snapshot_date} is recorded in {}",
            runs_dir.display()
        ))
        .into());
    };
    let letters = state::read_dead_letters(runs_dir, &latest.run_id)?;
    if letters.is_empty() {
        return Err(InputError(format!(
            "--retry-failed: the latest run {} of pipeline `{pipeline}` on {snapshot_date} ({}) has no failed units",
            latest.run_id, latest.status
        ))
        .into());
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

/// Signals: the first stops dispatching and starts the grace period; the
/// second, or the end of the grace period, abandons what is in flight.
async fn watch_signals(
    cancel: CancellationToken,
    interrupted: Arc<AtomicBool>,
    abandon: CancellationToken,
    grace: std::time::Duration,
) {
    let mut signals = Signals::new();
    signals.next().await;
    interrupted.store(true, Ordering::SeqCst);
    warn!(
        grace_secs = grace.as_secs(),
        "stopping: no new requests; those in flight finish and land (a second signal abandons them)"
    );
    cancel.cancel();
    tokio::select! {
        () = signals.next() => warn!("second signal: abandoning what is in flight"),
        () = tokio::time::sleep(grace) => warn!("grace period over: abandoning what is in flight"),
    }
    abandon.cancel();
}

/// Ctrl-C and SIGTERM, as a stream of "a signal came".
struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                terminate: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            let terminate = async {
                match &mut self.terminate {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let interrupt = async {
                match &mut self.interrupt {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = terminate => {},
                () = interrupt => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `backlinks run` and `backlinks replay`.
pub async fn execute(args: RunArgs, mode: Mode) -> anyhow::Result<u8> {
    let clock = Instant::now();
    let started_at = Utc::now();
    let (raw, spec) = load_spec(&args.pipeline, args.targets.as_deref(), args.strict)?;
    let snapshot_date = args.as_of.unwrap_or_else(|| started_at.date_naive());
    let list = load_targets(&spec).await?;
    if list.targets.is_empty() {
        return Err(InputError(format!(
            "no valid targets in {} ({} rejected)",
            describe_source(&spec.targets),
            list.rejected.len()
        ))
        .into());
    }
    let archive_dir = state::archive_dir(&spec.state_dir, &spec.name, snapshot_date);
    let runs_dir = state::runs_dir(&spec.state_dir, &spec.name, snapshot_date);
    let mut units: Vec<WorkUnit> = work_units(&list.targets, &endpoints(&spec)).collect();
    if let Mode::Fetch {
        retry_failed: true, ..
    } = mode
    {
        units = retry_units(units, &runs_dir, &spec.name, snapshot_date)?;
    }
    // `--max-cost` wins over the pipeline's cap; `--max-cost 0` lifts it.
    let max_cost = match &mode {
        Mode::Fetch {
            max_cost: Some(cap),
            ..
        } => {
            if !cap.is_finite() || *cap < 0.0 {
                return Err(InputError(format!(
                    "--max-cost {cap}: give an amount in USD (0 = no cap)"
                ))
                .into());
            }
            (*cap > 0.0).then_some(*cap)
        }
        _ => spec.max_cost_usd,
    };

    // What earlier runs of the day archived.
    let all_archives = backlinks_fetcher::archive::archive_files(&archive_dir)?;
    let index = match &mode {
        Mode::Fetch { refetch: true, .. } => None,
        Mode::Fetch { .. } => {
            let manifests = state::read_manifests(&runs_dir)?;
            let (files, runs) = state::resumable_archive_files(&all_archives, &manifests);
            let index = ArchiveIndex::build(&files)?;
            if !index.is_empty() {
                info!(
                    answers = index.len(),
                    runs = runs.join(", "),
                    "resuming: answers archived by unfinished runs of this day are reused, not fetched again"
                );
            }
            Some(index)
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
                return Err(InputError(format!(
                    "nothing to replay: no archived answers{} for pipeline `{}` on {snapshot_date} in {}",
                    run_id
                        .as_ref()
                        .map(|id| format!(" of run {id}"))
                        .unwrap_or_default(),
                    spec.name,
                    archive_dir.display()
                ))
                .into());
            }
            Some(ArchiveIndex::build(&files)?)
        }
    };

    let cancel = CancellationToken::new();
    let offline = matches!(mode, Mode::Replay { .. });
    let (sandbox, base_url, login, password) = match (&spec.sandbox, offline) {
        // Replay never calls anything: the client is built but never used.
        (_, true) => (
            None,
            "http://127.0.0.1:9".to_owned(),
            String::new(),
            Secret::new(""),
        ),
        (Some(settings), false) => {
            let (sandbox, login, password) = start_sandbox(settings).await?;
            let url = sandbox.base_url();
            (Some(sandbox), url, login, password)
        }
        (None, false) => {
            let (login, password) = credentials::api_credentials()?;
            (None, spec.base_url.clone(), login, password)
        }
    };
    let sinks = Sinks::open(&spec).await?;
    let run_id = uuid::Uuid::now_v7().to_string();
    let mut fetcher = Fetcher::new(
        FetcherConfig {
            base_url,
            login,
            password,
            requests_per_minute: spec.requests_per_minute,
            max_in_flight: spec.max_in_flight,
            timeout: spec.timeout,
            retry: spec.retry.clone(),
        },
        cancel.clone(),
    )?;
    if let Some(index) = index {
        fetcher = fetcher.with_replay(Arc::new(index));
    }
    let archive = if offline {
        fetcher = fetcher.offline();
        None
    } else {
        let writer = Arc::new(ArchiveWriter::new(&archive_dir, run_id.clone())?);
        fetcher = fetcher.with_archive(writer.clone());
        Some(writer)
    };
    if let Some(cap) = max_cost {
        fetcher = fetcher.with_budget(Arc::new(Budget::new(cap)));
    }

    let mut record = RunRecord {
        run_id: run_id.clone(),
        pipeline: spec.name.to_string(),
        snapshot_date,
        started_at,
        finished_at: None,
        status: "running".into(),
        units_total: units.len() as i64,
        units_ok: 0,
        units_failed: 0,
        requests: 0,
        retries: 0,
        cost_usd: 0.0,
        rows: "{}".into(),
        unknown_fields: "{}".into(),
        settings: serde_json::to_string(&raw).context("recording the settings")?,
        error: None,
        replayed: 0,
        replayed_cost_usd: 0.0,
    };
    let manifest = state::Manifest::of_run(&record, mode.command(), BTreeMap::new());
    tokio::task::block_in_place(|| state::write_manifest(&runs_dir, &manifest))?;
    sinks.record_run(&record).await?;
    info!(
        run_id,
        pipeline = %spec.name,
        %snapshot_date,
        targets = list.targets.len(),
        units = units.len(),
        max_cost_usd = max_cost,
        api = if offline { "none (replay from the archive)" } else if sandbox.is_some() { "embedded sandbox" } else { spec.base_url.as_str() },
        "run started"
    );
    let interrupted = Arc::new(AtomicBool::new(false));
    let abandon = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(
        cancel.clone(),
        interrupted.clone(),
        abandon.clone(),
        spec.shutdown_grace,
    ));

    let ctx = Arc::new(RunContext {
        pipeline: spec.name.clone(),
        snapshot_date,
        summary: spec.summary.clone(),
        backlinks: spec.backlinks.clone(),
        pricing: spec.pricing.clone(),
        fetcher,
        sinks: sinks.clone(),
        pages_ahead: pages_ahead(&spec),
    });
    let ledger = Ledger::start(
        sinks.clone(),
        run_id.clone(),
        spec.name.clone(),
        snapshot_date,
    );
    let dead_letters = state::DeadLetters::new(&runs_dir, &run_id);
    let progress = progress_bar(units.len() as u64, args.no_progress);
    let mut report = Report::new(
        run_id.clone(),
        spec.name.to_string(),
        snapshot_date,
        &list,
        &endpoints(&spec),
    );
    let units_total = units.len() as u64;
    // More units than request slots are in progress at once, so that
    // normalizing and landing one never leaves a request slot idle.
    let concurrency = spec.max_in_flight as usize * 2;
    let mut outcomes = futures::stream::iter(units)
        .map(|unit| process(ctx.clone(), unit))
        .buffer_unordered(concurrency);
    let mut abandoned = false;
    loop {
        let outcome = tokio::select! {
            biased;
            () = abandon.cancelled() => {
                abandoned = true;
                break;
            }
            next = outcomes.next() => match next {
                Some(outcome) => outcome,
                None => break,
            },
        };
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
            if let Err(e) = tokio::task::block_in_place(|| dead_letters.append(&letter)) {
                warn!(error = %format!("{e:#}"), "could not record a failed unit");
            }
        }
        report.add_unit(
            &outcome.unit,
            outcome.status,
            &outcome.rows,
            &outcome.unknown,
            outcome.items,
        );
        if let Some(bar) = &progress {
            bar.inc(1);
        }
    }
    // Abandoned units roll back: their Parquet files are removed, their
    // Postgres transactions are not committed.
    drop(outcomes);
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    signals.abort();
    report.units_not_run = units_total - report.units_ok - report.units_failed;

    let ledger_result = ledger.finish().await;
    let archive_result = match &archive {
        Some(writer) => {
            tokio::task::block_in_place(|| writer.finish()).map_err(anyhow::Error::from)
        }
        None => Ok(()),
    };
    let stats = ctx.fetcher.stats();
    report.requests = stats.attempts;
    report.retries = stats.retries;
    report.rate_limited = stats.rate_limited;
    report.too_many_in_flight = stats.too_many_in_flight;
    report.replayed = stats.replayed;
    report.replayed_cost = ctx.fetcher.replayed_cost();
    report.duration = clock.elapsed();
    report.parquet_dir = spec.parquet_dir.clone();
    report.postgres = spec.postgres.is_some();
    report.dead_letters = (dead_letters.count() > 0).then(|| dead_letters.path().to_path_buf());

    let account_problem = ctx.fetcher.account_problem().map(ToString::to_string);
    let budget_problem = ctx.fetcher.budget().filter(|b| b.exhausted()).map(|b| {
        format!(
            "spend cap of ${:.5} reached: ${:.5} spent; {} units not run",
            b.cap(),
            b.spent(),
            report.units_not_run
        )
    });
    let (status, code) = if account_problem.is_some() {
        ("account_error", exit::ACCOUNT)
    } else if interrupted.load(Ordering::SeqCst) || abandoned {
        ("interrupted", exit::PARTIAL)
    } else if budget_problem.is_some() {
        ("budget_exhausted", exit::BUDGET)
    } else if report.units_failed > 0 && report.units_ok == 0 {
        ("failed", exit::PARTIAL)
    } else if report.units_failed > 0
        || report.units_not_run > 0
        || ledger_result.is_err()
        || archive_result.is_err()
    {
        ("partial", exit::PARTIAL)
    } else {
        ("succeeded", exit::OK)
    };
    let ledger_error = ledger_result.as_ref().err().map(|e| format!("{e:#}"));
    let archive_error = archive_result.as_ref().err().map(|e| format!("{e:#}"));
    let rows = report.rows_by_name();
    record.finished_at = Some(Utc::now());
    record.status = status.into();
    record.units_ok = report.units_ok as i64;
    record.units_failed = report.units_failed as i64;
    record.requests = report.requests as i64;
    record.retries = report.retries as i64;
    record.cost_usd = report.cost_usd;
    record.rows = serde_json::to_string(&rows)?;
    record.unknown_fields = serde_json::to_string(&report.unknown)?;
    record.replayed = report.replayed as i64;
    record.replayed_cost_usd = report.replayed_cost;
    record.error = account_problem
        .clone()
        .or(budget_problem.clone())
        .or(ledger_error.clone())
        .or(archive_error.clone());
    let manifest = state::Manifest::of_run(
        &record,
        mode.command(),
        rows.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    );
    let recorded = sinks.record_run(&record).await;
    let run_file = tokio::task::block_in_place(|| sinks.finish_run_file(&record));
    tokio::task::block_in_place(|| state::write_manifest(&runs_dir, &manifest))?;
    recorded?;
    run_file?;
    if let Some(sandbox) = sandbox {
        sandbox.shutdown().await;
    }

    report.status = status;
    info!(
        run_id,
        status,
        units_ok = report.units_ok,
        units_failed = report.units_failed,
        cost_usd = report.cost_usd,
        replayed = report.replayed,
        "run finished"
    );
    print!("{}", report.render());
    if let Some(problem) = account_problem {
        eprintln!(
            "error: {problem}; the run stopped (exit code {})",
            exit::ACCOUNT
        );
    } else if let Some(problem) = &budget_problem {
        eprintln!(
            "error: {problem}; what was fetched landed; raise the cap (--max-cost or budget.max_cost_usd) and run the same command again to continue (exit code {})",
            exit::BUDGET
        );
    }
    if status == "interrupted" {
        eprintln!(
            "error: the run was interrupted{}; run the same command again to resume it",
            if abandoned {
                " and the units in flight were abandoned"
            } else {
                ""
            }
        );
    }
    if let Some(e) = ledger_error {
        eprintln!("error: {e}");
    }
    if let Some(e) = archive_error {
        eprintln!("error: {e}");
    }
    Ok(code)
}

/// Fetches one unit and lands its rows.
async fn process(ctx: Arc<RunContext>, unit: WorkUnit) -> UnitOutcome {
    let key = PartitionKey {
        pipeline: ctx.pipeline.clone(),
        target: unit.target.clone(),
        snapshot_date: ctx.snapshot_date,
    };
    let mut outcome = UnitOutcome {
        unit,
        records: Vec::new(),
        status: UnitStatus::NotRun,
        rows: Vec::new(),
        unknown: UnknownFields::new(),
        items: None,
    };
    outcome.status = match outcome.unit.endpoint {
        Endpoint::Summary => match &ctx.summary {
            Some(template) => summary_unit(&ctx, template, &key, &mut outcome).await,
            None => UnitStatus::NotRun,
        },
        Endpoint::Backlinks => match &ctx.backlinks {
            Some(spec) => match backlinks_unit(&ctx, spec, &key, &mut outcome).await {
                Ok(status) => status,
                Err(e) => {
                    warn!(target = %key.target, endpoint = "backlinks", error = %format!("{e:#}"), "could not land the partition");
                    UnitStatus::Failed(format!("{e:#}"))
                }
            },
            None => UnitStatus::NotRun,
        },
    };
    outcome
}

/// Keeps the ledger record of a request that was sent (one cancelled
/// before its first attempt never was, and has no place in the ledger).
fn keep_record(outcome: &mut UnitOutcome, record: backlinks_model::RequestRecord) {
    if record.attempts > 0 || record.replayed {
        outcome.records.push(record);
    }
}

/// summary/live: one request, one partition.
async fn summary_unit(
    ctx: &RunContext,
    template: &SummaryRequest,
    key: &PartitionKey,
    outcome: &mut UnitOutcome,
) -> UnitStatus {
    let request = SummaryRequest {
        target: key.target.to_string(),
        ..template.clone()
    };
    let exchange = ctx
        .fetcher
        .post_with_estimate(
            Endpoint::Summary,
            key.target.as_str(),
            0,
            &request,
            ctx.pricing.summary.estimate(1),
        )
        .await;
    keep_record(outcome, exchange.record);
    let fetched = match exchange.result {
        Err(
            backlinks_fetcher::Error::Cancelled | backlinks_fetcher::Error::BudgetExhausted { .. },
        ) => {
            return UnitStatus::NotRun;
        }
        Err(e) => return UnitStatus::Failed(e.to_string()),
        Ok(fetched) => fetched,
    };
    let row_ctx = RowContext {
        key,
        fetched_at: fetched.fetched_at,
        task_id: fetched.task_id.as_deref(),
        cost: fetched.cost,
    };
    match land_summary(&ctx.sinks, key, &row_ctx, &fetched.body).await {
        Ok((rows, unknown)) => {
            outcome.rows = rows;
            outcome.unknown = unknown;
            UnitStatus::Ok
        }
        Err(e) => {
            warn!(target = %key.target, endpoint = "summary", error = %format!("{e:#}"), "could not land the partition");
            UnitStatus::Failed(format!("{e:#}"))
        }
    }
}

async fn land_summary(
    sinks: &Sinks,
    key: &PartitionKey,
    row_ctx: &RowContext<'_>,
    body: &[u8],
) -> anyhow::Result<(Vec<(Dataset, u64)>, UnknownFields)> {
    let rows = summary_rows(row_ctx, body)?;
    let parts = [
        (Dataset::Summary, &rows.summary),
        (Dataset::SummaryBreakdown, &rows.breakdown),
    ];
    sinks.write_partition(key, &parts).await?;
    let counts = parts
        .iter()
        .map(|(d, b)| (*d, b.num_rows() as u64))
        .collect();
    Ok((counts, rows.unknown_fields))
}

/// The API pages backlinks/live by `offset` up to this value; past it, a
/// page continues from the previous page's `search_after_token`.
pub const MAX_OFFSET: u64 = 20_000;

/// Where the page starting at `position` begins: by offset while the
/// offset is allowed, then right after the previous page's token.
fn page_start(
    position: u64,
    previous_token: Option<&str>,
) -> Result<(u32, Option<String>), String> {
    if position <= MAX_OFFSET {
        // Within the offset range; the conversion cannot fail.
        return Ok((u32::try_from(position).unwrap_or(u32::MAX), None));
    }
    match previous_token {
        Some(token) if !token.is_empty() => Ok((0, Some(token.to_owned()))),
        _ => Err(format!(
            "the API returned no search_after_token at item {position}, past the {MAX_OFFSET} items reachable by offset"
        )),
    }
}

/// Most pages of one target requested ahead of the one being landed.
const MAX_PAGES_AHEAD: usize = 8;

/// Pages requested ahead per target: enough for the targets that may be
/// open at once (`sinks.parquet.max_open_partitions`, Postgres connections)
/// to keep `api.max_in_flight` requests busy.
fn pages_ahead(spec: &PipelineSpec) -> usize {
    // At least one slot: the division is safe.
    let open = crate::sinks::partition_slots(spec);
    (spec.max_in_flight as usize)
        .div_ceil(open)
        .min(MAX_PAGES_AHEAD)
}

/// Items to ask for in the page starting at item `position`: a page, or
/// what is left under `max_items`.
fn page_limit(spec: &BacklinksSpec, position: u64) -> u64 {
    let page = u64::from(spec.page_size);
    spec.max_items
        .map_or(page, |cap| page.min(cap.saturating_sub(position)))
}

/// The request of the page of `want` items at `offset`, or right after
/// `search_after_token`.
fn page_request(
    spec: &BacklinksSpec,
    key: &PartitionKey,
    offset: u32,
    want: u64,
    search_after_token: Option<String>,
) -> BacklinksRequest {
    BacklinksRequest {
        target: key.target.to_string(),
        offset: Some(offset),
        limit: Some(u32::try_from(want).unwrap_or(spec.page_size)),
        search_after_token,
        ..spec.template.clone()
    }
}

/// Sends the request of page `page` (of `want` items) of a target.
async fn post_page(
    ctx: &RunContext,
    page: i64,
    request: &BacklinksRequest,
    want: u64,
) -> backlinks_fetcher::Exchange {
    let estimate = ctx.pricing.backlinks.estimate(want);
    ctx.fetcher
        .post_with_estimate(
            Endpoint::Backlinks,
            &request.target,
            page,
            request,
            estimate,
        )
        .await
}

/// Up to `room` pages `(page, offset)` from `first` on, a page apart, that
/// are addressed by offset (≤ [`MAX_OFFSET`]) and start before `end`.
fn offset_pages(first: (i64, u64), room: usize, page_size: u64, end: u64) -> Vec<(i64, u64)> {
    let (page, offset) = first;
    (0..room)
        .map(|i| (page + i as i64, offset + i as u64 * page_size))
        .take_while(|&(_, offset)| offset <= MAX_OFFSET && offset < end)
        .collect()
}

/// The items of a target to load: its `total_count`, at most
/// `max_items`; `None` while the total is not known.
fn items_wanted(total_count: Option<u64>, spec: &BacklinksSpec) -> Option<u64> {
    total_count.map(|total| spec.max_items.map_or(total, |cap| cap.min(total)))
}

/// Requests for the next pages of one target, sent while the current page
/// is landed. Pages addressed by offset are requested up to `depth` ahead
/// (their offsets are known once the first page gave `total_count`); a page
/// past [`MAX_OFFSET`] needs the token of the page before, so it is
/// requested as soon as that page is normalized, one ahead. Each request
/// is exactly the one the page loop would send (same `offset`, `limit` and
/// token), so archived answers and resume see no difference.
struct PagesAhead {
    depth: usize,
    queue: VecDeque<PageAhead>,
}

struct PageAhead {
    page: i64,
    offset: u64,
    search_after_token: Option<String>,
    handle: tokio::task::JoinHandle<backlinks_fetcher::Exchange>,
}

impl PagesAhead {
    fn new(depth: usize) -> Self {
        Self {
            depth,
            queue: VecDeque::new(),
        }
    }

    /// The request for `page` at `offset` (after `search_after_token`), if
    /// it was sent ahead.
    fn take(
        &mut self,
        page: i64,
        offset: u64,
        search_after_token: Option<&str>,
    ) -> Option<PageAhead> {
        let front = self.queue.front()?;
        (front.page == page
            && front.offset == offset
            && front.search_after_token.as_deref() == search_after_token)
            .then(|| self.queue.pop_front())?
    }

    /// Sends the request of `page` of `want` items at `offset` (after
    /// `search_after_token`).
    fn send(&mut self, ctx: &Arc<RunContext>, request: BacklinksRequest, page: i64, want: u64) {
        let offset = request.offset.map_or(0, u64::from);
        let search_after_token = request.search_after_token.clone();
        let ctx = Arc::clone(ctx);
        let handle = tokio::spawn(async move { post_page(&ctx, page, &request, want).await });
        self.queue.push_back(PageAhead {
            page,
            offset,
            search_after_token,
            handle,
        });
    }

    /// Sends `request` for `page` (the page after the token of the page
    /// before, so one at a time), unless requests are already out (they
    /// come first) or none may be sent ahead.
    fn send_next(
        &mut self,
        ctx: &Arc<RunContext>,
        request: BacklinksRequest,
        page: i64,
        want: u64,
    ) {
        if self.depth == 0 || !self.queue.is_empty() {
            return;
        }
        self.send(ctx, request, page, want);
    }

    /// Sends requests for the pages after `page` (which ended at item
    /// `position`) up to the depth, within the offset range and the
    /// target's `end` (its `total_count`, or `max_items` if smaller).
    fn fill(
        &mut self,
        ctx: &Arc<RunContext>,
        spec: &BacklinksSpec,
        key: &PartitionKey,
        page: i64,
        position: u64,
        end: u64,
    ) {
        let page_size = u64::from(spec.page_size);
        let first = match self.queue.back() {
            Some(last) => (last.page + 1, last.offset + page_size),
            None => (page + 1, position),
        };
        let room = self.depth.saturating_sub(self.queue.len());
        for (next, offset) in offset_pages(first, room, page_size, end) {
            let want = page_limit(spec, offset);
            // Offsets here are at most MAX_OFFSET.
            let at = u32::try_from(offset).unwrap_or(u32::MAX);
            self.send(ctx, page_request(spec, key, at, want, None), next, want);
        }
    }

    /// Waits for the requests still out (they are paid, and their answers
    /// go to the archive) and hands back their ledger records.
    async fn drain(&mut self) -> Vec<backlinks_model::RequestRecord> {
        let mut records = Vec::new();
        while let Some(ahead) = self.queue.pop_front() {
            if let Ok(exchange) = ahead.handle.await {
                records.push(exchange.record);
            }
        }
        records
    }
}

/// backlinks/live: every page of one target into one partition, streamed.
/// The pages land together on commit; a page that fails permanently
/// abandons the partition and the previous data of the target stays.
async fn backlinks_unit(
    ctx: &Arc<RunContext>,
    spec: &BacklinksSpec,
    key: &PartitionKey,
    outcome: &mut UnitOutcome,
) -> anyhow::Result<UnitStatus> {
    let mut ahead = PagesAhead::new(ctx.pages_ahead);
    let status = backlinks_pages(ctx, spec, key, outcome, &mut ahead).await;
    // Pages requested ahead but not used (the target ended early, failed or
    // the run stops) were paid for: keep their ledger records.
    for record in ahead.drain().await {
        keep_record(outcome, record);
    }
    status
}

/// The page loop of [`backlinks_unit`].
async fn backlinks_pages(
    ctx: &Arc<RunContext>,
    spec: &BacklinksSpec,
    key: &PartitionKey,
    outcome: &mut UnitOutcome,
    ahead: &mut PagesAhead,
) -> anyhow::Result<UnitStatus> {
    let datasets = [Dataset::Backlinks, Dataset::BacklinkRedirects];
    let mut writer = ctx.sinks.begin(key, &datasets).await?;
    let mut position: u64 = 0;
    let mut token: Option<String> = None;
    let mut expected: Option<u64> = None;
    let mut counts = [0u64; 2];
    for page in 0i64.. {
        let want = page_limit(spec, position);
        if want == 0 {
            break;
        }
        let (offset, search_after_token) = match page_start(position, token.as_deref()) {
            Ok(start) => start,
            Err(problem) => return Ok(UnitStatus::Failed(problem)),
        };
        let exchange = match ahead.take(page, u64::from(offset), search_after_token.as_deref()) {
            Some(sent) => match sent.handle.await {
                Ok(exchange) => exchange,
                Err(e) => {
                    return Ok(UnitStatus::Failed(format!(
                        "page {page} (item {position}): the request task ended: {e}"
                    )));
                }
            },
            None => {
                let request = page_request(spec, key, offset, want, search_after_token);
                post_page(ctx, page, &request, want).await
            }
        };
        keep_record(outcome, exchange.record);
        let fetched = match exchange.result {
            Err(
                backlinks_fetcher::Error::Cancelled
                | backlinks_fetcher::Error::BudgetExhausted { .. },
            ) => return Ok(UnitStatus::NotRun),
            Err(e) if page == 0 => return Ok(UnitStatus::Failed(e.to_string())),
            Err(e) => {
                return Ok(UnitStatus::Failed(format!(
                    "page {page} (item {position}): {e}; the pages before it were not landed"
                )));
            }
            Ok(fetched) => fetched,
        };
        let row_ctx = RowContext {
            key,
            fetched_at: fetched.fetched_at,
            task_id: fetched.task_id.as_deref(),
            cost: fetched.cost,
        };
        let first = i64::try_from(position).unwrap_or(i64::MAX);
        let rows = backlinks_page_rows(&row_ctx, first, &fetched.body)?;
        if let Some(total) = rows.total_count {
            expected = Some(u64::try_from(total).unwrap_or(0));
        }
        let got = rows.items_count as u64;
        position += got;
        token = rows.search_after_token;
        let short_page = got < want;
        let all_there = expected.is_some_and(|total| position >= total);
        let cap_reached = page_limit(spec, position) == 0;
        let last = got == 0 || short_page || all_there || cap_reached;
        // The next requests go out before this page is written, so that the
        // API works while the sinks do.
        if !last {
            match (
                page_start(position, token.as_deref()),
                items_wanted(expected, spec),
            ) {
                (Ok((offset, Some(after))), _) => {
                    let want = page_limit(spec, position);
                    let request = page_request(spec, key, offset, want, Some(after));
                    ahead.send_next(ctx, request, page + 1, want);
                }
                (Ok((_, None)), Some(end)) => ahead.fill(ctx, spec, key, page, position, end),
                // No total yet, or no token: the loop finds out on the next page.
                (Ok((_, None)), None) | (Err(_), _) => {}
            }
        }
        writer.write(Dataset::Backlinks, &rows.backlinks).await?;
        writer
            .write(Dataset::BacklinkRedirects, &rows.redirects)
            .await?;
        counts[0] += rows.backlinks.num_rows() as u64;
        counts[1] += rows.redirects.num_rows() as u64;
        for (name, n) in rows.unknown_fields {
            *outcome.unknown.entry(name).or_default() += n;
        }
        debug!(target = %key.target, page, items = got, position, total = ?expected, "page landed in staging");
        if last {
            break;
        }
    }
    writer.commit().await?;
    outcome.rows = vec![
        (Dataset::Backlinks, counts[0]),
        (Dataset::BacklinkRedirects, counts[1]),
    ];
    let wanted = items_wanted(expected, spec);
    outcome.items = Some(ItemCounts {
        expected: wanted,
        loaded: position,
    });
    info!(target = %key.target, endpoint = "backlinks", expected = ?wanted, loaded = position, "target landed");
    Ok(UnitStatus::Ok)
}

/// Starts the in-process sandbox with throwaway credentials.
async fn start_sandbox(
    settings: &RawSandbox,
) -> anyhow::Result<(backlinks_sandbox::Sandbox, String, Secret)> {
    use std::time::Duration;
    let password = format!("{:032x}", rand::random::<u128>());
    let f = &settings.faults;
    let config = backlinks_sandbox::SandboxConfig {
        seed: settings.seed,
        login: "demo".into(),
        password: password.clone(),
        requests_per_minute: settings.requests_per_minute,
        max_in_flight: settings.max_in_flight,
        latency: Duration::from_millis(settings.latency_ms),
        latency_jitter: Duration::from_millis(settings.latency_jitter_ms),
        faults: backlinks_sandbox::Faults {
            http_500: f.http_500,
            envelope_50000: f.envelope_50000,
            truncated_json: f.truncated_json,
            rate_limit_storm: f.rate_limit_storm,
            slow: f.slow,
            slow_delay: Duration::from_millis(f.slow_delay_ms),
        },
        keep_log: false,
        ..Default::default()
    };
    let sandbox = backlinks_sandbox::Sandbox::start(config, ([127, 0, 0, 1], 0).into())
        .await
        .context("starting the embedded sandbox")?;
    Ok((sandbox, "demo".into(), Secret::new(password)))
}

fn progress_bar(len: u64, disabled: bool) -> Option<indicatif::ProgressBar> {
    if disabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} units ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

fn describe_source(source: &TargetSource) -> String {
    match source {
        TargetSource::Csv(path) => path.display().to_string(),
        TargetSource::Inline(_) => "the inline target list".into(),
    }
}

/// Rows per dataset name, for the run record.
pub type RowCounts = BTreeMap<&'static str, u64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_go_by_offset_up_to_the_limit_then_by_token() {
        assert_eq!(page_start(0, None), Ok((0, None)));
        assert_eq!(page_start(19_000, Some("t19")), Ok((19_000, None)));
        // The last offset the API accepts is still used as an offset ...
        assert_eq!(page_start(20_000, Some("t20")), Ok((20_000, None)));
        // ... and the next page continues from the previous page's token.
        assert_eq!(page_start(20_001, Some("t20")), Ok((0, Some("t20".into()))));
        assert_eq!(page_start(21_000, Some("t21")), Ok((0, Some("t21".into()))));
        let err = page_start(21_000, None).unwrap_err();
        assert!(err.contains("no search_after_token at item 21000"), "{err}");
        assert!(page_start(21_000, Some("")).is_err());
    }

    #[test]
    fn pages_ahead_stay_within_the_offset_range_and_the_target() {
        // After page 0 of a target of 5,500 items: pages 1 to 4, then room
        // runs out.
        assert_eq!(
            offset_pages((1, 1000), 4, 1000, 5500),
            vec![(1, 1000), (2, 2000), (3, 3000), (4, 4000)]
        );
        // The last page starts before the end; none starts at or past it.
        assert_eq!(
            offset_pages((4, 4000), 4, 1000, 5500),
            vec![(4, 4000), (5, 5000)]
        );
        assert_eq!(offset_pages((5, 5000), 4, 1000, 5000), vec![]);
        // 20,000 is the last offset; the page after needs a token.
        assert_eq!(
            offset_pages((19, 19_000), 4, 1000, 1_000_000),
            vec![(19, 19_000), (20, 20_000)]
        );
        assert_eq!(offset_pages((1, 1000), 0, 1000, 1_000_000), vec![]);
        // Other page sizes.
        assert_eq!(
            offset_pages((1, 300), 3, 300, 800),
            vec![(1, 300), (2, 600)]
        );
    }

    #[test]
    fn a_page_asks_for_what_is_left_under_max_items() {
        let spec = |max_items| BacklinksSpec {
            template: BacklinksRequest::default(),
            page_size: 1000,
            max_items,
        };
        assert_eq!(page_limit(&spec(None), 5000), 1000);
        assert_eq!(page_limit(&spec(Some(2500)), 2000), 500);
        assert_eq!(page_limit(&spec(Some(2500)), 2500), 0);
        assert_eq!(page_limit(&spec(Some(2500)), 3000), 0);
    }
}
