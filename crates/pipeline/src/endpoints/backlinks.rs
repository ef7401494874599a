//! `backlinks/live`: every backlink of a target, paged (by offset, then by
//! `search_after_token`), into one partition of `backlinks` and
//! `backlink_redirects`.

use backlinks_model::api::{BACKLINKS_MAX_OFFSET, BacklinksRequest};
use backlinks_model::{Dataset, Endpoint, Target};
use backlinks_normalizer::backlinks_page_rows;
use serde_json::value::RawValue;

use super::{Answer, EndpointModule, PageRequest, PageRows, Paging};
use crate::config::{BacklinksSpec, RawPrice};
use crate::error::BoxError;

/// The request fields of backlinks/live in the current official client:
/// `BacklinksBacklinksLiveRequestInfo` of `dataforseo-client` 2.1.10 (PyPI).
/// A request carries no other field unless the user set it explicitly
/// (`validate` warns then); a test holds the requests to this list.
pub const OFFICIAL_REQUEST_FIELDS: &[&str] = &[
    "target",
    "mode",
    "custom_mode",
    "filters",
    "order_by",
    "offset",
    "search_after_token",
    "limit",
    "backlinks_status_type",
    "include_subdomains",
    "exclude_internal_backlinks",
    "rank_scale",
    "tag",
];

/// The backlinks endpoint with the pipeline's request and paging settings.
pub struct Backlinks {
    spec: BacklinksSpec,
    price: RawPrice,
}

impl Backlinks {
    pub fn new(spec: BacklinksSpec, price: RawPrice) -> Self {
        Self { spec, price }
    }
}

impl EndpointModule for Backlinks {
    fn endpoint(&self) -> Endpoint {
        Endpoint::Backlinks
    }

    fn paging(&self) -> Paging {
        Paging::Pages {
            page_size: self.spec.page_size,
            max_items: self.spec.max_items,
            max_offset: BACKLINKS_MAX_OFFSET,
        }
    }

    fn request(&self, target: &Target, page: &PageRequest) -> Result<Box<RawValue>, BoxError> {
        let request = BacklinksRequest {
            target: target.to_string(),
            offset: Some(u32::try_from(page.offset)?),
            limit: Some(u32::try_from(page.limit)?),
            search_after_token: page.search_after_token.clone(),
            ..self.spec.template.clone()
        };
        Ok(serde_json::value::to_raw_value(&request)?)
    }

    fn estimate(&self, items: u64) -> f64 {
        self.price.estimate(items)
    }

    fn rows(&self, answer: &Answer<'_>) -> Result<PageRows, BoxError> {
        let rows = backlinks_page_rows(&answer.context, answer.first_position, answer.body)?;
        Ok(PageRows {
            items: rows.items_count as u64,
            total_count: rows.total_count.map(|n| u64::try_from(n).unwrap_or(0)),
            search_after_token: rows.search_after_token,
            unknown: rows.unknown_fields,
            batches: vec![
                (Dataset::Backlinks, rows.backlinks),
                (Dataset::BacklinkRedirects, rows.redirects),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_request_sets_target_offset_limit_and_token_over_the_template() {
        let module = Backlinks::new(
            BacklinksSpec {
                template: BacklinksRequest {
                    tag: Some("t".into()),
                    ..BacklinksRequest::default()
                },
                page_size: 500,
                max_items: None,
            },
            RawPrice {
                per_request: 0.02,
                per_item: 0.00003,
            },
        );
        let page = PageRequest {
            offset: 0,
            limit: 500,
            search_after_token: Some("abc".into()),
        };
        let json = module
            .request(&Target::from_normalized("example.com"), &page)
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(json.get()).unwrap();
        assert_eq!(value["target"], "example.com");
        assert_eq!(value["offset"], 0);
        assert_eq!(value["limit"], 500);
        assert_eq!(value["search_after_token"], "abc");
        assert_eq!(value["tag"], "t");
        assert!((module.estimate(1000) - 0.05).abs() < 1e-12);
    }
}
