//! Strict checks for manifests, as `kubectl apply --validate=strict` makes them.
//!
//! - [`validate`] walks a custom resource against a CRD's structural `openAPIV3Schema`
//!   ([`crd_schema`] finds it; [`validate_custom_resource`] does both and checks the
//!   object's `apiVersion` and `kind`). A field the schema does not declare is an error,
//!   where the API server would prune it silently; so are a wrong type, a value outside
//!   an `enum`, a missing `required` field and a `null` where the field is not
//!   `nullable`.
//! - [`round_trips`] checks an object against a typed Kubernetes struct (k8s-openapi's
//!   `Deployment`, `Service`, …): decoded and encoded again it must come back equal, so a
//!   field the type does not know, which serde drops, is an error naming its path.
//!
//! The walker reads `type`, `properties`, `required`, `items`, `additionalProperties`
//! (a schema or a boolean), `enum`, `nullable`, `format` `int32`/`int64` ranges,
//! `minimum`/`maximum`, `minLength`/`maxLength`, `minItems`/`maxItems`,
//! `minProperties`/`maxProperties`, `allOf`/`anyOf`/`oneOf`,
//! `x-kubernetes-preserve-unknown-fields`, `x-kubernetes-int-or-string`,
//! `x-kubernetes-embedded-resource` and `x-kubernetes-list-type` `set`/`map` (with
//! `x-kubernetes-list-map-keys`) uniqueness. It does not evaluate `pattern`, other
//! `format`s or `x-kubernetes-validations` (CEL rules); the API server still does.
//!
//! ```
//! use serde_json::json;
//! use llmd_k8s::manifests::schema::validate;
//!
//! let schema = json!({"type": "object", "properties": {
//!     "spec": {"type": "object", "required": ["size"], "properties": {
//!         "size": {"type": "integer", "format": "int32", "minimum": 1}}}}});
//! let ok = json!({"apiVersion": "x.io/v1", "kind": "X", "metadata": {"name": "a"}, "spec": {"size": 2}});
//! assert!(validate(&schema, &ok).is_ok());
//! let typo = json!({"apiVersion": "x.io/v1", "kind": "X", "metadata": {"name": "a"}, "spec": {"sise": 2}});
//! let errors = validate(&schema, &typo).unwrap_err();
//! assert!(errors.iter().any(|e| e == "spec.sise: unknown field"), "{errors:?}");
//! assert!(errors.iter().any(|e| e == "spec.size: required field is missing"), "{errors:?}");
//! ```

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The `openAPIV3Schema` a CRD (`apiextensions.k8s.io/v1` `CustomResourceDefinition`, as
/// JSON) declares for `version`, if it serves that version.
pub fn crd_schema<'a>(crd: &'a Value, version: &str) -> Option<&'a Value> {
    crd["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == version && v["served"] != false)
        .map(|v| &v["schema"]["openAPIV3Schema"])
        .filter(|s| s.is_object())
}

