//! Replay of a raw archive of a million backlinks: the run engine as a
//! library (`Pipeline::run` with `Mode::Replay`) and the `backlinks replay`
//! binary, on every core and pinned to one (`taskset -c 0`).
//!
//! The archive is built once by the engine against an in-process sandbox
//! (ten targets of about 100,000 items, Parquet only) and kept in the
//! suite's work directory ([`crate::work_dir`]); every replay reads it
//! through a fresh state directory whose `archive` links to it and writes
//! into a fresh Parquet directory next to it, so runs never see each
//! other's output. A replay never touches the network: what it measures is
//! reading the archive (zstd), JSON → Arrow and the Parquet write, spread
//! by the engine over its CPU pool.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::e2e::{ChildRun, Load, clean_env, mib, own_cpu_seconds, rows_line};
use crate::library::{BenchPipeline, LibraryRun, dir_bytes, for_each_record, snapshot_date};
use crate::report::{Goal, Section};
use crate::{Error, Result, Size, per_second, thousands};

/// The goal: a replay pinned to one core takes this many times as long as
/// on every core (of a two-core machine).
pub const GOAL_SCALING: f64 = 1.8;

/// Name of the pipeline that archives and replays.
pub const PIPELINE: &str = "bench-replay";

/// The file a finished archive build writes, saying what it holds (a
/// build that died leaves none, and the next run starts over).
const MARKER: &str = "archive.json";

/// What the archive holds, written when its build finished.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ArchiveFacts {
    pub targets: u64,
    pub items: u64,
    /// Archived answers (pages).
    pub answers: u64,
    /// Bytes of the response bodies (JSON).
    pub body_bytes: u64,
    /// Bytes of the archive files (zstd).
    pub archive_bytes: u64,
    /// How long the engine took to fetch it from the sandbox.
    pub fetch_seconds: f64,
}

/// The archive a replay reads.
#[derive(Debug)]
pub struct Archive {
    pub load: Load,
    /// The state directory holding `archive/` (and the build's manifest).
    pub state_dir: PathBuf,
    /// Where replays make their own directories.
    pub scratch: PathBuf,
    pub facts: ArchiveFacts,
    /// Built in this run (not found in the cache).
    pub built_now: bool,
    /// Kept between runs here (`None`: a temporary directory, `--quick`).
    pub cached: Option<PathBuf>,
    _temp: Option<tempfile::TempDir>,
}

impl Archive {
    /// The pipeline that replays the archive into `parquet_dir`, with
    /// `state_dir` as its state directory.
    fn pipeline(&self, state_dir: PathBuf, parquet_dir: PathBuf) -> BenchPipeline {
        BenchPipeline {
            name: PIPELINE.into(),
            targets: self.load.targets(),
            max_items: None,
            state_dir,
            parquet_dir,
        }
    }

    /// The directory of the archived answers (the `*.zst` files).
    pub fn answers_dir(&self) -> PathBuf {
        self.pipeline(self.state_dir.clone(), PathBuf::new())
            .archive_dir()
    }

    /// A fresh directory for one replay: `state/archive` links to the
    /// archive, `data/` is empty. Removed when dropped.
    fn replay_dir(&self) -> Result<(tempfile::TempDir, BenchPipeline)> {
        let dir = tempfile::Builder::new()
            .prefix("replay-")
            .tempdir_in(&self.scratch)
            .map_err(|source| Error::Io {
                action: "creating a directory in",
                path: self.scratch.clone(),
                source,
            })?;
        let state = dir.path().join("state");
        std::fs::create_dir(&state).map_err(|source| Error::Io {
            action: "creating",
            path: state.clone(),
            source,
        })?;
        link(&self.state_dir.join("archive"), &state.join("archive"))?;
        let pipeline = self.pipeline(state, dir.path().join("data"));
        Ok((dir, pipeline))
    }
}

#[cfg(unix)]
fn link(original: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(original, link).map_err(|source| Error::Io {
        action: "linking the archive at",
        path: link.to_path_buf(),
        source,
    })
}

#[cfg(not(unix))]
fn link(_original: &Path, link: &Path) -> Result<()> {
    Err(Error::Io {
        action: "linking the archive at",
        path: link.to_path_buf(),
        source: std::io::Error::other("symbolic links are only used on Unix"),
    })
}

