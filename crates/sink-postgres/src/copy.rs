//! The binary `COPY` encoder: Arrow columns to the `PGCOPY` wire format.
//!
//! A batch is checked against the table's column types once
//! ([`RowEncoder::new`]), each Arrow column downcast once, and rows are then
//! encoded into a reusable buffer in chunks ([`RowEncoder::encode`]), so a
//! batch of any size is sent with bounded memory and no allocation per row.
//!
//! Postgres `text` cannot hold the NUL character and `jsonb` refuses the
//! escape `\u0000`: both are replaced by U+FFFD (the replacement character)
//! on the way in.

use std::fmt::Write as _;

use arrow::array::{
    Array, AsArray, BooleanArray, Date32Array, Float64Array, Int64Array, ListArray, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType,
};
use bytes::{BufMut, BytesMut};
use sqlx::PgConnection;
use sqlx::postgres::PgCopyIn;

use crate::catalog::{PgType, TableColumns};
use crate::{Error, Result};

/// Start of every binary `COPY` stream: signature, flags, header extension
/// length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Days from 1970-01-01 (Arrow) to 2000-01-01 (Postgres).
const PG_EPOCH_DAYS: i32 = 10_957;

/// Microseconds from 1970-01-01 (Arrow) to 2000-01-01 (Postgres).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The replacement of a NUL character in text.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Writes the stream header.
fn write_header(buf: &mut BytesMut) {
    buf.put_slice(HEADER);
}

/// Writes the stream trailer.
fn write_trailer(buf: &mut BytesMut) {
    buf.put_i16(-1);
}

