//! Deterministic, realistic result items, generated from `(seed, target)`
//! (summary/live, here) or `(seed, target, mode, position)` (backlinks/live,
//! in [`backlinks`]).
//!
//! The values follow the shapes the real API sends (`docs/api-behaviour.md`): counts
//! that exceed 2^31, fields that are `null`, maps with the key `""`, maps
//! that are `null` or empty, and fields the client does not know yet.
//! Nothing depends on the time, the request order or the request options.

pub(crate) mod backlinks;

use backlinks_model::time::format_api_datetime;
use chrono::DateTime;
use serde_json::{Map, Value, json};

use crate::rng::{Rng, combine, stable_hash};

/// 2010-01-01 00:00:00 UTC and 2025-12-31 00:00:00 UTC.
const EARLIEST: i64 = 1_262_304_000;
const LATEST: i64 = 1_767_139_200;

const SERVERS: &[&str] = &[
    "nginx",
    "Apache",
    "cloudflare",
    "LiteSpeed",
    "openresty",
    "Microsoft-IIS/10.0",
    "gws",
    "Vercel",
];
const CMS: &[&str] = &[
    "WordPress",
    "Drupal",
    "Joomla",
    "Shopify",
    "Wix",
    "Squarespace",
    "1C-Bitrix",
    "Ghost",
];
const PLATFORMS: &[&str] = &[
    "cms",
    "blogs",
    "organization",
    "e-commerce",
    "news",
    "message-boards",
    "wikis",
    "unknown",
];
const COUNTRIES: &[&str] = &[
    "US", "DE", "GB", "FR", "NL", "CA", "JP", "BR", "IN", "AU", "PL", "ES",
];
const TLDS: &[&str] = &[
    "com", "org", "net", "de", "uk", "ru", "io", "info", "fr", "nl", "br", "jp", "edu", "gov",
];
const LINK_TYPES: &[&str] = &[
    "anchor",
    "image",
    "redirect",
    "canonical",
    "alternate",
    "link",
    "meta",
    "amp",
];
const ATTRIBUTES: &[&str] = &[
    "nofollow",
    "noopener",
    "noreferrer",
    "external",
    "ugc",
    "sponsored",
];
const SEMANTIC_LOCATIONS: &[&str] = &[
    "article", "section", "main", "header", "footer", "nav", "aside", "summary", "figure",
];
const LINK_COUNTRIES: &[&str] = &[
    "US", "DE", "GB", "FR", "NL", "CA", "RU", "IN", "JP", "BR", "WW",
];

/// The PRNG of one target's data.
fn rng_for(seed: u64, target: &str, stream: u64) -> Rng {
    Rng::new(combine(
        combine(seed, stream),
        stable_hash(target.as_bytes()),
    ))
}

/// `value`, or `null` with probability `p`.
fn or_null(r: &mut Rng, p: f64, value: Value) -> Value {
    if r.chance(p) { Value::Null } else { value }
}

fn api_date(secs: i64) -> Value {
    DateTime::from_timestamp(secs, 0).map_or(Value::Null, |d| json!(format_api_datetime(d)))
}

/// `n × share`, as a non-negative integer.
fn part(n: i64, share: f64) -> i64 {
    (n as f64 * share).round().max(0.0) as i64
}