/// The targets of the archive: ten of about 100,000 items (1,000,045 in
/// all), so that the engine has units to spread over the cores; three
/// small ones with `--quick`.
pub fn load(size: Size) -> Load {
    match size {
        Size::Quick => Load {
            targets: 3,
            items: 2_000,
        },
        Size::Full => Load {
            targets: 10,
            items: 100_000,
        },
    }
}

/// Replays of each kind (the best is reported).
fn runs(size: Size) -> usize {
    match size {
        Size::Quick => 1,
        Size::Full => 2,
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// The archive of `load`: from the cache in the work directory when a
/// build finished there before, else fetched now by the engine (and, for
/// `Full`, kept). `--quick` builds into a temporary directory.
pub async fn archive(size: Size) -> Result<Archive> {
    let load = load(size);
    let (root, temp, cached) = match size {
        Size::Quick => {
            let temp = tempfile::tempdir()
                .map_err(io("creating a temporary directory", &std::env::temp_dir()))?;
            (temp.path().to_path_buf(), Some(temp), None)
        }
        Size::Full => {
            let root = crate::work_dir().join(format!(
                "replay-archive-{}x{}-seed42",
                load.targets, load.items
            ));
            (root.clone(), None, Some(root))
        }
    };
    let state_dir = root.join("state");
    let scratch = root.join("scratch");
    let facts = std::fs::read(root.join(MARKER))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<ArchiveFacts>(&bytes).ok())
        .filter(|f| f.targets == load.targets && f.items == load.total_items());
    let built_now = facts.is_none();
    let facts = match facts {
        Some(facts) => {
            eprintln!(
                "replay: archive of {} items found in {}",
                thousands(facts.items as f64),
                root.display()
            );
            facts
        }
        None => build(load, &root, &state_dir).await?,
    };
    // Leftovers of replays that died.
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(io("creating", &scratch))?;
    Ok(Archive {
        load,
        state_dir,
        scratch,
        facts,
        built_now,
        cached,
        _temp: temp,
    })
}

/// Fetches `load` into a raw archive under `root/state` with the engine.
async fn build(load: Load, root: &Path, state_dir: &Path) -> Result<ArchiveFacts> {
    eprintln!(
        "replay: building the raw archive of {} items in {} (once) ...",
        load.describe(),
        root.display()
    );
    if root.exists() {
        std::fs::remove_dir_all(root).map_err(io("removing", root))?;
    }
    std::fs::create_dir_all(root).map_err(io("creating", root))?;
    let pipeline = BenchPipeline {
        name: PIPELINE.into(),
        targets: load.targets(),
        max_items: None,
        state_dir: state_dir.to_path_buf(),
        parquet_dir: root.join("fetched"),
    };
    let run = crate::library::fetch(&pipeline).await?;
    let _ = std::fs::remove_dir_all(&pipeline.parquet_dir);
    if run.backlinks_rows() != load.total_items() {
        return Err(Error::Child {
            program: "backlinks-pipeline".into(),
            message: format!(
                "the archive run loaded {} backlinks, not the {} of {}",
                run.backlinks_rows(),
                load.total_items(),
                load.describe()
            ),
        });
    }
    let dir = pipeline.archive_dir();
    let (answers, body_bytes) = tokio::task::spawn_blocking(move || {
        let mut body_bytes = 0;
        let answers = for_each_record(&dir, |r| {
            body_bytes += r.body.len() as u64;
            Ok(())
        })?;
        Ok::<_, Error>((answers, body_bytes))
    })
    .await
    .map_err(|e| Error::Child {
        program: "raw archive".into(),
        message: e.to_string(),
    })??;
    let facts = ArchiveFacts {
        targets: load.targets,
        items: load.total_items(),
        answers,
        body_bytes,
        archive_bytes: dir_bytes(&pipeline.archive_dir()),
        fetch_seconds: run.seconds,
    };
    let marker = root.join(MARKER);
    let text = serde_json::to_vec_pretty(&facts).unwrap_or_default();
    std::fs::write(&marker, text).map_err(io("writing", &marker))?;
    eprintln!(
        "replay: archived {} answers ({:.0} MB of JSON, {:.0} MB of zstd) in {:.1} s",
        answers,
        body_bytes as f64 / 1e6,
        facts.archive_bytes as f64 / 1e6,
        run.seconds
    );
    Ok(facts)
}

/// One replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    pub seconds: f64,
    /// `backlinks` and `backlink_redirects` rows.
    pub rows: u64,
    pub redirects: u64,
    /// Bytes of the Parquet files of `backlinks`.
    pub parquet_bytes: u64,
    /// The child's peak resident memory (binary runs only).
    pub peak_rss: Option<u64>,
    /// CPU time used, user + system of every thread (for the library, of
    /// this whole process while it ran), seconds.
    pub cpu_seconds: Option<f64>,
}

