//! `backlinks run` and `backlinks validate`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use backlinks_fetcher::{Fetcher, FetcherConfig};
use backlinks_model::api::{BacklinksRequest, SummaryRequest};
use backlinks_model::{Dataset, Endpoint, PartitionKey, RunRecord, Secret, WorkUnit};
use backlinks_normalizer::{RowContext, UnknownFields, backlinks_page_rows, summary_rows};
use backlinks_scheduler::{TargetList, TargetSource, read_targets, work_units};
use chrono::{NaiveDate, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{self, BacklinksSpec, PipelineSpec, RawPipeline, RawSandbox};
use crate::report::{ItemCounts, Report, UnitStatus};
use crate::sinks::{Ledger, Sinks};
use crate::{InputError, RunArgs, credentials, exit};

/// How many rejected targets are logged one by one before only counting.
const REJECTED_LOGGED: usize = 20;

/// Loads, overrides and validates a pipeline; every problem is an
/// [`InputError`] naming the file and key.
fn load_spec(
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

async fn load_targets(spec: &PipelineSpec) -> anyhow::Result<TargetList> {
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

fn endpoints(spec: &PipelineSpec) -> Vec<Endpoint> {
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
    fetcher: Fetcher,
    sinks: Sinks,
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

/// `backlinks run`.
pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
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

    let cancel = CancellationToken::new();
    let (sandbox, base_url, login, password) = match &spec.sandbox {
        Some(settings) => {
            let (sandbox, login, password) = start_sandbox(settings).await?;
            let url = sandbox.base_url();
            (Some(sandbox), url, login, password)
        }
        None => {
            let (login, password) = credentials::api_credentials()?;
            (None, spec.base_url.clone(), login, password)
        }
    };
    let sinks = Sinks::open(&spec).await?;
    let fetcher = Fetcher::new(
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

    let run_id = uuid::Uuid::now_v7().to_string();
    let units: Vec<WorkUnit> = work_units(&list.targets, &endpoints(&spec)).collect();
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
    };
    sinks.record_run(&record).await?;
    info!(
        run_id,
        pipeline = %spec.name,
        %snapshot_date,
        targets = list.targets.len(),
        units = units.len(),
        api = if sandbox.is_some() { "embedded sandbox" } else { spec.base_url.as_str() },
        "run started"
    );
    let signals = tokio::spawn(stop_on_signal(cancel.clone()));

    let ctx = Arc::new(RunContext {
        pipeline: spec.name.clone(),
        snapshot_date,
        summary: spec.summary.clone(),
        backlinks: spec.backlinks.clone(),
        fetcher,
        sinks: sinks.clone(),
    });
    let ledger = Ledger::start(
        sinks.clone(),
        run_id.clone(),
        spec.name.clone(),
        snapshot_date,
    );
    let progress = progress_bar(units.len() as u64, args.no_progress);
    let mut report = Report::new(
        run_id.clone(),
        spec.name.to_string(),
        snapshot_date,
        &list,
        &endpoints(&spec),
    );
    // More units than request slots are in progress at once, so that
    // normalizing and landing one never leaves a request slot idle.
    let concurrency = spec.max_in_flight as usize * 2;
    let mut outcomes = futures::stream::iter(units)
        .map(|unit| process(ctx.clone(), unit))
        .buffer_unordered(concurrency);
    while let Some(outcome) = outcomes.next().await {
        for request in outcome.records {
            report.cost_usd += request.cost;
            ledger.record(request).await;
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
    drop(outcomes);
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    signals.abort();

    let ledger_result = ledger.finish().await;
    let stats = ctx.fetcher.stats();
    report.requests = stats.attempts;
    report.retries = stats.retries;
    report.rate_limited = stats.rate_limited;
    report.too_many_in_flight = stats.too_many_in_flight;
    report.duration = clock.elapsed();
    report.parquet_dir = spec.parquet_dir.clone();
    report.postgres = spec.postgres.is_some();

    let account_problem = ctx.fetcher.account_problem().map(ToString::to_string);
    let (status, code) = if account_problem.is_some() {
        ("account_error", exit::ACCOUNT)
    } else if cancel.is_cancelled() {
        ("interrupted", exit::PARTIAL)
    } else if report.units_failed > 0 && report.units_ok == 0 {
        ("failed", exit::PARTIAL)
    } else if report.units_failed > 0 || ledger_result.is_err() {
        ("partial", exit::PARTIAL)
    } else {
        ("succeeded", exit::OK)
    };
    let ledger_error = ledger_result.as_ref().err().map(|e| format!("{e:#}"));
    record.finished_at = Some(Utc::now());
    record.status = status.into();
    record.units_ok = report.units_ok as i64;
    record.units_failed = report.units_failed as i64;
    record.requests = report.requests as i64;
    record.retries = report.retries as i64;
    record.cost_usd = report.cost_usd;
    record.rows = serde_json::to_string(&report.rows_by_name())?;
    record.unknown_fields = serde_json::to_string(&report.unknown)?;
    record.error = account_problem.clone().or(ledger_error.clone());
    sinks.record_run(&record).await?;
    tokio::task::block_in_place(|| sinks.finish_run_file(&record))?;
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
        "run finished"
    );
    print!("{}", report.render());
    if let Some(problem) = account_problem {
        eprintln!(
            "error: {problem}; the run stopped (exit code {})",
            exit::ACCOUNT
        );
    }
    if let Some(e) = ledger_error {
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
    if record.attempts > 0 {
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
        .post(Endpoint::Summary, key.target.as_str(), 0, &request)
        .await;
    keep_record(outcome, exchange.record);
    let fetched = match exchange.result {
        Err(backlinks_fetcher::Error::Cancelled) => return UnitStatus::NotRun,
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

/// backlinks/live: every page of one target into one partition, streamed.
/// The pages land together on commit; a page that fails permanently
/// abandons the partition and the previous data of the target stays.
async fn backlinks_unit(
    ctx: &RunContext,
    spec: &BacklinksSpec,
    key: &PartitionKey,
    outcome: &mut UnitOutcome,
) -> anyhow::Result<UnitStatus> {
    let datasets = [Dataset::Backlinks, Dataset::BacklinkRedirects];
    let mut writer = ctx.sinks.begin(key, &datasets).await?;
    let mut position: u64 = 0;
    let mut token: Option<String> = None;
    let mut expected: Option<u64> = None;
    let mut counts = [0u64; 2];
    for page in 0i64.. {
        let want = match spec.max_items {
            Some(cap) => u64::from(spec.page_size).min(cap.saturating_sub(position)),
            None => u64::from(spec.page_size),
        };
        if want == 0 {
            break;
        }
        let (offset, search_after_token) = match page_start(position, token.as_deref()) {
            Ok(start) => start,
            Err(problem) => return Ok(UnitStatus::Failed(problem)),
        };
        let request = BacklinksRequest {
            target: key.target.to_string(),
            offset: Some(offset),
            limit: Some(u32::try_from(want).unwrap_or(spec.page_size)),
            search_after_token,
            ..spec.template.clone()
        };
        let exchange = ctx
            .fetcher
            .post(Endpoint::Backlinks, key.target.as_str(), page, &request)
            .await;
        keep_record(outcome, exchange.record);
        let fetched = match exchange.result {
            Err(backlinks_fetcher::Error::Cancelled) => return Ok(UnitStatus::NotRun),
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
        writer.write(Dataset::Backlinks, &rows.backlinks).await?;
        writer
            .write(Dataset::BacklinkRedirects, &rows.redirects)
            .await?;
        counts[0] += rows.backlinks.num_rows() as u64;
        counts[1] += rows.redirects.num_rows() as u64;
        for (name, n) in rows.unknown_fields {
            *outcome.unknown.entry(name).or_default() += n;
        }
        if let Some(total) = rows.total_count {
            expected = Some(u64::try_from(total).unwrap_or(0));
        }
        let got = rows.items_count as u64;
        position += got;
        token = rows.search_after_token;
        debug!(target = %key.target, page, items = got, position, total = ?expected, "page landed in staging");
        let short_page = got < want;
        let all_there = expected.is_some_and(|total| position >= total);
        if got == 0 || short_page || all_there {
            break;
        }
    }
    writer.commit().await?;
    outcome.rows = vec![
        (Dataset::Backlinks, counts[0]),
        (Dataset::BacklinkRedirects, counts[1]),
    ];
    let wanted = match (expected, spec.max_items) {
        (Some(total), Some(cap)) => Some(total.min(cap)),
        (total, _) => total,
    };
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

/// Cancels the run on Ctrl-C or SIGTERM: no new requests are sent, those in
/// flight finish and land.
async fn stop_on_signal(cancel: CancellationToken) {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
    warn!("stopping: no new requests; those in flight finish and land");
    cancel.cancel();
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
}
