//! The target list of a pipeline, read and normalised by the scheduler.

use backlinks_scheduler::{TargetList, TargetSource, read_targets};
use tracing::warn;

use crate::config::PipelineSpec;
use crate::error::{Context, Error, Result};

/// How many rejected targets are logged one by one before only counting.
const REJECTED_LOGGED: usize = 20;

/// Reads the pipeline's targets (on a blocking thread: a CSV can be
/// large), logging the rejected ones. A bad source is an input error.
pub async fn load(spec: &PipelineSpec) -> Result<TargetList> {
    let source = spec.targets.clone();
    let strict = spec.strict_targets;
    let list = tokio::task::spawn_blocking(move || read_targets(&source, strict))
        .await
        .context("reading the targets")?
        .map_err(|e| Error::input(e.to_string()))?;
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

/// Where the targets come from, for messages.
pub fn describe(source: &TargetSource) -> String {
    match source {
        TargetSource::Csv(path) => path.display().to_string(),
        TargetSource::Inline(_) => "the inline target list".into(),
    }
}

/// A run needs at least one valid target: an input error otherwise.
pub fn require_some(list: &TargetList, source: &TargetSource) -> Result<()> {
    if list.targets.is_empty() {
        return Err(Error::input(format!(
            "no valid targets in {} ({} rejected)",
            describe(source),
            list.rejected.len()
        )));
    }
    Ok(())
}
