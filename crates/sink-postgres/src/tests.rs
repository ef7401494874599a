//! Database tests: each gets its own database with the migrations applied
//! (`DATABASE_URL` names the server).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, ListBuilder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::DataType;
use backlinks_model::Target;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use sqlx::Row;

use super::*;

/// A cell of a test row.
#[derive(Debug, Clone)]
enum V {
    Null,
    S(String),
    I(i64),
    F(f64),
    B(bool),
    D(NaiveDate),
    T(DateTime<Utc>),
    L(Vec<Option<String>>),
}

fn s(v: &str) -> V {
    V::S(v.to_owned())
}

type TestRow = Vec<(&'static str, V)>;

fn date(day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, day).unwrap()
}

fn ts(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap()
}

fn key(target: &str, day: u32) -> PartitionKey {
    PartitionKey {
        pipeline: "demo".into(),
        target: Target::from_normalized(target),
        snapshot_date: date(day),
    }
}

/// A batch of `dataset` with `rows`; columns a row leaves out are NULL.
fn batch(dataset: Dataset, rows: &[TestRow]) -> RecordBatch {
    let schema = dataset.schema();
    let rows: Vec<HashMap<&str, &V>> = rows
        .iter()
        .map(|r| r.iter().map(|(k, v)| (*k, v)).collect())
        .collect();
    for row in &rows {
        for name in row.keys() {
            assert!(schema.field_with_name(name).is_ok(), "{name}");
        }
    }
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| {
            let cells = rows
                .iter()
                .map(|r| r.get(field.name().as_str()).copied().unwrap_or(&V::Null));
            let array: ArrayRef = match field.data_type() {
                DataType::Utf8 => {
                    let mut b = StringBuilder::new();
                    cells.for_each(|c| match c {
                        V::S(v) => b.append_value(v),
                        V::Null => b.append_null(),
                        other => panic!("{other:?}"),
                    });
                    Arc::new(b.finish())
                }
                DataType::Int64 => {
                    let mut b = Int64Builder::new();
                    cells.for_each(|c| match c {
                        V::I(v) => b.append_value(*v),
                        V::Null => b.append_null(),
                        other => panic!("{other:?}"),
                    });
                    Arc::new(b.finish())
                }
                DataType::Float64 => {
                    let mut b = Float64Builder::new();
                    cells.for_each(|c| match c {
                        V::F(v) => b.append_value(*v),
                        V::Null => b.append_null(),
                        other => panic!("{other:?}"),
                    });
                    Arc::new(b.finish())
                }
                DataType::Boolean => {
                    let mut b = BooleanBuilder::new();
                    cells.for_each(|c| match c {
                        V::B(v) => b.append_value(*v),
                        V::Null => b.append_null(),
                        other => panic!("{other:?}"),
                    });
                    Arc::new(b.finish())
                }
                DataType::Date32 => {
                    let mut b = Date32Builder::new();
                    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
                    cells.for_each(|c| match c {
                        V::D(v) => b.append_value((*v - epoch).num_days() as i32),
                        V::Null => b.append_null(),
                        other => panic!("{other:?}"),
                    });
                    Arc::new(b.finish())
                }
                DataType::Timestamp(_, _) => {
                    let mut b = TimestampMicrosecondBuilder::new().with_timezone("UTC");
                    cells.for_each(|c| match c {
                        V::T(v) => b.append_value(v.timestamp_micros()),
                        V::Null => b.append_null(),
                        other => panic!("{other:?}"),
                    });
                    Arc::new(b.finish())
                }
                DataType::List(_) => {
                    let mut b = ListBuilder::new(StringBuilder::new());
                    cells.for_each(|c| match c {
                        V::L(items) => {
                            for item in items {
                                b.values().append_option(item.as_deref());
                            }
                            b.append(true);
                        }
                        V::Null => b.append(false),
                        other => panic!("{other:?}"),
                    });
                    Arc::new(b.finish())
                }
                other => panic!("no builder for {other}"),
            };
            array
        })
        .collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

