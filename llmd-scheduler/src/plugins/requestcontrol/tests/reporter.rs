//! `request-attribute-reporter` and the CEL subset.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{build, req_with};
use crate::plugins::requestcontrol::cel::{CelValue, Program, Ty};
use crate::plugins::requestcontrol::reporter::*;
use crate::plugins::requestcontrol::{ResponseBodyProcessor, ResponseContext, Usage};

fn attr(name: &str, namespace: Option<&str>, expression: &str, condition: Option<&str>) -> Value {
    let mut key = json!({"name": name});
    if let Some(ns) = namespace {
        key["namespace"] = json!(ns);
    }
    let mut a = json!({"key": key, "expression": expression});
    if let Some(c) = condition {
        a["condition"] = json!(c);
    }
    json!({"attributes": [a]})
}

#[test]
fn plugin_creation() {
    // TestPluginCreation
    let ok = |p: Value, ns: &str| {
        let r = RequestAttributeReporter::from_params(&p).unwrap();
        assert_eq!(r.namespace(), ns);
    };
    ok(attr("test-attribute", None, "usage.prompt_tokens", None), DEFAULT_NAMESPACE);
    ok(attr("test-attribute", Some("custom-ns"), "usage.prompt_tokens", None), "custom-ns");
    let bad = |p: Value, want: &str| {
        let e = RequestAttributeReporter::from_params(&p).unwrap_err();
        assert!(e.contains(want), "{p}: {e}");
    };
    bad(attr("", None, "usage.prompt_tokens", None), "attributeKey.name cannot be empty");
    bad(attr("test-attribute", None, "", None), "expression cannot be empty");
    bad(attr("test-attribute", None, "usage.prompt_tokens + -", None), "failed to compile expression");
    bad(
        attr("test-attribute", None, "usage.prompt_tokens", Some("usage.prompt_tokens > ")),
        "failed to compile condition",
    );
    bad(json!({"attributes": []}), "exactly one entry");
    bad(json!({}), "exactly one entry");
    let two = json!({"attributes": [
        {"key": {"name": "test-attribute"}, "expression": "usage.prompt_tokens"},
        {"key": {"name": "test-attribute-2"}, "expression": "usage.prompt_tokens"},
    ]});
    bad(two, "exactly one entry");
    // Strict decoding, at any depth.
    bad(json!({"attributes": [{"key": {"nam": "x"}, "expression": "1"}]}), "\"attributes[0].key.nam\"");
    bad(json!({"attribute": []}), "\"attribute\"");
    assert!(build(REQUEST_ATTRIBUTE_REPORTER, attr("a", None, "usage.total_tokens", None)).is_ok());
}

fn report(p: Value, usage: Usage, before: Option<Value>) -> Option<Value> {
    let r = RequestAttributeReporter::from_params(&p).unwrap();
    let req = req_with("r", &[]);
    let cx = ResponseContext { request: &req, result: None, target: None, metadata: None };
    let mut md: Map<String, Value> = before.and_then(|b| b.as_object().cloned()).unwrap_or_default();
    r.response_complete(&cx, &usage, &mut md);
    (!md.is_empty()).then_some(Value::Object(md))
}

#[test]
fn value_reporting() {
    // TestValueReporting
    let prompt = |n| Usage { prompt_tokens: n, ..Default::default() };
    assert_eq!(
        report(attr("prompt_tokens", None, "usage.prompt_tokens", None), prompt(15), None),
        Some(json!({"envoy.lb": {"prompt_tokens": 15.0}}))
    );
    // Zero values are not written.
    let guarded = attr("prompt_tokens", None, "usage.prompt_tokens", Some("has(usage.prompt_tokens)"));
    assert_eq!(report(guarded, prompt(0), None), None);
    // Condition not met: pre-existing metadata untouched.
    let pre = json!({"pre-existing": "data"});
    let cond = attr("prompt_tokens", None, "usage.prompt_tokens", Some("usage.completion_tokens > 0"));
    assert_eq!(report(cond, prompt(10), Some(pre.clone())), Some(pre));
    // A condition that is not a bool, a result that is not a number, a missing field.
    let non_bool = attr("prompt_tokens", None, "usage.prompt_tokens", Some("usage.prompt_tokens"));
    assert_eq!(report(non_bool, prompt(10), None), None);
    assert_eq!(report(attr("prompt_tokens", None, "'not a number'", None), prompt(10), None), None);
    assert_eq!(report(attr("prompt_tokens", None, "usage.non_existent_field", None), prompt(10), None), None);
    // has() guards over empty and partial usage.
    let total = "(has(usage.prompt_tokens) ? usage.prompt_tokens : 0) + (has(usage.completion_tokens) ? usage.completion_tokens : 0)";
    assert_eq!(report(attr("total_tokens", None, total, None), Usage::default(), None), None);
    let partial = Usage { completion_tokens: 25, ..Default::default() };
    assert_eq!(
        report(attr("total_tokens", None, total, None), partial, None),
        Some(json!({"envoy.lb": {"total_tokens": 25.0}}))
    );
}

