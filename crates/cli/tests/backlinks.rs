//! End-to-end for backlinks/live: every backlink of a target, paged by
//! offset and then by `search_after_token`, in both sinks value for value.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backlinks_model::schema::{
    BACKLINK_INDIRECT_PATH, BACKLINK_ITEM_FIELDS, BACKLINK_RANKED_KEYWORDS, ItemType,
};
use backlinks_sandbox::{
    Faults, SandboxConfig, backlinks_page_cost, backlinks_total, served_backlink,
};
use common::*;
use serde_json::{Value, json};

const SNAPSHOT: &str = "2026-02-01";

fn pipeline_file(dir: &Path, targets: &[&str], postgres: bool, backlinks: &str) -> PathBuf {
    let body = format!(
        r#"[endpoints.backlinks]
{backlinks}
[api]
requests_per_minute = 20000
max_in_flight = 8
timeout_secs = 1
retry = {{ max_attempts = 10, initial_backoff_ms = 10, max_backoff_ms = 200 }}
[sinks.parquet]
dir = "data"
[sinks.postgres]
enabled = {postgres}
"#
    );
    write_pipeline(&dir.join("bl.toml"), "bl", targets, &body)
}

/// The `backlinks` record the pipeline must store for the item served at
/// `position` (without `fetched_at` and `task_id`, which the run decides).
fn expected_backlink(seed: u64, target: &str, position: u64) -> (Record, Vec<Record>) {
    let item = served_backlink(seed, target, "as_is", position);
    let mut r = Record::new();
    r.insert("pipeline".into(), json!("bl"));
    r.insert("target".into(), json!(target));
    r.insert("snapshot_date".into(), json!(SNAPSHOT));
    r.insert("position".into(), json!(position));
    let mut known: BTreeSet<&str> = BTreeSet::new();
    for (name, ty) in BACKLINK_ITEM_FIELDS {
        known.insert(name);
        let v = item.get(name).cloned().unwrap_or(Value::Null);
        let v = match (ty, v) {
            (ItemType::Timestamp, Value::String(s)) => json!(api_micros(&s)),
            (_, v) => v,
        };
        r.insert(name.into(), v);
    }
    let (ranked, counts) = BACKLINK_RANKED_KEYWORDS;
    known.insert(ranked);
    let ranked_value = item.get(ranked).cloned().unwrap_or(Value::Null);
    for name in counts {
        r.insert(
            name.into(),
            ranked_value.get(name).cloned().unwrap_or(Value::Null),
        );
    }
    known.insert("is_indirect_link");
    r.insert(
        "is_indirect_link".into(),
        item.get("is_indirect_link").cloned().unwrap_or(Value::Null),
    );
    let (path_field, hops_column) = BACKLINK_INDIRECT_PATH;
    known.insert(path_field);
    let path = item.get(path_field).and_then(Value::as_array);
    r.insert(
        hops_column.into(),
        path.map_or(Value::Null, |p| json!(p.len())),
    );
    let mut extra = serde_json::Map::new();
    for (k, v) in item.as_object().unwrap() {
        if !known.contains(k.as_str()) {
            extra.insert(k.clone(), v.clone());
        }
    }
    let ranked_extra: serde_json::Map<String, Value> = ranked_value
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !counts.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !ranked_extra.is_empty() {
        extra.insert(ranked.into(), Value::Object(ranked_extra));
    }
    r.insert(
        "extra".into(),
        if extra.is_empty() {
            Value::Null
        } else {
            Value::Object(extra)
        },
    );
    let hops = path
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(hop, h)| {
            let mut rec = Record::new();
            rec.insert("pipeline".into(), json!("bl"));
            rec.insert("target".into(), json!(target));
            rec.insert("snapshot_date".into(), json!(SNAPSHOT));
            rec.insert("position".into(), json!(position));
            rec.insert("hop".into(), json!(hop));
            for name in ["type", "status_code", "url"] {
                rec.insert(name.into(), h.get(name).cloned().unwrap_or(Value::Null));
            }
            rec
        })
        .collect();
    (r, hops)
}

type Key = (String, i64);
type HopKey = (String, i64, i64);

/// Backlink records by (target, position), run-specific columns set aside;
/// panics on a duplicate.
fn by_position(records: Vec<Record>) -> BTreeMap<Key, Record> {
    let mut out = BTreeMap::new();
    for mut r in records {
        assert!(
            r.remove("fetched_at").is_some_and(|v| v.is_i64()),
            "fetched_at is set"
        );
        assert!(
            r.remove("task_id").is_some_and(|v| v.is_string()),
            "task_id is set"
        );
        let key = (
            r["target"].as_str().unwrap().to_owned(),
            r["position"].as_i64().unwrap(),
        );
        assert!(
            out.insert(key.clone(), r).is_none(),
            "duplicate backlink {key:?}"
        );
    }
    out
}

