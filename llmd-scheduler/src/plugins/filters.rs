//! Role and label filters.

use super::Params;
use crate::endpoint::{Endpoint, Role};
use crate::plugin::{CycleState, Filter};
use crate::request::LlmRequest;

/// `prefill-filter`: endpoints that run prefill, as llm-d-router decides it: a role
/// label of `prefill`, `encode-prefill`, `prefill-decode`, `both` or
/// `encode-prefill-decode`; an endpoint without the label only when it was given a
/// prefill role otherwise (an unlabelled endpoint is not a prefill one in the router).
#[derive(Debug, Default)]
pub struct PrefillFilter;

impl Filter for PrefillFilter {
    fn filter<'a>(&self, _: &mut CycleState, _: &LlmRequest, eps: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        eps.into_iter()
            .filter(|e| match labelled_role(e) {
                Some(r) => r.is_some_and(Role::prefills),
                None => e.role.prefills() && e.role != Role::Both,
            })
            .collect()
    }
}

/// `decode-filter`: endpoints that decode: a role label of `decode`, `prefill-decode`,
/// `both` or `encode-prefill-decode`, or no label and a decoding role.
#[derive(Debug, Default)]
pub struct DecodeFilter;

impl Filter for DecodeFilter {
    fn filter<'a>(&self, _: &mut CycleState, _: &LlmRequest, eps: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        eps.into_iter()
            .filter(|e| match labelled_role(e) {
                Some(r) => r.is_some_and(Role::decodes),
                None => e.role.decodes(),
            })
            .collect()
    }
}

/// `encode-filter`: endpoints that encode multimodal inputs: a role label of `encode`,
/// `encode-prefill` or `encode-prefill-decode` (or such a role given otherwise).
#[derive(Debug, Default)]
pub struct EncodeFilter;

impl Filter for EncodeFilter {
    fn filter<'a>(&self, _: &mut CycleState, _: &LlmRequest, eps: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        eps.into_iter()
            .filter(|e| match labelled_role(e) {
                Some(r) => r.is_some_and(Role::encodes),
                None => e.role.encodes(),
            })
            .collect()
    }
}

// The role the `llm-d.ai/role` label names: `None` without the label, `Some(None)` for
// a value that is no role (kept by no role filter, as in the router).
fn labelled_role(e: &Endpoint) -> Option<Option<Role>> {
    e.labels.get(crate::discovery::ROLE_LABEL).map(|v| Role::parse(v).filter(|_| !v.is_empty()))
}

/// `by-label`: endpoints whose `label` has one of `validValues` (or lacks the label
/// when `allowsNoLabel`).
#[derive(Debug)]
pub struct ByLabel {
    label: String,
    values: Vec<String>,
    allows_no_label: bool,
}

impl ByLabel {
    /// From `parameters`.
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let p = Params(p);
        p.check(&["label", "validValues", "allowsNoLabel"])?;
        let label = p.string("label")?.filter(|l| !l.is_empty()).ok_or("parameter label: required")?;
        let (values, allows_no_label) = (p.strings("validValues")?, p.bool("allowsNoLabel", false)?);
        if values.is_empty() && !allows_no_label {
            return Err("parameters: either validValues must be non-empty or allowsNoLabel must be true".into());
        }
        Ok(ByLabel { label, values, allows_no_label })
    }
}

impl Filter for ByLabel {
    fn filter<'a>(&self, _: &mut CycleState, _: &LlmRequest, eps: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        eps.into_iter()
            // As llm-d-router compares: a missing label reads as "", so `""` among the
            // valid values lets unlabelled endpoints through too.
            .filter(|e| match e.labels.get(&self.label) {
                Some(v) => self.values.contains(v),
                None => self.allows_no_label || self.values.iter().any(String::is_empty),
            })
            .collect()
    }
}

/// `queue-threshold-filter`: drops endpoints with more than `threshold` waiting
/// requests, unless that would drop all of them.
#[derive(Debug)]
pub struct QueueThresholdFilter {
    threshold: u64,
}

impl QueueThresholdFilter {
    /// From `parameters` (`threshold`, default 128).
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["threshold"])?;
        Ok(QueueThresholdFilter { threshold: q.u64("threshold", 128)? })
    }
}

impl Filter for QueueThresholdFilter {
    fn filter<'a>(&self, _: &mut CycleState, _: &LlmRequest, eps: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        let kept: Vec<&Endpoint> = eps.iter().copied().filter(|e| e.metrics.waiting <= self.threshold).collect();
        if kept.is_empty() { eps } else { kept }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps() -> Vec<Endpoint> {
        let mut p = Endpoint::new("p", "p", Role::Prefill);
        p.labels.insert("zone".into(), "a".into());
        p.metrics.waiting = 50;
        let d = Endpoint::new("d", "d", Role::Decode);
        let mut b = Endpoint::new("b", "b", Role::Both);
        b.labels.insert("zone".into(), "b".into());
        vec![p, d, b]
    }

