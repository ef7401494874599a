//! Endpoints as plug-ins. An endpoint module says what is particular to
//! one API endpoint: how a request is built from a target and the
//! endpoint's settings, how its answers page, what a request is estimated
//! to cost, and how an answer becomes rows of its datasets. The engine
//! does everything else the same way for all of them: pacing, retries,
//! the archive, resume, the spend cap, landing in both sinks, the ledger.
//!
//! Adding an endpoint means: a variant of [`Endpoint`] with its path and
//! datasets (and their schemas) in `backlinks-model`, its normalizer, a
//! module here implementing [`EndpointModule`], a line in [`modules`], its
//! migration, and its handler in the sandbox.

pub mod backlinks;
pub mod summary;

use std::sync::Arc;

use arrow::array::RecordBatch;
use backlinks_model::{Dataset, Endpoint, PartitionKey, Target};
use backlinks_normalizer::{RowContext, UnknownFields};
use serde_json::value::RawValue;

use crate::config::PipelineSpec;
use crate::error::BoxError;

/// What one endpoint provides to the engine.
pub trait EndpointModule: Send + Sync + 'static {
    /// The endpoint: its name, API path and the datasets a unit replaces.
    fn endpoint(&self) -> Endpoint;

    /// How the answers of one target page.
    fn paging(&self) -> Paging;

    /// The task (JSON object) of the request for `page` of `target`.
    fn request(&self, target: &Target, page: &PageRequest) -> Result<Box<RawValue>, BoxError>;

    /// The estimated cost in USD of one request that may return `items`
    /// items (the spend cap reserves it before each attempt).
    fn estimate(&self, items: u64) -> f64;

    /// The rows of one answer. Runs on the CPU pool.
    fn rows(&self, answer: &Answer<'_>) -> Result<PageRows, BoxError>;
}

/// How an endpoint's answers for one target page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// One request per target.
    Single,
    /// Pages of `page_size` items addressed by `offset` up to
    /// `max_offset`, past it by the previous page's `search_after_token`,
    /// until the answer's `total_count` or `max_items` is reached.
    Pages {
        page_size: u32,
        max_items: Option<u64>,
        max_offset: u64,
    },
}

/// Which page a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// The first item's offset (0 for one-shot endpoints and token pages).
    pub offset: u64,
    /// Items to ask for.
    pub limit: u64,
    /// The previous page's token, past the offset range.
    pub search_after_token: Option<String>,
}

impl PageRequest {
    /// The request of a one-shot endpoint.
    pub const SINGLE: PageRequest = PageRequest {
        offset: 0,
        limit: 1,
        search_after_token: None,
    };
}

/// One answer, with what every row is stamped with.
#[derive(Debug, Clone)]
pub struct Answer<'a> {
    pub context: RowContext<'a>,
    /// Position of the page's first item in the target's list.
    pub first_position: i64,
    /// The whole response body.
    pub body: &'a [u8],
}

/// The rows of one answer and what paging needs to go on.
#[derive(Debug, Default)]
pub struct PageRows {
    /// A batch per dataset of the endpoint.
    pub batches: Vec<(Dataset, RecordBatch)>,
    /// Fields the schema does not know (kept in `extra`), with counts.
    pub unknown: UnknownFields,
    /// Items on this page (paged endpoints).
    pub items: u64,
    /// The answer's `total_count` (paged endpoints).
    pub total_count: Option<u64>,
    /// The answer's `search_after_token` (paged endpoints).
    pub search_after_token: Option<String>,
}

/// The modules of the endpoints a pipeline enables, in the order their
/// units run.
pub fn modules(spec: &PipelineSpec) -> Vec<Arc<dyn EndpointModule>> {
    let mut modules: Vec<Arc<dyn EndpointModule>> = Vec::new();
    if let Some(template) = &spec.summary {
        modules.push(Arc::new(summary::Summary::new(
            template.clone(),
            spec.pricing.summary,
        )));
    }
    if let Some(settings) = &spec.backlinks {
        modules.push(Arc::new(backlinks::Backlinks::new(
            settings.clone(),
            spec.pricing.backlinks,
        )));
    }
    modules
}

