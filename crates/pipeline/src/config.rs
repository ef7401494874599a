//! Pipeline files: raw TOML (with `BACKLINKS__SECTION__KEY` environment
//! overrides) → [`RawPipeline::validate`] (no IO) → [`PipelineSpec`], the
//! typed settings the stages take. Every default is stated once, in the
//! `Default` impls below, and `backlinks validate --explain` prints them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backlinks_fetcher::RetryPolicy;
use backlinks_model::api::{BacklinksMode, BacklinksRequest, SummaryRequest};
use backlinks_scheduler::TargetSource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The API refuses more than this many requests in flight per account.
pub const MAX_IN_FLIGHT_LIMIT: u32 = 30;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    /// Stored in the `pipeline` column: lowercase letters, digits, `-`, `_`.
    pub name: String,
    #[serde(default)]
    pub targets: RawTargets,
    #[serde(default)]
    pub endpoints: RawEndpoints,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub sinks: RawSinks,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub budget: RawBudget,
    #[serde(default)]
    pub pricing: RawPricing,
    /// When present, the run starts an in-process imitation of the API and
    /// talks to it instead (no account needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<RawSandbox>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTargets {
    /// CSV file with a `target` column, relative to the pipeline file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csv: Option<PathBuf>,
    /// Inline list of targets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<Vec<String>>,
    /// Stop at the first invalid target instead of skipping it.
    pub strict: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEndpoints {
    /// `summary/live`, one request per target. Present = enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<RawSummary>,
    /// `backlinks/live`: every backlink of each target, page by page.
    /// Present = enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlinks: Option<RawBacklinks>,
}

/// Request fields of `backlinks/live` plus paging; defaults are the API's
/// own except `limit`, which is the largest page (fewest requests).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBacklinks {
    /// `as_is` (every backlink), `one_per_domain` or `one_per_anchor`.
    pub mode: String,
    /// The API's filter expression, e.g. `["dofollow", "=", true]`; at most 8 conditions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<Value>,
    /// Sort rules such as `"rank,desc"`; at most 3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_by: Option<Vec<String>>,
    /// `all`, `live` or `lost`.
    pub backlinks_status_type: String,
    pub include_subdomains: bool,
    /// Not a field of backlinks/live in the current official client (it
    /// was until 2025; summary/live still has it): sent only when set
    /// here, and `validate` warns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_indirect_links: Option<bool>,
    pub exclude_internal_backlinks: bool,
    /// `one_hundred` or `one_thousand`.
    pub rank_scale: String,
    /// Items per request, 1..=1000.
    pub limit: u32,
    /// Stop after this many items per target (0 = all of them).
    pub max_items: u64,
    /// Echoed back by the API; at most 255 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl Default for RawBacklinks {
    fn default() -> Self {
        Self {
            mode: "as_is".into(),
            filters: None,
            order_by: None,
            backlinks_status_type: "live".into(),
            include_subdomains: true,
            include_indirect_links: None,
            exclude_internal_backlinks: true,
            rank_scale: "one_thousand".into(),
            limit: 1000,
            max_items: 0,
            tag: None,
        }
    }
}

