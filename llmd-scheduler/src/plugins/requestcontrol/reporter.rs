//! `request-attribute-reporter` (llm-d-router): when a response ends, evaluates a CEL
//! expression over its token usage and returns the value to Envoy as dynamic metadata
//! (`namespace.name`, namespace `envoy.lb` by default), for rate limiting or billing
//! by the proxy. The expression sees `usage`, a struct of `prompt_tokens`,
//! `completion_tokens`, `total_tokens` (always present) and
//! `prompt_tokens_details.cached_tokens` (when the response has details), all
//! doubles, as the router's protobuf `Struct` holds them. A `condition`, when set, must
//! evaluate to true first. The value must be a double or an int; it is truncated to an
//! integer, and 0 is not written. Evaluation errors write nothing (the router logs them).
//!
//! Expressions are compiled by llmd's CEL subset ([`super::cel`]): the usage arithmetic
//! and guards the router documents compile; CEL beyond the subset (lists, `in`,
//! methods, other macros) is refused when the plugin is built.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::cel::{CelValue, Program, Ty};
use super::{Fields, ResponseBodyProcessor, ResponseContext, Usage};

/// `request-attribute-reporter`.
pub const REQUEST_ATTRIBUTE_REPORTER: &str = "request-attribute-reporter";
/// The default metadata namespace.
pub const DEFAULT_NAMESPACE: &str = "envoy.lb";

/// `request-attribute-reporter`.
#[derive(Debug, Clone)]
pub struct RequestAttributeReporter {
    namespace: String,
    name: String,
    expression: Program,
    condition: Option<Program>,
}

/// `usage` as the expressions see it.
pub fn usage_value(u: &Usage) -> CelValue {
    let n = |x: u64| CelValue::Double(x as f64);
    let mut m = BTreeMap::from([
        ("prompt_tokens".to_string(), n(u.prompt_tokens)),
        ("completion_tokens".to_string(), n(u.completion_tokens)),
        ("total_tokens".to_string(), n(u.total_tokens)),
    ]);
    if let Some(c) = u.cached_tokens {
        m.insert("prompt_tokens_details".into(), CelValue::Map(BTreeMap::from([("cached_tokens".into(), n(c))])));
    }
    CelValue::Map(m)
}

impl RequestAttributeReporter {
    /// From `parameters`: `attributes`, exactly one `{key: {namespace, name},
    /// expression, condition}`; `key.name` and `expression` are required.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let f = Fields::new(p, "", &["attributes"])?;
        let list = f.list("attributes")?;
        let mut attrs = Vec::new();
        for (i, a) in list.iter().enumerate() {
            let at = format!("attributes[{i}]");
            let af = Fields::new(a, &at, &["key", "expression", "condition"])?;
            let (namespace, name) = match af.value("key") {
                Some(k) => {
                    let kf = Fields::new(k, &format!("{at}.key"), &["namespace", "name"])?;
                    (kf.string("namespace")?, kf.string("name")?)
                }
                None => (String::new(), String::new()),
            };
            attrs.push((namespace, name, af.string("expression")?, af.string("condition")?));
        }
        let [(namespace, name, expression, condition)] = <[_; 1]>::try_from(attrs)
            .map_err(|_| "parameter attributes: attributes must contain exactly one entry".to_string())?;
        if name.is_empty() {
            return Err("parameter attributes[0].key.name: attributeKey.name cannot be empty".into());
        }
        if expression.is_empty() {
            return Err("parameter attributes[0].expression: attributes[0].expression cannot be empty".into());
        }
        let vars = [("usage", Ty::Map)];
        let expression = Program::compile(&expression, &vars)
            .map_err(|e| format!("parameter attributes[0].expression: failed to compile expression: {e}"))?;
        let condition = match condition.as_str() {
            "" => None,
            c => Some(
                Program::compile(c, &vars)
                    .map_err(|e| format!("parameter attributes[0].condition: failed to compile condition: {e}"))?,
            ),
        };
        let namespace = if namespace.is_empty() { DEFAULT_NAMESPACE.to_string() } else { namespace };
        Ok(RequestAttributeReporter { namespace, name, expression, condition })
    }

    /// The metadata namespace written.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The value to report for `usage`: `None` when the condition does not hold, an
    /// evaluation fails, the result is not a number, or it truncates to 0.
    pub fn value(&self, usage: &Usage) -> Option<i64> {
        let vars = BTreeMap::from([("usage".to_string(), usage_value(usage))]);
        if let Some(c) = &self.condition {
            match c.eval(&vars) {
                Ok(CelValue::Bool(true)) => {}
                Ok(_) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "request-attribute-reporter: condition failed to evaluate");
                    return None;
                }
            }
        }
        let v = match self.expression.eval(&vars) {
            // Go's int64(float64) truncates toward zero.
            Ok(CelValue::Double(d)) => d as i64,
            Ok(CelValue::Int(i)) => i,
            Ok(other) => {
                tracing::warn!(result = ?other, "request-attribute-reporter: expression is not a double or an int");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "request-attribute-reporter: expression failed to evaluate");
                return None;
            }
        };
        (v != 0).then_some(v)
    }
}

impl ResponseBodyProcessor for RequestAttributeReporter {
    fn response_complete(&self, _: &ResponseContext<'_>, usage: &Usage, metadata: &mut Map<String, Value>) {
        let Some(v) = self.value(usage) else { return };
        let ns = metadata.entry(self.namespace.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !ns.is_object() {
            *ns = Value::Object(Map::new());
        }
        if let Some(o) = ns.as_object_mut() {
            o.insert(self.name.clone(), Value::from(v as f64));
        }
    }
}
