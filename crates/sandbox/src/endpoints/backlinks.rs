//! `POST /v3/backlinks/backlinks/live`: the backlinks of a target, a page
//! per request.
//!
//! Every target has a deterministic list of items (see [`backlinks_total`]
//! and [`served_backlink`]); a request returns the slice that starts at
//! `offset` (at most 20,000) or, with a `search_after_token` from an
//! earlier page, right after that page's last item plus `offset`. The
//! token names a position in the list of one target and mode, with a
//! checksum, so a token of another target or mode, or an edited one, is
//! refused (40501).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::{LiveEndpoint, TaskAnswer, check};
use crate::data::backlinks::{self, ItemWriter};
use crate::json::Json;
use crate::rng::{combine, stable_hash};

/// What every backlinks/live task that returns a result (20000 or 40102)
/// costs, in USD, before its items. Refused tasks (4050x) cost nothing.
pub const BACKLINKS_TASK_COST: f64 = 0.02;

/// What each returned item adds to a backlinks/live task's cost, in USD.
pub const BACKLINKS_ITEM_COST: f64 = 0.00003;

/// The cost of a backlinks/live page that returned `items` items:
/// `BACKLINKS_TASK_COST + BACKLINKS_ITEM_COST × items`, computed exactly as
/// the sandbox charges it.
pub fn backlinks_page_cost(items: u64) -> f64 {
    BACKLINKS_TASK_COST + BACKLINKS_ITEM_COST * items as f64
}

/// Largest `offset` the API accepts; deeper pages need a token.
const MAX_OFFSET: u64 = 20_000;
/// Largest `limit`; the default is 100.
const MAX_LIMIT: u64 = 1000;
const DEFAULT_LIMIT: u64 = 100;
const MAX_ORDER_BY: usize = 3;
const MODES: [&str; 3] = ["as_is", "one_per_domain", "one_per_anchor"];
/// Keys the token checksum apart from the other hashes.
const TOKEN_KEY: u64 = 0x746F_6B65_6E5F_7631;

/// How many items the sandbox lists for `target` in `mode` (`as_is`,
/// `one_per_domain` or `one_per_anchor`) under `seed`:
///
/// - a target with a label `items<N>` (`items25000.example.com`,
///   `failat2500.items5000.example.com`) has exactly `N` in `as_is` mode;
/// - any other target has a number in `0..=3000` derived from
///   `(seed, target)`;
/// - `one_per_domain` lists a third of those (rounded up), `one_per_anchor`
///   half;
/// - targets answered without items (`noresults.…`, `nullresult.…`,
///   `badrequest.…`, empty) have 0.
pub fn backlinks_total(seed: u64, target: &str, mode: &str) -> u64 {
    if without_items(target) {
        0
    } else {
        backlinks::total(seed, target, mode)
    }
}

/// The item the sandbox serves at 0-based `position` of the list of
/// `target` in `mode` under `seed`, exactly (the tests compare stored rows
/// with it). It depends on these four values only, costs O(1) to compute,
/// and exists for every `position` below [`backlinks_total`].
pub fn served_backlink(seed: u64, target: &str, mode: &str, position: u64) -> Value {
    let mut o = Json::with_capacity(2048);
    ItemWriter::new(seed, target, mode).write(&mut o, position);
    // The writer's output is valid JSON (a test holds it to that).
    serde_json::from_str(&o.into_string()).unwrap_or(Value::Null)
}

/// Targets that never list items.
fn without_items(target: &str) -> bool {
    refused(target) || target.starts_with("noresults.") || target.starts_with("nullresult.")
}

/// Targets refused with 40501 whatever the page.
fn refused(target: &str) -> bool {
    target.trim().is_empty() || target.starts_with("badrequest.")
}

/// The `search_after_token` of a page whose last item is at `position`.
pub(crate) fn search_after_token(target: &str, mode: &str, position: u64) -> String {
    let check = token_check(target, mode, position);
    URL_SAFE_NO_PAD.encode(format!("v1:{position}:{check:016x}"))
}