/// Quotes an SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// One Arrow column, downcast, with the Postgres encoding it gets.
enum Column<'a> {
    Text(&'a StringArray),
    Jsonb(&'a StringArray),
    Int8(&'a Int64Array),
    Float8(&'a Float64Array),
    Bool(&'a BooleanArray),
    Date(&'a Date32Array),
    Timestamp(&'a TimestampMicrosecondArray),
    TextArray {
        list: &'a ListArray,
        values: &'a StringArray,
        element_oid: u32,
    },
}

/// Encodes the rows of one batch for one table.
pub(crate) struct RowEncoder<'a> {
    table: &'a str,
    names: Vec<&'a str>,
    columns: Vec<Column<'a>>,
    rows: usize,
}

impl<'a> RowEncoder<'a> {
    /// Matches every column of `batch` with the table's column of the same
    /// name and checks that the Arrow type can be written to it.
    pub(crate) fn new(table: &'a TableColumns, batch: &'a RecordBatch) -> Result<Self> {
        let schema = batch.schema_ref();
        let mut names = Vec::with_capacity(schema.fields().len());
        let mut columns = Vec::with_capacity(schema.fields().len());
        for (field, array) in schema.fields().iter().zip(batch.columns()) {
            let name = field.name().as_str();
            let pg = table.get(name).ok_or_else(|| Error::UnknownColumn {
                table: table.name().to_owned(),
                column: name.to_owned(),
            })?;
            let column = column(array.as_ref(), pg).ok_or_else(|| Error::Encode {
                table: table.name().to_owned(),
                column: name.to_owned(),
                message: format!(
                    "an Arrow {} column cannot be written to a Postgres {} column",
                    array.data_type(),
                    pg.name()
                ),
            })?;
            names.push(name);
            columns.push(column);
        }
        if i16::try_from(columns.len()).is_err() {
            return Err(Error::Encode {
                table: table.name().to_owned(),
                column: String::new(),
                message: format!("{} columns are more than a row can hold", columns.len()),
            });
        }
        Ok(Self {
            table: table.name(),
            names,
            columns,
            rows: batch.num_rows(),
        })
    }

    /// Number of rows of the batch.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// `COPY <into> (<columns>) FROM STDIN (FORMAT binary)`.
    pub(crate) fn copy_statement(&self, into: &str) -> String {
        let mut sql = format!("COPY {} (", quote_ident(into));
        for (i, name) in self.names.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&quote_ident(name));
        }
        // Writing to a String cannot fail.
        let _ = write!(sql, ") FROM STDIN (FORMAT binary)");
        sql
    }

    /// Encodes rows from `row` on until the buffer holds at least `limit`
    /// bytes or the batch ends; returns the next row to encode.
    pub(crate) fn encode(&self, buf: &mut BytesMut, mut row: usize, limit: usize) -> Result<usize> {
        // Checked in `new`.
        let fields = self.columns.len() as i16;
        while row < self.rows && buf.len() < limit {
            buf.put_i16(fields);
            for (column, name) in self.columns.iter().zip(&self.names) {
                column.encode(buf, row).map_err(|message| Error::Encode {
                    table: self.table.to_owned(),
                    column: (*name).to_owned(),
                    message: format!("row {row}: {message}"),
                })?;
            }
            row += 1;
        }
        Ok(row)
    }
}

/// Downcasts `array` for a column of type `pg`; `None` when the pair is not
/// supported.
fn column<'a>(array: &'a dyn Array, pg: &PgType) -> Option<Column<'a>> {
    Some(match (array.data_type(), pg) {
        (DataType::Utf8, PgType::Text | PgType::Json) => Column::Text(array.as_string_opt()?),
        (DataType::Utf8, PgType::Jsonb) => Column::Jsonb(array.as_string_opt()?),
        (DataType::Int64, PgType::Int8) => Column::Int8(array.as_primitive_opt::<Int64Type>()?),
        (DataType::Float64, PgType::Float8) => {
            Column::Float8(array.as_primitive_opt::<Float64Type>()?)
        }
        (DataType::Boolean, PgType::Bool) => Column::Bool(array.as_boolean_opt()?),
        (DataType::Date32, PgType::Date) => Column::Date(array.as_primitive_opt::<Date32Type>()?),
        (
            DataType::Timestamp(TimeUnit::Microsecond, _),
            PgType::Timestamptz | PgType::Timestamp,
        ) => Column::Timestamp(array.as_primitive_opt::<TimestampMicrosecondType>()?),
        (DataType::List(item), PgType::TextArray { element_oid })
            if item.data_type() == &DataType::Utf8 =>
        {
            let list = array.as_list_opt::<i32>()?;
            Column::TextArray {
                list,
                values: list.values().as_string_opt()?,
                element_oid: *element_oid,
            }
        }
        _ => return None,
    })
}

impl Column<'_> {
    /// Appends one field (length and value, or -1 for NULL).
    fn encode(&self, buf: &mut BytesMut, row: usize) -> std::result::Result<(), String> {
        match self {
            Column::Text(a) => {
                if a.is_null(row) {
                    buf.put_i32(-1);
                } else {
                    put_text_field(buf, a.value(row))?;
                }
            }
            Column::Jsonb(a) => {
                if a.is_null(row) {
                    buf.put_i32(-1);
                } else {
                    put_jsonb_field(buf, a.value(row))?;
                }
            }
            Column::Int8(a) => {
                if a.is_null(row) {
                    buf.put_i32(-1);
                } else {
                    buf.put_i32(8);
                    buf.put_i64(a.value(row));
                }
            }
            Column::Float8(a) => {
                if a.is_null(row) {
                    buf.put_i32(-1);
                } else {
                    buf.put_i32(8);
                    buf.put_f64(a.value(row));
                }
            }
            Column::Bool(a) => {
                if a.is_null(row) {
                    buf.put_i32(-1);
                } else {
                    buf.put_i32(1);
                    buf.put_u8(u8::from(a.value(row)));
                }
            }
            Column::Date(a) => {
                if a.is_null(row) {
                    buf.put_i32(-1);
                } else {
                    let days = a.value(row);
                    let pg = days.checked_sub(PG_EPOCH_DAYS).ok_or_else(|| {
                        format!("date {days} days after 1970-01-01 is out of range")
                    })?;
                    buf.put_i32(4);
                    buf.put_i32(pg);
                }
            }
            Column::Timestamp(a) => {
                if a.is_null(row) {
                    buf.put_i32(-1);
                } else {
                    let micros = a.value(row);
                    let pg = micros.checked_sub(PG_EPOCH_MICROS).ok_or_else(|| {
                        format!("timestamp {micros} µs after 1970-01-01 is out of range")
                    })?;
                    buf.put_i32(8);
                    buf.put_i64(pg);
                }
            }
            Column::TextArray {
                list,
                values,
                element_oid,
            } => {
                if list.is_null(row) {
                    buf.put_i32(-1);
                } else {
                    let offsets = list.value_offsets();
                    // Offsets of a valid ListArray are non-negative and ordered.
                    let start = usize::try_from(offsets[row]).unwrap_or(0);
                    let end = usize::try_from(offsets[row + 1]).unwrap_or(start);
                    put_text_array_field(buf, values, start..end, *element_oid)?;
                }
            }
        }
        Ok(())
    }
}

