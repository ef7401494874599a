//! DataForSEO request and response types (`docs/api-behaviour.md`).
//!
//! Every response field is optional: the API sends `null` or omits fields
//! without notice, and adds new ones. Unknown fields of a result are kept in
//! its `extra` map rather than dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The envelope around every response. `R` is the type of one task's
/// `result` (an array for live endpoints); use [`serde::de::IgnoredAny`] to
/// read only the statuses and costs. Missing fields decode as `None`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<R> {
    pub version: Option<String>,
    pub status_code: Option<i64>,
    pub status_message: Option<String>,
    pub time: Option<String>,
    pub cost: Option<f64>,
    pub tasks_count: Option<i64>,
    pub tasks_error: Option<i64>,
    pub tasks: Option<Vec<Task<R>>>,
}

/// One task of an envelope. `data` echoes the request (and its `tag`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task<R> {
    pub id: Option<String>,
    pub status_code: Option<i64>,
    pub status_message: Option<String>,
    pub time: Option<String>,
    pub cost: Option<f64>,
    pub result_count: Option<i64>,
    pub path: Option<Vec<String>>,
    pub data: Option<Value>,
    pub result: Option<R>,
}

/// Decodes a response body, naming the JSON path of the first bad value.
pub fn decode_envelope<R: DeserializeOwned>(
    endpoint: &'static str,
    body: &[u8],
) -> Result<Envelope<R>> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| Error::Decode {
        endpoint,
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// One task of `POST /v3/backlinks/summary/live`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SummaryRequest {
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_subdomains: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_indirect_links: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_internal_backlinks: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_list_limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlinks_status_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlinks_filters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank_scale: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A map of link counts such as `referring_links_tld`. Keys may be empty.
pub type LinkCounts = BTreeMap<String, Option<i64>>;

/// One result item of summary/live.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SummaryResult {
    pub target: Option<String>,
    pub first_seen: Option<String>,
    pub lost_date: Option<String>,
    pub rank: Option<i64>,
    pub backlinks: Option<i64>,
    pub backlinks_spam_score: Option<i64>,
    pub crawled_pages: Option<i64>,
    pub info: Option<SummaryInfo>,
    pub internal_links_count: Option<i64>,
    pub external_links_count: Option<i64>,
    pub broken_backlinks: Option<i64>,
    pub broken_pages: Option<i64>,
    pub referring_domains: Option<i64>,
    pub referring_domains_nofollow: Option<i64>,
    pub referring_main_domains: Option<i64>,
    pub referring_main_domains_nofollow: Option<i64>,
    pub referring_ips: Option<i64>,
    pub referring_subnets: Option<i64>,
    pub referring_pages: Option<i64>,
    pub referring_pages_nofollow: Option<i64>,
    pub referring_links_tld: Option<LinkCounts>,
    pub referring_links_types: Option<LinkCounts>,
    pub referring_links_attributes: Option<LinkCounts>,
    pub referring_links_platform_types: Option<LinkCounts>,
    pub referring_links_semantic_locations: Option<LinkCounts>,
    pub referring_links_countries: Option<LinkCounts>,
    /// Fields this version does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `info` object of a summary result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SummaryInfo {
    pub server: Option<String>,
    pub cms: Option<String>,
    pub platform_type: Option<Vec<Option<String>>>,
    pub ip_address: Option<String>,
    pub country: Option<String>,
    pub is_ip: Option<bool>,
    pub target_spam_score: Option<i64>,
    /// Fields this version does not know, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SummaryResult {
    /// The six link-count maps with their `dimension` names in the
    /// `summary_breakdown` table.
    pub fn breakdowns(&self) -> [(&'static str, Option<&LinkCounts>); 6] {
        [
            ("tld", self.referring_links_tld.as_ref()),
            ("type", self.referring_links_types.as_ref()),
            ("attribute", self.referring_links_attributes.as_ref()),
            (
                "platform_type",
                self.referring_links_platform_types.as_ref(),
            ),
            (
                "semantic_location",
                self.referring_links_semantic_locations.as_ref(),
            ),
            ("country", self.referring_links_countries.as_ref()),
        ]
    }
}

/// How backlinks/live groups backlinks: every link, or one per referring
/// domain or per anchor text. Serialised as the API spells it (`as_is`,
/// `one_per_domain`, `one_per_anchor`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BacklinksMode {
    /// Every backlink (the API's default).
    #[default]
    AsIs,
    /// The first backlink of each referring domain.
    OnePerDomain,
    /// The first backlink of each anchor text.
    OnePerAnchor,
}

