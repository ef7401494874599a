//! Deterministic backlinks/live items.
//!
//! Item `position` of a target's list is generated from
//! `(seed, target, mode, position)` alone, in O(1) and without storage, so
//! a list of ten million items costs no memory and any page can be served
//! (or checked) on its own. Items are written straight as JSON text.
//!
//! The values follow the shapes the real API sends: URLs of 60–120
//! characters, titles and anchors in many scripts with quotes, commas,
//! newlines, tabs, backslashes and emoji, counts above 2^31 on about 1% of
//! items, any field occasionally `null`, redirect chains on indirect links,
//! and fields the client does not know yet (`link_quality_v2` on about 2%
//! of items, `page_from_keywords_count_top_1000` on about 1%).

use super::{
    ATTRIBUTES, COUNTRIES, EARLIEST, LATEST, PLATFORMS, SEMANTIC_LOCATIONS, TLDS, rng_for,
};
use crate::json::{Json, push_digits};
use crate::rng::{Rng, combine, stable_hash};

/// Probability that an ordinary field of an item is `null`.
const NULL_FIELD: f64 = 0.005;

/// Largest list a hash-derived total reaches (targets without `items<N>`).
pub(crate) const MAX_HASHED_TOTAL: i64 = 3000;

/// Keys the item stream apart from the other generated data.
const ITEM_STREAM: u64 = 0x6261_636B_6C69_6E6B;

const WORDS: &[&str] = &[
    "news", "blog", "review", "guide", "best", "top", "daily", "tech", "green", "city", "travel",
    "food", "home", "garden", "market", "health", "sport", "music", "photo", "design", "studio",
    "local", "world", "digital", "smart", "open", "free", "online", "shop", "tips", "learn",
    "code", "data", "cloud", "media", "press", "forum", "wiki", "story", "journal", "report",
    "update", "about", "how", "why", "list", "ideas", "simple", "modern", "classic", "north",
    "south", "river", "stone", "maple", "urban", "rural", "pixel", "signal", "vector", "bright",
    "weekly", "insider", "network", "library", "academy", "recipes", "outdoor", "family",
    "finance", "software", "hardware", "science", "history", "culture", "fashion", "energy",
];

const UNICODE_WORDS: &[&str] = &[
    "Über",
    "café",
    "naïve",
    "Größe",
    "Привет",
    "новости",
    "日本語",
    "東京",
    "中文网",
    "한국어",
    "español",
    "São Paulo",
    "Zürich",
    "Ελληνικά",
    "עברית",
    "العربية",
    "🚀",
    "✓",
    "—",
    "…",
];

/// Anchors as the web writes them, awkward characters included.
const AWKWARD_ANCHORS: &[&str] = &[
    "\"quoted\" anchor",
    "red, green, and blue",
    "line one\nline two",
    "tab\tseparated",
    "C:\\Users\\Public\\file",
    "🚀 launch day",
    "👍🏽 great read",
    "family 👨\u{200d}👩\u{200d}👧 trip",
    "50% off, \"today\" only",
    "back\\slash \"and\" quote",
    "  padded  ",
    "windows\r\nline end",
    "<b>bold</b> & more",
    "it's 'single' quoted",
];

const LANGUAGES: &[&str] = &[
    "en", "de", "fr", "es", "ru", "ja", "pt", "pl", "it", "nl", "zh", "ko",
];
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "png", "webp", "gif"];
const HOP_TYPES: &[&str] = &["redirect", "canonical", "meta_refresh"];

/// What the items' `item_type` is, and how often.
const ITEM_TYPES: &[(&str, u32)] = &[
    ("anchor", 70),
    ("image", 12),
    ("redirect", 5),
    ("canonical", 4),
    ("link", 3),
    ("meta", 2),
    ("alternate", 2),
    ("amp", 2),
];
const ENCODINGS: &[(&str, u32)] = &[
    ("utf-8", 85),
    ("windows-1251", 4),
    ("iso-8859-1", 4),
    ("shift_jis", 2),
    ("gb2312", 2),
];

