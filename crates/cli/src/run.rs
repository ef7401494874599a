//! `backlinks run`, `backlinks replay` and `backlinks validate`: turn the
//! arguments, the pipeline file and the environment into a run of the
//! engine, draw its progress, print its summary and pick the exit code.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use backlinks_model::WorkUnit;
use backlinks_model::ledger::RunStatus;
use backlinks_pipeline::{
    Api, Mode, Observer, Pipeline, PipelineSpec, RawPipeline, RunOptions, RunReport, Shutdown,
    UnitStatus, config, targets,
};
use chrono::Utc;
use tracing::warn;

use crate::{RunArgs, credentials, exit, print_out, summary};

/// Loads and validates a pipeline as every command does: `targets`
/// replaces its list, `DATAFORSEO_BASE_URL` its base URL.
pub(crate) fn load_spec(
    path: &Path,
    targets: Option<&Path>,
    strict: bool,
) -> anyhow::Result<(RawPipeline, PipelineSpec)> {
    let base_url = credentials::base_url_override();
    Ok(config::load_spec(
        path,
        targets,
        strict,
        base_url.as_deref(),
    )?)
}

/// The pipeline's endpoints, by name.
fn endpoint_names(spec: &PipelineSpec) -> String {
    backlinks_pipeline::endpoints::modules(spec)
        .iter()
        .map(|m| m.endpoint().name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `backlinks validate`: checks the pipeline and its targets, no API call.
/// Its verdict is that of `run` on the same input, and says so: "is valid"
/// with exit code 0, otherwise what is wrong with exit code 2 (rejected
/// targets, which `run` skips, count as wrong here so a bad row is fixed
/// before the night; no valid target at all is the error `run` gives).
pub async fn validate(path: &Path, explain: bool, targets: Option<&Path>) -> anyhow::Result<u8> {
    let (raw, spec) = load_spec(path, targets, false)?;
    let list = targets::load(&spec).await?;
    let no_targets = targets::require_some(&list, &spec.targets).err();
    let counts = format!(
        "{} targets ({} rejected, {} duplicates), endpoints: {}",
        list.targets.len(),
        list.rejected.len(),
        list.duplicates,
        endpoint_names(&spec)
    );
    let mut out = if no_targets.is_some() {
        format!("pipeline `{}` is not valid: {counts}\n", spec.name)
    } else if list.rejected.is_empty() {
        format!("pipeline `{}` is valid: {counts}\n", spec.name)
    } else {
        format!(
            "pipeline `{}` is not valid: {counts}; fix or remove the rejected targets (`run` skips them, `run --strict` stops at the first)\n",
            spec.name
        )
    };
    for rejected in &list.rejected {
        let _ = writeln!(out, "  rejected {rejected}");
    }
    for warning in &spec.warnings {
        let _ = writeln!(out, "  warning: {warning}");
    }
    if explain {
        let _ = writeln!(out, "\n# effective settings (defaults included)");
        out.push_str(&toml::to_string_pretty(&raw).context("printing the settings")?);
        let _ = writeln!(
            out,
            "# api.base_url after DATAFORSEO_BASE_URL: {}",
            spec.base_url
        );
        let _ = writeln!(
            out,
            "# state.dir (raw archive, run manifests and failed units; BACKLINKS__STATE__DIR overrides it): {}",
            spec.state_dir.display()
        );
        let _ = writeln!(
            out,
            "# budget: {} (pricing is used for estimates only; recorded costs come from the API)",
            spec.max_cost_usd
                .map_or("no spend cap".to_owned(), |cap| format!(
                    "spend cap ${cap:.5} per run"
                ))
        );
    }
    print_out(&out)?;
    if let Some(e) = no_targets {
        return Err(e.into());
    }
    Ok(if list.rejected.is_empty() {
        exit::OK
    } else {
        exit::BAD_INPUT
    })
}

/// How a command asks the engine for answers.
pub enum Source {
    /// `backlinks run`.
    Fetch {
        refetch: bool,
        retry_failed: bool,
        max_cost: Option<f64>,
    },
    /// `backlinks replay`.
    Replay { run_id: Option<String> },
}

/// `backlinks run` and `backlinks replay`.
pub async fn execute(args: RunArgs, source: Source) -> anyhow::Result<u8> {
    let (raw, spec) = load_spec(&args.pipeline, args.targets.as_deref(), args.strict)?;
    for warning in &spec.warnings {
        warn!("{warning}");
    }
    let today = Utc::now().date_naive();
    let snapshot_date = args.as_of.unwrap_or(today);
    if snapshot_date > today {
        warn!(
            as_of = %snapshot_date,
            today = %today,
            "--as-of is in the future (today is {today} UTC): the rows will carry a snapshot date that has not come yet"
        );
    }
    // Bad targets are reported before anything else is asked for.
    let list = targets::load(&spec).await?;
    targets::require_some(&list, &spec.targets)?;
    let database_url = match &spec.postgres {
        Some(_) => Some(credentials::database_url()?),
        None => None,
    };
    // The embedded sandbox lives as long as the run.
    let mut sandbox = None;
    let mode = match source {
        Source::Replay { run_id } => Mode::Replay { run_id },
        Source::Fetch {
            refetch,
            retry_failed,
            max_cost,
        } => {
            let api = match &spec.sandbox {
                Some(settings) => {
                    let (embedded, api) = crate::sandbox::start(settings).await?;
                    sandbox = Some(embedded);
                    api
                }
                None => {
                    let (login, password) = credentials::api_credentials()?;
                    Api {
                        base_url: spec.base_url.clone(),
                        login,
                        password,
                        label: spec.base_url.clone(),
                    }
                }
            };
            Mode::Fetch {
                api,
                refetch,
                retry_failed,
                max_cost,
            }
        }
    };
    // The settings recorded with the run say what it really called: the
    // base URL after DATAFORSEO_BASE_URL (or the embedded sandbox's).
    let mut settings = serde_json::to_value(&raw).context("recording the settings")?;
    if let (Mode::Fetch { api, .. }, Some(recorded)) =
        (&mode, settings.pointer_mut("/api/base_url"))
    {
        *recorded = serde_json::Value::String(api.base_url.clone());
    }
    let options = RunOptions {
        snapshot_date,
        mode,
        database_url,
        settings,
        cpu: None,
        targets: Some(list),
        defer_indexes: args.defer_indexes,
    };
    let shutdown = Shutdown::default();
    let signals = tokio::spawn(watch_signals(shutdown.clone(), spec.shutdown_grace));
    let progress = Progress::new(args.no_progress);
    let report = Pipeline::new(spec, options, shutdown)
        .wait_for_lock(args.wait)
        .run(&progress)
        .await;
    progress.finish();
    signals.abort();
    if let Some(sandbox) = sandbox {
        crate::sandbox::stop(sandbox).await;
    }
    let report = report?;
    print_out(&summary::render(&report))?;
    Ok(exit_code(&report))
}

/// The exit code of a run, and what to do about it on stderr.
fn exit_code(report: &RunReport) -> u8 {
    if let Some(problem) = &report.account_problem {
        eprintln!(
            "error: {problem}; the run stopped (exit code {})",
            exit::ACCOUNT
        );
    } else if let Some(problem) = &report.budget_problem {
        eprintln!(
            "error: {problem}; what was fetched landed; raise the cap (--max-cost or budget.max_cost_usd) and run the same command again to continue (exit code {})",
            exit::BUDGET
        );
    }
    if report.status == RunStatus::Interrupted {
        eprintln!(
            "error: the run was interrupted{}; run the same command again to resume it",
            if report.abandoned {
                " and the units in flight were abandoned"
            } else {
                ""
            }
        );
    }
    for e in [
        &report.ledger_error,
        &report.archive_error,
        &report.index_error,
    ]
    .into_iter()
    .flatten()
    {
        eprintln!("error: {e}");
    }
    match report.status {
        RunStatus::Succeeded => exit::OK,
        RunStatus::AccountError => exit::ACCOUNT,
        RunStatus::BudgetExhausted => exit::BUDGET,
        RunStatus::Running
        | RunStatus::Partial
        | RunStatus::Failed
        | RunStatus::Interrupted
        | RunStatus::Crashed => exit::PARTIAL,
    }
}

/// The progress bar, on a terminal only.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(disabled: bool) -> Self {
        let bar = (!disabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::hidden();
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} units ({per_sec}, eta {eta})",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Self { bar }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn started(&self, units: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(units);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
    }

    fn unit_done(&self, _unit: &WorkUnit, _status: &UnitStatus) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
}

/// Signals: the first stops dispatching and starts the grace period; the
/// second, or the end of the grace period, abandons what is in flight.
async fn watch_signals(shutdown: Shutdown, grace: Duration) {
    let mut signals = Signals::new();
    signals.next().await;
    warn!(
        grace_secs = grace.as_secs(),
        "stopping: no new requests; those in flight finish and land (a second signal abandons them)"
    );
    shutdown.stop.cancel();
    tokio::select! {
        () = signals.next() => warn!("second signal: abandoning what is in flight"),
        () = tokio::time::sleep(grace) => warn!("grace period over: abandoning what is in flight"),
    }
    shutdown.abandon.cancel();
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
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.terminate) => {},
                () = recv(&mut self.interrupt) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
