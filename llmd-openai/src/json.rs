//! Reading request bodies as Python clients write them.
//!
//! Python's `json` writes a string holding a lone UTF-16 surrogate (text sliced in the
//! middle of an emoji, bytes decoded with `surrogateescape`) as `"\ud800"`, and with
//! `ensure_ascii=False` plus `surrogatepass` as the raw bytes `ED A0 80`. Both are
//! refused by `serde_json`, whose strings are Rust strings. vLLM reads such bodies, so a
//! server here replaces each lone surrogate with U+FFFD before parsing
//! ([`replace_lone_surrogates`], [`from_slice`]).

use std::borrow::Cow;

use serde::de::DeserializeOwned;

/// The escape a lone surrogate becomes: U+FFFD, the replacement character (6 bytes, as
/// long as the escape it replaces).
const REPLACEMENT_ESCAPE: &[u8; 6] = b"\\uFFFD";
/// U+FFFD in UTF-8 (3 bytes, as long as a surrogate's own 3-byte encoding).
const REPLACEMENT_UTF8: [u8; 3] = [0xEF, 0xBF, 0xBD];

fn hex4(b: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(b.get(..4)?).ok()?;
    if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(s, 16).ok()
}

/// The code unit of a `\uXXXX` escape starting at `at`, if one is there.
fn escape_at(body: &[u8], at: usize) -> Option<u16> {
    match body.get(at..at + 2) {
        Some(b"\\u") => hex4(&body[at + 2..]),
        _ => None,
    }
}

fn is_high(u: u16) -> bool {
    (0xD800..=0xDBFF).contains(&u)
}

fn is_low(u: u16) -> bool {
    (0xDC00..=0xDFFF).contains(&u)
}

/// Rewrites every lone UTF-16 surrogate inside the JSON strings of `body` as U+FFFD:
/// a `\uD800`–`\uDFFF` escape that is not half of a high-low pair becomes `\uFFFD`, and
/// a surrogate encoded directly in (invalid) UTF-8 becomes U+FFFD's UTF-8. Both keep
/// their length. Valid pairs, escaped backslashes (`\\ud800` is a backslash and text)
/// and everything outside strings are left alone; a body with nothing to replace comes
/// back borrowed. Not a validator: malformed JSON stays malformed.
pub fn replace_lone_surrogates(body: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut replace = |at: usize, with: &[u8]| {
        let buf = out.get_or_insert_with(|| body.to_vec());
        buf[at..at + with.len()].copy_from_slice(with);
    };
    let mut in_string = false;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if !in_string {
            in_string = b == b'"';
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = false;
                i += 1;
            }
            b'\\' => match escape_at(body, i) {
                Some(u) if is_high(u) && escape_at(body, i + 6).is_some_and(is_low) => i += 12,
                Some(u) if is_high(u) || is_low(u) => {
                    replace(i, REPLACEMENT_ESCAPE);
                    i += 6;
                }
                Some(_) => i += 6,
                // Any other escape is two bytes; skipping both keeps `\\` and `\"` from
                // being read as the start of an escape or the end of the string.
                None => i += 2,
            },
            // ED A0..BF xx: a surrogate code point in UTF-8 form (CESU-8 / WTF-8).
            0xED if body.get(i + 1).is_some_and(|c| (0xA0..=0xBF).contains(c))
                && body.get(i + 2).is_some_and(|c| (0x80..=0xBF).contains(c)) =>
            {
                replace(i, &REPLACEMENT_UTF8);
                i += 3;
            }
            _ => i += 1,
        }
    }
    match out {
        Some(v) => Cow::Owned(v),
        None => Cow::Borrowed(body),
    }
}