/// The position a token names, if it is one of ours for this target and
/// mode.
fn token_position(token: &str, target: &str, mode: &str) -> Option<u64> {
    let decoded = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
    let text = std::str::from_utf8(&decoded).ok()?;
    let (position, check) = text.strip_prefix("v1:")?.split_once(':')?;
    if position.is_empty() || !position.bytes().all(|b| b.is_ascii_digit()) || check.len() != 16 {
        return None;
    }
    let position: u64 = position.parse().ok()?;
    let check = u64::from_str_radix(check, 16).ok()?;
    (check == token_check(target, mode, position)).then_some(position)
}

fn token_check(target: &str, mode: &str, position: u64) -> u64 {
    combine(
        combine(
            TOKEN_KEY ^ stable_hash(target.as_bytes()),
            stable_hash(mode.as_bytes()),
        ),
        position,
    )
}

/// The paging of a valid task.
#[derive(Debug, Clone, PartialEq)]
struct Page<'a> {
    target: &'a str,
    mode: &'a str,
    /// Position of the first item.
    start: u64,
    limit: u64,
}

/// Reads and checks a task as the API does: the first invalid field
/// refuses it with 40501 (not charged).
fn page(task: &Map<String, Value>) -> Result<Page<'_>, TaskAnswer> {
    let present = |field: &str| task.get(field).filter(|v| !v.is_null());
    let target = match present("target") {
        Some(Value::String(t)) if !refused(t) => t.as_str(),
        _ => return Err(TaskAnswer::invalid_field("target")),
    };
    check::one_of(task, "mode", &MODES).map_err(TaskAnswer::invalid_field)?;
    let mode = present("mode").and_then(Value::as_str).unwrap_or("as_is");
    check::filters(task, "filters").map_err(TaskAnswer::invalid_field)?;
    order_by(task).map_err(TaskAnswer::invalid_field)?;
    let offset = match present("offset") {
        None => 0,
        Some(v) => match v.as_u64() {
            Some(n) if n <= MAX_OFFSET => n,
            Some(_) => {
                return Err(TaskAnswer {
                    status_message: format!(
                        "Invalid Field: 'offset'. Maximum value is {MAX_OFFSET}; use search_after_token"
                    ),
                    ..TaskAnswer::invalid_field("offset")
                });
            }
            None => return Err(TaskAnswer::invalid_field("offset")),
        },
    };
    check::int_in(task, "limit", 1..=MAX_LIMIT as i64).map_err(TaskAnswer::invalid_field)?;
    let limit = present("limit")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_LIMIT);
    let after = match present("search_after_token") {
        None => None,
        Some(token) => Some(
            token
                .as_str()
                .and_then(|t| token_position(t, target, mode))
                .ok_or_else(|| TaskAnswer::invalid_field("search_after_token"))?,
        ),
    };
    check::one_of(task, "backlinks_status_type", &["all", "live", "lost"])
        .and_then(|()| check::bool(task, "include_subdomains"))
        .and_then(|()| check::bool(task, "include_indirect_links"))
        .and_then(|()| check::bool(task, "exclude_internal_backlinks"))
        .and_then(|()| check::one_of(task, "rank_scale", &["one_hundred", "one_thousand"]))
        .and_then(|()| check::int_in(task, "internal_list_limit", 1..=1000))
        .and_then(|()| check::short_string(task, "tag", 255))
        .map_err(TaskAnswer::invalid_field)?;
    let start = match after {
        Some(last) => last.saturating_add(1).saturating_add(offset),
        None => offset,
    };
    Ok(Page {
        target,
        mode,
        start,
        limit,
    })
}

