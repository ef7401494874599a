//! Reading target lists: a CSV file with a header, or an inline list.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use csv::ByteRecord;

use crate::{Error, Rejected, Result, TargetList, normalize};

/// The header names shown in a "no `target` column" error, at most.
const HEADERS_SHOWN: usize = 20;

/// Collects normalised targets in input order, dropping duplicates and
/// collecting (or, when strict, stopping at) rejected values.
struct Collector {
    strict: bool,
    list: TargetList,
    seen: HashSet<String>,
}

impl Collector {
    fn new(strict: bool) -> Self {
        Self {
            strict,
            list: TargetList::default(),
            seen: HashSet::new(),
        }
    }

    /// Normalises `raw`; `place` is only built when the value is rejected.
    fn add(&mut self, raw: &str, place: impl FnOnce() -> String) -> Result<()> {
        match normalize(raw) {
            Ok(target) => {
                if self.seen.contains(target.as_str()) {
                    self.list.duplicates += 1;
                } else {
                    self.seen.insert(target.as_str().to_owned());
                    self.list.targets.push(target);
                }
                Ok(())
            }
            Err(reason) => self.reject(Rejected::new(place(), raw, reason)),
        }
    }

    fn reject(&mut self, rejected: Rejected) -> Result<()> {
        if self.strict {
            return Err(Error::Invalid(rejected));
        }
        self.list.rejected.push(rejected);
        Ok(())
    }
}

/// Reads an inline list; places are `targets.list[<index>]` (0-based).
pub(crate) fn read_inline(values: &[String], strict: bool) -> Result<TargetList> {
    let mut collector = Collector::new(strict);
    for (index, raw) in values.iter().enumerate() {
        collector.add(raw, || format!("targets.list[{index}]"))?;
    }
    Ok(collector.list)
}

/// Reads a CSV file whose header names a `target` column, streaming it
/// record by record.
pub(crate) fn read_csv(path: &Path, strict: bool) -> Result<TargetList> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    // The csv reader buffers its input itself: no BufReader around the file.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(LineTracker::new(file));
    let mut record = ByteRecord::new();

    if !next_record(&mut reader, &mut record, path)? {
        return Err(Error::MissingColumn {
            path: path.to_path_buf(),
            headers: Vec::new(),
        });
    }
    let headers: Vec<String> = record
        .iter()
        .map(|name| {
            String::from_utf8_lossy(name)
                .trim_start_matches('\u{feff}')
                .trim()
                .to_owned()
        })
        .collect();
    let Some(column) = headers
        .iter()
        .position(|name| name.eq_ignore_ascii_case("target"))
    else {
        return Err(Error::MissingColumn {
            path: path.to_path_buf(),
            headers,
        });
    };

    let mut collector = Collector::new(strict);
    while next_record(&mut reader, &mut record, path)? {
        let position = reader.position().clone();
        let line = reader.get_mut().record_line(&position, &record);
        let place = || format!("{}:{line}", path.display());
        let cell = record.get(column).unwrap_or_default();
        match std::str::from_utf8(cell) {
            Ok(raw) => collector.add(raw, place)?,
            Err(_) => collector.reject(Rejected::new(
                place(),
                &String::from_utf8_lossy(cell),
                "not valid UTF-8".into(),
            ))?,
        }
    }
    Ok(collector.list)
}

/// Reads the next record; `Ok(false)` at the end of the file.
fn next_record(
    reader: &mut csv::Reader<LineTracker<File>>,
    record: &mut ByteRecord,
    path: &Path,
) -> Result<bool> {
    reader.read_byte_record(record).map_err(|e| {
        let line = e
            .position()
            .map_or_else(|| reader.position().line(), csv::Position::line);
        // With flexible byte records the csv reader fails only on IO; any
        // other error is reported with its line all the same.
        if !e.is_io_error() {
            return Error::Csv {
                path: path.to_path_buf(),
                line,
                source: e,
            };
        }
        match e.into_kind() {
            csv::ErrorKind::Io(source) => Error::Io {
                path: path.to_path_buf(),
                source,
            },
            // Not reached: `is_io_error` said it is one.
            kind => Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!("{kind:?}")),
            },
        }
    })
}

