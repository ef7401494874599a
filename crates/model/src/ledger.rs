//! The request ledger: one record per request the fetcher sent.

use chrono::{DateTime, Utc};

use crate::Endpoint;

/// What happened to one logical request (all its attempts together).
/// Never holds credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub endpoint: Endpoint,
    pub target: String,
    /// 0-based page of a paginated endpoint; 0 for single-page ones.
    pub page: i64,
    pub started_at: DateTime<Utc>,
    /// How many times the request was sent (1 = no retry).
    pub attempts: u32,
    /// HTTP status of the last attempt, if a response arrived.
    pub http_status: Option<u16>,
    /// The task's (or else the envelope's) `status_code` of the last attempt.
    pub status_code: Option<i64>,
    /// Cost in USD the API reported, summed over attempts.
    pub cost: f64,
    /// Response bytes received, summed over attempts.
    pub bytes: u64,
    /// Wall time from first send to final answer, retries and waits included.
    pub latency_ms: u64,
    /// The API's task id of the final answer.
    pub task_id: Option<String>,
    /// Why the request finally failed; `None` on success.
    pub error: Option<String>,
    /// Answered from the raw archive (paid by an earlier run; `cost` 0,
    /// `attempts` 0) instead of the API.
    pub replayed: bool,
    /// The per-minute limit the API announced (`X-RateLimit-Limit`) in the
    /// last answer to this request, if it sent one.
    pub announced_limit: Option<u32>,
}

/// One run of a pipeline, as the `runs` table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    pub pipeline: String,
    pub snapshot_date: chrono::NaiveDate,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: RunStatus,
    pub units_total: i64,
    pub units_ok: i64,
    pub units_failed: i64,
    pub requests: i64,
    pub retries: i64,
    /// Costs the API reported for this run's requests (replayed answers
    /// count 0).
    pub cost_usd: f64,
    /// JSON object: rows written per dataset.
    pub rows: String,
    /// JSON object: unknown API fields kept in `extra`, with counts.
    pub unknown_fields: String,
    /// JSON object: the run's effective settings (never credentials).
    pub settings: String,
    pub error: Option<String>,
    /// Answers reused from the raw archive instead of asking the API.
    pub replayed: i64,
    /// What those answers cost when earlier runs fetched them, in USD.
    pub replayed_cost_usd: f64,
}

/// Where a run stands: `running` until it ends, then its outcome. Stored
/// as the snake_case name in the `runs` table and the run manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started and not ended (or crashed: nothing recorded its end).
    Running,
    /// Every unit landed.
    Succeeded,
    /// Some units failed or were not run; what succeeded landed.
    Partial,
    /// Every unit that ran failed.
    Failed,
    /// Stopped by a signal; re-running resumes it.
    Interrupted,
    /// The account refused (authentication, payment): the run stopped.
    AccountError,
    /// The spend cap stopped dispatching.
    BudgetExhausted,
    /// Died without recording its end (killed, power loss): a later run
    /// of the same pipeline and day, holding the day's lock, found it
    /// `running` and marked it so. Re-running resumes it.
    Crashed,
}

impl RunStatus {
    /// The name stored in the `runs` table and the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::AccountError => "account_error",
            RunStatus::BudgetExhausted => "budget_exhausted",
            RunStatus::Crashed => "crashed",
        }
    }

    /// Whether the run ended.
    pub fn finished(self) -> bool {
        self != RunStatus::Running
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_statuses_are_stored_by_their_snake_case_names() {
        for status in [
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Partial,
            RunStatus::Failed,
            RunStatus::Interrupted,
            RunStatus::AccountError,
            RunStatus::BudgetExhausted,
            RunStatus::Crashed,
        ] {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(serde_json::from_str::<RunStatus>(&json).unwrap(), status);
        }
        assert!(!RunStatus::Running.finished());
        assert!(RunStatus::Partial.finished());
    }
}
