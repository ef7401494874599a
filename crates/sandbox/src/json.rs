//! A minimal JSON writer for large answers: values go straight into one
//! pre-sized `String`, with no `Value` tree in between.
//!
//! Separators are implicit: every value and key is preceded by a comma
//! unless it opens a container or follows a key. Writing stays infallible
//! (a `String` cannot fail to grow) and the output is always valid UTF-8.

use serde_json::Value;

/// A JSON text under construction.
#[derive(Debug, Default)]
pub(crate) struct Json(String);

impl Json {
    /// An empty writer with room for `bytes` bytes.
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self(String::with_capacity(bytes))
    }

    /// The text written so far.
    pub(crate) fn into_string(self) -> String {
        self.0
    }

    /// A comma, unless the next token opens a container's first entry or
    /// follows a key.
    fn sep(&mut self) {
        if !matches!(self.0.as_bytes().last(), None | Some(b'{' | b'[' | b':')) {
            self.0.push(',');
        }
    }

    pub(crate) fn begin_object(&mut self) {
        self.sep();
        self.0.push('{');
    }

    pub(crate) fn end_object(&mut self) {
        self.0.push('}');
    }

    pub(crate) fn begin_array(&mut self) {
        self.sep();
        self.0.push('[');
    }

    pub(crate) fn end_array(&mut self) {
        self.0.push(']');
    }

    /// An object key. `name` is one of the writer's own field names: plain
    /// ASCII that needs no escaping.
    pub(crate) fn key(&mut self, name: &str) {
        self.sep();
        self.0.push('"');
        self.0.push_str(name);
        self.0.push_str("\":");
    }

    /// A string value, escaped as `serde_json` escapes it.
    pub(crate) fn str(&mut self, s: &str) {
        self.sep();
        self.0.push('"');
        escape_into(&mut self.0, s);
        self.0.push('"');
    }

    /// A string, or `null`.
    pub(crate) fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.null(),
        }
    }

    pub(crate) fn int(&mut self, n: i64) {
        self.sep();
        if n < 0 {
            self.0.push('-');
        }
        push_digits(&mut self.0, n.unsigned_abs());
    }

    pub(crate) fn uint(&mut self, n: u64) {
        self.sep();
        push_digits(&mut self.0, n);
    }

    /// A number as `serde_json` writes it (shortest round-trip form);
    /// `null` when not finite.
    pub(crate) fn float(&mut self, x: f64) {
        self.raw(&Value::from(x).to_string());
    }

    pub(crate) fn bool(&mut self, b: bool) {
        self.sep();
        self.0.push_str(if b { "true" } else { "false" });
    }

    pub(crate) fn null(&mut self) {
        self.sep();
        self.0.push_str("null");
    }

    /// A value that is already JSON text.
    pub(crate) fn raw(&mut self, json: &str) {
        self.sep();
        self.0.push_str(json);
    }

    /// A string value assembled by `build` in `scratch` (a buffer reused
    /// between calls), then escaped into the text.
    pub(crate) fn str_from(&mut self, scratch: &mut String, build: impl FnOnce(&mut String)) {
        scratch.clear();
        build(scratch);
        self.str(scratch);
    }
}

/// Appends the decimal digits of `n`.
pub(crate) fn push_digits(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for d in &digits[i..] {
        out.push(char::from(*d));
    }
}

/// Appends `s` escaped for a JSON string: `"`, `\` and control characters
/// below U+0020, as `serde_json` does; everything else verbatim.
fn escape_into(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0C => "\\f",
            0x00..=0x1F => "",
            _ => continue,
        };
        // Every escaped byte is ASCII, so `i` is a character boundary.
        out.push_str(&s[start..i]);
        if escaped.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        } else {
            out.push_str(escaped);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strings_escape_exactly_like_serde_json() {
        let awkward = [
            "plain",
            "",
            "\"quoted\", with comma",
            "line\nbreak\r\n and\ttab",
            "back\\slash \\\" mix",
            "bell\u{7} nul\u{0} unit\u{1f} del\u{7f}",
            "\u{8}\u{c}",
            "Über café Привет 日本語 🚀 👨\u{200d}👩\u{200d}👧",
        ];
        for s in awkward {
            let mut j = Json::default();
            j.str(s);
            assert_eq!(j.into_string(), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn containers_get_their_commas() {
        let mut j = Json::default();
        j.begin_object();
        j.key("a");
        j.int(-12);
        j.key("b");
        j.begin_array();
        j.uint(u64::MAX);
        j.null();
        j.bool(true);
        j.begin_object();
        j.end_object();
        j.begin_array();
        j.end_array();
        j.end_array();
        j.key("c");
        j.opt_str(None);
        j.key("d");
        j.float(0.05);
        j.key("e");
        j.float(f64::NAN);
        j.key("f");
        j.raw("{\"x\":[1]}");
        j.key("g");
        let mut scratch = String::new();
        j.str_from(&mut scratch, |s| s.push_str("built \"here\""));
        j.end_object();
        let text = j.into_string();
        let value: Value = serde_json::from_str(&text).expect(&text);
        assert_eq!(
            value,
            json!({"a": -12, "b": [u64::MAX, null, true, {}, []], "c": null, "d": 0.05,
                   "e": null, "f": {"x": [1]}, "g": "built \"here\""})
        );
        let mut j = Json::default();
        j.int(i64::MIN);
        assert_eq!(j.into_string(), i64::MIN.to_string());
        let mut j = Json::default();
        j.uint(0);
        assert_eq!(j.into_string(), "0");
    }
}
