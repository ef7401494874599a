//! `summary/live` results → `summary` and `summary_breakdown` batches.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use backlinks_model::Dataset;
use backlinks_model::api::{SummaryResult, decode_envelope};
use backlinks_model::schema::SUMMARY_COUNTS;
use backlinks_model::time::parse_api_datetime;
use serde_json::{Map, Value};

use crate::columns::{PartitionColumns, batch};
use crate::{Error, Result, RowContext, UnknownFields};

/// The rows of one summary response.
#[derive(Debug)]
pub struct SummaryRows {
    pub summary: RecordBatch,
    pub breakdown: RecordBatch,
    /// Fields of the response the schema does not know (kept in `extra`).
    pub unknown_fields: UnknownFields,
}

/// Decodes a summary/live response body and flattens its result.
///
/// One `summary` row per result item. A task without results (`result` is
/// `null`, or status 40102) still yields one `summary` row with its task id
/// and cost and every metric `NULL`: the request was paid for, and the row
/// records that the target was looked at on that date.
pub fn summary_rows(ctx: &RowContext<'_>, body: &[u8]) -> Result<SummaryRows> {
    let target = || ctx.key.target.to_string();
    let envelope =
        decode_envelope::<Vec<SummaryResult>>("summary", body).map_err(|source| Error::Decode {
            target: target(),
            source,
        })?;
    let results = envelope
        .tasks
        .into_iter()
        .flatten()
        .next()
        .and_then(|task| task.result)
        .unwrap_or_default();
    let placeholder = [SummaryResult::default()];
    let items: &[SummaryResult] = if results.is_empty() {
        &placeholder
    } else {
        &results
    };

    let mut unknown_fields = UnknownFields::new();
    let summary = summary_batch(ctx, items, &mut unknown_fields)?;
    let breakdown = breakdown_batch(ctx, items)?;
    Ok(SummaryRows {
        summary,
        breakdown,
        unknown_fields,
    })
}

