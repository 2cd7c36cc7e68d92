//! The built-in plugins, under llm-d's type names.

pub mod filters;
pub mod pickers;
pub mod precise;
pub mod prefix;
pub mod profiles;
pub mod scorers;

use serde_json::Value;

/// Typed access to a plugin's `parameters`, with errors that name the parameter.
pub(crate) struct Params<'a>(pub(crate) &'a Value);

impl Params<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn u64(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| format!("parameter {key}: expected a non-negative integer, got {v}")),
        }
    }

    pub(crate) fn bool(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| format!("parameter {key}: expected true or false, got {v}")),
        }
    }

    pub(crate) fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(format!("parameter {key}: expected a string, got {v}")),
        }
    }

    pub(crate) fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str().map(String::from).ok_or_else(|| format!("parameter {key}: expected strings, got {x}"))
                })
                .collect(),
            Some(v) => Err(format!("parameter {key}: expected a list of strings, got {v}")),
        }
    }
}
