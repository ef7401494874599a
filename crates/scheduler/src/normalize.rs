//! Validation and normalisation of one target.
//!
//! A target is either a DOMAIN (`example.com`: lowercase, punycode, no
//! scheme, no `www.`) or a PAGE (an absolute `http(s)` URL with a lowercase
//! punycode host and no fragment).

use std::net::{Ipv4Addr, Ipv6Addr};

use backlinks_model::Target;
use url::{Host, Url};

/// The longest input accepted, and the longest page URL after
/// normalisation, in characters.
pub const MAX_URL_CHARS: usize = 2048;

/// The longest domain name accepted (in its ASCII form), in characters.
pub const MAX_DOMAIN_CHARS: usize = 253;

/// The longest label of a domain name, in characters.
const MAX_LABEL_CHARS: usize = 63;

const IP_ADDRESS: &str = "IP addresses are not supported as targets";
const NOT_ABSOLUTE: &str = "a page must be an absolute http(s) URL (e.g. https://example.com/page)";
const PORT: &str = "a domain takes no port";

/// Validates and normalises one raw target.
///
/// Returns the [`Target`] as it is sent to the API and stored, or the reason
/// the value is refused (lowercase, without the value itself).
///
/// Examples: `"  Example.COM "` → `example.com`; `"https://www.Example.com/"`
/// → `example.com`; `"Bücher.de"` → `xn--bcher-kva.de`;
/// `"HTTPS://EXAMPLE.com/A?b=1#frag"` → `https://example.com/A?b=1`;
/// `"https://www.rust-lang.org/learn"` stays as it is (pages keep `www.`).
pub fn normalize(raw: &str) -> Result<Target, String> {
    let value = raw.trim_matches(|c: char| c.is_whitespace() || is_invisible(c));
    if value.is_empty() {
        return Err("empty target".into());
    }
    if value.chars().count() > MAX_URL_CHARS {
        return Err(format!("longer than {MAX_URL_CHARS} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    if value.chars().any(char::is_whitespace) {
        return Err("contains whitespace".into());
    }
    if value.chars().any(is_invisible) {
        return Err("contains an invisible character".into());
    }
    if value.contains('\\') {
        return Err("contains a backslash".into());
    }
    // `..` (also percent-encoded) before the query: a URL parser would
    // silently resolve it away, and in a domain it is an empty label.
    let before_query = value.split(['?', '#']).next().unwrap_or_default();
    if before_query
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .contains("..")
    {
        return Err("contains `..`".into());
    }
    let normalized = match scheme(value) {
        Some(scheme)
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            normalize_url(value)?
        }
        Some(scheme) => {
            return Err(format!(
                "only http(s) URLs are accepted, not `{}:`",
                scheme.to_ascii_lowercase()
            ));
        }
        None => normalize_bare(value)?,
    };
    Ok(Target::from_normalized(normalized))
}

/// Characters that do not show but change the value: zero-width spaces and
/// joiners, bidirectional controls, word joiners and the byte order mark.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}'
    )
}

/// The scheme of a value that has one: `x` in `x://…`, or `http`/`https`
/// followed by a bare `:` (`http:example.com`).
fn scheme(value: &str) -> Option<&str> {
    if let Some((scheme, _)) = value.split_once("://") {
        if is_scheme(scheme) {
            return Some(scheme);
        }
    }
    let (prefix, _) = value.split_once(':')?;
    (prefix.eq_ignore_ascii_case("http") || prefix.eq_ignore_ascii_case("https")).then_some(prefix)
}

/// Whether `s` has the syntax of a URL scheme (RFC 3986 §3.1).
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// A value with an `http(s)` scheme: a DOMAIN if it names only the host,
/// otherwise a PAGE.
fn normalize_url(value: &str) -> Result<String, String> {
    let mut url = Url::parse(value).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "only http(s) URLs are accepted, not `{}:`",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a URL with credentials (user:password@) is not accepted".into());
    }
    let host = match url.host() {
        Some(Host::Domain(host)) => host.to_owned(),
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => return Err(IP_ADDRESS.into()),
        None => return Err("a URL must name a host".into()),
    };
    if url.query() == Some("") {
        url.set_query(None);
    }
    let has_fragment = url.fragment().is_some_and(|f| !f.is_empty());
    let names_only_host = matches!(url.path(), "" | "/") && url.query().is_none() && !has_fragment;
    if names_only_host {
        if url.port().is_some() {
            return Err(PORT.into());
        }
        return normalize_domain(&host, true);
    }
    let clean_host = normalize_domain(&host, false)?;
    if clean_host != host {
        url.set_host(Some(&clean_host))
            .map_err(|e| format!("not a valid URL: {e}"))?;
    }
    url.set_fragment(None);
    let page = String::from(url);
    if page.chars().count() > MAX_URL_CHARS {
        return Err(format!("longer than {MAX_URL_CHARS} characters"));
    }
    Ok(page)
}

