//! The Arrow schema of every dataset: the data contract of `docs/data-contract.md`,
//! defined once. The normalizer builds batches with these schemas, the sinks
//! write whatever columns a batch has, and `migrations/` mirror them (a test
//! in the Postgres sink holds the two together).

use std::sync::{Arc, LazyLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// A table (Postgres) or dataset directory (Parquet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dataset {
    /// One row per partition: the scalars of a summary result.
    Summary,
    /// The six link-count maps of a summary as long rows.
    SummaryBreakdown,
    /// The request ledger: one row per request of a run.
    Requests,
    /// The run ledger: one row per run.
    Runs,
    /// One row per backlink item of backlinks/live.
    Backlinks,
    /// One row per hop of a backlink's `indirect_link_path`.
    BacklinkRedirects,
}

impl Dataset {
    /// Datasets that hold partition data (replaced per pipeline, target and
    /// snapshot date), as opposed to the append-only ledger.
    pub const PARTITIONED: [Dataset; 4] = [
        Dataset::Summary,
        Dataset::SummaryBreakdown,
        Dataset::Backlinks,
        Dataset::BacklinkRedirects,
    ];

    /// Every dataset.
    pub const ALL: [Dataset; 6] = [
        Dataset::Summary,
        Dataset::SummaryBreakdown,
        Dataset::Requests,
        Dataset::Runs,
        Dataset::Backlinks,
        Dataset::BacklinkRedirects,
    ];

    /// The table and directory name.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Summary => "summary",
            Dataset::SummaryBreakdown => "summary_breakdown",
            Dataset::Requests => "requests",
            Dataset::Runs => "runs",
            Dataset::Backlinks => "backlinks",
            Dataset::BacklinkRedirects => "backlink_redirects",
        }
    }

    /// The Arrow schema of the dataset's batches.
    pub fn schema(self) -> SchemaRef {
        match self {
            Dataset::Summary => SUMMARY.clone(),
            Dataset::SummaryBreakdown => SUMMARY_BREAKDOWN.clone(),
            Dataset::Requests => REQUESTS.clone(),
            Dataset::Runs => RUNS.clone(),
            Dataset::Backlinks => BACKLINKS.clone(),
            Dataset::BacklinkRedirects => BACKLINK_REDIRECTS.clone(),
        }
    }
}

/// UTC timestamps with microsecond precision (Postgres `timestamptz`).
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A list of nullable strings (Postgres `text[]`).
pub fn text_list_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// The columns every partitioned row starts with.
fn partition_columns() -> Vec<Field> {
    vec![
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("snapshot_date", DataType::Date32, false),
        Field::new("fetched_at", timestamp_type(), false),
    ]
}

/// The integer scalars of a summary result, in column order.
pub const SUMMARY_COUNTS: [&str; 16] = [
    "rank",
    "backlinks",
    "backlinks_spam_score",
    "crawled_pages",
    "internal_links_count",
    "external_links_count",
    "broken_backlinks",
    "broken_pages",
    "referring_domains",
    "referring_domains_nofollow",
    "referring_main_domains",
    "referring_main_domains_nofollow",
    "referring_ips",
    "referring_subnets",
    "referring_pages",
    "referring_pages_nofollow",
];

static SUMMARY: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = partition_columns();
    fields.extend([
        Field::new("task_id", DataType::Utf8, true),
        Field::new("cost", DataType::Float64, true),
        Field::new("first_seen", timestamp_type(), true),
        Field::new("lost_date", timestamp_type(), true),
    ]);
    fields.extend(
        SUMMARY_COUNTS
            .iter()
            .map(|name| Field::new(*name, DataType::Int64, true)),
    );
    fields.extend([
        Field::new("info_server", DataType::Utf8, true),
        Field::new("info_cms", DataType::Utf8, true),
        Field::new("info_platform_type", text_list_type(), true),
        Field::new("info_ip_address", DataType::Utf8, true),
        Field::new("info_country", DataType::Utf8, true),
        Field::new("info_is_ip", DataType::Boolean, true),
        Field::new("info_target_spam_score", DataType::Int64, true),
        Field::new("extra", DataType::Utf8, true),
    ]);
    Arc::new(Schema::new(fields))
});

