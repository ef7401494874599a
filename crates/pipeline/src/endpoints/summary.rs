//! `summary/live`: one overview per target, one request, one partition of
//! `summary` and `summary_breakdown`.

use backlinks_model::api::SummaryRequest;
use backlinks_model::{Dataset, Endpoint, Target};
use backlinks_normalizer::summary_rows;
use serde_json::value::RawValue;

use super::{Answer, EndpointModule, PageRequest, PageRows, Paging};
use crate::config::RawPrice;
use crate::error::BoxError;

/// The request fields of summary/live in the current official client:
/// `BacklinksSummaryLiveRequestInfo` of `dataforseo-client` 2.1.10 (PyPI).
pub const OFFICIAL_REQUEST_FIELDS: &[&str] = &[
    "target",
    "include_subdomains",
    "include_indirect_links",
    "exclude_internal_backlinks",
    "internal_list_limit",
    "backlinks_status_type",
    "backlinks_filters",
    "rank_scale",
    "tag",
];

/// The summary endpoint with the pipeline's request settings.
pub struct Summary {
    template: SummaryRequest,
    price: RawPrice,
}

impl Summary {
    /// `template` holds the request fields (its `target` is set per unit).
    pub fn new(template: SummaryRequest, price: RawPrice) -> Self {
        Self { template, price }
    }
}

impl EndpointModule for Summary {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Summary
    }

    fn paging(&self) -> Paging {
        Paging::Single
    }

    fn request(&self, target: &Target, _page: &PageRequest) -> Result<Box<RawValue>, BoxError> {
        let request = SummaryRequest {
            target: target.to_string(),
            ..self.template.clone()
        };
        Ok(serde_json::value::to_raw_value(&request)?)
    }

    fn estimate(&self, items: u64) -> f64 {
        self.price.estimate(items)
    }

    fn rows(&self, answer: &Answer<'_>) -> Result<PageRows, BoxError> {
        let rows = summary_rows(&answer.context, answer.body)?;
        Ok(PageRows {
            batches: vec![
                (Dataset::Summary, rows.summary),
                (Dataset::SummaryBreakdown, rows.breakdown),
            ],
            unknown: rows.unknown_fields,
            ..PageRows::default()
        })
    }
}