fn summary_batch(
    ctx: &RowContext<'_>,
    items: &[SummaryResult],
    unknown: &mut UnknownFields,
) -> Result<RecordBatch> {
    let rows = items.len();
    let mut partition = PartitionColumns::with_capacity(rows);
    let mut task_id = StringBuilder::new();
    let mut cost = Float64Builder::with_capacity(rows);
    let mut first_seen = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
    let mut lost_date = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
    let mut counts: Vec<Int64Builder> = SUMMARY_COUNTS
        .iter()
        .map(|_| Int64Builder::with_capacity(rows))
        .collect();
    let mut server = StringBuilder::new();
    let mut cms = StringBuilder::new();
    let mut platform_type = ListBuilder::new(StringBuilder::new());
    let mut ip_address = StringBuilder::new();
    let mut country = StringBuilder::new();
    let mut is_ip = BooleanBuilder::with_capacity(rows);
    let mut target_spam_score = Int64Builder::with_capacity(rows);
    let mut extra = StringBuilder::new();

    for item in items {
        partition.append(ctx);
        task_id.append_option(ctx.task_id);
        cost.append_value(ctx.cost);
        first_seen.append_option(timestamp(ctx, "first_seen", item.first_seen.as_deref())?);
        lost_date.append_option(timestamp(ctx, "lost_date", item.lost_date.as_deref())?);
        let info = item.info.clone().unwrap_or_default();
        for (builder, name) in counts.iter_mut().zip(SUMMARY_COUNTS) {
            builder.append_option(count(item, name));
        }
        server.append_option(info.server.as_deref());
        cms.append_option(info.cms.as_deref());
        match &info.platform_type {
            Some(values) => {
                for v in values {
                    platform_type.values().append_option(v.as_deref());
                }
                platform_type.append(true);
            }
            None => platform_type.append(false),
        }
        ip_address.append_option(info.ip_address.as_deref());
        country.append_option(info.country.as_deref());
        is_ip.append_option(info.is_ip);
        target_spam_score.append_option(info.target_spam_score);
        extra.append_option(extra_json(&item.extra, &info.extra, unknown));
    }

    let [pipeline, target, snapshot_date, fetched_at] = partition.finish();
    let mut columns: Vec<ArrayRef> = vec![
        pipeline,
        target,
        snapshot_date,
        fetched_at,
        Arc::new(task_id.finish()),
        Arc::new(cost.finish()),
        Arc::new(first_seen.finish()),
        Arc::new(lost_date.finish()),
    ];
    columns.extend(counts.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.extend([
        Arc::new(server.finish()) as ArrayRef,
        Arc::new(cms.finish()),
        Arc::new(platform_type.finish()),
        Arc::new(ip_address.finish()),
        Arc::new(country.finish()),
        Arc::new(is_ip.finish()),
        Arc::new(target_spam_score.finish()),
        Arc::new(extra.finish()),
    ]);
    batch(ctx, Dataset::Summary, columns)
}

fn breakdown_batch(ctx: &RowContext<'_>, items: &[SummaryResult]) -> Result<RecordBatch> {
    let mut partition = PartitionColumns::with_capacity(64);
    let mut dimension = StringBuilder::new();
    let mut key = StringBuilder::new();
    let mut links = Int64Builder::new();
    for item in items {
        for (name, map) in item.breakdowns() {
            for (k, v) in map.into_iter().flatten() {
                partition.append(ctx);
                dimension.append_value(name);
                key.append_value(k);
                links.append_option(*v);
            }
        }
    }
    let [pipeline, target, snapshot_date, fetched_at] = partition.finish();
    let columns: Vec<ArrayRef> = vec![
        pipeline,
        target,
        snapshot_date,
        fetched_at,
        Arc::new(dimension.finish()),
        Arc::new(key.finish()),
        Arc::new(links.finish()),
    ];
    batch(ctx, Dataset::SummaryBreakdown, columns)
}

/// The integer scalar of the `summary` column `name`.
fn count(item: &SummaryResult, name: &str) -> Option<i64> {
    match name {
        "backlinks" => item.backlinks,
        "backlinks_spam_score" => item.backlinks_spam_score,
        "crawled_pages" => item.crawled_pages,
        "internal_links_count" => item.internal_links_count,
        "external_links_count" => item.external_links_count,
        "broken_backlinks" => item.broken_backlinks,
        "broken_pages" => item.broken_pages,
        "referring_domains" => item.referring_domains,
        "referring_domains_nofollow" => item.referring_domains_nofollow,
        "referring_main_domains" => item.referring_main_domains,
        "referring_main_domains_nofollow" => item.referring_main_domains_nofollow,
        "referring_ips" => item.referring_ips,
        "referring_subnets" => item.referring_subnets,
        "referring_pages" => item.referring_pages,
        "referring_pages_nofollow" => item.referring_pages_nofollow,
        "rank" => item.rank,
        // SUMMARY_COUNTS and this match are kept together by the test
        // `every_count_column_is_mapped`.
        _ => None,
    }
}

fn timestamp(
    ctx: &RowContext<'_>,
    field: &'static str,
    value: Option<&str>,
) -> Result<Option<i64>> {
    value
        .map(|v| {
            parse_api_datetime(field, v)
                .map(|d| d.timestamp_micros())
                .map_err(|source| Error::Decode {
                    target: ctx.key.target.to_string(),
                    source,
                })
        })
        .transpose()
}

/// Unknown fields as one JSON object (`info`'s under `"info"`), counted by
/// dotted name. `None` when there are none.
fn extra_json(
    top: &Map<String, Value>,
    info: &Map<String, Value>,
    unknown: &mut UnknownFields,
) -> Option<String> {
    if top.is_empty() && info.is_empty() {
        return None;
    }
    let mut all = top.clone();
    for name in top.keys() {
        *unknown.entry(name.clone()).or_default() += 1;
    }
    if !info.is_empty() {
        for name in info.keys() {
            *unknown.entry(format!("info.{name}")).or_default() += 1;
        }
        all.insert("info".into(), Value::Object(info.clone()));
    }
    Some(Value::Object(all).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::util::pretty::pretty_format_batches;
    use backlinks_model::{PartitionKey, Target};
    use chrono::{NaiveDate, TimeZone, Utc};

    fn key() -> PartitionKey {
        PartitionKey {
            pipeline: "demo".into(),
            target: Target::from_normalized("example.com"),
            snapshot_date: NaiveDate::from_ymd_opt(2026, 11, 24).unwrap(),
        }
    }

    fn rows(body: &str) -> Result<SummaryRows> {
        let key = key();
        let ctx = RowContext {
            key: &key,
            fetched_at: Utc.with_ymd_and_hms(2026, 11, 24, 3, 0, 0).unwrap(),
            task_id: Some("task-1"),
            cost: 0.02003,
        };
        summary_rows(&ctx, body.as_bytes())
    }

    const BODY: &str = r#"{"status_code":20000,"tasks":[{"id":"task-1","status_code":20000,"cost":0.02003,"result":[{
        "target":"example.com","first_seen":"2019-01-01 00:00:00 +00:00","lost_date":null,
        "rank":512,"backlinks":3000000000,"backlinks_spam_score":3,"crawled_pages":10,
        "info":{"server":"nginx","cms":null,"platform_type":["cms","blogs"],"ip_address":"1.2.3.4",
                "country":"US","is_ip":false,"target_spam_score":1,"new_info":true},
        "referring_domains":70,
        "referring_links_tld":{"com":5,"org":null},
        "referring_links_semantic_locations":{"":4,"article":2},
        "referring_links_countries":{},
        "surprise":[1,2]
    }]}]}"#;

    #[test]
    fn flattens_a_summary_result() {
        let rows = rows(BODY).unwrap();
        insta::assert_snapshot!(pretty_format_batches(&[rows.summary]).unwrap().to_string());
        insta::assert_snapshot!(
            pretty_format_batches(&[rows.breakdown])
                .unwrap()
                .to_string()
        );
        let unknown: Vec<_> = rows.unknown_fields.into_iter().collect();
        assert_eq!(
            unknown,
            [
                ("info.new_info".to_string(), 1),
                ("surprise".to_string(), 1)
            ]
        );
    }

    #[test]
    fn empty_results_keep_one_row_with_the_cost() {
        for body in [
            r#"{"status_code":20000,"tasks":[{"status_code":40102,"cost":0.02003,"result":null}]}"#,
            r#"{"status_code":20000,"tasks":[{"status_code":20000,"result":[]}]}"#,
        ] {
            let rows = rows(body).unwrap();
            assert_eq!(rows.summary.num_rows(), 1);
            assert_eq!(rows.breakdown.num_rows(), 0);
            let backlinks = rows.summary.column_by_name("backlinks").unwrap();
            assert_eq!(backlinks.null_count(), 1);
            let cost = rows.summary.column_by_name("cost").unwrap();
            assert_eq!(cost.null_count(), 0);
        }
    }

    #[test]
    fn bad_values_name_the_target_and_field() {
        let err = rows(r#"{"tasks":[{"result":[{"first_seen":"soon"}]}]}"#).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("example.com") && msg.contains("first_seen"),
            "{msg}"
        );
        let err = rows(r#"{"tasks":[{"result":[{"backlinks":[1]}]}]}"#).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("tasks[0].result[0].backlinks"), "{msg}");
        let err = rows(r#"{"tasks":[{"result":[{"backli"#).unwrap_err();
        assert!(
            err.to_string().contains("malformed summary response"),
            "{err}"
        );
    }

    #[test]
    fn every_count_column_is_mapped() {
        let item: SummaryResult = serde_json::from_value(serde_json::json!({
            "backlinks": 1, "backlinks_spam_score": 1, "crawled_pages": 1,
            "internal_links_count": 1, "external_links_count": 1, "broken_backlinks": 1,
            "broken_pages": 1, "referring_domains": 1, "referring_domains_nofollow": 1,
            "referring_main_domains": 1, "referring_main_domains_nofollow": 1,
            "referring_ips": 1, "referring_subnets": 1, "referring_pages": 1,
            "referring_pages_nofollow": 1, "rank": 1
        }))
        .unwrap();
        for name in SUMMARY_COUNTS {
            assert_eq!(count(&item, name), Some(1), "{name}");
        }
    }
}