#[test]
fn reporting_details_beyond_the_go_table() {
    // Cached tokens appear only with details; doubles truncate; other namespaces stay.
    let cached = attr("cached", Some("billing"), "usage.prompt_tokens_details.cached_tokens / 2.0", None);
    let u = Usage { prompt_tokens: 10, cached_tokens: Some(7), ..Default::default() };
    assert_eq!(
        report(cached.clone(), u, Some(json!({"envoy.lb": {"x": 1}}))),
        Some(json!({"envoy.lb": {"x": 1}, "billing": {"cached": 3.0}}))
    );
    assert_eq!(report(cached, Usage { prompt_tokens: 10, ..Default::default() }, None), None);
    // An int result counts; a uint does not (the router takes float64 or int64).
    assert_eq!(
        report(
            attr("n", None, "int(usage.total_tokens) * 2", None),
            Usage { total_tokens: 4, ..Default::default() },
            None
        ),
        Some(json!({"envoy.lb": {"n": 8.0}}))
    );
    assert_eq!(
        report(
            attr("n", None, "uint(usage.total_tokens)", None),
            Usage { total_tokens: 4, ..Default::default() },
            None
        ),
        None
    );
    // Usage from an OpenAI body.
    let u = Usage::from_json(
        &json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_tokens_details": {"cached_tokens": 2}}),
    );
    assert_eq!(u, Usage { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7, cached_tokens: Some(2) });
}

fn eval(src: &str) -> Result<CelValue, String> {
    let usage = CelValue::Map(BTreeMap::from([
        ("prompt_tokens".to_string(), CelValue::Double(10.0)),
        ("completion_tokens".to_string(), CelValue::Double(0.0)),
    ]));
    let p = Program::compile(src, &[("usage", Ty::Map)])?;
    p.eval(&BTreeMap::from([("usage".to_string(), usage)]))
}

#[test]
fn cel_subset_follows_cel_semantics() {
    use CelValue::*;
    assert_eq!(eval("1 + 2 * 3"), Ok(Int(7)));
    assert_eq!(eval("(1 + 2) * 3 - 10 / 3 % 2"), Ok(Int(8)));
    assert_eq!(eval("-7 / 2"), Ok(Int(-3)));
    assert_eq!(eval("7u + 1u"), Ok(Uint(8)));
    assert_eq!(eval("0x10"), Ok(Int(16)));
    assert_eq!(eval("1.5e1 + .5"), Ok(Double(15.5)));
    assert_eq!(eval("'a' + \"b\""), Ok(String("ab".into())));
    assert_eq!(eval("usage.prompt_tokens + 1.0"), Ok(Double(11.0)));
    assert_eq!(eval("usage['prompt_tokens'] > 5"), Ok(Bool(true)));
    // Numeric types do not mix in arithmetic, at run time (usage fields are dyn)...
    assert_eq!(eval("usage.prompt_tokens + 1"), Err("no such overload".into()));
    // ...nor at compile time when both are known.
    assert!(Program::compile("1 + 1.0", &[]).unwrap_err().contains("'_+_' applied to '(int, double)'"));
    assert!(Program::compile("'a' == 1", &[]).is_err());
    // Ordering and equality compare across numeric types.
    assert_eq!(eval("usage.completion_tokens > 0"), Ok(Bool(false)));
    assert_eq!(eval("1 < 1.5 && 2u > 1 && usage.prompt_tokens == 10"), Ok(Bool(true)));
    // Errors: overflow, division by zero, missing keys.
    assert!(eval("9223372036854775807 + 1").unwrap_err().contains("overflow"));
    assert!(eval("1 / 0").unwrap_err().contains("divide by zero"));
    assert!(eval("1 % 0").unwrap_err().contains("modulus by zero"));
    assert!(eval("0u - 1u").unwrap_err().contains("overflow"));
    assert!(eval("usage.missing").unwrap_err().contains("no such key"));
    assert_eq!(eval("1.0 / 0.0"), Ok(Double(f64::INFINITY)));
    // && and || absorb an error on either side when the other side decides.
    assert_eq!(eval("usage.missing > 0 && false"), Ok(Bool(false)));
    assert_eq!(eval("true || usage.missing > 0"), Ok(Bool(true)));
    assert!(eval("usage.missing > 0 && true").is_err());
    // has(), conversions, ternaries.
    assert_eq!(eval("has(usage.prompt_tokens) && !has(usage.total_tokens)"), Ok(Bool(true)));
    assert_eq!(eval("int(usage.prompt_tokens / 3.0)"), Ok(Int(3)));
    assert_eq!(eval("double(3) + 0.5"), Ok(Double(3.5)));
    assert_eq!(eval("string(12) + 'x'"), Ok(String("12x".into())));
    assert_eq!(eval("int('42')"), Ok(Int(42)));
    assert!(eval("int(1e300)").unwrap_err().contains("range"));
    assert_eq!(eval("usage.completion_tokens > 0 ? 1 : 2"), Ok(Int(2)));
    assert!(eval("1 ? 2 : 3").is_err());
    // Compile errors name what is wrong.
    for (src, want) in [
        ("other.x", "undeclared reference to 'other'"),
        ("has(usage)", "invalid argument to has() macro"),
        ("size(usage)", "not supported"),
        ("usage.prompt_tokens.exists(x, x)", "method calls are not supported"),
        ("[1, 2]", "not supported"),
        ("1 in usage", "not supported"),
        ("1.x", "field selection"),
        ("", "empty expression"),
        ("1 2", "unexpected"),
        ("a = 1", "token recognition error"),
        ("'unterminated", "unterminated"),
    ] {
        let e = Program::compile(src, &[("usage", Ty::Map)]).unwrap_err();
        assert!(e.contains(want), "{src}: {e}");
    }
}
