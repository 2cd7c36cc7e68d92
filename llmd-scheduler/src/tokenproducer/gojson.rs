//! What Go's `encoding/json` does to a request body, as far as the estimate backend sees it.
//!
//! llm-d-router decodes a body with `json.Unmarshal` into typed structs and packs the bytes
//! of what it reads, or of `json.Marshal` re-encodings of parts of it, into pseudo-tokens.
//! To produce the same bytes this module reproduces both ends:
//!
//! - a parser that accepts what Go's accepts (RFC 8259, no trailing data), decodes strings
//!   as Go does (invalid UTF-8 and lone surrogates become U+FFFD), keeps document order and
//!   each value's raw bytes (a `json.RawMessage` is those bytes verbatim);
//! - Go's struct field matching: a key names a field exactly or case-folded, and the last
//!   such key in document order wins;
//! - Go's encoder for values decoded into `any` (map keys sorted, ES6 number format,
//!   HTML-safe string escapes) and for raw messages (compacted, HTML-escaped).
//!
//! Not reproduced (exotic): Go merges, rather than replaces, a struct or slice field whose
//! key repeats in one object; Go allows nesting 10 000 deep, this parser [`MAX_DEPTH`].

use std::collections::BTreeMap;

/// Deepest nesting accepted. Go's limit is 10 000; recursion that deep could overflow a
/// small thread stack here, and no real request nests past a few dozen levels.
pub(crate) const MAX_DEPTH: usize = 1000;

/// A parsed JSON value with the bytes it was parsed from.
#[derive(Debug)]
pub(crate) struct Node<'a> {
    /// The value's bytes in the input, from its first to its last byte.
    pub(crate) raw: &'a [u8],
    /// The value.
    pub(crate) val: Val<'a>,
}