    fn ids(v: Vec<&Endpoint>) -> Vec<&str> {
        v.into_iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn role_label_and_queue_filters() {
        let eps = eps();
        let all = || eps.iter().collect::<Vec<_>>();
        let (mut st, req) = (CycleState::default(), LlmRequest::default());
        assert_eq!(ids(PrefillFilter.filter(&mut st, &req, all())), vec!["p"]);
        assert_eq!(ids(DecodeFilter.filter(&mut st, &req, all())), vec!["d", "b"]);
        let by = ByLabel::from_params(&serde_json::json!({"label": "zone", "validValues": ["a"]})).unwrap();
        assert_eq!(ids(by.filter(&mut st, &req, all())), vec!["p"]);
        let by =
            ByLabel::from_params(&serde_json::json!({"label": "zone", "validValues": ["a"], "allowsNoLabel": true}))
                .unwrap();
        assert_eq!(ids(by.filter(&mut st, &req, all())), vec!["p", "d"]);
        assert!(ByLabel::from_params(&serde_json::json!({})).unwrap_err().contains("label"));
        // llm-d-router: "" among the valid values admits the unlabelled; no values and no
        // allowsNoLabel admits nothing, so it is refused.
        let by = ByLabel::from_params(&serde_json::json!({"label": "zone", "validValues": ["a", ""]})).unwrap();
        assert_eq!(ids(by.filter(&mut st, &req, all())), vec!["p", "d"]);
        assert!(ByLabel::from_params(&serde_json::json!({"label": "zone"})).unwrap_err().contains("validValues"));
        let q = QueueThresholdFilter::from_params(&serde_json::json!({"threshold": 10})).unwrap();
        assert_eq!(ids(q.filter(&mut st, &req, all())), vec!["d", "b"]);
        // Never filters everything away.
        assert_eq!(ids(q.filter(&mut st, &req, vec![&eps[0]])), vec!["p"]);
    }
}

/// `attribute-filter` (llmd's): keeps endpoints whose numeric attribute (written by a
/// data-layer extractor) lies within `min` / `max`; endpoints without it are kept only
/// with `keepMissing: true`.
#[derive(Debug)]
pub struct AttributeFilter {
    attribute: String,
    min: f64,
    max: f64,
    keep_missing: bool,
}

impl AttributeFilter {
    /// From `parameters`: `attribute` (required), `min`, `max`, `keepMissing`.
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["attribute", "min", "max", "keepMissing"])?;
        Ok(AttributeFilter {
            attribute: q.string("attribute")?.ok_or("parameter attribute is required")?,
            min: q.number("min")?.unwrap_or(f64::NEG_INFINITY),
            max: q.number("max")?.unwrap_or(f64::INFINITY),
            keep_missing: q.bool("keepMissing", false)?,
        })
    }
}

impl Filter for AttributeFilter {
    fn filter<'a>(&self, _: &mut CycleState, _: &LlmRequest, endpoints: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        endpoints
            .into_iter()
            .filter(|e| match e.attribute(&self.attribute).and_then(|v| v.as_f64()) {
                Some(v) => v >= self.min && v <= self.max,
                None => self.keep_missing,
            })
            .collect()
    }
}

#[cfg(test)]
mod attribute_tests {
    use super::*;
    use crate::endpoint::AttributeValue;

    #[test]
    fn attribute_filter_keeps_the_range() {
        let mut a = Endpoint::new("a", "a:1", Role::Both);
        a.attributes.insert("q".into(), AttributeValue::Int(3));
        let mut b = Endpoint::new("b", "b:1", Role::Both);
        b.attributes.insert("q".into(), AttributeValue::Float(9.0));
        let c = Endpoint::new("c", "c:1", Role::Both);
        let f = AttributeFilter::from_params(&serde_json::json!({"attribute": "q", "max": 5})).unwrap();
        let kept = f.filter(&mut CycleState::default(), &LlmRequest::default(), vec![&a, &b, &c]);
        assert_eq!(kept.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["a"]);
        let f = AttributeFilter::from_params(&serde_json::json!({"attribute": "q", "keepMissing": true})).unwrap();
        assert_eq!(f.filter(&mut CycleState::default(), &LlmRequest::default(), vec![&a, &b, &c]).len(), 3);
    }
}
