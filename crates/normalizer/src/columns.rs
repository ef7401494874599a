//! Builders for the columns every partitioned dataset starts with.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use backlinks_model::Dataset;
use chrono::NaiveDate;

use crate::{Error, Result, RowContext};

/// The `pipeline`, `target`, `snapshot_date`, `fetched_at` columns.
pub(crate) struct PartitionColumns {
    pipeline: StringBuilder,
    target: StringBuilder,
    snapshot_date: Date32Builder,
    fetched_at: TimestampMicrosecondBuilder,
}

impl PartitionColumns {
    pub(crate) fn with_capacity(rows: usize) -> Self {
        Self {
            pipeline: StringBuilder::with_capacity(rows, rows * 16),
            target: StringBuilder::with_capacity(rows, rows * 32),
            snapshot_date: Date32Builder::with_capacity(rows),
            fetched_at: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
        }
    }

    pub(crate) fn append(&mut self, ctx: &RowContext<'_>) {
        self.pipeline.append_value(&ctx.key.pipeline);
        self.target.append_value(ctx.key.target.as_str());
        self.snapshot_date
            .append_value(days_since_epoch(ctx.key.snapshot_date));
        self.fetched_at
            .append_value(ctx.fetched_at.timestamp_micros());
    }

    /// Appends `rows` rows at once: the values are the same on every row.
    pub(crate) fn append_n(&mut self, ctx: &RowContext<'_>, rows: usize) {
        self.pipeline.append_value_n(&ctx.key.pipeline, rows);
        self.target.append_value_n(ctx.key.target.as_str(), rows);
        self.snapshot_date
            .append_value_n(days_since_epoch(ctx.key.snapshot_date), rows);
        self.fetched_at
            .append_value_n(ctx.fetched_at.timestamp_micros(), rows);
    }

    pub(crate) fn finish(mut self) -> [ArrayRef; 4] {
        [
            Arc::new(self.pipeline.finish()),
            Arc::new(self.target.finish()),
            Arc::new(self.snapshot_date.finish()),
            Arc::new(self.fetched_at.finish()),
        ]
    }
}

/// The columns as a batch of `dataset`; a mismatch names the target.
pub(crate) fn batch(
    ctx: &RowContext<'_>,
    dataset: Dataset,
    columns: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    RecordBatch::try_new(dataset.schema(), columns).map_err(|source| Error::Arrow {
        target: ctx.key.target.to_string(),
        dataset: dataset.name(),
        source,
    })
}

/// Arrow's `Date32`: days since 1970-01-01.
pub(crate) fn days_since_epoch(date: NaiveDate) -> i32 {
    let days = date.signed_duration_since(NaiveDate::default()).num_days();
    // Dates come from the run's snapshot date, well inside i32's range.
    i32::try_from(days).unwrap_or(i32::MAX)
}