/// Reserves the length word of a field; returns its position.
fn begin_field(buf: &mut BytesMut) -> usize {
    let at = buf.len();
    buf.put_i32(0);
    at
}

/// Writes the length of the field begun at `at`.
fn end_field(buf: &mut BytesMut, at: usize) -> std::result::Result<(), String> {
    let len = buf.len() - at - 4;
    let len = i32::try_from(len).map_err(|_| format!("a value of {len} bytes is too large"))?;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Appends text with every NUL replaced by U+FFFD.
fn put_text(buf: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    if !bytes.contains(&0) {
        buf.put_slice(bytes);
        return;
    }
    for (i, part) in bytes.split(|b| *b == 0).enumerate() {
        if i > 0 {
            buf.put_slice(REPLACEMENT);
        }
        buf.put_slice(part);
    }
}

/// A `text` field.
fn put_text_field(buf: &mut BytesMut, s: &str) -> std::result::Result<(), String> {
    if !s.as_bytes().contains(&0) {
        let len = i32::try_from(s.len())
            .map_err(|_| format!("a value of {} bytes is too large", s.len()))?;
        buf.put_i32(len);
        buf.put_slice(s.as_bytes());
        return Ok(());
    }
    let at = begin_field(buf);
    put_text(buf, s);
    end_field(buf, at)
}

/// A `jsonb` field: version 1, then the JSON text with NUL characters and
/// `\u0000` escapes replaced by U+FFFD (Postgres refuses both).
fn put_jsonb_field(buf: &mut BytesMut, json: &str) -> std::result::Result<(), String> {
    let at = begin_field(buf);
    buf.put_u8(1);
    let bytes = json.as_bytes();
    if !bytes.contains(&0) && !json.contains("\\u0000") {
        buf.put_slice(bytes);
        return end_field(buf, at);
    }
    let (mut i, mut done) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if bytes[i + 1..].starts_with(b"u0000") => {
                buf.put_slice(&bytes[done..i]);
                buf.put_slice(b"\\ufffd");
                i += 6;
                done = i;
            }
            // Any other escape: skip the escaped character too, so that the
            // `u0000` of `\\u0000` stays literal text.
            b'\\' => i += 2,
            0 => {
                buf.put_slice(&bytes[done..i]);
                buf.put_slice(REPLACEMENT);
                i += 1;
                done = i;
            }
            _ => i += 1,
        }
    }
    buf.put_slice(&bytes[done.min(bytes.len())..]);
    end_field(buf, at)
}

/// A one-dimensional `text[]` field of `values[range]`; an empty list has no
/// dimensions.
fn put_text_array_field(
    buf: &mut BytesMut,
    values: &StringArray,
    range: std::ops::Range<usize>,
    element_oid: u32,
) -> std::result::Result<(), String> {
    let at = begin_field(buf);
    if range.is_empty() {
        buf.put_i32(0); // dimensions
        buf.put_i32(0); // has nulls
        buf.put_u32(element_oid);
        return end_field(buf, at);
    }
    let has_null = range.clone().any(|i| values.is_null(i));
    let len = i32::try_from(range.len())
        .map_err(|_| format!("a list of {} elements is too long", range.len()))?;
    buf.put_i32(1);
    buf.put_i32(i32::from(has_null));
    buf.put_u32(element_oid);
    buf.put_i32(len);
    buf.put_i32(1); // lower bound
    for i in range {
        if values.is_null(i) {
            buf.put_i32(-1);
        } else {
            put_text_field(buf, values.value(i))?;
        }
    }
    end_field(buf, at)
}