/// The host of a target: a domain as it is, a page URL without its scheme
/// and path.
pub(crate) fn host(target: &str) -> &str {
    let rest = target
        .strip_prefix("https://")
        .or_else(|| target.strip_prefix("http://"))
        .unwrap_or(target);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// `N` of the first label of the target's host that is `<prefix><N>`.
fn numbered_label(target: &str, prefix: &str) -> Option<u64> {
    host(target).split('.').find_map(|label| {
        let digits = label.strip_prefix(prefix)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    })
}

/// `N` of a target with a label `items<N>` (`items25000.example.com`,
/// `failat10.items50.example.com`).
pub(crate) fn items_label(target: &str) -> Option<u64> {
    numbered_label(target, "items")
}

/// `K` of a target with a label `failat<K>`.
pub(crate) fn failat_label(target: &str) -> Option<u64> {
    numbered_label(target, "failat")
}

/// How many items the target's list has in `mode`: `N` for targets with a
/// label `items<N>` in `as_is` mode, otherwise a total in `0..=3000` derived from
/// `(seed, target)`; `one_per_domain` keeps a third of them (rounded up),
/// `one_per_anchor` half.
pub(crate) fn total(seed: u64, target: &str, mode: &str) -> u64 {
    let all = items_label(target).unwrap_or_else(|| {
        rng_for(seed, target, 4)
            .range(0, MAX_HASHED_TOTAL)
            .unsigned_abs()
    });
    match mode {
        "one_per_domain" => all.div_ceil(3),
        "one_per_anchor" => all.div_ceil(2),
        _ => all,
    }
}

/// Writes the items of one target and mode; holds what all of them share
/// and buffers reused from item to item.
#[derive(Debug)]
pub(crate) struct ItemWriter<'a> {
    key: u64,
    domain_to: &'a str,
    /// The target itself when it is a page URL: every link points at it.
    page_target: Option<&'a str>,
    domain: String,
    url: String,
    scratch: String,
}

impl<'a> ItemWriter<'a> {
    pub(crate) fn new(seed: u64, target: &'a str, mode: &str) -> Self {
        let key = combine(
            combine(seed ^ ITEM_STREAM, stable_hash(target.as_bytes())),
            stable_hash(mode.as_bytes()),
        );
        Self {
            key,
            domain_to: host(target),
            page_target: target.contains("://").then_some(target),
            domain: String::with_capacity(64),
            url: String::with_capacity(160),
            scratch: String::with_capacity(256),
        }
    }

