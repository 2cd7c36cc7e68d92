//! Q4_0, Q4_1 and Q8_0 weights regrouped `lanes` rows at a time (8 for AVX2, 16 for
//! AVX-512) for batched 8-bit matmuls.
//!
//! In ggml's layout each row's blocks are contiguous, so a kernel produces one output
//! at a time and ends every row with a horizontal sum. Here the blocks of `lanes` rows
//! are interleaved: one vector load holds four consecutive weights of each row, so a
//! register's 32-bit lanes are output rows. An input's four bytes are broadcast against
//! it (`maddubs` or `vpdpbusd`), the rows' scales are one vector, and each tile of
//! outputs is one vector store: no horizontal sums, and each unpacked weight register
//! serves every input row of a tile.
//!
//! Q4 nibbles stay nibbles (low and high halves of a byte are two groups of four), so
//! the packed matrix is the size of the encoded one plus padding of the last group.
//! Q8_0 weights are stored offset by 128 (as unsigned bytes, which is what the
//! multiply-add instructions take on one side); the kernel subtracts `128 · Σx`.

use rayon::prelude::*;

use super::GgmlType;

/// A Q4_0, Q4_1 or Q8_0 matrix regrouped for the 8-bit kernels.
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    pub(crate) ty: GgmlType,
    /// Output rows per group: a vector register's 32-bit lanes.
    pub(crate) lanes: usize,
    /// Output rows (the last group may be padded with zero rows).
    pub(crate) rows: usize,
    /// Blocks of 32 per row.
    pub(crate) blocks: usize,
    /// Per group, per block, a record: the weights (see [`Packed::weight_bytes`]),
    /// `lanes` f16 scales, and for Q4_1 `lanes` f16 minimums.
    pub(crate) data: Vec<u8>,
}

impl Packed {
    /// Bytes of one record's weights: four registers of `4 · lanes` bytes for Q4 (each
    /// byte two nibbles), eight for Q8_0.
    pub(crate) fn weight_bytes(ty: GgmlType, lanes: usize) -> usize {
        if ty == GgmlType::Q8_0 { 32 * lanes } else { 16 * lanes }
    }

    /// Bytes of one (group, block) record.
    pub(crate) fn record(ty: GgmlType, lanes: usize) -> usize {
        Self::weight_bytes(ty, lanes) + 2 * lanes + if ty == GgmlType::Q4_1 { 2 * lanes } else { 0 }
    }

    /// Groups of `lanes` rows.
    pub(crate) fn groups(&self) -> usize {
        self.rows.div_ceil(self.lanes)
    }

    /// Group `g`'s records.
    pub(crate) fn group(&self, g: usize) -> &[u8] {
        let n = Self::record(self.ty, self.lanes) * self.blocks;
        &self.data[g * n..(g + 1) * n]
    }

    /// Regroups `rows` encoded rows of `blocks` blocks each (`row(r)` gives row `r`'s
    /// bytes), `lanes` rows per group. `None` for other encodings.
    pub(crate) fn pack<'a>(
        ty: GgmlType,
        lanes: usize,
        rows: usize,
        blocks: usize,
        row: impl Fn(usize) -> &'a [u8] + Sync,
    ) -> Option<Self> {
        if !matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0) || blocks == 0 || rows == 0 || lanes == 0 {
            return None;
        }
        let (bb, wb, rec) = (ty.block_bytes(), Self::weight_bytes(ty, lanes), Self::record(ty, lanes));
        let groups = rows.div_ceil(lanes);
        let mut data = vec![0u8; groups * blocks * rec];
        // Groups in parallel: a 7B model's matrices take seconds on one thread.
        data.par_chunks_exact_mut(blocks * rec).enumerate().for_each(|(g, group)| {
            for (b, out) in group.chunks_exact_mut(rec).enumerate() {
                for r in 0..lanes {
                    let Some(src) = (g * lanes + r < rows).then(|| &row(g * lanes + r)[b * bb..(b + 1) * bb]) else {
                        continue; // padding rows stay zero: scale 0, no contribution
                    };
                    // Register `p` holds in lane `r` (bytes 4r..4r+4) row r's weights
                    // 4p..4p+4.
                    match ty {
                        GgmlType::Q8_0 => {
                            for p in 0..8 {
                                for i in 0..4 {
                                    out[p * 4 * lanes + r * 4 + i] = src[2 + 4 * p + i] ^ 0x80;
                                }
                            }
                        }
                        _ => {
                            let qs = if ty == GgmlType::Q4_0 { 2 } else { 4 };
                            // Element j of a block: qs[j] & 0xf for j < 16, qs[j - 16] >> 4
                            // after. Register p (0..4) holds groups of four p (low nibbles)
                            // and p + 4 (high nibbles).
                            let elem = |j: usize| if j < 16 { src[qs + j] & 0x0f } else { src[qs + j - 16] >> 4 };
                            for p in 0..4 {
                                for i in 0..4 {
                                    out[p * 4 * lanes + r * 4 + i] = elem(4 * p + i) | (elem(4 * (p + 4) + i) << 4);
                                }
                            }
                        }
                    }
                    out[wb + 2 * r..wb + 2 * r + 2].copy_from_slice(&src[..2]);
                    if ty == GgmlType::Q4_1 {
                        out[wb + 2 * lanes + 2 * r..wb + 2 * lanes + 2 * r + 2].copy_from_slice(&src[2..4]);
                    }
                }
            }
        });
        Some(Packed { ty, lanes, rows, blocks, data })
    }
}