/// The columns every partitioned row starts with.
fn partition_row(key: &PartitionKey) -> TestRow {
    vec![
        ("pipeline", s(&key.pipeline)),
        ("target", s(key.target.as_str())),
        ("snapshot_date", V::D(key.snapshot_date)),
        ("fetched_at", V::T(ts(1_768_446_245_123_456))),
    ]
}

/// A summary row of `key` with `rank` and `backlinks`.
fn summary_row(key: &PartitionKey, rank: i64, backlinks: i64) -> TestRow {
    let mut row = partition_row(key);
    row.extend([("rank", V::I(rank)), ("backlinks", V::I(backlinks))]);
    row
}

fn breakdown_row(key: &PartitionKey, dimension: &str, k: &str, links: Option<i64>) -> TestRow {
    let mut row = partition_row(key);
    row.extend([
        ("dimension", s(dimension)),
        ("key", s(k)),
        ("links", links.map_or(V::Null, V::I)),
    ]);
    row
}

async fn write_partition(sink: &PgSink, key: &PartitionKey, parts: &[(Dataset, RecordBatch)]) {
    let datasets: Vec<Dataset> = parts.iter().map(|(d, _)| *d).collect();
    let mut tx = sink.begin(key, &datasets).await.unwrap();
    for (dataset, batch) in parts {
        tx.write(*dataset, batch).await.unwrap();
    }
    tx.commit().await.unwrap();
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn ranks(pool: &PgPool) -> Vec<(String, NaiveDate, Option<i64>)> {
    sqlx::query_as("SELECT target, snapshot_date, rank FROM summary ORDER BY target, snapshot_date")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Utf8 columns stored as `jsonb`: every `extra`, and the JSON objects of
/// `runs`.
fn is_json_column(table: &str, column: &str) -> bool {
    column == "extra"
        || (table == "runs" && ["rows", "unknown_fields", "settings"].contains(&column))
}

#[sqlx::test(migrations = "../../migrations")]
async fn every_table_mirrors_its_arrow_schema(pool: PgPool) {
    for dataset in Dataset::ALL {
        let table = dataset.name();
        let want: Vec<(String, String, bool)> = dataset
            .schema()
            .fields()
            .iter()
            .map(|f| {
                let ty = match f.data_type() {
                    DataType::Utf8 if is_json_column(table, f.name()) => "jsonb",
                    DataType::Utf8 => "text",
                    DataType::Int64 => "bigint",
                    DataType::Float64 => "double precision",
                    DataType::Boolean => "boolean",
                    DataType::Date32 => "date",
                    DataType::Timestamp(_, _) => "timestamp with time zone",
                    DataType::List(item) if item.data_type() == &DataType::Utf8 => "text[]",
                    other => panic!("{table}.{}: no Postgres type for {other}", f.name()),
                };
                (f.name().clone(), ty.to_owned(), !f.is_nullable())
            })
            .collect();
        let got: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull \
             FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
        )
        .bind(table)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            got, want,
            "table {table} (name, type, not null) differs from its Arrow schema"
        );
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_partition_reads_back_value_for_value(pool: PgPool) {
    let sink = PgSink::from_pool(pool.clone());
    let k = key("example.com", 15);
    let tricky = "quote \" apostrophe ' comma , newline \n tab \t backslash \\ end";
    let extra = r#"{"new_field":{"a":[1,"x\u0000y"]},"info":{"k":"v"}}"#;
    let mut full = partition_row(&k);
    full.extend([
        ("task_id", s("01150304-1535-0216-0000-a1b2c3d4e5f6")),
        ("cost", V::F(0.02003)),
        ("first_seen", V::T(ts(1_262_304_000_000_001))),
        ("lost_date", V::Null),
        ("rank", V::I(412)),
        ("backlinks", V::I(5_000_000_000)),
        ("backlinks_spam_score", V::Null),
        ("referring_domains", V::I(-1)),
        ("info_server", s(tricky)),
        ("info_cms", s("nul\0inside")),
        ("info_country", s("Ünïcødé 日本 🚀")),
        (
            "info_platform_type",
            V::L(vec![Some("cms".into()), None, Some("blogs".into())]),
        ),
        ("info_is_ip", V::B(false)),
        ("info_target_spam_score", V::I(7)),
        ("extra", s(extra)),
    ]);
    let k2 = key("empty.example.org", 15);
    let mut empty = partition_row(&k2);
    empty.extend([
        ("info_platform_type", V::L(vec![])),
        ("info_is_ip", V::B(true)),
    ]);
    let summary = batch(Dataset::Summary, &[full]);
    let breakdown = batch(
        Dataset::SummaryBreakdown,
        &[
            breakdown_row(&k, "tld", "com", Some(3_000_000_000)),
            breakdown_row(&k, "semantic_location", "", Some(2)),
            breakdown_row(&k, "country", "a\tb\\c", None),
        ],
    );
    write_partition(
        &sink,
        &k,
        &[
            (Dataset::Summary, summary),
            (Dataset::SummaryBreakdown, breakdown),
        ],
    )
    .await;
    write_partition(
        &sink,
        &k2,
        &[(Dataset::Summary, batch(Dataset::Summary, &[empty]))],
    )
    .await;

    let row = sqlx::query("SELECT * FROM summary WHERE target = 'example.com'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let text = |c: &str| row.try_get::<Option<String>, _>(c).unwrap();
    let int = |c: &str| row.try_get::<Option<i64>, _>(c).unwrap();
    assert_eq!(text("pipeline").as_deref(), Some("demo"));
    assert_eq!(row.get::<NaiveDate, _>("snapshot_date"), date(15));
    assert_eq!(
        row.get::<DateTime<Utc>, _>("fetched_at"),
        ts(1_768_446_245_123_456)
    );
    assert_eq!(
        row.get::<Option<DateTime<Utc>>, _>("first_seen"),
        Some(ts(1_262_304_000_000_001))
    );
    assert_eq!(row.get::<Option<DateTime<Utc>>, _>("lost_date"), None);
    assert_eq!(
        text("task_id").as_deref(),
        Some("01150304-1535-0216-0000-a1b2c3d4e5f6")
    );
    assert_eq!(row.get::<Option<f64>, _>("cost"), Some(0.02003));
    assert_eq!(int("rank"), Some(412));
    assert_eq!(int("backlinks"), Some(5_000_000_000));
    assert_eq!(int("backlinks_spam_score"), None);
    assert_eq!(int("referring_domains"), Some(-1));
    assert_eq!(int("crawled_pages"), None);
    assert_eq!(text("info_server").as_deref(), Some(tricky));
    assert_eq!(text("info_cms").as_deref(), Some("nul\u{FFFD}inside"));
    assert_eq!(text("info_country").as_deref(), Some("Ünïcødé 日本 🚀"));
    assert_eq!(text("info_ip_address"), None);
    assert_eq!(
        row.get::<Option<Vec<Option<String>>>, _>("info_platform_type"),
        Some(vec![Some("cms".into()), None, Some("blogs".into())])
    );
    assert_eq!(row.get::<Option<bool>, _>("info_is_ip"), Some(false));
    assert_eq!(int("info_target_spam_score"), Some(7));
    let (is_object, same): (String, bool) = sqlx::query_as(
        "SELECT jsonb_typeof(extra), extra = $1::jsonb FROM summary WHERE target = 'example.com'",
    )
    .bind(r#"{"new_field":{"a":[1,"x\ufffdy"]},"info":{"k":"v"}}"#)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((is_object.as_str(), same), ("object", true));

    let (list, is_ip, extra): (Option<Vec<Option<String>>>, Option<bool>, Option<String>) =
        sqlx::query_as(
            "SELECT info_platform_type, info_is_ip, extra::text FROM summary \
             WHERE target = 'empty.example.org'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((list, is_ip, extra), (Some(vec![]), Some(true), None));

    let breakdown: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT dimension, key, links FROM summary_breakdown ORDER BY dimension, key",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        breakdown,
        vec![
            ("country".into(), "a\tb\\c".into(), None),
            ("semantic_location".into(), String::new(), Some(2)),
            ("tld".into(), "com".into(), Some(3_000_000_000)),
        ]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn writing_a_partition_again_replaces_it(pool: PgPool) {
    let sink = PgSink::from_pool(pool.clone());
    let k = key("example.com", 15);
    let other = key("other.example", 15);
    write_partition(
        &sink,
        &other,
        &[(
            Dataset::Summary,
            batch(Dataset::Summary, &[summary_row(&other, 9, 9)]),
        )],
    )
    .await;
    for rank in [1, 2] {
        let keys: Vec<TestRow> = (0..3)
            .map(|i| breakdown_row(&k, "tld", &format!("k{i}"), Some(rank)))
            .collect();
        let mut tx = sink
            .begin(&k, &[Dataset::Summary, Dataset::SummaryBreakdown])
            .await
            .unwrap();
        tx.write(
            Dataset::Summary,
            &batch(Dataset::Summary, &[summary_row(&k, rank, 10)]),
        )
        .await
        .unwrap();
        // Several writes to one dataset of one partition add up.
        tx.write(
            Dataset::SummaryBreakdown,
            &batch(Dataset::SummaryBreakdown, &keys[..1]),
        )
        .await
        .unwrap();
        tx.write(
            Dataset::SummaryBreakdown,
            &batch(Dataset::SummaryBreakdown, &keys[1..]),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(
        ranks(&pool).await,
        vec![
            ("example.com".into(), date(15), Some(2)),
            ("other.example".into(), date(15), Some(9)),
        ]
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM summary_breakdown WHERE links = 2"
        )
        .await,
        3
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM summary_breakdown").await,
        3
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_partition_dropped_before_commit_keeps_the_previous_rows(pool: PgPool) {
    let sink = PgSink::from_pool(pool.clone());
    let k = key("example.com", 15);
    write_partition(
        &sink,
        &k,
        &[(
            Dataset::Summary,
            batch(Dataset::Summary, &[summary_row(&k, 1, 10)]),
        )],
    )
    .await;
    {
        let mut tx = sink.begin(&k, &[Dataset::Summary]).await.unwrap();
        tx.write(
            Dataset::Summary,
            &batch(Dataset::Summary, &[summary_row(&k, 2, 20)]),
        )
        .await
        .unwrap();
        // A failed write (a dataset the partition did not name) leaves it
        // open; dropping it rolls everything back.
        let err = tx
            .write(
                Dataset::SummaryBreakdown,
                &batch(Dataset::SummaryBreakdown, &[]),
            )
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            Error::NotInPartition {
                table: "summary_breakdown",
                ..
            }
        ));
    }
    assert_eq!(
        ranks(&pool).await,
        vec![("example.com".into(), date(15), Some(1))]
    );
    // The lock went with the transaction: the partition can be written again.
    write_partition(
        &sink,
        &k,
        &[(
            Dataset::Summary,
            batch(Dataset::Summary, &[summary_row(&k, 3, 30)]),
        )],
    )
    .await;
    assert_eq!(
        ranks(&pool).await,
        vec![("example.com".into(), date(15), Some(3))]
    );
}

/// Backlinks of positions `from..from + n` of `key`.
fn backlink_rows(key: &PartitionKey, from: i64, n: i64) -> RecordBatch {
    let rows: Vec<TestRow> = (from..from + n)
        .map(|position| {
            let mut row = partition_row(key);
            row.push(("position", V::I(position)));
            row
        })
        .collect();
    batch(Dataset::Backlinks, &rows)
}

#[sqlx::test(migrations = "../../migrations")]
async fn interleaved_pages_land_whole_past_the_hold_limit(pool: PgPool) {
    let sink = PgSink::from_pool(pool.clone());
    let k = key("example.com", 15);
    let datasets = [Dataset::Backlinks, Dataset::BacklinkRedirects];
    let mut p = sink.begin(&k, &datasets).await.unwrap();
    // Pages of 500 backlinks, each with 500 redirect hops of ~2 KB URLs
    // (~1 MB a page): the redirects of a few pages outgrow what the loader
    // holds while the backlinks COPY is open.
    let url = "https://example.org/".to_owned() + &"r".repeat(2000);
    let pages = 2 * crate::loader::HOLD_BYTES.div_ceil(500 * 2000) as i64;
    for page in 0..pages {
        p.write(Dataset::Backlinks, &backlink_rows(&k, page * 500, 500))
            .await
            .unwrap();
        let hops: Vec<TestRow> = (page * 500..page * 500 + 500)
            .map(|position| {
                let mut row = partition_row(&k);
                row.extend([
                    ("position", V::I(position)),
                    ("hop", V::I(0)),
                    ("url", s(&url)),
                ]);
                row
            })
            .collect();
        p.write(
            Dataset::BacklinkRedirects,
            &batch(Dataset::BacklinkRedirects, &hops),
        )
        .await
        .unwrap();
    }
    // Nothing is visible before the commit.
    assert_eq!(count(&pool, "SELECT count(*) FROM backlinks").await, 0);
    p.commit().await.unwrap();
    for table in ["backlinks", "backlink_redirects"] {
        let sql = format!(
            "SELECT count(DISTINCT position) FROM {table} WHERE position BETWEEN 0 AND {}",
            pages * 500 - 1
        );
        assert_eq!(count(&pool, &sql).await, pages * 500, "{table}");
        let all = format!("SELECT count(*) FROM {table}");
        assert_eq!(count(&pool, &all).await, pages * 500, "{table}");
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_row_the_server_refuses_fails_the_commit_and_keeps_the_previous_rows(pool: PgPool) {
    let sink = PgSink::from_pool(pool.clone());
    let k = key("example.com", 15);
    write_partition(&sink, &k, &[(Dataset::Backlinks, backlink_rows(&k, 0, 3))]).await;

    let mut p = sink.begin(&k, &[Dataset::Backlinks]).await.unwrap();
    // The same positions twice: the primary key refuses the second batch,
    // which the server sees only after the write has returned.
    let mut failed = None;
    for _ in 0..2 {
        if let Err(e) = p
            .write(Dataset::Backlinks, &backlink_rows(&k, 10, 100))
            .await
        {
            failed = Some(e);
            break;
        }
    }
    let err = match failed {
        Some(e) => e,
        None => p.commit().await.unwrap_err(),
    };
    assert!(
        err.to_string()
            .contains("replacing backlinks of example.com 2026-01-15"),
        "{err}"
    );
    let positions: Vec<i64> = sqlx::query_scalar("SELECT position FROM backlinks ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(positions, vec![0, 1, 2]);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_second_writer_of_the_same_partition_waits_for_the_first(pool: PgPool) {
    let sink = Arc::new(PgSink::from_pool(pool.clone()));
    let k = key("example.com", 15);
    let mut first = sink.begin(&k, &[Dataset::Summary]).await.unwrap();
    first
        .write(
            Dataset::Summary,
            &batch(Dataset::Summary, &[summary_row(&k, 1, 10)]),
        )
        .await
        .unwrap();
    let second = {
        let sink = sink.clone();
        let k = k.clone();
        tokio::spawn(async move {
            write_partition(
                &sink,
                &k,
                &[(
                    Dataset::Summary,
                    batch(Dataset::Summary, &[summary_row(&k, 2, 20)]),
                )],
            )
            .await;
        })
    };
    // Wait until the second writer is blocked on the partition's lock.
    loop {
        let waiting = count(
            &pool,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await;
        if waiting == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    first.commit().await.unwrap();
    second.await.unwrap();
    // Had the two interleaved (the second deleting before the first
    // committed), both rows would remain or the key would clash.
    assert_eq!(
        ranks(&pool).await,
        vec![("example.com".into(), date(15), Some(2))]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn begin_refuses_the_ledger_datasets(pool: PgPool) {
    let sink = PgSink::from_pool(pool);
    let err = sink
        .begin(
            &key("example.com", 15),
            &[Dataset::Summary, Dataset::Requests],
        )
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::NotPartitioned { table: "requests" }),
        "{err}"
    );
}

fn request_row(run_id: &str, target: &str, cost: f64) -> TestRow {
    vec![
        ("run_id", s(run_id)),
        ("pipeline", s("demo")),
        ("snapshot_date", V::D(date(15))),
        ("endpoint", s("summary")),
        ("target", s(target)),
        ("page", V::I(0)),
        ("started_at", V::T(ts(1_768_446_245_000_000))),
        ("attempts", V::I(2)),
        ("http_status", V::I(200)),
        ("status_code", V::I(20000)),
        ("cost", V::F(cost)),
        ("bytes", V::I(4_321)),
        ("latency_ms", V::I(120)),
        ("task_id", V::Null),
        ("error", V::Null),
        ("replayed", V::B(false)),
    ]
}

fn run_row(status: &str, finished: Option<i64>, rows: &str) -> TestRow {
    vec![
        ("run_id", s("run-1")),
        ("pipeline", s("demo")),
        ("snapshot_date", V::D(date(15))),
        ("started_at", V::T(ts(1_768_446_000_000_000))),
        ("finished_at", finished.map_or(V::Null, |t| V::T(ts(t)))),
        ("status", s(status)),
        ("units_total", V::I(3)),
        ("units_ok", V::I(if finished.is_some() { 3 } else { 0 })),
        ("units_failed", V::I(0)),
        ("requests", V::I(3)),
        ("retries", V::I(1)),
        ("cost_usd", V::F(0.06)),
        ("rows", s(rows)),
        ("unknown_fields", s("{}")),
        ("settings", s(r#"{"max_in_flight":8}"#)),
        ("error", V::Null),
        ("replayed", V::I(0)),
        ("replayed_cost_usd", V::F(0.0)),
    ]
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_ledger_appends_requests_and_upserts_runs(pool: PgPool) {
    let sink = PgSink::from_pool(pool.clone());
    sink.append(
        Dataset::Requests,
        &batch(
            Dataset::Requests,
            &[
                request_row("run-1", "a.com", 0.02),
                request_row("run-1", "b.com", 0.02),
            ],
        ),
    )
    .await
    .unwrap();
    sink.append(
        Dataset::Requests,
        &batch(Dataset::Requests, &[request_row("run-1", "a.com", 0.02)]),
    )
    .await
    .unwrap();
    let (n, cost): (i64, f64) =
        sqlx::query_as("SELECT count(*), sum(cost) FROM requests WHERE run_id = 'run-1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(n, 3);
    assert!((cost - 0.06).abs() < 1e-12, "{cost}");

    sink.upsert_run(&batch(Dataset::Runs, &[run_row("running", None, "{}")]))
        .await
        .unwrap();
    let first: (String, Option<DateTime<Utc>>, i64) =
        sqlx::query_as("SELECT status, finished_at, units_ok FROM runs")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(first, ("running".into(), None, 0));

    sink.upsert_run(&batch(
        Dataset::Runs,
        &[run_row(
            "succeeded",
            Some(1_768_446_300_000_000),
            r#"{"summary":3,"summary_breakdown":40}"#,
        )],
    ))
    .await
    .unwrap();
    type Run = (String, Option<DateTime<Utc>>, i64, i64, String, String);
    let runs: Vec<Run> = sqlx::query_as(
        "SELECT status, finished_at, units_ok, (rows->>'summary_breakdown')::bigint, \
         jsonb_typeof(rows), jsonb_typeof(settings) FROM runs",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        runs,
        vec![(
            "succeeded".into(),
            Some(ts(1_768_446_300_000_000)),
            3,
            40,
            "object".into(),
            "object".into(),
        )]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_batch_column_the_table_lacks_is_refused(pool: PgPool) {
    let sink = PgSink::from_pool(pool.clone());
    // A runs batch sent to requests: runs has columns requests lacks.
    let err = sink
        .append(
            Dataset::Requests,
            &batch(Dataset::Runs, &[run_row("running", None, "{}")]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownColumn { table, column } if table == "requests" && column == "finished_at"),
        "{err}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM requests").await, 0);
}

#[sqlx::test(migrations = "../../migrations")]
async fn summary_trend_shows_the_change_since_the_previous_snapshot(pool: PgPool) {
    let sink = PgSink::from_pool(pool.clone());
    for (target, day, rank, backlinks) in [
        ("a.com", 10, 100, 1_000),
        ("a.com", 15, 130, 900),
        ("b.com", 15, 50, 5),
    ] {
        let k = key(target, day);
        write_partition(
            &sink,
            &k,
            &[(
                Dataset::Summary,
                batch(Dataset::Summary, &[summary_row(&k, rank, backlinks)]),
            )],
        )
        .await;
    }
    type Trend = (
        String,
        NaiveDate,
        Option<NaiveDate>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let trend: Vec<Trend> = sqlx::query_as(
        "SELECT target, snapshot_date, previous_snapshot_date, rank_change, backlinks_change, \
         referring_domains_change FROM summary_trend ORDER BY target, snapshot_date",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        trend,
        vec![
            ("a.com".into(), date(10), None, None, None, None),
            (
                "a.com".into(),
                date(15),
                Some(date(10)),
                Some(30),
                Some(-100),
                None
            ),
            ("b.com".into(), date(15), None, None, None, None),
        ]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn connect_errors_never_show_the_password(pool: PgPool) {
    let options = pool.connect_options();
    let (host, port) = (options.get_host().to_owned(), options.get_port());
    let password = "pw-Never-Shown-42";
    let cases = [
        // A role the server does not know.
        (
            format!("postgres://no_such_role_x7:{password}@{host}:{port}/postgres"),
            "connect",
        ),
        // Nobody listening.
        (
            format!("postgres://postgres:{password}@127.0.0.1:1/warehouse"),
            "connect",
        ),
        // Not a URL the driver accepts.
        (
            format!("postgres://postgres:{password}@{host}:notaport/warehouse"),
            "invalid",
        ),
        // A URL, but a setting the driver refuses, quoting its value.
        (
            format!("postgres://postgres:{password}@{host}:{port}/w?sslmode=x{password}"),
            "invalid with cause",
        ),
    ];
    for (url, expected) in cases {
        let err = PgSink::connect(&Secret::new(url.as_str()), 2)
            .await
            .err()
            .unwrap();
        // Every message of the chain, and the debug form.
        let mut message = format!("{err:?}");
        let mut next: Option<&dyn std::error::Error> = Some(&err);
        while let Some(e) = next {
            message.push_str(&format!(" / {e}"));
            next = e.source();
        }
        let kind = match &err {
            Error::Connect { .. } => "connect",
            Error::InvalidUrl { source: None } => "invalid",
            Error::InvalidUrl { source: Some(_) } => "invalid with cause",
            _ => "other",
        };
        assert_eq!(kind, expected, "{message}");
        assert!(!message.contains(password), "{message}");
        assert!(!message.contains("Never-Shown"), "{message}");
        if expected == "invalid with cause" {
            assert!(message.contains("x***"), "{message}");
        }
    }
    let err = PgSink::connect(
        &Secret::new(format!(
            "postgres://postgres:{password}@127.0.0.1:1/warehouse"
        )),
        2,
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .starts_with("cannot connect to database warehouse on 127.0.0.1:1 as user postgres: "),
        "{err}"
    );
    // The driver's chain is kept, redacted: down to the refused socket.
    let mut depth = 0;
    let mut next = std::error::Error::source(&err);
    while let Some(e) = next {
        assert!(e.is::<RedactedError>());
        depth += 1;
        next = e.source();
    }
    assert!(depth >= 1, "{err:?}");
}

#[sqlx::test(migrations = "../../migrations")]
async fn connect_and_migrate_on_a_migrated_database(pool: PgPool) {
    let options = pool.connect_options();
    let url = format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let sink = PgSink::connect(&Secret::new(url), 2).await.unwrap();
    // Already applied by the test harness: applying again is a no-op.
    sink.migrate().await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_setting('application_name')")
        .fetch_one(sink.pool())
        .await
        .unwrap();
    assert_eq!(name, "backlinks");
}

/// Fails to compile if a future of the sink cannot move between threads
/// (the pipeline runs partitions on spawned tasks).
#[allow(dead_code)]
fn futures_are_send(sink: &PgSink, key: &PartitionKey, batch: &RecordBatch, mut p: PgPartition) {
    fn send<T: Send>(_: T) {}
    send(PgSink::connect(&Secret::new(""), 1));
    send(sink.migrate());
    send(sink.begin(key, &[]));
    send(p.write(Dataset::Summary, batch));
    send(p.commit());
    send(sink.append(Dataset::Requests, batch));
    send(sink.upsert_run(batch));
}
