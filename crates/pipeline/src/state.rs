//! The state directory: the raw archive, run manifests and dead letters.
//!
//! ```text
//! <state>/archive/<pipeline>/snapshot_date=D/<run_id>__<endpoint>.zst
//! <state>/runs/<pipeline>/snapshot_date=D/<run_id>.json          manifest
//! <state>/runs/<pipeline>/snapshot_date=D/<run_id>.failed.ndjson dead letters
//! ```
//!
//! A manifest is written (temp file + rename) when a run starts, with
//! status `running`, and again when it ends. A manifest that still says
//! `running` belongs to a run that died. Run ids are UUIDv7, so sorting by
//! id sorts by start time.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use backlinks_model::RunRecord;
use backlinks_model::ledger::RunStatus;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Context, Result};

pub use backlinks_fetcher::ArchiveIndex;

/// The index of every answer archived in `dir` (one pipeline and date).
pub fn archive_index(dir: &Path) -> Result<ArchiveIndex> {
    let files = backlinks_fetcher::archive::archive_files(dir)
        .with_context(|| format!("listing the raw archive {}", dir.display()))?;
    ArchiveIndex::build(&files)
        .with_context(|| format!("reading the raw archive {}", dir.display()))
}

/// `<state>/archive/<pipeline>/snapshot_date=D`.
pub fn archive_dir(state: &Path, pipeline: &str, date: NaiveDate) -> PathBuf {
    state
        .join("archive")
        .join(pipeline)
        .join(format!("snapshot_date={date}"))
}

/// `<state>/runs/<pipeline>/snapshot_date=D`.
pub fn runs_dir(state: &Path, pipeline: &str, date: NaiveDate) -> PathBuf {
    state
        .join("runs")
        .join(pipeline)
        .join(format!("snapshot_date={date}"))
}

/// What a run did, as `<run_id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub v: u32,
    pub run_id: String,
    pub pipeline: String,
    pub snapshot_date: NaiveDate,
    /// `run`, `run --retry-failed`, `run --refetch` or `replay`.
    pub command: String,
    /// As in the `runs` table; `running` until the run ends.
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub units_total: u64,
    pub units_ok: u64,
    pub units_failed: u64,
    pub units_not_run: u64,
    /// HTTP requests sent.
    pub requests: u64,
    /// Costs the API reported for this run's requests.
    pub cost_usd: f64,
    /// Answers reused from the archive, and what they cost earlier.
    pub replayed: u64,
    pub replayed_cost_usd: f64,
    pub rows: BTreeMap<String, u64>,
    pub error: Option<String>,
}

impl Manifest {
    /// The manifest of `run` as it stands (the `runs` row is the one
    /// account of a run; the manifest mirrors it on disk), started by
    /// `command`, with its rows per dataset.
    pub fn of_run(run: &RunRecord, command: &str, rows: BTreeMap<String, u64>) -> Self {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Self {
            v: 1,
            run_id: run.run_id.clone(),
            pipeline: run.pipeline.clone(),
            snapshot_date: run.snapshot_date,
            command: command.to_owned(),
            status: run.status,
            started_at: run.started_at,
            finished_at: run.finished_at,
            units_total: count(run.units_total),
            units_ok: count(run.units_ok),
            units_failed: count(run.units_failed),
            // Only known once the run has ended.
            units_not_run: run.finished_at.map_or(0, |_| {
                count(run.units_total - run.units_ok - run.units_failed)
            }),
            requests: count(run.requests),
            cost_usd: run.cost_usd,
            replayed: count(run.replayed),
            replayed_cost_usd: run.replayed_cost_usd,
            rows,
            error: run.error.clone(),
        }
    }

    /// Whether the run ended (any status but `running`).
    pub fn finished(&self) -> bool {
        self.status.finished()
    }
}

/// Writes `manifest` as `<dir>/<run_id>.json` atomically: a hidden
/// temporary file in the same directory, fsync'd, renamed into place, and
/// the directory fsync'd so the rename survives a crash.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.json", manifest.run_id));
    let text = serde_json::to_vec_pretty(manifest).context("encoding the run manifest")?;
    let write = || -> std::io::Result<()> {
        let mut temp = tempfile::Builder::new()
            .prefix(&format!(".{}.json.", manifest.run_id))
            .suffix(".tmp")
            .tempfile_in(dir)?;
        temp.write_all(&text)?;
        temp.as_file().sync_all()?;
        temp.persist(&path).map_err(|e| e.error)?;
        sync_dir(dir)
    };
    write().with_context(|| format!("writing the run manifest {}", path.display()))
}

