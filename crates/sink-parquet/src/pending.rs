//! One Parquet file on its way into place: written under a temporary name,
//! closed and fsync'd, renamed onto its final name, or removed if abandoned.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use backlinks_model::Dataset;
use backlinks_model::schema::{FREE_TEXT_COLUMNS, NEAR_UNIQUE_NUMBER_COLUMNS};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tempfile::TempPath;

use crate::{Error, Result};

/// Rows per row group at most: bounds the memory a writer holds.
pub(crate) const MAX_ROW_GROUP_ROWS: usize = 65_536;

/// Buffered bytes after which the row group in progress is flushed early.
pub(crate) const FLUSH_BYTES: usize = 8 * 1024 * 1024;

/// Bytes of a data page, and of a dictionary before a column falls back to
/// plain encoding.
const PAGE_BYTES: usize = 256 * 1024;

/// The zstd level of every file.
const ZSTD_LEVEL: i32 = 3;

/// The key of the file metadata entry that names the dataset.
pub(crate) const DATASET_METADATA_KEY: &str = "backlinks.dataset";

/// A file being written under a temporary name, to be renamed to `dest`.
#[derive(Debug)]
pub(crate) struct PendingFile {
    pub(crate) dataset: Dataset,
    dest: PathBuf,
    /// The temporary file, created on the first write (or on close, for a
    /// file with no rows): `<dir>/.<stem>.parquet.tmp-<random>`, hidden
    /// from `*.parquet` globs. Removed when dropped before its rename.
    tmp: Option<TempPath>,
    /// Writes into the file at `tmp`.
    writer: Option<ArrowWriter<File>>,
    /// Set when writing failed part way: the file is abandoned.
    failed: bool,
    /// Set once the footer is written and the file fsync'd.
    closed: bool,
    rows: u64,
}

impl PendingFile {
    /// A file `<dir>/<stem>.parquet`, written at
    /// `<dir>/.<stem>.parquet.tmp-<random>`.
    pub(crate) fn new(dataset: Dataset, dir: &Path, stem: &str) -> Self {
        Self {
            dataset,
            dest: dir.join(format!("{stem}.parquet")),
            tmp: None,
            writer: None,
            failed: false,
            closed: false,
            rows: 0,
        }
    }

    /// The path of the temporary file, for messages (the final path before
    /// the file exists).
    fn tmp_path(&self) -> PathBuf {
        self.tmp
            .as_deref()
            .unwrap_or(self.dest.as_path())
            .to_path_buf()
    }

    /// The final path of the file.
    pub(crate) fn dest(&self) -> &Path {
        &self.dest
    }

    /// The directory the file lands in.
    pub(crate) fn dir(&self) -> &Path {
        self.dest.parent().unwrap_or_else(|| Path::new("."))
    }

    /// Rows written so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends `batch`, which must have the dataset's columns.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.check_usable()?;
        if self.closed {
            return Err(Error::Closed {
                path: self.dest.clone(),
            });
        }
        let batch = conform(self.dataset, batch)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let result = self.write_inner(&batch);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn write_inner(&mut self, batch: &RecordBatch) -> Result<()> {
        let writer = self.open()?;
        let result = writer.write(batch).and_then(|()| {
            if writer.in_progress_size() > FLUSH_BYTES {
                writer.flush()
            } else {
                Ok(())
            }
        });
        result.map_err(|source| Error::Parquet {
            path: self.tmp_path(),
            source,
        })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Writes the footer and fsyncs the temporary file. A file that got no
    /// rows is written with the dataset's schema and zero rows.
    pub(crate) fn close(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.closed {
            return Ok(());
        }
        let result = self.close_inner();
        match result {
            Ok(()) => self.closed = true,
            Err(_) => self.failed = true,
        }
        result
    }

    fn close_inner(&mut self) -> Result<()> {
        self.open()?;
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        let file = writer.into_inner().map_err(|source| Error::Parquet {
            path: self.tmp_path(),
            source,
        })?;
        file.sync_all().map_err(|source| Error::Io {
            action: "syncing",
            path: self.tmp_path(),
            source,
        })
    }

    /// Renames the closed temporary file onto its final name, replacing the
    /// previous file whole.
    pub(crate) fn persist(&mut self) -> Result<()> {
        self.check_usable()?;
        let Some(tmp) = self.tmp.take() else {
            // Closing creates the file: only a failed close leaves none,
            // and that is refused above.
            return Err(Error::Abandoned {
                path: self.dest.clone(),
            });
        };
        tmp.persist(&self.dest).map_err(|e| {
            // Still ours: removed on drop.
            self.tmp = Some(e.path);
            Error::Io {
                action: "replacing",
                path: self.dest.clone(),
                source: e.error,
            }
        })
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            Err(Error::Abandoned {
                path: self.dest.clone(),
            })
        } else {
            Ok(())
        }
    }

    /// The writer, creating the temporary file on first use.
    fn open(&mut self) -> Result<&mut ArrowWriter<File>> {
        let writer = match self.writer.take() {
            Some(writer) => writer,
            None => self.create()?,
        };
        Ok(self.writer.insert(writer))
    }

