//! `backlinks status` and `backlinks estimate`: read-only views that never
//! call the API.

use std::fmt::Write as _;
use std::path::Path;

use backlinks_model::ledger::RunStatus;
use backlinks_pipeline::state::{self, ArchiveIndex};
use backlinks_pipeline::targets;
use chrono::{NaiveDate, Utc};

use crate::run::load_spec;
use crate::{exit, print_out};

/// `backlinks status`: the runs of one pipeline and date, the archive, and
/// the failed units of the latest run.
pub fn status(pipeline: &Path, as_of: Option<NaiveDate>) -> anyhow::Result<u8> {
    let (_, spec) = load_spec(pipeline, None, false)?;
    let date = as_of.unwrap_or_else(|| Utc::now().date_naive());
    let runs_dir = state::runs_dir(&spec.state_dir, &spec.name, date);
    let archive_dir = state::archive_dir(&spec.state_dir, &spec.name, date);
    let manifests = state::read_manifests(&runs_dir)?;
    let index = state::archive_index(&archive_dir)?;
    print_out(&render_status(
        &spec.name, date, &manifests, &index, &runs_dir, pipeline,
    )?)?;
    Ok(exit::OK)
}

fn render_status(
    name: &str,
    date: NaiveDate,
    manifests: &[state::Manifest],
    index: &ArchiveIndex,
    runs_dir: &Path,
    pipeline: &Path,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "pipeline {name}  snapshot {date}");
    if manifests.is_empty() {
        let _ = writeln!(w, "  no runs recorded for this date");
    }
    for m in manifests {
        let status = if m.finished() {
            m.status.to_string()
        } else {
            "running or crashed (no end recorded)".into()
        };
        let _ = writeln!(
            w,
            "  run {}  {}  started {}  {}: {} units, {} ok, {} failed, {} not run, cost ${:.5}, {} answers replayed (${:.5} paid earlier)",
            m.run_id,
            m.command,
            m.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            status,
            m.units_total,
            m.units_ok,
            m.units_failed,
            m.units_not_run,
            m.cost_usd,
            m.replayed,
            m.replayed_cost_usd
        );
        if let Some(error) = &m.error {
            let _ = writeln!(w, "      error: {error}");
        }
    }
    let _ = writeln!(
        w,
        "  archive {} answers archived ({} distinct requests{})",
        index.records(),
        index.len(),
        if index.torn() > 0 {
            format!(", {} torn records ignored", index.torn())
        } else {
            String::new()
        }
    );
    if let Some(latest) = manifests.last() {
        let letters = state::read_dead_letters(runs_dir, &latest.run_id)?;
        if !letters.is_empty() {
            let _ = writeln!(w, "  failed units of the latest run {}:", latest.run_id);
            for l in &letters {
                let _ = writeln!(
                    w,
                    "    {} {}: {}{}",
                    l.endpoint,
                    l.target,
                    l.error,
                    l.status_code
                        .map(|c| format!(" (status {c})"))
                        .unwrap_or_default()
                );
            }
            let _ = writeln!(
                w,
                "  retry them only: backlinks run {} --as-of {date} --retry-failed",
                pipeline.display()
            );
        }
        if !latest.finished() {
            let _ = writeln!(
                w,
                "  the latest run did not finish: run the same command again (backlinks run {} --as-of {date}) to resume it; archived answers are not paid again",
                pipeline.display()
            );
        } else if matches!(
            latest.status,
            RunStatus::Interrupted
                | RunStatus::BudgetExhausted
                | RunStatus::Partial
                | RunStatus::Failed
                | RunStatus::Crashed
        ) {
            let _ = writeln!(
                w,
                "  the latest run ended {}: running the same command again resumes it",
                latest.status
            );
        }
    }
    Ok(out)
}

/// `backlinks estimate`: requests and cost per endpoint, from the price
/// table, without calling the API.
pub async fn estimate(pipeline: &Path, targets: Option<&Path>) -> anyhow::Result<u8> {
    let (_, spec) = load_spec(pipeline, targets, false)?;
    let list = targets::load(&spec).await?;
    let n = list.targets.len() as u64;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "pipeline {}: {n} targets ({} rejected, {} duplicates); prices per [pricing]",
        spec.name,
        list.rejected.len(),
        list.duplicates
    );
    let mut low = 0.0;
    let mut high = Some(0.0);
    if spec.summary.is_some() {
        let cost = spec.pricing.summary.estimate(1) * n as f64;
        low += cost;
        high = high.map(|h| h + cost);
        let _ = writeln!(
            w,
            "  summary    {n} requests, ${cost:.5} (${:.5} per request)",
            spec.pricing.summary.estimate(1)
        );
    }
    if let Some(b) = &spec.backlinks {
        let limit = u64::from(b.page_size);
        let first = b.max_items.map_or(limit, |cap| cap.min(limit));
        let min_cost = spec.pricing.backlinks.estimate(first) * n as f64;
        low += min_cost;
        match b.max_items {
            Some(cap) => {
                let pages = cap.div_ceil(limit);
                let max_cost = spec.pricing.backlinks.estimate(0) * (pages * n) as f64
                    + spec.pricing.backlinks.per_item * (cap * n) as f64;
                high = high.map(|h| h + max_cost);
                let _ = writeln!(
                    w,
                    "  backlinks  {n} to {} requests ({pages} pages of {limit} at most per target, max_items {cap}), ${min_cost:.5} to ${max_cost:.5}",
                    pages * n
                );
            }
            None => {
                high = None;
                let _ = writeln!(
                    w,
                    "  backlinks  at least {n} requests (1 page of {limit} per target), at least ${min_cost:.5}; no max_items, so no upper bound"
                );
            }
        }
        let _ = writeln!(
            w,
            "             the real number of pages depends on each target's total_count"
        );
    }
    match high {
        Some(h) if (h - low).abs() > 1e-12 => {
            let _ = writeln!(w, "  total      ${low:.5} to ${h:.5}");
        }
        Some(_) => {
            let _ = writeln!(w, "  total      ${low:.5}");
        }
        None => {
            let _ = writeln!(w, "  total      at least ${low:.5}");
        }
    }
    if let Some(cap) = spec.max_cost_usd {
        let _ = writeln!(
            w,
            "  cap        budget.max_cost_usd = ${cap:.5}: the run stops dispatching before passing it (exit code {})",
            exit::BUDGET
        );
    }
    print_out(&out)?;
    Ok(exit::OK)
}
