//! `backlinks/live` pages → `backlinks` and `backlink_redirects` batches.
//!
//! A page holds up to 1000 items and a target can have millions, so the items
//! are decoded straight into Arrow builders: no `serde_json::Value` per item.
//! One pass of [`DeserializeSeed`]s walks the body: the envelope, the task,
//! the result's paging fields, then the items, mapping each item key to its
//! column and appending the value in place (strings are copied once, from the
//! body into the column). Fields an item lacks become nulls, a repeated key
//! is ignored, and unknown keys are kept verbatim (borrowed raw JSON) in
//! `extra`: the item's own, those of `ranked_keywords_info` under that name,
//! and those of the hops of `indirect_link_path` as an array with one object
//! per hop (`{"indirect_link_path":[{},{"delay_ms":5}]}`).
//!
//! Decoding runs without path tracking; only when it fails is the page
//! decoded again with `serde_path_to_error` to name the bad value's JSON path
//! (`tasks[0].result[0].items[12].first_seen`).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Int64Array, Int64Builder, ListBuilder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use backlinks_model::Dataset;
use backlinks_model::schema::{
    BACKLINK_INDIRECT_PATH, BACKLINK_ITEM_FIELDS, BACKLINK_RANKED_KEYWORDS, ItemType,
};
use backlinks_model::time::parse_api_datetime;
use serde::Deserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::columns::{PartitionColumns, batch};
use crate::{Error, Result, RowContext, UnknownFields};

const ENDPOINT: &str = "backlinks";

/// The rows of one backlinks/live page, and what paging needs to go on.
#[derive(Debug)]
pub struct BacklinksPageRows {
    /// One row per item, `position` counting on from `first_position`.
    pub backlinks: RecordBatch,
    /// One row per hop of the items' `indirect_link_path`.
    pub redirects: RecordBatch,
    /// Fields of the items the schema does not know (kept in `extra`), by
    /// name (`ranked_keywords_info.<name>` and `indirect_link_path[].<name>`
    /// for nested ones), with the number of items (or hops) carrying them.
    pub unknown_fields: UnknownFields,
    /// The result's `total_count`: items of the target in total.
    pub total_count: Option<i64>,
    /// Items on this page (the rows of `backlinks`); the next page's first
    /// position is `first_position + items_count`.
    pub items_count: usize,
    /// The result's `search_after_token`, to request the next page.
    pub search_after_token: Option<String>,
}

/// Decodes one backlinks/live response body into rows.
///
/// Items get the positions `first_position`, `first_position + 1`, … in the
/// order of the page. `task_id` is the page's own task id from the body (or
/// `ctx.task_id` when the body has none). A task whose `result` or `items`
/// is `null` or empty yields zero rows with `total_count` as given. A value
/// of the wrong type or a bad date is an [`Error::Json`] naming the target
/// and the JSON path of the value.
pub fn backlinks_page_rows(
    ctx: &RowContext<'_>,
    first_position: i64,
    body: &[u8],
) -> Result<BacklinksPageRows> {
    let text = std::str::from_utf8(body).map_err(|source| Error::NotUtf8 {
        target: ctx.key.target.to_string(),
        endpoint: ENDPOINT,
        source,
    })?;
    let mut page = Page::new(ctx, first_position);
    let mut de = serde_json::Deserializer::from_str(text);
    let decoded = EnvelopeSeed(&mut page)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if let Err(first) = decoded {
        // Decode again, tracking the path, to say where the bad value is.
        let mut again = Page::new(ctx, first_position);
        let mut track = serde_path_to_error::Track::new();
        let mut de = serde_json::Deserializer::from_str(text);
        let tracked = serde_path_to_error::Deserializer::new(&mut de, &mut track);
        let e = match EnvelopeSeed(&mut again).deserialize(tracked) {
            Err(e) => e,
            Ok(()) => first,
        };
        return Err(Error::Json {
            target: ctx.key.target.to_string(),
            endpoint: ENDPOINT,
            path: track.path().to_string(),
            source: e,
        });
    }
    page.finish()
}

/// Everything one decode of a body collects.
struct Page<'c> {
    ctx: &'c RowContext<'c>,
    first_position: i64,
    /// Created when the items start, sized by `items_count`.
    builder: Option<PageBuilder<'c>>,
    /// The id of the task whose result is decoded.
    task_id: Option<String>,
    /// The id of the first task, for a response without result.
    first_task_id: Option<String>,
    /// Whether a task with a (non-null) `result` was decoded; later tasks'
    /// results are skipped.
    has_result: bool,
    total_count: Option<i64>,
    items_count: Option<i64>,
    search_after_token: Option<String>,
}

impl<'c> Page<'c> {
    fn new(ctx: &'c RowContext<'c>, first_position: i64) -> Self {
        Self {
            ctx,
            first_position,
            builder: None,
            task_id: None,
            first_task_id: None,
            has_result: false,
            total_count: None,
            items_count: None,
            search_after_token: None,
        }
    }

    fn finish(self) -> Result<BacklinksPageRows> {
        let task_id = match (&self.task_id, self.has_result) {
            (Some(id), _) => Some(id.as_str()),
            (None, false) => self.first_task_id.as_deref().or(self.ctx.task_id),
            (None, true) => self.ctx.task_id,
        };
        let builder = self
            .builder
            .unwrap_or_else(|| PageBuilder::new(self.ctx, self.first_position, 0));
        let (backlinks, redirects, unknown_fields) = builder.finish(task_id)?;
        Ok(BacklinksPageRows {
            items_count: backlinks.num_rows(),
            backlinks,
            redirects,
            unknown_fields,
            total_count: self.total_count,
            search_after_token: self.search_after_token,
        })
    }
}

