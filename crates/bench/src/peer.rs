//! The peer: dlt (the Python loading library teams reach for) loading the
//! same pages into the same Postgres and into Parquet files, in the same
//! run, so that the ratio of rows per second does not depend on the
//! machine.
//!
//! `scripts/bench-peer/setup.sh` creates `.venv-bench-peer` with dlt;
//! `scripts/bench-peer/peer.py` reads the pages this module writes to a
//! temporary directory and prints rows and seconds per destination as
//! JSON. Without the environment the section says so and gives no ratio.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::pages::{Page, write_pages};
use crate::pg::Scratch;
use crate::report::{Goal, Section};
use crate::stages::StageFigures;
use crate::{Error, Result, Size, per_second, thousands};

/// The goal: our rows/s ÷ dlt's, per sink.
pub const GOAL_RATIO: f64 = 30.0;

const SCRIPT: &str = "scripts/bench-peer/peer.py";
const VENV_PYTHON: &str = ".venv-bench-peer/bin/python";

/// What the peer printed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PeerOutput {
    pub dlt_version: String,
    pub parquet: PeerLoad,
    pub postgres: Option<PeerLoad>,
}

/// One destination of the peer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PeerLoad {
    /// Rows of its `backlinks` table, read back after the load.
    pub rows: u64,
    /// From the first page read to the end of the load.
    pub seconds: f64,
    /// dlt's `loader_file_format`.
    pub format: String,
}

impl PeerLoad {
    pub fn rows_per_second(&self) -> f64 {
        per_second(self.rows as f64, self.seconds)
    }
}

/// The first ancestor of the working directory holding `relative`.
pub fn find_up(relative: &str) -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .map(|dir| dir.join(relative))
        .find(|p| p.exists())
}

/// The peer's interpreter and script, or why they are missing.
pub fn locate() -> std::result::Result<(PathBuf, PathBuf), String> {
    let script = find_up(SCRIPT).ok_or_else(|| {
        format!("`{SCRIPT}` not found above the working directory (run from the repository)")
    })?;
    let python = python().ok_or_else(|| {
        "dlt is not installed: run `scripts/bench-peer/setup.sh` to create `.venv-bench-peer`"
            .to_owned()
    })?;
    Ok((python, script))
}

/// The interpreter of the peers' virtual environment: `BENCH_PEER_PYTHON`,
/// or `.venv-bench-peer/bin/python` above the working directory.
pub fn python() -> Option<PathBuf> {
    match std::env::var_os("BENCH_PEER_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None => find_up(VENV_PYTHON),
    }
}

/// Runs the peer on `pages` (blocking): Parquet, and Postgres into
/// `database` when given.
pub fn run(
    python: &Path,
    script: &Path,
    pages: &[Page],
    database: Option<&Scratch>,
) -> Result<PeerOutput> {
    let dir = tempfile::tempdir().map_err(|source| Error::Io {
        action: "creating a temporary directory",
        path: std::env::temp_dir(),
        source,
    })?;
    let pages_dir = dir.path().join("pages");
    std::fs::create_dir(&pages_dir).map_err(|source| Error::Io {
        action: "creating",
        path: pages_dir.clone(),
        source,
    })?;
    write_pages(pages, &pages_dir)?;
    let mut command = Command::new(python);
    command
        .arg(script)
        .arg("--pages")
        .arg(&pages_dir)
        .arg("--parquet-dir")
        .arg(dir.path().join("parquet"))
        .arg("--work")
        .arg(dir.path().join("work"))
        .current_dir(dir.path())
        .stdin(Stdio::null());
    if let Some(db) = database {
        command.arg("--postgres").arg(&db.url);
    }
    let failed = |message: String| Error::Child {
        program: "bench peer (dlt)".into(),
        message,
    };
    let output = command.output().map_err(|e| failed(e.to_string()))?;
    report_of(&output, failed)
}

/// What a peer script reported: the last line of its output that is a
/// JSON object. A script that failed is an error with the end of what it
/// wrote to stderr.
pub(crate) fn report_of<T: serde::de::DeserializeOwned>(
    output: &std::process::Output,
    failed: impl Fn(String) -> Error,
) -> Result<T> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(failed(format!(
            "exited with {:?}:\n{}",
            output.status.code(),
            tail.join("\n")
        )));
    }
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'));
    serde_json::from_str(last.unwrap_or_default())
        .map_err(|e| failed(format!("unreadable output ({e}): {stdout}")))
}