/// The one result item of `summary/live` for `target`.
pub(crate) fn summary_item(seed: u64, target: &str) -> Value {
    let mut r = rng_for(seed, target, 1);
    const NULL_COUNT: f64 = 0.03;

    let huge = r.chance(0.10);
    let backlinks: i64 = if huge {
        3_000_000_000 + r.range(0, 4_000_000_000)
    } else {
        10f64.powf(r.f64() * 8.0) as i64
    };
    let referring_pages = part(backlinks, 0.3 + 0.6 * r.f64());
    let referring_domains = part(referring_pages, 0.01 + 0.3 * r.f64()).max(1);
    let referring_main_domains = part(referring_domains, 0.6 + 0.4 * r.f64()).max(1);
    let referring_ips = part(referring_domains, 0.5 + 0.5 * r.f64()).max(1);
    let referring_subnets = part(referring_ips, 0.4 + 0.6 * r.f64()).max(1);
    let crawled_pages = r.range(1, 2_000_000);
    let first_seen = r.range(EARLIEST, LATEST - 86_400 * 30);
    let lost = r.chance(0.3);
    let lost_date = r.range(first_seen, LATEST);

    let mut item = Map::new();
    item.insert("target".into(), json!(target));
    item.insert(
        "first_seen".into(),
        or_null(&mut r, NULL_COUNT, api_date(first_seen)),
    );
    item.insert(
        "lost_date".into(),
        if lost {
            api_date(lost_date)
        } else {
            Value::Null
        },
    );
    let counts: [(&str, i64); 16] = [
        ("rank", r.range(0, 1000)),
        ("backlinks", backlinks),
        ("backlinks_spam_score", r.range(0, 100)),
        ("crawled_pages", crawled_pages),
        (
            "internal_links_count",
            part(crawled_pages, 5.0 + 60.0 * r.f64()),
        ),
        (
            "external_links_count",
            part(crawled_pages, 0.5 + 20.0 * r.f64()),
        ),
        ("broken_backlinks", part(backlinks, 0.05 * r.f64())),
        ("broken_pages", part(crawled_pages, 0.03 * r.f64())),
        ("referring_domains", referring_domains),
        (
            "referring_domains_nofollow",
            part(referring_domains, 0.4 * r.f64()),
        ),
        ("referring_main_domains", referring_main_domains),
        (
            "referring_main_domains_nofollow",
            part(referring_main_domains, 0.4 * r.f64()),
        ),
        ("referring_ips", referring_ips),
        ("referring_subnets", referring_subnets),
        ("referring_pages", referring_pages),
        (
            "referring_pages_nofollow",
            part(referring_pages, 0.5 * r.f64()),
        ),
    ];
    for (name, value) in counts {
        let value = or_null(&mut r, NULL_COUNT, json!(value));
        item.insert(name.into(), value);
    }
    item.insert("info".into(), info(&mut rng_for(seed, target, 2), target));

    let mut r = rng_for(seed, target, 3);
    let maps: [(&str, &[&str], f64); 6] = [
        ("referring_links_tld", TLDS, 0.0),
        ("referring_links_types", LINK_TYPES, 0.0),
        ("referring_links_attributes", ATTRIBUTES, 0.0),
        ("referring_links_platform_types", PLATFORMS, 0.0),
        (
            "referring_links_semantic_locations",
            SEMANTIC_LOCATIONS,
            0.6,
        ),
        ("referring_links_countries", LINK_COUNTRIES, 0.3),
    ];
    for (name, keys, empty_key) in maps {
        item.insert(name.into(), link_counts(&mut r, keys, empty_key, backlinks));
    }
    // A field this client version does not know yet.
    if r.chance(1.0 / 8.0) {
        item.insert(
            "backlinks_spam_score_v2".into(),
            json!(r.range(0, 1000) as f64 / 10.0),
        );
    }
    Value::Object(item)
}

fn info(r: &mut Rng, target: &str) -> Value {
    let is_ip = target.parse::<std::net::IpAddr>().is_ok();
    let server = r.pick(SERVERS);
    let server = or_null(r, 0.08, json!(server));
    let cms = r.pick(CMS);
    let cms = or_null(r, 0.55, json!(cms));
    let platform_type = if r.chance(0.15) {
        Value::Null
    } else {
        let mut types: Vec<Value> = Vec::new();
        for _ in 0..r.range(1, 3) {
            let t = json!(r.pick(PLATFORMS));
            if !types.contains(&t) {
                types.push(t);
            }
        }
        if r.chance(0.10) {
            types.push(Value::Null);
        }
        Value::Array(types)
    };
    let ip_address = if is_ip {
        json!(target)
    } else {
        let octets = [
            r.range(1, 223),
            r.range(0, 255),
            r.range(0, 255),
            r.range(1, 254),
        ];
        let ip = format!("{}.{}.{}.{}", octets[0], octets[1], octets[2], octets[3]);
        or_null(r, 0.05, json!(ip))
    };
    let country = r.pick(COUNTRIES);
    let country = or_null(r, 0.10, json!(country));
    let spam = r.range(0, 100).pow(2) / 100;
    let spam = or_null(r, 0.03, json!(spam));
    let mut info = json!({
        "server": server,
        "cms": cms,
        "platform_type": platform_type,
        "ip_address": ip_address,
        "country": country,
        "is_ip": is_ip,
        "target_spam_score": spam,
    });
    // A field of `info` this client version does not know yet.
    if r.chance(0.10) {
        let parked = r.chance(0.2);
        if let Some(fields) = info.as_object_mut() {
            fields.insert("is_parked".into(), json!(parked));
        }
    }
    info
}

