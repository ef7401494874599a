//! File names of partitions: a pipeline and a target turned into a name that
//! is safe on every file system, reversible while short, and bounded.

use std::hash::Hasher;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// The longest stem [`file_stem`] returns, in bytes. With `.parquet` and the
/// temporary prefix and suffix a name stays well under the 255 bytes file
/// systems allow.
pub const MAX_STEM_BYTES: usize = 200;

/// Length of the `~` + 16 hex digits that end a shortened stem.
const HASH_SUFFIX_BYTES: usize = 17;

/// The bytes that are percent-encoded: all but `A-Z a-z 0-9 . - _` (and
/// every non-ASCII byte, which `percent_encoding` always encodes).
const ENCODED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'-').remove(b'_');

/// The file stem of a partition: `<pipeline>__<target>`, both percent-encoded.
///
/// Bytes `A-Z a-z 0-9 . - _` are kept; every other byte (`/`, `:`, `?`, `%`,
/// non-ASCII, …) becomes `%XX` with upper-case hex, so a domain such as
/// `example.com` is unchanged and a URL such as
/// `https://www.rust-lang.org/learn?x=1` becomes
/// `https%3A%2F%2Fwww.rust-lang.org%2Flearn%3Fx%3D1`. A leading `.` is encoded
/// too, so a stem never names a hidden file.
///
/// When the encoded stem is longer than [`MAX_STEM_BYTES`], it is cut (never
/// inside a `%XX` escape) and ends in `~` and the 16 hex digits of the 64-bit
/// FNV-1a hash of the pipeline and the full target: distinct partitions keep
/// distinct names, and `~` marks the name as shortened (it is never produced
/// by the encoding itself).
pub fn file_stem(pipeline: &str, target: &str) -> String {
    let mut stem = String::with_capacity(pipeline.len() + target.len() + 2);
    stem.extend(utf8_percent_encode(pipeline, ENCODED));
    stem.push_str("__");
    stem.extend(utf8_percent_encode(target, ENCODED));
    if stem.starts_with('.') {
        stem.replace_range(..1, "%2E");
    }
    if stem.len() <= MAX_STEM_BYTES {
        return stem;
    }
    let mut cut = MAX_STEM_BYTES - HASH_SUFFIX_BYTES;
    // The encoded stem is ASCII; step back so that no escape is split.
    let bytes = stem.as_bytes();
    if bytes[cut - 1] == b'%' {
        cut -= 1;
    } else if bytes[cut - 2] == b'%' {
        cut -= 2;
    }
    stem.truncate(cut);
    // The `fnv` crate's hasher is 64-bit FNV-1a, stable across releases and
    // platforms: names written by earlier versions stay the same.
    let mut hash = fnv::FnvHasher::default();
    hash.write(pipeline.as_bytes());
    hash.write(&[0]);
    hash.write(target.as_bytes());
    stem.push_str(&format!("~{:016x}", hash.finish()));
    stem
}

/// Whether `byte` is kept as is in a file name: the complement of
/// [`ENCODED`] (a test holds the two together).
fn is_kept(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_')
}