/// Wraps the file to tell on which line each record starts.
///
/// The csv reader reports, for a record, the line where it *started looking*
/// for it: blank lines skipped before the record and the `\n` of a previous
/// `\r\n` are counted on the wrong side, and a lone `\r` is not counted at
/// all. This wrapper notes the line breaks (`\n`, `\r\n` or a lone `\r`)
/// as the csv reader reads ahead, so that the reader's byte position after a
/// record tells the record's last line. Breaks behind the reader are only
/// counted, so memory stays within one read-ahead buffer.
struct LineTracker<R> {
    inner: R,
    /// Bytes read from `inner` so far.
    offset: u64,
    /// A `\r` just read: a break unless a `\n` follows.
    pending_cr: Option<u64>,
    /// Offsets of the breaks not yet behind the reader, ascending. A break
    /// is at the offset of its last byte.
    breaks: VecDeque<u64>,
    /// Breaks already behind the reader.
    breaks_behind: u64,
}

impl<R> LineTracker<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            pending_cr: None,
            breaks: VecDeque::new(),
            breaks_behind: 0,
        }
    }

    /// The 1-based line of the last byte the csv reader consumed (`consumed`
    /// bytes so far), not counting a break that byte itself ends: the line
    /// on which a record ends, whatever its terminator. `consumed` must not
    /// decrease from call to call.
    fn line_before(&mut self, consumed: u64) -> u64 {
        let last = consumed.saturating_sub(1);
        while self.breaks.front().is_some_and(|&at| at < last) {
            self.breaks.pop_front();
            self.breaks_behind += 1;
        }
        1 + self.breaks_behind
    }

    /// The 1-based physical line where the record just read begins; `after`
    /// is the reader's position after it.
    fn record_line(&mut self, after: &csv::Position, record: &ByteRecord) -> u64 {
        let end_line = self.line_before(after.byte());
        let inner_breaks: usize = record.iter().map(count_breaks).sum();
        end_line.saturating_sub(inner_breaks as u64).max(1)
    }
}

/// Line breaks inside a field (a quoted field may span lines).
fn count_breaks(field: &[u8]) -> usize {
    field
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && field.get(i + 1) != Some(&b'\n')))
        .count()
}