impl Replayed {
    pub fn rows_per_second(&self) -> f64 {
        per_second(self.rows as f64, self.seconds)
    }
}

/// Replays of one kind, or why there are none.
pub type Series = std::result::Result<Vec<Replayed>, String>;

/// The fastest replay of a series.
pub fn best(series: &Series) -> Option<&Replayed> {
    series
        .as_ref()
        .ok()?
        .iter()
        .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
}

/// Everything the replay benchmark measured.
#[derive(Debug, Clone)]
pub struct ReplayFigures {
    pub load: Load,
    pub facts: ArchiveFacts,
    pub built_now: bool,
    pub cached: Option<PathBuf>,
    pub cores: usize,
    /// `Pipeline::run` in this process, every core.
    pub library: Series,
    /// `backlinks replay`, every core, then `taskset -c 0`.
    pub binary_all: Series,
    pub binary_one: Series,
}

impl ReplayFigures {
    /// One core ÷ every core, best against best, for the binary.
    pub fn scaling(&self) -> Option<f64> {
        let all = best(&self.binary_all)?;
        let one = best(&self.binary_one)?;
        (all.seconds > 0.0).then(|| one.seconds / all.seconds)
    }
}

/// One replay by the library.
async fn library_replay(archive: &Archive) -> Result<Replayed> {
    let (dir, pipeline) = archive.replay_dir()?;
    let cpu_before = own_cpu_seconds();
    let run: LibraryRun = crate::library::replay(&pipeline).await?;
    let cpu_seconds = own_cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let replayed = Replayed {
        cpu_seconds,
        seconds: run.seconds,
        rows: run.backlinks_rows(),
        redirects: run.redirect_rows(),
        parquet_bytes: dir_bytes(&pipeline.parquet_dir.join("backlinks")),
        peak_rss: None,
    };
    drop(dir);
    Ok(replayed)
}

/// Whether `taskset` runs here (util-linux).
pub fn taskset_works() -> std::result::Result<(), String> {
    match Command::new("taskset").args(["-c", "0", "true"]).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`taskset -c 0 true` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!(
            "`taskset` cannot be run ({e}); it comes with util-linux"
        )),
    }
}

/// One replay by the binary (blocking); `one_core` runs it under
/// `taskset -c 0`.
fn binary_replay(binary: &Path, archive: &Archive, one_core: bool) -> Result<Replayed> {
    let (dir, pipeline) = archive.replay_dir()?;
    let file = dir.path().join("bench-replay.toml");
    pipeline.write(&file)?;
    let mut command = if one_core {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(binary);
        c
    } else {
        Command::new(binary)
    };
    command
        .arg("replay")
        .arg(&file)
        .arg("--as-of")
        .arg(snapshot_date().to_string())
        .arg("--no-progress")
        .current_dir(dir.path());
    clean_env(&mut command);
    let child: ChildRun = crate::e2e::measure(command, dir.path(), binary)?;
    if child.exit_code != 0 {
        return Err(Error::Child {
            program: binary.display().to_string(),
            message: format!(
                "replay exited with {}:\n{}",
                child.exit_code,
                child.tail(15)
            ),
        });
    }
    let (rows, redirects) = rows_line(&child.output).unwrap_or((0, 0));
    Ok(Replayed {
        seconds: child.seconds,
        rows,
        redirects,
        parquet_bytes: dir_bytes(&pipeline.parquet_dir.join("backlinks")),
        peak_rss: child.peak_rss,
        cpu_seconds: child.cpu_seconds,
    })
}