    /// Appends the item at `position` (0-based) of the list.
    pub(crate) fn write(&mut self, o: &mut Json, position: u64) {
        let (key, domain_to, page_target) = (self.key, self.domain_to, self.page_target);
        let Self {
            domain,
            url,
            scratch,
            ..
        } = self;
        let r = &mut Rng::new(combine(key, position));
        o.begin_object();
        o.key("type");
        o.str("backlink");

        // Where the link is.
        let is_ip = r.chance(0.01);
        let ip = [
            r.range(1, 223),
            r.range(0, 255),
            r.range(0, 255),
            r.range(1, 254),
        ];
        domain.clear();
        let tld = if is_ip {
            push_ip(domain, ip);
            None
        } else {
            let sub = r.f64();
            if sub < 0.2 {
                domain.push_str("www.");
            } else if sub < 0.28 {
                domain.push_str("blog.");
            } else if sub < 0.32 {
                domain.push_str(r.pick(LANGUAGES));
                domain.push('.');
            }
            domain.push_str(r.pick(WORDS));
            if r.chance(0.15) {
                domain.push('-');
            }
            if r.chance(0.6) {
                domain.push_str(r.pick(WORDS));
            }
            if r.chance(0.2) {
                push_digits(domain, r.below(100));
            }
            let tld = r.pick(TLDS);
            domain.push('.');
            domain.push_str(tld);
            Some(tld)
        };
        field_str(o, r, "domain_from", domain);
        let https_from = r.chance(0.88);
        url.clear();
        url.push_str(if https_from { "https://" } else { "http://" });
        url.push_str(domain);
        let length = r.range(60, 100).unsigned_abs() as usize;
        let mut slash = true;
        while url.len() < length {
            url.push(if slash { '/' } else { '-' });
            url.push_str(r.pick(WORDS));
            slash = r.chance(0.3);
        }
        if r.chance(0.2) {
            url.push_str(".html");
        }
        url.truncate(120);
        field_str(o, r, "url_from", url);
        field_bool(o, r, "url_from_https", https_from);
        field_str(o, r, "domain_to", domain_to);

        // Where it points.
        url.clear();
        match page_target {
            Some(page) => url.push_str(page),
            None => {
                url.push_str("https://");
                url.push_str(domain_to);
                url.push('/');
                if r.chance(0.65) {
                    for i in 0..r.range(1, 3) {
                        if i > 0 {
                            url.push('/');
                        }
                        url.push_str(r.pick(WORDS));
                        url.push('-');
                        url.push_str(r.pick(WORDS));
                    }
                }
            }
        }
        field_str(o, r, "url_to", url);
        field_bool(o, r, "url_to_https", url.starts_with("https://"));
        o.key("tld_from");
        o.opt_str(tld);
        let is_new = r.chance(0.06);
        field_bool(o, r, "is_new", is_new);
        let is_lost = r.chance(0.12);
        field_bool(o, r, "is_lost", is_lost);
        let spam = skewed(r, 100);
        field_int(o, r, "backlink_spam_score", spam);
        let rank = skewed(r, 1000);
        field_int(o, r, "rank", rank);
        let page_rank = skewed(r, 1000);
        field_int(o, r, "page_from_rank", page_rank);
        let domain_rank = skewed(r, 1000);
        field_int(o, r, "domain_from_rank", domain_rank);

        o.key("domain_from_platform_type");
        let shape = r.f64();
        if shape < 0.05 {
            o.null();
        } else {
            o.begin_array();
            if shape >= 0.15 {
                let first = r.pick(PLATFORMS);
                o.str(first);
                if r.chance(0.3) {
                    let second = r.pick(PLATFORMS);
                    if second != first {
                        o.str(second);
                    }
                }
            }
            o.end_array();
        }
        field_bool(o, r, "domain_from_is_ip", is_ip);
        o.key("domain_from_ip");
        if r.chance(0.03) {
            o.null();
        } else {
            scratch.clear();
            push_ip(scratch, ip);
            o.str(scratch);
        }
        o.key("domain_from_country");
        let country = r.pick(COUNTRIES);
        o.opt_str((!r.chance(0.15)).then_some(country));

        let external = r.range(0, 400);
        field_int(o, r, "page_from_external_links", external);
        let internal = r.range(0, 3000);
        field_int(o, r, "page_from_internal_links", internal);
        let size = if r.chance(0.005) {
            huge(r)
        } else {
            r.range(2_000, 900_000)
        };
        field_int(o, r, "page_from_size", size);
        o.key("page_from_encoding");
        let encoding = weighted(r, ENCODINGS);
        o.opt_str((!r.chance(0.03)).then_some(encoding));
        o.key("page_from_language");
        let language = r.pick(LANGUAGES);
        o.opt_str((!r.chance(0.05)).then_some(language));
        let with_title = !r.chance(0.02);
        o.key("page_from_title");
        if with_title {
            o.str_from(scratch, |s| title(r, s, domain));
        } else {
            o.null();
        }
        let status = if r.chance(0.93) {
            200
        } else {
            *pick_of(r, &[301, 302, 404, 410, 500, 503])
        };
        field_int(o, r, "page_from_status_code", status);

        // When it was seen.
        let first_seen = r.range(EARLIEST, LATEST - 86_400 * 2);
        let last_seen = r.range(first_seen + 86_400, LATEST);
        let prev_seen = (!r.chance(0.3)).then(|| r.range(first_seen, last_seen));
        o.key("first_seen");
        if r.chance(NULL_FIELD) {
            o.null();
        } else {
            o.str_from(scratch, |s| push_api_date(s, first_seen));
        }
        o.key("prev_seen");
        match prev_seen {
            Some(secs) => o.str_from(scratch, |s| push_api_date(s, secs)),
            None => o.null(),
        }
        o.key("last_seen");
        o.str_from(scratch, |s| push_api_date(s, last_seen));

        // What kind of link it is.
        let item_type = weighted(r, ITEM_TYPES);
        field_str(o, r, "item_type", item_type);
        let attributes = r.f64();
        let mut follows = true;
        o.key("attributes");
        if attributes < 0.35 {
            o.null();
        } else {
            o.begin_array();
            if attributes >= 0.5 {
                let first = r.pick(ATTRIBUTES);
                o.str(first);
                follows &= !matches!(first, "nofollow" | "ugc" | "sponsored");
                if r.chance(0.25) {
                    let second = r.pick(ATTRIBUTES);
                    if second != first {
                        o.str(second);
                        follows &= !matches!(second, "nofollow" | "ugc" | "sponsored");
                    }
                }
            }
            o.end_array();
        }
        field_bool(o, r, "dofollow", follows);
        let original = r.chance(0.85);
        field_bool(o, r, "original", original);
        let is_image = item_type == "image";
        let has_text = matches!(item_type, "anchor" | "image");
        o.key("alt");
        if is_image {
            if r.chance(0.3) {
                o.str("");
            } else {
                o.str_from(scratch, |s| words(r, s, 8, 60, 0.1));
            }
        } else {
            o.null();
        }
        o.key("image_url");
        if is_image {
            o.str_from(scratch, |s| {
                s.push_str("https://");
                s.push_str(domain);
                s.push_str("/wp-content/uploads/");
                push_digits(s, r.range(2012, 2025).unsigned_abs());
                s.push('/');
                s.push_str(r.pick(WORDS));
                s.push('-');
                s.push_str(r.pick(WORDS));
                s.push('.');
                s.push_str(r.pick(IMAGE_EXTENSIONS));
            });
        } else {
            o.null();
        }
        o.key("anchor");
        if item_type == "anchor" {
            o.str_from(scratch, |s| anchor(r, s, domain_to));
        } else {
            o.null();
        }
        for key in ["text_pre", "text_post"] {
            o.key(key);
            if has_text && !r.chance(0.05) {
                o.str_from(scratch, |s| words(r, s, 50, 200, 0.05));
            } else {
                o.null();
            }
        }
        o.key("semantic_location");
        let location = r.pick(SEMANTIC_LOCATIONS);
        o.opt_str((!r.chance(0.2)).then_some(location));
        let links = if r.chance(0.005) {
            huge(r)
        } else {
            1 + skewed(r, 12)
        };
        field_int(o, r, "links_count", links);
        let groups = r.range(0, 30);
        field_int(o, r, "group_count", groups);

        // The state of the linked page.
        let broken = r.chance(0.03);
        field_bool(o, r, "is_broken", broken);
        let status_to = if broken {
            *pick_of(r, &[404, 410, 500, 503])
        } else if r.chance(0.04) {
            *pick_of(r, &[301, 302])
        } else {
            200
        };
        o.key("url_to_status_code");
        if r.chance(0.05) {
            o.null();
        } else {
            o.int(status_to);
        }
        let spam_to = skewed(r, 100);
        field_int(o, r, "url_to_spam_score", spam_to);
        o.key("url_to_redirect_target");
        if matches!(status_to, 301 | 302) {
            o.str_from(scratch, |s| {
                s.push_str("https://");
                s.push_str(domain_to);
                s.push('/');
                s.push_str(r.pick(WORDS));
                s.push('/');
            });
        } else {
            o.null();
        }
        o.key("ranked_keywords_info");
        if r.chance(0.03) {
            o.null();
        } else {
            let top_100 = skewed(r, 5000);
            let top_10 = part_of(r, top_100);
            let top_3 = part_of(r, top_10);
            o.begin_object();
            o.key("page_from_keywords_count_top_3");
            o.int(top_3);
            o.key("page_from_keywords_count_top_10");
            o.int(top_10);
            o.key("page_from_keywords_count_top_100");
            o.int(top_100);
            if r.chance(0.01) {
                // A count this client version does not know yet.
                o.key("page_from_keywords_count_top_1000");
                o.int(top_100 * 4 + r.range(0, 1000));
            }
            o.end_object();
        }
        let indirect = r.chance(0.08);
        field_bool(o, r, "is_indirect_link", indirect);
        o.key("indirect_link_path");
        if indirect {
            o.begin_array();
            for _ in 0..r.range(1, 3) {
                o.begin_object();
                o.key("type");
                o.str(r.pick(HOP_TYPES));
                o.key("status_code");
                o.int(*pick_of(r, &[301, 301, 302, 307, 308]));
                o.key("url");
                o.str_from(scratch, |s| {
                    s.push_str(if r.chance(0.8) { "https://" } else { "http://" });
                    s.push_str(r.pick(WORDS));
                    s.push_str(r.pick(WORDS));
                    s.push('.');
                    s.push_str(r.pick(TLDS));
                    s.push('/');
                    s.push_str(r.pick(WORDS));
                });
                o.end_object();
            }
            o.end_array();
        } else {
            o.null();
        }
        if r.chance(0.02) {
            // A field this client version does not know yet.
            o.key("link_quality_v2");
            o.float(r.range(0, 1000) as f64 / 10.0);
        }
        o.end_object();
    }
}

