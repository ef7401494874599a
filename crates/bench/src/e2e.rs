//! End to end: the real `backlinks` binary on one target of N items (and
//! on many targets at once, which is what memory grows with), with
//! its embedded sandbox at zero latency and no cap, into Parquet and
//! Postgres, timed from start to exit, with its peak resident memory
//! (`VmHWM` of `/proc/<pid>/status`, polled while it runs).

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::pg::Scratch;
use crate::report::{Goal, Section};
use crate::{Error, Result, Size, per_second, thousands};

/// The goal on peak RSS, bytes.
pub const GOAL_PEAK_RSS: u64 = 256 << 20;

/// How often the child's memory is read.
const POLL: Duration = Duration::from_millis(20);

/// The `backlinks` binary next to this one (same profile), if built.
pub fn binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.with_file_name(format!("backlinks{}", std::env::consts::EXE_SUFFIX));
    path.is_file().then_some(path)
}

/// One run of the binary.
#[derive(Debug, Clone, PartialEq)]
pub struct E2eRun {
    /// The targets and their items.
    pub load: Load,
    pub postgres: bool,
    /// Exit code of the binary (0: every unit landed).
    pub exit_code: i32,
    /// From spawn to exit.
    pub seconds: f64,
    /// Largest `VmHWM` seen, bytes (`None` if it could not be read).
    pub peak_rss: Option<u64>,
    /// `backlinks` and `backlink_redirects` rows from the run's summary.
    pub rows: Option<(u64, u64)>,
}

impl E2eRun {
    /// `backlinks` rows per second of wall time.
    pub fn rows_per_second(&self) -> f64 {
        per_second(self.rows.map_or(0, |r| r.0) as f64, self.seconds)
    }
}

/// What one run loads: `targets` targets of about `items` backlinks each
/// (`items<N>.example.com` with N = items, items + 1, …: the sandbox serves
/// exactly N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub targets: u64,
    pub items: u64,
}

impl Load {
    /// The target names, `items<N>.example.com`.
    pub fn targets(self) -> Vec<String> {
        (0..self.targets)
            .map(|i| format!("items{}.example.com", self.items + i))
            .collect()
    }

    /// Backlinks of all targets: N + (N + 1) + ….
    pub fn total_items(self) -> u64 {
        self.targets * self.items + self.targets * self.targets.saturating_sub(1) / 2
    }

    fn target_list(self) -> String {
        self.targets()
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `1,000,000`, or `10 × 100,000` for several targets.
    pub fn describe(self) -> String {
        match self.targets {
            1 => thousands(self.items as f64),
            n => format!("{n} × {}", thousands(self.items as f64)),
        }
    }
}

/// The pipeline file of a run.
fn pipeline(load: Load, postgres: bool) -> String {
    let Load { targets, items } = load;
    let list = load.target_list();
    format!(
        r#"# Written by backlinks-bench: {targets} target(s) of about {items} backlinks,
# embedded sandbox without latency or cap, every page into the sinks.
name = "bench-e2e"

[targets]
list = [{list}]

[endpoints.backlinks]
mode = "as_is"
limit = 1000
max_items = 0

[api]
requests_per_minute = 1000000
max_in_flight = 30

[sinks.parquet]
dir = "data"

[sinks.postgres]
enabled = {postgres}

[sandbox]
seed = 42
requests_per_minute = 0
latency_ms = 0
latency_jitter_ms = 0
"#
    )
}

/// `VmHWM:   123456 kB` of a `/proc/<pid>/status` → bytes.
pub fn vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time of a `/proc/<pid>/stat` line, seconds.
pub fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name is in parentheses and may hold spaces: count the
    // fields after it (state is field 3; utime and stime are 14 and 15).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / TICKS_PER_SECOND)
}

/// CPU time this process has used so far (all threads), seconds.
pub fn own_cpu_seconds() -> Option<f64> {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_seconds(&s))
}

/// `  rows      backlinks 100000, backlink_redirects 16072` → the two
/// counts.
pub fn rows_line(output: &str) -> Option<(u64, u64)> {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with("rows "))?;
    let mut links = None;
    let mut redirects = None;
    for part in line.trim_start().trim_start_matches("rows").split(',') {
        let mut words = part.split_whitespace();
        let (Some(name), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let n = n.parse().ok();
        match name {
            "backlinks" => links = n,
            "backlink_redirects" => redirects = n,
            _ => {}
        }
    }
    Some((links?, redirects.unwrap_or(0)))
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// What a child process did.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildRun {
    /// Exit code (`-1` when a signal ended it).
    pub exit_code: i32,
    /// From spawn to exit.
    pub seconds: f64,
    /// Largest `VmHWM` seen, bytes (`None` if it could not be read).
    pub peak_rss: Option<u64>,
    /// CPU time (user + system, all its threads) at the last look before
    /// it exited, seconds.
    pub cpu_seconds: Option<f64>,
    /// Its stdout and stderr, interleaved.
    pub output: String,
}