/// Request fields of `summary/live`; defaults are the API's own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSummary {
    pub include_subdomains: bool,
    pub include_indirect_links: bool,
    pub exclude_internal_backlinks: bool,
    /// 1..=1000.
    pub internal_list_limit: u32,
    /// `all`, `live` or `lost`.
    pub backlinks_status_type: String,
    /// The API's filter expression, e.g. `["dofollow", "=", true]`; at most 8 conditions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlinks_filters: Option<Value>,
    /// `one_hundred` or `one_thousand`.
    pub rank_scale: String,
    /// Echoed back by the API; at most 255 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl Default for RawSummary {
    fn default() -> Self {
        Self {
            include_subdomains: true,
            include_indirect_links: true,
            exclude_internal_backlinks: true,
            internal_list_limit: 10,
            backlinks_status_type: "live".into(),
            backlinks_filters: None,
            rank_scale: "one_thousand".into(),
            tag: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    /// Overridden by `DATAFORSEO_BASE_URL`.
    pub base_url: String,
    /// The account's limit (2000 for most accounts).
    pub requests_per_minute: u32,
    /// 1..=30.
    pub max_in_flight: u32,
    /// Per attempt; live requests can take 120 s on the API's side.
    pub timeout_secs: u64,
    /// After Ctrl-C or SIGTERM, how long requests in flight may take to
    /// finish and land before they are abandoned.
    pub shutdown_grace_secs: u64,
    pub retry: RawRetry,
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            base_url: "https://api.dataforseo.com".into(),
            requests_per_minute: 2000,
            max_in_flight: MAX_IN_FLIGHT_LIMIT,
            timeout_secs: 180,
            shutdown_grace_secs: 30,
            retry: RawRetry::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetry {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RawRetry {
    fn default() -> Self {
        let policy = RetryPolicy::default();
        Self {
            max_attempts: policy.max_attempts,
            initial_backoff_ms: policy.initial_backoff.as_millis() as u64,
            max_backoff_ms: policy.max_backoff.as_millis() as u64,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSinks {
    pub parquet: RawParquet,
    pub postgres: RawPostgres,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawParquet {
    pub enabled: bool,
    /// Relative to the working directory.
    pub dir: PathBuf,
    /// Targets written at once: each open partition holds a Parquet writer
    /// per dataset (tens of MB for `backlinks`), so this bounds memory.
    pub max_open_partitions: u32,
}

/// Default of `sinks.parquet.max_open_partitions`.
pub const DEFAULT_MAX_OPEN_PARTITIONS: u32 = 8;

impl Default for RawParquet {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "data".into(),
            max_open_partitions: DEFAULT_MAX_OPEN_PARTITIONS,
        }
    }
}

/// Where runs keep their raw archive and manifests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawState {
    /// Relative to the working directory. Holds `archive/` (every answer,
    /// zstd) and `runs/` (manifests and dead letters).
    pub dir: PathBuf,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            dir: "state".into(),
        }
    }
}

/// The spend cap.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBudget {
    /// Hard cap in USD per run (0 = none); `run --max-cost` overrides it.
    pub max_cost_usd: f64,
}

/// Prices used for estimates (the spend cap and `backlinks estimate`);
/// recorded costs always come from the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPricing {
    pub summary: RawPrice,
    pub backlinks: RawPrice,
}

impl Default for RawPricing {
    fn default() -> Self {
        Self {
            summary: RawPrice {
                per_request: 0.02003,
                per_item: 0.0,
            },
            backlinks: RawPrice {
                per_request: 0.02,
                per_item: 0.00003,
            },
        }
    }
}

/// The price of one request of an endpoint, in USD.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub per_request: f64,
    /// Per item the answer returns (at most the request's `limit`).
    pub per_item: f64,
}

