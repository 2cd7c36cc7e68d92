//! Request parsers, as llm-d-router's `requestHandler.parsers` configures them: each
//! parser claims request-path suffixes, the longest matching suffix picks the parser,
//! and a parser claiming none (`passthrough-parser`) takes every other path. The OpenAI
//! parser reads the prompt for prefix-aware scoring; the passthrough parser reads
//! nothing, so routing falls back to scorers of endpoint state.

use crate::plugin::PluginHandle;
use crate::registry::PluginRegistry;

/// A request-body parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyParser {
    /// `openai-parser`: OpenAI completions and chat bodies (`prompt`, `messages`).
    OpenAi,
    /// `passthrough-parser`: the body is not read; any path.
    Passthrough,
}

impl BodyParser {
    /// The parser for a registered type name.
    pub fn from_type(type_name: &str) -> Option<Self> {
        match type_name {
            "openai-parser" => Some(BodyParser::OpenAi),
            "passthrough-parser" => Some(BodyParser::Passthrough),
            _ => None,
        }
    }

    /// Its type name.
    pub fn type_name(self) -> &'static str {
        match self {
            BodyParser::OpenAi => "openai-parser",
            BodyParser::Passthrough => "passthrough-parser",
        }
    }

    /// The path suffixes it claims (llm-d-router's `Claims().Paths`); none for a fallback.
    pub fn claims(self) -> &'static [&'static str] {
        match self {
            BodyParser::OpenAi => &[
                "chat/completions",
                "completions",
                "embeddings",
                "responses",
                "conversations",
                "chat/completions/render",
                "completions/render",
                "images/generations",
            ],
            BodyParser::Passthrough => &[],
        }
    }
}

/// The configured parsers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParserSet {
    claiming: Vec<BodyParser>,
    fallback: Option<BodyParser>,
}

impl ParserSet {
    /// As llm-d-router builds its registry: a type listed twice counts once, and the
    /// first parser claiming no paths is the fallback, after which nothing is read.
    pub fn new(list: &[BodyParser]) -> Self {
        let mut claiming: Vec<BodyParser> = Vec::new();
        for &p in list {
            if p.claims().is_empty() {
                return ParserSet { claiming, fallback: Some(p) };
            }
            if !claiming.contains(&p) {
                claiming.push(p);
            }
        }
        ParserSet { claiming, fallback: None }
    }

    /// The parser for a request `path` (query ignored): the longest claimed suffix, else
    /// the fallback; `None` when no parser takes it.
    pub fn resolve(&self, path: &str) -> Option<BodyParser> {
        let path = path.split('?').next().unwrap_or_default().trim().trim_end_matches('/');
        let mut best: Option<(usize, BodyParser)> = None;
        for &p in &self.claiming {
            for suffix in p.claims() {
                let suffix = suffix.trim().trim_matches('/');
                if path.ends_with(suffix) && best.is_none_or(|(len, _)| suffix.len() > len) {
                    best = Some((suffix.len(), p));
                }
            }
        }
        best.map(|(_, p)| p).or(self.fallback)
    }
}

/// Registers the parser types (their parameters are ignored, as the router's are).
pub(crate) fn register(r: &mut PluginRegistry) {
    for p in [BodyParser::OpenAi, BodyParser::Passthrough] {
        r.register(p.type_name(), move |n, _| {
            Ok(PluginHandle { name: n.into(), type_name: p.type_name().into(), parser: Some(p), ..Default::default() })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_claimed_suffix_wins_then_the_fallback() {
        let only_openai = ParserSet::new(&[BodyParser::OpenAi]);
        assert_eq!(only_openai.resolve("/v1/chat/completions"), Some(BodyParser::OpenAi));
        assert_eq!(only_openai.resolve("/v1/completions/?x=1"), Some(BodyParser::OpenAi));
        assert_eq!(only_openai.resolve("/v1/messages"), None);
        let both = ParserSet::new(&[BodyParser::OpenAi, BodyParser::Passthrough]);
        assert_eq!(both.resolve("/v1/messages"), Some(BodyParser::Passthrough));
        assert_eq!(both.resolve("/v1/embeddings"), Some(BodyParser::OpenAi));
        // Nothing after the fallback is read.
        let first = ParserSet::new(&[BodyParser::Passthrough, BodyParser::OpenAi]);
        assert_eq!(first.resolve("/v1/completions"), Some(BodyParser::Passthrough));
    }
}