impl<R: Read> Read for LineTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for (i, &byte) in buf[..n].iter().enumerate() {
            let at = self.offset + i as u64;
            if let Some(cr) = self.pending_cr.take() {
                if byte != b'\n' {
                    self.breaks.push_back(cr);
                }
            }
            match byte {
                b'\n' => self.breaks.push_back(at),
                b'\r' => self.pending_cr = Some(at),
                _ => {}
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// The header names of a "no `target` column" error.
pub(crate) fn describe_headers(headers: &[String]) -> String {
    if headers.is_empty() {
        return "nothing, the file is empty".into();
    }
    let mut shown: Vec<String> = headers
        .iter()
        .take(HEADERS_SHOWN)
        .map(|name| {
            if name.is_empty() {
                "(unnamed)".to_owned()
            } else {
                format!("{:?}", crate::cut(name))
                    .trim_matches('"')
                    .to_owned()
            }
        })
        .collect();
    if headers.len() > HEADERS_SHOWN {
        shown.push(format!("and {} more", headers.len() - HEADERS_SHOWN));
    }
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use backlinks_model::Target;

    use super::*;
    use crate::{TargetSource, read_targets};

    fn write(dir: &tempfile::TempDir, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join("targets.csv");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn read(bytes: &[u8]) -> (PathBuf, Result<TargetList>) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, bytes);
        let result = read_targets(&TargetSource::Csv(path.clone()), false);
        (path, result)
    }

    fn names(list: &TargetList) -> Vec<&str> {
        list.targets.iter().map(Target::as_str).collect()
    }

    fn places(list: &TargetList) -> Vec<String> {
        list.rejected.iter().map(|r| r.place.clone()).collect()
    }

    #[test]
    fn the_cli_example_gives_one_target_two_rejected_one_duplicate() {
        let csv = "\u{feff}Target,owner\r\nexample.com,a\r\n\"exa mple.com\",b\r\n\r\nhttps://www.example.com/,c\r\nftp://example.org,d\r\n";
        let (path, list) = read(csv.as_bytes());
        let list = list.unwrap();
        assert_eq!(names(&list), ["example.com"]);
        assert_eq!(list.duplicates, 1);
        let shown = path.display();
        assert_eq!(places(&list), [format!("{shown}:3"), format!("{shown}:6")]);
        assert_eq!(
            list.rejected[0].to_string(),
            format!("{shown}:3: target \"exa mple.com\": contains whitespace")
        );
        assert_eq!(
            list.rejected[1].to_string(),
            format!(
                "{shown}:6: target \"ftp://example.org\": only http(s) URLs are accepted, not `ftp:`"
            )
        );
    }

    #[test]
    fn line_numbers_count_blank_lines_and_multi_line_fields() {
        let csv = "target\n\n\nbad one\n\"bad\ntwo\"\n\nexample.com\n  \nlast bad";
        let (path, list) = read(csv.as_bytes());
        let list = list.unwrap();
        assert_eq!(names(&list), ["example.com"]);
        let shown = path.display();
        assert_eq!(
            places(&list),
            [
                format!("{shown}:4"),
                format!("{shown}:5"),
                format!("{shown}:9"),
                format!("{shown}:10"),
            ]
        );
        assert_eq!(list.rejected[2].reason, "empty target");
        // Lone carriage returns end lines too.
        let (path, list) = read(b"target\rexample.com\r\rbad one\r");
        let list = list.unwrap();
        assert_eq!(names(&list), ["example.com"]);
        assert_eq!(places(&list), [format!("{}:4", path.display())]);
    }

    #[test]
    fn blank_lines_before_the_header_are_skipped() {
        let (path, list) = read(b"\n\ntarget\nbad one\n");
        assert_eq!(places(&list.unwrap()), [format!("{}:4", path.display())]);
    }

    #[test]
    fn quoted_commas_other_columns_and_short_rows() {
        let csv = "owner,TARGET ,note\n\"a, b\",\"https://example.com/a,b\",x\nc,example.org\nd\n";
        let (path, list) = read(csv.as_bytes());
        let list = list.unwrap();
        assert_eq!(names(&list), ["https://example.com/a,b", "example.org"]);
        assert_eq!(places(&list), [format!("{}:4", path.display())]);
        assert_eq!(list.rejected[0].reason, "empty target");
    }

    #[test]
    fn invalid_utf8_is_rejected_with_its_line() {
        let (path, list) = read(b"target\nexample.com\nbad\xff.com\nexample.org\n");
        let list = list.unwrap();
        assert_eq!(names(&list), ["example.com", "example.org"]);
        assert_eq!(list.rejected.len(), 1);
        assert_eq!(list.rejected[0].place, format!("{}:3", path.display()));
        assert_eq!(list.rejected[0].value, "bad\u{fffd}.com");
        assert_eq!(list.rejected[0].reason, "not valid UTF-8");
        // Invalid UTF-8 in another column does not matter.
        let (_, list) = read(b"target,note\nexample.com,\xff\n");
        assert_eq!(names(&list.unwrap()), ["example.com"]);
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.csv");
        let err = read_targets(&TargetSource::Csv(path.clone()), false).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("reading targets from {}: ", path.display())),
            "{message}"
        );
    }

    #[test]
    fn a_directory_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_targets(&TargetSource::Csv(dir.path().to_path_buf()), false).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn a_csv_without_a_target_column_is_refused() {
        let (path, result) = read(b"domain,owner\nexample.com,a\n");
        let err = result.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: no `target` column (found: domain, owner); the first line must be a header naming a `target` column",
                path.display()
            )
        );
        // A file whose first line is already a target has no header.
        let (_, result) = read(b"example.com\nexample.org\n");
        assert!(matches!(
            result,
            Err(Error::MissingColumn { ref headers, .. }) if headers == &["example.com"]
        ));
        let (path, result) = read(b"");
        assert_eq!(
            result.unwrap_err().to_string(),
            format!(
                "{}: no `target` column (found: nothing, the file is empty); the first line must be a header naming a `target` column",
                path.display()
            )
        );
    }

    #[test]
    fn strict_mode_stops_at_the_first_rejected_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            b"target\nexample.com\nexa mple.com\nftp://example.org\n",
        );
        let err = read_targets(&TargetSource::Csv(path.clone()), true).unwrap_err();
        let Error::Invalid(rejected) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(rejected.place, format!("{}:3", path.display()));
        assert_eq!(
            err.to_string(),
            format!(
                "{}:3: target \"exa mple.com\": contains whitespace; stopping because targets are strict",
                path.display()
            )
        );
        // Without a rejected target, strict reads the same list.
        let path = write(&dir, b"target\nexample.com\nwww.example.com\n");
        let list = read_targets(&TargetSource::Csv(path), true).unwrap();
        assert_eq!(names(&list), ["example.com"]);
        assert_eq!(list.duplicates, 1);
    }

    #[test]
    fn inline_lists_name_the_index() {
        let values: Vec<String> = [
            "example.com",
            "not a domain",
            "EXAMPLE.com",
            "",
            "example.org",
        ]
        .map(String::from)
        .into();
        let list = read_targets(&TargetSource::Inline(values.clone()), false).unwrap();
        assert_eq!(names(&list), ["example.com", "example.org"]);
        assert_eq!(list.duplicates, 1);
        assert_eq!(places(&list), ["targets.list[1]", "targets.list[3]"]);
        assert_eq!(
            list.rejected[0].to_string(),
            "targets.list[1]: target \"not a domain\": contains whitespace"
        );
        let err = read_targets(&TargetSource::Inline(values), true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "targets.list[1]: target \"not a domain\": contains whitespace; stopping because targets are strict"
        );
        let empty = read_targets(&TargetSource::Inline(Vec::new()), true).unwrap();
        assert!(empty.targets.is_empty() && empty.rejected.is_empty());
    }

    #[test]
    fn a_large_file_is_read_in_order_with_duplicates_dropped() {
        // 200,000 rows over 50,000 distinct domains, written as a domain,
        // a URL, with `www.` and quoted with CRLF; in the first quarter every
        // 1000th row is invalid, so those domains first appear as URLs.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.csv");
        {
            use std::io::Write;
            let mut out = io::BufWriter::new(File::create(&path).unwrap());
            writeln!(out, "id,target").unwrap();
            for i in 0..200_000u32 {
                let n = i % 50_000;
                match i / 50_000 {
                    0 if i % 1000 == 999 => writeln!(out, "{i},bad target {i}").unwrap(),
                    0 => writeln!(out, "{i},site{n}.example.com").unwrap(),
                    1 => writeln!(out, "{i},https://site{n}.example.com/").unwrap(),
                    2 => writeln!(out, "{i},WWW.Site{n}.Example.com").unwrap(),
                    _ => writeln!(out, "{i},\"site{n}.example.com\"\r").unwrap(),
                }
            }
        }
        let list = read_targets(&TargetSource::Csv(path.clone()), false).unwrap();
        assert_eq!(list.rejected.len(), 50);
        assert_eq!(list.targets.len(), 50_000);
        assert_eq!(list.duplicates, 200_000 - 50 - 50_000);
        let distinct: HashSet<&str> = names(&list).into_iter().collect();
        assert_eq!(distinct.len(), 50_000);
        assert_eq!(list.targets[0].as_str(), "site0.example.com");
        assert_eq!(list.targets[998].as_str(), "site998.example.com");
        assert_eq!(list.targets[999].as_str(), "site1000.example.com");
        assert_eq!(list.targets[49_950].as_str(), "site999.example.com");
        assert_eq!(list.targets[49_999].as_str(), "site49999.example.com");
        // Row i is on line i + 2.
        assert_eq!(
            list.rejected[49].place,
            format!("{}:{}", path.display(), 49_999 + 2)
        );
    }

    #[test]
    fn line_tracker_counts_lf_crlf_and_lone_cr_breaks() {
        // Lines: 1 "ab", 2 "cd", 3 "ef", 4 "gh", 5 "".
        let text = b"ab\ncd\r\nef\rgh\r";
        // Read in small pieces so that a `\r\n` falls across two reads.
        let mut tracker = LineTracker::new(io::BufReader::with_capacity(6, &text[..]));
        let mut buf = [0u8; 6];
        while tracker.read(&mut buf).unwrap() > 0 {}
        assert_eq!(tracker.line_before(2), 1); // "ab"
        assert_eq!(tracker.line_before(3), 1); // "ab\n"
        assert_eq!(tracker.line_before(6), 2); // "cd\r"
        assert_eq!(tracker.line_before(7), 2); // "cd\r\n"
        assert_eq!(tracker.line_before(10), 3); // "ef\r"
        assert_eq!(tracker.line_before(12), 4); // "gh"
        assert_eq!(tracker.line_before(13), 4); // "gh\r"
        assert_eq!(count_breaks(b"a\r\nb\nc\rd"), 3);
    }
}
