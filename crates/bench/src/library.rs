//! The run engine (`backlinks-pipeline`) driven as a library: a pipeline
//! of backlinks/live targets written as the binary would read it, a run
//! against an in-process sandbox that leaves its raw archive under the
//! state directory, a replay of that archive, and the archive's records
//! read back.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use backlinks_fetcher::archive::{ArchiveRecord, archive_files};
use backlinks_model::Dataset;
use backlinks_model::Secret;
use backlinks_model::ledger::RunStatus;
use backlinks_pipeline::{
    Api, Mode, Pipeline, PipelineSpec, Quiet, RawPipeline, RunOptions, RunReport, Shutdown,
};
use backlinks_sandbox::SandboxConfig;
use chrono::NaiveDate;

use crate::pages::{LOGIN, PASSWORD};
use crate::{Error, Result};

/// The snapshot date of every bench run, so that a cached archive is found
/// again on any day.
pub fn snapshot_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 25).unwrap_or_default()
}

/// A pipeline of backlinks/live targets into Parquet only, with absolute
/// directories: the same file drives the library and the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchPipeline {
    /// `name` of the pipeline (its partitions and archive directory).
    pub name: String,
    pub targets: Vec<String>,
    /// Items per target at most (`max_items`); `None` = all of them.
    pub max_items: Option<u64>,
    /// `state.dir`: the raw archive and the run manifests.
    pub state_dir: PathBuf,
    /// `sinks.parquet.dir`.
    pub parquet_dir: PathBuf,
}

/// A TOML string with `s` in it, quoted and escaped.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

impl BenchPipeline {
    /// The pipeline file: pages of 1000 (by offset to 20,000, then by
    /// token), 30 requests in flight and no pace to speak of, Parquet only.
    pub fn toml(&self) -> String {
        let list = self
            .targets
            .iter()
            .map(|t| quoted(t))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            r#"# Written by backlinks-bench: backlinks/live of every target into Parquet only.
name = {name}

[targets]
list = [{list}]

[endpoints.backlinks]
mode = "as_is"
limit = 1000
max_items = {max_items}

[api]
requests_per_minute = 1000000
max_in_flight = 30

[sinks.parquet]
dir = {parquet}

[sinks.postgres]
enabled = false

[state]
dir = {state}
"#,
            name = quoted(&self.name),
            max_items = self.max_items.unwrap_or(0),
            parquet = quoted(&self.parquet_dir.to_string_lossy()),
            state = quoted(&self.state_dir.to_string_lossy()),
        )
    }

    /// The validated pipeline, as `backlinks` would load the same file
    /// (without environment overrides).
    pub fn spec(&self) -> Result<(RawPipeline, PipelineSpec)> {
        let invalid = |message: String| Error::Child {
            program: "backlinks-pipeline".into(),
            message: format!("the bench pipeline `{}` is invalid: {message}", self.name),
        };
        let raw: RawPipeline = toml::from_str(&self.toml()).map_err(|e| invalid(e.to_string()))?;
        let spec = raw
            .validate(&self.state_dir)
            .map_err(|problems| invalid(problems.join("; ")))?;
        Ok((raw, spec))
    }

    /// `<state>/archive/<name>/snapshot_date=D`: where a run archives its
    /// answers.
    pub fn archive_dir(&self) -> PathBuf {
        backlinks_pipeline::state::archive_dir(&self.state_dir, &self.name, snapshot_date())
    }

    /// Writes the pipeline file to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.toml()).map_err(|source| Error::Io {
            action: "writing",
            path: path.to_path_buf(),
            source,
        })
    }
}

/// A library run and how long `Pipeline::run` took.
#[derive(Debug, Clone)]
pub struct LibraryRun {
    pub report: RunReport,
    pub seconds: f64,
}

impl LibraryRun {
    /// Rows of `backlinks` the run landed.
    pub fn backlinks_rows(&self) -> u64 {
        self.report
            .rows
            .get(&Dataset::Backlinks)
            .copied()
            .unwrap_or(0)
    }

    /// Rows of `backlink_redirects` the run landed.
    pub fn redirect_rows(&self) -> u64 {
        self.report
            .rows
            .get(&Dataset::BacklinkRedirects)
            .copied()
            .unwrap_or(0)
    }
}

