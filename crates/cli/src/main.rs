//! `backlinks`: the pipeline's binary. It parses the arguments, reads the
//! pipeline file and the environment, drives the engine
//! (`backlinks-pipeline`), draws progress, prints the summary and maps
//! the outcome to an exit code. `anyhow` lives only here.

mod credentials;
mod inspect;
mod run;
mod sandbox;
mod summary;

use std::io::IsTerminal;
#[cfg(feature = "sandbox")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "sandbox")]
use anyhow::Context;
use chrono::NaiveDate;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// jemalloc instead of the system allocator. With glibc's malloc the buffers
/// of one page (about 1.6 MB of JSON and the Arrow and Parquet buffers made
/// from it), allocated and freed on several threads, fragment the heap: the
/// resident set of a single 10M-item target grew by about 7 MiB per million
/// items. jemalloc with the settings below keeps it nearly flat at the same
/// speed (figures in BENCHMARKS.md, "Peak memory").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string pointer jemalloc reads at start-up.
#[cfg(not(target_env = "msvc"))]
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a string literal, immutable for the whole run.
#[cfg(not(target_env = "msvc"))]
#[allow(
    unsafe_code,
    reason = "a static holding a raw pointer must be declared Sync by hand"
)]
unsafe impl Sync for MallocConf {}

/// jemalloc's compiled-in options: a background thread returns freed pages
/// to the system after about a second (`dirty_decay_ms`), instead of the
/// default ten seconds during which they count as resident. Shorter decays
/// measured slower (every page's buffers are faulted in again). The
/// `_RJEM_MALLOC_CONF` environment variable overrides these.
#[cfg(not(target_env = "msvc"))]
#[allow(
    unsafe_code,
    reason = "jemalloc reads its compiled-in options from this exported symbol"
)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// Exit codes (also listed in the README).
pub mod exit {
    pub const OK: u8 = 0;
    /// Some units failed or the run was interrupted; what succeeded landed.
    pub const PARTIAL: u8 = 1;
    /// Bad pipeline file, settings or input.
    pub const BAD_INPUT: u8 = 2;
    /// Authentication, payment or account problem: the run stopped.
    pub const ACCOUNT: u8 = 3;
    /// The spend cap was reached: dispatching stopped, what was fetched landed.
    pub const BUDGET: u8 = 4;
    /// Another run of the same pipeline and snapshot date is going on:
    /// this one did not start (`run --wait` waits for it instead).
    pub const HELD: u8 = 5;
}

/// Writes `text` to stdout and flushes it. A reader that went away
/// (`backlinks status … | head -1`) is not an error: the rest is dropped
/// quietly, as other command-line tools do.
pub fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// An error the user fixes by changing the input: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

