//! Q4_0 and Q4_1 weights regrouped eight rows at a time for batched 8-bit matmuls.
//!
//! In ggml's layout each row's blocks are contiguous, so a kernel produces one output
//! at a time and ends every row with a horizontal sum. Here the blocks of eight rows
//! are interleaved: one 32-byte load holds four consecutive weights of each of the eight
//! rows for two groups of four (low and high nibbles), so a 256-bit register's eight
//! 32-bit lanes are eight output rows. An input's four bytes are broadcast against it
//! (`maddubs`), the eight rows' scales are one vector, and
//! each tile of eight outputs is stored straight into the result row: no horizontal
//! sums, and each unpacked weight register serves every input row of a tile. The same
//! nibbles, with the scales and minimums kept as f16, so the packed matrix is the size
//! of the encoded one (plus padding of the last group to eight rows).

use rayon::prelude::*;

use super::GgmlType;

/// Output rows per group.
pub(crate) const ROWS: usize = 8;
/// Bytes of one group's nibbles for one block: 8 rows × 32 weights / 2.
pub(crate) const NIBBLES: usize = ROWS * 16;

/// A Q4_0 or Q4_1 matrix regrouped for the 8-bit kernels.
#[derive(Debug, Clone)]
pub(crate) struct Packed8 {
    pub(crate) ty: GgmlType,
    /// Output rows (the last group may be padded with zero rows).
    pub(crate) rows: usize,
    /// Blocks of 32 per row.
    pub(crate) blocks: usize,
    /// Per group, per block, a record: nibbles, eight f16 scales, and for Q4_1 eight
    /// f16 minimums.
    pub(crate) data: Vec<u8>,
}

impl Packed8 {
    /// Bytes of one (group, block) record.
    pub(crate) fn record(ty: GgmlType) -> usize {
        NIBBLES + 2 * ROWS + if ty == GgmlType::Q4_1 { 2 * ROWS } else { 0 }
    }

    /// Groups of eight rows.
    pub(crate) fn groups(&self) -> usize {
        self.rows.div_ceil(ROWS)
    }

    /// Regroups `rows` encoded rows of `blocks` blocks each (`row(r)` gives row `r`'s
    /// bytes). `None` for other encodings.
    pub(crate) fn pack<'a>(
        ty: GgmlType,
        rows: usize,
        blocks: usize,
        row: impl Fn(usize) -> &'a [u8] + Sync,
    ) -> Option<Self> {
        let (qs_at, bb) = match ty {
            GgmlType::Q4_0 => (2, 18),
            GgmlType::Q4_1 => (4, 20),
            _ => return None,
        };
        if blocks == 0 || rows == 0 {
            return None;
        }
        let rec = Self::record(ty);
        let groups = rows.div_ceil(ROWS);
        let mut data = vec![0u8; groups * blocks * rec];
        // Groups in parallel: a 7B model's matrices take seconds on one thread.
        data.par_chunks_exact_mut(blocks * rec).enumerate().for_each(|(g, group)| {
            for (b, out) in group.chunks_exact_mut(rec).enumerate() {
                for r in 0..ROWS {
                    let Some(src) = (g * ROWS + r < rows).then(|| &row(g * ROWS + r)[b * bb..(b + 1) * bb]) else {
                        continue; // padding rows stay zero: scale 0, no contribution
                    };
                    // Element j of a block: qs[j] & 0xf for j < 16, qs[j - 16] >> 4 after.
                    let elem = |j: usize| if j < 16 { src[qs_at + j] & 0x0f } else { src[qs_at + j - 16] >> 4 };
                    // Register pair p (0..4) holds groups of four p (low nibbles) and
                    // p + 4 (high nibbles); lane r is bytes 4r..4r+4.
                    for p in 0..4 {
                        for i in 0..4 {
                            out[p * 32 + r * 4 + i] = elem(4 * p + i) | (elem(4 * (p + 4) + i) << 4);
                        }
                    }
                    out[NIBBLES + 2 * r..NIBBLES + 2 * r + 2].copy_from_slice(&src[..2]);
                    if ty == GgmlType::Q4_1 {
                        out[NIBBLES + 2 * ROWS + 2 * r..NIBBLES + 2 * ROWS + 2 * r + 2].copy_from_slice(&src[2..4]);
                    }
                }
            }
        });
        Some(Packed8 { ty, rows, blocks, data })
    }
}
