//! The raw archive: every successful answer, stored before it is used.
//!
//! A run appends each answer (20000 or 40102) to
//! `<dir>/<run_id>__<endpoint>.zst` as one [`ArchiveRecord`], a JSON object
//! on one line. Each record is two zstd frames: a *skippable* frame holding
//! the length of the next frame, the cost and the request key (so an index
//! is built by reading headers only, without decompressing bodies), then
//! one ordinary frame with the record. Decoders ignore skippable frames, so
//! `zstd -dc file.zst` prints the records as NDJSON. Frames are written
//! whole and flushed one by one; a frame torn by a crash (`kill -9`, power
//! loss) is at the end of the file and is ignored on read.
//!
//! An [`ArchiveIndex`] maps each request key to where its latest record
//! lies; the fetcher answers an indexed request from it without calling
//! the API (resume and replay).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backlinks_model::Endpoint;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Magic number of the skippable frame that heads every record (the zstd
/// format reserves 0x184D2A50..=0x184D2A5F for such frames).
const HEADER_MAGIC: u32 = 0x184D_2A5B;
/// Length of a request key: 32 hexadecimal digits.
const KEY_LEN: usize = 32;
/// Payload of the header frame: frame length (u32), cost (f64), key.
const HEADER_PAYLOAD: usize = 4 + 8 + KEY_LEN;
/// zstd level of the records: fast, and JSON still shrinks a lot.
const LEVEL: i32 = 3;
/// Records are synced to disk at most this often (and when a run ends).
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// A record bigger than this is refused on read as damaged.
const MAX_FRAME: u32 = 1 << 30;

/// One archived answer. `request` is the task as sent (it never holds
/// credentials); `body` is the whole response, as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveRecord {
    /// Format version, 1.
    pub v: u32,
    pub run_id: String,
    pub endpoint: String,
    pub target: String,
    pub page: i64,
    /// [`request_key`] of the endpoint and the request.
    pub key: String,
    pub request: serde_json::Value,
    pub http_status: Option<u16>,
    pub status_code: Option<i64>,
    pub task_id: Option<String>,
    /// Cost in USD the API charged for this answer.
    pub cost: f64,
    pub fetched_at: DateTime<Utc>,
    pub body: String,
}

/// A stable identity of a request: a 128-bit FNV-1a hash (two 64-bit
/// halves with different offsets) of the endpoint name and the request's
/// JSON, in hexadecimal. The JSON of a task struct is deterministic (fields
/// in declaration order, maps sorted), so the same request of a later run
/// has the same key.
pub fn request_key(endpoint: Endpoint, request_json: &[u8]) -> String {
    let hash = |mut h: u64| {
        for b in endpoint
            .name()
            .as_bytes()
            .iter()
            .chain(b"\n")
            .chain(request_json)
        {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    format!(
        "{:016x}{:016x}",
        hash(0xcbf2_9ce4_8422_2325),
        hash(0x6c62_272e_07bb_0142)
    )
}

/// The archive file of one run and endpoint inside `dir`.
pub fn archive_file(dir: &Path, run_id: &str, endpoint: Endpoint) -> PathBuf {
    dir.join(format!("{run_id}__{}.zst", endpoint.name()))
}

fn io_error(path: &Path, action: &str, e: &std::io::Error) -> Error {
    Error::Archive(format!("{action} {}: {e}", path.display()))
}

/// Appends the records of one run. Shared by all requests of the run;
/// writes are serialised by a lock held for one record.
#[derive(Debug)]
pub struct ArchiveWriter {
    dir: PathBuf,
    run_id: String,
    state: Mutex<WriterState>,
}

#[derive(Debug)]
struct WriterState {
    files: HashMap<Endpoint, File>,
    last_sync: Instant,
    dirty: bool,
}

impl ArchiveWriter {
    /// Archives the records of `run_id` under `dir` (created if missing;
    /// files are opened on the first record of each endpoint).
    pub fn new(dir: impl Into<PathBuf>, run_id: impl Into<String>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, "creating", &e))?;
        Ok(Self {
            dir,
            run_id: run_id.into(),
            state: Mutex::new(WriterState {
                files: HashMap::new(),
                last_sync: Instant::now(),
                dirty: false,
            }),
        })
    }

    /// The run whose answers this writer stores.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record (header frame and record frame in one write),
    /// flushed to the operating system before returning; synced to disk at
    /// most once per second.
    pub fn append(&self, endpoint: Endpoint, record: &ArchiveRecord) -> Result<()> {
        let mut json = serde_json::to_vec(record)
            .map_err(|e| Error::Archive(format!("encoding an archive record: {e}")))?;
        json.push(b'\n');
        let frame = zstd::bulk::compress(&json, LEVEL)
            .map_err(|e| Error::Archive(format!("compressing an archive record: {e}")))?;
        drop(json);
        let length = u32::try_from(frame.len())
            .ok()
            .filter(|n| *n <= MAX_FRAME)
            .ok_or_else(|| Error::Archive("an answer too big to archive".into()))?;
        let mut bytes = Vec::with_capacity(8 + HEADER_PAYLOAD + frame.len());
        bytes.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&(HEADER_PAYLOAD as u32).to_le_bytes());
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(&record.cost.to_le_bytes());
        let mut key = [b'0'; KEY_LEN];
        let given = record.key.as_bytes();
        key[..given.len().min(KEY_LEN)].copy_from_slice(&given[..given.len().min(KEY_LEN)]);
        bytes.extend_from_slice(&key);
        bytes.extend_from_slice(&frame);

        let path = archive_file(&self.dir, &self.run_id, endpoint);
        let mut state = self.lock();
        let file = match state.files.entry(endpoint) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| io_error(&path, "opening", &e))?,
            ),
        };
        file.write_all(&bytes)
            .and_then(|()| file.flush())
            .map_err(|e| io_error(&path, "writing", &e))?;
        state.dirty = true;
        if state.last_sync.elapsed() >= SYNC_EVERY {
            sync(&mut state, &self.dir)?;
        }
        Ok(())
    }

    /// Syncs every file to disk.
    pub fn finish(&self) -> Result<()> {
        let mut state = self.lock();
        sync(&mut state, &self.dir)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        // Files and a timestamp: a panic elsewhere leaves nothing half-set.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn sync(state: &mut WriterState, dir: &Path) -> Result<()> {
    if state.dirty {
        for file in state.files.values() {
            file.sync_data().map_err(|e| io_error(dir, "syncing", &e))?;
        }
        state.dirty = false;
    }
    state.last_sync = Instant::now();
    Ok(())
}

