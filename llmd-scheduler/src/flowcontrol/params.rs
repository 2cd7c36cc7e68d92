//! Typed reads of flow-control plugin parameters with the router's decoding rules: Go
//! `int` fields refuse fractions, `float64` fields take any number (the factories then
//! validate ranges with their own messages), durations are Go duration strings.

use crate::plugins::Params;

use super::quantity::parse_go_duration;

/// An integer parameter, `None` when absent.
pub(crate) fn int(p: &Params<'_>, key: &str) -> Result<Option<i64>, String> {
    match p.value(key) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| format!("parameter {key}: expected an integer, got {v}")),
    }
}

/// A number parameter of any sign, `None` when absent.
pub(crate) fn float(p: &Params<'_>, key: &str) -> Result<Option<f64>, String> {
    p.number(key)
}

/// A Go-duration parameter in nanoseconds (zero and negative parse), `None` when absent.
pub(crate) fn duration(p: &Params<'_>, key: &str) -> Result<Option<i128>, String> {
    match p.string(key)? {
        None => Ok(None),
        Some(s) => parse_go_duration(&s).map(Some).map_err(|e| format!("parameter {key}: {e}")),
    }
}
