//! `backlinks-bench`: runs the benchmark suite and prints (or writes) its
//! report. See the library's documentation for what each benchmark does.

use std::path::PathBuf;
use std::process::ExitCode;

use backlinks_bench::machine::Machine;
use backlinks_bench::report::{Section, document};
use backlinks_bench::{Result, Size, duckdb, e2e, fetch, pages, peer, pg_ceiling, replay, stages};
use clap::{Parser, ValueEnum};

/// Benchmarks of the backlinks pipeline: fetch efficiency against the
/// sandbox, the stages per core, dlt as a peer, a replay of a million
/// items on every core and on one, DuckDB as a peer on the same answers,
/// the Postgres load against the server's own COPY, and the binary end to
/// end.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Which benchmarks to run (`all` for every one; `peer` also runs
    /// `stages`, and `duckdb` also runs `replay`, whose figures they are
    /// compared with).
    #[arg(value_enum, required = true)]
    benchmarks: Vec<Bench>,
    /// Tiny sizes, seconds in all: proves the suite works (CI). Writes
    /// nothing unless `--out` is given.
    #[arg(long)]
    quick: bool,
    /// Write the report here. Default for `all` without `--quick`:
    /// `BENCHMARKS.md` of the repository (found above the working
    /// directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A note for the report's header, e.g. that other work shared the
    /// machine.
    #[arg(long)]
    note: Option<String>,
    /// Pages of 1000 items for the stage and peer benchmarks (default 50,
    /// 2 with `--quick`).
    #[arg(long)]
    pages: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Bench {
    All,
    Fetch,
    Stages,
    E2e,
    Peer,
    /// Replay of a raw archive of 1M items: the library, the binary on
    /// every core and on one (the archive is built once and kept in the
    /// work directory, `BACKLINKS_BENCH_WORK`).
    Replay,
    /// DuckDB turning the replay's answers into Parquet.
    Duckdb,
    /// The Postgres load against the server's own `COPY` from a file.
    PgCeiling,
    /// The 40202 storm of `fetch` alone.
    Storm,
}

impl Bench {
    /// The name on the command line.
    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<()> {
    let size = if cli.quick { Size::Quick } else { Size::Full };
    let wants = |b: Bench| cli.benchmarks.contains(&Bench::All) || cli.benchmarks.contains(&b);
    let machine = Machine::detect();
    eprintln!("backlinks-bench on {machine}");
    if machine.profile == "debug" && !cli.quick {
        eprintln!("note: a debug build; the report's figures come from `--release`");
    }
    let mut sections: Vec<Section> = Vec::new();
    let show = |s: Section, all: &mut Vec<Section>| {
        println!("{}", s.markdown());
        all.push(s);
    };

    if wants(Bench::Fetch) {
        show(fetch::section(size).await?, &mut sections);
    }
    if cli.benchmarks.contains(&Bench::Storm) && !wants(Bench::Fetch) {
        let storm = fetch::storm(size).await?;
        println!("{storm:#?}");
    }
    if wants(Bench::Stages) || wants(Bench::Peer) {
        let count = cli.pages.unwrap_or(match size {
            Size::Quick => 2,
            Size::Full => 50,
        });
        eprintln!("stages: fetching {count} pages from the sandbox ...");
        let pages = pages::fetch_pages(count).await?;
        let figures = stages::measure(size, &pages).await?;
        for s in stages::sections(size, &figures) {
            show(s, &mut sections);
        }
        if wants(Bench::Peer) {
            show(peer::section(size, &pages, &figures).await?, &mut sections);
        }
    }
    if wants(Bench::Replay) || wants(Bench::Duckdb) {
        let mut archive = replay::archive(size).await?;
        eprintln!("replay: {} items ...", archive.load.describe());
        let figures = replay::measure(size, &mut archive).await?;
        show(replay::section(size, &figures), &mut sections);
        if wants(Bench::Duckdb) {
            show(
                duckdb::section(size, &archive, &figures).await?,
                &mut sections,
            );
        }
    }
    if wants(Bench::PgCeiling) {
        show(pg_ceiling::section(size).await?, &mut sections);
    }
    if wants(Bench::E2e) {
        show(e2e::section(size).await?, &mut sections);
    }

    let all = cli.benchmarks.contains(&Bench::All);
    let out = match (&cli.out, all && !cli.quick) {
        (Some(path), _) => Some(path.clone()),
        (None, true) => Some(default_report_path()),
        (None, false) => None,
    };
    if let Some(path) = out {
        let previous = std::fs::read_to_string(&path).ok();
        let command = format!(
            "cargo run --release -p backlinks-bench -- {}{}",
            cli.benchmarks
                .iter()
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(" "),
            size.flag()
        );
        let text = document(
            &machine,
            &command,
            cli.note.as_deref(),
            &sections,
            previous.as_deref(),
        );
        std::fs::write(&path, text).map_err(|source| backlinks_bench::Error::Io {
            action: "writing the report",
            path: path.clone(),
            source,
        })?;
        eprintln!("wrote {}", path.display());
    }
    let met = sections
        .iter()
        .flat_map(|s| &s.goals)
        .filter(|g| g.met == Some(true))
        .count();
    let missed = sections
        .iter()
        .flat_map(|s| &s.goals)
        .filter(|g| g.met == Some(false))
        .count();
    let skipped = sections
        .iter()
        .flat_map(|s| &s.goals)
        .filter(|g| g.met.is_none())
        .count();
    println!("bench: {met} goals met, {missed} missed, {skipped} not measured");
    Ok(())
}

/// `BENCHMARKS.md` next to the first `Cargo.toml` with a `[workspace]`
/// above the working directory, or in the working directory.
fn default_report_path() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    cwd.ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
        })
        .unwrap_or(&cwd)
        .join("BENCHMARKS.md")
}