/// Where one archived record lies.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Location {
    file: usize,
    offset: u64,
    length: u32,
    cost: f64,
}

/// Request key → the latest archived answer to that request, over a set of
/// archive files. Built by reading the header frames only.
#[derive(Debug, Default)]
pub struct ArchiveIndex {
    files: Vec<PathBuf>,
    entries: HashMap<String, Location>,
    records: u64,
    torn: u64,
}

impl ArchiveIndex {
    /// An index of nothing.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Indexes `files` in order: a key found again in a later file (or
    /// later in the same file) points to the later record. A torn record at
    /// the end of a file is skipped; a file that is not an archive is an
    /// error naming it.
    pub fn build(files: &[PathBuf]) -> Result<Self> {
        let mut index = Self::default();
        for path in files {
            let number = index.files.len();
            index.files.push(path.clone());
            index.scan(number, path)?;
        }
        Ok(index)
    }

    fn scan(&mut self, number: usize, path: &Path) -> Result<()> {
        let mut file = File::open(path).map_err(|e| io_error(path, "opening", &e))?;
        let size = file
            .metadata()
            .map_err(|e| io_error(path, "reading", &e))?
            .len();
        let mut reader = std::io::BufReader::new(&mut file);
        let mut offset = 0u64;
        let mut header = [0u8; 8 + HEADER_PAYLOAD];
        loop {
            if offset == size {
                return Ok(());
            }
            let available = usize::try_from(size - offset)
                .unwrap_or(usize::MAX)
                .min(header.len());
            reader
                .read_exact(&mut header[..available])
                .map_err(|e| io_error(path, "reading", &e))?;
            let foreign = |header: &[u8]| {
                Error::Archive(format!(
                    "{} is not a backlinks archive (or is damaged at byte {offset}, {:02x?})",
                    path.display(),
                    &header[..header.len().min(4)]
                ))
            };
            if available >= 4 && header[..4] != HEADER_MAGIC.to_le_bytes() {
                return Err(foreign(&header));
            }
            if available < header.len() {
                self.torn += 1;
                return Ok(());
            }
            let payload = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if payload as usize != HEADER_PAYLOAD {
                return Err(foreign(&header));
            }
            let length = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
            let mut cost = [0u8; 8];
            cost.copy_from_slice(&header[12..20]);
            let key = String::from_utf8_lossy(&header[20..]).into_owned();
            let start = offset + header.len() as u64;
            let end = start + u64::from(length);
            if end > size || length > MAX_FRAME {
                self.torn += 1;
                return Ok(());
            }
            reader
                .seek_relative(i64::from(length))
                .map_err(|e| io_error(path, "reading", &e))?;
            self.entries.insert(
                key,
                Location {
                    file: number,
                    offset: start,
                    length,
                    cost: f64::from_le_bytes(cost),
                },
            );
            self.records += 1;
            offset = end;
        }
    }

    /// Records read (a key archived twice counts twice).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Distinct requests with an archived answer.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no answer is archived.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Torn records skipped at the ends of files.
    pub fn torn(&self) -> u64 {
        self.torn
    }

    /// Whether an answer to `key` is archived.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// What the answer to `key` cost when it was fetched.
    pub fn cost(&self, key: &str) -> Option<f64> {
        self.entries.get(key).map(|l| l.cost)
    }