/// Makes a rename in `dir` durable (a no-op where directories cannot be
/// opened as files).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Every manifest in `dir`, oldest run first. Unreadable ones are skipped
/// with a warning.
pub fn read_manifests(dir: &Path) -> Result<Vec<Manifest>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<Manifest>(&bytes).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(manifest) => out.push(manifest),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping an unreadable run manifest")
            }
        }
    }
    out.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    Ok(out)
}

/// Marks every run of `dir` whose manifest still says `running` as
/// `crashed`, on behalf of `by_run`, which holds the day's lock (so none of
/// them is alive). Returns the run ids marked.
pub fn mark_crashed(dir: &Path, by_run: &str) -> Result<Vec<String>> {
    let mut marked = Vec::new();
    for mut manifest in read_manifests(dir)? {
        if manifest.finished() || manifest.run_id == by_run {
            continue;
        }
        manifest.status = RunStatus::Crashed;
        manifest.error = Some(crashed_error(by_run));
        write_manifest(dir, &manifest)?;
        marked.push(manifest.run_id);
    }
    Ok(marked)
}

/// The error recorded with a run marked `crashed` by `by_run`.
pub fn crashed_error(by_run: &str) -> String {
    format!(
        "the run died without recording its end; run {by_run} found it so (its archived answers are reused)"
    )
}

/// One unit that failed for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub endpoint: String,
    pub target: String,
    pub error: String,
    /// The API's status code of the last answer, if one came.
    pub status_code: Option<i64>,
}

/// `<dir>/<run_id>.failed.ndjson`, created on the first failure and
/// appended line by line as units fail.
pub struct DeadLetters {
    path: PathBuf,
    file: Mutex<Option<File>>,
    count: std::sync::atomic::AtomicU64,
}