/// Runs `pipeline` with `mode` (every CPU job on the pool the engine sizes
/// to the machine) and times `Pipeline::run`; a run that does not succeed
/// is an error.
async fn run(pipeline: &BenchPipeline, mode: Mode) -> Result<LibraryRun> {
    let (raw, spec) = pipeline.spec()?;
    let options = RunOptions {
        defer_indexes: false,
        snapshot_date: snapshot_date(),
        mode,
        database_url: None,
        settings: serde_json::to_value(&raw).unwrap_or_default(),
        cpu: None,
        targets: None,
    };
    let start = Instant::now();
    let report = Pipeline::new(spec, options, Shutdown::default())
        .run(&Quiet)
        .await
        .map_err(|e| Error::Child {
            program: "backlinks-pipeline".into(),
            message: crate::chain(&e),
        })?;
    let seconds = start.elapsed().as_secs_f64();
    if report.status != RunStatus::Succeeded {
        return Err(Error::Child {
            program: "backlinks-pipeline".into(),
            message: format!(
                "the run of `{}` ended {}: {}",
                pipeline.name,
                report.status,
                report.failures.join("; ")
            ),
        });
    }
    Ok(LibraryRun { report, seconds })
}

/// Fetches every target of `pipeline` from an in-process sandbox (seed
/// 42, no latency, no cap), so that its answers land in the raw archive
/// under its state directory (and its rows in its Parquet directory).
pub async fn fetch(pipeline: &BenchPipeline) -> Result<LibraryRun> {
    let sandbox = crate::pages::sandbox(SandboxConfig {
        requests_per_minute: 0,
        max_in_flight: 0,
        ..SandboxConfig::default()
    })
    .await?;
    let mode = Mode::Fetch {
        api: Api {
            base_url: sandbox.base_url(),
            login: LOGIN.into(),
            password: Secret::new(PASSWORD),
            label: "in-process sandbox".into(),
        },
        refetch: true,
        retry_failed: false,
        max_cost: None,
    };
    let result = run(pipeline, mode).await;
    sandbox.shutdown().await;
    result
}

/// Replays what `pipeline`'s state directory archived for the bench's
/// snapshot date, with no network (`backlinks replay`).
pub async fn replay(pipeline: &BenchPipeline) -> Result<LibraryRun> {
    run(pipeline, Mode::Replay { run_id: None }).await
}

/// Calls `each` on every record of every archive file in `dir`, file by
/// file and in file order (the files decoded as one zstd stream each: the
/// skippable frames heading the records are passed over, as `zstd -dc`
/// does).
pub fn for_each_record(
    dir: &Path,
    mut each: impl FnMut(ArchiveRecord) -> Result<()>,
) -> Result<u64> {
    let files = archive_files(dir).map_err(|e| Error::Child {
        program: "raw archive".into(),
        message: crate::chain(&e),
    })?;
    let mut count = 0;
    for path in files {
        let unreadable = |message: String| Error::Child {
            program: "raw archive".into(),
            message: format!("{}: {message}", path.display()),
        };
        let file = File::open(&path).map_err(|source| Error::Io {
            action: "opening",
            path: path.clone(),
            source,
        })?;
        let decoder = zstd::stream::read::Decoder::new(BufReader::new(file))
            .map_err(|e| unreadable(e.to_string()))?;
        // Records follow each other (a body stored as JSON may span
        // lines, so they are read as a stream of values, not line by line).
        let records =
            serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 20, decoder))
                .into_iter::<ArchiveRecord>();
        for record in records {
            each(record.map_err(|e| unreadable(e.to_string()))?)?;
            count += 1;
        }
    }
    Ok(count)
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                Ok(_) => e.metadata().map_or(0, |m| m.len()),
                Err(_) => 0,
            })
            .sum(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_file_is_valid_and_names_its_directories() {
        let p = BenchPipeline {
            name: "bench-x".into(),
            targets: vec!["items10.example.com".into(), "items11.example.com".into()],
            max_items: Some(2000),
            state_dir: "/tmp/a \"b\"/state".into(),
            parquet_dir: "/tmp/out".into(),
        };
        let (_, spec) = p.spec().unwrap();
        assert_eq!(&*spec.name, "bench-x");
        assert_eq!(spec.state_dir, PathBuf::from("/tmp/a \"b\"/state"));
        assert_eq!(spec.parquet_dir, Some(PathBuf::from("/tmp/out")));
        assert!(spec.postgres.is_none());
        assert_eq!(spec.backlinks.as_ref().unwrap().max_items, Some(2000));
        assert!(
            p.archive_dir()
                .ends_with("archive/bench-x/snapshot_date=2026-11-25"),
            "{}",
            p.archive_dir().display()
        );
    }
}