/// `key: value`, or `key: null` now and then.
fn field_int(o: &mut Json, r: &mut Rng, key: &str, value: i64) {
    o.key(key);
    if r.chance(NULL_FIELD) {
        o.null();
    } else {
        o.int(value);
    }
}

fn field_bool(o: &mut Json, r: &mut Rng, key: &str, value: bool) {
    o.key(key);
    if r.chance(NULL_FIELD) {
        o.null();
    } else {
        o.bool(value);
    }
}

fn field_str(o: &mut Json, r: &mut Rng, key: &str, value: &str) {
    o.key(key);
    if r.chance(NULL_FIELD) {
        o.null();
    } else {
        o.str(value);
    }
}

/// In `0..=max`, low values far more often than high ones.
fn skewed(r: &mut Rng, max: i64) -> i64 {
    let u = r.f64();
    (u * u * (max + 1) as f64).floor().min(max as f64) as i64
}

/// A count above 2^31.
fn huge(r: &mut Rng) -> i64 {
    i64::from(i32::MAX) + r.range(1, 5_000_000_000)
}

/// A share of `n` in `0..=n`.
fn part_of(r: &mut Rng, n: i64) -> i64 {
    (n as f64 * r.f64()).round() as i64
}

fn pick_of<'a, T>(r: &mut Rng, items: &'a [T]) -> &'a T {
    let i = r.below(items.len() as u64) as usize;
    &items[i.min(items.len() - 1)]
}