#[derive(Parser, Debug)]
#[command(
    name = "backlinks",
    version,
    about = "Load DataForSEO backlink data into Postgres and Parquet, paced to the account's limits",
    long_about = "Load DataForSEO backlink data into Postgres and Parquet.\n\n\
        A pipeline file (TOML) names the targets, the endpoints and their request settings, \
        the API limits and the sinks. Each (pipeline, target, snapshot date) is a partition \
        that a run replaces whole, so re-runs never duplicate rows.\n\n\
        Credentials come from the environment only: DATAFORSEO_LOGIN, DATAFORSEO_PASSWORD \
        (or DATAFORSEO_PASSWORD_FILE), DATABASE_URL. DATAFORSEO_BASE_URL overrides api.base_url. \
        Any setting can be overridden as BACKLINKS__SECTION__KEY, e.g. BACKLINKS__API__REQUESTS_PER_MINUTE=1000.\n\n\
        Every answer is kept in a raw archive under the state directory (state.dir); re-running \
        a run that did not finish resumes it without paying again for what was archived, and \
        `backlinks replay` re-loads archived answers with no network at all.\n\n\
        Exit codes: 0 ok, 1 some units failed or the run was interrupted, 2 bad config or input, \
        3 account problem (auth, balance, daily spending limit, plan, duplicate-task limit, IP whitelist), 4 spend cap reached (budget.max_cost_usd or --max-cost), \
        5 another run holds this pipeline and day (nothing was done; `run --wait` waits for it)."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace) or a tracing filter such
    /// as `info,backlinks_fetcher=debug`. RUST_LOG, when set, wins.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pipeline: fetch every target, land the rows, print a summary.
    Run(RunArgs),
    /// Check a pipeline file and its targets without calling the API.
    Validate {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Print every effective setting, defaults included.
        #[arg(long)]
        explain: bool,
        /// Use this target CSV instead of the pipeline's.
        #[arg(long)]
        targets: Option<PathBuf>,
    },
    /// Re-load archived answers into the sinks without any network call
    /// (after a schema change or a sink outage); needs no API credentials.
    Replay {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Snapshot date to replay (YYYY-MM-DD); default: today (UTC).
        #[arg(long, value_name = "YYYY-MM-DD")]
        as_of: Option<NaiveDate>,
        /// Replay only the answers archived by this run.
        #[arg(long, value_name = "ID")]
        run_id: Option<String>,
        /// Use this target CSV instead of the pipeline's targets.
        #[arg(long, value_name = "FILE")]
        targets: Option<PathBuf>,
        /// Never draw a progress bar.
        #[arg(long)]
        no_progress: bool,
        /// If another run of this pipeline and snapshot date is going on,
        /// wait for it to end instead of refusing at once (exit code 5).
        #[arg(long)]
        wait: bool,
        /// For a large load into Postgres: drop the `backlinks` index on
        /// `domain_from` before the first target and build it once at the end,
        /// instead of keeping it up to date row by row (faster; queries by
        /// referring domain are slow meanwhile). A run that dies before the end
        /// leaves it to the next run to build.
        #[arg(long)]
        defer_indexes: bool,
    },
    /// Show the runs of a pipeline on a snapshot date: status, units, cost,
    /// answers archived, failed units, and whether one needs resuming.
    Status {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Snapshot date (YYYY-MM-DD); default: today (UTC).
        #[arg(long, value_name = "YYYY-MM-DD")]
        as_of: Option<NaiveDate>,
    },
    /// Print the requests and the estimated cost of a run without calling the API.
    Estimate {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Use this target CSV instead of the pipeline's targets.
        #[arg(long, value_name = "FILE")]
        targets: Option<PathBuf>,
    },
    /// Apply the database migrations to DATABASE_URL.
    Migrate {
        /// Give up connecting after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        connect_timeout_secs: u64,
        /// Give up on a migration the server does not finish within this
        /// many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
        statement_timeout_secs: u64,
    },
    /// Serve the local imitation of the API until Ctrl-C.
    #[cfg(feature = "sandbox")]
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Seed of the generated data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Basic-auth login the sandbox accepts.
        #[arg(long, env = "SANDBOX_LOGIN", default_value = "sandbox")]
        login: String,
        /// Basic-auth password the sandbox accepts.
        #[arg(
            long,
            env = "SANDBOX_PASSWORD",
            default_value = "sandbox",
            hide_env_values = true
        )]
        password: String,
        /// Per-minute cap of the imitated account (0 = none).
        #[arg(long, default_value_t = 2000)]
        requests_per_minute: u32,
        /// Latency added to every answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The pipeline file (TOML).
    pub pipeline: PathBuf,
    /// Snapshot date of the rows (YYYY-MM-DD) for backfills; default: today (UTC).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub as_of: Option<NaiveDate>,
    /// Use this target CSV (with a `target` column) instead of the pipeline's targets.
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,
    /// Stop at the first invalid target instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Never draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Ignore the raw archive of earlier unfinished runs of the day and
    /// fetch everything again (pays again).
    #[arg(long)]
    pub refetch: bool,
    /// Run only the units that failed in the latest run of this pipeline
    /// and snapshot date (its dead letters).
    #[arg(long)]
    pub retry_failed: bool,
    /// Spend cap in USD for this run (overrides budget.max_cost_usd; 0 = no cap).
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<f64>,
    /// If another run of this pipeline and snapshot date is going on, wait
    /// for it to end instead of refusing at once (exit code 5).
    #[arg(long)]
    pub wait: bool,
    /// For a large load into Postgres: drop the `backlinks` index on
    /// `domain_from` before the first target and build it once at the end,
    /// instead of keeping it up to date row by row (faster; queries by
    /// referring domain are slow meanwhile). A run that dies before the end
    /// leaves it to the next run to build.
    #[arg(long)]
    pub defer_indexes: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    init_logging(log_format, &cli.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(exit::PARTIAL);
        }
    };
    let outcome = runtime.block_on(dispatch(cli.command));
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            match log_format {
                LogFormat::Json => tracing::error!("{e:#}"),
                LogFormat::Text => eprintln!("error: {e:#}"),
            }
            let kind = e
                .downcast_ref::<backlinks_pipeline::Error>()
                .map(backlinks_pipeline::Error::kind);
            if e.downcast_ref::<InputError>().is_some()
                || kind == Some(backlinks_pipeline::ErrorKind::Input)
            {
                ExitCode::from(exit::BAD_INPUT)
            } else if kind == Some(backlinks_pipeline::ErrorKind::Held) {
                ExitCode::from(exit::HELD)
            } else {
                ExitCode::from(exit::PARTIAL)
            }
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Run(args) => {
            let source = run::Source::Fetch {
                refetch: args.refetch,
                retry_failed: args.retry_failed,
                max_cost: args.max_cost,
            };
            run::execute(args, source).await
        }
        Command::Validate {
            pipeline,
            explain,
            targets,
        } => run::validate(&pipeline, explain, targets.as_deref()).await,
        Command::Replay {
            pipeline,
            as_of,
            run_id,
            targets,
            no_progress,
            wait,
            defer_indexes,
        } => {
            let args = RunArgs {
                pipeline,
                as_of,
                targets,
                strict: false,
                no_progress,
                refetch: false,
                retry_failed: false,
                max_cost: None,
                wait,
                defer_indexes,
            };
            run::execute(args, run::Source::Replay { run_id }).await
        }
        Command::Status { pipeline, as_of } => inspect::status(&pipeline, as_of),
        Command::Estimate { pipeline, targets } => {
            inspect::estimate(&pipeline, targets.as_deref()).await
        }
        Command::Migrate {
            connect_timeout_secs,
            statement_timeout_secs,
        } => {
            let url = credentials::database_url()?;
            let timeouts = backlinks_pipeline::sinks::Timeouts {
                connect: std::time::Duration::from_secs(connect_timeout_secs),
                statement: std::time::Duration::from_secs(statement_timeout_secs),
            };
            let applied = backlinks_pipeline::sinks::migrate(&url, timeouts).await?;
            let mut out = String::new();
            if applied.is_empty() {
                out.push_str("the database is up to date: no migration to apply\n");
            }
            for name in &applied {
                out.push_str(&format!("applied migration {name}\n"));
            }
            print_out(&out)?;
            Ok(exit::OK)
        }
        #[cfg(feature = "sandbox")]
        Command::Sandbox {
            listen,
            seed,
            login,
            password,
            requests_per_minute,
            latency_ms,
        } => {
            let config = backlinks_sandbox::SandboxConfig {
                seed,
                login,
                password,
                requests_per_minute,
                latency: std::time::Duration::from_millis(latency_ms),
                keep_log: false,
                ..Default::default()
            };
            let sandbox = backlinks_sandbox::Sandbox::start(config, listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            print_out(&format!(
                "sandbox listening on {} (Ctrl-C to stop)\n",
                sandbox.base_url()
            ))?;
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
            let stats = sandbox.stats();
            sandbox.shutdown().await;
            print_out(&format!(
                "served {} requests, charged ${:.4}\n",
                stats.requests, stats.cost_charged
            ))?;
            Ok(exit::OK)
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    // Our crates at the requested level; HTTP internals stay at info unless
    // asked for explicitly through RUST_LOG.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| {
            EnvFilter::try_new(format!(
                "{level},hyper=info,hyper_util=info,reqwest=info,h2=info,rustls=info"
            ))
        })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