    /// Creates the temporary file in the final directory and a writer
    /// into it.
    fn create(&mut self) -> Result<ArrowWriter<File>> {
        let name = self.dest.file_name().unwrap_or_default().to_string_lossy();
        let dir = self.dir();
        // A leading `.` hides the file from `*.parquet` globs; the name ends
        // in random characters, never in `.parquet`.
        let (file, path) = tempfile::Builder::new()
            .prefix(&format!(".{name}.tmp-"))
            .rand_bytes(12)
            .tempfile_in(dir)
            .map_err(|source| Error::Io {
                action: "creating a temporary file in",
                path: dir.to_path_buf(),
                source,
            })?
            .into_parts();
        self.tmp = Some(path);
        let parquet = |source| Error::Parquet {
            path: self.tmp_path(),
            source,
        };
        let props = properties(self.dataset).map_err(parquet)?;
        ArrowWriter::try_new(file, self.dataset.schema(), Some(props)).map_err(parquet)
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        // Close the handle before removing the file.
        drop(self.writer.take());
        if let Some(tmp) = self.tmp.take() {
            let path = tmp.to_path_buf();
            if let Err(error) = tmp.close() {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(
                        path = %path.display(),
                        %error,
                        "could not remove an abandoned temporary parquet file"
                    );
                }
            }
        }
    }
}

/// Writer properties of every file: dictionaries, statistics, bounded pages
/// and row groups, and the dataset's name in the key/value metadata.
///
/// Statistics are kept per page (the page index, which lets readers skip
/// pages) for the other columns, but only per row group for text columns:
/// the writer holds every page's entry until the file is closed, and text
/// entries are the large ones. The near-unique free text columns
/// ([`FREE_TEXT_COLUMNS`]: URLs, titles, snippets) get neither statistics
/// nor a dictionary: their min and max prune nothing, and a dictionary of
/// values that almost never repeat is abandoned after its first 256 KB.
/// Computing both was about a tenth of the write (BENCHMARKS.md).
/// Near-unique numbers ([`NEAR_UNIQUE_NUMBER_COLUMNS`]: positions, times
/// seen, page sizes) get no dictionary either, and `DELTA_BINARY_PACKED`
/// encoding: `backlinks` files are 10 % smaller than with the abandoned
/// dictionaries, 4 % smaller than with plain values.
///
/// Text columns (URLs, titles, anchors, the text around links: almost all
/// of a file's bytes) are compressed with zstd; the other columns, already
/// small after dictionary and run-length encoding, with LZ4. The parquet
/// crate keeps a zstd compression and decompression context for every
/// column of an open file (about 0.5 MB per column), and a run holds one
/// file per target in flight, so zstd on the ~50 numeric, boolean and date
/// columns cost far more memory than the bytes it saved.
fn properties(dataset: Dataset) -> parquet::errors::Result<WriterProperties> {
    let level = ZstdLevel::try_new(ZSTD_LEVEL)?;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_dictionary_enabled(true)
        .set_dictionary_page_size_limit(PAGE_BYTES)
        .set_data_page_size_limit(PAGE_BYTES)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            DATASET_METADATA_KEY.to_owned(),
            dataset.name().to_owned(),
        )]));
    for field in dataset.schema().fields() {
        let name = field.name().as_str();
        let column = ColumnPath::from(name);
        builder = if FREE_TEXT_COLUMNS.contains(&name) {
            builder
                .set_column_dictionary_enabled(column.clone(), false)
                .set_column_statistics_enabled(column, EnabledStatistics::None)
        } else if holds_text(field.data_type()) {
            builder.set_column_statistics_enabled(column, EnabledStatistics::Chunk)
        } else {
            let builder = builder.set_column_compression(column.clone(), Compression::LZ4_RAW);
            if NEAR_UNIQUE_NUMBER_COLUMNS.contains(&name) {
                builder
                    .set_column_dictionary_enabled(column.clone(), false)
                    .set_column_encoding(column, Encoding::DELTA_BINARY_PACKED)
            } else {
                builder
            }
        };
    }
    Ok(builder.build())
}

/// Whether a column's values are text (or lists of text).
fn holds_text(data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::List(item) | DataType::LargeList(item) => holds_text(item.data_type()),
        _ => false,
    }
}

/// `batch` with the dataset's schema, or an error naming the dataset and the
/// first difference: column names must match in order, types exactly, and a
/// non-nullable column must hold no nulls.
fn conform(dataset: Dataset, batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = dataset.schema();
    let error = |message: String| Error::Schema {
        dataset: dataset.name(),
        message,
    };
    let got = batch.schema();
    if got.fields().len() != schema.fields().len() {
        return Err(error(format!(
            "the batch has {} columns, the dataset {}",
            got.fields().len(),
            schema.fields().len()
        )));
    }
    for (index, (expected, actual)) in schema.fields().iter().zip(got.fields()).enumerate() {
        if expected.name() != actual.name() {
            return Err(error(format!(
                "column {index} is `{}`, expected `{}`",
                actual.name(),
                expected.name()
            )));
        }
    }
    RecordBatch::try_new(schema, batch.columns().to_vec()).map_err(|source| Error::SchemaRefused {
        dataset: dataset.name(),
        source,
    })
}
