//! A target as the pipeline sends it to the API.

use std::fmt;

/// Whether a target names a whole domain or one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetKind {
    /// A host name: lowercase, no scheme, no `www.`, punycode.
    Domain,
    /// An absolute `http(s)` URL.
    Page,
}

/// A validated, normalised target. Construct it through the scheduler's
/// normalisation; the value is what is sent to the API and stored in the
/// `target` column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target(String);

impl Target {
    /// Wraps an already normalised value. The scheduler is the one caller
    /// that validates; tests may use it directly.
    pub fn from_normalized(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> TargetKind {
        if self.0.starts_with("http://") || self.0.starts_with("https://") {
            TargetKind::Page
        } else {
            TargetKind::Domain
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