/// Checks a custom resource against the CRD that defines it: its `apiVersion` must be
/// the CRD's group and a served version, its `kind` the CRD's kind, and the object must
/// pass [`validate`] against that version's schema.
pub fn validate_custom_resource(crd: &Value, object: &Value) -> Result<(), Vec<String>> {
    let group = crd["spec"]["group"].as_str().unwrap_or_default();
    let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let Some((g, version)) = api_version.split_once('/') else {
        return Err(vec![format!("apiVersion: {api_version:?} is not <group>/<version> (CRD group {group})")]);
    };
    let mut errors = Vec::new();
    if g != group {
        errors.push(format!("apiVersion: group {g:?} is not the CRD's group {group:?}"));
    }
    if object["kind"] != kind {
        errors.push(format!("kind: {} is not the CRD's kind {kind:?}", object["kind"]));
    }
    match crd_schema(crd, version) {
        None => errors.push(format!("apiVersion: the CRD serves no version {version:?} with a schema")),
        Some(schema) => {
            if let Err(mut e) = validate(schema, object) {
                errors.append(&mut e);
            }
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Checks a whole object (with `apiVersion`, `kind`, `metadata`) against a structural
/// schema, strictly. The object's `metadata` is checked as an `ObjectMeta` (the API
/// server ignores the schema there); everything else as the schema says. Returns every
/// error found, each prefixed with the field's path (`spec.template.spec.containers[0].name`).
pub fn validate(schema: &Value, object: &Value) -> Result<(), Vec<String>> {
    let mut w = Walker { errors: Vec::new() };
    w.resource(schema, object, "", true);
    if w.errors.is_empty() { Ok(()) } else { Err(w.errors) }
}

/// Checks that `value` decodes into `T` and encodes back to exactly `value`: nothing
/// unknown was dropped, nothing mistyped was coerced. Errors name the paths that differ.
///
/// ```
/// use k8s_openapi::api::core::v1::ServiceAccount;
/// use llmd_k8s::manifests::schema::round_trips;
///
/// let sa = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a"}});
/// assert!(round_trips::<ServiceAccount>(&sa).is_ok());
/// let typo = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"nmae": "a"}});
/// assert_eq!(round_trips::<ServiceAccount>(&typo).unwrap_err(), ["metadata.nmae: dropped (unknown field?)"]);
/// ```
pub fn round_trips<T: DeserializeOwned + Serialize>(value: &Value) -> Result<(), Vec<String>> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| vec![format!("does not decode: {e}")])?;
    let back = serde_json::to_value(&typed).map_err(|e| vec![format!("does not encode: {e}")])?;
    let mut errors = Vec::new();
    diff(value, &back, "", &mut errors);
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Where `want` and `got` differ, as `path: what` lines.
fn diff(want: &Value, got: &Value, path: &str, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = join(path, k);
                match b.get(k) {
                    Some(w) => diff(v, w, &p, out),
                    None => out.push(format!("{p}: dropped (unknown field?)")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{}: added on the way back", join(path, k)));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a != b => out.push(format!("{}: {a} came back as {b}", or_root(path))),
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn or_root(path: &str) -> &str {
    if path.is_empty() { "<root>" } else { path }
}

struct Walker {
    errors: Vec<String>,
}

impl Walker {
    fn err(&mut self, path: &str, what: impl std::fmt::Display) {
        self.errors.push(format!("{}: {what}", or_root(path)));
    }

    /// A resource (the root, or an `x-kubernetes-embedded-resource`): `apiVersion` and
    /// `kind` are strings, `metadata` an `ObjectMeta`, the rest as the schema says.
    fn resource(&mut self, schema: &Value, value: &Value, path: &str, strict: bool) {
        let Some(obj) = value.as_object() else {
            self.err(path, format!("expected an object, got {}", type_name(value)));
            return;
        };
        for key in ["apiVersion", "kind"] {
            match obj.get(key) {
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(v) => self.err(&join(path, key), format!("expected a non-empty string, got {v}")),
                None => self.err(&join(path, key), "required field is missing"),
            }
        }
        if let Some(meta) = obj.get("metadata") {
            let p = join(path, "metadata");
            match round_trips::<ObjectMeta>(meta) {
                Ok(()) => {}
                Err(errors) => {
                    for e in errors {
                        self.errors.push(if e.starts_with("does not") {
                            format!("{p}: {e}")
                        } else {
                            format!("{p}.{e}")
                        });
                    }
                }
            }
        }
        let rest: Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.object_fields(schema, &rest, path, strict, &["apiVersion", "kind", "metadata"]);
        self.combinators(schema, value, path);
    }

    fn walk(&mut self, schema: &Value, value: &Value, path: &str, strict: bool) {
        if schema.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true)) && !value.is_null() {
            self.resource(schema, value, path, strict);
            return;
        }
        if value.is_null() {
            if schema.get("nullable") != Some(&Value::Bool(true)) {
                self.err(path, "null is not allowed here (the field is not nullable)");
            }
            return;
        }
        let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        if int_or_string && !(is_integer(value) || value.is_string()) {
            self.err(path, format!("expected an integer or a string, got {}", type_name(value)));
            return;
        }
        if let Some(ty) = schema.get("type").and_then(Value::as_str) {
            let ok = match ty {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => is_integer(value),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                other => {
                    self.err(path, format!("the schema has an unknown type {other:?}"));
                    return;
                }
            };
            if !ok {
                self.err(path, format!("expected {ty}, got {}", type_name(value)));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            self.err(path, format!("{value} is not one of {}", Value::Array(allowed.clone())));
        }
        self.bounds(schema, value, path);
        match value {
            Value::Object(obj) => self.object_fields(schema, obj, path, strict, &[]),
            Value::Array(items) => self.array(schema, items, path, strict),
            _ => {}
        }
        self.combinators(schema, value, path);
    }

    /// An object's fields against `properties` / `additionalProperties` / `required`.
    /// `implicit` names fields the caller has checked already (a resource's
    /// `apiVersion`, `kind` and `metadata`).
    fn object_fields(&mut self, schema: &Value, obj: &Map<String, Value>, path: &str, strict: bool, implicit: &[&str]) {
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        for (k, v) in obj {
            let p = join(path, k);
            if let Some(s) = props.and_then(|m| m.get(k)) {
                self.walk(s, v, &p, strict);
                continue;
            }
            match additional {
                Some(Value::Bool(false)) => self.err(&p, "unknown field (additionalProperties is false)"),
                Some(Value::Bool(true)) => {}
                Some(s @ Value::Object(_)) => self.walk(s, v, &p, strict),
                _ if preserve => {}
                _ if strict => self.err(&p, "unknown field"),
                _ => {}
            }
        }
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for r in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) && !implicit.contains(&r) {
                    self.err(&join(path, r), "required field is missing");
                }
            }
        }
        let count = obj.len() as u64;
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
            && count > max
        {
            self.err(path, format!("has {count} fields; at most {max} are allowed"));
        }
        if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
            && count < min
        {
            self.err(path, format!("has {count} fields; at least {min} are required"));
        }
    }

    fn array(&mut self, schema: &Value, items: &[Value], path: &str, strict: bool) {
        if let Some(s) = schema.get("items") {
            for (i, v) in items.iter().enumerate() {
                self.walk(s, v, &format!("{path}[{i}]"), strict);
            }
        }
        let n = items.len() as u64;
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && n > max
        {
            self.err(path, format!("has {n} items; at most {max} are allowed"));
        }
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && n < min
        {
            self.err(path, format!("has {n} items; at least {min} are required"));
        }
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => {
                let mut seen = BTreeSet::new();
                for (i, v) in items.iter().enumerate() {
                    if !seen.insert(v.to_string()) {
                        self.err(&format!("{path}[{i}]"), format!("{v} is repeated in a set"));
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|k| k.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut seen = BTreeSet::new();
                for (i, v) in items.iter().enumerate() {
                    let key: Vec<String> = keys.iter().map(|k| v[*k].to_string()).collect();
                    if !seen.insert(key.clone()) {
                        self.err(&format!("{path}[{i}]"), format!("repeats the map key {keys:?} = {key:?}"));
                    }
                }
            }
            _ => {}
        }
    }

    fn bounds(&mut self, schema: &Value, value: &Value, path: &str) {
        if let Some(n) = value.as_f64() {
            let (lo, hi) = match (schema.get("format").and_then(Value::as_str), is_integer(value)) {
                (Some("int32"), true) => (Some(f64::from(i32::MIN)), Some(f64::from(i32::MAX))),
                _ => (None, None),
            };
            if let Some(lo) = lo
                && n < lo
            {
                self.err(path, format!("{value} does not fit an int32"));
            }
            if let Some(hi) = hi
                && n > hi
            {
                self.err(path, format!("{value} does not fit an int32"));
            }
            if schema.get("format").and_then(Value::as_str) == Some("int64") && value.as_i64().is_none() {
                self.err(path, format!("{value} does not fit an int64"));
            }
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                let exclusive = schema.get("exclusiveMinimum") == Some(&Value::Bool(true));
                if n < min || (exclusive && n == min) {
                    self.err(path, format!("{value} is below the minimum {min}"));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                let exclusive = schema.get("exclusiveMaximum") == Some(&Value::Bool(true));
                if n > max || (exclusive && n == max) {
                    self.err(path, format!("{value} is above the maximum {max}"));
                }
            }
        }
        if let Some(s) = value.as_str() {
            let len = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                self.err(path, format!("is {len} characters long; at most {max} are allowed"));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                self.err(path, format!("is {len} characters long; at least {min} are required"));
            }
        }
    }

    /// `allOf` / `anyOf` / `oneOf`: in a structural schema their branches only add value
    /// checks (the types and fields are declared outside them), so branches are walked
    /// without unknown-field checks.
    fn combinators(&mut self, schema: &Value, value: &Value, path: &str) {
        let branch = |s: &Value| {
            let mut w = Walker { errors: Vec::new() };
            w.walk(s, value, path, false);
            w.errors
        };
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.errors.extend(branch(s));
            }
        }
        if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
            && !any.is_empty()
        {
            let results: Vec<Vec<String>> = any.iter().map(branch).collect();
            if results.iter().all(|e| !e.is_empty()) {
                self.err(path, format!("matches none of anyOf: {}", results.concat().join("; ")));
            }
        }
        if let Some(one) = schema.get("oneOf").and_then(Value::as_array)
            && !one.is_empty()
        {
            let passing = one.iter().filter(|s| branch(s).is_empty()).count();
            if passing != 1 {
                self.err(path, format!("matches {passing} branches of oneOf; exactly 1 is required"));
            }
        }
    }
}