/// Binary replays of one kind (blocking).
fn binary_series(
    binary: &Path,
    archive: &Archive,
    one_core: bool,
    count: usize,
) -> Result<Vec<Replayed>> {
    (0..count)
        .map(|i| {
            let r = binary_replay(binary, archive, one_core)?;
            eprintln!(
                "replay:   binary{} run {}: {:.2} s, {} rows/s",
                if one_core { " on one core" } else { "" },
                i + 1,
                r.seconds,
                thousands(r.rows_per_second())
            );
            Ok(r)
        })
        .collect()
}

/// Times the replays of `archive` (built again first if it was kept by
/// a version that cannot replay it).
pub async fn measure(size: Size, archive: &mut Archive) -> Result<ReplayFigures> {
    let count = runs(size);
    let expected = archive.load.total_items();
    let check = |kind: &str, r: &Replayed| -> Result<()> {
        if r.rows == expected {
            Ok(())
        } else {
            Err(Error::Child {
                program: kind.into(),
                message: format!("replayed {} backlinks, not {expected}", r.rows),
            })
        }
    };
    let mut library = Vec::new();
    for i in 0..count {
        let r = match library_replay(archive).await {
            // An archive kept by an earlier version that this one cannot
            // replay (another record format, other request keys) is built
            // again, once.
            Err(e) if i == 0 && !archive.built_now && archive.cached.is_some() => {
                eprintln!("replay: the kept archive does not replay ({e}); building it again");
                let root = archive
                    .state_dir
                    .parent()
                    .unwrap_or(&archive.scratch)
                    .to_path_buf();
                archive.facts = build(archive.load, &root, &archive.state_dir).await?;
                archive.built_now = true;
                std::fs::create_dir_all(&archive.scratch)
                    .map_err(io("creating", &archive.scratch))?;
                library_replay(archive).await?
            }
            other => other?,
        };
        check("library replay", &r)?;
        eprintln!(
            "replay:   library run {}: {:.2} s, {} rows/s",
            i + 1,
            r.seconds,
            thousands(r.rows_per_second())
        );
        library.push(r);
    }
    let (binary_all, binary_one) = match crate::e2e::binary() {
        None => {
            let why = "the `backlinks` binary is not built next to `backlinks-bench` \
                       (`cargo build --release -p backlinks-cli` first)"
                .to_owned();
            eprintln!("replay: binary skipped: {why}");
            (Err(why.clone()), Err(why))
        }
        Some(binary) => {
            let all = {
                let result = binary_series(&binary, archive, false, count);
                result.and_then(|runs| {
                    runs.iter()
                        .try_for_each(|r| check("backlinks replay", r))
                        .map(|()| runs)
                })?
            };
            let one = match taskset_works() {
                Err(why) => {
                    eprintln!("replay: one core skipped: {why}");
                    Err(why)
                }
                Ok(()) => {
                    let runs = binary_series(&binary, archive, true, count)?;
                    runs.iter()
                        .try_for_each(|r| check("backlinks replay on one core", r))?;
                    Ok(runs)
                }
            };
            (Ok(all), one)
        }
    };
    Ok(ReplayFigures {
        load: archive.load,
        facts: archive.facts,
        built_now: archive.built_now,
        cached: archive.cached.clone(),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        library: Ok(library),
        binary_all,
        binary_one,
    })
}

