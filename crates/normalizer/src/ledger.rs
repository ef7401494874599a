//! The run ledger as rows: `requests` and `runs` batches.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Array, Date32Builder, Float64Array, Float64Builder, Int64Array,
    Int64Builder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use backlinks_model::{Dataset, RequestRecord, RunRecord};
use chrono::NaiveDate;

use crate::columns::days_since_epoch;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `requests` rows of one run.
pub fn requests_batch(
    run_id: &str,
    pipeline: &str,
    snapshot_date: NaiveDate,
    records: &[RequestRecord],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = records.len();
    let mut run = StringBuilder::with_capacity(n, n * 36);
    let mut pipe = StringBuilder::with_capacity(n, n * pipeline.len());
    let mut date = Date32Builder::with_capacity(n);
    let mut endpoint = StringBuilder::with_capacity(n, n * 8);
    let mut target = StringBuilder::with_capacity(n, n * 32);
    let mut page = Int64Builder::with_capacity(n);
    let mut started_at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut attempts = Int64Builder::with_capacity(n);
    let mut http_status = Int64Builder::with_capacity(n);
    let mut status_code = Int64Builder::with_capacity(n);
    let mut cost = Float64Builder::with_capacity(n);
    let mut bytes = Int64Builder::with_capacity(n);
    let mut latency = Int64Builder::with_capacity(n);
    let mut task_id = StringBuilder::with_capacity(n, n * 36);
    let mut error = StringBuilder::new();
    let mut replayed = BooleanBuilder::with_capacity(n);
    let mut announced_limit = Int64Builder::with_capacity(n);
    for r in records {
        run.append_value(run_id);
        pipe.append_value(pipeline);
        date.append_value(days_since_epoch(snapshot_date));
        endpoint.append_value(r.endpoint.name());
        target.append_value(&r.target);
        page.append_value(r.page);
        started_at.append_value(r.started_at.timestamp_micros());
        attempts.append_value(i64::from(r.attempts));
        http_status.append_option(r.http_status.map(i64::from));
        status_code.append_option(r.status_code);
        cost.append_value(r.cost);
        bytes.append_value(to_i64(r.bytes));
        latency.append_value(to_i64(r.latency_ms));
        task_id.append_option(r.task_id.as_deref());
        error.append_option(r.error.as_deref());
        replayed.append_value(r.replayed);
        announced_limit.append_option(r.announced_limit.map(i64::from));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(run.finish()),
        Arc::new(pipe.finish()),
        Arc::new(date.finish()),
        Arc::new(endpoint.finish()),
        Arc::new(target.finish()),
        Arc::new(page.finish()),
        Arc::new(started_at.finish()),
        Arc::new(attempts.finish()),
        Arc::new(http_status.finish()),
        Arc::new(status_code.finish()),
        Arc::new(cost.finish()),
        Arc::new(bytes.finish()),
        Arc::new(latency.finish()),
        Arc::new(task_id.finish()),
        Arc::new(error.finish()),
        Arc::new(replayed.finish()),
        Arc::new(announced_limit.finish()),
    ];
    RecordBatch::try_new(Dataset::Requests.schema(), columns)
}

/// The one `runs` row of a run.
pub fn run_batch(run: &RunRecord) -> Result<RecordBatch, arrow::error::ArrowError> {
    let text = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
    let int = |v: i64| Arc::new(Int64Array::from(vec![v])) as ArrayRef;
    let ts = |v: Option<i64>| {
        Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone("UTC")) as ArrayRef
    };
    let columns: Vec<ArrayRef> = vec![
        text(&run.run_id),
        text(&run.pipeline),
        Arc::new(Date32Array::from(vec![days_since_epoch(run.snapshot_date)])),
        ts(Some(run.started_at.timestamp_micros())),
        ts(run.finished_at.map(|t| t.timestamp_micros())),
        text(run.status.as_str()),
        int(run.units_total),
        int(run.units_ok),
        int(run.units_failed),
        int(run.requests),
        int(run.retries),
        Arc::new(Float64Array::from(vec![run.cost_usd])),
        text(&run.rows),
        text(&run.unknown_fields),
        text(&run.settings),
        Arc::new(StringArray::from(vec![run.error.as_deref()])),
        int(run.replayed),
        Arc::new(Float64Array::from(vec![run.replayed_cost_usd])),
    ];
    RecordBatch::try_new(Dataset::Runs.schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::BooleanArray;
    use backlinks_model::Endpoint;
    use chrono::{TimeZone, Utc};

    #[test]
    fn ledger_rows_match_their_schemas() {
        let record = RequestRecord {
            endpoint: Endpoint::Summary,
            target: "example.com".into(),
            page: 0,
            started_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            attempts: 2,
            http_status: Some(200),
            status_code: Some(20000),
            cost: 0.02,
            bytes: 1234,
            latency_ms: 80,
            task_id: Some("t".into()),
            error: None,
            replayed: false,
            announced_limit: Some(2000),
        };
        let date = NaiveDate::from_ymd_opt(2026, 1, 2).unwrap();
        let replayed = RequestRecord {
            replayed: true,
            announced_limit: None,
            ..record.clone()
        };
        let batch = requests_batch("r1", "demo", date, &[record, replayed]).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let flags = batch
            .column_by_name("replayed")
            .unwrap()
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap();
        assert_eq!((flags.value(0), flags.value(1)), (false, true));
        let limits = batch
            .column_by_name("announced_limit")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(
            (limits.value(0), arrow::array::Array::is_null(limits, 1)),
            (2000, true),
            "the announced limit, or NULL when none was sent"
        );
        let run = RunRecord {
            run_id: "r1".into(),
            pipeline: "demo".into(),
            snapshot_date: date,
            started_at: Utc::now(),
            finished_at: None,
            status: backlinks_model::ledger::RunStatus::Running,
            units_total: 2,
            units_ok: 0,
            units_failed: 0,
            requests: 0,
            retries: 0,
            cost_usd: 0.0,
            rows: "{}".into(),
            unknown_fields: "{}".into(),
            settings: "{}".into(),
            error: None,
            replayed: 3,
            replayed_cost_usd: 0.06,
        };
        let batch = run_batch(&run).unwrap();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.column_by_name("finished_at").unwrap().null_count(), 1);
        let replayed = batch
            .column_by_name("replayed")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(replayed.value(0), 3);
    }
}
