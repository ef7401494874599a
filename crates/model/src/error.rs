//! Errors raised while decoding API data.

/// Errors of the model crate: decoding API responses into typed values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The response body is not the JSON the API documents. `path` is the
    /// JSON path of the offending value (e.g. `tasks[0].result[0].rank`).
    #[error("malformed {endpoint} response at `{path}`: {message}")]
    Decode {
        endpoint: &'static str,
        path: String,
        message: String,
    },
    /// A date string that is not `yyyy-mm-dd hh:mm:ss +00:00`.
    #[error("bad date `{value}` in field `{field}`: expected `yyyy-mm-dd hh:mm:ss +00:00`")]
    Date { field: &'static str, value: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// An error and its sources on one line, `a: b: c`, for the ledger, logs
/// and messages. A source whose message the text so far already ends with
/// (a transparent wrapper) is not repeated.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = source.source();
    }
    out
}
