//! The one-screen summary printed at the end of a run.

use std::fmt::Write;

use backlinks_model::Dataset;
use backlinks_pipeline::RunReport;

/// The summary of `report`, as printed.
pub fn render(report: &RunReport) -> String {
    let r = report;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "\nrun {}  pipeline {}  snapshot {}  {} in {:.1}s",
        r.run_id,
        r.pipeline,
        r.snapshot_date,
        r.status,
        r.duration.as_secs_f64()
    );
    let _ = writeln!(
        w,
        "  units     {} ok, {} failed, {} not run   (targets: {} valid, {} rejected, {} duplicates)",
        r.units_ok, r.units_failed, r.units_not_run, r.targets, r.rejected, r.duplicates
    );
    let rows = r
        .rows
        .iter()
        .map(|(d, n)| format!("{} {n}", d.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(w, "  rows      {rows}");
    if r.rows.contains_key(&Dataset::Backlinks) {
        let _ = writeln!(
            w,
            "  items     backlinks {} expected (total_count), {} loaded, {} targets differ",
            r.items_expected, r.items_loaded, r.item_mismatch_count
        );
        for line in &r.item_mismatches {
            let _ = writeln!(w, "  differs   {line}");
        }
    }
    let _ = writeln!(
        w,
        "  requests  {} sent, {} retries ({} rate-limited, {} too many in flight){}",
        r.requests,
        r.retries,
        r.rate_limited,
        r.too_many_in_flight,
        r.announced_limit
            .map(|limit| format!("; the API allows {limit}/min"))
            .unwrap_or_default()
    );
    let _ = writeln!(w, "  cost      ${:.5}", r.cost_usd);
    if r.replayed > 0 {
        let _ = writeln!(
            w,
            "  archive   {} answers reused from the archive (${:.5} paid earlier)",
            r.replayed, r.replayed_cost
        );
    }
    if !r.unknown.is_empty() {
        let names = r
            .unknown
            .iter()
            .map(|(k, n)| format!("{k} ({n})"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(w, "  new API fields kept in `extra`: {names}");
    }
    for failure in &r.failures {
        let _ = writeln!(w, "  failed    {failure}");
    }
    if r.units_failed as usize > r.failures.len() {
        let _ = writeln!(
            w,
            "  failed    ... and {} more (see the `requests` ledger)",
            r.units_failed as usize - r.failures.len()
        );
    }
    if let Some(path) = &r.dead_letters {
        let _ = writeln!(
            w,
            "  retry     the failed units are listed in {}; `backlinks run --retry-failed` retries only them",
            path.display()
        );
    }
    let sinks = match (&r.parquet_dir, r.postgres) {
        (Some(dir), true) => format!("parquet under {}/, postgres", dir.display()),
        (Some(dir), false) => format!("parquet under {}/", dir.display()),
        (None, true) => "postgres".into(),
        (None, false) => "none".into(),
    };
    let _ = writeln!(w, "  output    {sinks}");
    if let Some(dir) = &r.parquet_dir {
        let _ = writeln!(
            w,
            "  look      duckdb -c \"SELECT target, rank, backlinks, referring_domains FROM read_parquet('{}/summary/snapshot_date={}/*.parquet', hive_partitioning = false) ORDER BY backlinks DESC NULLS LAST LIMIT 10\"",
            dir.display(),
            r.snapshot_date
        );
    }
    out
}