/// What the rows of `fetched`, an answer for partition `key`, are stamped
/// with.
pub(crate) fn row_context<'a>(
    key: &'a PartitionKey,
    fetched: &'a backlinks_fetcher::Fetched,
) -> RowContext<'a> {
    RowContext {
        key,
        fetched_at: fetched.fetched_at,
        task_id: fetched.task_id.as_deref(),
        cost: fetched.cost,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn spec(endpoints: &str) -> PipelineSpec {
        let text = format!("name = \"p\"\n[targets]\nlist = [\"example.com\"]\n{endpoints}");
        toml::from_str::<crate::config::RawPipeline>(&text)
            .expect("valid toml")
            .validate(Path::new("."))
            .expect("valid pipeline")
    }

    /// The fields of the requests `module` builds for its first page and a
    /// page after a token.
    fn fields(module: &dyn EndpointModule) -> Vec<String> {
        let target = Target::from_normalized("example.com");
        let pages = [
            PageRequest {
                offset: 0,
                limit: 1000,
                search_after_token: None,
            },
            PageRequest {
                offset: 0,
                limit: 1000,
                search_after_token: Some("t".into()),
            },
        ];
        let mut names = Vec::new();
        for page in &pages {
            let json = module.request(&target, page).expect("a request");
            let value: serde_json::Value = serde_json::from_str(json.get()).expect("JSON");
            for name in value.as_object().expect("an object").keys() {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    }

    /// Every setting of both endpoints set (but the one the official
    /// backlinks/live model lacks).
    const EVERYTHING: &str = r#"[endpoints.summary]
include_subdomains = false
include_indirect_links = false
exclude_internal_backlinks = false
internal_list_limit = 50
backlinks_status_type = "all"
backlinks_filters = ["dofollow", "=", true]
rank_scale = "one_hundred"
tag = "s"
[endpoints.backlinks]
mode = "one_per_domain"
filters = ["dofollow", "=", true]
order_by = ["rank,desc"]
backlinks_status_type = "all"
include_subdomains = false
exclude_internal_backlinks = false
rank_scale = "one_hundred"
limit = 500
max_items = 2000
tag = "b"
"#;

    #[test]
    fn requests_carry_only_fields_of_the_official_models() {
        let spec = spec(EVERYTHING);
        assert!(spec.warnings.is_empty(), "{:?}", spec.warnings);
        for module in modules(&spec) {
            let official = match module.endpoint() {
                Endpoint::Summary => summary::OFFICIAL_REQUEST_FIELDS,
                Endpoint::Backlinks => backlinks::OFFICIAL_REQUEST_FIELDS,
            };
            let sent = fields(module.as_ref());
            for name in &sent {
                assert!(
                    official.contains(&name.as_str()),
                    "{} sends `{name}`, which its official model lacks",
                    module.endpoint()
                );
            }
            // Every setting of the pipeline file reaches the request.
            assert!(sent.len() >= 9, "{}: {sent:?}", module.endpoint());
        }
    }

    #[test]
    fn a_field_the_official_model_lacks_is_sent_only_when_set_with_a_warning() {
        let default = spec("[endpoints.backlinks]\n");
        assert!(default.warnings.is_empty());
        let sent = fields(modules(&default)[0].as_ref());
        assert!(
            !sent.contains(&"include_indirect_links".to_owned()),
            "{sent:?}"
        );

        let set = spec("[endpoints.backlinks]\ninclude_indirect_links = false\n");
        assert_eq!(set.warnings.len(), 1);
        assert!(
            set.warnings[0].contains("include_indirect_links"),
            "{:?}",
            set.warnings
        );
        let sent = fields(modules(&set)[0].as_ref());
        assert!(
            sent.contains(&"include_indirect_links".to_owned()),
            "{sent:?}"
        );
    }
}