/// One of `choices`, each as likely as its weight.
fn weighted<'a>(r: &mut Rng, choices: &[(&'a str, u32)]) -> &'a str {
    let sum: u32 = choices.iter().map(|(_, w)| w).sum();
    let mut draw = r.below(u64::from(sum));
    for (choice, weight) in choices {
        match draw.checked_sub(u64::from(*weight)) {
            Some(rest) => draw = rest,
            None => return choice,
        }
    }
    choices.last().map_or("", |(choice, _)| choice)
}

fn push_ip(s: &mut String, octets: [i64; 4]) {
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        push_digits(s, octet.unsigned_abs());
    }
}

/// Words separated by spaces, `min..=max` characters long; a word from
/// [`UNICODE_WORDS`] with probability `unicode` each.
fn words(r: &mut Rng, s: &mut String, min: usize, max: usize, unicode: f64) {
    // Short texts are the more common; the longest word is shorter than
    // 10 characters.
    let length = min + skewed(r, (max - min).saturating_sub(10) as i64).unsigned_abs() as usize;
    let mut chars = 0;
    while chars < length {
        if chars > 0 {
            s.push(if r.chance(0.05) { ',' } else { ' ' });
            chars += 1;
        }
        let word = if r.chance(unicode) {
            r.pick(UNICODE_WORDS)
        } else {
            r.pick(WORDS)
        };
        s.push_str(word);
        chars += word.chars().count();
    }
}

/// A page title: capitalised words, often the site's name after a bar.
fn title(r: &mut Rng, s: &mut String, domain: &str) {
    for i in 0..r.range(3, 8) {
        if i > 0 {
            s.push(' ');
        }
        if r.chance(0.04) {
            s.push_str(r.pick(UNICODE_WORDS));
        } else {
            push_capitalised(s, r.pick(WORDS));
        }
    }
    if r.chance(0.4) {
        s.push_str(if r.chance(0.8) { " | " } else { " – " });
        let site = domain.trim_start_matches("www.");
        push_capitalised(s, site.split('.').next().unwrap_or(site));
    }
}

fn push_capitalised(s: &mut String, word: &str) {
    let mut chars = word.chars();
    if let Some(first) = chars.next() {
        s.push(first.to_ascii_uppercase());
        s.push_str(chars.as_str());
    }
}