impl DeadLetters {
    pub fn new(dir: &Path, run_id: &str) -> Self {
        Self {
            path: dead_letters_file(dir, run_id),
            file: Mutex::new(None),
            count: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Appends one line (flushed at once).
    pub fn append(&self, letter: &DeadLetter) -> Result<()> {
        let mut line = serde_json::to_vec(letter).context("encoding a dead letter")?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.is_none() {
            *file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .with_context(|| format!("opening {}", self.path.display()))?,
            );
        }
        if let Some(f) = file.as_mut() {
            f.write_all(&line)
                .and_then(|()| f.flush())
                .with_context(|| format!("writing {}", self.path.display()))?;
        }
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The file, whether or not any unit failed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines written.
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub fn dead_letters_file(dir: &Path, run_id: &str) -> PathBuf {
    dir.join(format!("{run_id}.failed.ndjson"))
}

/// The dead letters of `run_id` (none if the file does not exist). A torn
/// last line (the run died while writing it) is skipped.
pub fn read_dead_letters(dir: &Path, run_id: &str) -> Result<Vec<DeadLetter>> {
    let path = dead_letters_file(dir, run_id);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if let Ok(letter) = serde_json::from_str::<DeadLetter>(&line) {
            out.push(letter);
        }
    }
    Ok(out)
}

/// The run id an archive file belongs to (`<run_id>__<endpoint>.zst`).
pub fn archive_run_id(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    name.split_once("__").map(|(id, _)| id.to_owned())
}

/// The archive files a new run resumes from: those of the runs since the
/// last run that succeeded (a run that finished well closes the chain, so
/// re-running a finished day fetches anew), oldest first.
pub fn resumable_archive_files(
    archive: &[PathBuf],
    manifests: &[Manifest],
) -> (Vec<PathBuf>, Vec<String>) {
    let closed_by = manifests
        .iter()
        .rev()
        .find(|m| m.status == RunStatus::Succeeded)
        .map(|m| m.run_id.clone());
    let files: Vec<PathBuf> = archive
        .iter()
        .filter(|path| match (&closed_by, archive_run_id(path)) {
            (Some(last), Some(id)) => id > *last,
            (None, _) => true,
            (Some(_), None) => false,
        })
        .cloned()
        .collect();
    let mut runs: Vec<String> = files.iter().filter_map(|p| archive_run_id(p)).collect();
    runs.dedup();
    (files, runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(run_id: &str, status: RunStatus) -> Manifest {
        Manifest {
            v: 1,
            run_id: run_id.into(),
            pipeline: "p".into(),
            snapshot_date: NaiveDate::from_ymd_opt(2026, 1, 15).unwrap(),
            command: "run".into(),
            status,
            started_at: Utc::now(),
            finished_at: None,
            units_total: 3,
            units_ok: 1,
            units_failed: 1,
            units_not_run: 1,
            requests: 2,
            cost_usd: 0.04,
            replayed: 0,
            replayed_cost_usd: 0.0,
            rows: BTreeMap::new(),
            error: None,
        }
    }

    #[test]
    fn manifests_round_trip_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        write_manifest(dir.path(), &manifest("b", RunStatus::Running)).unwrap();
        write_manifest(dir.path(), &manifest("a", RunStatus::Succeeded)).unwrap();
        write_manifest(dir.path(), &manifest("b", RunStatus::Interrupted)).unwrap();
        let all = read_manifests(dir.path()).unwrap();
        assert_eq!(
            all.iter()
                .map(|m| (m.run_id.as_str(), m.status))
                .collect::<Vec<_>>(),
            [("a", RunStatus::Succeeded), ("b", RunStatus::Interrupted)]
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
    }

    #[test]
    fn dead_letters_are_appended_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let letters = DeadLetters::new(dir.path(), "r1");
        assert!(read_dead_letters(dir.path(), "r1").unwrap().is_empty());
        let letter = DeadLetter {
            endpoint: "summary".into(),
            target: "badrequest.example.com".into(),
            error: "request refused".into(),
            status_code: Some(40501),
        };
        letters.append(&letter).unwrap();
        // A torn last line is skipped.
        let mut f = OpenOptions::new()
            .append(true)
            .open(letters.path())
            .unwrap();
        f.write_all(b"{\"endpoint\":\"summ").unwrap();
        assert_eq!(read_dead_letters(dir.path(), "r1").unwrap(), vec![letter]);
        assert_eq!(letters.count(), 1);
    }

    #[test]
    fn runs_left_running_are_marked_crashed() {
        let dir = tempfile::tempdir().unwrap();
        write_manifest(dir.path(), &manifest("a", RunStatus::Running)).unwrap();
        write_manifest(dir.path(), &manifest("b", RunStatus::Succeeded)).unwrap();
        write_manifest(dir.path(), &manifest("c", RunStatus::Running)).unwrap();
        assert_eq!(mark_crashed(dir.path(), "c").unwrap(), vec!["a".to_owned()]);
        let all = read_manifests(dir.path()).unwrap();
        assert_eq!(all[0].status, RunStatus::Crashed);
        assert!(all[0].error.as_deref().unwrap().contains("run c"));
        assert_eq!(all[1].status, RunStatus::Succeeded);
        assert_eq!(all[2].status, RunStatus::Running);
    }

    #[test]
    fn a_succeeded_run_closes_the_resume_chain() {
        let files: Vec<PathBuf> = ["r1__summary.zst", "r2__summary.zst", "r3__backlinks.zst"]
            .iter()
            .map(PathBuf::from)
            .collect();
        // r1 crashed, r2 resumed it and succeeded, r3 crashed: only r3.
        let manifests = [
            manifest("r1", RunStatus::Running),
            manifest("r2", RunStatus::Succeeded),
            manifest("r3", RunStatus::Running),
        ];
        let (resume, runs) = resumable_archive_files(&files, &manifests);
        assert_eq!(resume, vec![PathBuf::from("r3__backlinks.zst")]);
        assert_eq!(runs, vec!["r3".to_owned()]);
        // Nothing succeeded yet: everything.
        let (resume, _) = resumable_archive_files(&files, &manifests[..1]);
        assert_eq!(resume.len(), 3);
    }
}
