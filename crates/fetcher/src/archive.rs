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
//!
//! Records of format 1 (written before request keys were xxh3 hashes) have
//! a header of their own magic number and a key of an older hash. The
//! index reads such a record whole and computes its key anew from the
//! endpoint and request it stores, so a day archived by an older version
//! still resumes without asking the API again.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backlinks_model::Endpoint;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::warn;

use crate::{Error, Result};

/// Magic number of the skippable frame that heads every record (the zstd
/// format reserves 0x184D2A50..=0x184D2A5F for such frames); its key is a
/// [`request_key`].
const HEADER_MAGIC: u32 = 0x184D_2A5C;
/// Magic number of the header of a format-1 record, whose key was computed
/// by an older hash: the index computes the key anew from the record.
const LEGACY_HEADER_MAGIC: u32 = 0x184D_2A5B;
/// The format of the records written now ([`ArchiveRecord::v`]): 3 holds
/// the body as the JSON it is, in a zstd frame of its own (2 held it as a
/// JSON string in the record's one frame; both are read).
pub const RECORD_VERSION: u32 = 3;
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
/// credentials); `body` is the whole response, as text. A body that is JSON
/// (every answer the API gives in its envelope) is stored as that JSON, not
/// as a string holding it: `zstd -dc | jq .body` reads it, and a replay
/// takes it from the decompressed record without unescaping or copying it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveRecord {
    /// Format version: [`RECORD_VERSION`] (2); 1 for records whose key was
    /// computed by an older hash.
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
    #[serde(serialize_with = "body_out", deserialize_with = "body_in")]
    pub body: String,
}

/// A body as the JSON it is when it is JSON, else as a string.
fn body_out<S: serde::Serializer>(body: &str, s: S) -> std::result::Result<S::Ok, S::Error> {
    match serde_json::from_str::<&RawValue>(body) {
        Ok(raw) => raw.serialize(s),
        Err(_) => s.serialize_str(body),
    }
}

/// A body stored either way by [`body_out`] (or as a string by format 2).
fn body_in<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    body_text(&raw).map_err(serde::de::Error::custom)
}

/// The body a stored value holds: the text of a JSON string (format 2, or
/// a body that was not JSON), else the JSON itself.
fn body_text(raw: &RawValue) -> serde_json::Result<String> {
    if raw.get().starts_with('"') {
        serde_json::from_str(raw.get())
    } else {
        Ok(raw.get().to_owned())
    }
}

/// An archived answer as a replay uses it: the body shares the buffer the
/// record was decompressed into.
#[derive(Debug, Clone)]
pub struct ArchivedAnswer {
    pub http_status: Option<u16>,
    pub status_code: Option<i64>,
    pub task_id: Option<String>,
    pub cost: f64,
    pub fetched_at: DateTime<Utc>,
    pub body: Bytes,
}

/// A record without its body: the first frame of a format-3 record.
#[derive(Serialize)]
struct RecordHead<'a> {
    v: u32,
    run_id: &'a str,
    endpoint: &'a str,
    target: &'a str,
    page: i64,
    key: &'a str,
    request: &'a serde_json::Value,
    http_status: Option<u16>,
    status_code: Option<i64>,
    task_id: Option<&'a str>,
    cost: f64,
    fetched_at: DateTime<Utc>,
}

impl<'a> RecordHead<'a> {
    fn of(record: &'a ArchiveRecord) -> Self {
        Self {
            v: record.v,
            run_id: &record.run_id,
            endpoint: &record.endpoint,
            target: &record.target,
            page: record.page,
            key: &record.key,
            request: &record.request,
            http_status: record.http_status,
            status_code: record.status_code,
            task_id: record.task_id.as_deref(),
            cost: record.cost,
            fetched_at: record.fetched_at,
        }
    }
}

/// The fields of a record's head an answer needs.
#[derive(Deserialize)]
struct HeadFields {
    http_status: Option<u16>,
    status_code: Option<i64>,
    task_id: Option<String>,
    cost: f64,
    fetched_at: DateTime<Utc>,
}

