//! The Parquet sink of the backlinks pipeline: lands Arrow record batches as
//! zstd Parquet files, one file per partition and dataset.
//!
//! [`ParquetSink`] owns a directory laid out as
//! `<dir>/<dataset>/snapshot_date=YYYY-MM-DD/<pipeline>__<target>.parquet`
//! (the target percent-encoded by [`file_stem`]). Batches enter through a
//! [`StagedPartition`] (from [`ParquetSink::begin`]), which replaces one
//! partition in the datasets it names, or through a [`DatasetFile`] (from
//! [`ParquetSink::create`]), one standalone file such as the request ledger
//! `<pipeline>__<run id>.parquet`. Either streams: row groups are flushed by
//! size, so memory stays bounded however many batches arrive.
//!
//! Every file is written under a temporary name in its final directory,
//! `.<name>.parquet.tmp-<random>` (hidden from `*.parquet` globs), then fsync'd
//! and renamed into place, and the directory fsync'd: a reader sees the
//! previous file or the new one whole, never a part. Dropping a staged
//! partition or file without committing removes its temporary files and
//! leaves the previous files untouched.

mod pending;
mod stem;

use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use backlinks_model::{Dataset, PartitionKey};
use chrono::NaiveDate;

use pending::PendingFile;
pub use stem::{MAX_STEM_BYTES, file_stem};