/// `order_by`: at most three rules such as `"rank,desc"`.
fn order_by(task: &Map<String, Value>) -> Result<(), &'static str> {
    const FIELD: &str = "order_by";
    let Some(rules) = task.get(FIELD).filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let Some(rules) = rules.as_array() else {
        return Err(FIELD);
    };
    let well_formed = |rule: &Value| {
        rule.as_str()
            .and_then(|r| r.split_once(','))
            .is_some_and(|(field, direction)| {
                !field.trim().is_empty()
                    && matches!(
                        direction.trim().to_ascii_lowercase().as_str(),
                        "asc" | "desc"
                    )
            })
    };
    if rules.len() <= MAX_ORDER_BY && rules.iter().all(well_formed) {
        Ok(())
    } else {
        Err(FIELD)
    }
}

/// The one result element of a page: the list's size, the page's items and
/// the token that continues after them.
fn write_result(seed: u64, page: &Page<'_>, total: u64, count: u64) -> String {
    let mut o = Json::with_capacity(512 + 1600 * count as usize);
    o.begin_object();
    o.key("target");
    o.str(page.target);
    o.key("mode");
    o.str(page.mode);
    o.key("custom_mode");
    o.null();
    o.key("total_count");
    o.uint(total);
    o.key("items_count");
    o.uint(count);
    o.key("search_after_token");
    if count == 0 {
        o.null();
    } else {
        let last = page.start + count - 1;
        o.str(&search_after_token(page.target, page.mode, last));
    }
    o.key("items");
    o.begin_array();
    let mut items = ItemWriter::new(seed, page.target, page.mode);
    for position in page.start..page.start + count {
        items.write(&mut o, position);
    }
    o.end_array();
    o.end_object();
    o.into_string()
}

/// The backlinks/live endpoint.
#[derive(Debug)]
pub(crate) struct Backlinks;

