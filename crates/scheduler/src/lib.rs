//! Target lists in, work units out.
//!
//! The scheduler reads the targets of a pipeline from a [`TargetSource`] (a
//! CSV file with a header naming a `target` column, streamed record by
//! record, or an inline list from the pipeline file), validates and
//! normalises each one with [`normalize`] (trim, lowercase punycode host, no
//! scheme and no `www.` for domains, absolute `http(s)` URLs for pages) and
//! drops duplicates, keeping the first occurrence. [`read_targets`] returns a
//! [`TargetList`]: the valid [`Target`]s in input order, every [`Rejected`]
//! value with its place (`file:line` or `targets.list[i]`) and reason, and
//! the number of duplicates. In strict mode the first rejected value is an
//! [`Error::Invalid`] instead. [`work_units`] then pairs each target with
//! each endpoint into the [`WorkUnit`]s the fetcher runs.

mod normalize;
mod read;

use std::fmt;
use std::path::PathBuf;

use backlinks_model::{Endpoint, Target, WorkUnit};

pub use normalize::{MAX_DOMAIN_CHARS, MAX_URL_CHARS, normalize};

/// The characters of a rejected value kept for messages.
const VALUE_SHOWN_CHARS: usize = 100;

/// Where a pipeline's targets come from.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetSource {
    /// A CSV file with a header line naming a `target` column.
    Csv(PathBuf),
    /// The `targets.list` array of the pipeline file.
    Inline(Vec<String>),
}

/// The outcome of reading a target source.
#[derive(Debug, Clone, Default)]
pub struct TargetList {
    /// Valid, normalised targets in input order; of duplicates, the first
    /// occurrence is kept.
    pub targets: Vec<Target>,
    /// Every refused value, in input order (empty in strict mode, which
    /// stops at the first one).
    pub rejected: Vec<Rejected>,
    /// Valid values dropped because their normalised form came earlier.
    pub duplicates: u64,
}

/// A value that is not a valid target.
///
/// Displays as `{place}: target {value:?}: {reason}`, e.g.
/// `targets.csv:3: target "exa mple.com": contains whitespace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// `<path as given>:<line>` (1-based physical line of the record; the
    /// header is line 1) or `targets.list[<index>]` (0-based).
    pub place: String,
    /// The value as read, cut to about 100 characters, with the credentials
    /// of a URL masked.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

impl Rejected {
    fn new(place: String, raw: &str, reason: String) -> Self {
        Self {
            place,
            value: cut(&mask_credentials(raw)),
            reason,
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug formatting quotes the value and escapes control characters.
        write!(
            f,
            "{}: target {:?}: {}",
            self.place, self.value, self.reason
        )
    }
}

/// Errors reading a target source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be opened or read.
    #[error("reading targets from {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The CSV reader failed on a record.
    #[error("{}:{line}: {source}", path.display())]
    Csv {
        path: PathBuf,
        line: u64,
        source: csv::Error,
    },
    /// The header names no `target` column (or the file is empty).
    #[error(
        "{}: no `target` column (found: {}); the first line must be a header naming a `target` column",
        path.display(),
        read::describe_headers(headers)
    )]
    MissingColumn { path: PathBuf, headers: Vec<String> },
    /// A value was refused and targets are strict.
    #[error("{0}; stopping because targets are strict")]
    Invalid(Rejected),
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Reads, validates, normalises and deduplicates the targets of `source`.
///
/// Blocking: it reads the file (run it on a blocking thread in async code).
/// Memory grows with the distinct targets and the rejected values, not with
/// the file. When `strict`, the first rejected value is returned as
/// [`Error::Invalid`]. An empty source gives an empty list, not an error.
pub fn read_targets(source: &TargetSource, strict: bool) -> Result<TargetList> {
    match source {
        TargetSource::Csv(path) => read::read_csv(path, strict),
        TargetSource::Inline(values) => read::read_inline(values, strict),
    }
}

/// The work of a run: for each target in order, one unit per endpoint in
/// order.
pub fn work_units<'a>(
    targets: &'a [Target],
    endpoints: &'a [Endpoint],
) -> impl Iterator<Item = WorkUnit> + 'a {
    targets.iter().flat_map(move |target| {
        endpoints.iter().map(move |&endpoint| WorkUnit {
            endpoint,
            target: target.clone(),
        })
    })
}

/// The first [`VALUE_SHOWN_CHARS`] characters of `value`, with `…` if cut.
fn cut(value: &str) -> String {
    match value.char_indices().nth(VALUE_SHOWN_CHARS) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

/// `value` with the `user:password@` of a URL replaced by `***@`, so that a
/// refused URL's password does not reach logs.
fn mask_credentials(value: &str) -> String {
    let Some(scheme_end) = value.find("://").map(|i| i + 3) else {
        return value.to_owned();
    };
    let rest = &value[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &value[..scheme_end], &rest[at..]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_units_go_target_by_target_then_endpoint_by_endpoint() {
        let targets = [
            Target::from_normalized("a.com"),
            Target::from_normalized("https://b.com/x"),
        ];
        let endpoints = [Endpoint::Summary, Endpoint::Summary];
        let units: Vec<WorkUnit> = work_units(&targets, &endpoints).collect();
        let pairs: Vec<(&str, &str)> = units
            .iter()
            .map(|u| (u.target.as_str(), u.endpoint.name()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("a.com", "summary"),
                ("a.com", "summary"),
                ("https://b.com/x", "summary"),
                ("https://b.com/x", "summary"),
            ]
        );
        assert_eq!(work_units(&targets, &[]).count(), 0);
        assert_eq!(work_units(&[], &endpoints).count(), 0);
    }

    #[test]
    fn rejected_values_are_cut_escaped_and_masked() {
        let long = format!("{}.com", "x".repeat(300));
        let rejected = Rejected::new("targets.list[0]".into(), &long, "too long".into());
        assert_eq!(rejected.value, format!("{}…", "x".repeat(100)));

        let rejected = Rejected::new(
            "targets.list[1]".into(),
            "a\u{7}b.com\n",
            "contains a control character".into(),
        );
        assert_eq!(
            rejected.to_string(),
            "targets.list[1]: target \"a\\u{7}b.com\\n\": contains a control character"
        );

        let rejected = Rejected::new(
            "t.csv:2".into(),
            "https://user:hunter2@example.com/a@b",
            "a URL with credentials (user:password@) is not accepted".into(),
        );
        assert_eq!(rejected.value, "https://***@example.com/a@b");
        assert!(!rejected.to_string().contains("hunter2"));
        assert_eq!(mask_credentials("user@example.com"), "user@example.com");
        assert_eq!(
            mask_credentials("https://example.com/a@b"),
            "https://example.com/a@b"
        );
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let mut records = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(&b"a,b\nc\n"[..])
            .into_records();
        assert!(records.next().unwrap().is_ok());
        let source = records.next().unwrap().unwrap_err();
        let err = Error::Csv {
            path: PathBuf::from("targets.csv"),
            line: 7,
            source,
        };
        let message = err.to_string();
        assert!(
            message.starts_with("targets.csv:7: CSV error: "),
            "{message}"
        );
        assert!(message.contains("found record with 1 fields"), "{message}");
        let source = std::error::Error::source(&err).unwrap();
        assert!(source.is::<csv::Error>(), "{source:?}");
        let err = Error::MissingColumn {
            path: PathBuf::from("t.csv"),
            headers: (0..25).map(|i| format!("c{i}")).collect(),
        };
        let message = err.to_string();
        assert!(message.contains("found: c0, c1,"), "{message}");
        assert!(message.contains("c19, and 5 more)"), "{message}");
    }
}