impl BacklinksMode {
    /// Every mode, in the API's order.
    pub const ALL: [BacklinksMode; 3] = [
        BacklinksMode::AsIs,
        BacklinksMode::OnePerDomain,
        BacklinksMode::OnePerAnchor,
    ];

    /// The mode as the API and the pipeline files spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            BacklinksMode::AsIs => "as_is",
            BacklinksMode::OnePerDomain => "one_per_domain",
            BacklinksMode::OnePerAnchor => "one_per_anchor",
        }
    }
}

impl fmt::Display for BacklinksMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BacklinksMode {
    type Err = String;

    /// Parses `as_is`, `one_per_domain` or `one_per_anchor`; the error names
    /// the accepted values.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        BacklinksMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("unknown backlinks mode {s:?}: use \"as_is\", \"one_per_domain\" or \"one_per_anchor\"")
            })
    }
}

/// The largest `offset` backlinks/live accepts; an item past it is reached
/// only through the previous page's `search_after_token`.
pub const BACKLINKS_MAX_OFFSET: u64 = 20_000;

/// One task of `POST /v3/backlinks/backlinks/live`. Fields left `None` are
/// not sent, so the API applies its defaults (mode `as_is`, limit 100,
/// offset 0).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BacklinksRequest {
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<BacklinksMode>,
    /// At most 8 conditions, e.g. `[["dofollow", "=", true]]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<Value>,
    /// At most 3 rules, e.g. `["rank,desc"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_by: Option<Vec<String>>,
    /// At most 20,000; page further with `search_after_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    /// Items per page, 1 to 1000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The token of the previous page: this page starts right after it
    /// (plus `offset`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_after_token: Option<String>,
    /// `all`, `live` or `lost`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlinks_status_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_subdomains: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_indirect_links: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_internal_backlinks: Option<bool>,
    /// `one_hundred` or `one_thousand`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank_scale: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_list_limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// What paging needs from one backlinks/live result, without its items:
/// decoding skips the `items` array instead of building it. The normalizer
/// decodes the items themselves straight into Arrow columns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BacklinksPage {
    /// Items the target has in total (for the request's mode and filters).
    pub total_count: Option<i64>,
    /// Items on this page.
    pub items_count: Option<i64>,
    /// Pass this in the next request to continue right after this page.
    pub search_after_token: Option<String>,
}