/// Renders the replay section.
pub fn section(size: Size, f: &ReplayFigures) -> Section {
    let command = format!(
        "cargo build --release -p backlinks-cli && cargo run --release -p backlinks-bench -- replay{}",
        size.flag()
    );
    let facts = &f.facts;
    let mb = |b: u64| b as f64 / 1e6;
    let cache = match (&f.cached, f.built_now) {
        (Some(_), true) => format!(
            "built by this run in {:.1} s and kept in the suite's work directory \
             (`BACKLINKS_BENCH_WORK`, default `backlinks-bench-work` in the Cargo target \
             directory; delete `replay-archive-*` there to build it again)",
            facts.fetch_seconds
        ),
        (Some(_), false) => "built by an earlier run and kept in the suite's work directory \
             (`BACKLINKS_BENCH_WORK`, default `backlinks-bench-work` in the Cargo target \
             directory; delete `replay-archive-*` there to build it again)"
            .to_owned(),
        (None, _) => "built in a temporary directory (`--quick`)".to_owned(),
    };
    let mut body = format!(
        "A raw archive of {} targets `items{}.example.com` … `items{}.example.com` ({} backlinks \
         in {} answers of up to 1000 items: {:.0} MB of JSON bodies, {:.0} MB of zstd archive), \
         fetched once by the run engine (`backlinks_pipeline::Pipeline`, `Mode::Fetch`) from an \
         in-process sandbox with a Parquet-only pipeline; {cache}. Each replay reads it with no \
         network (`Mode::Replay`) into a fresh Parquet directory (rows of `backlinks` and \
         `backlink_redirects`, the run's ledger and run files), through a fresh state directory \
         whose `archive` links to it. **Library**: `Pipeline::run` in this process, timed from \
         the call to its return, CPU work on the engine's pool of one job per core. **Binary**: \
         `backlinks replay <pipeline> --as-of {}` timed from spawn to exit (process start, index \
         of the archive, every write and fsync), on every core and under `taskset -c 0`. {}; {} \
         cores here.\n\n\
         CPU time is user + system of every thread (of this process for the library, \
         `/proc/<pid>/stat` of the child, read every 20 ms, for the binary), for the best run: \
         unlike wall time, other work on the machine hardly moves it.\n\n\
         | replay by | cores | each run | best | CPU time | backlinks rows/s | redirect rows | `backlinks` Parquet | peak RSS |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        f.load.targets,
        f.load.items,
        f.load.items + f.load.targets - 1,
        thousands(facts.items as f64),
        thousands(facts.answers as f64),
        mb(facts.body_bytes),
        mb(facts.archive_bytes),
        snapshot_date(),
        match f.library.as_ref().map_or(0, Vec::len) {
            0 | 1 => "One run each".to_owned(),
            n => format!("Best of {n} runs each"),
        },
        f.cores,
    );
    let mut line = |what: &str, cores: &str, series: &Series| match series {
        Ok(runs) => {
            if let Some(b) = best(series) {
                let times: Vec<String> =
                    runs.iter().map(|r| format!("{:.2} s", r.seconds)).collect();
                let _ = writeln!(
                    body,
                    "| {what} | {cores} | {} | {:.2} s | {} | {} | {} | {:.1} MB | {} |",
                    times.join(", "),
                    b.seconds,
                    b.cpu_seconds.map_or("–".into(), |c| format!("{c:.1} s")),
                    thousands(b.rows_per_second()),
                    thousands(b.redirects as f64),
                    mb(b.parquet_bytes),
                    b.peak_rss.map_or("–".into(), mib),
                );
            }
        }
        Err(why) => {
            let _ = writeln!(
                body,
                "| {what} | {cores} | not measured: {why} | | | | | | |"
            );
        }
    };
    let all = format!("all ({})", f.cores);
    line("library (`Pipeline::run`)", &all, &f.library);
    line("binary (`backlinks replay`)", &all, &f.binary_all);
    line("binary, `taskset -c 0`", "1", &f.binary_one);
    let scaling = f.scaling();
    match scaling {
        Some(s) => {
            let _ = writeln!(
                body,
                "\nOne core ÷ every core (binary, best against best): **{s:.2}×** (goal ≥ {GOAL_SCALING}×{}).",
                if f.cores == 2 {
                    String::new()
                } else {
                    format!("; the goal assumes 2 cores, this machine has {}", f.cores)
                }
            );
        }
        None => {
            let _ = writeln!(
                body,
                "\nOne core ÷ every core: not measured (see the table)."
            );
        }
    }
    let mut section = Section::new("Replay: the engine on every core", command, body);
    section.goals.push(Goal {
        what: "replay of 1M items, one core ÷ every core (binary)".into(),
        goal: format!("≥ {GOAL_SCALING}×"),
        measured: scaling.map_or("not measured".into(), |s| format!("{s:.2}×")),
        met: scaling.map(|s| s >= GOAL_SCALING),
    });
    section
}