/// A JSON value; objects keep their members in document order, duplicates included.
#[derive(Debug)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    /// The number's literal text (JSON number grammar).
    Num(&'a str),
    /// The decoded string.
    Str(String),
    Arr(Vec<Node<'a>>),
    Obj(Vec<(String, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// The struct field `name` (ASCII lower-case) of an object, as Go's decoder fills it: the
    /// last member whose key equals `name` or case-folds to it. `None` when absent or when
    /// this is not an object.
    pub(crate) fn field(&self, name: &str) -> Option<&Node<'a>> {
        let Val::Obj(members) = &self.val else {
            return None;
        };
        members.iter().rev().find(|(k, _)| fold_eq(k, name)).map(|(_, v)| v)
    }

    /// Whether the value is JSON `null`.
    pub(crate) fn is_null(&self) -> bool {
        matches!(self.val, Val::Null)
    }

    /// The kind of value, for error messages (Go's words).
    pub(crate) fn kind(&self) -> &'static str {
        match self.val {
            Val::Null => "null",
            Val::Bool(_) => "bool",
            Val::Num(_) => "number",
            Val::Str(_) => "string",
            Val::Arr(_) => "array",
            Val::Obj(_) => "object",
        }
    }
}

/// Whether `key` names the field `name` for Go: equal, or equal under simple case folding.
/// `name` is ASCII lower-case; the only non-ASCII runes folding onto ASCII letters are
/// KELVIN SIGN (k) and LATIN SMALL LETTER LONG S (s).
pub(crate) fn fold_eq(key: &str, name: &str) -> bool {
    let fold = |c: char| match c {
        '\u{212A}' => 'k',
        '\u{17F}' => 's',
        c => c.to_ascii_lowercase(),
    };
    let mut k = key.chars().map(fold);
    let mut n = name.chars().map(fold);
    loop {
        match (k.next(), n.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Parses one JSON value filling `src`, surrounding whitespace allowed (`json.Unmarshal`).
pub(crate) fn parse(src: &[u8]) -> Result<Node<'_>, String> {
    let mut p = Parser { src, pos: 0 };
    p.skip_ws();
    let node = p.value(0)?;
    p.skip_ws();
    if p.pos < src.len() {
        return Err(format!("invalid character {} after top-level value", p.describe()));
    }
    Ok(node)
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn skip_ws(&mut self) {
        while matches!(self.src.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    // The byte at pos as Go's syntax errors quote it.
    fn describe(&self) -> String {
        match self.src.get(self.pos) {
            Some(&c) if c.is_ascii_graphic() || c == b' ' => format!("'{}'", c as char),
            Some(&c) => format!("'\\x{c:02x}'"),
            None => "EOF".to_string(),
        }
    }

    fn err_eof_or(&self, ctx: &str) -> String {
        if self.pos >= self.src.len() {
            "unexpected end of JSON input".to_string()
        } else {
            format!("invalid character {} {ctx}", self.describe())
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node<'a>, String> {
        let start = self.pos;
        let Some(&c) = self.src.get(self.pos) else {
            return Err("unexpected end of JSON input".to_string());
        };
        let val = match c {
            b'{' | b'[' if depth >= MAX_DEPTH => {
                return Err(format!("exceeded max depth {MAX_DEPTH}"));
            }
            b'{' => self.object(depth + 1)?,
            b'[' => self.array(depth + 1)?,
            b'"' => Val::Str(self.string()?),
            b't' => self.literal(b"true", Val::Bool(true))?,
            b'f' => self.literal(b"false", Val::Bool(false))?,
            b'n' => self.literal(b"null", Val::Null)?,
            b'-' | b'0'..=b'9' => Val::Num(self.number()?),
            _ => return Err(self.err_eof_or("looking for beginning of value")),
        };
        Ok(Node { raw: &self.src[start..self.pos], val })
    }

    fn literal(&mut self, word: &[u8], val: Val<'a>) -> Result<Val<'a>, String> {
        for &w in word {
            if self.src.get(self.pos) != Some(&w) {
                return Err(self.err_eof_or("in literal"));
            }
            self.pos += 1;
        }
        Ok(val)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.src.get(self.pos), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<&'a str, String> {
        let start = self.pos;
        if self.src.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.src.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err_eof_or("in numeric literal")),
        }
        if self.src.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.err_eof_or("after decimal point in numeric literal"));
            }
        }
        if matches!(self.src.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.src.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.err_eof_or("in exponent of numeric literal"));
            }
        }
        std::str::from_utf8(&self.src[start..self.pos]).map_err(|e| e.to_string())
    }

    // Four hex digits at `at`, as Go's getu4.
    fn hex4(&self, at: usize) -> Option<u32> {
        let h = self.src.get(at..at + 4)?;
        let s = std::str::from_utf8(h).ok()?;
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16).ok()
    }

    // A string at pos (on its opening quote), decoded as Go's unquote does.
    fn string(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(&b) = self.src.get(self.pos) else {
                return Err("unexpected end of JSON input".to_string());
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    break;
                }
                b'\\' => {
                    let esc = self.src.get(self.pos + 1).copied();
                    let simple = match esc {
                        Some(b'"') => Some(b'"'),
                        Some(b'\\') => Some(b'\\'),
                        Some(b'/') => Some(b'/'),
                        Some(b'b') => Some(0x08),
                        Some(b'f') => Some(0x0c),
                        Some(b'n') => Some(b'\n'),
                        Some(b'r') => Some(b'\r'),
                        Some(b't') => Some(b'\t'),
                        _ => None,
                    };
                    if let Some(c) = simple {
                        out.push(c);
                        self.pos += 2;
                        continue;
                    }
                    if esc != Some(b'u') {
                        self.pos += 1;
                        return Err(self.err_eof_or("in string escape code"));
                    }
                    let Some(r) = self.hex4(self.pos + 2) else {
                        self.pos += 2;
                        return Err(self.err_eof_or("in \\u hexadecimal character escape"));
                    };
                    self.pos += 6;
                    let mut ch = char::from_u32(r);
                    if (0xD800..0xE000).contains(&r) {
                        // A surrogate: a valid pair is consumed whole, anything else is
                        // U+FFFD and the next escape stands on its own.
                        ch = Some('\u{FFFD}');
                        if (0xD800..0xDC00).contains(&r)
                            && self.src.get(self.pos) == Some(&b'\\')
                            && self.src.get(self.pos + 1) == Some(&b'u')
                            && let Some(r2) = self.hex4(self.pos + 2)
                            && (0xDC00..0xE000).contains(&r2)
                        {
                            ch = char::from_u32(0x10000 + ((r - 0xD800) << 10) + (r2 - 0xDC00));
                            self.pos += 6;
                        }
                    }
                    let ch = ch.unwrap_or('\u{FFFD}');
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return Err(format!("invalid character {} in string literal", self.describe())),
                0x20..=0x7f => {
                    out.push(b);
                    self.pos += 1;
                }
                _ => {
                    // Go's utf8.DecodeRune: a valid sequence is kept, any other byte is
                    // one U+FFFD (width 1).
                    let end = (self.pos + 4).min(self.src.len());
                    let chunk = &self.src[self.pos..end];
                    let valid = match std::str::from_utf8(chunk) {
                        Ok(s) => s.chars().next().map(char::len_utf8),
                        Err(e) if e.valid_up_to() > 0 => std::str::from_utf8(&chunk[..e.valid_up_to()])
                            .ok()
                            .and_then(|s| s.chars().next())
                            .map(char::len_utf8),
                        Err(_) => None,
                    };
                    match valid {
                        Some(n) => {
                            out.extend_from_slice(&self.src[self.pos..self.pos + n]);
                            self.pos += n;
                        }
                        None => {
                            out.extend_from_slice("\u{FFFD}".as_bytes());
                            self.pos += 1;
                        }
                    }
                }
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }

    fn array(&mut self, depth: usize) -> Result<Val<'a>, String> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.src.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(Val::Arr(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.src.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Val::Arr(items));
                }
                _ => return Err(self.err_eof_or("after array element")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Val<'a>, String> {
        self.pos += 1;
        let mut members = Vec::new();
        self.skip_ws();
        if self.src.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(Val::Obj(members));
        }
        loop {
            self.skip_ws();
            if self.src.get(self.pos) != Some(&b'"') {
                return Err(self.err_eof_or("looking for beginning of object key string"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.src.get(self.pos) != Some(&b':') {
                return Err(self.err_eof_or("after object key"));
            }
            self.pos += 1;
            self.skip_ws();
            let v = self.value(depth)?;
            members.push((key, v));
            self.skip_ws();
            match self.src.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Val::Obj(members));
                }
                _ => return Err(self.err_eof_or("after object key:value pair")),
            }
        }
    }
}