/// The response envelope: only `tasks` matters to the rows.
struct EnvelopeSeed<'p, 'c>(&'p mut Page<'c>);

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a response envelope object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let mut seen_tasks = false;
        while let Some(name) = map.next_key_seed(NameSeed)? {
            if name == "tasks" && !seen_tasks {
                seen_tasks = true;
                map.next_value_seed(TasksSeed(self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// `tasks`: an array of tasks, or null.
struct TasksSeed<'p, 'c>(&'p mut Page<'c>);

impl<'de> DeserializeSeed<'de> for TasksSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TasksSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tasks or null")
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while seq.next_element_seed(TaskSeed(self.0))?.is_some() {}
        Ok(())
    }
}

/// One task: its `id` and `result`.
struct TaskSeed<'p, 'c>(&'p mut Page<'c>);

impl<'de> DeserializeSeed<'de> for TaskSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TaskSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a task object or null")
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let page = self.0;
        let mut id: Option<String> = None;
        let mut decoded_result = false;
        let mut seen_result = false;
        while let Some(name) = map.next_key_seed(NameSeed)? {
            match name.as_ref() {
                "id" if id.is_none() => id = map.next_value()?,
                "result" if !seen_result && !page.has_result => {
                    seen_result = true;
                    decoded_result = map.next_value_seed(ResultsSeed(page))?;
                    page.has_result = decoded_result;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if page.first_task_id.is_none() {
            page.first_task_id.clone_from(&id);
        }
        if decoded_result {
            page.task_id = id;
        }
        Ok(())
    }
}

/// A task's `result`: an array whose first element is decoded, or null.
/// The value says whether it was an array.
struct ResultsSeed<'p, 'c>(&'p mut Page<'c>);

impl<'de> DeserializeSeed<'de> for ResultsSeed<'_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ResultsSeed<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of results or null")
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<bool, A::Error> {
        if seq.next_element_seed(ResultSeed(self.0))?.is_some() {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
        }
        Ok(true)
    }
}

/// One result: the paging fields and the items.
struct ResultSeed<'p, 'c>(&'p mut Page<'c>);

impl<'de> DeserializeSeed<'de> for ResultSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ResultSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a result object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let page = self.0;
        while let Some(name) = map.next_key_seed(NameSeed)? {
            match name.as_ref() {
                "total_count" => page.total_count = map.next_value()?,
                "items_count" => page.items_count = map.next_value()?,
                "search_after_token" => page.search_after_token = map.next_value()?,
                "items" if page.builder.is_none() => {
                    // A page has at most 1000 items; a larger count only
                    // means the builders grow.
                    let capacity = page
                        .items_count
                        .and_then(|n| usize::try_from(n).ok())
                        .unwrap_or(100)
                        .min(1000);
                    let builder = page.builder.insert(PageBuilder::new(
                        page.ctx,
                        page.first_position,
                        capacity,
                    ));
                    map.next_value_seed(ItemsSeed(builder))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// What the item visitor does with the value of a known key.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Append it to `PageBuilder::columns[i]`.
    Column(usize),
    /// `ranked_keywords_info`: its counts go to `PageBuilder::ranked`.
    Ranked,
    /// `indirect_link_path`: its length goes to `hops`, its hops to
    /// `backlink_redirects`.
    Path,
}

const DIRECT: usize = BACKLINK_ITEM_FIELDS.len();
/// Index of `is_indirect_link` in `PageBuilder::columns`, after the direct
/// fields (its column comes after the ranked keyword counts).
const IS_INDIRECT: usize = DIRECT;

/// The known keys of an item, in the order the API sends them (which is the
/// column order). The bit `1 << i` of an item's `seen` mask is `KEYS[i]`.
const KEYS: [(&str, Slot); DIRECT + 3] = {
    let mut keys = [("", Slot::Ranked); DIRECT + 3];
    let mut i = 0;
    while i < DIRECT {
        keys[i] = (BACKLINK_ITEM_FIELDS[i].0, Slot::Column(i));
        i += 1;
    }
    keys[DIRECT] = (BACKLINK_RANKED_KEYWORDS.0, Slot::Ranked);
    keys[DIRECT + 1] = ("is_indirect_link", Slot::Column(IS_INDIRECT));
    keys[DIRECT + 2] = (BACKLINK_INDIRECT_PATH.0, Slot::Path);
    keys
};
const ALL_KEYS: u64 = (1 << KEYS.len()) - 1;
const _: () = assert!(KEYS.len() <= 64, "the seen mask is a u64");

const REDIRECT_KEYS: [&str; 3] = ["type", "status_code", "url"];

/// A builder for one item column.
enum Column {
    Text(StringBuilder),
    Boolean(BooleanBuilder),
    Int64(Int64Builder),
    Timestamp(&'static str, TimestampMicrosecondBuilder),
    TextList(ListBuilder<StringBuilder>),
}

impl Column {
    fn new(name: &'static str, ty: ItemType, rows: usize) -> Self {
        match ty {
            ItemType::Text => Column::Text(StringBuilder::with_capacity(
                rows,
                rows * text_bytes_guess(name),
            )),
            ItemType::Boolean => Column::Boolean(BooleanBuilder::with_capacity(rows)),
            ItemType::Int64 => Column::Int64(Int64Builder::with_capacity(rows)),
            ItemType::Timestamp => Column::Timestamp(
                name,
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            ),
            ItemType::TextList => Column::TextList(ListBuilder::with_capacity(
                StringBuilder::with_capacity(rows, rows * 8),
                rows,
            )),
        }
    }

    fn append_null(&mut self) {
        match self {
            Column::Text(b) => b.append_null(),
            Column::Boolean(b) => b.append_null(),
            Column::Int64(b) => b.append_null(),
            Column::Timestamp(_, b) => b.append_null(),
            Column::TextList(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Text(b) => Arc::new(b.finish()),
            Column::Boolean(b) => Arc::new(b.finish()),
            Column::Int64(b) => Arc::new(b.finish()),
            Column::Timestamp(_, b) => Arc::new(b.finish()),
            Column::TextList(b) => Arc::new(b.finish()),
        }
    }
}

/// Bytes per row to reserve for a text column, so that a page rarely
/// reallocates.
fn text_bytes_guess(name: &str) -> usize {
    match name {
        "url_from" | "url_to" | "url_to_redirect_target" | "image_url" => 96,
        "text_pre" | "text_post" => 128,
        "page_from_title" | "anchor" | "alt" => 48,
        _ => 16,
    }
}

/// The `backlink_redirects` columns other than the partition ones.
struct Redirects {
    position: Int64Builder,
    hop: Int64Builder,
    kind: StringBuilder,
    status_code: Int64Builder,
    url: StringBuilder,
}

impl Redirects {
    fn with_capacity(rows: usize) -> Self {
        Self {
            position: Int64Builder::with_capacity(rows),
            hop: Int64Builder::with_capacity(rows),
            kind: StringBuilder::with_capacity(rows, rows * 8),
            status_code: Int64Builder::with_capacity(rows),
            url: StringBuilder::with_capacity(rows, rows * 96),
        }
    }
}

/// The builders of one page, filled item by item.
struct PageBuilder<'c> {
    ctx: &'c RowContext<'c>,
    first_position: i64,
    /// Items appended so far.
    rows: usize,
    /// The direct item fields, then `is_indirect_link`.
    columns: Vec<Column>,
    ranked: [Int64Builder; 3],
    hops: Int64Builder,
    extra: StringBuilder,
    redirects: Redirects,
    unknown: UnknownFields,
    /// Reused for the `extra` JSON of an item and for dotted unknown names.
    buf: String,
}

impl<'c> PageBuilder<'c> {
    fn new(ctx: &'c RowContext<'c>, first_position: i64, rows: usize) -> Self {
        let mut columns: Vec<Column> = BACKLINK_ITEM_FIELDS
            .iter()
            .map(|(name, ty)| Column::new(name, *ty, rows))
            .collect();
        columns.push(Column::new("is_indirect_link", ItemType::Boolean, rows));
        Self {
            ctx,
            first_position,
            rows: 0,
            columns,
            ranked: std::array::from_fn(|_| Int64Builder::with_capacity(rows)),
            hops: Int64Builder::with_capacity(rows),
            extra: StringBuilder::new(),
            redirects: Redirects::with_capacity(rows / 4),
            unknown: UnknownFields::new(),
            buf: String::new(),
        }
    }

    fn position(&self) -> i64 {
        // A page holds at most a few thousand items.
        self.first_position + i64::try_from(self.rows).unwrap_or(i64::MAX)
    }

    /// Counts one more sighting of the unknown field `name`, inside the
    /// object `parent` unless that is empty (`parent.name`).
    fn count_unknown(&mut self, parent: &str, name: &str) {
        self.buf.clear();
        if !parent.is_empty() {
            self.buf.push_str(parent);
            self.buf.push('.');
        }
        self.buf.push_str(name);
        match self.unknown.get_mut(self.buf.as_str()) {
            Some(n) => *n += 1,
            None => {
                self.unknown.insert(self.buf.clone(), 1);
            }
        }
    }

    /// Closes an item: nulls for the keys it lacked, its `extra`.
    fn end_item(&mut self, seen: u64, item: &ItemScratch<'_>) {
        let mut missing = !seen & ALL_KEYS;
        while missing != 0 {
            let i = missing.trailing_zeros() as usize;
            missing &= missing - 1;
            match KEYS[i].1 {
                Slot::Column(c) => self.columns[c].append_null(),
                Slot::Ranked => self.ranked.iter_mut().for_each(|b| b.append_null()),
                Slot::Path => self.hops.append_null(),
            }
        }

        let path = &item.path_unknown;
        if item.unknown.is_empty() && item.ranked_unknown.is_empty() && path.members.is_empty() {
            self.extra.append_null();
        } else {
            for (name, _) in &item.unknown {
                self.count_unknown("", name);
            }
            for (name, _) in &item.ranked_unknown {
                self.count_unknown(BACKLINK_RANKED_KEYWORDS.0, name);
            }
            for (name, _) in &path.members {
                self.count_unknown(HOP_UNKNOWN_PARENT, name);
            }
            self.buf.clear();
            self.buf.push('{');
            write_members(&mut self.buf, &item.unknown);
            let mut comma = !item.unknown.is_empty();
            if !item.ranked_unknown.is_empty() {
                if comma {
                    self.buf.push(',');
                }
                comma = true;
                push_json_str(&mut self.buf, BACKLINK_RANKED_KEYWORDS.0);
                self.buf.push_str(":{");
                write_members(&mut self.buf, &item.ranked_unknown);
                self.buf.push('}');
            }
            if !path.members.is_empty() {
                if comma {
                    self.buf.push(',');
                }
                push_json_str(&mut self.buf, BACKLINK_INDIRECT_PATH.0);
                self.buf.push_str(":[");
                for hop in 0..path.hops {
                    if hop > 0 {
                        self.buf.push(',');
                    }
                    self.buf.push('{');
                    write_members(&mut self.buf, path.of_hop(hop));
                    self.buf.push('}');
                }
                self.buf.push(']');
            }
            self.buf.push('}');
            self.extra.append_value(&self.buf);
        }
        self.rows += 1;
    }

    /// The `backlinks` and `backlink_redirects` batches and the unknown
    /// field counts.
    fn finish(
        mut self,
        task_id: Option<&str>,
    ) -> Result<(RecordBatch, RecordBatch, UnknownFields)> {
        let ctx = self.ctx;
        let rows = self.rows;

        let mut partition = PartitionColumns::with_capacity(rows);
        partition.append_n(ctx, rows);
        let [pipeline, target, snapshot_date, fetched_at] = partition.finish();
        let mut task_ids = StringBuilder::with_capacity(rows, rows * 36);
        match task_id {
            Some(id) => task_ids.append_value_n(id, rows),
            None => task_ids.append_nulls(rows),
        }
        let end = self.position();
        let mut columns: Vec<ArrayRef> = vec![
            pipeline,
            target,
            snapshot_date,
            fetched_at,
            Arc::new(Int64Array::from_iter_values(self.first_position..end)),
            Arc::new(task_ids.finish()),
        ];
        columns.extend(self.columns[..DIRECT].iter_mut().map(Column::finish));
        columns.extend(
            self.ranked
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.push(self.columns[IS_INDIRECT].finish());
        columns.push(Arc::new(self.hops.finish()));
        columns.push(Arc::new(self.extra.finish()));
        let backlinks = batch(ctx, Dataset::Backlinks, columns)?;

        let r = &mut self.redirects;
        let hops = r.hop.len();
        let mut partition = PartitionColumns::with_capacity(hops);
        partition.append_n(ctx, hops);
        let [pipeline, target, snapshot_date, fetched_at] = partition.finish();
        let columns: Vec<ArrayRef> = vec![
            pipeline,
            target,
            snapshot_date,
            fetched_at,
            Arc::new(r.position.finish()),
            Arc::new(r.hop.finish()),
            Arc::new(r.kind.finish()),
            Arc::new(r.status_code.finish()),
            Arc::new(r.url.finish()),
        ];
        let redirects = batch(ctx, Dataset::BacklinkRedirects, columns)?;
        Ok((backlinks, redirects, self.unknown))
    }
}

/// `"name":value` pairs, comma separated.
fn write_members(buf: &mut String, members: &[Member<'_>]) {
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        push_json_str(buf, name);
        buf.push(':');
        buf.push_str(value.get());
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_str(buf: &mut String, s: &str) {
    buf.push('"');
    for c in s.chars() {
        match c {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            '\t' => buf.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                use fmt::Write;
                // Writing to a String cannot fail.
                let _ = write!(buf, "\\u{:04x}", u32::from(c));
            }
            c => buf.push(c),
        }
    }
    buf.push('"');
}

/// An unknown member: its name and raw JSON value, borrowed from the body.
type Member<'de> = (Cow<'de, str>, &'de RawValue);

/// Unknown members of the item being decoded, borrowed from the body.
#[derive(Default)]
struct ItemScratch<'de> {
    unknown: Vec<Member<'de>>,
    ranked_unknown: Vec<Member<'de>>,
    path_unknown: HopMembers<'de>,
}

impl ItemScratch<'_> {
    fn clear(&mut self) {
        self.unknown.clear();
        self.ranked_unknown.clear();
        self.path_unknown.members.clear();
        self.path_unknown.starts.clear();
        self.path_unknown.hops = 0;
    }
}

/// The name under which unknown fields of redirect hops are counted:
/// `indirect_link_path[].<name>`.
const HOP_UNKNOWN_PARENT: &str = "indirect_link_path[]";

/// Unknown members of the hops of the item's `indirect_link_path`.
#[derive(Default)]
struct HopMembers<'de> {
    /// The members of every hop, hop after hop.
    members: Vec<Member<'de>>,
    /// `(hop, index of its first member in members)` for each hop that has
    /// unknown members, in hop order.
    starts: Vec<(usize, usize)>,
    /// How many hops the path has.
    hops: usize,
}

impl<'de> HopMembers<'de> {
    /// The unknown members of hop `hop` (none for most hops).
    fn of_hop(&self, hop: usize) -> &[Member<'de>] {
        let Some(i) = self.starts.iter().position(|&(h, _)| h == hop) else {
            return &[];
        };
        let start = self.starts[i].1;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.members.len(), |&(_, next)| next);
        &self.members[start..end]
    }

    /// Keeps the unknown member `name` of hop `hop`, the hop being decoded.
    fn keep<A: MapAccess<'de>>(
        &mut self,
        map: &mut A,
        hop: usize,
        name: Cow<'de, str>,
    ) -> std::result::Result<(), A::Error> {
        let start = match self.starts.last() {
            Some(&(h, start)) if h == hop => start,
            _ => {
                self.starts.push((hop, self.members.len()));
                self.members.len()
            }
        };
        keep_unknown(map, &mut self.members, start, name)
    }
}

/// Unknown members are kept once per object: a key repeated among
/// `kept[from..]` (the members of the same object) is ignored.
fn keep_unknown<'de, A: MapAccess<'de>>(
    map: &mut A,
    kept: &mut Vec<Member<'de>>,
    from: usize,
    name: Cow<'de, str>,
) -> std::result::Result<(), A::Error> {
    if kept[from..].iter().any(|(n, _)| *n == name) {
        map.next_value::<IgnoredAny>()?;
    } else {
        let value: &'de RawValue = map.next_value()?;
        if nesting_depth(value.get()) > MAX_EXTRA_DEPTH {
            return Err(de::Error::custom(format_args!(
                "recursion limit exceeded: `{name}` is nested deeper than {MAX_EXTRA_DEPTH} levels"
            )));
        }
        kept.push((name, value));
    }
    Ok(())
}

/// The deepest nesting an unknown value kept in `extra` may have: the
/// recursion limit of `serde_json` values (and far below what a Postgres
/// `jsonb` accepts), so a hostile answer fails here, naming its path,
/// rather than in a sink.
const MAX_EXTRA_DEPTH: usize = 128;

/// How deeply arrays and objects nest in the JSON text `raw`.
fn nesting_depth(raw: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in raw.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The `items` array.
struct ItemsSeed<'p, 'c>(&'p mut PageBuilder<'c>);

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of backlink items or null")
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let mut scratch = ItemScratch::default();
        while seq
            .next_element_seed(ItemSeed {
                page: self.0,
                scratch: &mut scratch,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// One item: a JSON object.
struct ItemSeed<'p, 'c, 's, 'de> {
    page: &'p mut PageBuilder<'c>,
    scratch: &'s mut ItemScratch<'de>,
}

impl<'de> DeserializeSeed<'de> for ItemSeed<'_, '_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ItemSeed<'_, '_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a backlink item object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let page = self.page;
        let scratch = self.scratch;
        scratch.clear();
        let mut seen = 0u64;
        let mut hint = 0;
        while let Some(key) = map.next_key_seed(KeySeed { hint })? {
            let i = match key {
                Key::Known(i) => i,
                Key::Unknown(name) => {
                    keep_unknown(&mut map, &mut scratch.unknown, 0, name)?;
                    continue;
                }
            };
            hint = i + 1;
            if seen & (1 << i) != 0 {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            seen |= 1 << i;
            match KEYS[i].1 {
                Slot::Column(c) => map.next_value_seed(ColumnSeed(&mut page.columns[c]))?,
                Slot::Ranked => map.next_value_seed(RankedSeed {
                    counts: &mut page.ranked,
                    unknown: &mut scratch.ranked_unknown,
                })?,
                Slot::Path => map.next_value_seed(PathSeed {
                    page,
                    unknown: &mut scratch.path_unknown,
                })?,
            }
        }
        page.end_item(seen, scratch);
        Ok(())
    }
}

/// An item key: the index of a known one in [`KEYS`], or an unknown name.
enum Key<'de> {
    Known(usize),
    Unknown(Cow<'de, str>),
}

/// Decodes a key, trying `KEYS[hint]` (the key after the previous one)
/// before searching all of them.
struct KeySeed {
    hint: usize,
}

impl KeySeed {
    fn known(&self, s: &str) -> Option<usize> {
        match KEYS.get(self.hint) {
            Some((k, _)) if *k == s => Some(self.hint),
            _ => KEYS.iter().position(|(k, _)| *k == s),
        }
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Key<'de>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> std::result::Result<Key<'de>, E> {
        Ok(match self.known(s) {
            Some(i) => Key::Known(i),
            None => Key::Unknown(Cow::Borrowed(s)),
        })
    }

    fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<Key<'de>, E> {
        Ok(match self.known(s) {
            Some(i) => Key::Known(i),
            None => Key::Unknown(Cow::Owned(s.to_owned())),
        })
    }
}

/// A member name of a nested object, borrowed from the body unless it has
/// escapes.
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> std::result::Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

/// One item value, appended to its column.
struct ColumnSeed<'a>(&'a mut Column);

impl<'de> DeserializeSeed<'de> for ColumnSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        match self.0 {
            Column::Text(b) => d.deserialize_any(TextValue(b)),
            Column::Boolean(b) => d.deserialize_any(BooleanValue(b)),
            Column::Int64(b) => d.deserialize_any(Int64Value(b)),
            Column::Timestamp(name, b) => d.deserialize_any(TimestampValue(name, b)),
            Column::TextList(b) => d.deserialize_any(TextListValue(b)),
        }
    }
}

/// A string or null, appended to a string builder.
struct TextValue<'a>(&'a mut StringBuilder);