static SUMMARY_BREAKDOWN: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = partition_columns();
    fields.extend([
        Field::new("dimension", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("links", DataType::Int64, true),
    ]);
    Arc::new(Schema::new(fields))
});

/// The fields of a backlinks/live item stored in `backlinks` under their own
/// name and with their column type, in column order. They sit between
/// `task_id` and the [`BACKLINK_RANKED_KEYWORDS`] columns.
pub const BACKLINK_ITEM_FIELDS: [(&str, ItemType); 44] = {
    use ItemType::{Boolean, Int64, Text, TextList, Timestamp};
    [
        ("type", Text),
        ("domain_from", Text),
        ("url_from", Text),
        ("url_from_https", Boolean),
        ("domain_to", Text),
        ("url_to", Text),
        ("url_to_https", Boolean),
        ("tld_from", Text),
        ("is_new", Boolean),
        ("is_lost", Boolean),
        ("backlink_spam_score", Int64),
        ("rank", Int64),
        ("page_from_rank", Int64),
        ("domain_from_rank", Int64),
        ("domain_from_platform_type", TextList),
        ("domain_from_is_ip", Boolean),
        ("domain_from_ip", Text),
        ("domain_from_country", Text),
        ("page_from_external_links", Int64),
        ("page_from_internal_links", Int64),
        ("page_from_size", Int64),
        ("page_from_encoding", Text),
        ("page_from_language", Text),
        ("page_from_title", Text),
        ("page_from_status_code", Int64),
        ("first_seen", Timestamp),
        ("prev_seen", Timestamp),
        ("last_seen", Timestamp),
        ("item_type", Text),
        ("attributes", TextList),
        ("dofollow", Boolean),
        ("original", Boolean),
        ("alt", Text),
        ("image_url", Text),
        ("anchor", Text),
        ("text_pre", Text),
        ("text_post", Text),
        ("semantic_location", Text),
        ("links_count", Int64),
        ("group_count", Int64),
        ("is_broken", Boolean),
        ("url_to_status_code", Int64),
        ("url_to_spam_score", Int64),
        ("url_to_redirect_target", Text),
    ]
};

/// Columns of near-unique free text (URLs, titles, anchors, the text
/// around links, JSON of unknown fields), in any dataset. Columnar writers
/// give them no dictionary and no min/max statistics: almost every value
/// differs from the others, so a dictionary is built only to be abandoned,
/// and the minimum and maximum of unsorted URLs or snippets prune nothing.
pub const FREE_TEXT_COLUMNS: [&str; 11] = [
    "url_from",
    "url_to",
    "page_from_title",
    "alt",
    "image_url",
    "anchor",
    "text_pre",
    "text_post",
    "url_to_redirect_target",
    "url",
    "extra",
];

/// Integer and timestamp columns whose values almost never repeat within a
/// partition: row positions (counting up), the times a link was seen (to
/// the second) and page sizes. Columnar writers give them no dictionary and
/// store them as deltas: a dictionary of such values fills up and is
/// abandoned once most of a row group went through it, and positions
/// counting up cost next to nothing as deltas.
pub const NEAR_UNIQUE_NUMBER_COLUMNS: [&str; 5] = [
    "position",
    "first_seen",
    "last_seen",
    "prev_seen",
    "page_from_size",
];

/// The item's `ranked_keywords_info` object: its key, and its counts, which
/// `backlinks` stores as Int64 columns of the same names.
pub const BACKLINK_RANKED_KEYWORDS: (&str, [&str; 3]) = (
    "ranked_keywords_info",
    [
        "page_from_keywords_count_top_3",
        "page_from_keywords_count_top_10",
        "page_from_keywords_count_top_100",
    ],
);

/// The item's `indirect_link_path` (the redirect hops of an indirect link):
/// its key, and the `backlinks` column holding its length. The hops
/// themselves are rows of `backlink_redirects`.
pub const BACKLINK_INDIRECT_PATH: (&str, &str) = ("indirect_link_path", "indirect_link_hops");

