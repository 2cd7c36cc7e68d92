//! GGUF metadata values.

use super::Cursor;

/// A metadata value. Arrays of numbers keep their element type's width as `i64`/`u64`
/// /`f64`; the tokenizer's long string and integer arrays are the common case.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `uint8`, `uint16`, `uint32`, `uint64`.
    U64(u64),
    /// `int8`, `int16`, `int32`, `int64`.
    I64(i64),
    /// `float32`, `float64`.
    F64(f64),
    /// `bool`.
    Bool(bool),
    /// `string`.
    String(String),
    /// `array` (of one element type).
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer (non-negative integers of either sign).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// As a signed integer.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// As a float (integers too).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// As a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// As an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Smallest encoded size of a value of type `ty` (to bound array counts).
fn min_size(ty: u32) -> u64 {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

fn read_typed(c: &mut Cursor<'_>, ty: u32, key: &str, depth: u32) -> Result<Value, String> {
    Ok(match ty {
        0 => Value::U64(u64::from(c.array::<1>(key)?[0])),
        1 => Value::I64(i64::from(i8::from_le_bytes(c.array::<1>(key)?))),
        2 => Value::U64(u64::from(u16::from_le_bytes(c.array::<2>(key)?))),
        3 => Value::I64(i64::from(i16::from_le_bytes(c.array::<2>(key)?))),
        4 => Value::U64(u64::from(c.u32(key)?)),
        5 => Value::I64(i64::from(i32::from_le_bytes(c.array::<4>(key)?))),
        6 => Value::F64(f64::from(f32::from_le_bytes(c.array::<4>(key)?))),
        7 => match c.array::<1>(key)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(format!("metadata {key}: bool byte {b}")),
        },
        8 => Value::String(c.string(key)?),
        9 => {
            if depth > 1 {
                return Err(format!("metadata {key}: arrays nested too deep"));
            }
            let inner = c.u32(key)?;
            let n = c.count(key, min_size(inner))?;
            // The count is bounded by the bytes left, not by memory: grow as read.
            let mut items = Vec::with_capacity((n as usize).min(1 << 16));
            for _ in 0..n {
                items.push(read_typed(c, inner, key, depth + 1)?);
            }
            Value::Array(items)
        }
        10 => Value::U64(c.u64(key)?),
        11 => Value::I64(i64::from_le_bytes(c.array::<8>(key)?)),
        12 => Value::F64(f64::from_le_bytes(c.array::<8>(key)?)),
        other => return Err(format!("metadata {key}: value type {other} is unknown")),
    })
}

/// Reads a value's type and the value.
pub(super) fn read_value(c: &mut Cursor<'_>, key: &str) -> Result<Value, String> {
    let ty = c.u32(key)?;
    read_typed(c, ty, key, 0)
}