/// Parses a request body with `serde_json` after [`replace_lone_surrogates`], so that
/// bodies Python wrote with lone surrogates parse (with U+FFFD in their place).
pub fn from_slice<T: DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
    serde_json::from_slice(&replace_lone_surrogates(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn fixed(s: &str) -> String {
        String::from_utf8(replace_lone_surrogates(s.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn lone_surrogate_escapes_become_the_replacement_character() {
        assert_eq!(fixed(r#"{"a":"x\ud800y"}"#), r#"{"a":"x\uFFFDy"}"#);
        assert_eq!(fixed(r#"{"a":"\uDFFF"}"#), r#"{"a":"\uFFFD"}"#);
        // A high surrogate followed by something other than a low one.
        assert_eq!(fixed(r#"["\ud83d\u0041"]"#), r#"["\uFFFD\u0041"]"#);
        assert_eq!(fixed(r#"["\ud83d\ud83d\ude00"]"#), r#"["\uFFFD\ud83d\ude00"]"#);
        // A low surrogate first, then a pair.
        assert_eq!(fixed(r#"["\ude00\ud83d\ude00"]"#), r#"["\uFFFD\ud83d\ude00"]"#);
        // At the very end of a truncated body.
        assert_eq!(fixed(r#"["\ud800"#), r#"["\uFFFD"#);
        let v: Value = from_slice(br#"{"prompt": "cut \ud83d here"}"#).unwrap();
        assert_eq!(v["prompt"], "cut \u{FFFD} here");
    }

    #[test]
    fn pairs_escaped_backslashes_and_non_strings_are_left_alone() {
        for s in [
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"a":"\\ud800"}"#,
            r#"{"a":"\\\\ud800"}"#,
            r#"{"a":"\"\\ud800\""}"#,
            r#"{"\\ud800":1}"#,
            r#"{"a":"\u0041\n\t\/"}"#,
            r#"[1, 2.5, true, null]"#,
        ] {
            assert!(matches!(replace_lone_surrogates(s.as_bytes()), Cow::Borrowed(_)), "{s}");
        }
        // An odd number of backslashes: the last one starts an escape.
        assert_eq!(fixed(r#"{"a":"\\\ud800"}"#), r#"{"a":"\\\uFFFD"}"#);
        // Outside a string the bytes are not an escape (and stay invalid JSON).
        assert!(matches!(replace_lone_surrogates(br#"[\ud800]"#), Cow::Borrowed(_)));
    }

    #[test]
    fn raw_surrogate_bytes_become_the_replacement_character() {
        // Python: json.dumps("\ud800", ensure_ascii=False).encode("utf-8", "surrogatepass")
        let body = b"{\"a\":\"x\xED\xA0\x80y\"}";
        let v: Value = from_slice(body).unwrap();
        assert_eq!(v["a"], "x\u{FFFD}y");
        assert!(serde_json::from_slice::<Value>(body).is_err());
        // Valid 3-byte sequences starting with ED (U+D000..U+D7FF) are not surrogates.
        let hangul = "{\"a\":\"\u{D55C}\"}";
        assert!(matches!(replace_lone_surrogates(hangul.as_bytes()), Cow::Borrowed(_)));
    }

    /// One piece of a JSON string literal's contents, with the text it decodes to when
    /// it is not a lone surrogate.
    #[derive(Debug, Clone)]
    enum Piece {
        Text(String),
        Escape(char),
        Pair(char),
        Lone(u16),
    }

    fn piece() -> impl Strategy<Value = Piece> {
        prop_oneof![
            "[a-z \\\\\"/]{0,4}".prop_map(Piece::Text),
            any::<char>().prop_map(Piece::Escape),
            (0x10000u32..=0x10FFFF).prop_map(|c| Piece::Pair(char::from_u32(c).unwrap())),
            (0xD800u16..=0xDFFF).prop_map(Piece::Lone),
        ]
    }

    /// The literal's source and the string it should read as after replacement.
    fn literal(pieces: &[Piece]) -> (String, String) {
        let mut src = String::from("\"");
        let mut want = String::new();
        for p in pieces {
            match p {
                Piece::Text(t) => {
                    let quoted = serde_json::to_string(t).unwrap();
                    src.push_str(&quoted[1..quoted.len() - 1]);
                    want.push_str(t);
                }
                Piece::Escape(c) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        src.push_str(&format!("\\u{u:04x}"));
                    }
                    want.push(*c);
                }
                Piece::Pair(c) => {
                    let mut units = [0u16; 2];
                    let us = c.encode_utf16(&mut units);
                    src.push_str(&format!("\\u{:04X}\\u{:04x}", us[0], us[1]));
                    want.push(*c);
                }
                Piece::Lone(u) => {
                    src.push_str(&format!("\\u{u:04x}"));
                    want.push('\u{FFFD}');
                }
            }
        }
        src.push('"');
        (src, want)
    }

    /// A lone high surrogate right before a lone low one (empty text between them
    /// included) forms a pair after all: such inputs are skipped rather than modelled.
    fn ambiguous(pieces: &[Piece]) -> bool {
        let units: Vec<&Piece> = pieces.iter().filter(|p| !matches!(p, Piece::Text(t) if t.is_empty())).collect();
        units.windows(2).any(|w| matches!(w, [Piece::Lone(h), Piece::Lone(l)] if is_high(*h) && is_low(*l)))
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn json_without_surrogates_is_unchanged(v in json_value(), pretty in any::<bool>()) {
            let s = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.unwrap();
            prop_assert!(matches!(replace_lone_surrogates(s.as_bytes()), Cow::Borrowed(_)));
        }

        #[test]
        fn any_surrogate_mix_parses_to_the_expected_text(
            pieces in prop::collection::vec(piece(), 0..12),
        ) {
            prop_assume!(!ambiguous(&pieces));
            let (src, want) = literal(&pieces);
            let body = format!("{{\"k\\\\\": {src}, \"n\": [1]}}");
            let fixed = replace_lone_surrogates(body.as_bytes());
            prop_assert_eq!(fixed.len(), body.len());
            let v: Value = serde_json::from_slice(&fixed).unwrap();
            prop_assert_eq!(v["k\\"].as_str(), Some(want.as_str()));
            // Negative control: without the replacement, a lone surrogate is refused,
            // so the check above can fail.
            let lone = pieces.iter().any(|p| matches!(p, Piece::Lone(_)));
            prop_assert_eq!(serde_json::from_slice::<Value>(body.as_bytes()).is_err(), lone);
        }
    }
}
