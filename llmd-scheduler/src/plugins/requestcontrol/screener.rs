//! `disaggregatedset-rollout-screener` (llm-d-router, alpha): safe rollouts across the
//! roles of a disaggregated deployment, before any scheduling profile runs.
//!
//! - Revision gating (`revisionGating.mode` `sum` or `max-role`): of the ready
//!   endpoints matching `scope.labelSelector`, those with both a revision and a role
//!   label count per (revision, role). A revision missing a ready endpoint of any
//!   `requireRoles.values` role gets share 0 and its candidates are dropped (also while
//!   nothing is known: fail closed). Without a strict header, one covered revision is
//!   drawn by weight — `sum`: its ready endpoints over the required roles; `max-role`:
//!   its ready endpoints of the role with the most across covered revisions — and only
//!   its candidates stay.
//! - Header selectors: a `strict` selector whose header the request sets keeps only the
//!   candidates whose `labelKey` label equals it (none: the request fails with 503);
//!   `prefer` selectors are for a separate scorer.
//! - Every selector's header is stamped on the response from the serving endpoint's
//!   label.
//!
//! The router watches Kubernetes Pods for the counts; llmd reads the datastore's
//! endpoints (ready = discovery says ready), so endpoints it does not know do not count.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;

use serde_json::Value;

use super::{Fields, ResponseContext, ResponseHeaderProcessor, Screener};
use crate::endpoint::Endpoint;
use crate::request::LlmRequest;

/// `disaggregatedset-rollout-screener`.
pub const ROLLOUT_SCREENER: &str = "disaggregatedset-rollout-screener";
/// The revision label the DisaggregatedSet operator sets (the default key).
pub const DEFAULT_REVISION_LABEL: &str = "disaggregatedset.x-k8s.io/revision";
/// The role label the DisaggregatedSet operator sets (the default key).
pub const DEFAULT_ROLE_LABEL: &str = "disaggregatedset.x-k8s.io/role";

/// Whether a header selector screens or only stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorMode {
    /// `strict`: keep only matching candidates.
    Strict,
    /// `prefer`: stamped only (a scorer prefers).
    Prefer,
}

/// One `headerSelectors` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSelector {
    /// `name` (unique).
    pub name: String,
    /// `headerName`, lower-cased (unique).
    pub header_name: String,
    /// `labelKey`.
    pub label_key: String,
    /// `mode`.
    pub mode: SelectorMode,
}

/// `revisionGating.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatingMode {
    /// `sum`.
    Sum,
    /// `max-role`.
    MaxRole,
    /// `disabled`.
    Disabled,
}

/// `revisionGating`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionGating {
    /// `revisionLabelKey` ([`DEFAULT_REVISION_LABEL`]).
    pub revision_label: String,
    /// `roleLabelKey` ([`DEFAULT_ROLE_LABEL`]).
    pub role_label: String,
    /// `mode`.
    pub mode: GatingMode,
    /// `requireRoles.values` (`None`: the block is absent).
    pub require_roles: Option<Vec<String>>,
}

impl RevisionGating {
    /// Whether gating runs: `sum` or `max-role` with `requireRoles`.
    pub fn active(&self) -> bool {
        matches!(self.mode, GatingMode::Sum | GatingMode::MaxRole) && self.require_roles.is_some()
    }
}

/// The screener's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// `scope.labelSelector`, parsed.
    pub scope: LabelSelector,
    /// `headerSelectors`.
    pub header_selectors: Vec<HeaderSelector>,
    /// `revisionGating`.
    pub gating: RevisionGating,
}

impl RolloutConfig {
    /// From `parameters`, with the router's checks and messages (in its order).
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let f = Fields::new(p, "", &["scope", "headerSelectors", "revisionGating"])?;
        let scope_text = match f.value("scope") {
            Some(v) => Fields::new(v, "scope", &["labelSelector"])?.string("labelSelector")?,
            None => String::new(),
        };
        let mut selectors = Vec::new();
        for (i, s) in f.list("headerSelectors")?.iter().enumerate() {
            let sf = Fields::new(s, &format!("headerSelectors[{i}]"), &["name", "headerName", "labelKey", "mode"])?;
            // The router lower-cases the header name as it decodes it.
            let mode = sf.string("mode")?;
            selectors.push((
                sf.string("name")?,
                sf.string("headerName")?.to_ascii_lowercase(),
                sf.string("labelKey")?,
                mode,
            ));
        }
        let gating = match f.value("revisionGating") {
            None => None,
            Some(v) => {
                let g =
                    Fields::new(v, "revisionGating", &["revisionLabelKey", "roleLabelKey", "mode", "requireRoles"])?;
                let roles = match g.value("requireRoles") {
                    None => None,
                    Some(r) => Some(Fields::new(r, "revisionGating.requireRoles", &["values"])?.strings("values")?),
                };
                Some((g.string("revisionLabelKey")?, g.string("roleLabelKey")?, g.string("mode")?, roles))
            }
        };