/// The column type of an item field, as [`BACKLINK_ITEM_FIELDS`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemType {
    /// `Utf8` (Postgres `text`).
    Text,
    /// `Boolean`.
    Boolean,
    /// `Int64` (Postgres `bigint`): API counts can exceed 2^31.
    Int64,
    /// [`timestamp_type`], from an API date string.
    Timestamp,
    /// [`text_list_type`], from an array of strings.
    TextList,
}

impl ItemType {
    /// The Arrow type of the column.
    pub fn data_type(self) -> DataType {
        match self {
            ItemType::Text => DataType::Utf8,
            ItemType::Boolean => DataType::Boolean,
            ItemType::Int64 => DataType::Int64,
            ItemType::Timestamp => timestamp_type(),
            ItemType::TextList => text_list_type(),
        }
    }
}

/// `backlinks`: the partition columns, `position` (0-based index of the item
/// in the target's full result list, the row key within a partition),
/// `task_id`, every item field, `extra`. Item columns are all nullable.
static BACKLINKS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = partition_columns();
    fields.extend([
        Field::new("position", DataType::Int64, false),
        Field::new("task_id", DataType::Utf8, true),
    ]);
    fields.extend(
        BACKLINK_ITEM_FIELDS
            .iter()
            .map(|(name, ty)| Field::new(*name, ty.data_type(), true)),
    );
    fields.extend(
        BACKLINK_RANKED_KEYWORDS
            .1
            .iter()
            .map(|name| Field::new(*name, DataType::Int64, true)),
    );
    fields.extend([
        Field::new("is_indirect_link", DataType::Boolean, true),
        Field::new(BACKLINK_INDIRECT_PATH.1, DataType::Int64, true),
        Field::new("extra", DataType::Utf8, true),
    ]);
    Arc::new(Schema::new(fields))
});

/// `backlink_redirects`: one row per hop of an item's `indirect_link_path`,
/// keyed by the backlink's `position` and the 0-based `hop`.
static BACKLINK_REDIRECTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = partition_columns();
    fields.extend([
        Field::new("position", DataType::Int64, false),
        Field::new("hop", DataType::Int64, false),
        Field::new("type", DataType::Utf8, true),
        Field::new("status_code", DataType::Int64, true),
        Field::new("url", DataType::Utf8, true),
    ]);
    Arc::new(Schema::new(fields))
});

static REQUESTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("snapshot_date", DataType::Date32, false),
        Field::new("endpoint", DataType::Utf8, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("page", DataType::Int64, false),
        Field::new("started_at", timestamp_type(), false),
        Field::new("attempts", DataType::Int64, false),
        Field::new("http_status", DataType::Int64, true),
        Field::new("status_code", DataType::Int64, true),
        Field::new("cost", DataType::Float64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("latency_ms", DataType::Int64, false),
        Field::new("task_id", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        // Answered from the raw archive (paid by an earlier run).
        Field::new("replayed", DataType::Boolean, false),
        // The per-minute limit the API announced in its last answer.
        Field::new("announced_limit", DataType::Int64, true),
    ]))
});