fn by_hop(records: Vec<Record>) -> BTreeMap<HopKey, Record> {
    let mut out = BTreeMap::new();
    for mut r in records {
        r.remove("fetched_at");
        let key = (
            r["target"].as_str().unwrap().to_owned(),
            r["position"].as_i64().unwrap(),
            r["hop"].as_i64().unwrap(),
        );
        assert!(
            out.insert(key.clone(), r).is_none(),
            "duplicate redirect {key:?}"
        );
    }
    out
}

fn assert_same<K: Ord + std::fmt::Debug>(
    sink: &str,
    got: &BTreeMap<K, Record>,
    want: &BTreeMap<K, Record>,
) {
    assert_eq!(got.len(), want.len(), "{sink}: row count");
    for (key, want) in want {
        assert_eq!(got.get(key), Some(want), "{sink}: {key:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backlink_lands_in_both_sinks_exactly_once_despite_faults() {
    let seed = 11;
    let sandbox = sandbox(SandboxConfig {
        seed,
        latency: Duration::from_millis(2),
        latency_jitter: Duration::from_millis(5),
        faults: Faults {
            http_500: 0.03,
            envelope_50000: 0.03,
            truncated_json: 0.03,
            rate_limit_storm: 0.02,
            slow: 0.02,
            slow_delay: Duration::from_millis(1500),
        },
        ..Default::default()
    })
    .await;
    let targets = [
        "items0.example.com",
        "items1.example.com",
        "items999.example.com",
        "items1000.example.com",
        "items1001.example.com",
        "items25000.example.com",
        "noresults.example.org",
    ];
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline_file(dir.path(), &targets, true, "limit = 1000");
    let db = scratch_database("backlinks").await;
    let mut env = api_env(&sandbox);
    env.push(("DATABASE_URL".into(), db.clone()));
    let args: Vec<String> = ["run", pipeline.to_str().unwrap(), "--as-of", SNAPSHOT]
        .map(String::from)
        .to_vec();

    let mut want = BTreeMap::new();
    let mut want_hops = BTreeMap::new();
    let mut want_cost = 0.0;
    for t in targets {
        let total = backlinks_total(seed, t, "as_is");
        for p in 0..total {
            let (r, hops) = expected_backlink(seed, t, p);
            want.insert((t.to_owned(), p as i64), r);
            for h in hops {
                want_hops.insert((t.to_owned(), p as i64, h["hop"].as_i64().unwrap()), h);
            }
        }
        // Requests the run must pay for: full pages, then the short last one.
        let pages = total.div_ceil(1000).max(1);
        want_cost += (0..pages)
            .map(|i| backlinks_page_cost((total - i * 1000).min(1000)))
            .sum::<f64>();
    }
    assert_eq!(want.len(), 1 + 999 + 1000 + 1001 + 25000);
    assert!(!want_hops.is_empty(), "the data covers redirects");
    assert!(
        want.values().any(|r| !r["extra"].is_null()),
        "the data covers unknown fields"
    );

    let data = dir.path().join("data");
    for round in 1..=2 {
        let run = backlinks_async(args.clone(), env.clone(), dir.path().to_path_buf()).await;
        assert_eq!(
            run.code(),
            0,
            "round {round}\nstdout:\n{}\nstderr:\n{}",
            run.stdout(),
            run.stderr()
        );
        assert!(
            run.stdout()
                .contains("backlinks 28001 expected (total_count), 28001 loaded, 0 targets differ"),
            "{}",
            run.stdout()
        );
        assert_same(
            "parquet backlinks",
            &by_position(parquet_records(&data, "backlinks")),
            &want,
        );
        assert_same(
            "postgres backlinks",
            &by_position(postgres_records(&db, "backlinks").await),
            &want,
        );
        assert_same(
            "parquet redirects",
            &by_hop(parquet_records(&data, "backlink_redirects")),
            &want_hops,
        );
        assert_same(
            "postgres redirects",
            &by_hop(postgres_records(&db, "backlink_redirects").await),
            &want_hops,
        );
        assert!(
            leftover_temp_files(&data).is_empty(),
            "{:?}",
            leftover_temp_files(&data)
        );
    }
    assert!(
        sandbox.stats().injected_faults > 0,
        "faults were injected: {:?}",
        sandbox.stats()
    );

    // The ledger: one row per page that was answered, costs as the API said.
    let runs = postgres_records(&db, "runs").await;
    assert_eq!(runs.len(), 2);
    for run in &runs {
        let cost = run["cost_usd"].as_f64().unwrap();
        assert!(
            (cost - want_cost).abs() < 1e-6,
            "run cost {cost}, expected {want_cost}"
        );
    }
    let requests = postgres_records(&db, "requests").await;
    let pages_of_big_target = requests
        .iter()
        .filter(|r| r["target"] == json!("items25000.example.com") && r["error"].is_null())
        .count();
    assert_eq!(pages_of_big_target, 2 * 25, "25 pages per run");
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_page_failing_keeps_the_previous_data_of_that_target() {
    let seed = 5;
    let sandbox = sandbox(SandboxConfig {
        seed,
        ..Default::default()
    })
    .await;
    let failing = "failat2500.items5000.example.com";
    let fine = "items1500.example.net";
    let targets = [failing, fine];
    let dir = tempfile::tempdir().unwrap();
    let db = scratch_database("laterpage").await;
    let mut env = api_env(&sandbox);
    env.push(("DATABASE_URL".into(), db.clone()));
    let data = dir.path().join("data");
    let count = |records: Vec<Record>, target: &str| {
        records
            .iter()
            .filter(|r| r["target"] == json!(target))
            .count()
    };

    // Yesterday's run (same snapshot date) stopped at 2000 items and landed.
    let pipeline = pipeline_file(dir.path(), &targets, true, "limit = 1000\nmax_items = 2000");
    let args: Vec<String> = ["run", pipeline.to_str().unwrap(), "--as-of", SNAPSHOT]
        .map(String::from)
        .to_vec();
    let run = backlinks_async(args.clone(), env.clone(), dir.path().to_path_buf()).await;
    assert_eq!(run.code(), 0, "{}\n{}", run.stdout(), run.stderr());
    assert_eq!(count(parquet_records(&data, "backlinks"), failing), 2000);

    // Today the target's page at item 3000 fails for good: the target is
    // reported as failed, its earlier data stays, the other target lands.
    let pipeline = pipeline_file(dir.path(), &targets, true, "limit = 1000");
    let run = backlinks_async(args, env, dir.path().to_path_buf()).await;
    assert_eq!(run.code(), 1, "{}\n{}", run.stdout(), run.stderr());
    let out = run.stdout();
    assert!(out.contains("1 ok, 1 failed"), "{out}");
    assert!(
        out.contains(&format!("backlinks {failing}: page 3 (item 3000)")),
        "{out}"
    );
    for records in [
        parquet_records(&data, "backlinks"),
        postgres_records(&db, "backlinks").await,
    ] {
        assert_eq!(
            count(records.clone(), failing),
            2000,
            "the failing target keeps its previous rows"
        );
        assert_eq!(count(records, fine), 1500);
    }
    assert!(leftover_temp_files(&data).is_empty());
    drop(pipeline);
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_backlinks_settings_are_refused_with_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = pipeline_file(
        dir.path(),
        &["example.com"],
        false,
        "limit = 5000\nmode = \"one_per_page\"\norder_by = [\"rank,desc\", \"a,asc\", \"b,asc\", \"c,asc\"]\nfilters = [[\"a\",\"=\",1],\"and\",[\"a\",\"=\",1],\"and\",[\"a\",\"=\",1],\"and\",[\"a\",\"=\",1],\"and\",[\"a\",\"=\",1],\"and\",[\"a\",\"=\",1],\"and\",[\"a\",\"=\",1],\"and\",[\"a\",\"=\",1],\"and\",[\"a\",\"=\",1]]",
    );
    let run = backlinks_async(
        vec!["validate".into(), pipeline.to_str().unwrap().into()],
        vec![],
        dir.path().to_path_buf(),
    )
    .await;
    assert_eq!(run.code(), 2, "{}", run.stderr());
    let err = run.stderr();
    for needle in [
        "endpoints.backlinks.limit = 5000 is out of range 1..=1000",
        "endpoints.backlinks.mode",
        "endpoints.backlinks.order_by: 4 rules; the API allows at most 3",
        "endpoints.backlinks.filters: 9 conditions; the API allows at most 8",
    ] {
        assert!(err.contains(needle), "{needle} missing in {err}");
    }
}