impl RawPrice {
    /// The estimated cost of one request that may return `items` items.
    pub fn estimate(&self, items: u64) -> f64 {
        self.per_request + self.per_item * items as f64
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPostgres {
    /// The connection string comes from `DATABASE_URL`, never from this file.
    pub enabled: bool,
    pub max_connections: u32,
    /// Apply pending migrations before the run.
    pub migrate: bool,
    /// How long opening a connection may take (TCP, TLS, authentication),
    /// 1..=3600.
    pub connect_timeout_secs: u64,
    /// How long any one step may wait for the server's answer (a
    /// statement, a migration, the rows of a `COPY`, a commit), 1..=86400.
    pub statement_timeout_secs: u64,
}

impl Default for RawPostgres {
    fn default() -> Self {
        let timeouts = backlinks_sink_postgres::Timeouts::default();
        Self {
            enabled: false,
            max_connections: 10,
            migrate: true,
            connect_timeout_secs: timeouts.connect.as_secs(),
            statement_timeout_secs: timeouts.statement.as_secs(),
        }
    }
}

impl RawPostgres {
    /// The sink's timeouts.
    pub fn timeouts(&self) -> backlinks_sink_postgres::Timeouts {
        backlinks_sink_postgres::Timeouts {
            connect: Duration::from_secs(self.connect_timeout_secs),
            statement: Duration::from_secs(self.statement_timeout_secs),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSandbox {
    pub seed: u64,
    /// The imitated account's per-minute cap (0 = none).
    pub requests_per_minute: u32,
    pub max_in_flight: u32,
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    pub faults: RawFaults,
}

impl Default for RawSandbox {
    fn default() -> Self {
        Self {
            seed: 42,
            requests_per_minute: 2000,
            max_in_flight: MAX_IN_FLIGHT_LIMIT,
            latency_ms: 40,
            latency_jitter_ms: 40,
            faults: RawFaults::default(),
        }
    }
}

/// Probabilities (0..=1) per request of each injected fault.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFaults {
    pub http_500: f64,
    pub envelope_50000: f64,
    pub truncated_json: f64,
    pub rate_limit_storm: f64,
    pub slow: f64,
    pub slow_delay_ms: u64,
}

/// The validated pipeline.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub name: Arc<str>,
    pub targets: TargetSource,
    pub strict_targets: bool,
    /// Request template of summary/live (its `target` is filled per unit).
    pub summary: Option<SummaryRequest>,
    /// Request template and paging of backlinks/live.
    pub backlinks: Option<BacklinksSpec>,
    pub base_url: String,
    pub requests_per_minute: u32,
    pub max_in_flight: u32,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub parquet_dir: Option<PathBuf>,
    /// `sinks.parquet.max_open_partitions` when Parquet is enabled.
    pub parquet_open_partitions: Option<u32>,
    pub postgres: Option<RawPostgres>,
    pub sandbox: Option<RawSandbox>,
    /// The state directory (raw archive, manifests, dead letters).
    pub state_dir: PathBuf,
    /// Spend cap in USD; `None` = no cap.
    pub max_cost_usd: Option<f64>,
    pub pricing: RawPricing,
    pub shutdown_grace: Duration,
    /// Settings that are valid but worth a word (`validate` prints them,
    /// a run logs them).
    pub warnings: Vec<String>,
}

/// backlinks/live: the request template (its `target`, `offset`, `limit`
/// and `search_after_token` are set per page) and the paging limits.
#[derive(Debug, Clone)]
pub struct BacklinksSpec {
    pub template: BacklinksRequest,
    /// Items per request, 1..=1000.
    pub page_size: u32,
    /// Items per target at most; `None` = all of them.
    pub max_items: Option<u64>,
}

/// Reads a pipeline file and applies `BACKLINKS__…` environment overrides.
/// Every problem is an input error naming the file.
pub fn load(path: &Path) -> Result<RawPipeline> {
    if !path.is_file() {
        return Err(Error::input(format!(
            "pipeline file {} does not exist",
            path.display()
        )));
    }
    let source = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("BACKLINKS")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| Error::input(format!("reading pipeline {}: {e}", path.display())))?;
    source
        .try_deserialize::<RawPipeline>()
        .map_err(|e| Error::input(format!("pipeline {}: {e}", path.display())))
}

/// Loads, overrides and validates a pipeline: `targets` replaces its
/// target list, `strict` makes invalid targets fatal, `base_url` (from
/// `DATAFORSEO_BASE_URL`) replaces `api.base_url`. Every problem is an
/// input error naming the file and key.
pub fn load_spec(
    path: &Path,
    targets: Option<&Path>,
    strict: bool,
    base_url: Option<&str>,
) -> Result<(RawPipeline, PipelineSpec)> {
    let raw = load(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut spec = raw.validate(dir).map_err(|problems| {
        Error::input(format!(
            "pipeline {} is invalid:\n  - {}",
            path.display(),
            problems.join("\n  - ")
        ))
    })?;
    if let Some(csv) = targets {
        spec.targets = TargetSource::Csv(csv.to_path_buf());
    }
    spec.strict_targets |= strict;
    if let Some(url) = base_url {
        check_base_url(url)
            .map_err(|problem| Error::input(format!("DATAFORSEO_BASE_URL: {problem}")))?;
        spec.base_url = url.trim_end_matches('/').to_owned();
    }
    Ok((raw, spec))
}

impl RawPipeline {
    /// Checks every setting and resolves paths against the pipeline file's
    /// directory. Lists all problems at once, each naming its key.
    pub fn validate(&self, pipeline_dir: &Path) -> Result<PipelineSpec, Vec<String>> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        check(
            name_ok,
            format!("name = {:?}: use 1 to 63 of a-z, 0-9, `-`, `_`", self.name),
        );

        let targets = match (&self.targets.csv, &self.targets.list) {
            (Some(csv), None) => Some(TargetSource::Csv(pipeline_dir.join(csv))),
            (None, Some(list)) => Some(TargetSource::Inline(list.clone())),
            (Some(_), Some(_)) => {
                check(
                    false,
                    "targets: set either `csv` or `list`, not both".into(),
                );
                None
            }
            (None, None) => Some(TargetSource::Inline(Vec::new())),
        };

        let summary = self.endpoints.summary.as_ref().map(|s| {
            check(
                (1..=1000).contains(&s.internal_list_limit),
                format!(
                    "endpoints.summary.internal_list_limit = {} is out of range 1..=1000",
                    s.internal_list_limit
                ),
            );
            check_shared_fields(
                "endpoints.summary",
                &s.backlinks_status_type,
                &s.rank_scale,
                s.tag.as_deref(),
                &mut check,
            );
            if let Some(filters) = &s.backlinks_filters {
                if let Err(problem) = check_filters(filters) {
                    check(
                        false,
                        format!("endpoints.summary.backlinks_filters: {problem}"),
                    );
                }
            }
            SummaryRequest {
                target: String::new(),
                include_subdomains: Some(s.include_subdomains),
                include_indirect_links: Some(s.include_indirect_links),
                exclude_internal_backlinks: Some(s.exclude_internal_backlinks),
                internal_list_limit: Some(s.internal_list_limit),
                backlinks_status_type: Some(s.backlinks_status_type.clone()),
                backlinks_filters: s.backlinks_filters.clone(),
                rank_scale: Some(s.rank_scale.clone()),
                tag: s.tag.clone(),
            }
        });
        let backlinks = self
            .endpoints
            .backlinks
            .as_ref()
            .map(|b| validate_backlinks(b, &mut check));
        check(
            summary.is_some() || backlinks.is_some(),
            "endpoints: enable at least one endpoint, e.g. `[endpoints.summary]` or `[endpoints.backlinks]`".into(),
        );

        let api = &self.api;
        check(
            (1..=1_000_000).contains(&api.requests_per_minute),
            format!(
                "api.requests_per_minute = {} is out of range 1..=1000000",
                api.requests_per_minute
            ),
        );
        check(
            (1..=MAX_IN_FLIGHT_LIMIT).contains(&api.max_in_flight),
            format!(
                "api.max_in_flight = {} is out of range 1..={MAX_IN_FLIGHT_LIMIT} (the API refuses more than {MAX_IN_FLIGHT_LIMIT} in flight)",
                api.max_in_flight
            ),
        );
        check(
            (1..=3600).contains(&api.timeout_secs),
            format!(
                "api.timeout_secs = {} is out of range 1..=3600",
                api.timeout_secs
            ),
        );
        check(
            (1..=20).contains(&api.retry.max_attempts),
            format!(
                "api.retry.max_attempts = {} is out of range 1..=20",
                api.retry.max_attempts
            ),
        );
        check(
            api.retry.initial_backoff_ms <= api.retry.max_backoff_ms
                && api.retry.max_backoff_ms <= 600_000,
            format!(
                "api.retry: need initial_backoff_ms ({}) <= max_backoff_ms ({}) <= 600000",
                api.retry.initial_backoff_ms, api.retry.max_backoff_ms
            ),
        );
        if let Err(problem) = check_base_url(&api.base_url) {
            check(false, format!("api.base_url: {problem}"));
        }
        check(
            api.shutdown_grace_secs <= 3600,
            format!(
                "api.shutdown_grace_secs = {} is out of range 0..=3600",
                api.shutdown_grace_secs
            ),
        );
        check(
            self.budget.max_cost_usd.is_finite() && self.budget.max_cost_usd >= 0.0,
            format!(
                "budget.max_cost_usd = {} must be 0 (no cap) or a positive amount in USD",
                self.budget.max_cost_usd
            ),
        );
        for (name, price) in [
            ("summary", self.pricing.summary),
            ("backlinks", self.pricing.backlinks),
        ] {
            for (key, v) in [
                ("per_request", price.per_request),
                ("per_item", price.per_item),
            ] {
                check(
                    v.is_finite() && (0.0..=100.0).contains(&v),
                    format!("pricing.{name}.{key} = {v} is out of range 0..=100 (USD)"),
                );
            }
        }
        check(
            !self.state.dir.as_os_str().is_empty(),
            "state.dir: give a directory for the raw archive and run manifests".into(),
        );

        let sinks = &self.sinks;
        check(
            sinks.parquet.enabled || sinks.postgres.enabled,
            "sinks: enable `sinks.parquet` or `sinks.postgres` (or both)".into(),
        );
        check(
            (1..=64).contains(&sinks.parquet.max_open_partitions),
            format!(
                "sinks.parquet.max_open_partitions = {} is out of range 1..=64",
                sinks.parquet.max_open_partitions
            ),
        );
        check(
            (1..=3600).contains(&sinks.postgres.connect_timeout_secs),
            format!(
                "sinks.postgres.connect_timeout_secs = {} is out of range 1..=3600",
                sinks.postgres.connect_timeout_secs
            ),
        );
        check(
            (1..=86_400).contains(&sinks.postgres.statement_timeout_secs),
            format!(
                "sinks.postgres.statement_timeout_secs = {} is out of range 1..=86400",
                sinks.postgres.statement_timeout_secs
            ),
        );
        check(
            (1..=64).contains(&sinks.postgres.max_connections),
            format!(
                "sinks.postgres.max_connections = {} is out of range 1..=64",
                sinks.postgres.max_connections
            ),
        );

        if let Some(sandbox) = &self.sandbox {
            let f = &sandbox.faults;
            for (key, p) in [
                ("http_500", f.http_500),
                ("envelope_50000", f.envelope_50000),
                ("truncated_json", f.truncated_json),
                ("rate_limit_storm", f.rate_limit_storm),
                ("slow", f.slow),
            ] {
                check(
                    (0.0..=1.0).contains(&p),
                    format!("sandbox.faults.{key} = {p} is not a probability in 0..=1"),
                );
            }
            check(
                (1..=MAX_IN_FLIGHT_LIMIT).contains(&sandbox.max_in_flight),
                format!(
                    "sandbox.max_in_flight = {} is out of range 1..={MAX_IN_FLIGHT_LIMIT}",
                    sandbox.max_in_flight
                ),
            );
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(PipelineSpec {
            name: self.name.as_str().into(),
            targets: targets.unwrap_or(TargetSource::Inline(Vec::new())),
            strict_targets: self.targets.strict,
            summary,
            backlinks,
            base_url: api.base_url.trim_end_matches('/').to_owned(),
            requests_per_minute: api.requests_per_minute,
            max_in_flight: api.max_in_flight,
            timeout: Duration::from_secs(api.timeout_secs),
            retry: RetryPolicy {
                max_attempts: api.retry.max_attempts,
                initial_backoff: Duration::from_millis(api.retry.initial_backoff_ms),
                max_backoff: Duration::from_millis(api.retry.max_backoff_ms),
            },
            parquet_dir: sinks.parquet.enabled.then(|| sinks.parquet.dir.clone()),
            parquet_open_partitions: sinks
                .parquet
                .enabled
                .then_some(sinks.parquet.max_open_partitions),
            postgres: sinks.postgres.enabled.then(|| sinks.postgres.clone()),
            sandbox: self.sandbox.clone(),
            state_dir: self.state.dir.clone(),
            max_cost_usd: (self.budget.max_cost_usd > 0.0).then_some(self.budget.max_cost_usd),
            pricing: self.pricing.clone(),
            shutdown_grace: Duration::from_secs(api.shutdown_grace_secs),
            warnings: self.warnings(),
        })
    }
}

impl RawPipeline {
    /// What is valid but worth a word.
    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(b) = &self.endpoints.backlinks {
            if b.include_indirect_links.is_some() {
                warnings.push(
                    "endpoints.backlinks.include_indirect_links is not a field of backlinks/live in the current official client (dataforseo-client 2.1.10); it is sent because it is set here, and the API may ignore or refuse it".into(),
                );
            }
        }
        warnings
    }
}

/// The request fields every backlinks endpoint shares, checked the same way
/// under each endpoint's `section`.
fn check_shared_fields(
    section: &str,
    status_type: &str,
    rank_scale: &str,
    tag: Option<&str>,
    check: &mut impl FnMut(bool, String),
) {
    check(
        ["all", "live", "lost"].contains(&status_type),
        format!(
            "{section}.backlinks_status_type = {status_type:?}: use \"all\", \"live\" or \"lost\""
        ),
    );
    check(
        ["one_hundred", "one_thousand"].contains(&rank_scale),
        format!("{section}.rank_scale = {rank_scale:?}: use \"one_hundred\" or \"one_thousand\""),
    );
    if let Some(tag) = tag {
        let length = tag.chars().count();
        check(
            length <= 255,
            format!("{section}.tag is {length} characters long; the API allows 255"),
        );
    }
}

/// Checks `[endpoints.backlinks]` and builds its request template.
fn validate_backlinks(b: &RawBacklinks, check: &mut impl FnMut(bool, String)) -> BacklinksSpec {
    let mode = b.mode.parse::<BacklinksMode>();
    if let Err(problem) = &mode {
        check(false, format!("endpoints.backlinks.mode: {problem}"));
    }
    check(
        (1..=1000).contains(&b.limit),
        format!(
            "endpoints.backlinks.limit = {} is out of range 1..=1000 (items per request)",
            b.limit
        ),
    );
    check_shared_fields(
        "endpoints.backlinks",
        &b.backlinks_status_type,
        &b.rank_scale,
        b.tag.as_deref(),
        check,
    );
    if let Some(filters) = &b.filters {
        if let Err(problem) = check_filters(filters) {
            check(false, format!("endpoints.backlinks.filters: {problem}"));
        }
    }
    if let Some(rules) = &b.order_by {
        if let Err(problem) = check_order_by(rules) {
            check(false, format!("endpoints.backlinks.order_by: {problem}"));
        }
    }
    BacklinksSpec {
        template: BacklinksRequest {
            mode: mode.ok(),
            filters: b.filters.clone(),
            order_by: b.order_by.clone(),
            backlinks_status_type: Some(b.backlinks_status_type.clone()),
            include_subdomains: Some(b.include_subdomains),
            include_indirect_links: b.include_indirect_links,
            exclude_internal_backlinks: Some(b.exclude_internal_backlinks),
            rank_scale: Some(b.rank_scale.clone()),
            tag: b.tag.clone(),
            ..BacklinksRequest::default()
        },
        page_size: b.limit,
        max_items: (b.max_items > 0).then_some(b.max_items),
    }
}

/// Sort rules are `"field,asc"` or `"field,desc"`; the API takes at most 3.
fn check_order_by(rules: &[String]) -> Result<(), String> {
    if rules.len() > 3 {
        return Err(format!("{} rules; the API allows at most 3", rules.len()));
    }
    for rule in rules {
        let ok = rule.split_once(',').is_some_and(|(field, direction)| {
            !field.trim().is_empty() && matches!(direction.trim(), "asc" | "desc")
        });
        if !ok {
            return Err(format!(
                "{rule:?}: write a rule as \"field,asc\" or \"field,desc\""
            ));
        }
    }
    Ok(())
}

/// The base URL must be http(s) without credentials, path, query.
pub fn check_base_url(value: &str) -> Result<(), String> {
    let url = url::Url::parse(value).map_err(|e| format!("{value:?} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{value:?}: use an http(s) URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials do not belong in the URL; set DATAFORSEO_LOGIN and DATAFORSEO_PASSWORD"
                .into(),
        );
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(format!("{value:?}: give only scheme, host and port"));
    }
    Ok(())
}

/// A filter expression in the API's grammar (`backlinks_model::filter`),
/// at most its number of conditions.
fn check_filters(filters: &Value) -> Result<(), String> {
    backlinks_model::filter::check(filters)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> RawPipeline {
        toml::from_str(toml_text).expect("valid toml")
    }

    fn problems(toml_text: &str) -> Vec<String> {
        parse(toml_text)
            .validate(Path::new("."))
            .err()
            .unwrap_or_default()
    }

    const MINIMAL: &str =
        "name = \"p\"\n[targets]\nlist = [\"example.com\"]\n[endpoints.summary]\n";

    #[test]
    fn minimal_pipeline_takes_the_defaults() {
        let spec = parse(MINIMAL).validate(Path::new(".")).unwrap();
        assert_eq!(spec.requests_per_minute, 2000);
        assert_eq!(spec.max_in_flight, 30);
        assert_eq!(spec.timeout, Duration::from_secs(180));
        assert_eq!(spec.base_url, "https://api.dataforseo.com");
        let summary = spec.summary.unwrap();
        assert_eq!(summary.internal_list_limit, Some(10));
        assert_eq!(summary.backlinks_status_type.as_deref(), Some("live"));
        assert_eq!(spec.parquet_dir, Some(PathBuf::from("data")));
        assert!(spec.postgres.is_none());
        assert_eq!(spec.state_dir, PathBuf::from("state"));
        assert_eq!(spec.max_cost_usd, None);
        assert_eq!(spec.shutdown_grace, Duration::from_secs(30));
        assert_eq!(spec.pricing.summary.estimate(1), 0.02003);
        assert!((spec.pricing.backlinks.estimate(1000) - 0.05).abs() < 1e-12);
    }

    #[test]
    fn budget_and_pricing_are_checked() {
        let spec = parse(&format!(
            "{MINIMAL}[budget]\nmax_cost_usd = 1.5\n[pricing.summary]\nper_request = 0.01\nper_item = 0\n[state]\ndir = \"/var/lib/backlinks\"\n"
        ))
        .validate(Path::new("."))
        .unwrap();
        assert_eq!(spec.max_cost_usd, Some(1.5));
        assert_eq!(spec.pricing.summary.per_request, 0.01);
        assert_eq!(spec.pricing.backlinks.per_item, 0.00003);
        assert_eq!(spec.state_dir, PathBuf::from("/var/lib/backlinks"));
        let found = problems(&format!(
            "{MINIMAL}[budget]\nmax_cost_usd = -1\n[pricing.backlinks]\nper_request = -0.02\nper_item = 0\n"
        ));
        let all = found.join("\n");
        assert!(all.contains("budget.max_cost_usd = -1"), "{all}");
        assert!(
            all.contains("pricing.backlinks.per_request = -0.02"),
            "{all}"
        );
        assert_eq!(found.len(), 2, "{all}");
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let found = problems(&format!(
            "{MINIMAL}internal_list_limit = 5000\ntag = \"{}\"\nrank_scale = \"ten\"\n[api]\nmax_in_flight = 31\n",
            "x".repeat(256)
        ));
        let all = found.join("\n");
        assert!(
            all.contains("endpoints.summary.internal_list_limit = 5000"),
            "{all}"
        );
        assert!(
            all.contains("endpoints.summary.tag is 256 characters"),
            "{all}"
        );
        assert!(all.contains("endpoints.summary.rank_scale"), "{all}");
        assert!(all.contains("api.max_in_flight = 31"), "{all}");
        assert_eq!(found.len(), 4, "{all}");
    }

    #[test]
    fn open_partitions_default_to_eight_and_are_bounded() {
        let spec = parse(MINIMAL).validate(Path::new(".")).unwrap();
        assert_eq!(
            spec.parquet_open_partitions,
            Some(DEFAULT_MAX_OPEN_PARTITIONS)
        );
        let found = problems(&format!(
            "{MINIMAL}[sinks.parquet]\nmax_open_partitions = 0\n"
        ));
        assert_eq!(
            found,
            vec!["sinks.parquet.max_open_partitions = 0 is out of range 1..=64".to_owned()]
        );
        let off = parse(&format!(
            "{MINIMAL}[sinks.parquet]\nenabled = false\n[sinks.postgres]\nenabled = true\n"
        ))
        .validate(Path::new("."))
        .unwrap();
        assert_eq!(off.parquet_open_partitions, None);
    }

    #[test]
    fn filters_are_checked() {
        let ok = format!(
            "{MINIMAL}backlinks_filters = [[\"dofollow\", \"=\", true], \"and\", [\"rank\", \">\", 10]]\n"
        );
        assert!(problems(&ok).is_empty());
        let nine = (0..9)
            .map(|_| "[\"rank\", \">\", 1]")
            .collect::<Vec<_>>()
            .join(", \"and\", ");
        let found = problems(&format!("{MINIMAL}backlinks_filters = [{nine}]\n"));
        assert!(found[0].contains("9 conditions"), "{found:?}");
        let found = problems(&format!(
            "{MINIMAL}backlinks_filters = [[\"rank\", \">\", 1], \"xor\", [\"rank\", \"<\", 9]]\n"
        ));
        assert!(found[0].contains("\"xor\""), "{found:?}");
        // The pipeline takes what the API takes: `in` with a list, and
        // nested groups, in both endpoints' filters.
        let listed = "[[\"domain_from_country\", \"in\", [\"US\", \"DE\"]], \"and\", [[\"rank\", \">\", 10], \"or\", [\"dofollow\", \"=\", true]]]";
        assert_eq!(
            problems(&format!("{MINIMAL}backlinks_filters = {listed}\n")),
            Vec::<String>::new()
        );
        let backlinks = format!(
            "name = \"p\"\n[targets]\nlist = [\"example.com\"]\n[endpoints.backlinks]\nfilters = {listed}\n"
        );
        assert_eq!(problems(&backlinks), Vec::<String>::new());
        let found = problems(&format!(
            "{MINIMAL}backlinks_filters = [\"domain_from_country\", \"in\", \"US\"]\n"
        ));
        assert!(found[0].contains("\"in\""), "{found:?}");
    }

    #[test]
    fn base_url_must_not_carry_credentials() {
        let found = problems(&format!(
            "{MINIMAL}[api]\nbase_url = \"https://me:pw@api.dataforseo.com\"\n"
        ));
        assert!(found[0].contains("credentials do not belong"), "{found:?}");
        assert!(!found[0].contains("pw@"), "{found:?}");
    }

    #[test]
    fn postgres_timeouts_default_and_are_bounded() {
        let spec = parse(&format!("{MINIMAL}[sinks.postgres]\nenabled = true\n"))
            .validate(Path::new("."))
            .unwrap();
        let timeouts = spec.postgres.unwrap().timeouts();
        assert_eq!(timeouts.connect, Duration::from_secs(30));
        assert_eq!(timeouts.statement, Duration::from_secs(600));
        let found = problems(&format!(
            "{MINIMAL}[sinks.postgres]\nconnect_timeout_secs = 0\nstatement_timeout_secs = 100000\n"
        ));
        assert_eq!(
            found,
            vec![
                "sinks.postgres.connect_timeout_secs = 0 is out of range 1..=3600".to_owned(),
                "sinks.postgres.statement_timeout_secs = 100000 is out of range 1..=86400"
                    .to_owned()
            ]
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err =
            toml::from_str::<RawPipeline>(&format!("{MINIMAL}[api]\nrequests_per_hour = 5\n"))
                .unwrap_err();
        assert!(err.to_string().contains("requests_per_hour"), "{err}");
    }
}