impl<'de> DeserializeSeed<'de> for TextValue<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TextValue<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<(), E> {
        self.0.append_value(v);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.0.append_null();
        Ok(())
    }
}

/// A boolean or null.
struct BooleanValue<'a>(&'a mut BooleanBuilder);

impl<'de> Visitor<'de> for BooleanValue<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a boolean or null")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<(), E> {
        self.0.append_value(v);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.0.append_null();
        Ok(())
    }
}

/// An integer or null.
struct Int64Value<'a>(&'a mut Int64Builder);

impl<'de> DeserializeSeed<'de> for Int64Value<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Int64Value<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer or null")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<(), E> {
        self.0.append_value(v);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<(), E> {
        let v = i64::try_from(v)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &"a 64-bit integer"))?;
        self.0.append_value(v);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.0.append_null();
        Ok(())
    }
}

/// An API date string or null, as microseconds since the epoch.
struct TimestampValue<'a>(&'static str, &'a mut TimestampMicrosecondBuilder);

impl<'de> Visitor<'de> for TimestampValue<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a date string `yyyy-mm-dd hh:mm:ss +00:00` or null")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<(), E> {
        let micros = match utc_micros(v) {
            Some(micros) => micros,
            None => parse_api_datetime(self.0, v)
                .map_err(E::custom)?
                .timestamp_micros(),
        };
        self.1.append_value(micros);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.1.append_null();
        Ok(())
    }
}