        if scope_text.is_empty() {
            return Err("scope.labelSelector is required".into());
        }
        let scope = LabelSelector::parse(&scope_text)
            .map_err(|e| format!("scope.labelSelector is not a valid label selector: {e}"))?;
        let mut header_selectors = Vec::new();
        let (mut names, mut headers) = (HashSet::new(), HashSet::new());
        for (i, (name, header_name, label_key, mode)) in selectors.into_iter().enumerate() {
            if name.is_empty() {
                return Err(format!("headerSelectors[{i}].name is required"));
            }
            if header_name.is_empty() {
                return Err(format!("headerSelectors[{i}].headerName is required"));
            }
            if label_key.is_empty() {
                return Err(format!("headerSelectors[{i}].labelKey is required"));
            }
            let mode = match mode.as_str() {
                "strict" => SelectorMode::Strict,
                "prefer" => SelectorMode::Prefer,
                other => return Err(format!("headerSelectors[{i}].mode {other:?} must be one of strict|prefer")),
            };
            if !names.insert(name.clone()) {
                return Err(format!("headerSelectors: duplicate name {name:?}"));
            }
            if !headers.insert(header_name.clone()) {
                return Err(format!("headerSelectors: duplicate headerName {header_name:?}"));
            }
            header_selectors.push(HeaderSelector { name, header_name, label_key, mode });
        }
        let Some((revision_label, role_label, mode, require_roles)) = gating else {
            return Err("revisionGating is required".into());
        };
        let or_default = |s: String, d: &str| if s.is_empty() { d.to_string() } else { s };
        let mode = match mode.as_str() {
            "sum" => GatingMode::Sum,
            "max-role" => GatingMode::MaxRole,
            "disabled" => GatingMode::Disabled,
            other => return Err(format!("revisionGating.mode {other:?} must be one of sum|max-role|disabled")),
        };
        if mode != GatingMode::Disabled {
            let Some(roles) = &require_roles else {
                let m = if mode == GatingMode::Sum { "sum" } else { "max-role" };
                return Err(format!("revisionGating.requireRoles is required when revisionGating.mode={m}"));
            };
            if roles.is_empty() {
                return Err("revisionGating.requireRoles.values must contain at least one role".into());
            }
            let mut seen = HashSet::new();
            for (i, r) in roles.iter().enumerate() {
                if r.is_empty() {
                    return Err(format!("revisionGating.requireRoles.values[{i}] must not be empty"));
                }
                if !seen.insert(r) {
                    return Err(format!("revisionGating.requireRoles.values contains duplicate role {r:?}"));
                }
            }
        }
        Ok(RolloutConfig {
            scope,
            header_selectors,
            gating: RevisionGating {
                revision_label: or_default(revision_label, DEFAULT_REVISION_LABEL),
                role_label: or_default(role_label, DEFAULT_ROLE_LABEL),
                mode,
                require_roles,
            },
        })
    }
}

/// Ready-endpoint counts per revision and role, and each revision's share of traffic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RevisionDistribution {
    /// Ready endpoints by revision, then role.
    pub role_counts: BTreeMap<String, BTreeMap<String, usize>>,
    /// Each covered revision's share in [0, 1] (absent: 0).
    pub shares: BTreeMap<String, f64>,
}

/// The summed weight of a revision over `required` roles, `None` when a role has no
/// ready endpoint (the revision is not covered).
pub fn revision_sum_weight(per_role: &BTreeMap<String, usize>, required: &[String]) -> Option<usize> {
    required.iter().map(|r| per_role.get(r).copied().filter(|c| *c > 0)).sum()
}