impl ChildRun {
    /// The last `lines` lines of the output, for an error message.
    pub fn tail(&self, lines: usize) -> String {
        let tail: Vec<&str> = self.output.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// Takes the pipeline's settings and credentials from the environment
/// away from `command`: the pipeline file alone says what runs.
pub fn clean_env(command: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("BACKLINKS__") || key.starts_with("DATAFORSEO_") {
            command.env_remove(key);
        }
    }
    command.env_remove("DATABASE_URL");
}

/// Spawns `command` with its output going to a file in `dir`, reads its
/// peak resident memory while it runs, and waits for it (blocking).
pub fn measure(mut command: Command, dir: &Path, program: &Path) -> Result<ChildRun> {
    let out_path = dir.join("output.txt");
    let out = File::create(&out_path).map_err(io("creating", &out_path))?;
    let err = out.try_clone().map_err(io("opening", &out_path))?;
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    let start = Instant::now();
    let mut child = command.spawn().map_err(io("starting", program))?;
    let status_file = PathBuf::from(format!("/proc/{}/status", child.id()));
    let stat_file = PathBuf::from(format!("/proc/{}/stat", child.id()));
    let mut peak: Option<u64> = None;
    let mut cpu: Option<f64> = None;
    let status = loop {
        if let Some(hwm) = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| vm_hwm(&s))
        {
            peak = Some(peak.map_or(hwm, |p| p.max(hwm)));
        }
        if let Some(seconds) = std::fs::read_to_string(&stat_file)
            .ok()
            .and_then(|s| cpu_seconds(&s))
        {
            cpu = Some(seconds);
        }
        match child.try_wait().map_err(io("waiting for", program))? {
            Some(status) => break status,
            None => std::thread::sleep(POLL),
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    Ok(ChildRun {
        exit_code: status.code().unwrap_or(-1),
        seconds,
        peak_rss: peak,
        cpu_seconds: cpu,
        output: std::fs::read_to_string(&out_path).unwrap_or_default(),
    })
}

/// Runs the binary once in a fresh directory (blocking).
pub fn run(binary: &Path, load: Load, database: Option<&Scratch>) -> Result<E2eRun> {
    let dir =
        tempfile::tempdir().map_err(io("creating a temporary directory", &std::env::temp_dir()))?;
    let file = dir.path().join("bench-e2e.toml");
    std::fs::write(&file, pipeline(load, database.is_some())).map_err(io("writing", &file))?;
    let mut command = Command::new(binary);
    command.arg("run").arg(&file).current_dir(dir.path());
    clean_env(&mut command);
    if let Some(db) = database {
        command.env("DATABASE_URL", &db.url);
    }
    let child = measure(command, dir.path(), binary)?;
    if child.exit_code != 0 {
        return Err(Error::Child {
            program: binary.display().to_string(),
            message: format!(
                "run of {} items exited with {}:\n{}",
                load.describe(),
                child.exit_code,
                child.tail(15)
            ),
        });
    }
    Ok(E2eRun {
        load,
        postgres: database.is_some(),
        exit_code: child.exit_code,
        seconds: child.seconds,
        peak_rss: child.peak_rss,
        rows: rows_line(&child.output),
    })
}

/// The loads of a run: one target of growing size (the memory goal is on
/// these), then many targets at once.
pub fn loads(size: Size) -> Vec<Load> {
    let one = |items| Load { targets: 1, items };
    match size {
        Size::Quick => vec![
            one(10_000),
            Load {
                targets: 4,
                items: 2_000,
            },
        ],
        Size::Full => vec![
            one(100_000),
            one(1_000_000),
            one(10_000_000),
            Load {
                targets: 100,
                items: 10_000,
            },
        ],
    }
}

/// Runs every size into Parquet and Postgres (Parquet only when Postgres
/// is unreachable) and renders the section.
pub async fn section(size: Size) -> Result<Section> {
    let command = format!(
        "cargo build --release -p backlinks-cli && cargo run --release -p backlinks-bench -- e2e{}",
        size.flag()
    );
    let Some(binary) = binary() else {
        let why = "the `backlinks` binary is not built next to `backlinks-bench` \
                   (build it first with `cargo build -p backlinks-cli` in the same profile, \
                   `--release` for the report)";
        eprintln!("e2e: skipped: {why}");
        let mut section = Section::new("End to end", command, format!("Skipped: {why}.\n"));
        section.goals.push(skipped_goal());
        return Ok(section);
    };
    let mut runs = Vec::new();
    let mut pg_note = None;
    for load in loads(size) {
        let scratch = match Scratch::create().await {
            Ok(s) => Some(s),
            Err(why) => {
                pg_note = Some(why);
                None
            }
        };
        eprintln!(
            "e2e: {} items into Parquet{} ...",
            load.describe(),
            if scratch.is_some() {
                " and Postgres"
            } else {
                ""
            }
        );
        let bin = binary.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let r = run(&bin, load, scratch.as_ref());
            (r, scratch)
        });
        let (result, scratch) = handle.await.map_err(|e| Error::Child {
            program: "backlinks".into(),
            message: e.to_string(),
        })?;
        if let Some(scratch) = scratch {
            scratch.drop_database().await?;
        }
        let r = result?;
        eprintln!(
            "e2e:   {:.1} s, {} rows/s, peak RSS {}",
            r.seconds,
            thousands(r.rows_per_second()),
            r.peak_rss.map_or("?".into(), mib)
        );
        runs.push(r);
    }
    Ok(render(command, &runs, pg_note.as_deref()))
}

