//! The JSON log of a run can be followed: every event of the fetcher and
//! the sinks carries the run (`run_id`) and, for the work of one unit,
//! the unit (`endpoint`, `target`).

mod common;

use std::collections::BTreeMap;

use backlinks_sandbox::{Faults, SandboxConfig};
use common::*;
use serde_json::Value;

/// The fields of every span an event is in, merged (inner spans win).
fn span_fields(event: &Value) -> BTreeMap<String, Value> {
    let mut fields = BTreeMap::new();
    for span in event["spans"].as_array().into_iter().flatten() {
        if let Some(object) = span.as_object() {
            for (k, v) in object {
                fields.insert(k.clone(), v.clone());
            }
        }
    }
    fields
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fetcher_and_sink_event_names_its_run_and_unit() {
    let sandbox = sandbox(SandboxConfig {
        requests_per_minute: 0,
        // Retries give the fetcher warnings to log.
        faults: Faults {
            http_500: 0.1,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let database = scratch_database("logs").await;
    let dir = tempfile::tempdir().unwrap();
    let targets = ["items2500.example.com", "a.example.com", "b.example.com"];
    let pipeline = write_pipeline(
        &dir.path().join("logs.toml"),
        "logs",
        &targets,
        r#"[endpoints.summary]
[endpoints.backlinks]
[api]
requests_per_minute = 20000
max_in_flight = 4
timeout_secs = 5
retry = { max_attempts = 10, initial_backoff_ms = 10, max_backoff_ms = 100 }
[sinks.parquet]
dir = "data"
[sinks.postgres]
enabled = true
"#,
    );
    let mut env = api_env(&sandbox);
    env.push(("DATABASE_URL".into(), database.to_string()));
    let run = backlinks_async(
        vec![
            "--log-format".into(),
            "json".into(),
            "--log-level".into(),
            "debug".into(),
            "run".into(),
            pipeline.display().to_string(),
            "--as-of".into(),
            "2026-03-01".into(),
        ],
        env,
        dir.path().to_path_buf(),
    )
    .await;
    assert_eq!(run.code(), 0, "{}", run.stderr());

    let mut run_ids = std::collections::BTreeSet::new();
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    for line in run.stderr().lines() {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        let module = event["target"].as_str().unwrap_or_default().to_owned();
        let stage = [
            "backlinks_fetcher",
            "backlinks_sink_parquet",
            "backlinks_sink_postgres",
        ]
        .into_iter()
        .find(|stage| module.starts_with(stage));
        let Some(stage) = stage else { continue };
        *seen.entry(stage).or_default() += 1;
        let spans = span_fields(&event);
        let run_id = spans
            .get("run_id")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("an event of {module} without run_id: {line}"));
        run_ids.insert(run_id.to_owned());
        assert_eq!(spans.get("pipeline"), Some(&Value::from("logs")), "{line}");
        // The request ledger and the run's own row are the run's, not a
        // unit's; everything else is a unit's work.
        let fields = &event["fields"];
        let dataset = fields["table"]
            .as_str()
            .or(fields["dataset"].as_str())
            .unwrap_or_default();
        if !["requests", "runs"].contains(&dataset) {
            let target = spans
                .get("target")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("an event of {module} without its unit: {line}"));
            assert!(targets.contains(&target), "{line}");
            assert!(spans.contains_key("endpoint"), "{line}");
        }
    }
    assert_eq!(run_ids.len(), 1, "{run_ids:?}");
    // The run records the base URL it really called (DATAFORSEO_BASE_URL
    // here), not the pipeline file's default.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&database)
        .await
        .unwrap();
    let settings: String = sqlx::query_scalar("SELECT settings::text FROM runs")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let settings: Value = serde_json::from_str(&settings).unwrap();
    assert_eq!(settings["api"]["base_url"], Value::from(sandbox.base_url()));
    for stage in [
        "backlinks_fetcher",
        "backlinks_sink_parquet",
        "backlinks_sink_postgres",
    ] {
        assert!(
            seen.get(stage).copied().unwrap_or(0) > 0,
            "no event of {stage} at debug level: {seen:?}"
        );
    }
}