/// The required role with the most ready endpoints across `covered` revisions; ties go
/// to the earlier role of `required`.
pub fn dominant_role<'a>(covered: &BTreeMap<&String, &BTreeMap<String, usize>>, required: &'a [String]) -> &'a str {
    let mut best: (&str, Option<usize>) = ("", None);
    for role in required {
        let total: usize = covered.values().map(|c| c.get(role).copied().unwrap_or(0)).sum();
        if best.1.is_none_or(|b| total > b) {
            best = (role, Some(total));
        }
    }
    best.0
}

impl RevisionDistribution {
    /// The distribution of `role_counts` for `required` roles in `mode`.
    pub fn new(role_counts: BTreeMap<String, BTreeMap<String, usize>>, required: &[String], mode: GatingMode) -> Self {
        let covered: BTreeMap<&String, &BTreeMap<String, usize>> =
            role_counts.iter().filter(|(_, c)| revision_sum_weight(c, required).is_some()).collect();
        let weights: BTreeMap<&String, usize> = if mode == GatingMode::MaxRole {
            let role = dominant_role(&covered, required);
            covered.iter().map(|(r, c)| (*r, c.get(role).copied().unwrap_or(0))).collect()
        } else {
            covered.iter().map(|(r, c)| (*r, revision_sum_weight(c, required).unwrap_or(0))).collect()
        };
        let total: usize = weights.values().sum();
        let shares = if total == 0 {
            BTreeMap::new()
        } else {
            weights.iter().map(|(r, w)| ((*r).clone(), *w as f64 / total as f64)).collect()
        };
        RevisionDistribution { role_counts, shares }
    }
}

/// The revision a `draw` in [0, 1) picks by `shares` (revisions in name order), `""`
/// when every share is 0.
pub fn pick_weighted_revision(shares: &BTreeMap<String, f64>, draw: f64) -> String {
    let total: f64 = shares.values().sum();
    if total == 0.0 {
        return String::new();
    }
    let x = draw * total;
    let mut cumulative = 0.0;
    for (revision, share) in shares {
        cumulative += share;
        if x < cumulative {
            return revision.clone();
        }
    }
    shares.keys().next_back().cloned().unwrap_or_default()
}

/// `disaggregatedset-rollout-screener`: a [`Screener`] and a
/// [`ResponseHeaderProcessor`].
#[derive(Debug)]
pub struct RolloutScreener {
    name: String,
    config: RolloutConfig,
    // Strict selections that matched nothing, by selector (the router's
    // `disaggregatedset_strict_header_no_match_total`).
    no_match: Mutex<BTreeMap<String, u64>>,
}

impl RolloutScreener {
    /// From the plugin's name and `parameters`.
    pub fn from_params(name: &str, p: &Value) -> Result<Self, String> {
        Ok(Self::new(name, RolloutConfig::from_params(p)?))
    }

    /// A screener with `config`.
    pub fn new(name: &str, config: RolloutConfig) -> Self {
        RolloutScreener { name: name.to_string(), config, no_match: Mutex::default() }
    }

    /// The configuration.
    pub fn config(&self) -> &RolloutConfig {
        &self.config
    }

    /// Whether `e` counts toward the distribution: in scope, ready, with both labels.
    fn counts(&self, e: &Endpoint) -> bool {
        let g = &self.config.gating;
        self.config.scope.matches(&e.labels)
            && e.is_ready()
            && e.labels.get(&g.revision_label).is_some_and(|v| !v.is_empty())
            && e.labels.get(&g.role_label).is_some_and(|v| !v.is_empty())
    }

    /// The distribution over `pool` (empty when gating is off); the router's
    /// `disaggregatedset_revision_gating_share` gauge reads its shares.
    pub fn distribution(&self, pool: &[&Endpoint]) -> RevisionDistribution {
        let g = &self.config.gating;
        if !g.active() {
            return RevisionDistribution::default();
        }
        let mut role_counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        let mut ids = HashSet::new();
        for e in pool.iter().filter(|e| self.counts(e)) {
            // One count per endpoint id, as the router keys pods by name.
            if !ids.insert(&e.id) {
                continue;
            }
            let (Some(rev), Some(role)) = (e.labels.get(&g.revision_label), e.labels.get(&g.role_label)) else {
                continue;
            };
            *role_counts.entry(rev.clone()).or_default().entry(role.clone()).or_default() += 1;
        }
        RevisionDistribution::new(role_counts, g.require_roles.as_deref().unwrap_or(&[]), g.mode)
    }