/// `123 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1u32 << 20))
}

fn skipped_goal() -> Goal {
    Goal {
        what: "end to end: peak RSS, flat across sizes".into(),
        goal: "≤ 256 MiB".into(),
        measured: "skipped (binary not built)".into(),
        met: None,
    }
}

fn render(command: String, runs: &[E2eRun], pg_note: Option<&str>) -> Section {
    let mut body = String::from(
        "The real `backlinks` binary (`backlinks run`) on a pipeline with one target \
         `items<N>.example.com` (the sandbox serves exactly N backlinks), then with many \
         such targets of N, N + 1, … items (`targets × N`; 100 × 10,000 is about a million \
         items, as in the single target of 1,000,000 but spread over targets), pages of 1000 \
         (by offset to 20,000, then by `search_after_token`, so one page ahead at most), the \
         embedded sandbox with no latency and no cap, `api.requests_per_minute` 1,000,000, \
         into Parquet and Postgres (a scratch database, dropped afterwards). The sandbox \
         generates every page's JSON on the same cores. Time is from start to exit \
         (migrations included); peak RSS is the child's `VmHWM`. The memory goal is on the \
         single-target runs; with many targets, memory grows with the targets written at \
         once (`sinks.parquet.max_open_partitions`, default 8; with Postgres at most \
         `sinks.postgres.max_connections` − 1, default 9).\n\n\
         | items | sinks | wall time | backlinks rows/s | redirect rows | peak RSS |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in runs {
        let _ = writeln!(
            body,
            "| {} | {} | {:.1} s | {} | {} | {} |",
            r.load.describe(),
            if r.postgres {
                "Parquet + Postgres"
            } else {
                "Parquet"
            },
            r.seconds,
            thousands(r.rows_per_second()),
            r.rows.map_or("?".into(), |x| thousands(x.1 as f64)),
            r.peak_rss.map_or("not read".into(), mib)
        );
    }
    if let Some(why) = pg_note {
        let _ = writeln!(body, "\nPostgres was left out: {why}.");
    }
    let mut section = Section::new("End to end and peak memory", command, body);
    let peaks: Vec<u64> = runs
        .iter()
        .filter(|r| r.load.targets == 1)
        .filter_map(|r| r.peak_rss)
        .collect();
    match peaks.iter().max() {
        Some(&max) => {
            let min = peaks.iter().copied().min().unwrap_or(max);
            // Flat: the largest run within a quarter of the smallest.
            let flat = max as f64 <= 1.25 * min as f64;
            section.goals.push(Goal {
                what: "end to end: peak RSS, largest run".into(),
                goal: "≤ 256 MiB, flat".into(),
                measured: format!(
                    "{} (smallest run {}{})",
                    mib(max),
                    mib(min),
                    if flat { "" } else { ": grows with items" }
                ),
                met: Some(max <= GOAL_PEAK_RSS && flat),
            });
        }
        None => section.goals.push(skipped_goal()),
    }
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_peak_and_the_rows() {
        let status = "Name:\tbacklinks\nVmPeak:\t 999 kB\nVmHWM:\t  136000 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(vm_hwm(status), Some(136_000 * 1024));
        assert_eq!(vm_hwm("Name: x\n"), None);
        let stat =
            "4242 (back links) S 1 4242 4242 0 -1 4194560 900 0 0 0 812 95 0 0 20 0 9 0 100 1 1";
        assert_eq!(cpu_seconds(stat), Some(9.07));
        assert_eq!(cpu_seconds("4242 (x) S 1"), None);
        assert!(own_cpu_seconds().is_some());
        let out = "run 01a…  pipeline bench-e2e  succeeded in 3.1s\n  units     1 ok\n  rows      backlinks 100000, backlink_redirects 16072\n";
        assert_eq!(rows_line(out), Some((100_000, 16_072)));
        assert_eq!(rows_line("  rows      summary 3\n"), None);
    }

    #[test]
    fn the_pipeline_names_the_target_and_switches_postgres() {
        let one = Load {
            targets: 1,
            items: 100_000,
        };
        let p = pipeline(one, true);
        assert!(p.contains("list = [\"items100000.example.com\"]"));
        assert!(p.contains("enabled = true"));
        assert!(p.contains("latency_ms = 0"));
        let three = Load {
            targets: 3,
            items: 10,
        };
        let p = pipeline(three, false);
        assert!(!p.contains("enabled = true"));
        assert!(p.contains(
            "list = [\"items10.example.com\", \"items11.example.com\", \"items12.example.com\"]"
        ));
        assert_eq!(three.describe(), "3 × 10");
        assert_eq!(three.total_items(), 33);
        let ten = Load {
            targets: 10,
            items: 100_000,
        };
        assert_eq!(ten.total_items(), 1_000_045);
        assert_eq!(ten.targets()[9], "items100009.example.com");
    }
}