/// A value without a scheme: it must be a domain name (a lone trailing `/`
/// is allowed and dropped).
fn normalize_bare(value: &str) -> Result<String, String> {
    let value = value.strip_suffix('/').unwrap_or(value);
    if value.contains(['/', '?', '#']) {
        return Err(NOT_ABSOLUTE.into());
    }
    if value.contains(':') {
        return Err(colon_reason(value));
    }
    normalize_domain(value, true)
}

/// Why a scheme-less value with a `:` is refused.
fn colon_reason(value: &str) -> String {
    if value.starts_with('[') || value.parse::<Ipv6Addr>().is_ok() {
        return IP_ADDRESS.into();
    }
    if let Some((_, port)) = value.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return PORT.into();
        }
    }
    match value.split_once(':') {
        Some((scheme, _)) if is_scheme(scheme) => format!(
            "only http(s) URLs are accepted, not `{}:`",
            scheme.to_ascii_lowercase()
        ),
        _ => "a domain name cannot contain `:`".into(),
    }
}

/// Normalises a host name: IDN to punycode, lowercase, no trailing `.`, and
/// (if `strip_www`) one leading `www.` dropped when two labels remain. Then
/// checks it is a domain name of at least two valid labels.
fn normalize_domain(host: &str, strip_www: bool) -> Result<String, String> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err("not a domain name".into());
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Err(IP_ADDRESS.into());
    }
    let ascii =
        idna::domain_to_ascii(host).map_err(|_| "not a valid internationalised domain name")?;
    let mut domain = ascii.strip_suffix('.').unwrap_or(&ascii);
    if domain.parse::<Ipv4Addr>().is_ok() {
        return Err(IP_ADDRESS.into());
    }
    if strip_www {
        if let Some(rest) = domain.strip_prefix("www.") {
            if rest.contains('.') {
                domain = rest;
            }
        }
    }
    if domain.len() > MAX_DOMAIN_CHARS {
        return Err(format!(
            "a domain name is at most {MAX_DOMAIN_CHARS} characters (this one has {} in punycode)",
            domain.len()
        ));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    for label in &labels {
        check_label(label)?;
    }
    if labels.len() < 2 {
        return Err("a domain needs at least two labels (e.g. example.com)".into());
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the last label of a domain cannot be a number".into());
    }
    Ok(domain.to_owned())
}

