//! The value syntaxes the `flowControl` section borrows from Kubernetes: resource
//! quantities (`maxBytes: 1Gi`, `maxRequests: 500`) and Go durations (`defaultRequestTTL:
//! 30s`, where `0s` means "no budget" and so must parse, unlike plugin durations).

use serde_json::Value;

/// A Kubernetes `resource.Quantity` as its integer `Value()` (rounded up, as the
/// router reads `maxBytes` and `maxRequests`): `"1Gi"`, `"500M"`, `"1.5k"`, `"2e3"`,
/// or a plain number. Values beyond `i64` are clamped, as Kubernetes clamps them.
pub fn parse_quantity(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if let Some(u) = n.as_u64() {
                Ok(i64::try_from(u).unwrap_or(i64::MAX))
            } else {
                let f = n.as_f64().ok_or_else(|| format!("{n} is not a quantity"))?;
                parse_quantity_str(&format!("{f}"))
            }
        }
        Value::String(s) => parse_quantity_str(s),
        other => Err(format!("{other} is not a quantity like \"1Gi\" or \"500\"")),
    }
}

fn parse_quantity_str(s: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "{s:?} is not a quantity like \"1Gi\" or \"500\" (quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$')"
        )
    };
    let t = s.trim();
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
    let (number, suffix) = body.split_at(end);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(bad());
    }
    // value = digits / 10^frac_len × num / den, computed exactly in i128 while it fits.
    let digits: String = format!("{int_part}{frac_part}").trim_start_matches('0').to_string();
    if digits.len() > 30 {
        return Ok(if neg { i64::MIN } else { i64::MAX });
    }
    let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| bad())? };
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut pow2: u32 = 0;
    match suffix {
        "" => {}
        "Ki" => pow2 = 10,
        "Mi" => pow2 = 20,
        "Gi" => pow2 = 30,
        "Ti" => pow2 = 40,
        "Pi" => pow2 = 50,
        "Ei" => pow2 = 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        e if e.starts_with(['e', 'E']) => {
            let x: i32 = e[1..].parse().map_err(|_| bad())?;
            exp10 = exp10.checked_add(x).ok_or_else(bad)?;
        }
        _ => return Err(bad()),
    }
    let clamp = if neg { i64::MIN } else { i64::MAX };
    let Some(mut value) = mantissa.checked_mul(1i128 << pow2) else { return Ok(clamp) };
    if exp10 >= 0 {
        if exp10 > 38 {
            return Ok(if value == 0 { 0 } else { clamp });
        }
        match value.checked_mul(10i128.pow(exp10 as u32)) {
            Some(v) => value = v,
            None => return Ok(clamp),
        }
    } else {
        let div = if -exp10 > 38 { None } else { Some(10i128.pow((-exp10) as u32)) };
        value = match div {
            // Kubernetes rounds a fractional quantity up to the next integer.
            Some(d) => (value + d - 1) / d,
            None => i128::from(value != 0),
        };
    }
    let signed = if neg { -value } else { value };
    Ok(i64::try_from(signed).unwrap_or(clamp))
}

/// A Go duration (`time.ParseDuration`: `"30s"`, `"1m30s"`, `"250ms"`, `"0"`, `"-1s"`)
/// in nanoseconds; zero and negative values parse (callers decide what they mean).
pub fn parse_go_duration(s: &str) -> Result<i128, String> {
    let bad = || format!("{s:?} is not a duration like \"30s\" or \"2m\"");
    let t = s.trim();
    let (neg, mut rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if n == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[u..];
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    let nanos = total.round() as i128;
    Ok(if neg { -nanos } else { nanos })
}

/// Formats nanoseconds as Go prints a `time.Duration` in its errors (`-1s`, `1.5s`,
/// `250ms`, `0s`): enough for error messages.
pub(crate) fn go_duration_string(nanos: i128) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let trim = |v: f64| {
        let s = format!("{v:.9}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if n < 1_000 {
        format!("{sign}{n}ns")
    } else if n < 1_000_000 {
        format!("{sign}{}µs", trim(n as f64 / 1e3))
    } else if n < 1_000_000_000 {
        format!("{sign}{}ms", trim(n as f64 / 1e6))
    } else {
        format!("{sign}{}s", trim(n as f64 / 1e9))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn quantities_read_as_kubernetes_reads_them() {
        let q = |v: Value| parse_quantity(&v);
        assert_eq!(q(json!("1Gi")), Ok(1 << 30));
        assert_eq!(q(json!("500")), Ok(500));
        assert_eq!(q(json!(500)), Ok(500));
        assert_eq!(q(json!("1G")), Ok(1_000_000_000));
        assert_eq!(q(json!("1.5k")), Ok(1500));
        assert_eq!(q(json!("2e3")), Ok(2000));
        assert_eq!(q(json!("100m")), Ok(1), "a fraction rounds up");
        assert_eq!(q(json!("-5")), Ok(-5));
        assert_eq!(q(json!("0")), Ok(0));
        assert_eq!(q(json!("9Ei")), Ok(i64::MAX), "clamped");
        assert!(q(json!("1Gb")).is_err());
        assert!(q(json!("lots")).is_err());
        assert!(q(json!(true)).is_err());
    }

    #[test]
    fn go_durations_parse_with_zero_and_sign() {
        assert_eq!(parse_go_duration("30s"), Ok(30_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_go_duration("250ms"), Ok(250_000_000));
        assert_eq!(parse_go_duration("0s"), Ok(0));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("-1s"), Ok(-1_000_000_000));
        assert!(parse_go_duration("30").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("5 parsecs").is_err());
        assert_eq!(go_duration_string(-1_000_000_000), "-1s");
        assert_eq!(go_duration_string(200_000_000), "200ms");
        assert_eq!(go_duration_string(0), "0s");
    }
}