fn is_integer(v: &Value) -> bool {
    v.is_i64() || v.is_u64()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors(schema: Value, spec: Value) -> Vec<String> {
        let root = json!({"type": "object", "properties": {"spec": schema}});
        let obj = json!({"apiVersion": "x.io/v1", "kind": "X", "metadata": {"name": "a"}, "spec": spec});
        validate(&root, &obj).err().unwrap_or_default()
    }

    #[test]
    fn types_enums_and_required_fields_are_checked() {
        let s = json!({"type": "object", "required": ["a"], "properties": {
            "a": {"type": "string", "enum": ["x", "y"]},
            "n": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 10},
            "f": {"type": "number"}, "b": {"type": "boolean"},
            "l": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 3}}}});
        assert!(errors(s.clone(), json!({"a": "x", "n": 3, "f": 0.5, "b": true, "l": ["abc"]})).is_empty());
        let e = errors(s.clone(), json!({"a": "z", "n": 1.5, "b": "true", "l": ["abcd", "b", "c"]}));
        assert_eq!(
            e,
            [
                r#"spec.a: "z" is not one of ["x","y"]"#,
                "spec.b: expected boolean, got string",
                "spec.l[0]: is 4 characters long; at most 3 are allowed",
                "spec.l: has 3 items; at most 2 are allowed",
                "spec.n: expected integer, got number",
            ]
        );
        let e = errors(s.clone(), json!({"n": 11}));
        assert_eq!(e, ["spec.n: 11 is above the maximum 10", "spec.a: required field is missing"]);
        assert_eq!(errors(s, json!({"a": "x", "n": 4_294_967_296u64}))[0], "spec.n: 4294967296 does not fit an int32");
    }

    #[test]
    fn unknown_fields_are_errors_unless_the_schema_keeps_them() {
        let closed = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        assert_eq!(errors(closed, json!({"a": "x", "b": 1})), ["spec.b: unknown field"]);
        let open = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                          "properties": {"a": {"type": "string"}}});
        assert_eq!(errors(open.clone(), json!({"a": "x", "b": {"c": [1]}})), Vec::<String>::new());
        // Declared fields are still checked under preserve-unknown-fields.
        assert_eq!(errors(open, json!({"a": 1})), ["spec.a: expected string, got integer"]);
        let map = json!({"type": "object", "additionalProperties": {"type": "string"}});
        assert_eq!(errors(map.clone(), json!({"k": "v", "n": 1})), ["spec.n: expected string, got integer"]);
        let no = json!({"type": "object", "additionalProperties": false});
        assert_eq!(errors(no, json!({"k": "v"})), ["spec.k: unknown field (additionalProperties is false)"]);
        let nulls = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string", "nullable": true}}});
        assert_eq!(
            errors(nulls, json!({"a": null, "b": null})),
            ["spec.a: null is not allowed here (the field is not nullable)"]
        );
    }

    #[test]
    fn int_or_string_embedded_resources_and_list_keys() {
        let ios = json!({"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]});
        assert!(errors(ios.clone(), json!(3)).is_empty());
        assert!(errors(ios.clone(), json!("25%")).is_empty());
        assert_eq!(errors(ios, json!(true)), ["spec: expected an integer or a string, got boolean"]);

        let embedded = json!({"type": "object", "x-kubernetes-embedded-resource": true,
                              "properties": {"data": {"type": "string"}}});
        let good = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": "x"});
        assert!(errors(embedded.clone(), good).is_empty());
        let bad = json!({"kind": "ConfigMap", "metadata": {"nam": "c"}, "dat": "x"});
        assert_eq!(
            errors(embedded, bad),
            [
                "spec.apiVersion: required field is missing",
                "spec.metadata.nam: dropped (unknown field?)",
                "spec.dat: unknown field"
            ]
        );

        let ports = json!({"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["port", "protocol"],
                           "items": {"type": "object", "properties": {"port": {"type": "integer"}, "protocol": {"type": "string"}}}});
        assert!(
            errors(ports.clone(), json!([{"port": 1, "protocol": "TCP"}, {"port": 1, "protocol": "UDP"}])).is_empty()
        );
        assert_eq!(
            errors(ports, json!([{"port": 1, "protocol": "TCP"}, {"port": 1, "protocol": "TCP"}])),
            [r#"spec[1]: repeats the map key ["port", "protocol"] = ["1", "\"TCP\""]"#]
        );
        let set = json!({"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}});
        assert_eq!(errors(set, json!(["a", "b", "a"])), [r#"spec[2]: "a" is repeated in a set"#]);
    }

    #[test]
    fn one_of_needs_exactly_one_branch() {
        let s = json!({"type": "integer", "oneOf": [{"minimum": 0}, {"maximum": 10}]});
        assert!(errors(s.clone(), json!(-1)).is_empty());
        assert_eq!(errors(s, json!(5)), ["spec: matches 2 branches of oneOf; exactly 1 is required"]);
    }

    #[test]
    fn crd_versions_and_kinds_are_matched() {
        let crd = json!({"spec": {"group": "x.io", "names": {"kind": "X"}, "versions": [
            {"name": "v1", "served": true, "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object"}}}}}]}});
        let obj =
            |api: &str, kind: &str| json!({"apiVersion": api, "kind": kind, "metadata": {"name": "a"}, "spec": {}});
        assert!(validate_custom_resource(&crd, &obj("x.io/v1", "X")).is_ok());
        assert_eq!(
            validate_custom_resource(&crd, &obj("y.io/v2", "Y")).unwrap_err(),
            [
                r#"apiVersion: group "y.io" is not the CRD's group "x.io""#,
                r#"kind: "Y" is not the CRD's kind "X""#,
                r#"apiVersion: the CRD serves no version "v2" with a schema"#
            ]
        );
    }

    #[test]
    fn round_trips_name_the_dropped_path() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
        assert!(round_trips::<ConfigMap>(&cm).is_ok());
        let mut typo = cm;
        typo["dataa"] = json!({"a": "b"});
        assert_eq!(round_trips::<ConfigMap>(&typo).unwrap_err(), ["dataa: dropped (unknown field?)"]);
        let wrong = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": 1}});
        assert!(round_trips::<ConfigMap>(&wrong).unwrap_err()[0].starts_with("does not decode"));
    }
}