/// Size of the pieces a batch is sent in.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// Sends `batch` with one binary `COPY` into table `into` (whose columns
/// are `columns`) on `conn`, in pieces of about [`CHUNK_BYTES`] encoded in
/// `buf`. Returns the number of rows the server took. `action` names the
/// work in errors.
pub(crate) async fn copy_in(
    conn: &mut PgConnection,
    into: &str,
    columns: &TableColumns,
    batch: &RecordBatch,
    buf: &mut BytesMut,
    action: impl Fn() -> String,
) -> Result<u64> {
    let encoder = RowEncoder::new(columns, batch)?;
    if encoder.rows() == 0 {
        return Ok(0);
    }
    let query = |source| Error::Query {
        action: action(),
        source,
    };
    let mut copy = open(conn, &encoder.copy_statement(into))
        .await
        .map_err(query)?;
    match send_rows(&mut copy, &encoder, buf, &query).await {
        Ok(()) => close(copy).await.map_err(query),
        Err(e @ Error::Encode { .. }) => {
            if let Err(abort) = copy.abort(e.to_string()).await {
                tracing::warn!(table = into, error = %abort, "aborting the copy failed");
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// Starts `statement` (a binary `COPY … FROM STDIN`) and sends the stream
/// header.
pub(crate) async fn open<'c>(
    conn: &'c mut PgConnection,
    statement: &str,
) -> sqlx::Result<PgCopyIn<&'c mut PgConnection>> {
    let mut copy = conn.copy_in_raw(statement).await?;
    let mut header = BytesMut::new();
    write_header(&mut header);
    copy.send(header).await?;
    Ok(copy)
}

/// Encodes the rows of `encoder` into `buf` and sends them, in pieces of
/// about [`CHUNK_BYTES`]. A value that cannot be encoded is an
/// [`Error::Encode`]; a failed send goes through `query`.
pub(crate) async fn send_rows(
    copy: &mut PgCopyIn<&mut PgConnection>,
    encoder: &RowEncoder<'_>,
    buf: &mut BytesMut,
    query: impl Fn(sqlx::Error) -> Error,
) -> Result<()> {
    buf.clear();
    buf.reserve(CHUNK_BYTES + CHUNK_BYTES / 8);
    let mut row = 0;
    while row < encoder.rows() {
        row = encoder
            .encode(buf, row, CHUNK_BYTES)
            .inspect_err(|_| buf.clear())?;
        copy.send(&buf[..]).await.map_err(&query)?;
        buf.clear();
    }
    // Give back a buffer that grew for one huge row.
    if buf.capacity() > 4 * CHUNK_BYTES {
        *buf = BytesMut::new();
    }
    Ok(())
}

/// Sends the stream trailer and waits for the server to take every row;
/// returns their number.
pub(crate) async fn close(mut copy: PgCopyIn<&mut PgConnection>) -> sqlx::Result<u64> {
    let mut trailer = BytesMut::new();
    write_trailer(&mut trailer);
    copy.send(trailer).await?;
    copy.finish().await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, ListBuilder, StringBuilder};
    use arrow::datatypes::{Field, Schema};

    use super::*;
    use crate::catalog::TableColumns;

    fn table(columns: &[(&str, PgType)]) -> TableColumns {
        TableColumns::new(
            "t",
            columns
                .iter()
                .map(|(n, t)| ((*n).to_owned(), t.clone()))
                .collect(),
        )
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap()
    }

    /// The field bytes of every row (without the field-count word), for a
    /// batch of one column.
    fn fields(table: &TableColumns, batch: &RecordBatch) -> Vec<Vec<u8>> {
        let encoder = RowEncoder::new(table, batch).unwrap();
        (0..batch.num_rows())
            .map(|row| {
                let mut buf = BytesMut::new();
                assert_eq!(encoder.encode(&mut buf, row, 1).unwrap(), row + 1);
                assert_eq!(&buf[..2], &1i16.to_be_bytes());
                buf[2..].to_vec()
            })
            .collect()
    }

    fn field(value: &[u8]) -> Vec<u8> {
        let mut out = (value.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(value);
        out
    }

    const NULL: [u8; 4] = [0xff; 4];

    #[test]
    fn the_stream_has_the_binary_copy_header_and_trailer() {
        let mut buf = BytesMut::new();
        write_header(&mut buf);
        write_trailer(&mut buf);
        assert_eq!(&buf[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&buf[11..19], &[0; 8]);
        assert_eq!(&buf[19..], &[0xff, 0xff]);
    }

    #[test]
    fn text_keeps_special_characters_and_replaces_nul() {
        let t = table(&[("s", PgType::Text)]);
        let b = batch(vec![(
            "s",
            Arc::new(StringArray::from(vec![
                Some("a,\"b\"\n\t\\ é"),
                None,
                Some("x\0y\0"),
                Some(""),
            ])),
        )]);
        let got = fields(&t, &b);
        assert_eq!(got[0], field("a,\"b\"\n\t\\ é".as_bytes()));
        assert_eq!(got[1], NULL);
        assert_eq!(got[2], field("x\u{FFFD}y\u{FFFD}".as_bytes()));
        assert_eq!(got[3], field(b""));
    }

    #[test]
    fn jsonb_gets_version_one_and_loses_nul_escapes_only() {
        let t = table(&[("j", PgType::Jsonb)]);
        let b = batch(vec![(
            "j",
            Arc::new(StringArray::from(vec![
                r#"{"a":1}"#,
                r#"{"a":"x\u0000y"}"#,
                r#"{"a":"\\u0000"}"#,
                r#"{"a":"\"\u0000"}"#,
            ])),
        )]);
        let got = fields(&t, &b);
        assert_eq!(got[0], field(b"\x01{\"a\":1}"));
        assert_eq!(got[1], field(b"\x01{\"a\":\"x\\ufffdy\"}"));
        // An escaped backslash followed by the text u0000 is not a NUL.
        assert_eq!(got[2], field(b"\x01{\"a\":\"\\\\u0000\"}"));
        assert_eq!(got[3], field(b"\x01{\"a\":\"\\\"\\ufffd\"}"));
    }

    #[test]
    fn numbers_dates_and_timestamps_use_the_postgres_epoch() {
        let t = table(&[
            ("i", PgType::Int8),
            ("f", PgType::Float8),
            ("b", PgType::Bool),
            ("d", PgType::Date),
            ("ts", PgType::Timestamptz),
        ]);
        let ts = TimestampMicrosecondArray::from(vec![Some(PG_EPOCH_MICROS + 1), None])
            .with_timezone("UTC");
        let b = batch(vec![
            (
                "i",
                Arc::new(Int64Array::from(vec![Some(5_000_000_000), None])),
            ),
            ("f", Arc::new(Float64Array::from(vec![Some(0.5), None]))),
            ("b", Arc::new(BooleanArray::from(vec![Some(true), None]))),
            (
                "d",
                Arc::new(Date32Array::from(vec![Some(PG_EPOCH_DAYS + 2), None])),
            ),
            ("ts", Arc::new(ts)),
        ]);
        let encoder = RowEncoder::new(&t, &b).unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(encoder.encode(&mut buf, 0, 1).unwrap(), 1);
        let mut want = 5i16.to_be_bytes().to_vec();
        want.extend(field(&5_000_000_000i64.to_be_bytes()));
        want.extend(field(&0.5f64.to_be_bytes()));
        want.extend(field(&[1]));
        want.extend(field(&2i32.to_be_bytes()));
        want.extend(field(&1i64.to_be_bytes()));
        assert_eq!(&buf[..], &want[..]);
        buf.clear();
        encoder.encode(&mut buf, 1, 1).unwrap();
        let mut want = 5i16.to_be_bytes().to_vec();
        for _ in 0..5 {
            want.extend(NULL);
        }
        assert_eq!(&buf[..], &want[..]);
    }

    #[test]
    fn text_arrays_mark_nulls_and_empty_lists_have_no_dimension() {
        let t = table(&[("l", PgType::TextArray { element_oid: 25 })]);
        let mut builder = ListBuilder::new(StringBuilder::new());
        builder.values().append_value("a");
        builder.values().append_null();
        builder.append(true);
        builder.append(true); // empty
        builder.append(false); // NULL
        builder.values().append_value("b\0");
        builder.append(true);
        let b = batch(vec![("l", Arc::new(builder.finish()))]);
        let got = fields(&t, &b);

        let mut one = Vec::new();
        for w in [1i32, 1, 25, 2, 1] {
            one.extend(w.to_be_bytes());
        }
        one.extend(field(b"a"));
        one.extend(NULL);
        assert_eq!(got[0], field(&one));

        let mut empty = Vec::new();
        for w in [0i32, 0, 25] {
            empty.extend(w.to_be_bytes());
        }
        assert_eq!(got[1], field(&empty));
        assert_eq!(got[2], NULL);

        let mut replaced = Vec::new();
        for w in [1i32, 0, 25, 1, 1] {
            replaced.extend(w.to_be_bytes());
        }
        replaced.extend(field("b\u{FFFD}".as_bytes()));
        assert_eq!(got[3], field(&replaced));
    }

    #[test]
    fn encoding_stops_at_the_chunk_limit_and_resumes() {
        let t = table(&[("s", PgType::Text)]);
        let b = batch(vec![(
            "s",
            Arc::new(StringArray::from(vec!["0123456789"; 10])),
        )]);
        let encoder = RowEncoder::new(&t, &b).unwrap();
        let mut buf = BytesMut::new();
        // Each row takes 2 + 4 + 10 bytes.
        let next = encoder.encode(&mut buf, 0, 40).unwrap();
        assert_eq!(next, 3);
        assert_eq!(buf.len(), 48);
        buf.clear();
        assert_eq!(encoder.encode(&mut buf, next, usize::MAX).unwrap(), 10);
        assert_eq!(buf.len(), 7 * 16);
    }

    #[test]
    fn a_type_the_column_cannot_take_is_refused_before_encoding() {
        let t = table(&[("n", PgType::Int8), ("s", PgType::Text)]);
        let b = batch(vec![("n", Arc::new(StringArray::from(vec!["1"])))]);
        match RowEncoder::new(&t, &b) {
            Err(Error::Encode { table, column, .. }) => {
                assert_eq!((table.as_str(), column.as_str()), ("t", "n"));
            }
            other => panic!("{:?}", other.err()),
        }
        let b = batch(vec![("missing", Arc::new(StringArray::from(vec!["1"])))]);
        match RowEncoder::new(&t, &b) {
            Err(Error::UnknownColumn { table, column }) => {
                assert_eq!((table.as_str(), column.as_str()), ("t", "missing"));
            }
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn a_date_out_of_range_names_the_row_and_column() {
        let t = table(&[("d", PgType::Date)]);
        let b = batch(vec![(
            "d",
            Arc::new(Date32Array::from(vec![Some(0), Some(i32::MIN)])),
        )]);
        let encoder = RowEncoder::new(&t, &b).unwrap();
        let mut buf = BytesMut::new();
        match encoder.encode(&mut buf, 0, usize::MAX) {
            Err(Error::Encode {
                column, message, ..
            }) => {
                assert_eq!(column, "d");
                assert!(message.starts_with("row 1:"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_statement_quotes_every_identifier() {
        let t = table(&[("key", PgType::Text), ("we\"ird", PgType::Text)]);
        let b = batch(vec![
            ("key", Arc::new(StringArray::from(vec!["a"]))),
            ("we\"ird", Arc::new(StringArray::from(vec!["b"]))),
        ]);
        let encoder = RowEncoder::new(&t, &b).unwrap();
        assert_eq!(
            encoder.copy_statement("summary_breakdown"),
            r#"COPY "summary_breakdown" ("key", "we""ird") FROM STDIN (FORMAT binary)"#
        );
    }
}
