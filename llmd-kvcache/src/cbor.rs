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

/// A head (major type + argument) in its shortest form, as canonical CBOR requires:
/// the bytes and how many of them are used.
#[inline]
fn head_bytes(major: u8, arg: u64) -> ([u8; 9], usize) {
    let m = major << 5;
    let mut b = [0u8; 9];
    let n = if arg < 24 {
        b[0] = m | arg as u8;
        1
    } else if arg <= u8::MAX as u64 {
        b[..2].copy_from_slice(&[m | 24, arg as u8]);
        2
    } else if arg <= u16::MAX as u64 {
        b[0] = m | 25;
        b[1..3].copy_from_slice(&(arg as u16).to_be_bytes());
        3
    } else if arg <= u32::MAX as u64 {
        b[0] = m | 26;
        b[1..5].copy_from_slice(&(arg as u32).to_be_bytes());
        5
    } else {
        b[0] = m | 27;
        b[1..].copy_from_slice(&arg.to_be_bytes());
        9
    };
    (b, n)
}

/// The head of an array of `len` items.
#[inline]
pub(crate) fn array_head(len: usize) -> ([u8; 9], usize) {
    head_bytes(MAJOR_ARRAY, len as u64)
}

/// The head of a byte string of `len` bytes.
#[inline]
pub(crate) fn bytes_head(len: usize) -> ([u8; 9], usize) {
    head_bytes(MAJOR_BYTES, len as u64)
}

/// The `null` byte.
pub(crate) const NULL_BYTE: u8 = NULL;

#[inline]
fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let (b, n) = head_bytes(major, arg);
    out.extend_from_slice(&b[..n]);
}

#[inline]
pub(crate) fn uint(out: &mut Vec<u8>, v: u64) {
    head(out, MAJOR_UINT, v);
}

/// Writes an array of unsigned 32-bit integers (a block's token ids). The hot loop of
/// block hashing. Token ids straddle the 1-, 2- and 4-byte forms unpredictably (a
/// 128K vocabulary puts about half above 65 535), so each item is written without
/// branches: one 8-byte store of the head and its big-endian argument, then the cursor
/// moves by the encoded length. A branch per item mispredicted often enough to cost
/// as much as the SHA-256 it feeds.
pub(crate) fn u32_array(out: &mut Vec<u8>, items: &[u32]) {
    let start = out.len();
    out.resize(start + u32_array_room(items.len()), 0);
    match u32_array_into(&mut out[start..], items) {
        Some(written) => out.truncate(start + written),
        // Sized above for the longest encoding, so not reached; item by item otherwise.
        None => {
            out.truncate(start);
            array(out, items.len());
            for &v in items {
                uint(out, u64::from(v));
            }
        }
    }
}

/// Bytes [`u32_array_into`] may touch for `n` items: the longest encoding plus the
/// slack of the last 8-byte store.
pub(crate) const fn u32_array_room(n: usize) -> usize {
    9 + n * 5 + 3
}

/// [`u32_array`] into a slice with at least [`u32_array_room`] bytes; returns the
/// encoded length, or `None` when `dst` is too short. Bytes after the encoding are
/// overwritten with garbage.
#[inline]
pub(crate) fn u32_array_into(dst: &mut [u8], items: &[u32]) -> Option<usize> {
    if dst.len() < u32_array_room(items.len()) {
        return None;
    }
    let (h, mut w) = head_bytes(MAJOR_ARRAY, items.len() as u64);
    dst.get_mut(..w)?.copy_from_slice(&h[..w]);
    for &v in items {
        let (word, len) = uint_word(v);
        dst.get_mut(w..w + 8)?.copy_from_slice(&word.to_le_bytes());
        w += len;
    }
    Some(w)
}

/// The canonical encoding of `v` as the low bytes of a little-endian word (head first,
/// then the argument big-endian), and its length: 1, 2, 3 or 5 bytes.
#[inline(always)]
fn uint_word(v: u32) -> (u64, usize) {
    let (ge24, ge256, ge64k) = (u32::from(v >= 24), u32::from(v >= 256), u32::from(v >= 65_536));
    // Argument bytes after the head: 0, 1, 2 or 4.
    let arg_len = ge24 + ge256 + ge64k * 2;
    // Head: the value itself below 24, else 24, 25 or 26 for 1, 2 or 4 argument bytes.
    let head = if ge24 == 1 { 23 + ge24 + ge256 + ge64k } else { v };
    // The argument's bytes, big-endian, in the low `arg_len` bytes (0 when none).
    let be = u64::from(v.swap_bytes()) >> (32 - 8 * arg_len);
    (u64::from(head) | (be << 8), 1 + arg_len as usize)
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

    fn item_by_item(items: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        array(&mut out, items.len());
        for &i in items {
            uint(&mut out, u64::from(i));
        }
        out
    }

    /// The check the proptest makes: `encode` appends exactly what item-by-item
    /// encoding appends, after bytes already in the buffer.
    fn agrees(encode: impl Fn(&mut Vec<u8>, &[u32]), prefix: &[u8], items: &[u32]) -> bool {
        let mut fast = prefix.to_vec();
        encode(&mut fast, items);
        let mut slow = prefix.to_vec();
        slow.extend(item_by_item(items));
        fast == slow
    }

    proptest::proptest! {
        /// Every boundary class, in any order and any length, with bytes already in
        /// the buffer (the array is appended, never written over them).
        #[test]
        fn u32_array_is_canonical_for_any_items(
            prefix in proptest::collection::vec(proptest::num::u8::ANY, 0..4),
            items in proptest::collection::vec(proptest::prop_oneof![
                0u32..24, 24u32..256, 256u32..65_536, 65_536u32..=u32::MAX, proptest::num::u32::ANY], 0..40),
        ) {
            proptest::prop_assert!(agrees(u32_array, &prefix, &items));
        }
    }

    /// Negative control: the same check rejects an encoder with one boundary off by
    /// one (24 written as an immediate), which a single wrong class would be.
    #[test]
    fn a_wrong_encoding_is_noticed() {
        let off_by_one = |out: &mut Vec<u8>, items: &[u32]| {
            array(out, items.len());
            for &v in items {
                if v == 24 { out.push(24) } else { uint(out, u64::from(v)) }
            }
        };
        assert!(agrees(off_by_one, &[], &[1, 23, 25]));
        assert!(!agrees(off_by_one, &[], &[1, 24, 25]));
    }
}
