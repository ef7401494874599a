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
}

/// One run of a pipeline, as the `runs` table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    pub pipeline: String,
    pub snapshot_date: chrono::NaiveDate,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `succeeded`, `partial`, `failed`, `interrupted`,
    /// `account_error` or `budget_exhausted`.
    pub status: String,
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
