//! The benchmark suite of the backlinks pipeline.
//!
//! Each module measures one thing and returns a [`Section`] of Markdown
//! (the figures, how they were taken and the command that reproduces
//! them): [`fetch`] how close the fetcher comes to the API's limits
//! against the sandbox (latency × per-minute cap, 40202/40209 answers, a
//! 40202 storm), [`stages`] the normalizer and both sinks on one core,
//! [`peer`] the same pages loaded by dlt, [`replay`] a replay of a raw
//! archive of a million items by the run engine as a library and by the
//! binary on every core and on one, [`duckdb`] DuckDB turning the same
//! answers into Parquet, [`pg_ceiling`] our Postgres load against the
//! server's own `COPY` from a file, and [`e2e`] the real `backlinks` binary
//! on large targets with its peak memory. Data enters from the sandbox's
//! deterministic generator, fetched by the run engine
//! ([`library::fetch`]; [`pages::fetch_pages`] reads its answers back from
//! the raw archive); figures leave as text on stdout and, for `all`, as
//! `BENCHMARKS.md` ([`report::document`]). The `backlinks-bench` binary
//! wires them; `--quick` runs every benchmark at a tiny size so that CI
//! keeps the suite working.

pub mod duckdb;
pub mod e2e;
pub mod fetch;
pub mod library;
pub mod machine;
pub mod pages;
pub mod peer;
pub mod pg;
pub mod pg_ceiling;
pub mod replay;
pub mod report;
pub mod stages;

use std::path::PathBuf;

pub use report::Section;

/// Why a benchmark could not run. Messages name the file, target, table or
/// program involved, never credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file or directory.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The in-process sandbox could not start.
    #[error("starting the sandbox: {0}")]
    Sandbox(#[source] std::io::Error),
    /// Building the fetcher or fetching a page failed.
    #[error("fetching `{target}` page {page}: {message}")]
    Fetch {
        target: String,
        page: i64,
        message: String,
    },
    /// The normalizer refused a page.
    #[error(transparent)]
    Normalize(#[from] backlinks_normalizer::Error),
    /// The Parquet sink failed.
    #[error(transparent)]
    Parquet(#[from] backlinks_sink_parquet::Error),
    /// The Postgres sink failed.
    #[error(transparent)]
    Postgres(#[from] backlinks_sink_postgres::Error),
    /// Creating, using or dropping the scratch database failed.
    #[error("{action}: {source}")]
    Database {
        action: String,
        #[source]
        source: sqlx::Error,
    },
    /// A child program (the `backlinks` binary, the peer) failed.
    #[error("{program}: {message}")]
    Child { program: String, message: String },
}

/// Results of the suite's fallible operations.
pub type Result<T> = std::result::Result<T, Error>;

/// How big a run is: `Quick` runs everything at a tiny size in seconds (CI),
/// `Full` at the sizes reported in `BENCHMARKS.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Tiny sizes: seconds in all, figures only prove the path works.
    Quick,
    /// The sizes of the report.
    Full,
}

impl Size {
    /// `" --quick"` for quick runs, empty otherwise: appended to the
    /// commands shown with each figure.
    pub fn flag(self) -> &'static str {
        match self {
            Size::Quick => " --quick",
            Size::Full => "",
        }
    }
}

/// An error and its sources, `: `-separated.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Where the suite keeps what it builds once and reuses (the raw archive
/// of the replay benchmark): `BACKLINKS_BENCH_WORK`, or
/// `backlinks-bench-work` in the Cargo target directory this binary was
/// built into (outside the repository, kept between runs).
pub fn work_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BACKLINKS_BENCH_WORK") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("backlinks-bench-work")))
        .unwrap_or_else(|| std::env::temp_dir().join("backlinks-bench-work"))
}

/// Rows (or requests) per second, `0` when no time passed.
pub fn per_second(count: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { count / seconds } else { 0.0 }
}

/// `1234567.8` → `1,234,568`: figures in the report.
pub fn thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_get_thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(-5.0), "0");
    }

    #[test]
    fn rates_survive_zero_time() {
        assert_eq!(per_second(10.0, 0.0), 0.0);
        assert_eq!(per_second(10.0, 2.0), 5.0);
        assert_eq!(Size::Quick.flag(), " --quick");
        assert_eq!(Size::Full.flag(), "");
    }
}