/// The fields of a record an answer needs, borrowed from its JSON.
#[derive(Deserialize)]
struct AnswerFields<'a> {
    http_status: Option<u16>,
    status_code: Option<i64>,
    task_id: Option<String>,
    cost: f64,
    fetched_at: DateTime<Utc>,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// A stable identity of a request: the 128-bit xxh3 hash of the endpoint's
/// name and the request's JSON, as 32 hexadecimal digits.
///
/// The JSON is written canonically (object keys sorted, no spaces), so the
/// key depends only on the request's value: the same task of a later run,
/// and the `request` stored in an [`ArchiveRecord`], give the same key.
pub fn request_key(endpoint: Endpoint, request: &serde_json::Value) -> String {
    key_of(endpoint.name(), request)
}

fn key_of(endpoint: &str, request: &serde_json::Value) -> String {
    let mut bytes = Vec::with_capacity(endpoint.len() + 1 + 256);
    bytes.extend_from_slice(endpoint.as_bytes());
    bytes.push(b'\n');
    write_canonical(&mut bytes, request);
    format!(
        "{:0width$x}",
        xxhash_rust::xxh3::xxh3_128(&bytes),
        width = KEY_LEN
    )
}

/// `value` as compact JSON with the keys of every object sorted: what
/// `serde_json::to_vec` writes with its default sorted maps, whatever map
/// order a feature of `serde_json` may turn on.
fn write_canonical(out: &mut Vec<u8>, value: &serde_json::Value) {
    use serde_json::Value;
    // Writing strings and scalars into a Vec cannot fail.
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, key);
                out.push(b':');
                write_canonical(out, item);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// The archive file of one run and endpoint inside `dir`.
pub fn archive_file(dir: &Path, run_id: &str, endpoint: Endpoint) -> PathBuf {
    dir.join(format!("{run_id}__{}.zst", endpoint.name()))
}