    /// Strict selections of `selector` that matched no candidate so far.
    pub fn strict_no_match(&self, selector: &str) -> u64 {
        self.no_match.lock().unwrap_or_else(|p| p.into_inner()).get(selector).copied().unwrap_or(0)
    }

    fn has_strict_header(&self, req: &LlmRequest) -> bool {
        self.config
            .header_selectors
            .iter()
            .any(|s| s.mode == SelectorMode::Strict && req.headers.get(&s.header_name).is_some_and(|v| !v.is_empty()))
    }

    fn screen_strict<'a>(&self, req: &LlmRequest, mut current: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        for s in self.config.header_selectors.iter().filter(|s| s.mode == SelectorMode::Strict) {
            if current.is_empty() {
                break;
            }
            let Some(want) = req.headers.get(&s.header_name).filter(|v| !v.is_empty()) else { continue };
            current.retain(|e| e.labels.get(&s.label_key) == Some(want));
            if current.is_empty() {
                *self.no_match.lock().unwrap_or_else(|p| p.into_inner()).entry(s.name.clone()).or_default() += 1;
                tracing::debug!(plugin = %self.name, selector = %s.name, "strict header selection matched no endpoint");
            }
        }
        current
    }
}

impl Screener for RolloutScreener {
    fn screen<'a>(
        &self,
        req: &LlmRequest,
        pool: &[&Endpoint],
        candidates: Vec<&'a Endpoint>,
        draw: &mut dyn FnMut() -> f64,
    ) -> Vec<&'a Endpoint> {
        let g = &self.config.gating;
        let mut current = candidates;
        if g.active() {
            let seen: BTreeSet<&String> =
                current.iter().filter_map(|e| e.labels.get(&g.revision_label)).filter(|r| !r.is_empty()).collect();
            let distribution = self.distribution(pool);
            // Missing roles and unknown revisions have share 0: they fail closed.
            let shares: BTreeMap<String, f64> = seen
                .into_iter()
                .filter_map(|r| distribution.shares.get(r).filter(|s| **s != 0.0).map(|s| (r.clone(), *s)))
                .collect();
            let chosen =
                if self.has_strict_header(req) { String::new() } else { pick_weighted_revision(&shares, draw()) };
            current.retain(|e| {
                let rev = e.labels.get(&g.revision_label).map_or("", String::as_str);
                shares.contains_key(rev) && (chosen.is_empty() || rev == chosen)
            });
            if current.is_empty() {
                return current;
            }
        }
        self.screen_strict(req, current)
    }
}

impl ResponseHeaderProcessor for RolloutScreener {
    fn response_header(&self, cx: &ResponseContext<'_>, headers: &mut BTreeMap<String, String>) {
        let Some(target) = cx.target else { return };
        for s in &self.config.header_selectors {
            if let Some(v) = target.labels.get(&s.label_key).filter(|v| !v.is_empty()) {
                headers.insert(s.header_name.clone(), v.clone());
            }
        }
    }
}

/// One requirement of a Kubernetes label selector string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
    /// `key=v`, `key==v`, `key in (v, ...)`.
    In(String, BTreeSet<String>),
    /// `key!=v`, `key notin (v, ...)`.
    NotIn(String, BTreeSet<String>),
    /// `key>n`.
    Gt(String, i64),
    /// `key<n`.
    Lt(String, i64),
}

/// A Kubernetes label selector in its string form (`labels.Parse`): comma-separated
/// requirements `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
/// `k>n`, `k<n`, all of which must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Op(&'static str),
}

fn lex(s: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let two = s.get(i..i + 2);
        let op: Option<&'static str> = match (two, c) {
            (Some("=="), _) => Some("=="),
            (Some("!="), _) => Some("!="),
            (_, b'=') => Some("="),
            (_, b'!') => Some("!"),
            (_, b',') => Some(","),
            (_, b'(') => Some("("),
            (_, b')') => Some(")"),
            (_, b'>') => Some(">"),
            (_, b'<') => Some("<"),
            _ => None,
        };
        if let Some(op) = op {
            out.push(Token::Op(op));
            i += op.len();
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && !b"=!,()<>".contains(&b[i]) {
            i += 1;
        }
        out.push(Token::Ident(s[start..i].to_string()));
    }
    out
}

