//! Work units and partitions.

use std::fmt;
use std::sync::Arc;

use chrono::NaiveDate;

use crate::{Dataset, Target};

/// An API endpoint the pipeline calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/v3/backlinks/summary/live`: one overview per target.
    Summary,
    /// `/v3/backlinks/backlinks/live`: the backlinks of a target, paged.
    Backlinks,
}

impl Endpoint {
    /// Every endpoint the pipeline knows.
    pub const ALL: [Endpoint; 2] = [Endpoint::Summary, Endpoint::Backlinks];

    /// The endpoint's short name, as used in config, logs and the ledger.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Summary => "summary",
            Endpoint::Backlinks => "backlinks",
        }
    }

    /// The datasets a unit of this endpoint replaces.
    pub fn datasets(self) -> &'static [Dataset] {
        match self {
            Endpoint::Summary => &[Dataset::Summary, Dataset::SummaryBreakdown],
            Endpoint::Backlinks => &[Dataset::Backlinks, Dataset::BacklinkRedirects],
        }
    }

    /// The request path below the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Summary => "/v3/backlinks/summary/live",
            Endpoint::Backlinks => "/v3/backlinks/backlinks/live",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One run of one pipeline for one target on one snapshot date. Writing a
/// partition replaces it whole, in every sink.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    pub pipeline: Arc<str>,
    pub target: Target,
    pub snapshot_date: NaiveDate,
}

/// What the scheduler yields: one endpoint to call for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkUnit {
    pub endpoint: Endpoint,
    pub target: Target,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_have_their_api_paths() {
        let named: Vec<_> = Endpoint::ALL.iter().map(|e| (e.name(), e.path())).collect();
        assert_eq!(
            named,
            [
                ("summary", "/v3/backlinks/summary/live"),
                ("backlinks", "/v3/backlinks/backlinks/live"),
            ]
        );
        assert_eq!(Endpoint::Backlinks.to_string(), "backlinks");
    }
}
