//! What Go's `encoding/json` accepts when it decodes a JSON value into the router's typed
//! request structs, checked on a `serde_json::Value`: a field of the wrong JSON type fails
//! the whole body, `null` is the zero value, and a key names a struct field exactly or
//! ignoring ASCII case. (Exotic differences: Go lets the last of several case-variant keys
//! win and also folds the Kelvin and long-s signs; here the exact key wins, else the
//! first case-variant.)

use serde_json::{Map, Value};

/// A check's result: the error is Go's wording, as far as it goes.
pub(super) type R<T> = Result<T, String>;

/// The struct field `name` of an object as Go's decoder finds it; `None` when absent,
/// `null`, or when `v` is not an object.
pub(super) fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(name)
        .or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
        .filter(|v| !v.is_null())
}

/// The kind of a JSON value in Go's error messages.
pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Go's `UnmarshalTypeError` text.
pub(super) fn mismatch(v: &Value, ty: &str, at: &str) -> String {
    format!("json: cannot unmarshal {} into Go struct field {at} of type {ty}", kind(v))
}

/// The body decoded into a struct (or a `map[string]any`): an object, or `null`.
pub(super) fn top_level(v: &Value, ty: &str) -> R<()> {
    match v {
        Value::Object(_) | Value::Null => Ok(()),
        _ => Err(format!("json: cannot unmarshal {} into Go value of type {ty}", kind(v))),
    }
}

/// A struct-typed field: an object (absent and `null` are the zero struct).
pub(super) fn structure<'a>(v: Option<&'a Value>, ty: &str, at: &str) -> R<Option<&'a Map<String, Value>>> {
    match v {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(mismatch(other, ty, at)),
    }
}

/// A `string` field (absent and `null` are "").
pub(super) fn string<'a>(v: Option<&'a Value>, at: &str) -> R<&'a str> {
    match v {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(mismatch(other, "string", at)),
    }
}

/// A `bool` or `*bool` field (absent and `null` are unset).
pub(super) fn boolean(v: Option<&Value>, at: &str) -> R<Option<bool>> {
    match v {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(mismatch(other, "bool", at)),
    }
}

/// A slice field (absent and `null` are empty).
pub(super) fn slice<'a>(v: Option<&'a Value>, ty: &str, at: &str) -> R<&'a [Value]> {
    match v {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(mismatch(other, ty, at)),
    }
}

/// A `map[string]...` field (absent and `null` are empty).
pub(super) fn map<'a>(v: Option<&'a Value>, ty: &str, at: &str) -> R<Option<&'a Map<String, Value>>> {
    structure(v, ty, at)
}

/// An `int` (or `int64`) field: an integer literal that fits (absent and `null` are 0;
/// `1.0` and `1e3` are refused, as Go refuses them).
pub(super) fn int(v: Option<&Value>, at: &str) -> R<i64> {
    match v {
        None => Ok(0),
        Some(Value::Number(n)) => {
            n.as_i64().ok_or_else(|| format!("json: cannot unmarshal number {n} into Go struct field {at} of type int"))
        }
        Some(other) => Err(mismatch(other, "int", at)),
    }
}

/// A `float64` element (`null` is 0).
pub(super) fn float(v: &Value, at: &str) -> R<f64> {
    match v {
        Value::Null => Ok(0.0),
        Value::Number(n) => Ok(n.as_f64().unwrap_or_default()),
        other => Err(mismatch(other, "float64", at)),
    }
}

/// The router's `MaxOutputTokensFromPayload` on a decoded `map[string]any`: the first of
/// `keys` (exact keys: a map, not a struct) holding a non-negative integral number.
pub(super) fn max_output_tokens(m: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| {
        let f = m.get(*k)?.as_f64()?;
        (f >= 0.0 && f.trunc() == f).then_some(f as u64)
    })
}

/// `bodyMap[key].(string)`: an exact key of the decoded map.
pub(super) fn map_string<'a>(body: &'a Value, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str)
}

/// `bodyMap["stream"].(bool)` and true.
pub(super) fn map_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool) == Some(true)
}

/// A float as Go's `%v` prints it (`strconv.FormatFloat(f, 'g', -1, 64)`): the shortest
/// digits, in exponent form (two exponent digits at least) when the exponent is below -4
/// or at least 6 (`4.294967296e+09`).
pub(super) fn go_float_v(f: f64) -> String {
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((e.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        return format!("{f}");
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_match_as_go_matches_them() {
        let v = json!({"Messages": [1], "model": null, "exact": 1, "EXACT": 2});
        assert_eq!(field(&v, "messages"), Some(&json!([1])));
        assert_eq!(field(&v, "model"), None);
        assert_eq!(field(&v, "exact"), Some(&json!(1)));
        assert_eq!(field(&json!([1]), "x"), None);
    }

    #[test]
    fn floats_print_as_go_percent_v() {
        for (f, s) in [
            (-1.0, "-1"),
            (1.5, "1.5"),
            (4294967296.0, "4.294967296e+09"),
            (1e6, "1e+06"),
            (123456.0, "123456"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e100, "1e+100"),
        ] {
            assert_eq!(go_float_v(f), s, "{f}");
        }
    }

    #[test]
    fn ints_refuse_what_go_refuses() {
        assert_eq!(int(Some(&json!(3)), "x"), Ok(3));
        assert_eq!(int(None, "x"), Ok(0));
        assert!(int(Some(&json!(1.0)), "x").is_err());
        assert!(int(Some(&json!("1")), "x").is_err());
        assert_eq!(max_output_tokens(&json!({"a": -1, "b": 2.5, "c": 7.0}), &["a", "b", "c"]), Some(7));
        assert_eq!(max_output_tokens(&json!({"A": 7}), &["a"]), None);
    }
}
