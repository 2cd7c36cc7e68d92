//! The slice of canonical CBOR (RFC 8949 §4.2.1, as Python's `cbor2.dumps(...,
//! canonical=True)` writes it) that vLLM's block-hash inputs use: integers, byte and text
//! strings, arrays and `null`. Written straight into a reusable buffer so hashing a
//! block allocates nothing; the tests check it against `ciborium`.

const MAJOR_UINT: u8 = 0;
const MAJOR_NINT: u8 = 1;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const NULL: u8 = 0xf6;

/// Writes a head (major type + argument) in its shortest form, as canonical CBOR requires.
/// Each form is one `extend_from_slice` of a fixed-size array: this runs once per token.
#[inline]
fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= u8::MAX as u64 {
        out.extend_from_slice(&[m | 24, arg as u8]);
    } else if arg <= u16::MAX as u64 {
        let [a, b] = (arg as u16).to_be_bytes();
        out.extend_from_slice(&[m | 25, a, b]);
    } else if arg <= u32::MAX as u64 {
        let [a, b, c, d] = (arg as u32).to_be_bytes();
        out.extend_from_slice(&[m | 26, a, b, c, d]);
    } else {
        let [a, b, c, d, e, f, g, h] = arg.to_be_bytes();
        out.extend_from_slice(&[m | 27, a, b, c, d, e, f, g, h]);
    }
}

#[inline]
pub(crate) fn uint(out: &mut Vec<u8>, v: u64) {
    head(out, MAJOR_UINT, v);
}

/// Writes an array of unsigned 32-bit integers (a block's token ids). The hot loop of
/// block hashing: sized once, then written by index with no per-item capacity checks.
pub(crate) fn u32_array(out: &mut Vec<u8>, items: &[u32]) {
    array(out, items.len());
    let start = out.len();
    out.resize(start + items.len() * 5, 0);
    let buf = &mut out[start..];
    let mut w = 0;
    for &v in items {
        let Some(dst) = buf.get_mut(w..w + 5) else {
            break;
        };
        w += if v < 24 {
            dst[0] = v as u8;
            1
        } else if v <= 0xff {
            dst[0] = 24;
            dst[1] = v as u8;
            2
        } else if v <= 0xffff {
            dst[0] = 25;
            dst[1..3].copy_from_slice(&(v as u16).to_be_bytes());
            3
        } else {
            dst[0] = 26;
            dst[1..5].copy_from_slice(&v.to_be_bytes());
            5
        };
    }
    out.truncate(start + w);
}

#[inline]
pub(crate) fn int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        uint(out, v as u64);
    } else {
        // CBOR stores -1 - n; `!v` is exactly that for negative two's-complement values.
        head(out, MAJOR_NINT, !v as u64);
    }
}

#[inline]
pub(crate) fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, MAJOR_BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

#[inline]
pub(crate) fn text(out: &mut Vec<u8>, s: &str) {
    head(out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

#[inline]
pub(crate) fn array(out: &mut Vec<u8>, len: usize) {
    head(out, MAJOR_ARRAY, len as u64);
}

#[inline]
pub(crate) fn null(out: &mut Vec<u8>) {
    out.push(NULL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_boundaries_are_shortest() {
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (23, &[0x17]),
            (24, &[0x18, 24]),
            (255, &[0x18, 0xff]),
            (256, &[0x19, 0x01, 0x00]),
            (65535, &[0x19, 0xff, 0xff]),
            (65536, &[0x1a, 0, 1, 0, 0]),
            (u32::MAX as i64 + 1, &[0x1b, 0, 0, 0, 1, 0, 0, 0, 0]),
            (-1, &[0x20]),
            (-24, &[0x37]),
            (-25, &[0x38, 24]),
            (-256, &[0x38, 0xff]),
            (-257, &[0x39, 0x01, 0x00]),
            (i64::MIN, &[0x3b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ];
        for &(v, want) in cases {
            let mut out = Vec::new();
            int(&mut out, v);
            assert_eq!(out, want, "encoding {v}");
        }
    }

    #[test]
    fn u32_array_equals_item_by_item_encoding() {
        let items = [0, 23, 24, 255, 256, 65535, 65536, u32::MAX, 7];
        let mut fast = Vec::new();
        u32_array(&mut fast, &items);
        let mut slow = Vec::new();
        array(&mut slow, items.len());
        for &i in &items {
            uint(&mut slow, u64::from(i));
        }
        assert_eq!(fast, slow);
    }
}