/// The text of a link: mostly a few words, sometimes a naked URL, an
/// awkward string (quotes, commas, newlines, tabs, backslashes, emoji) or
/// nothing at all.
fn anchor(r: &mut Rng, s: &mut String, domain_to: &str) {
    let shape = r.f64();
    if shape < 0.03 {
        return; // An empty anchor.
    }
    if shape < 0.13 {
        s.push_str("https://");
        s.push_str(domain_to);
        s.push('/');
    } else if shape < 0.28 {
        s.push_str(r.pick(AWKWARD_ANCHORS));
        if r.chance(0.5) {
            s.push(' ');
            s.push_str(r.pick(WORDS));
        }
    } else {
        words(r, s, 3, 45, 0.08);
    }
}

/// `yyyy-mm-dd hh:mm:ss +00:00` of a Unix time, as the API writes dates.
pub(crate) fn push_api_date(s: &mut String, secs: i64) {
    let days = secs.div_euclid(86_400);
    let time = secs.rem_euclid(86_400);
    // Days to the civil date (H. Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    push_padded(s, year, 4);
    s.push('-');
    push_padded(s, month, 2);
    s.push('-');
    push_padded(s, day, 2);
    s.push(' ');
    push_padded(s, time / 3600, 2);
    s.push(':');
    push_padded(s, time / 60 % 60, 2);
    s.push(':');
    push_padded(s, time % 60, 2);
    s.push_str(" +00:00");
}