impl BacklinksPage {
    /// The page info of a backlinks/live response body: the first task's
    /// first result, or all `None` when the task has no result (`null`,
    /// e.g. status 40102).
    pub fn from_body(body: &[u8]) -> Result<BacklinksPage> {
        let envelope = decode_envelope::<Vec<BacklinksPage>>("backlinks", body)?;
        Ok(envelope
            .tasks
            .into_iter()
            .flatten()
            .next()
            .and_then(|task| task.result)
            .and_then(|results| results.into_iter().next())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{
      "version": "0.1.20240801", "status_code": 20000, "status_message": "Ok.",
      "time": "0.2 sec.", "cost": 0.02003, "tasks_count": 1, "tasks_error": 0,
      "tasks": [{
        "id": "11111111-2222-3333-4444-555555555555", "status_code": 20000,
        "status_message": "Ok.", "time": "0.1 sec.", "cost": 0.02003,
        "result_count": 1, "path": ["v3","backlinks","summary","live"],
        "data": {"api": "backlinks", "function": "summary", "target": "example.com"},
        "result": [{
          "target": "example.com", "first_seen": "2019-01-01 00:00:00 +00:00",
          "lost_date": null, "rank": 512, "backlinks": 3000000000,
          "info": {"server": "nginx", "platform_type": ["cms", null], "is_ip": false, "new_info": 1},
          "referring_links_semantic_locations": {"": 5, "article": 7},
          "brand_new_field": {"x": [1, 2]}
        }]
      }]
    }"#;

    #[test]
    fn decodes_a_summary_response_keeping_unknown_fields() {
        let env: Envelope<Vec<SummaryResult>> =
            decode_envelope("summary", BODY.as_bytes()).unwrap();
        assert_eq!(env.status_code, Some(20000));
        let task = &env.tasks.as_ref().unwrap()[0];
        assert_eq!(task.cost, Some(0.02003));
        let r = &task.result.as_ref().unwrap()[0];
        assert_eq!(r.backlinks, Some(3_000_000_000));
        assert_eq!(r.lost_date, None);
        let info = r.info.as_ref().unwrap();
        assert_eq!(info.platform_type, Some(vec![Some("cms".into()), None]));
        assert_eq!(info.extra.get("new_info"), Some(&Value::from(1)));
        assert!(r.extra.contains_key("brand_new_field"));
        let sem = r.referring_links_semantic_locations.as_ref().unwrap();
        assert_eq!(sem.get(""), Some(&Some(5)));
    }

    #[test]
    fn decode_errors_name_the_json_path() {
        let bad = r#"{"tasks":[{"result":[{"rank":"high"}]}]}"#;
        let err = decode_envelope::<Vec<SummaryResult>>("summary", bad.as_bytes()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("tasks[0].result[0].rank"), "{msg}");
    }

    #[test]
    fn statuses_decode_without_the_result() {
        let env: Envelope<serde::de::IgnoredAny> =
            decode_envelope("summary", BODY.as_bytes()).unwrap();
        assert_eq!(env.tasks.unwrap()[0].status_code, Some(20000));
    }

    #[test]
    fn null_result_and_missing_fields_are_fine() {
        let body = r#"{"status_code":20000,"tasks":[{"status_code":40102,"result":null}]}"#;
        let env: Envelope<Vec<SummaryResult>> =
            decode_envelope("summary", body.as_bytes()).unwrap();
        assert!(env.tasks.unwrap()[0].result.is_none());
    }

    #[test]
    fn backlinks_request_sends_only_what_is_set() {
        let request = BacklinksRequest {
            target: "example.com".into(),
            mode: Some(BacklinksMode::OnePerDomain),
            limit: Some(1000),
            search_after_token: Some("tok".into()),
            order_by: Some(vec!["rank,desc".into()]),
            ..BacklinksRequest::default()
        };
        let json = serde_json::to_value([&request]).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "target": "example.com", "mode": "one_per_domain", "limit": 1000,
                "search_after_token": "tok", "order_by": ["rank,desc"]
            }])
        );
        let back: BacklinksRequest = serde_json::from_value(json[0].clone()).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn backlinks_modes_parse_and_print_as_the_api_spells_them() {
        for mode in BacklinksMode::ALL {
            assert_eq!(mode.as_str().parse::<BacklinksMode>(), Ok(mode));
            assert_eq!(
                serde_json::to_value(mode).unwrap(),
                Value::from(mode.as_str())
            );
        }
        assert_eq!(BacklinksMode::default().to_string(), "as_is");
        let err = "per_domain".parse::<BacklinksMode>().unwrap_err();
        assert!(err.contains("one_per_domain"), "{err}");
    }

    #[test]
    fn backlinks_page_info_skips_the_items() {
        let body = r#"{"status_code":20000,"tasks":[{"id":"t1","status_code":20000,"result":[{
            "target":"example.com","mode":"as_is","custom_mode":null,
            "total_count":3000000000,"items_count":2,"search_after_token":"abc",
            "items":[{"type":"backlink","rank":"not checked here"},{"anything":[1,{"a":null}]}]
        }]}]}"#;
        let page = BacklinksPage::from_body(body.as_bytes()).unwrap();
        assert_eq!(
            page,
            BacklinksPage {
                total_count: Some(3_000_000_000),
                items_count: Some(2),
                search_after_token: Some("abc".into()),
            }
        );
        let none = r#"{"tasks":[{"status_code":40102,"result":null}]}"#;
        assert_eq!(
            BacklinksPage::from_body(none.as_bytes()).unwrap(),
            BacklinksPage::default()
        );
        let bad = r#"{"tasks":[{"result":[{"total_count":"many"}]}]}"#;
        let err = BacklinksPage::from_body(bad.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("tasks[0].result[0].total_count"),
            "{err}"
        );
    }
}