/// An array of strings (or nulls), or null.
struct TextListValue<'a>(&'a mut ListBuilder<StringBuilder>);

impl<'de> Visitor<'de> for TextListValue<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of strings or null")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while seq.next_element_seed(TextValue(self.0.values()))?.is_some() {}
        self.0.append(true);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.0.append_null();
        Ok(())
    }
}

/// `ranked_keywords_info`: an object of three counts, or null.
struct RankedSeed<'a, 'de> {
    counts: &'a mut [Int64Builder; 3],
    unknown: &'a mut Vec<Member<'de>>,
}

impl<'de> DeserializeSeed<'de> for RankedSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RankedSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a ranked_keywords_info object or null")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let names = &BACKLINK_RANKED_KEYWORDS.1;
        let mut seen = 0u8;
        while let Some(name) = map.next_key_seed(NameSeed)? {
            match names.iter().position(|n| *n == name) {
                Some(i) if seen & (1 << i) == 0 => {
                    seen |= 1 << i;
                    map.next_value_seed(Int64Value(&mut self.counts[i]))?;
                }
                Some(_) => {
                    map.next_value::<IgnoredAny>()?;
                }
                None => keep_unknown(&mut map, self.unknown, 0, name)?,
            }
        }
        for (i, count) in self.counts.iter_mut().enumerate() {
            if seen & (1 << i) == 0 {
                count.append_null();
            }
        }
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.counts.iter_mut().for_each(|b| b.append_null());
        Ok(())
    }
}