    /// Reads the archived answer to `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<ArchiveRecord>> {
        let Some(location) = self.entries.get(key) else {
            return Ok(None);
        };
        let path = &self.files[location.file];
        let mut file = File::open(path).map_err(|e| io_error(path, "opening", &e))?;
        file.seek(SeekFrom::Start(location.offset))
            .map_err(|e| io_error(path, "reading", &e))?;
        let mut frame = vec![0u8; location.length as usize];
        file.read_exact(&mut frame)
            .map_err(|e| io_error(path, "reading", &e))?;
        let json = zstd::stream::decode_all(&frame[..]).map_err(|e| {
            Error::Archive(format!(
                "{} is damaged at byte {}: {e}",
                path.display(),
                location.offset
            ))
        })?;
        let record: ArchiveRecord = serde_json::from_slice(&json).map_err(|e| {
            Error::Archive(format!(
                "{} holds an unreadable record at byte {}: {e}",
                path.display(),
                location.offset
            ))
        })?;
        Ok(Some(record))
    }
}

/// Every `*.zst` file directly inside `dir`, sorted by name (run ids are
/// time-ordered, so older runs come first). A missing directory is empty.
pub fn archive_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir, "listing", &e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io_error(dir, "listing", &e))?.path();
        if path.extension().is_some_and(|x| x == "zst") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(run_id: &str, target: &str, page: i64, cost: f64) -> ArchiveRecord {
        let request = serde_json::json!({"target": target, "offset": page * 10});
        let key = request_key(Endpoint::Backlinks, request.to_string().as_bytes());
        ArchiveRecord {
            v: 1,
            run_id: run_id.into(),
            endpoint: "backlinks".into(),
            target: target.into(),
            page,
            key,
            request,
            http_status: Some(200),
            status_code: Some(20000),
            task_id: Some(format!("task-{page}")),
            cost,
            fetched_at: Utc::now(),
            body: format!("{{\"status_code\":20000,\"page\":{page}}}"),
        }
    }

    #[test]
    fn keys_are_stable_and_tell_requests_apart() {
        let a = request_key(Endpoint::Summary, br#"{"target":"a.com"}"#);
        assert_eq!(a, request_key(Endpoint::Summary, br#"{"target":"a.com"}"#));
        assert_eq!(a.len(), KEY_LEN);
        assert_ne!(
            a,
            request_key(Endpoint::Backlinks, br#"{"target":"a.com"}"#)
        );
        assert_ne!(a, request_key(Endpoint::Summary, br#"{"target":"b.com"}"#));
    }

    #[test]
    fn records_are_read_back_by_key_and_the_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let first = ArchiveWriter::new(dir.path(), "run1").unwrap();
        let records: Vec<_> = (0..5).map(|p| record("run1", "a.com", p, 0.02)).collect();
        for r in &records {
            first.append(Endpoint::Backlinks, r).unwrap();
        }
        first.finish().unwrap();
        let second = ArchiveWriter::new(dir.path(), "run2").unwrap();
        let again = record("run2", "a.com", 3, 0.05);
        second.append(Endpoint::Backlinks, &again).unwrap();
        second.finish().unwrap();

        let files = archive_files(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let index = ArchiveIndex::build(&files).unwrap();
        assert_eq!((index.records(), index.len(), index.torn()), (6, 5, 0));
        assert_eq!(index.get(&records[1].key).unwrap().unwrap(), records[1]);
        assert_eq!(index.get(&records[3].key).unwrap().unwrap(), again);
        assert_eq!(index.cost(&records[3].key), Some(0.05));
        assert!(index.get("0".repeat(32).as_str()).unwrap().is_none());

        // The file is plain zstd: decoding it whole gives NDJSON.
        let text = zstd::stream::decode_all(File::open(&files[0]).unwrap()).unwrap();
        let lines: Vec<ArchiveRecord> = String::from_utf8(text)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, records);
    }

    #[test]
    fn a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let writer = ArchiveWriter::new(dir.path(), "run1").unwrap();
        let records: Vec<_> = (0..3).map(|p| record("run1", "a.com", p, 0.02)).collect();
        for r in &records {
            writer.append(Endpoint::Backlinks, r).unwrap();
        }
        writer.finish().unwrap();
        let path = archive_file(dir.path(), "run1", Endpoint::Backlinks);
        let full = std::fs::metadata(&path).unwrap().len();
        // Cut the last record at every possible point: the others survive.
        for cut in [1, 10, 30, 60] {
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(full - cut).unwrap();
            let index = ArchiveIndex::build(std::slice::from_ref(&path)).unwrap();
            assert_eq!((index.len(), index.torn()), (2, 1), "cut {cut}");
            assert!(!index.contains(&records[2].key));
            assert_eq!(index.get(&records[1].key).unwrap().unwrap(), records[1]);
        }
    }

    #[test]
    fn a_foreign_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.zst");
        std::fs::write(&path, zstd::bulk::compress(&[b'x'; 100], 3).unwrap()).unwrap();
        let err = ArchiveIndex::build(&[path]).unwrap_err().to_string();
        assert!(err.contains("x.zst is not a backlinks archive"), "{err}");
    }
}