static RUNS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("snapshot_date", DataType::Date32, false),
        Field::new("started_at", timestamp_type(), false),
        Field::new("finished_at", timestamp_type(), true),
        // running, succeeded, partial, failed, interrupted, account_error,
        // budget_exhausted
        Field::new("status", DataType::Utf8, false),
        Field::new("units_total", DataType::Int64, false),
        Field::new("units_ok", DataType::Int64, false),
        Field::new("units_failed", DataType::Int64, false),
        Field::new("requests", DataType::Int64, false),
        Field::new("retries", DataType::Int64, false),
        Field::new("cost_usd", DataType::Float64, false),
        // JSON objects: rows per dataset, unknown API fields seen and how often,
        // and the effective settings of the run (never credentials).
        Field::new("rows", DataType::Utf8, false),
        Field::new("unknown_fields", DataType::Utf8, false),
        Field::new("settings", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        // Answers reused from the raw archive, and what they cost when an
        // earlier run fetched them.
        Field::new("replayed", DataType::Int64, false),
        Field::new("replayed_cost_usd", DataType::Float64, false),
    ]))
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitioned_datasets_carry_the_partition_columns() {
        for d in Dataset::PARTITIONED {
            let schema = d.schema();
            for name in ["pipeline", "target", "snapshot_date", "fetched_at"] {
                assert!(
                    schema.field_with_name(name).is_ok(),
                    "{} lacks {name}",
                    d.name()
                );
            }
        }
    }

    #[test]
    fn summary_has_every_contract_column_once() {
        let schema = Dataset::Summary.schema();
        let mut names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let before = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), before);
        for name in [
            "first_seen",
            "lost_date",
            "rank",
            "info_platform_type",
            "info_is_ip",
            "task_id",
            "cost",
            "extra",
        ] {
            assert!(names.contains(&name), "{name}");
        }
    }

    /// The types of the column `name` in the datasets that have one; fails
    /// if none has.
    fn column_types(name: &str) -> Vec<DataType> {
        let types: Vec<DataType> = Dataset::ALL
            .iter()
            .filter_map(|d| Some(d.schema().field_with_name(name).ok()?.data_type().clone()))
            .collect();
        assert!(!types.is_empty(), "{name} is in no dataset");
        types
    }

    #[test]
    fn free_text_columns_are_text_columns_of_some_dataset() {
        for name in FREE_TEXT_COLUMNS {
            let types = column_types(name);
            assert!(
                types.iter().all(|t| *t == DataType::Utf8),
                "{name}: {types:?}"
            );
        }
    }

    #[test]
    fn near_unique_number_columns_are_integer_or_timestamp_columns_of_some_dataset() {
        for name in NEAR_UNIQUE_NUMBER_COLUMNS {
            let types = column_types(name);
            assert!(
                types
                    .iter()
                    .all(|t| matches!(t, DataType::Int64 | DataType::Timestamp(_, _))),
                "{name}: {types:?}"
            );
        }
    }

    #[test]
    fn every_dataset_is_listed_once_with_a_distinct_name() {
        let mut names: Vec<_> = Dataset::ALL.iter().map(|d| d.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Dataset::ALL.len());
        for d in Dataset::PARTITIONED {
            assert!(Dataset::ALL.contains(&d), "{}", d.name());
        }
    }

    #[test]
    fn backlinks_columns_follow_the_contract_order() {
        let schema = Dataset::Backlinks.schema();
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names.len(), 4 + 2 + 44 + 3 + 3);
        assert_eq!(
            names[..7],
            [
                "pipeline",
                "target",
                "snapshot_date",
                "fetched_at",
                "position",
                "task_id",
                "type"
            ]
        );
        assert_eq!(
            names[names.len() - 7..],
            [
                "url_to_redirect_target",
                "page_from_keywords_count_top_3",
                "page_from_keywords_count_top_10",
                "page_from_keywords_count_top_100",
                "is_indirect_link",
                "indirect_link_hops",
                "extra"
            ]
        );
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());

        let field = |name: &str| schema.field_with_name(name).unwrap().clone();
        assert!(!field("position").is_nullable());
        assert_eq!(field("position").data_type(), &DataType::Int64);
        assert_eq!(field("first_seen").data_type(), &timestamp_type());
        assert_eq!(field("attributes").data_type(), &text_list_type());
        assert_eq!(field("page_from_size").data_type(), &DataType::Int64);
        assert_eq!(field("dofollow").data_type(), &DataType::Boolean);
        for f in &schema.fields()[6..] {
            assert!(f.is_nullable(), "{}", f.name());
        }
    }

    #[test]
    fn backlink_redirects_are_keyed_by_position_and_hop() {
        let schema = Dataset::BacklinkRedirects.schema();
        let columns: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone(), f.is_nullable()))
            .skip(4)
            .collect();
        assert_eq!(
            columns,
            [
                ("position", DataType::Int64, false),
                ("hop", DataType::Int64, false),
                ("type", DataType::Utf8, true),
                ("status_code", DataType::Int64, true),
                ("url", DataType::Utf8, true),
            ]
        );
    }
}