/// One of the six link-count maps: usually a few keys with counts summing
/// to about `total`, `""` among them with probability `empty_key`;
/// sometimes `null` or `{}`; a count is occasionally `null`.
fn link_counts(r: &mut Rng, keys: &[&str], empty_key: f64, total: i64) -> Value {
    let shape = r.f64();
    if shape < 0.04 {
        return Value::Null;
    }
    if shape < 0.08 {
        return json!({});
    }
    let mut chosen: Vec<&str> = keys.iter().copied().filter(|_| r.chance(0.45)).collect();
    if chosen.is_empty() {
        chosen.push(r.pick(keys));
    }
    if r.chance(empty_key) {
        chosen.push("");
    }
    let weights: Vec<f64> = chosen.iter().map(|_| 0.05 + r.f64()).collect();
    let sum: f64 = weights.iter().sum();
    let mut map = Map::new();
    for (key, weight) in chosen.into_iter().zip(weights) {
        let count = or_null(r, 0.03, json!(part(total, weight / sum)));
        map.insert(key.into(), count);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use backlinks_model::api::SummaryResult;
    use backlinks_model::time::parse_api_datetime;

    use super::*;

    fn items(seed: u64, n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| summary_item(seed, &format!("site{i}.example{}.com", i % 7)))
            .collect()
    }

    #[test]
    fn items_are_deterministic_per_seed_and_target() {
        assert_eq!(
            summary_item(7, "example.com"),
            summary_item(7, "example.com")
        );
        assert_ne!(
            summary_item(7, "example.com"),
            summary_item(8, "example.com")
        );
        assert_ne!(
            summary_item(7, "example.com"),
            summary_item(7, "example.org")
        );
        assert_eq!(summary_item(7, "example.com")["target"], "example.com");
    }

    #[test]
    fn every_item_decodes_into_the_model_and_its_dates_parse() {
        for item in items(42, 300) {
            let typed: SummaryResult = serde_json::from_value(item.clone()).expect("decodes");
            for (field, date) in [
                ("first_seen", &typed.first_seen),
                ("lost_date", &typed.lost_date),
            ] {
                if let Some(d) = date {
                    parse_api_datetime(field, d).expect("API date format");
                }
            }
            if let (Some(first), Some(lost)) = (&typed.first_seen, &typed.lost_date) {
                assert!(first <= lost, "{first} after {lost}");
            }
            let rank = typed.rank.unwrap_or(0);
            assert!((0..=1000).contains(&rank), "{rank}");
            // The only unknown fields are the deliberate ones.
            assert!(
                typed.extra.keys().all(|k| k == "backlinks_spam_score_v2"),
                "{:?}",
                typed.extra
            );
            let info = typed.info.expect("info");
            assert!(
                info.extra.keys().all(|k| k == "is_parked"),
                "{:?}",
                info.extra
            );
        }
    }

    #[test]
    fn two_hundred_targets_cover_the_awkward_shapes() {
        let all = items(42, 200);
        let count = |f: &dyn Fn(&Value) -> bool| all.iter().filter(|v| f(v)).count();
        let huge = count(&|v| {
            v["backlinks"]
                .as_i64()
                .is_some_and(|n| n > i64::from(i32::MAX))
        });
        assert!(
            (8..=40).contains(&huge),
            "{huge} targets above 2^31 backlinks"
        );
        let big_map_value = count(&|v| {
            v["referring_links_tld"].as_object().is_some_and(|m| {
                m.values()
                    .any(|c| c.as_i64().is_some_and(|n| n > i64::from(i32::MAX)))
            })
        });
        assert!(big_map_value > 0, "map counts above 2^31");
        let empty_key = count(&|v| v["referring_links_semantic_locations"].get("").is_some());
        assert!(empty_key >= 60, "{empty_key} targets with the key \"\"");
        assert!(count(&|v| v["referring_links_countries"].get("").is_some()) > 20);
        let v2 = count(&|v| {
            v.get("backlinks_spam_score_v2")
                .is_some_and(Value::is_number)
        });
        assert!((10..=45).contains(&v2), "{v2} with backlinks_spam_score_v2");
        let parked = count(&|v| v["info"].get("is_parked").is_some());
        assert!((8..=40).contains(&parked), "{parked} with info.is_parked");
        assert!(count(&|v| v["lost_date"].is_null()) > 100);
        assert!(count(&|v| v["lost_date"].is_string()) > 20);
        assert!(count(&|v| v["info"]["cms"].is_null()) > 60);
        assert!(count(&|v| v["info"]["platform_type"].is_null()) > 10);
        assert!(
            count(&|v| v["info"]["platform_type"]
                .as_array()
                .is_some_and(|a| a.contains(&Value::Null)))
                > 3
        );
        let maps = [
            "referring_links_tld",
            "referring_links_types",
            "referring_links_attributes",
            "referring_links_platform_types",
            "referring_links_semantic_locations",
            "referring_links_countries",
        ];
        let null_maps = count(&|v| maps.iter().any(|m| v[*m].is_null()));
        let empty_maps = count(&|v| {
            maps.iter()
                .any(|m| v[*m].as_object().is_some_and(Map::is_empty))
        });
        assert!(
            null_maps > 10 && empty_maps > 10,
            "{null_maps} null, {empty_maps} empty"
        );
        let null_values = count(&|v| {
            maps.iter().any(|m| {
                v[*m]
                    .as_object()
                    .is_some_and(|o| o.values().any(Value::is_null))
            })
        });
        assert!(null_values > 10, "{null_values} with a null count");
        let null_scalars = count(&|v| {
            v["referring_domains"].is_null() || v["backlinks"].is_null() || v["rank"].is_null()
        });
        assert!(null_scalars > 3, "{null_scalars} with a null count");
    }

    #[test]
    fn ip_targets_are_marked() {
        let item = summary_item(1, "192.0.2.7");
        assert_eq!(item["info"]["is_ip"], true);
        assert_eq!(item["info"]["ip_address"], "192.0.2.7");
        assert_eq!(summary_item(1, "example.com")["info"]["is_ip"], false);
    }
}