/// `indirect_link_path`: an array of hops, or null.
struct PathSeed<'p, 'c, 'u, 'de> {
    page: &'p mut PageBuilder<'c>,
    unknown: &'u mut HopMembers<'de>,
}

impl<'de> DeserializeSeed<'de> for PathSeed<'_, '_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PathSeed<'_, '_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of redirect hops or null")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let position = self.page.position();
        let mut hop = 0usize;
        while seq
            .next_element_seed(HopSeed {
                page: &mut *self.page,
                unknown: &mut *self.unknown,
                position,
                hop,
            })?
            .is_some()
        {
            hop += 1;
        }
        self.unknown.hops = hop;
        // Hops are counted in one body: far below i64::MAX.
        self.page
            .hops
            .append_value(i64::try_from(hop).unwrap_or(i64::MAX));
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.page.hops.append_null();
        Ok(())
    }
}

/// One hop of `indirect_link_path`: one `backlink_redirects` row. A `null`
/// hop is a row of nulls, so that hops keep their index. Its unknown
/// members go to the item's `extra`.
struct HopSeed<'p, 'c, 'u, 'de> {
    page: &'p mut PageBuilder<'c>,
    unknown: &'u mut HopMembers<'de>,
    position: i64,
    hop: usize,
}

impl HopSeed<'_, '_, '_, '_> {
    fn start_row(&mut self) {
        let r = &mut self.page.redirects;
        r.position.append_value(self.position);
        r.hop
            .append_value(i64::try_from(self.hop).unwrap_or(i64::MAX));
    }
}

impl<'de> DeserializeSeed<'de> for HopSeed<'_, '_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for HopSeed<'_, '_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a redirect hop object or null")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> std::result::Result<(), A::Error> {
        self.start_row();
        let mut seen = 0u8;
        while let Some(name) = map.next_key_seed(NameSeed)? {
            let Some(i) = REDIRECT_KEYS.iter().position(|k| *k == name) else {
                self.unknown.keep(&mut map, self.hop, name)?;
                continue;
            };
            if seen & (1 << i) != 0 {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            seen |= 1 << i;
            let r = &mut self.page.redirects;
            match i {
                0 => map.next_value_seed(TextValue(&mut r.kind))?,
                1 => map.next_value_seed(Int64Value(&mut r.status_code))?,
                _ => map.next_value_seed(TextValue(&mut r.url))?,
            }
        }
        let r = &mut self.page.redirects;
        if seen & 1 == 0 {
            r.kind.append_null();
        }
        if seen & 2 == 0 {
            r.status_code.append_null();
        }
        if seen & 4 == 0 {
            r.url.append_null();
        }
        Ok(())
    }

    fn visit_unit<E: de::Error>(mut self) -> std::result::Result<(), E> {
        self.start_row();
        let r = &mut self.page.redirects;
        r.kind.append_null();
        r.status_code.append_null();
        r.url.append_null();
        Ok(())
    }
}