/// Errors of the Parquet sink. Each names the file or directory concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed (disk full, read-only directory, …).
    #[error("{action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Encoding or writing Parquet failed.
    #[error("writing parquet file {}: {source}", .path.display())]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    /// A batch does not have the dataset's columns (names or count).
    #[error("dataset {dataset}: batch does not match the dataset schema: {message}")]
    Schema {
        dataset: &'static str,
        message: String,
    },
    /// Arrow refused the batch's columns under the dataset's schema: a type
    /// that differs, or a null in a non-null column.
    #[error("dataset {dataset}: batch does not match the dataset schema: {source}")]
    SchemaRefused {
        dataset: &'static str,
        source: arrow::error::ArrowError,
    },
    /// A partition was given a batch of a dataset it did not name at `begin`.
    #[error("dataset {dataset} was not named when the partition of target {target} began")]
    UnknownDataset {
        dataset: &'static str,
        target: String,
    },
    /// A caller-given file stem is not a safe file name.
    #[error("file stem {stem:?} is not a safe file name: {reason}")]
    InvalidStem { stem: String, reason: &'static str },
    /// An earlier write to this file failed, so it will not be put in place.
    #[error("{}: an earlier write failed; the file was abandoned", .path.display())]
    Abandoned { path: PathBuf },
    /// A write after the file was prepared (closed) for its commit.
    #[error("{}: written after it was closed for commit", .path.display())]
    Closed { path: PathBuf },
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A directory of Parquet datasets.
#[derive(Debug, Clone)]
pub struct ParquetSink {
    dir: PathBuf,
}

impl ParquetSink {
    /// Opens the sink at `dir`, creating the directory if needed.
    pub fn new(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            action: "creating directory",
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The root directory of the sink.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts replacing the partition `key` in `datasets`. Nothing is visible
    /// until [`StagedPartition::commit`]; every dataset named here is
    /// replaced then, with zero rows if it got none.
    pub fn begin(&self, key: &PartitionKey, datasets: &[Dataset]) -> Result<StagedPartition> {
        let stem = file_stem(&key.pipeline, key.target.as_str());
        let mut files: Vec<PendingFile> = Vec::with_capacity(datasets.len());
        for &dataset in datasets {
            if files.iter().any(|f| f.dataset == dataset) {
                continue;
            }
            let dir = self.partition_dir(dataset, key.snapshot_date)?;
            files.push(PendingFile::new(dataset, &dir, &stem));
        }
        Ok(StagedPartition {
            target: key.target.to_string(),
            files,
        })
    }

    /// Starts one standalone file of `dataset`:
    /// `<dir>/<dataset>/snapshot_date=YYYY-MM-DD/<stem>.parquet`. The stem
    /// (e.g. `<pipeline>__<run id>`) must be a safe file name: bytes
    /// `A-Z a-z 0-9 . - _ % ~`, no leading `.`, at most [`MAX_STEM_BYTES`].
    pub fn create(
        &self,
        dataset: Dataset,
        snapshot_date: NaiveDate,
        stem: &str,
    ) -> Result<DatasetFile> {
        if let Some(reason) = stem::stem_problem(stem) {
            return Err(Error::InvalidStem {
                stem: stem.to_owned(),
                reason,
            });
        }
        let dir = self.partition_dir(dataset, snapshot_date)?;
        Ok(DatasetFile {
            file: PendingFile::new(dataset, &dir, stem),
        })
    }

    /// `<dir>/<dataset>/snapshot_date=YYYY-MM-DD`, created (and its creation
    /// made durable) if missing.
    fn partition_dir(&self, dataset: Dataset, snapshot_date: NaiveDate) -> Result<PathBuf> {
        let dataset_dir = self.dir.join(dataset.name());
        let dir = dataset_dir.join(format!(
            "snapshot_date={}",
            snapshot_date.format("%Y-%m-%d")
        ));
        if dir.is_dir() {
            return Ok(dir);
        }
        let new_dataset_dir = !dataset_dir.is_dir();
        fs::create_dir_all(&dir).map_err(|source| Error::Io {
            action: "creating directory",
            path: dir.clone(),
            source,
        })?;
        sync_dir(&dataset_dir)?;
        if new_dataset_dir {
            sync_dir(&self.dir)?;
        }
        Ok(dir)
    }
}

/// A partition being replaced: batches written so far sit in temporary
/// files until [`commit`](Self::commit). Dropping it without committing
/// removes them and leaves the previous partition as it was.
#[derive(Debug)]
pub struct StagedPartition {
    target: String,
    files: Vec<PendingFile>,
}

impl StagedPartition {
    /// Appends `batch` to the partition's file of `dataset`. May be called
    /// any number of times per dataset; the batch must have the dataset's
    /// schema, and the dataset must have been named at `begin`.
    pub fn write(&mut self, dataset: Dataset, batch: &RecordBatch) -> Result<()> {
        let Some(file) = self.files.iter_mut().find(|f| f.dataset == dataset) else {
            return Err(Error::UnknownDataset {
                dataset: dataset.name(),
                target: self.target.clone(),
            });
        };
        file.write(batch)
    }

    /// Closes and fsyncs every file (a dataset without rows gets a file with
    /// zero rows) without making anything visible yet, so that the last
    /// thing that can fail for lack of space or a broken disk happens before
    /// another sink commits. [`commit`](Self::commit) then only renames.
    /// Nothing can be written after it.
    pub fn prepare(&mut self) -> Result<()> {
        for file in &mut self.files {
            file.close()?;
        }
        Ok(())
    }

    /// Closes and fsyncs every file not yet [prepared](Self::prepare),
    /// renames each onto its final name, then fsyncs the directories. On
    /// error the files not yet renamed are removed.
    pub fn commit(mut self) -> Result<()> {
        for file in &mut self.files {
            file.close()?;
        }
        for file in &mut self.files {
            file.persist()?;
        }
        let mut synced: Vec<&Path> = Vec::with_capacity(self.files.len());
        for file in &self.files {
            let dir = file.dir();
            if !synced.contains(&dir) {
                sync_dir(dir)?;
                synced.push(dir);
            }
        }
        for file in &self.files {
            tracing::debug!(
                dataset = file.dataset.name(),
                target = %self.target,
                rows = file.rows(),
                path = %file.dest().display(),
                "parquet partition replaced"
            );
        }
        Ok(())
    }
}

/// One standalone file being written (a run's request ledger, its run
/// row). Nothing is visible until [`finish`](Self::finish); dropping it
/// without finishing removes the temporary file.
#[derive(Debug)]
pub struct DatasetFile {
    file: PendingFile,
}

impl DatasetFile {
    /// Appends `batch`, which must have the dataset's schema.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.file.write(batch)
    }

    /// The final path of the file.
    pub fn path(&self) -> &Path {
        self.file.dest()
    }

    /// Closes and fsyncs the file, renames it into place and fsyncs the
    /// directory. A file that got no rows is written with zero rows.
    pub fn finish(mut self) -> Result<()> {
        self.file.close()?;
        self.file.persist()?;
        sync_dir(self.file.dir())?;
        tracing::debug!(
            dataset = self.file.dataset.name(),
            rows = self.file.rows(),
            path = %self.file.dest().display(),
            "parquet file written"
        );
        Ok(())
    }
}

/// Makes renames and creations inside `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    let io = |source| Error::Io {
        action: "syncing directory",
        path: dir.to_path_buf(),
        source,
    };
    fs::File::open(dir).map_err(io)?.sync_all().map_err(io)
}