/// Whether a caller-given stem is safe as a file name: not empty, at most
/// [`MAX_STEM_BYTES`], only bytes [`file_stem`] can produce, no leading `.`.
pub(crate) fn stem_problem(stem: &str) -> Option<&'static str> {
    if stem.is_empty() {
        Some("it is empty")
    } else if stem.len() > MAX_STEM_BYTES {
        Some("it is longer than 200 bytes")
    } else if stem.starts_with('.') {
        Some("it starts with `.`")
    } else if !stem.bytes().all(|b| is_kept(b) || b == b'%' || b == b'~') {
        Some("use only A-Z, a-z, 0-9, `.`, `-`, `_`, `%`, `~`")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inverse of the encoding, for stems that were not shortened.
    fn decode(encoded: &str) -> String {
        percent_encoding::percent_decode_str(encoded)
            .decode_utf8()
            .unwrap()
            .into_owned()
    }

    fn fnv(bytes: &[u8]) -> u64 {
        let mut hash = fnv::FnvHasher::default();
        hash.write(bytes);
        hash.finish()
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn exactly_letters_digits_dot_dash_and_underscore_are_kept() {
        for byte in 0..=u8::MAX {
            let kept = byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_');
            assert_eq!(is_kept(byte), kept, "{byte:#04x}");
            let encoded: String = percent_encoding::percent_encode(&[byte], ENCODED).collect();
            let expected = if kept {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            };
            assert_eq!(encoded, expected, "{byte:#04x}");
            if byte.is_ascii() {
                let stem = file_stem("p", &char::from(byte).to_string());
                assert_eq!(stem, format!("p__{expected}"), "{byte:#04x}");
            }
        }
    }

    #[test]
    fn domains_are_unchanged() {
        assert_eq!(file_stem("nightly", "example.com"), "nightly__example.com");
        assert_eq!(
            file_stem("demo-1", "xn--bcher-kva.de"),
            "demo-1__xn--bcher-kva.de"
        );
    }

    #[test]
    fn urls_are_percent_encoded_and_reversible() {
        let url = "https://www.rust-lang.org/learn?x=1";
        let stem = file_stem("nightly", url);
        assert_eq!(
            stem,
            "nightly__https%3A%2F%2Fwww.rust-lang.org%2Flearn%3Fx%3D1"
        );
        let target = stem.strip_prefix("nightly__").unwrap();
        assert_eq!(decode(target), url);
    }

    #[test]
    fn percent_and_non_ascii_bytes_are_encoded() {
        let stem = file_stem("p", "https://a.example/%20/ä~");
        assert_eq!(stem, "p__https%3A%2F%2Fa.example%2F%2520%2F%C3%A4%7E");
        assert_eq!(decode(&stem["p__".len()..]), "https://a.example/%20/ä~");
    }

    #[test]
    fn no_stem_contains_a_slash_or_starts_with_a_dot() {
        let long = format!("https://example.com/{}", "../".repeat(200));
        for (pipeline, target) in [
            (".hidden", "example.com"),
            ("", ".."),
            ("p", "../../etc/passwd"),
            ("p", "a\\b\0c"),
            ("p", long.as_str()),
            ("..", "/"),
        ] {
            let stem = file_stem(pipeline, target);
            assert!(!stem.contains('/'), "{stem}");
            assert!(!stem.contains('\\'), "{stem}");
            assert!(!stem.starts_with('.'), "{stem}");
            assert!(stem.len() <= MAX_STEM_BYTES, "{stem}");
            assert_eq!(stem_problem(&stem), None, "{stem}");
        }
        assert_eq!(file_stem(".p", "x"), "%2Ep__x");
    }

    #[test]
    fn long_urls_are_bounded_and_stay_distinct() {
        let base = format!("https://example.com/{}", "a".repeat(400));
        let first = file_stem("nightly", &format!("{base}?page=1"));
        let second = file_stem("nightly", &format!("{base}?page=2"));
        assert_ne!(first, second);
        for stem in [&first, &second] {
            assert_eq!(stem.len(), MAX_STEM_BYTES);
            assert_eq!(stem.as_bytes()[MAX_STEM_BYTES - HASH_SUFFIX_BYTES], b'~');
            assert!(stem.starts_with("nightly__https%3A%2F%2Fexample.com%2Faaa"));
        }
        // Stable: the same partition always gets the same name.
        assert_eq!(first, file_stem("nightly", &format!("{base}?page=1")));
        // The same long target in another pipeline is another file.
        assert_ne!(first, file_stem("nightly2", &format!("{base}?page=1")));
    }

    #[test]
    fn shortening_never_splits_an_escape() {
        // Every byte encodes to three; try each alignment of the cut.
        for pad in 0..3 {
            let target = format!("{}{}", "a".repeat(pad), "/".repeat(300));
            let stem = file_stem("p", &target);
            let (head, hash) = stem.rsplit_once('~').unwrap();
            assert_eq!(hash.len(), 16);
            let encoded = &head["p__".len()..];
            assert!(target.starts_with(&decode(encoded)), "{stem}");
            assert!(stem.len() <= MAX_STEM_BYTES);
        }
    }

    #[test]
    fn a_stem_of_exactly_the_limit_is_kept_whole() {
        let target = "a".repeat(MAX_STEM_BYTES - "p__".len());
        let stem = file_stem("p", &target);
        assert_eq!(stem.len(), MAX_STEM_BYTES);
        assert!(!stem.contains('~'));
        let longer = file_stem("p", &format!("{target}a"));
        assert!(longer.contains('~'));
        assert!(longer.len() <= MAX_STEM_BYTES);
    }

    #[test]
    fn caller_stems_are_checked() {
        assert_eq!(
            stem_problem("nightly__0190b2a4-7c1e-7000-8000-000000000000"),
            None
        );
        assert!(stem_problem("").is_some());
        assert!(stem_problem(".nightly").is_some());
        assert!(stem_problem("../x").is_some());
        assert!(stem_problem("a/b").is_some());
        assert!(stem_problem(&"a".repeat(MAX_STEM_BYTES + 1)).is_some());
    }
}