/// `n` (non-negative) with leading zeros to `width` digits.
fn push_padded(s: &mut String, n: i64, width: u32) {
    let n = n.unsigned_abs();
    let mut place = 10u64.pow(width.saturating_sub(1));
    while place > n.max(1) {
        s.push('0');
        place /= 10;
    }
    push_digits(s, n);
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use backlinks_model::time::{format_api_datetime, parse_api_datetime};
    use chrono::DateTime;
    use serde_json::{Map, Value};

    use super::*;

    fn item(seed: u64, target: &str, mode: &str, position: u64) -> Value {
        let mut o = Json::default();
        ItemWriter::new(seed, target, mode).write(&mut o, position);
        let text = o.into_string();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn sample(n: u64) -> Vec<Map<String, Value>> {
        let mut o = Json::default();
        let mut w = ItemWriter::new(42, "example.com", "as_is");
        o.begin_array();
        for position in 0..n {
            w.write(&mut o, position);
        }
        o.end_array();
        let value: Value = serde_json::from_str(&o.into_string()).expect("valid JSON");
        value
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v.as_object().expect("object").clone())
            .collect()
    }

    const FIELDS: [&str; 47] = [
        "type",
        "domain_from",
        "url_from",
        "url_from_https",
        "domain_to",
        "url_to",
        "url_to_https",
        "tld_from",
        "is_new",
        "is_lost",
        "backlink_spam_score",
        "rank",
        "page_from_rank",
        "domain_from_rank",
        "domain_from_platform_type",
        "domain_from_is_ip",
        "domain_from_ip",
        "domain_from_country",
        "page_from_external_links",
        "page_from_internal_links",
        "page_from_size",
        "page_from_encoding",
        "page_from_language",
        "page_from_title",
        "page_from_status_code",
        "first_seen",
        "prev_seen",
        "last_seen",
        "item_type",
        "attributes",
        "dofollow",
        "original",
        "alt",
        "image_url",
        "anchor",
        "text_pre",
        "text_post",
        "semantic_location",
        "links_count",
        "group_count",
        "is_broken",
        "url_to_status_code",
        "url_to_spam_score",
        "url_to_redirect_target",
        "ranked_keywords_info",
        "is_indirect_link",
        "indirect_link_path",
    ];

    #[test]
    fn items_depend_on_seed_target_mode_and_position_only() {
        let a = item(7, "example.com", "as_is", 12);
        assert_eq!(a, item(7, "example.com", "as_is", 12));
        assert_ne!(a, item(8, "example.com", "as_is", 12));
        assert_ne!(a, item(7, "example.org", "as_is", 12));
        assert_ne!(a, item(7, "example.com", "one_per_domain", 12));
        assert_ne!(a, item(7, "example.com", "as_is", 13));
        // Written in a run of others or alone: the same item.
        let run = sample(20);
        assert_eq!(
            Value::Object(run[13].clone()),
            item(42, "example.com", "as_is", 13)
        );
        assert_eq!(a["domain_to"], "example.com");
        assert_eq!(a["type"], "backlink");
    }

    #[test]
    fn every_item_has_every_field() {
        for (i, item) in sample(500).iter().enumerate() {
            let keys: Vec<&str> = item.keys().map(String::as_str).collect();
            let known: Vec<&str> = keys
                .iter()
                .copied()
                .filter(|k| *k != "link_quality_v2")
                .collect();
            let mut expected = FIELDS.to_vec();
            let mut got = known.clone();
            expected.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, expected, "item {i}");
        }
    }

    #[test]
    fn values_have_the_apis_shapes() {
        let items = sample(2000);
        let mut domains = HashSet::new();
        for item in &items {
            if let Some(url) = item["url_from"].as_str() {
                let n = url.chars().count();
                assert!((60..=120).contains(&n), "{n}: {url}");
                assert!(url.starts_with("http"), "{url}");
                if let Some(https) = item["url_from_https"].as_bool() {
                    assert_eq!(https, url.starts_with("https://"), "{url}");
                }
            }
            if let Some(d) = item["domain_from"].as_str() {
                domains.insert(d.to_owned());
            }
            for key in ["text_pre", "text_post"] {
                if let Some(text) = item[key].as_str() {
                    let n = text.chars().count();
                    assert!((50..=200).contains(&n), "{key} {n}: {text:?}");
                }
            }
            for key in ["first_seen", "prev_seen", "last_seen"] {
                if let Some(date) = item[key].as_str() {
                    parse_api_datetime("date", date).expect("API date");
                }
            }
            if let (Some(first), Some(last)) =
                (item["first_seen"].as_str(), item["last_seen"].as_str())
            {
                assert!(first < last, "{first} {last}");
            }
            if let Some(prev) = item["prev_seen"].as_str() {
                let last = item["last_seen"].as_str().expect("last_seen");
                assert!(prev <= last, "{prev} {last}");
            }
            match &item["indirect_link_path"] {
                Value::Null => {}
                Value::Array(hops) => {
                    assert!((1..=3).contains(&hops.len()));
                    for hop in hops {
                        assert!(HOP_TYPES.contains(&hop["type"].as_str().expect("type")));
                        assert!(
                            hop["status_code"]
                                .as_i64()
                                .is_some_and(|c| (301..=308).contains(&c))
                        );
                        assert!(hop["url"].as_str().is_some_and(|u| u.starts_with("http")));
                    }
                    assert_ne!(item["is_indirect_link"], false);
                }
                other => panic!("indirect_link_path {other}"),
            }
            if let Some(info) = item["ranked_keywords_info"].as_object() {
                let count = |k: &str| info[k].as_i64().expect("count");
                assert!(
                    count("page_from_keywords_count_top_3")
                        <= count("page_from_keywords_count_top_10")
                );
                assert!(
                    count("page_from_keywords_count_top_10")
                        <= count("page_from_keywords_count_top_100")
                );
            }
            for key in ["rank", "page_from_rank", "domain_from_rank"] {
                if let Some(rank) = item[key].as_i64() {
                    assert!((0..=1000).contains(&rank), "{key} {rank}");
                }
            }
        }
        assert!(domains.len() > 1000, "{} referring domains", domains.len());
    }

    #[test]
    fn two_thousand_items_cover_the_awkward_cases() {
        let items = sample(2000);
        let count = |f: &dyn Fn(&Map<String, Value>) -> bool| items.iter().filter(|v| f(v)).count();
        let big = |v: &Value| v.as_i64().is_some_and(|n| n > i64::from(i32::MAX));
        let huge = count(&|v| big(&v["page_from_size"]) || big(&v["links_count"]));
        assert!(
            (8..=40).contains(&huge),
            "{huge} items with a count above 2^31"
        );
        let v2 = count(&|v| v.get("link_quality_v2").is_some_and(Value::is_number));
        assert!((20..=70).contains(&v2), "{v2} with link_quality_v2");
        let top_1000 = count(&|v| {
            v["ranked_keywords_info"]
                .get("page_from_keywords_count_top_1000")
                .is_some()
        });
        assert!((5..=40).contains(&top_1000), "{top_1000} with top_1000");
        let anchor_has = |c: char| count(&|v| v["anchor"].as_str().is_some_and(|a| a.contains(c)));
        for c in ['"', ',', '\n', '\t', '\\', '🚀'] {
            assert!(anchor_has(c) > 3, "anchors with {c:?}");
        }
        let unicode_titles =
            count(&|v| v["page_from_title"].as_str().is_some_and(|t| !t.is_ascii()));
        assert!(unicode_titles > 20, "{unicode_titles} unicode titles");
        assert!(count(&|v| v["prev_seen"].is_null()) > 400);
        assert!(count(&|v| v["domain_from_platform_type"].is_null()) > 40);
        assert!(
            count(&|v| v["domain_from_platform_type"]
                .as_array()
                .is_some_and(Vec::is_empty))
                > 80
        );
        assert!(count(&|v| v["attributes"].is_null()) > 400);
        assert!(count(&|v| v["attributes"].as_array().is_some_and(Vec::is_empty)) > 150);
        assert!(
            count(&|v| v["attributes"]
                .as_array()
                .is_some_and(|a| a.contains(&Value::from("nofollow"))))
                > 100
        );
        assert!(count(&|v| v["dofollow"] == false) > 100);
        assert!(count(&|v| v["item_type"] == "image" && v["image_url"].is_string()) > 100);
        let indirect = count(&|v| v["indirect_link_path"].is_array());
        assert!((80..=250).contains(&indirect), "{indirect} indirect links");
        let null_scalars =
            count(&|v| v["rank"].is_null() || v["url_from"].is_null() || v["first_seen"].is_null());
        assert!(null_scalars > 5, "{null_scalars} with a null scalar");
        assert!(count(&|v| v["domain_from_is_ip"] == true) > 5);
    }

    #[test]
    fn a_thousand_items_weigh_what_an_api_page_weighs() {
        let mut o = Json::default();
        let mut w = ItemWriter::new(42, "example.com", "as_is");
        for position in 0..1000 {
            w.write(&mut o, position);
        }
        let bytes = o.into_string().len();
        assert!((1_000_000..=1_600_000).contains(&bytes), "{bytes} bytes");
    }

    #[test]
    fn page_targets_are_what_every_link_points_at() {
        let target = "https://example.com/pricing";
        for position in 0..50 {
            let v = item(1, target, "as_is", position);
            assert_eq!(
                v["domain_to"].as_str().unwrap_or("example.com"),
                "example.com"
            );
            assert_eq!(v["url_to"].as_str().unwrap_or(target), target);
        }
    }

    #[test]
    fn labels_give_totals_and_failures() {
        assert_eq!(items_label("items25000.example.com"), Some(25_000));
        assert_eq!(items_label("items0.example.org"), Some(0));
        assert_eq!(items_label("https://items7.example.org/page"), Some(7));
        assert_eq!(items_label("failat2.items5.example.com"), Some(5));
        assert_eq!(items_label("items.example.com"), None);
        assert_eq!(items_label("items12x.example.com"), None);
        assert_eq!(failat_label("failat2500.items5000.example.com"), Some(2500));
        assert_eq!(failat_label("items5000.failat0.example.com"), Some(0));
        assert_eq!(
            failat_label("example.com/failat3"),
            None,
            "labels of the host only"
        );
        assert_eq!(total(1, "items25000.example.com", "as_is"), 25_000);
        assert_eq!(total(1, "items25000.example.com", "one_per_domain"), 8_334);
        assert_eq!(total(1, "items25000.example.com", "one_per_anchor"), 12_500);
        assert_eq!(total(1, "items10000000.example.com", "as_is"), 10_000_000);
        let hashed: Vec<u64> = (0..200)
            .map(|i| total(3, &format!("site{i}.com"), "as_is"))
            .collect();
        assert!(hashed.iter().all(|n| *n <= 3000));
        assert!(
            hashed.iter().collect::<HashSet<_>>().len() > 150,
            "totals vary"
        );
        assert_eq!(total(3, "site1.com", "as_is"), hashed[1], "stable");
        assert!(total(3, "site1.com", "one_per_domain") <= hashed[1]);
    }

    #[test]
    fn dates_are_written_like_chrono_writes_them() {
        let mut r = Rng::new(5);
        for secs in [
            0,
            EARLIEST,
            LATEST,
            951_782_400,
            1_709_164_799,
            4_102_444_800,
        ]
        .into_iter()
        .chain((0..2000).map(|_| r.range(0, 4_102_444_800)))
        {
            let mut s = String::new();
            push_api_date(&mut s, secs);
            let expected = DateTime::from_timestamp(secs, 0).map(format_api_datetime);
            assert_eq!(Some(s), expected, "{secs}");
        }
    }
}