/// Microseconds since the epoch of `yyyy-mm-dd hh:mm:ss +00:00`, the format
/// the API uses; `None` for anything else (other offsets, bad values), which
/// the general parser then handles.
fn utc_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 26
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
        || &b[19..] != b" +00:00"
    {
        return None;
    }
    let digits = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (digits(0, 4)?, digits(5, 7)?, digits(8, 10)?);
    let (hour, minute, second) = (digits(11, 13)?, digits(14, 16)?, digits(17, 19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
    // days_from_civil), with years counted from March.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
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

    fn rows_at(first_position: i64, body: &str) -> Result<BacklinksPageRows> {
        let key = key();
        let ctx = RowContext {
            key: &key,
            fetched_at: Utc.with_ymd_and_hms(2026, 11, 24, 3, 0, 0).unwrap(),
            task_id: Some("ctx-task"),
            cost: 0.02,
        };
        backlinks_page_rows(&ctx, first_position, body.as_bytes())
    }

    fn page(items: &str) -> String {
        format!(
            r#"{{"version":"0.1","status_code":20000,"status_message":"Ok.","tasks_count":1,
            "tasks":[{{"id":"task-7","status_code":20000,"status_message":"Ok.","cost":0.0201,
            "result_count":1,"data":{{"target":"example.com","limit":4}},
            "result":[{{"target":"example.com","mode":"as_is","custom_mode":null,
            "total_count":3000000001,"items_count":4,"search_after_token":"tok-4",
            "items":{items}}}]}}]}}"#
        )
    }

    /// Four items: a complete one; one with missing, null, empty, huge,
    /// repeated and unknown fields; one indirect link with one hop; one with
    /// three hops (one lacking its url, one with an unknown field).
    const ITEMS: &str = r#"[
      {"type":"backlink","domain_from":"blog.example.org","url_from":"https://blog.example.org/post?a=1&b=2",
       "url_from_https":true,"domain_to":"example.com","url_to":"https://example.com/","url_to_https":true,
       "tld_from":"org","is_new":false,"is_lost":false,"backlink_spam_score":3,"rank":512,"page_from_rank":120,
       "domain_from_rank":300,"domain_from_platform_type":["cms","blogs"],"domain_from_is_ip":false,
       "domain_from_ip":"192.0.2.7","domain_from_country":"DE","page_from_external_links":12,
       "page_from_internal_links":40,"page_from_size":51234,"page_from_encoding":"utf-8",
       "page_from_language":"de","page_from_title":"Grüße aus Köln","page_from_status_code":200,
       "first_seen":"2019-01-01 00:00:00 +00:00","prev_seen":"2024-03-01 01:30:00 +02:00",
       "last_seen":"2024-02-29 23:59:59 +00:00","item_type":"anchor","attributes":["nofollow","ugc"],
       "dofollow":false,"original":true,"alt":null,"image_url":null,
       "anchor":"Ünïcödé \"quoted\", comma\nnew line 🚀","text_pre":"see","text_post":"for more",
       "semantic_location":"article","links_count":1,"group_count":0,"is_broken":false,
       "url_to_status_code":200,"url_to_spam_score":1,"url_to_redirect_target":null,
       "ranked_keywords_info":{"page_from_keywords_count_top_3":1,"page_from_keywords_count_top_10":4,
                               "page_from_keywords_count_top_100":9},
       "is_indirect_link":false,"indirect_link_path":null},
      {"type":"backlink","domain_from":"forum.example.net","rank":10,"rank":99,
       "url_from":"http://forum.example.net/t/1","url_from_https":false,"domain_from_platform_type":[],
       "attributes":null,"page_from_size":3000000000,"links_count":4294967296,
       "first_seen":"2020-06-15 12:34:56 +00:00","last_seen":null,"anchor":"",
       "link_quality_v2":{"score":0.87,"why":["a","b"]},
       "ranked_keywords_info":{"page_from_keywords_count_top_3":null,"page_from_keywords_count_top_1000":12,
                               "page_from_keywords_count_top_100":7},
       "is_indirect_link":false,"indirect_link_path":[]},
      {"type":"backlink","domain_from":"a.example","is_indirect_link":true,
       "indirect_link_path":[{"type":"redirect","status_code":301,"url":"http://example.com/"}]},
      {"type":"backlink","domain_from":"b.example","is_indirect_link":true,"ranked_keywords_info":null,
       "indirect_link_path":[
         {"type":"redirect","status_code":301,"url":"http://b.example/go"},
         {"type":"meta_refresh","status_code":null,"delay_ms":5},
         {"type":"canonical","status_code":302,"url":"https://example.com/landing"}]}
    ]"#;

    /// The batch in groups of columns, so that the snapshot stays readable.
    fn pretty_in_groups(batch: &RecordBatch, group: usize) -> String {
        let columns: Vec<usize> = (0..batch.num_columns()).collect();
        columns
            .chunks(group)
            .map(|cols| {
                let part = batch.project(cols).unwrap();
                pretty_format_batches(&[part]).unwrap().to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn flattens_a_backlinks_page() {
        let rows = rows_at(0, &page(ITEMS)).unwrap();
        assert_eq!(rows.items_count, 4);
        assert_eq!(rows.total_count, Some(3_000_000_001));
        assert_eq!(rows.search_after_token.as_deref(), Some("tok-4"));
        insta::assert_snapshot!("backlinks", pretty_in_groups(&rows.backlinks, 8));
        insta::assert_snapshot!(
            "redirects",
            pretty_format_batches(&[rows.redirects])
                .unwrap()
                .to_string()
        );
        let unknown: Vec<_> = rows.unknown_fields.into_iter().collect();
        assert_eq!(
            unknown,
            [
                ("indirect_link_path[].delay_ms".to_string(), 1),
                ("link_quality_v2".to_string(), 1),
                (
                    "ranked_keywords_info.page_from_keywords_count_top_1000".to_string(),
                    1
                ),
            ]
        );
    }

    #[test]
    fn extra_is_a_json_object_of_the_unknown_fields() {
        let rows = rows_at(0, &page(ITEMS)).unwrap();
        let extra = rows
            .backlinks
            .column_by_name("extra")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(extra.null_count(), 2);
        let value: serde_json::Value = serde_json::from_str(extra.value(1)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "link_quality_v2": {"score": 0.87, "why": ["a", "b"]},
                "ranked_keywords_info": {"page_from_keywords_count_top_1000": 12}
            })
        );
        let value: serde_json::Value = serde_json::from_str(extra.value(3)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"indirect_link_path": [{}, {"delay_ms": 5}, {}]})
        );
    }

    #[test]
    fn unknown_fields_of_redirect_hops_are_kept_in_extra_and_counted() {
        let items = r#"[
          {"type":"backlink","is_indirect_link":true,
           "indirect_link_path":[
             {"type":"redirect","status_code":301,"url":"http://a.example/","new_field":{"x":[1,2]}},
             null,
             {"type":"canonical","new_field":"second","new_field":"repeated","via":"html"}],
           "surprise":1},
          {"type":"backlink","ranked_keywords_info":{"page_from_keywords_count_top_3":1,"top_5":2},
           "indirect_link_path":[{"url":"http://b.example/","new_field":null}]},
          {"type":"backlink","indirect_link_path":[{"type":"redirect","status_code":302,"url":"u"}]}
        ]"#;
        let rows = rows_at(0, &page(items)).unwrap();
        let extra = rows
            .backlinks
            .column_by_name("extra")
            .unwrap()
            .as_string::<i32>();
        let json = |i: usize| serde_json::from_str::<serde_json::Value>(extra.value(i)).unwrap();
        assert_eq!(
            json(0),
            serde_json::json!({
                "surprise": 1,
                "indirect_link_path": [
                    {"new_field": {"x": [1, 2]}},
                    {},
                    {"new_field": "second", "via": "html"}
                ]
            })
        );
        assert_eq!(
            json(1),
            serde_json::json!({
                "ranked_keywords_info": {"top_5": 2},
                "indirect_link_path": [{"new_field": null}]
            })
        );
        assert!(
            extra.is_null(2),
            "a path without unknown fields adds nothing"
        );
        let unknown: Vec<_> = rows.unknown_fields.into_iter().collect();
        assert_eq!(
            unknown,
            [
                ("indirect_link_path[].new_field".to_string(), 3),
                ("indirect_link_path[].via".to_string(), 1),
                ("ranked_keywords_info.top_5".to_string(), 1),
                ("surprise".to_string(), 1),
            ]
        );
        // The known hop fields still land in backlink_redirects.
        assert_eq!(rows.redirects.num_rows(), 5);
        let url = rows
            .redirects
            .column_by_name("url")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(
            url.iter().collect::<Vec<_>>(),
            [
                Some("http://a.example/"),
                None,
                None,
                Some("http://b.example/"),
                Some("u")
            ]
        );
    }

    #[test]
    fn empty_values_stay_apart_from_nulls() {
        let rows = rows_at(0, &page(ITEMS)).unwrap();
        let b = &rows.backlinks;
        let anchor = b.column_by_name("anchor").unwrap().as_string::<i32>();
        assert_eq!((anchor.is_valid(1), anchor.value(1)), (true, ""));
        assert!(anchor.is_null(2), "missing anchor is null");
        let alt = b.column_by_name("alt").unwrap();
        assert!(alt.is_null(0), "null alt is null");
        let platform = b
            .column_by_name("domain_from_platform_type")
            .unwrap()
            .as_list::<i32>();
        assert!(platform.is_valid(1) && platform.value(1).is_empty());
        let attributes = b.column_by_name("attributes").unwrap().as_list::<i32>();
        assert!(attributes.is_null(1));
        let hops = b.column_by_name("indirect_link_hops").unwrap();
        let hops = hops.as_primitive::<Int64Type>();
        assert_eq!(
            hops.iter().collect::<Vec<_>>(),
            [None, Some(0), Some(1), Some(3)]
        );
    }

    #[test]
    fn positions_continue_from_the_first_position() {
        let rows = rows_at(20_000, &page(ITEMS)).unwrap();
        let positions = rows.backlinks.column_by_name("position").unwrap();
        let positions: Vec<i64> = positions.as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(positions, [20_000, 20_001, 20_002, 20_003]);
        let redirects = rows.redirects.column_by_name("position").unwrap();
        let redirects: Vec<i64> = redirects.as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(redirects, [20_002, 20_003, 20_003, 20_003]);
        let hops = rows.redirects.column_by_name("hop").unwrap();
        let hops: Vec<i64> = hops.as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(hops, [0, 0, 1, 2]);
    }

    #[test]
    fn batches_have_the_dataset_schemas() {
        let rows = rows_at(0, &page(ITEMS)).unwrap();
        assert_eq!(rows.backlinks.schema(), Dataset::Backlinks.schema());
        assert_eq!(rows.redirects.schema(), Dataset::BacklinkRedirects.schema());
        let empty = rows_at(0, &page("[]")).unwrap();
        assert_eq!(empty.backlinks.schema(), Dataset::Backlinks.schema());
        assert_eq!(
            empty.redirects.schema(),
            Dataset::BacklinkRedirects.schema()
        );
    }

    #[test]
    fn task_id_is_the_pages_own() {
        let rows = rows_at(0, &page(ITEMS)).unwrap();
        let ids = rows
            .backlinks
            .column_by_name("task_id")
            .unwrap()
            .as_string::<i32>();
        assert!(ids.iter().all(|id| id == Some("task-7")));
        let body = r#"{"tasks":[{"result":[{"items":[{"type":"backlink"}]}]}]}"#;
        let rows = rows_at(0, body).unwrap();
        let ids = rows
            .backlinks
            .column_by_name("task_id")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(ids.value(0), "ctx-task");
    }

    #[test]
    fn no_result_or_no_items_give_zero_rows() {
        let bodies = [
            (
                r#"{"status_code":20000,"tasks":[{"id":"t","status_code":40102,"result":null}]}"#,
                None,
            ),
            (r#"{"status_code":20000,"tasks":null}"#, None),
            (
                r#"{"tasks":[{"result":[{"total_count":0,"items_count":0,"items":null}]}]}"#,
                Some(0),
            ),
            (
                r#"{"tasks":[{"result":[{"total_count":25000,"items_count":0,"items":[]}]}]}"#,
                Some(25_000),
            ),
            (r#"{"tasks":[{"result":[{"total_count":5}]}]}"#, Some(5)),
            (r#"{"tasks":[{"result":[]}]}"#, None),
        ];
        for (body, total) in bodies {
            let rows = rows_at(100, body).unwrap();
            assert_eq!(rows.backlinks.num_rows(), 0, "{body}");
            assert_eq!(rows.redirects.num_rows(), 0, "{body}");
            assert_eq!(rows.items_count, 0, "{body}");
            assert_eq!(rows.total_count, total, "{body}");
            assert_eq!(rows.search_after_token, None, "{body}");
        }
    }

    fn decode_error_of(items: &str) -> String {
        rows_at(0, &page(items)).unwrap_err().to_string()
    }

    #[test]
    fn bad_values_name_the_target_and_json_path() {
        let cases = [
            (
                r#"[{"rank":1},{"rank":2},{"unknown":[1],"rank":"high"}]"#,
                "tasks[0].result[0].items[2].rank",
                "expected an integer or null",
            ),
            (
                r#"[{},{"first_seen":"2024-02-30 00:00:00 +00:00"}]"#,
                "tasks[0].result[0].items[1].first_seen",
                "bad date `2024-02-30 00:00:00 +00:00` in field `first_seen`",
            ),
            (
                r#"[{"ranked_keywords_info":{"page_from_keywords_count_top_10":"x"}}]"#,
                "tasks[0].result[0].items[0].ranked_keywords_info.page_from_keywords_count_top_10",
                "expected an integer or null",
            ),
            (
                r#"[{"indirect_link_path":[{},{"status_code":true}]}]"#,
                "tasks[0].result[0].items[0].indirect_link_path[1].status_code",
                "expected an integer or null",
            ),
            (
                r#"[{"attributes":["nofollow",7]}]"#,
                "tasks[0].result[0].items[0].attributes[1]",
                "expected a string or null",
            ),
            (
                r#"[{"links_count":9223372036854775808}]"#,
                "tasks[0].result[0].items[0].links_count",
                "a 64-bit integer",
            ),
            (
                r#"[{"dofollow":1}]"#,
                "tasks[0].result[0].items[0].dofollow",
                "expected a boolean or null",
            ),
            (
                r#"[{"type":"backlink"}, 5]"#,
                "tasks[0].result[0].items[1]",
                "expected a backlink item object",
            ),
        ];
        for (items, path, expected) in cases {
            let msg = decode_error_of(items);
            assert!(msg.starts_with("target `example.com`: "), "{msg}");
            assert!(msg.contains(&format!("at `{path}`:")), "{path}: {msg}");
            assert!(msg.contains(expected), "{expected}: {msg}");
        }
    }

    #[test]
    fn unknown_values_nested_too_deep_are_refused_with_their_path() {
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        let err = decode_error_of(&format!(r#"[{{"rank":1}},{{"new_field":{deep}}}]"#));
        assert!(err.contains("`tasks[0].result[0].items[1]`"), "{err}");
        assert!(
            err.contains("`new_field` is nested deeper than 128 levels"),
            "{err}"
        );
        // 128 levels are kept, brackets inside strings do not count.
        let fits = format!("{}{}", "[".repeat(128), "]".repeat(128));
        let rows = rows_at(
            0,
            &page(&format!(
                r#"[{{"new_field":{fits}}},{{"note":"[[[[{{{{\"[["}}]"#
            )),
        )
        .unwrap();
        assert_eq!(rows.backlinks.num_rows(), 2);
        assert_eq!(nesting_depth(r#"{"a":"]]]","b":[{"c":"\\\"["}]}"#), 3);
    }

    #[test]
    fn malformed_bodies_are_decode_errors() {
        let err = rows_at(0, r#"{"tasks":[{"result":[{"items":[{"rank":1"#).unwrap_err();
        assert!(
            err.to_string().contains("malformed backlinks response"),
            "{err}"
        );
        let err = rows_at(0, r#"{"tasks":[{"result":[{"total_count":"many"}]}]}"#).unwrap_err();
        assert!(
            err.to_string().contains("tasks[0].result[0].total_count"),
            "{err}"
        );
        // The JSON error is kept as the source, not only as text.
        let source = std::error::Error::source(&err).expect("a source");
        let json = source
            .downcast_ref::<serde_json::Error>()
            .expect("a serde_json error");
        assert_eq!(json.classify(), serde_json::error::Category::Data);
        assert!(err.to_string().ends_with(&json.to_string()), "{err}");
    }

    #[test]
    fn a_body_that_is_not_utf8_says_where() {
        let body = page(r#"[{"rank":7,"anchor":"caf\u00e9 XX"}]"#).replace("XX", "\u{0}");
        let mut bytes = body.into_bytes();
        let at = bytes.iter().position(|&b| b == 0).unwrap();
        bytes[at] = 0xff;
        let key = key();
        let ctx = RowContext {
            key: &key,
            fetched_at: Utc.with_ymd_and_hms(2026, 11, 24, 3, 0, 0).unwrap(),
            task_id: None,
            cost: 0.0,
        };
        let err = backlinks_page_rows(&ctx, 0, &bytes).unwrap_err();
        let utf8 = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<std::str::Utf8Error>())
            .expect("the UTF-8 error is the source");
        assert_eq!(utf8.valid_up_to(), at);
        let err = err.to_string();
        assert!(err.contains("example.com"), "{err}");
        assert!(
            err.contains(&format!(
                "the body is not UTF-8: invalid utf-8 sequence of 1 bytes from index {at}"
            )),
            "{err}"
        );
    }

    #[test]
    fn escaped_keys_are_recognised() {
        // `\u0072ank` is `rank`; the unknown key with an escape keeps its name.
        let rows = rows_at(0, &page(r#"[{"\u0072ank":7,"new\"field":1}]"#)).unwrap();
        let rank = rows.backlinks.column_by_name("rank").unwrap();
        assert_eq!(rank.as_primitive::<Int64Type>().value(0), 7);
        let extra = rows
            .backlinks
            .column_by_name("extra")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(extra.value(0), r#"{"new\"field":1}"#);
        assert_eq!(rows.unknown_fields.get("new\"field"), Some(&1));
    }

    #[test]
    fn api_dates_match_the_general_parser() {
        let mut checked = 0;
        for year in [1970, 1999, 2000, 2019, 2024, 2100] {
            for month in 1..=12u32 {
                for day in [1, 15, 28, 29, 30, 31] {
                    let text = format!("{year:04}-{month:02}-{day:02} 13:07:59 +00:00");
                    let general = parse_api_datetime("first_seen", &text).ok();
                    assert_eq!(
                        utc_micros(&text),
                        general.map(|d| d.timestamp_micros()),
                        "{text}"
                    );
                    checked += usize::from(general.is_some());
                }
            }
        }
        // 432 strings, 40 of them impossible days (Feb 29 in 4 non-leap years, Feb 30/31, the 31st of 30-day months).
        assert_eq!(checked, 392);
        for other in [
            "2024-01-01 00:00:00 +02:00",
            "2024-01-01 24:00:00 +00:00",
            "2024-01-01T00:00:00 +00:00",
            "2024-1-01 00:00:00 +00:00 ",
            "yesterday",
        ] {
            assert_eq!(utc_micros(other), None, "{other}");
        }
    }

    #[test]
    fn redirect_hops_with_nulls_keep_their_index() {
        let rows = rows_at(0, &page(r#"[{"indirect_link_path":[null,{"url":"u"}]}]"#)).unwrap();
        assert_eq!(rows.redirects.num_rows(), 2);
        let hops = rows.backlinks.column_by_name("indirect_link_hops").unwrap();
        assert_eq!(hops.as_primitive::<Int64Type>().value(0), 2);
        let url = rows
            .redirects
            .column_by_name("url")
            .unwrap()
            .as_string::<i32>();
        assert!(url.is_null(0));
        assert_eq!(url.value(1), "u");
    }
}