impl LiveEndpoint for Backlinks {
    fn path(&self) -> &'static [&'static str] {
        &["v3", "backlinks", "backlinks", "live"]
    }

    fn function(&self) -> &'static str {
        "backlinks"
    }

    fn answer(&self, seed: u64, task: &Map<String, Value>) -> TaskAnswer {
        let page = match page(task) {
            Ok(page) => page,
            Err(refusal) => return refusal,
        };
        if page.target.starts_with("noresults.") {
            return TaskAnswer {
                status_code: 40102,
                status_message: "No Search Results.".into(),
                cost: BACKLINKS_TASK_COST,
                result: None,
            };
        }
        let ok = |count: u64, result| TaskAnswer {
            status_code: 20000,
            status_message: "Ok.".into(),
            cost: backlinks_page_cost(count),
            result,
        };
        if page.target.starts_with("nullresult.") {
            return ok(0, None);
        }
        if backlinks::failat_label(page.target).is_some_and(|k| page.start >= k) {
            // A later page of this target fails for good.
            return TaskAnswer::invalid_field("target");
        }
        let total = backlinks_total(seed, page.target, page.mode);
        let count = total.saturating_sub(page.start).min(page.limit);
        ok(count, Some(vec![write_result(seed, &page, total, count)]))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::json;

    use super::*;

    fn answer(task: Value) -> TaskAnswer {
        Backlinks.answer(42, task.as_object().expect("object"))
    }

    /// The task's status and its one result element.
    fn result(task: Value) -> (TaskAnswer, Value) {
        let a = answer(task);
        let element = a
            .result
            .as_ref()
            .map(|r| {
                assert_eq!(r.len(), 1);
                serde_json::from_str(&r[0]).expect("valid JSON")
            })
            .unwrap_or(Value::Null);
        (a, element)
    }

    fn items(element: &Value) -> Vec<Value> {
        element["items"].as_array().expect("items").clone()
    }

    fn assert_cost(a: &TaskAnswer, items: u64) {
        let expected = BACKLINKS_TASK_COST + BACKLINKS_ITEM_COST * items as f64;
        assert!((a.cost - expected).abs() < 1e-12, "{} for {items}", a.cost);
    }

    #[test]
    fn offset_pages_cover_the_list_exactly_once() {
        let target = "items2500.example.com";
        assert_eq!(backlinks_total(42, target, "as_is"), 2500);
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        for offset in [0, 1000, 2000, 3000] {
            let (a, element) = result(json!({"target": target, "limit": 1000, "offset": offset}));
            assert_eq!(a.status_code, 20000);
            let page = items(&element);
            assert_eq!(element["items_count"], page.len());
            assert_eq!(element["total_count"], 2500);
            assert_eq!(
                (
                    &element["target"],
                    &element["mode"],
                    &element["custom_mode"]
                ),
                (&json!(target), &json!("as_is"), &Value::Null)
            );
            assert_cost(&a, page.len() as u64);
            assert_eq!(element["search_after_token"].is_null(), page.is_empty());
            sizes.push(page.len());
            seen.extend(page);
        }
        assert_eq!(sizes, [1000, 1000, 500, 0]);
        assert_eq!(seen.len(), 2500);
        for (position, item) in seen.iter().enumerate() {
            assert_eq!(item, &served_backlink(42, target, "as_is", position as u64));
        }
        let distinct: HashSet<String> = seen.iter().map(Value::to_string).collect();
        assert_eq!(distinct.len(), 2500, "no duplicates");
    }

    #[test]
    fn the_default_page_is_the_first_hundred() {
        let (a, element) = result(json!({"target": "items250.example.com"}));
        assert_eq!(a.status_code, 20000);
        let page = items(&element);
        assert_eq!(page.len(), 100);
        assert_eq!(
            page[0],
            served_backlink(42, "items250.example.com", "as_is", 0)
        );
        assert_cost(&a, 100);
    }

    #[test]
    fn tokens_continue_right_after_their_page() {
        let target = "items25000.example.com";
        let (_, first) = result(json!({"target": target, "limit": 1000, "offset": 19500}));
        assert_eq!(items(&first).len(), 1000);
        let token = first["search_after_token"]
            .as_str()
            .expect("token")
            .to_owned();
        // Past the offset limit, the token goes on: positions 20500..21500.
        let (a, next) =
            result(json!({"target": target, "limit": 1000, "search_after_token": token}));
        assert_eq!(a.status_code, 20000);
        let page = items(&next);
        assert_eq!(page.len(), 1000);
        assert_eq!(page[0], served_backlink(42, target, "as_is", 20_500));
        assert_eq!(page[999], served_backlink(42, target, "as_is", 21_499));
        // With an offset, it skips that many more.
        let (_, skipped) = result(
            json!({"target": target, "limit": 10, "offset": 7, "search_after_token": token}),
        );
        assert_eq!(
            items(&skipped)[0],
            served_backlink(42, target, "as_is", 20_507)
        );
        // Walking to the end by tokens alone.
        let mut token = next["search_after_token"]
            .as_str()
            .expect("token")
            .to_owned();
        let mut served = 21_500;
        loop {
            let (a, element) =
                result(json!({"target": target, "limit": 1000, "search_after_token": token}));
            let n = items(&element).len();
            assert_cost(&a, n as u64);
            served += n;
            match element["search_after_token"].as_str() {
                Some(t) => token = t.to_owned(),
                None => break,
            }
        }
        assert_eq!(served, 25_000);
    }

    #[test]
    fn foreign_or_edited_tokens_are_refused() {
        let target = "items5000.example.com";
        let token = search_after_token(target, "as_is", 999);
        assert_eq!(token_position(&token, target, "as_is"), Some(999));
        let mut edited: Vec<char> = token.chars().collect();
        let i = edited.len() / 2;
        edited[i] = if edited[i] == 'A' { 'B' } else { 'A' };
        let edited: String = edited.into_iter().collect();
        let other_position = URL_SAFE_NO_PAD.encode(format!(
            "v1:1999:{:016x}",
            token_check(target, "as_is", 999)
        ));
        for (bad, mode) in [
            (
                search_after_token("items5000.example.org", "as_is", 999),
                "as_is",
            ),
            (token.clone(), "one_per_domain"),
            (edited, "as_is"),
            (other_position, "as_is"),
            ("not a token".to_owned(), "as_is"),
            (String::new(), "as_is"),
            (URL_SAFE_NO_PAD.encode("v1:12"), "as_is"),
        ] {
            let a = answer(json!({"target": target, "mode": mode, "search_after_token": bad}));
            assert_eq!(
                (a.status_code, a.status_message.as_str(), a.cost),
                (40501, "Invalid Field: 'search_after_token'.", 0.0),
                "{bad:?}"
            );
            assert!(a.result.is_none());
        }
        let a = answer(json!({"target": target, "search_after_token": 5}));
        assert_eq!(a.status_code, 40501);
    }

    #[test]
    fn deep_offsets_and_bad_pages_are_refused_uncharged() {
        let a = answer(json!({"target": "items30000.example.com", "offset": 20001}));
        assert_eq!(
            (a.status_code, a.status_message.as_str(), a.cost, a.result),
            (
                40501,
                "Invalid Field: 'offset'. Maximum value is 20000; use search_after_token",
                0.0,
                None
            )
        );
        let (a, element) =
            result(json!({"target": "items30000.example.com", "offset": 20000, "limit": 5}));
        assert_eq!(a.status_code, 20000);
        assert_eq!(
            items(&element)[0],
            served_backlink(42, "items30000.example.com", "as_is", 20_000)
        );
        for (field, value) in [
            ("offset", json!(-1)),
            ("offset", json!("10")),
            ("limit", json!(0)),
            ("limit", json!(1001)),
            ("mode", json!("one_per_page")),
            ("filters", json!([["dofollow", "=", true], "and"])),
            (
                "order_by",
                json!([
                    "rank,desc",
                    "page_from_rank,asc",
                    "first_seen,desc",
                    "domain_from_rank,asc"
                ]),
            ),
            ("order_by", json!(["rank"])),
            ("order_by", json!("rank,desc")),
            ("backlinks_status_type", json!("dead")),
            ("include_subdomains", json!("yes")),
            ("rank_scale", json!("one_million")),
            ("tag", json!("x".repeat(256))),
        ] {
            let mut task = json!({"target": "example.com"});
            task[field] = value;
            let a = answer(task);
            assert_eq!(a.status_code, 40501, "{field}");
            assert_eq!(a.cost, 0.0);
            assert_eq!(a.status_message, format!("Invalid Field: '{field}'."));
        }
        let nine: Vec<Value> = (0..9)
            .flat_map(|i| [json!(["rank", ">", i]), json!("and")])
            .take(17)
            .collect();
        let a = answer(json!({"target": "example.com", "filters": nine}));
        assert_eq!(
            (a.status_code, a.status_message.as_str()),
            (40501, "Invalid Field: 'filters'.")
        );
        let eight: Vec<Value> = (0..8)
            .flat_map(|i| [json!(["rank", ">", i]), json!("or")])
            .take(15)
            .collect();
        assert_eq!(
            answer(json!({"target": "example.com", "filters": eight})).status_code,
            20000
        );
    }

    #[test]
    fn options_are_echoed_not_applied() {
        let full = json!({
            "target": "items300.example.com", "mode": "as_is", "limit": 50, "offset": 10,
            "filters": [["dofollow", "=", true], "and", ["rank", ">", 100], "and",
                        ["domain_from_country", "in", ["US", "DE"]]],
            "order_by": ["rank,desc", "first_seen,asc"], "backlinks_status_type": "live",
            "include_subdomains": true, "include_indirect_links": false,
            "exclude_internal_backlinks": true, "rank_scale": "one_hundred", "tag": "nightly",
            "internal_list_limit": 10, "some_future_option": 1
        });
        let (a, element) = result(full);
        let (_, plain) =
            result(json!({"target": "items300.example.com", "limit": 50, "offset": 10}));
        assert_eq!(a.status_code, 20000);
        assert_eq!(element, plain);
    }

    #[test]
    fn modes_list_fewer_items_of_their_own() {
        let target = "items3000.example.com";
        let (_, domains) = result(
            json!({"target": target, "mode": "one_per_domain", "limit": 1000, "offset": 500}),
        );
        assert_eq!(domains["total_count"], 1000);
        assert_eq!(domains["mode"], "one_per_domain");
        let page = items(&domains);
        assert_eq!(page.len(), 500);
        assert_eq!(page[0], served_backlink(42, target, "one_per_domain", 500));
        assert_ne!(page[0], served_backlink(42, target, "as_is", 500));
        let (_, anchors) = result(json!({"target": target, "mode": "one_per_anchor", "limit": 1}));
        assert_eq!(anchors["total_count"], 1500);
    }

    #[test]
    fn special_targets_get_their_statuses() {
        let (a, element) = result(json!({"target": "items0.example.org"}));
        assert_eq!(a.status_code, 20000);
        assert_eq!(
            (&element["total_count"], &element["items_count"]),
            (&json!(0), &json!(0))
        );
        assert_eq!(element["items"], json!([]));
        assert!(element["search_after_token"].is_null());
        assert_cost(&a, 0);

        let a = answer(json!({"target": "noresults.example.com", "limit": 1000}));
        assert_eq!(
            (a.status_code, a.status_message.as_str()),
            (40102, "No Search Results.")
        );
        assert_eq!((a.cost, a.result), (BACKLINKS_TASK_COST, None));
        assert_eq!(backlinks_total(42, "noresults.example.com", "as_is"), 0);

        let a = answer(json!({"target": "nullresult.example.com"}));
        assert_eq!(
            (a.status_code, a.cost, a.result),
            (20000, BACKLINKS_TASK_COST, None)
        );

        for task in [
            json!({"target": "badrequest.example.com"}),
            json!({"target": ""}),
            json!({"limit": 10}),
            json!({"target": ["a.com"]}),
        ] {
            let a = answer(task.clone());
            assert_eq!(
                (a.status_code, a.status_message.as_str(), a.cost),
                (40501, "Invalid Field: 'target'.", 0.0),
                "{task}"
            );
        }
        let hashed = backlinks_total(42, "example.com", "as_is");
        assert!(hashed <= 3000);
        let (_, element) = result(json!({"target": "example.com", "limit": 1000, "offset": 0}));
        assert_eq!(element["total_count"], hashed);
    }

    #[test]
    fn failat_fails_every_page_from_its_position_on() {
        let target = "failat2500.items5000.example.com";
        let (a, element) = result(json!({"target": target, "limit": 1000, "offset": 1500}));
        assert_eq!((a.status_code, items(&element).len()), (20000, 1000));
        let token = element["search_after_token"].as_str().expect("token");
        for task in [
            json!({"target": target, "limit": 1000, "search_after_token": token}),
            json!({"target": target, "offset": 2500}),
            json!({"target": target, "offset": 4999, "limit": 1}),
        ] {
            let a = answer(task.clone());
            assert_eq!(
                (a.status_code, a.status_message.as_str(), a.cost, a.result),
                (40501, "Invalid Field: 'target'.", 0.0, None),
                "{task}"
            );
        }
        // A page that starts before K is served whole, even across K.
        let (a, element) = result(json!({"target": target, "offset": 2499, "limit": 10}));
        assert_eq!((a.status_code, items(&element).len()), (20000, 10));
    }

    #[test]
    fn served_backlink_is_cheap_at_any_depth() {
        let target = "items10000000.example.com";
        assert_eq!(backlinks_total(7, target, "as_is"), 10_000_000);
        let deep = served_backlink(7, target, "as_is", 9_999_999);
        assert_eq!(deep["type"], "backlink");
        assert_eq!(deep, served_backlink(7, target, "as_is", 9_999_999));
    }
}