/// One label of an ASCII domain name: 1..=63 of `[a-z0-9-]`, no `-` at
/// either end.
fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("a domain name cannot have an empty label".into());
    }
    if label.len() > MAX_LABEL_CHARS {
        return Err(format!(
            "a domain label is at most {MAX_LABEL_CHARS} characters"
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!("a domain name cannot contain {c:?}"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("a domain label cannot start or end with `-`".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        match normalize(raw) {
            Ok(target) => target.as_str().to_owned(),
            Err(reason) => panic!("{raw:?} was rejected: {reason}"),
        }
    }

    fn rejected(raw: &str) -> String {
        match normalize(raw) {
            Ok(target) => panic!("{raw:?} was accepted as {target}"),
            Err(reason) => reason,
        }
    }

    #[test]
    fn domains_are_trimmed_lowercased_and_stripped_of_scheme_and_www() {
        assert_eq!(ok("  Example.COM "), "example.com");
        assert_eq!(ok("https://www.Example.com/"), "example.com");
        assert_eq!(ok("http://example.com"), "example.com");
        assert_eq!(ok("www.example.com."), "example.com");
        assert_eq!(ok("\u{a0}example.com\u{2003}"), "example.com");
        assert_eq!(ok("\u{feff}example.com"), "example.com");
        assert_eq!(ok("example.com/"), "example.com");
        assert_eq!(ok("https://example.com:443/"), "example.com");
        assert_eq!(ok("https://example.com/?"), "example.com");
        assert_eq!(ok("HTTP://Sub.Example.co.uk"), "sub.example.co.uk");
        assert_eq!(ok("www.www.example.com"), "www.example.com");
        // `www.` is a label of its own when nothing but a TLD would remain.
        assert_eq!(ok("www.com"), "www.com");
        assert_eq!(ok("xn--bcher-kva.de"), "xn--bcher-kva.de");
    }

    #[test]
    fn international_domains_become_punycode() {
        assert_eq!(ok("Bücher.de"), "xn--bcher-kva.de");
        assert_eq!(ok("münchen.de"), "xn--mnchen-3ya.de");
        assert_eq!(ok("https://www.münchen.de/"), "xn--mnchen-3ya.de");
        assert_eq!(
            ok("https://Bücher.de/Straße?q=1"),
            "https://xn--bcher-kva.de/Stra%C3%9Fe?q=1"
        );
    }

    #[test]
    fn pages_keep_path_query_port_and_www_and_lose_the_fragment() {
        assert_eq!(
            ok("https://www.rust-lang.org/learn"),
            "https://www.rust-lang.org/learn"
        );
        assert_eq!(
            ok("HTTPS://EXAMPLE.com/A?b=1#frag"),
            "https://example.com/A?b=1"
        );
        assert_eq!(ok("http://example.com:8080/x"), "http://example.com:8080/x");
        assert_eq!(ok("https://example.com:443/x"), "https://example.com/x");
        assert_eq!(ok("https://example.com/?q=a"), "https://example.com/?q=a");
        assert_eq!(
            ok("https://www.example.com./a"),
            "https://www.example.com/a"
        );
        // A fragment on the home page makes it a page, without the fragment.
        assert_eq!(ok("https://example.com/#top"), "https://example.com/");
        assert_eq!(ok("https://example.com/a,b"), "https://example.com/a,b");
    }

    #[test]
    fn malformed_values_are_rejected_with_a_reason() {
        assert_eq!(rejected("exa mple.com"), "contains whitespace");
        assert_eq!(rejected("exa\u{a0}mple.com"), "contains whitespace");
        assert_eq!(rejected("a\u{7}b.com"), "contains a control character");
        assert_eq!(
            rejected("exa\u{200b}mple.com"),
            "contains an invisible character"
        );
        assert_eq!(rejected("example.com\\x"), "contains a backslash");
        assert_eq!(rejected("../etc/passwd"), "contains `..`");
        assert_eq!(rejected("a..b.com"), "contains `..`");
        assert_eq!(rejected("https://example.com/a/%2E%2E/b"), "contains `..`");
        assert_eq!(rejected(""), "empty target");
        assert_eq!(rejected(" \t "), "empty target");
        assert_eq!(
            rejected("example"),
            "a domain needs at least two labels (e.g. example.com)"
        );
        assert_eq!(rejected("a_b.com"), "a domain name cannot contain '_'");
        assert_eq!(rejected("a@b.com"), "a domain name cannot contain '@'");
        assert_eq!(
            rejected("-a.com"),
            "a domain label cannot start or end with `-`"
        );
        assert_eq!(
            rejected(".example.com"),
            "a domain name cannot have an empty label"
        );
        assert_eq!(
            rejected("example.123"),
            "the last label of a domain cannot be a number"
        );
        assert_eq!(
            rejected(&format!("{}.com", "a".repeat(64))),
            "a domain label is at most 63 characters"
        );
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert_eq!(
            rejected("ftp://example.org"),
            "only http(s) URLs are accepted, not `ftp:`"
        );
        assert_eq!(
            rejected("mailto:someone@example.org"),
            "only http(s) URLs are accepted, not `mailto:`"
        );
        assert_eq!(rejected("example.com/page"), NOT_ABSOLUTE);
        assert_eq!(rejected("example.com?q=1"), NOT_ABSOLUTE);
        assert_eq!(rejected("//example.com"), NOT_ABSOLUTE);
        assert_eq!(
            rejected("https://user:secret@example.com/a"),
            "a URL with credentials (user:password@) is not accepted"
        );
        assert!(rejected("https://").starts_with("not a valid URL"));
    }

    #[test]
    fn ports_and_ip_addresses_are_rejected() {
        assert_eq!(rejected("example.com:8080"), PORT);
        assert_eq!(rejected("https://example.com:8443/"), PORT);
        assert_eq!(rejected("192.0.2.1"), IP_ADDRESS);
        assert_eq!(rejected("http://192.0.2.1/page"), IP_ADDRESS);
        assert_eq!(rejected("http://127.1/"), IP_ADDRESS);
        assert_eq!(rejected("[2001:db8::1]"), IP_ADDRESS);
        assert_eq!(rejected("2001:db8::1"), IP_ADDRESS);
        assert_eq!(rejected("https://[2001:db8::1]/x"), IP_ADDRESS);
    }

    #[test]
    fn long_values_are_rejected() {
        let label = "a".repeat(60);
        let domain = [label.as_str(); 5].join(".");
        assert!(rejected(&domain).starts_with("a domain name is at most 253 characters"));
        let just_fits = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(just_fits.len(), 253);
        assert_eq!(ok(&just_fits), just_fits);
        let page = format!("https://example.com/{}", "p".repeat(MAX_URL_CHARS));
        assert_eq!(rejected(&page), "longer than 2048 characters");
        // Percent-encoding can push a page past the limit.
        let page = format!("https://example.com/{}", "ü".repeat(1000));
        assert_eq!(rejected(&page), "longer than 2048 characters");
    }

    #[test]
    fn the_kind_follows_the_normalised_form() {
        use backlinks_model::TargetKind;
        assert_eq!(
            normalize("https://example.com/").map(|t| t.kind()),
            Ok(TargetKind::Domain)
        );
        assert_eq!(
            normalize("https://example.com/a").map(|t| t.kind()),
            Ok(TargetKind::Page)
        );
    }
}