/// A number literal as Go decodes it into `float64`: out of range is an error.
pub(crate) fn go_float(lit: &str) -> Result<f64, String> {
    match lit.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        _ => Err(format!("json: cannot unmarshal number {lit} into Go value of type float64")),
    }
}

/// A number literal as Go decodes it into `int` (`strconv.ParseInt`): no fraction, no
/// exponent, within 64 bits.
pub(crate) fn go_int(lit: &str) -> Result<i64, String> {
    lit.parse::<i64>().map_err(|_| format!("json: cannot unmarshal number {lit} into Go value of type int"))
}

/// Checks a value decodes into `any`: every number fits a `float64`.
pub(crate) fn check_any(n: &Node<'_>) -> Result<(), String> {
    match &n.val {
        Val::Num(lit) => go_float(lit).map(|_| ()),
        Val::Arr(items) => items.iter().try_for_each(check_any),
        Val::Obj(members) => members.iter().try_for_each(|(_, v)| check_any(v)),
        _ => Ok(()),
    }
}

/// `json.Marshal` of a value decoded into `any`: objects became `map[string]any` (duplicate
/// keys: the last wins; encoded with keys sorted bytewise), numbers `float64`.
pub(crate) fn marshal_any(n: &Node<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    match &n.val {
        Val::Null => out.extend_from_slice(b"null"),
        Val::Bool(true) => out.extend_from_slice(b"true"),
        Val::Bool(false) => out.extend_from_slice(b"false"),
        Val::Num(lit) => out.extend_from_slice(format_float(go_float(lit)?).as_bytes()),
        Val::Str(s) => write_string(s, out),
        Val::Arr(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                marshal_any(item, out)?;
            }
            out.push(b']');
        }
        Val::Obj(members) => {
            let map: BTreeMap<&str, &Node<'_>> = members.iter().map(|(k, v)| (k.as_str(), v)).collect();
            out.push(b'{');
            for (i, (k, v)) in map.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                marshal_any(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A string as Go's encoder writes it with HTML escaping on (the `json.Marshal` default):
/// `"` `\` and the short control escapes, `\u00XX` for other control bytes and `<` `>` `&`,
/// `\u2028` `\u2029`; everything else (DEL and non-ASCII included) raw.
pub(crate) fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{0}'..='\u{1f}' | '<' | '>' | '&' => {
                let b = c as u8;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// A `float64` as Go's encoder writes it (ES6 number to string): shortest round-trip
/// digits, plain notation for 1e-6 <= |f| < 1e21, else exponent notation with a sign and
/// no zero padding (`1e+21`, `1e-7`).
pub(crate) fn format_float(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((mant, exp)) if !exp.starts_with('-') => format!("{mant}e+{exp}"),
            _ => s,
        }
    } else {
        format!("{f}")
    }
}

/// A `json.RawMessage` as `json.Marshal` writes it: whitespace outside strings dropped,
/// `<` `>` `&` and U+2028 U+2029 escaped, every other byte (string escapes included)
/// verbatim.
pub(crate) fn compact_html(raw: &[u8], out: &mut Vec<u8>) {
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if matches!(c, b'<' | b'>' | b'&') {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xf)]);
            escaped = false;
            i += 1;
            continue;
        }
        if c == 0xE2 && raw.get(i + 1) == Some(&0x80) && matches!(raw.get(i + 2), Some(0xA8 | 0xA9)) {
            out.extend_from_slice(b"\\u202");
            out.push(HEX[usize::from(raw[i + 2] & 0xf)]);
            escaped = false;
            i += 3;
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            out.push(c);
        } else if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            if c == b'"' {
                in_string = true;
            }
            out.push(c);
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marshal(src: &str) -> String {
        let n = parse(src.as_bytes()).expect("parses");
        let mut out = Vec::new();
        marshal_any(&n, &mut out).expect("marshals");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn marshal_sorts_keys_and_compacts() {
        assert_eq!(
            marshal(r#" { "type" : "function", "function": {"name":"get_weather", "a": [1, 2.50, true, null]} } "#),
            r#"{"function":{"a":[1,2.5,true,null],"name":"get_weather"},"type":"function"}"#
        );
        // Duplicate keys: the last wins, as in a Go map.
        assert_eq!(marshal(r#"{"b":1,"a":2,"b":3}"#), r#"{"a":2,"b":3}"#);
    }

    #[test]
    fn marshal_escapes_like_go() {
        assert_eq!(
            marshal(r#""<a href=\"x\">&amp;</a>\u0001\b\f\n\r\t\u007f é \u2028 \ud83d\ude00 /""#),
            "\"\\u003ca href=\\\"x\\\"\\u003e\\u0026amp;\\u003c/a\\u003e\\u0001\\b\\f\\n\\r\\t\u{7f} é \\u2028 😀 /\""
        );
        // Lone surrogates decode to U+FFFD; the next escape stands alone.
        assert_eq!(marshal(r#""\ud800\u0041\udc00""#), "\"\u{FFFD}A\u{FFFD}\"");
    }

    #[test]
    fn invalid_utf8_is_replaced_per_byte() {
        // Go's DecodeRune: a truncated sequence is one U+FFFD per byte (Rust's lossy
        // conversion would give one for both).
        let n = parse(b"\"a\xe2\x82b\xffc\"").expect("parses");
        let Val::Str(s) = n.val else { panic!("not a string") };
        assert_eq!(s, "a\u{FFFD}\u{FFFD}b\u{FFFD}c");
    }

    #[test]
    fn numbers_format_as_go() {
        for (lit, want) in [
            ("1", "1"),
            ("1.0", "1"),
            ("-0", "-0"),
            ("0.1", "0.1"),
            ("1e3", "1000"),
            ("1e20", "100000000000000000000"),
            ("1e21", "1e+21"),
            ("123456789e20", "1.23456789e+28"),
            ("0.000001", "0.000001"),
            ("0.0000001", "1e-7"),
            ("1.5e-10", "1.5e-10"),
            ("12345678901234567890", "12345678901234567000"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
        ] {
            assert_eq!(marshal(lit), want, "{lit}");
        }
        assert!(go_float("1e400").is_err());
        let n = parse(b"[1e400]").expect("parses");
        assert!(check_any(&n).is_err());
    }

    #[test]
    fn syntax_is_strict() {
        for bad in
            ["", "{", "[1,]", "{\"a\":1,}", "01", "1.", ".5", "+1", "tru", "\"a\tb\"", "{} x", "[\"\\x\"]", "NaN"]
        {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?} should not parse");
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).is_err());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn raw_spans_and_field_matching() {
        let src = br#"{"Input" : { "b": 1,  "a" : "x" } , "input": [ 1 ], "ROLE": "u", "\u017fource": 2}"#;
        let n = parse(src).expect("parses");
        // The last key folding to the field wins.
        assert_eq!(n.field("input").map(|v| v.raw), Some(&b"[ 1 ]"[..]));
        assert_eq!(n.field("role").map(|v| v.raw), Some(&b"\"u\""[..]));
        assert_eq!(n.field("source").map(|v| v.raw), Some(&b"2"[..]));
        assert!(n.field("missing").is_none());
        let Val::Obj(members) = &n.val else { panic!("not an object") };
        assert_eq!(members[0].1.raw, br#"{ "b": 1,  "a" : "x" }"#);
    }

    #[test]
    fn raw_message_compacts_with_html_escapes() {
        let mut out = Vec::new();
        compact_html(
            "{ \"type\" : \"object\",\n \"d\": \"a < b \\\" & c\u{2028}\" , \"e\\u00e9\": [ 1 , 2 ] }".as_bytes(),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"type":"object","d":"a \u003c b \" \u0026 c\u2028","e\u00e9":[1,2]}"#
        );
    }
}