/// Directories cannot be opened for syncing on this platform; renames are
/// as durable as the file system makes them.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, AsArray, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
        TimestampMicrosecondArray, new_null_array,
    };
    use arrow::datatypes::{DataType, Int64Type};
    use backlinks_model::Target;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::{Compression, Encoding, Type as PhysicalType};
    use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData, RowGroupMetaData};

    use super::*;
    use crate::pending::{DATASET_METADATA_KEY, MAX_ROW_GROUP_ROWS};

    fn date() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
    }

    fn key(target: &str) -> PartitionKey {
        PartitionKey {
            pipeline: "nightly".into(),
            target: Target::from_normalized(target),
            snapshot_date: date(),
        }
    }

    /// A batch of `dataset` with `n` rows: the named columns as given,
    /// other nullable columns null, other non-null columns filled by type.
    fn batch(dataset: Dataset, n: usize, given: &[(&str, ArrayRef)]) -> RecordBatch {
        let schema = dataset.schema();
        let columns = schema
            .fields()
            .iter()
            .map(|field| {
                if let Some((_, array)) = given.iter().find(|(name, _)| name == field.name()) {
                    return array.clone();
                }
                if field.is_nullable() {
                    return new_null_array(field.data_type(), n);
                }
                let array: ArrayRef = match field.data_type() {
                    DataType::Utf8 => Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| format!("{}-{i}", field.name())),
                    )),
                    DataType::Int64 => Arc::new(Int64Array::from_iter_values(0..n as i64)),
                    DataType::Float64 => Arc::new(Float64Array::from_iter_values(
                        (0..n).map(|i| i as f64 / 8.0),
                    )),
                    DataType::Date32 => Arc::new(Date32Array::from(vec![20_781; n])),
                    DataType::Boolean => Arc::new(BooleanArray::from(vec![false; n])),
                    DataType::Timestamp(_, _) => Arc::new(
                        TimestampMicrosecondArray::from_iter_values(
                            (0..n as i64).map(|i| 1_795_000_000_000_000 + i),
                        )
                        .with_timezone("UTC"),
                    ),
                    other => panic!("no filler for {other}"),
                };
                array
            })
            .collect();
        RecordBatch::try_new(schema, columns).unwrap()
    }

    fn summary(target: &str, rank: i64) -> RecordBatch {
        batch(
            Dataset::Summary,
            1,
            &[
                ("target", Arc::new(StringArray::from(vec![target]))),
                ("rank", Arc::new(Int64Array::from(vec![rank]))),
                ("info_server", Arc::new(StringArray::from(vec!["nginx"]))),
            ],
        )
    }

    fn breakdown(target: &str, links: &[i64]) -> RecordBatch {
        let n = links.len();
        batch(
            Dataset::SummaryBreakdown,
            n,
            &[
                ("target", Arc::new(StringArray::from(vec![target; n]))),
                ("dimension", Arc::new(StringArray::from(vec!["tld"; n]))),
                (
                    "key",
                    Arc::new(StringArray::from_iter_values((0..n).map(|i| {
                        if i == 0 {
                            String::new()
                        } else {
                            format!("k{i}")
                        }
                    }))),
                ),
                ("links", Arc::new(Int64Array::from(links.to_vec()))),
            ],
        )
    }

    fn partition_path(root: &Path, dataset: Dataset, target: &str) -> PathBuf {
        root.join(dataset.name())
            .join("snapshot_date=2026-11-24")
            .join(format!("{}.parquet", file_stem("nightly", target)))
    }

    /// All rows of a file as one batch, with the file's metadata.
    fn read(path: &Path) -> (RecordBatch, Arc<ParquetMetaData>) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
        let metadata = builder.metadata().clone();
        let schema = builder.schema().clone();
        let batches: Vec<RecordBatch> = builder.build().unwrap().map(|b| b.unwrap()).collect();
        (
            arrow::compute::concat_batches(&schema, &batches).unwrap(),
            metadata,
        )
    }

    fn int_column(batch: &RecordBatch, name: &str) -> Vec<Option<i64>> {
        batch
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Int64Type>()
            .iter()
            .collect()
    }

    /// Files under `root` that a `*.parquet` reader must never see.
    fn temp_files(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if path.is_dir() {
                    stack.push(path);
                } else if name.starts_with('.') || !name.ends_with(".parquet") {
                    out.push(path);
                }
            }
        }
        out
    }

    #[test]
    fn a_partition_of_two_datasets_reads_back_equal_with_zstd_text_columns() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(&root.path().join("data")).unwrap();
        let target = "https://www.rust-lang.org/learn?x=1";
        let summary = summary(target, 42);
        let breakdown = breakdown(target, &[7, 3_000_000_000, 1]);
        let mut staged = sink
            .begin(&key(target), &[Dataset::Summary, Dataset::SummaryBreakdown])
            .unwrap();
        staged.write(Dataset::Summary, &summary).unwrap();
        staged.write(Dataset::SummaryBreakdown, &breakdown).unwrap();
        // Nothing is visible before the commit.
        assert!(!partition_path(sink.dir(), Dataset::Summary, target).exists());
        staged.commit().unwrap();

        for (dataset, written) in [
            (Dataset::Summary, &summary),
            (Dataset::SummaryBreakdown, &breakdown),
        ] {
            let path = partition_path(sink.dir(), dataset, target);
            assert!(
                path.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("nightly__https%3A%2F%2Fwww.rust-lang.org")
            );
            let (read, metadata) = read(&path);
            assert_eq!(read.schema().fields(), dataset.schema().fields());
            assert_eq!(read.columns(), written.columns());
            let row_group = metadata.row_group(0);
            // Text columns zstd, the others LZ4 (see `pending::properties`).
            let mut codecs = (0, 0);
            for column in row_group.columns() {
                let text = column.column_descr().physical_type() == PhysicalType::BYTE_ARRAY;
                match column.compression() {
                    Compression::ZSTD(_) if text => codecs.0 += 1,
                    Compression::LZ4_RAW if !text => codecs.1 += 1,
                    other => panic!("{}: {other:?}", column.column_path()),
                }
            }
            assert!(codecs.0 > 0 && codecs.1 > 0, "{codecs:?}");
            let kv = metadata.file_metadata().key_value_metadata().unwrap();
            let entry = kv.iter().find(|kv| kv.key == DATASET_METADATA_KEY).unwrap();
            assert_eq!(entry.value.as_deref(), Some(dataset.name()));
        }
        assert_eq!(temp_files(sink.dir()), Vec::<PathBuf>::new());
    }

    /// Writes `rows` of `backlinks` as one partition, checks they read
    /// back the same, and returns the metadata of the file's first row group.
    fn written_row_group(rows: &RecordBatch) -> RowGroupMetaData {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let mut staged = sink
            .begin(&key("example.com"), &[Dataset::Backlinks])
            .unwrap();
        staged.write(Dataset::Backlinks, rows).unwrap();
        staged.commit().unwrap();
        let (read_back, metadata) = read(&partition_path(
            root.path(),
            Dataset::Backlinks,
            "example.com",
        ));
        assert_eq!(read_back.columns(), rows.columns());
        metadata.row_group(0).clone()
    }

    fn column_chunk<'a>(row_group: &'a RowGroupMetaData, name: &str) -> &'a ColumnChunkMetaData {
        row_group
            .columns()
            .iter()
            .find(|c| c.column_path().string() == name)
            .unwrap()
    }

    #[test]
    fn free_text_columns_get_no_dictionary_and_no_statistics() {
        // Few distinct values: a dictionary would be used if it were on.
        let n = 300;
        let repeated = |prefix: &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("{prefix}{}", i % 3)),
            ))
        };
        let rows = batch(
            Dataset::Backlinks,
            n,
            &[
                ("url_from", repeated("https://a.example/page-")),
                ("text_pre", repeated("read more about ")),
                ("domain_from", repeated("a.example")),
            ],
        );
        let row_group = written_row_group(&rows);
        let chunk = |name: &str| column_chunk(&row_group, name);
        for name in ["url_from", "text_pre"] {
            let column = chunk(name);
            assert_eq!(column.dictionary_page_offset(), None, "{name}");
            assert!(column.statistics().is_none(), "{name}");
        }
        let domain = chunk("domain_from");
        assert!(domain.dictionary_page_offset().is_some());
        assert!(domain.statistics().is_some());
    }

    #[test]
    fn near_unique_numbers_are_delta_encoded_without_dictionary() {
        // Few distinct values: a dictionary would be used if it were on.
        let n = 300;
        let seen = TimestampMicrosecondArray::from_iter_values(
            (0..n as i64).map(|i| 1_700_000_000_000_000 + i % 3 * 1_000_000),
        )
        .with_timezone("UTC");
        let rows = batch(
            Dataset::Backlinks,
            n,
            &[
                ("first_seen", Arc::new(seen)),
                (
                    "rank",
                    Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i % 3))),
                ),
            ],
        );
        let row_group = written_row_group(&rows);
        let chunk = |name: &str| column_chunk(&row_group, name);
        for name in ["position", "first_seen"] {
            let column = chunk(name);
            assert_eq!(column.dictionary_page_offset(), None, "{name}");
            assert!(
                column
                    .encodings()
                    .any(|e| e == Encoding::DELTA_BINARY_PACKED),
                "{name}"
            );
            assert!(column.statistics().is_some(), "{name}");
        }
        let rank = chunk("rank");
        assert!(rank.dictionary_page_offset().is_some());
        assert!(!rank.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED));
    }

    #[test]
    fn a_second_commit_replaces_rows_instead_of_appending() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let datasets = [Dataset::Summary, Dataset::SummaryBreakdown];
        for (rank, links) in [(1, vec![10, 20, 30]), (2, vec![99])] {
            let mut staged = sink.begin(&key("example.com"), &datasets).unwrap();
            staged
                .write(Dataset::Summary, &summary("example.com", rank))
                .unwrap();
            staged
                .write(Dataset::SummaryBreakdown, &breakdown("example.com", &links))
                .unwrap();
            staged.commit().unwrap();
        }
        let (rows, _) = read(&partition_path(
            root.path(),
            Dataset::Summary,
            "example.com",
        ));
        assert_eq!(int_column(&rows, "rank"), vec![Some(2)]);
        let (rows, _) = read(&partition_path(
            root.path(),
            Dataset::SummaryBreakdown,
            "example.com",
        ));
        assert_eq!(int_column(&rows, "links"), vec![Some(99)]);
        // Another target is another file, untouched by this one.
        let mut other = sink.begin(&key("example.org"), &datasets).unwrap();
        other
            .write(Dataset::Summary, &summary("example.org", 5))
            .unwrap();
        other.commit().unwrap();
        let (rows, _) = read(&partition_path(
            root.path(),
            Dataset::Summary,
            "example.com",
        ));
        assert_eq!(int_column(&rows, "rank"), vec![Some(2)]);
        assert_eq!(temp_files(root.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_prepared_partition_is_invisible_until_commit_and_refuses_writes() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let datasets = [Dataset::Summary, Dataset::SummaryBreakdown];
        let mut staged = sink.begin(&key("example.com"), &datasets).unwrap();
        staged
            .write(Dataset::Summary, &summary("example.com", 7))
            .unwrap();
        staged.prepare().unwrap();
        let dest = partition_path(root.path(), Dataset::Summary, "example.com");
        assert!(!dest.exists(), "nothing is visible before commit");
        let err = staged
            .write(Dataset::Summary, &summary("example.com", 8))
            .unwrap_err();
        assert!(err.to_string().contains("closed for commit"), "{err}");
        staged.prepare().unwrap();
        staged.commit().unwrap();
        let (rows, _) = read(&dest);
        assert_eq!(int_column(&rows, "rank"), vec![Some(7)]);
        assert_eq!(temp_files(root.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_dataset_without_rows_on_rerun_replaces_yesterdays_rows_with_none() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let datasets = [Dataset::Summary, Dataset::SummaryBreakdown];
        let mut first = sink.begin(&key("example.com"), &datasets).unwrap();
        first
            .write(Dataset::Summary, &summary("example.com", 1))
            .unwrap();
        first
            .write(
                Dataset::SummaryBreakdown,
                &breakdown("example.com", &[1, 2]),
            )
            .unwrap();
        first.commit().unwrap();

        let mut second = sink.begin(&key("example.com"), &datasets).unwrap();
        second
            .write(Dataset::Summary, &summary("example.com", 3))
            .unwrap();
        // A batch with zero rows counts as no rows.
        second
            .write(Dataset::SummaryBreakdown, &breakdown("example.com", &[]))
            .unwrap();
        second.commit().unwrap();

        let path = partition_path(root.path(), Dataset::SummaryBreakdown, "example.com");
        let (rows, metadata) = read(&path);
        assert_eq!(rows.num_rows(), 0);
        assert_eq!(metadata.file_metadata().num_rows(), 0);
        assert_eq!(
            rows.schema().fields(),
            Dataset::SummaryBreakdown.schema().fields()
        );
        let (rows, _) = read(&partition_path(
            root.path(),
            Dataset::Summary,
            "example.com",
        ));
        assert_eq!(int_column(&rows, "rank"), vec![Some(3)]);
    }

    #[test]
    fn dropping_without_commit_keeps_the_old_files_and_leaves_no_temp_files() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let datasets = [Dataset::Summary, Dataset::SummaryBreakdown];
        let mut first = sink.begin(&key("example.com"), &datasets).unwrap();
        first
            .write(Dataset::Summary, &summary("example.com", 1))
            .unwrap();
        first.commit().unwrap();

        let mut abandoned = sink.begin(&key("example.com"), &datasets).unwrap();
        abandoned
            .write(Dataset::Summary, &summary("example.com", 2))
            .unwrap();
        abandoned
            .write(Dataset::SummaryBreakdown, &breakdown("example.com", &[5]))
            .unwrap();
        // The rows sit in hidden temporary files while staged.
        let staged = temp_files(root.path());
        assert_eq!(staged.len(), 2, "{staged:?}");
        for path in &staged {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.starts_with(".nightly__example.com.parquet.tmp-"),
                "{name}"
            );
            assert!(!name.ends_with(".parquet"), "{name}");
            assert!(name.len() < 255);
        }
        drop(abandoned);

        assert_eq!(temp_files(root.path()), Vec::<PathBuf>::new());
        let (rows, _) = read(&partition_path(
            root.path(),
            Dataset::Summary,
            "example.com",
        ));
        assert_eq!(int_column(&rows, "rank"), vec![Some(1)]);
        let (rows, _) = read(&partition_path(
            root.path(),
            Dataset::SummaryBreakdown,
            "example.com",
        ));
        assert_eq!(rows.num_rows(), 0);
    }

    #[test]
    fn a_rename_that_fails_leaves_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        // A directory where the file should land: the rename fails.
        let dest = partition_path(root.path(), Dataset::Summary, "example.com");
        fs::create_dir_all(&dest).unwrap();
        let mut staged = sink
            .begin(&key("example.com"), &[Dataset::Summary])
            .unwrap();
        staged
            .write(Dataset::Summary, &summary("example.com", 1))
            .unwrap();
        staged.prepare().unwrap();
        assert_eq!(temp_files(root.path()).len(), 1);
        let err = staged.commit().unwrap_err();
        assert!(
            matches!(&err, Error::Io { action: "replacing", path, .. } if path == &dest),
            "{err:?}"
        );
        assert!(std::error::Error::source(&err).is_some());
        assert_eq!(temp_files(root.path()), Vec::<PathBuf>::new());
        assert!(dest.is_dir());
    }

    #[test]
    fn many_small_writes_give_the_right_totals_in_bounded_row_groups() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let mut staged = sink
            .begin(&key("example.com"), &[Dataset::SummaryBreakdown])
            .unwrap();
        let pages = 700;
        let per_page = 100;
        let mut expected_sum = 0i64;
        for page in 0..pages {
            let links: Vec<i64> = (0..per_page).map(|i| page * per_page + i).collect();
            expected_sum += links.iter().sum::<i64>();
            staged
                .write(Dataset::SummaryBreakdown, &breakdown("example.com", &links))
                .unwrap();
        }
        staged.commit().unwrap();

        let (rows, metadata) = read(&partition_path(
            root.path(),
            Dataset::SummaryBreakdown,
            "example.com",
        ));
        assert_eq!(rows.num_rows(), (pages * per_page) as usize);
        let links = int_column(&rows, "links");
        assert_eq!(links.iter().flatten().sum::<i64>(), expected_sum);
        assert_eq!(links.first(), Some(&Some(0)));
        assert_eq!(links.last(), Some(&Some(pages * per_page - 1)));
        assert!(metadata.num_row_groups() >= 2);
        for row_group in metadata.row_groups() {
            assert!(row_group.num_rows() as usize <= MAX_ROW_GROUP_ROWS);
        }
    }

    #[test]
    fn a_dataset_not_named_at_begin_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let mut staged = sink
            .begin(&key("example.com"), &[Dataset::Summary])
            .unwrap();
        let err = staged
            .write(Dataset::SummaryBreakdown, &breakdown("example.com", &[1]))
            .unwrap_err();
        assert!(matches!(
            err,
            Error::UnknownDataset {
                dataset: "summary_breakdown",
                ..
            }
        ));
        assert!(err.to_string().contains("example.com"), "{err}");
    }

    #[test]
    fn a_batch_of_another_schema_is_an_error_naming_the_dataset() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let mut staged = sink
            .begin(&key("example.com"), &[Dataset::Summary])
            .unwrap();
        let err = staged
            .write(Dataset::Summary, &breakdown("example.com", &[1]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Schema {
                    dataset: "summary",
                    ..
                }
            ),
            "{err}"
        );
        // The partition is still usable after a refused batch.
        staged
            .write(Dataset::Summary, &summary("example.com", 4))
            .unwrap();
        staged.commit().unwrap();
        let (rows, _) = read(&partition_path(
            root.path(),
            Dataset::Summary,
            "example.com",
        ));
        assert_eq!(int_column(&rows, "rank"), vec![Some(4)]);
    }

    #[cfg(unix)]
    #[test]
    fn a_read_only_directory_gives_an_error_naming_the_path() {
        use std::os::unix::fs::PermissionsExt;

        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let datasets = [Dataset::Summary];
        let mut first = sink.begin(&key("example.com"), &datasets).unwrap();
        first
            .write(Dataset::Summary, &summary("example.com", 1))
            .unwrap();
        first.commit().unwrap();

        let dir = root.path().join("summary").join("snapshot_date=2026-11-24");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
        // Running as root ignores the mode: then there is nothing to assert.
        let probe = dir.join("probe");
        let writable = File::create(&probe).is_ok();
        if writable {
            fs::remove_file(&probe).unwrap();
        } else {
            let mut staged = sink.begin(&key("example.com"), &datasets).unwrap();
            let err = staged
                .write(Dataset::Summary, &summary("example.com", 2))
                .unwrap_err();
            assert!(
                matches!(&err, Error::Io { action: "creating a temporary file in", path, .. } if path == &dir),
                "{err:?}"
            );
            assert!(err.to_string().contains(&*dir.to_string_lossy()), "{err}");
            drop(staged);
            // Committing with no rows needs a file too, and fails the same way.
            let staged = sink.begin(&key("example.com"), &datasets).unwrap();
            assert!(matches!(staged.commit(), Err(Error::Io { .. })));
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let (rows, _) = read(&partition_path(
            root.path(),
            Dataset::Summary,
            "example.com",
        ));
        assert_eq!(int_column(&rows, "rank"), vec![Some(1)]);
        assert_eq!(temp_files(root.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_sink_directory_that_cannot_be_created_is_named() {
        let root = tempfile::tempdir().unwrap();
        let blocker = root.path().join("file");
        fs::write(&blocker, b"not a directory").unwrap();
        let err = ParquetSink::new(&blocker.join("data")).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "creating directory {}",
                blocker.join("data").display()
            )),
            "{err}"
        );
    }

    fn requests(n: usize) -> RecordBatch {
        batch(Dataset::Requests, n, &[])
    }

    #[test]
    fn a_ledger_file_appears_whole_on_finish() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let stem = "nightly__0190b2a4-7c1e-7000-8000-000000000000";
        let mut file = sink.create(Dataset::Requests, date(), stem).unwrap();
        let expected = root
            .path()
            .join("requests")
            .join("snapshot_date=2026-11-24")
            .join(format!("{stem}.parquet"));
        assert_eq!(file.path(), expected);
        file.write(&requests(3)).unwrap();
        file.write(&requests(500)).unwrap();
        assert!(!expected.exists());
        assert_eq!(temp_files(root.path()).len(), 1);
        file.finish().unwrap();

        let (rows, metadata) = read(&expected);
        assert_eq!(rows.num_rows(), 503);
        assert_eq!(rows.schema().fields(), Dataset::Requests.schema().fields());
        assert_eq!(
            int_column(&rows, "page")[..4],
            [Some(0), Some(1), Some(2), Some(0)]
        );
        let kv = metadata.file_metadata().key_value_metadata().unwrap();
        assert!(
            kv.iter()
                .any(|kv| kv.key == DATASET_METADATA_KEY && kv.value.as_deref() == Some("requests"))
        );
        assert_eq!(temp_files(root.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_ledger_file_without_rows_still_lands_with_the_schema() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let file = sink.create(Dataset::Runs, date(), "nightly__run").unwrap();
        let path = file.path().to_path_buf();
        file.finish().unwrap();
        let (rows, _) = read(&path);
        assert_eq!(rows.num_rows(), 0);
        assert_eq!(rows.schema().fields(), Dataset::Runs.schema().fields());
    }

    #[test]
    fn a_ledger_file_dropped_without_finish_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let mut file = sink
            .create(Dataset::Requests, date(), "nightly__run")
            .unwrap();
        file.write(&requests(10)).unwrap();
        let path = file.path().to_path_buf();
        drop(file);
        assert!(!path.exists());
        assert_eq!(temp_files(root.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_ledger_file_refuses_other_schemas_and_unsafe_stems() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let mut file = sink
            .create(Dataset::Requests, date(), "nightly__run")
            .unwrap();
        let err = file.write(&summary("example.com", 1)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Schema {
                    dataset: "requests",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().starts_with("dataset requests:"), "{err}");

        for stem in ["", ".hidden", "../escape", "a/b"] {
            let err = sink.create(Dataset::Requests, date(), stem).unwrap_err();
            assert!(matches!(err, Error::InvalidStem { .. }), "{stem}: {err}");
        }
        assert!(!root.path().join("escape.parquet").exists());
    }

    #[test]
    fn nulls_in_a_non_null_column_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let mut file = sink
            .create(Dataset::Requests, date(), "nightly__run")
            .unwrap();
        let bad = {
            let good = requests(2);
            let schema = Dataset::Requests.schema();
            let index = schema.index_of("endpoint").unwrap();
            let mut columns = good.columns().to_vec();
            columns[index] = Arc::new(StringArray::from(vec![Some("summary"), None]));
            // Build it under a nullable schema: only the sink's check stands guard.
            let fields: Vec<_> = schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect();
            RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns).unwrap()
        };
        let err = file.write(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SchemaRefused {
                    dataset: "requests",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("endpoint"), "{err}");
        let source = std::error::Error::source(&err).unwrap();
        assert!(source.is::<arrow::error::ArrowError>(), "{source:?}");
    }

    #[test]
    fn staged_files_can_cross_threads_and_awaits() {
        fn assert_send<T: Send>() {}
        assert_send::<StagedPartition>();
        assert_send::<DatasetFile>();
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<ParquetSink>();
        assert_sync::<Error>();
    }
}