fn io_error(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::ArchiveIo {
        action,
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

/// The bytes of one record: its header frame (with `magic`) and its
/// record, as two zstd frames from format 3 on: the fields before the body
/// (`{…,"body":`), then the body and the record's end (`…}` and a newline).
/// Decompressed together they are one JSON line; a replay decompresses the
/// body on its own and never scans it. `path` names the file in errors.
fn encode_record(magic: u32, record: &ArchiveRecord, path: &Path) -> Result<Vec<u8>> {
    let encode_error = |source| Error::ArchiveEncode {
        path: path.to_path_buf(),
        source: Arc::new(source),
    };
    let compress = |json: &[u8]| {
        zstd::bulk::compress(json, LEVEL).map_err(io_error(path, "compressing a record for"))
    };
    let frame = if record.v >= 3 {
        let mut head = serde_json::to_vec(&RecordHead::of(record)).map_err(encode_error)?;
        // `{…}` → `{…,"body":`
        head.pop();
        head.extend_from_slice(b",\"body\":");
        let mut tail = Vec::with_capacity(record.body.len() + 2);
        match serde_json::from_str::<&RawValue>(&record.body) {
            Ok(raw) => tail.extend_from_slice(raw.get().as_bytes()),
            Err(_) => serde_json::to_writer(&mut tail, &record.body).map_err(encode_error)?,
        }
        tail.extend_from_slice(b"}\n");
        let mut frames = compress(&head)?;
        frames.extend_from_slice(&compress(&tail)?);
        frames
    } else {
        let mut json = serde_json::to_vec(record).map_err(encode_error)?;
        json.push(b'\n');
        compress(&json)?
    };
    let length = u32::try_from(frame.len())
        .ok()
        .filter(|n| *n <= MAX_FRAME)
        .ok_or_else(|| Error::ArchiveTooBig {
            path: path.to_path_buf(),
            bytes: frame.len(),
        })?;
    let mut bytes = Vec::with_capacity(8 + HEADER_PAYLOAD + frame.len());
    bytes.extend_from_slice(&magic.to_le_bytes());
    bytes.extend_from_slice(&(HEADER_PAYLOAD as u32).to_le_bytes());
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&record.cost.to_le_bytes());
    let mut key = [b'0'; KEY_LEN];
    let given = record.key.as_bytes();
    key[..given.len().min(KEY_LEN)].copy_from_slice(&given[..given.len().min(KEY_LEN)]);
    bytes.extend_from_slice(&key);
    bytes.extend_from_slice(&frame);
    Ok(bytes)
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
        std::fs::create_dir_all(&dir).map_err(io_error(&dir, "creating"))?;
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
        let path = archive_file(&self.dir, &self.run_id, endpoint);
        let bytes = encode_record(HEADER_MAGIC, record, &path)?;
        let mut state = self.lock();
        let file = match state.files.entry(endpoint) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_error(&path, "opening"))?,
            ),
        };
        file.write_all(&bytes)
            .and_then(|()| file.flush())
            .map_err(io_error(&path, "writing"))?;
        state.dirty = true;
        if state.last_sync.elapsed() >= SYNC_EVERY {
            sync(&mut state, &self.dir, &self.run_id)?;
        }
        Ok(())
    }

    /// Syncs every file to disk.
    pub fn finish(&self) -> Result<()> {
        let mut state = self.lock();
        sync(&mut state, &self.dir, &self.run_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        // Files and a timestamp: a panic elsewhere leaves nothing half-set.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn sync(state: &mut WriterState, dir: &Path, run_id: &str) -> Result<()> {
    if state.dirty {
        for (endpoint, file) in &state.files {
            file.sync_data()
                .map_err(io_error(&archive_file(dir, run_id, *endpoint), "syncing"))?;
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
        let mut file = File::open(path).map_err(io_error(path, "opening"))?;
        let size = file.metadata().map_err(io_error(path, "reading"))?.len();
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
                .map_err(io_error(path, "reading"))?;
            let foreign = |header: &[u8]| Error::NotAnArchive {
                path: path.to_path_buf(),
                offset,
                head: header[..header.len().min(4)].to_vec(),
            };
            let legacy = if available >= 4 {
                match u32::from_le_bytes([header[0], header[1], header[2], header[3]]) {
                    HEADER_MAGIC => false,
                    LEGACY_HEADER_MAGIC => true,
                    _ => return Err(foreign(&header)),
                }
            } else {
                false
            };
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
            let start = offset + header.len() as u64;
            let end = start + u64::from(length);
            if end > size || length > MAX_FRAME {
                self.torn += 1;
                return Ok(());
            }
            offset = end;
            let key = if legacy {
                let mut frame = vec![0u8; length as usize];
                reader
                    .read_exact(&mut frame)
                    .map_err(io_error(path, "reading"))?;
                match legacy_key(&frame, path, start) {
                    Ok(key) => key,
                    Err(error) => {
                        // Not indexed: the request is asked of the API again.
                        warn!(%error, "skipping an archived answer of the older format");
                        continue;
                    }
                }
            } else {
                reader
                    .seek_relative(i64::from(length))
                    .map_err(io_error(path, "reading"))?;
                String::from_utf8_lossy(&header[20..]).into_owned()
            };
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
        let Some((path, location, frame)) = self.read(key)? else {
            return Ok(None);
        };
        decode_record(&frame, path, location.offset).map(Some)
    }

    /// The file, place and bytes (both frames) of the record of `key`.
    fn read(&self, key: &str) -> Result<Option<(&Path, Location, Vec<u8>)>> {
        let Some(location) = self.entries.get(key).copied() else {
            return Ok(None);
        };
        let path = &self.files[location.file];
        let mut file = File::open(path).map_err(io_error(path, "opening"))?;
        file.seek(SeekFrom::Start(location.offset))
            .map_err(io_error(path, "reading"))?;
        let mut frame = vec![0u8; location.length as usize];
        file.read_exact(&mut frame)
            .map_err(io_error(path, "reading"))?;
        Ok(Some((path, location, frame)))
    }

    /// The answer archived for `key`, if any: what [`ArchiveIndex::get`]
    /// gives, without the request and with the body taken from the
    /// decompressed record as it is.
    pub fn answer(&self, key: &str) -> Result<Option<ArchivedAnswer>> {
        let Some((path, location, frame)) = self.read(key)? else {
            return Ok(None);
        };
        let unreadable = |source| Error::ArchiveUnreadable {
            path: path.to_path_buf(),
            offset: location.offset,
            source: Arc::new(source),
        };
        let damaged = |source| Error::ArchiveDamaged {
            path: path.to_path_buf(),
            offset: location.offset,
            source: Arc::new(source),
        };
        let first = zstd::zstd_safe::find_frame_compressed_size(&frame).map_err(|code| {
            damaged(std::io::Error::other(zstd::zstd_safe::get_error_name(code)))
        })?;
        if first < frame.len() {
            // Format 3: the head, then the body alone.
            let mut head = decompress(&frame[..first], path, location.offset)?;
            head.extend_from_slice(b"null}");
            let fields: HeadFields = serde_json::from_slice(&head).map_err(unreadable)?;
            let tail = &frame[first..];
            let mut body = match zstd::zstd_safe::get_frame_content_size(tail) {
                Ok(Some(size)) => zstd::bulk::decompress(tail, usize::try_from(size).unwrap_or(0))
                    .map_err(damaged)?,
                _ => decompress(tail, path, location.offset)?,
            };
            // `<body>}` and a newline.
            let end = body.len().saturating_sub(2);
            if body.get(end..) != Some(b"}\n".as_slice()) {
                return Err(damaged(std::io::Error::other(
                    "the record does not end its body",
                )));
            }
            body.truncate(end);
            let body = if body.first() == Some(&b'"') {
                Bytes::from(serde_json::from_slice::<String>(&body).map_err(unreadable)?)
            } else {
                Bytes::from(body)
            };
            return Ok(Some(ArchivedAnswer {
                http_status: fields.http_status,
                status_code: fields.status_code,
                task_id: fields.task_id,
                cost: fields.cost,
                fetched_at: fields.fetched_at,
                body,
            }));
        }
        let json = Bytes::from(decompress(&frame, path, location.offset)?);
        let fields: AnswerFields<'_> = serde_json::from_slice(&json).map_err(unreadable)?;
        let body = if fields.body.get().starts_with('"') {
            Bytes::from(body_text(fields.body).map_err(unreadable)?)
        } else {
            json.slice_ref(fields.body.get().as_bytes())
        };
        Ok(Some(ArchivedAnswer {
            http_status: fields.http_status,
            status_code: fields.status_code,
            task_id: fields.task_id,
            cost: fields.cost,
            fetched_at: fields.fetched_at,
            body,
        }))
    }
}

/// The JSON of the record frame at `offset` of `path`.
fn decompress(frame: &[u8], path: &Path, offset: u64) -> Result<Vec<u8>> {
    zstd::stream::decode_all(frame).map_err(|source| Error::ArchiveDamaged {
        path: path.to_path_buf(),
        offset,
        source: Arc::new(source),
    })
}

/// The record of the record frame at `offset` of `path`.
fn decode_record(frame: &[u8], path: &Path, offset: u64) -> Result<ArchiveRecord> {
    serde_json::from_slice(&decompress(frame, path, offset)?).map_err(|source| {
        Error::ArchiveUnreadable {
            path: path.to_path_buf(),
            offset,
            source: Arc::new(source),
        }
    })
}

/// The [`request_key`] of a format-1 record, whose header holds a key of
/// an older hash: computed from the endpoint and request the record holds.
fn legacy_key(frame: &[u8], path: &Path, offset: u64) -> Result<String> {
    /// The fields of a record the key is made of.
    #[derive(Deserialize)]
    struct Keyed {
        endpoint: String,
        request: serde_json::Value,
    }
    let keyed: Keyed =
        serde_json::from_slice(&decompress(frame, path, offset)?).map_err(|source| {
            Error::ArchiveUnreadable {
                path: path.to_path_buf(),
                offset,
                source: Arc::new(source),
            }
        })?;
    Ok(key_of(&keyed.endpoint, &keyed.request))
}

/// Every `*.zst` file directly inside `dir`, sorted by name (run ids are
/// time-ordered, so older runs come first). A missing directory is empty.
pub fn archive_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir, "listing")(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_error(dir, "listing"))?.path();
        if path.extension().is_some_and(|x| x == "zst") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn record(run_id: &str, target: &str, page: i64, cost: f64) -> ArchiveRecord {
        let request = serde_json::json!({"target": target, "offset": page * 10});
        let key = request_key(Endpoint::Backlinks, &request);
        ArchiveRecord {
            v: RECORD_VERSION,
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
    fn a_json_body_is_stored_as_json_and_replayed_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let writer = ArchiveWriter::new(dir.path(), "r1").unwrap();
        let mut json_body = record("r1", "a.com", 0, 0.02);
        json_body.body = "{\"tasks\":[{\"text\":\"say \\\"hi\\\"\\n\"}], \"n\": 1}".into();
        let mut text_body = record("r1", "b.com", 0, 0.02);
        text_body.body = "not json {".into();
        writer.append(Endpoint::Backlinks, &json_body).unwrap();
        writer.append(Endpoint::Backlinks, &text_body).unwrap();
        writer.finish().unwrap();
        let file = archive_file(dir.path(), "r1", Endpoint::Backlinks);
        let text = String::from_utf8(zstd::stream::decode_all(File::open(&file).unwrap()).unwrap())
            .unwrap();
        // The JSON body is an object of the record, the other a string.
        assert!(
            text.contains(r#""body":{"tasks":[{"text":"say \"hi\"\n"}], "n": 1}"#),
            "{text}"
        );
        assert!(text.contains(r#""body":"not json {""#), "{text}");
        let index = ArchiveIndex::build(&[file]).unwrap();
        for stored in [&json_body, &text_body] {
            let answer = index.answer(&stored.key).unwrap().unwrap();
            assert_eq!(answer.body, stored.body.as_bytes());
            assert_eq!(answer.task_id, stored.task_id);
            assert_eq!(answer.cost, stored.cost);
            assert_eq!(index.get(&stored.key).unwrap().unwrap().body, stored.body);
        }
    }

    #[test]
    fn a_body_stored_as_a_string_by_format_2_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0__backlinks.zst");
        let old = record("r0", "a.com", 0, 0.02);
        let mut value = serde_json::to_value(&old).unwrap();
        value["v"] = 2.into();
        value["body"] = serde_json::Value::String(old.body.clone());
        let mut json = serde_json::to_vec(&value).unwrap();
        json.push(b'\n');
        let frame = zstd::bulk::compress(&json, LEVEL).unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&(HEADER_PAYLOAD as u32).to_le_bytes());
        bytes.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&old.cost.to_le_bytes());
        bytes.extend_from_slice(old.key.as_bytes());
        bytes.extend_from_slice(&frame);
        std::fs::write(&path, bytes).unwrap();
        let index = ArchiveIndex::build(&[path]).unwrap();
        assert_eq!(
            index.answer(&old.key).unwrap().unwrap().body,
            old.body.as_bytes()
        );
        assert_eq!(index.get(&old.key).unwrap().unwrap().body, old.body);
    }

    #[test]
    fn keys_are_stable_and_tell_requests_apart() {
        let request = serde_json::json!({"target": "a.com", "limit": 1000, "filters": ["dofollow", "=", true]});
        let a = request_key(Endpoint::Summary, &request);
        // A fixed value (xxh3-128 of `summary\n{"filters":["dofollow","=",true],"limit":1000,"target":"a.com"}`,
        // computed independently): a key that changed between versions
        // would make a resume ask the API again for every answer it has.
        assert_eq!(a, "2e903720c6c9772887b9b4c5a9564e19");
        assert_eq!(a, request_key(Endpoint::Summary, &request.clone()));
        assert_eq!(a.len(), KEY_LEN);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, request_key(Endpoint::Backlinks, &request));
        let mut other = request.clone();
        other["target"] = "b.com".into();
        assert_ne!(a, request_key(Endpoint::Summary, &other));
        other["target"] = "a.com".into();
        other["limit"] = 999.into();
        assert_ne!(a, request_key(Endpoint::Summary, &other));
        // Only the value counts, not how its JSON was laid out.
        let relaid: serde_json::Value = serde_json::from_str(
            r#"{ "filters": ["dofollow","=",true], "limit": 1000, "target": "a.com" }"#,
        )
        .unwrap();
        assert_eq!(a, request_key(Endpoint::Summary, &relaid));
    }

    #[test]
    fn the_canonical_json_is_what_serde_json_writes_with_sorted_maps() {
        let value = serde_json::json!({
            "z": [1, 2.5, -3, null, "é\"\n"],
            "a": {"y": {}, "b": [], "x": 1e300},
            "m": false,
        });
        let mut canonical = Vec::new();
        write_canonical(&mut canonical, &value);
        assert_eq!(canonical, serde_json::to_vec(&value).unwrap());
        assert_eq!(
            String::from_utf8(canonical).unwrap(),
            r#"{"a":{"b":[],"x":1e+300,"y":{}},"m":false,"z":[1,2.5,-3,null,"é\"\n"]}"#
        );
    }

    /// Appends `record` as an older version wrote it: a format-1 header
    /// with a key of the older hash (never looked at now).
    pub(crate) fn append_format_1(path: &Path, record: &ArchiveRecord) {
        let mut old = record.clone();
        old.v = 1;
        old.key = "8d5f0e2ab64c1f3e0c7a9d1e2f3a4b5c".into();
        let bytes = encode_record(LEGACY_HEADER_MAGIC, &old, path).unwrap();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(&bytes).unwrap();
    }

    #[test]
    fn records_of_the_older_format_are_found_by_their_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let old_path = archive_file(dir.path(), "run1", Endpoint::Backlinks);
        let records: Vec<_> = (0..3).map(|p| record("run1", "a.com", p, 0.02)).collect();
        for r in &records {
            append_format_1(&old_path, r);
        }
        // The same archive holds a record the older version could not
        // finish writing.
        let mut torn = Vec::new();
        torn.extend_from_slice(&LEGACY_HEADER_MAGIC.to_le_bytes());
        torn.extend_from_slice(&[0; 6]);
        OpenOptions::new()
            .append(true)
            .open(&old_path)
            .unwrap()
            .write_all(&torn)
            .unwrap();
        // A later run of the new version answers page 1 again.
        let writer = ArchiveWriter::new(dir.path(), "run2").unwrap();
        let again = record("run2", "a.com", 1, 0.05);
        writer.append(Endpoint::Backlinks, &again).unwrap();
        writer.finish().unwrap();

        let index = ArchiveIndex::build(&archive_files(dir.path()).unwrap()).unwrap();
        assert_eq!((index.records(), index.len(), index.torn()), (4, 3, 1));
        let found = index.get(&records[0].key).unwrap().unwrap();
        assert_eq!((found.v, found.page, found.cost), (1, 0, 0.02));
        assert_eq!(found.body, records[0].body);
        assert_eq!(index.cost(&records[2].key), Some(0.02));
        assert_eq!(index.get(&records[1].key).unwrap().unwrap(), again);
    }

    #[test]
    fn an_older_record_that_cannot_be_read_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = archive_file(dir.path(), "run1", Endpoint::Backlinks);
        let good = record("run1", "a.com", 0, 0.02);
        append_format_1(&path, &good);
        let mut bad = encode_record(
            LEGACY_HEADER_MAGIC,
            &record("run1", "a.com", 1, 0.02),
            &path,
        )
        .unwrap();
        // The record frame is not zstd any more.
        bad[8 + HEADER_PAYLOAD..].fill(0xff);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&bad)
            .unwrap();
        append_format_1(&path, &record("run1", "a.com", 2, 0.02));
        let index = ArchiveIndex::build(&[path]).unwrap();
        assert_eq!((index.records(), index.len(), index.torn()), (2, 2, 0));
        assert!(index.contains(&good.key));
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
        let err = ArchiveIndex::build(&[path]).unwrap_err();
        assert!(
            matches!(&err, Error::NotAnArchive { offset: 0, head, .. } if head[..] == [0x28, 0xb5, 0x2f, 0xfd]),
            "{err:?}"
        );
        let err = err.to_string();
        assert!(err.contains("x.zst is not a backlinks archive"), "{err}");
    }
}