/// Whether `s` is a valid label value: at most 63 characters, alphanumerics with `-`,
/// `_`, `.` inside; empty is valid.
fn valid_value(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    s.is_empty()
        || (s.len() <= 63
            && s.chars().all(ok)
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Whether `s` is a valid label key: an optional DNS-subdomain prefix and `/`, then a
/// name (a non-empty label value).
fn valid_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    prefix_ok && !name.is_empty() && valid_value(name)
}

impl LabelSelector {
    /// Parses the string form; errors say what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let toks = lex(s);
        let mut reqs = Vec::new();
        let mut i = 0;
        let ident = |i: usize| match toks.get(i) {
            Some(Token::Ident(x)) => Some(x.clone()),
            _ => None,
        };
        let key_at = |i: usize| -> Result<String, String> {
            let k = ident(i).ok_or_else(|| format!("found {:?}, expected: identifier", toks.get(i)))?;
            if !valid_key(&k) {
                return Err(format!("invalid label key {k:?}"));
            }
            Ok(k)
        };
        let value = |v: &str| -> Result<String, String> {
            if valid_value(v) { Ok(v.to_string()) } else { Err(format!("invalid label value: {v:?}")) }
        };
        while i < toks.len() {
            if toks[i] == Token::Op("!") {
                reqs.push(Requirement::DoesNotExist(key_at(i + 1)?));
                i += 2;
            } else {
                let key = key_at(i)?;
                i += 1;
                match toks.get(i) {
                    None | Some(Token::Op(",")) => reqs.push(Requirement::Exists(key)),
                    Some(Token::Op(op @ ("=" | "==" | "!="))) => {
                        let v = match toks.get(i + 1) {
                            Some(Token::Ident(v)) => {
                                i += 2;
                                value(v)?
                            }
                            // `k=` selects the empty value.
                            None | Some(Token::Op(",")) => {
                                i += 1;
                                String::new()
                            }
                            Some(t) => return Err(format!("found {t:?}, expected: identifier")),
                        };
                        let set = BTreeSet::from([v]);
                        reqs.push(if *op == "!=" { Requirement::NotIn(key, set) } else { Requirement::In(key, set) });
                    }
                    Some(Token::Op(op @ (">" | "<"))) => {
                        let n = ident(i + 1)
                            .and_then(|v| v.parse::<i64>().ok())
                            .ok_or_else(|| format!("for {op} operator, the value must be an integer"))?;
                        reqs.push(if *op == ">" { Requirement::Gt(key, n) } else { Requirement::Lt(key, n) });
                        i += 2;
                    }
                    Some(Token::Ident(word)) if word == "in" || word == "notin" => {
                        let notin = word == "notin";
                        if toks.get(i + 1) != Some(&Token::Op("(")) {
                            return Err(format!("found {:?}, expected: '('", toks.get(i + 1)));
                        }
                        i += 2;
                        let mut set = BTreeSet::new();
                        loop {
                            match toks.get(i) {
                                Some(Token::Ident(v)) => {
                                    set.insert(value(v)?);
                                    i += 1;
                                }
                                // An empty entry is the empty value.
                                Some(Token::Op("," | ")")) => {
                                    set.insert(String::new());
                                }
                                t => return Err(format!("found {t:?}, expected: ',' or ')'")),
                            }
                            match toks.get(i) {
                                Some(Token::Op(",")) => i += 1,
                                Some(Token::Op(")")) => {
                                    i += 1;
                                    break;
                                }
                                t => return Err(format!("found {t:?}, expected: ',' or ')'")),
                            }
                        }
                        reqs.push(if notin { Requirement::NotIn(key, set) } else { Requirement::In(key, set) });
                    }
                    Some(t) => return Err(format!("found {t:?}, expected: in, notin, =, ==, !=, gt, lt")),
                }
            }
            match toks.get(i) {
                None => {}
                Some(Token::Op(",")) if i + 1 < toks.len() => i += 1,
                Some(t) => return Err(format!("found {t:?}, expected: ','")),
            }
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Gt(k, n) => labels.get(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
            Requirement::Lt(k, n) => labels.get(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
        })
    }
}