/// Runs the peer on the stage benchmarks' pages and renders the section
/// with the ratios against `ours`.
pub async fn section(size: Size, pages: &[Page], ours: &StageFigures) -> Result<Section> {
    let command = format!(
        "scripts/bench-peer/setup.sh && cargo run --release -p backlinks-bench -- stages peer{}",
        size.flag()
    );
    let (python, script) = match locate() {
        Ok(found) => found,
        Err(why) => {
            eprintln!("peer: skipped: {why}");
            return Ok(skipped(command, &why));
        }
    };
    let scratch = match Scratch::create().await {
        Ok(s) => Some(s),
        Err(why) => {
            eprintln!("peer: Postgres left out: {why}");
            None
        }
    };
    eprintln!("peer: dlt on {} pages ...", pages.len());
    let owned: Vec<Page> = pages.to_vec();
    let handle = tokio::task::spawn_blocking(move || {
        let r = run(&python, &script, &owned, scratch.as_ref());
        (r, scratch)
    });
    let (result, scratch) = handle.await.map_err(|e| Error::Child {
        program: "bench peer (dlt)".into(),
        message: e.to_string(),
    })?;
    if let Some(scratch) = scratch {
        scratch.drop_database().await?;
    }
    let peer = match result {
        Ok(p) => p,
        Err(e) => {
            eprintln!("peer: failed: {e}");
            return Ok(skipped(command, &format!("the peer failed: {e}")));
        }
    };
    Ok(render(command, &peer, ours))
}

fn skipped(command: String, why: &str) -> Section {
    let mut section = Section::new(
        "Peer: dlt",
        command,
        format!("Skipped: {why}. No ratio is given.\n"),
    );
    for sink in ["Parquet", "Postgres"] {
        section.goals.push(Goal {
            what: format!("pages → {sink}: ours ÷ dlt"),
            goal: format!("≥ {GOAL_RATIO:.0}×"),
            measured: "skipped (peer not run)".into(),
            met: None,
        });
    }
    section
}

fn render(command: String, peer: &PeerOutput, ours: &StageFigures) -> Section {
    let mut body = format!(
        "dlt {} (`scripts/bench-peer/peer.py`, installed by `scripts/bench-peer/setup.sh`) loads \
         the same {} pages (the whole API answers, written to files) as plain dicts from \
         `json.load`, one pipeline per destination; dlt flattens the nested fields itself \
         (child tables for `attributes` and `indirect_link_path`). Its time runs from the first \
         page read to the end of the load. Ours is the same pages → rows → sink on one thread \
         (the stage benchmarks' `normalize + Parquet write` and `normalize + COPY`).\n\n\
         | sink | ours rows/s | dlt rows/s | dlt format | dlt rows | dlt time | ours ÷ dlt |\n\
         |---|---|---|---|---|---|---|\n",
        peer.dlt_version, ours.pages
    );
    let mut goals = Vec::new();
    let mut line = |sink: &str, ours_rate: Option<f64>, load: Option<&PeerLoad>| {
        let ratio = match (ours_rate, load) {
            (Some(o), Some(l)) if l.rows_per_second() > 0.0 => Some(o / l.rows_per_second()),
            _ => None,
        };
        let _ = writeln!(
            body,
            "| {sink} | {} | {} | {} | {} | {} | {} |",
            ours_rate.map_or("not measured".into(), thousands),
            load.map_or("not run".into(), |l| thousands(l.rows_per_second())),
            load.map_or("", |l| l.format.as_str()),
            load.map_or("".into(), |l| thousands(l.rows as f64)),
            load.map_or("".into(), |l| format!("{:.2} s", l.seconds)),
            ratio.map_or("not measured".into(), |r| format!("{r:.1}×")),
        );
        goals.push(Goal {
            what: format!("pages → {sink}: ours ÷ dlt"),
            goal: format!("≥ {GOAL_RATIO:.0}×"),
            measured: ratio.map_or("not measured".into(), |r| format!("{r:.1}×")),
            met: ratio.map(|r| r >= GOAL_RATIO),
        });
    };
    line(
        "Parquet",
        Some(ours.normalize_parquet.rows_per_second()),
        Some(&peer.parquet),
    );
    line(
        "Postgres",
        ours.postgres
            .as_ref()
            .ok()
            .map(|pg| pg.normalize_copy.rows_per_second()),
        peer.postgres.as_ref(),
    );
    let mut section = Section::new("Peer: dlt", command, body);
    section.goals = goals;
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_peers_output() {
        let out: PeerOutput = serde_json::from_str(
            r#"{"dlt_version": "1.31.0", "parquet": {"rows": 500, "seconds": 0.25, "format": "parquet"},
                "postgres": {"rows": 500, "seconds": 0.5, "format": "csv"}}"#,
        )
        .unwrap();
        assert_eq!(out.parquet.rows_per_second(), 2000.0);
        assert_eq!(
            out.postgres.as_ref().map(PeerLoad::rows_per_second),
            Some(1000.0)
        );
        let without_pg: PeerOutput = serde_json::from_str(
            r#"{"dlt_version": "1", "parquet": {"rows": 1, "seconds": 1.0, "format": "parquet"}}"#,
        )
        .unwrap();
        assert!(without_pg.postgres.is_none());
    }
}
