//! Matrices kept in their file encoding, and `y = x · Wᵀ` over them.
//!
//! By default ([`Activations::Int8`]) the inputs of a Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 matmul are
//! quantized as llama.cpp quantizes them (blocks of 32 to 8 bits: Q8_1 against Q4_1 and
//! Q5_1, Q8_0 against the others) and each block's products are summed as integers,
//! llama.cpp's `ggml_vec_dot_*` arithmetic (AVX2 and AVX-512 VNNI kernels in `x86.rs`).
//! Otherwise, and with [`Activations::F32`], each weight row is dequantized into a small
//! buffer (a row of an 8B-class model is at most 56 KiB as f32) and dotted with f32
//! inputs: the dequantized model's result to float rounding.
//!
//! Either way a batch reads each weight row once per call. Matrices multiplied with
//! 8-bit inputs also keep their rows regrouped for the packed kernel (`packed.rs`, made
//! on first use or by [`QMatrix::prepare`]): Q4_0 and Q4_1 eight rows at a time with
//! AVX2, and Q8_0 too, sixteen at a time, with AVX-512 VNNI. It is a second copy the
//! size of the encoded one. Output rows are split across rayon's threads, each task
//! writing its rows' outputs straight into the result. The portable inner loops are
//! written for the compiler to vectorize and compiled twice: for the baseline target
//! and, on x86-64, for AVX2 with FMA, chosen at run time.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use rayon::prelude::*;

use super::GgmlType;
use super::blocks::{dequantize_row, q5_values};
use super::packed::Packed;
use crate::error::{EngineError, Result};

/// How a matmul over an encoded matrix treats its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// As llama.cpp: quantized to 8 bits per block of 32 for Q4_0, Q4_1 and Q8_0
    /// weights, with integer dot products (f32 for the other encodings). The
    /// arithmetic GGUF quantizations are measured with, and 2–3× faster here.
    #[default]
    Int8,
    /// Kept in f32 against dequantized weight rows: the dequantized model's exact
    /// result (what transformers computes from a GGUF file), to float rounding.
    F32,
}

/// A `[rows, cols]` row-major matrix in a ggml encoding.
#[derive(Debug, Clone)]
pub struct QMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: Bytes,
    activations: Activations,
    /// Rows regrouped for the packed 8-bit kernel, made once on first use (`None`
    /// where that kernel does not apply).
    packed: OnceLock<Option<Packed>>,
    /// The file mapping `data` is a view of, if any ([`QMatrix::with_mapping`]).
    mapping: Option<Arc<memmap2::Mmap>>,
}

impl QMatrix {
    /// A matrix over `data`, which must hold exactly `rows` rows of `cols` values.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: Bytes) -> Result<Self> {
        let row = ty.row_bytes(cols as u64).ok_or_else(|| {
            EngineError::Weights(format!("{cols} columns are not whole {ty:?} blocks of {}", ty.block_elements()))
        })?;
        if (row as usize).checked_mul(rows) != Some(data.len()) {
            return Err(EngineError::Weights(format!(
                "{} bytes for a {rows}×{cols} {ty:?} matrix, expected {}",
                data.len(),
                row as u128 * rows as u128
            )));
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            data,
            activations: Activations::default(),
            packed: OnceLock::new(),
            mapping: None,
        })
    }

    /// The same matrix, its matmul treating inputs as `a` says.
    pub fn with_activations(mut self, a: Activations) -> Self {
        self.activations = a;
        // What was packed (or not) was for the previous setting.
        self.packed = OnceLock::new();
        self
    }

    /// Makes ahead of time what the matmul would make on first use (the rows regrouped
    /// for the packed 8-bit kernel), so a loader pays for it instead of the first
    /// request. Only for matrices that will be multiplied: an embedding read by row
    /// never needs it.
    ///
    /// Where the matrix is a view of a file mapping ([`with_mapping`](Self::with_mapping))
    /// and its rows were regrouped, the mapped pages are then let go: the kernel reads
    /// only the regrouped copy, so the process holds about the file's size, not twice
    /// it. The pages come back from the file if the encoded rows are read again (a tied
    /// embedding's rows, looked up per token, come back one page at a time).
    pub fn prepare(&self) {
        if self.packed().is_some() {
            self.release_mapped_pages();
        }
    }

    /// The same matrix, its bytes known to be a view of `map` (a read-only file
    /// mapping): [`prepare`](Self::prepare) may then drop their pages from memory.
    /// Elsewhere than Unix this is recorded and nothing is dropped.
    pub fn with_mapping(mut self, map: Option<Arc<memmap2::Mmap>>) -> Self {
        self.mapping = map;
        self
    }

    /// Tells the kernel this matrix's whole pages of the mapping are not needed now
    /// (`MADV_DONTNEED`; a hint, errors ignored).
    fn release_mapped_pages(&self) {
        #[cfg(unix)]
        {
            let Some(map) = &self.mapping else { return };
            let (base, ptr) = (map.as_ptr() as usize, self.data.as_ptr() as usize);
            if ptr < base || ptr + self.data.len() > base + map.len() {
                return; // not a view of this mapping after all
            }
            // Whole 64 KiB spans inside the matrix: page-aligned for any page size up to
            // that, so no page shared with a neighbouring tensor is touched.
            const ALIGN: usize = 64 << 10;
            let (start, end) = ((ptr - base).next_multiple_of(ALIGN), (ptr - base + self.data.len()) / ALIGN * ALIGN);
            if end > start {
                // SAFETY: the mapping is read-only (PROT_READ), so none of its pages was
                // ever written: a dropped page is read back from the file (or the page
                // cache) on its next access, with the same contents. The range is
                // within the mapping.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
            }
        }
    }

    /// The regrouped rows the packed 8-bit kernel reads, where it applies: 8-bit
    /// inputs, and weights in an encoding this CPU's kernel takes (Q4_0 and Q4_1 with
    /// AVX2, FMA and F16C; Q8_0 too with AVX-512 VNNI).
    fn packed(&self) -> Option<&Packed> {
        self.packed
            .get_or_init(|| {
                let kernel = packed_kernel().filter(|k| k.takes(self.ty))?;
                if self.activations != Activations::Int8 {
                    return None;
                }
                Packed::pack(self.ty, kernel.lanes, self.rows, self.cols / 32, |r| self.row(r))
            })
            .as_ref()
    }

    /// How its matmul treats inputs.
    pub fn activations(&self) -> Activations {
        self.activations
    }

    /// The encoding.
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// Rows (outputs of a linear layer).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    /// Row `r`'s encoded bytes.
    pub fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.ty, self.row(r), out);
    }

    /// The whole matrix as f32 (for the GPU upload and tests; the CPU path never
    /// needs it).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        out.par_chunks_mut(self.cols.max(1)).enumerate().for_each(|(r, o)| self.dequantize_row_into(r, o));
        out
    }

    /// The same matrix with its rows reordered: row `i` of the result is row
    /// `order[i]` of this one (whole rows move, so any encoding permutes exactly).
    pub fn permute_rows(&self, order: &[usize]) -> Result<Self> {
        let mut seen = vec![false; self.rows];
        let permutation =
            order.len() == self.rows && order.iter().all(|&r| r < self.rows && !std::mem::replace(&mut seen[r], true));
        if !permutation {
            return Err(EngineError::Weights(format!(
                "a row order of {} entries is not a permutation of {} rows",
                order.len(),
                self.rows
            )));
        }
        let mut data = Vec::with_capacity(self.data.len());
        for &r in order {
            data.extend_from_slice(self.row(r));
        }
        Ok(QMatrix::new(self.ty, self.rows, self.cols, data.into())?.with_activations(self.activations))
    }

    /// `y[m, rows] = x[m, cols] · selfᵀ`.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let (n, k) = (self.rows, self.cols);
        assert!(x.len() >= m * k && y.len() >= m * n, "qmatmul: buffers smaller than {m} rows");
        if m == 0 || n == 0 {
            return;
        }
        if let (Some(p), Some(kernel)) = (self.packed(), packed_kernel()) {
            let q8 = quantize_rows(&x[..m * k], k, with_sum(self.ty));
            return packed_products(&[(self, p)], kernel, &q8, m, &mut [y]);
        }
        let dot = dot_fn();
        // Rows per task: enough tasks to balance the threads, few enough to amortize.
        let per = (n / (rayon::current_num_threads() * 8)).clamp(4, 256);
        let int8 = self.activations == Activations::Int8
            && matches!(self.ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0);
        let q8: Vec<Vec<Q8Block>> = if int8 { quantize_rows(&x[..m * k], k, with_sum(self.ty)) } else { Vec::new() };
        let block_dot = block_dot_fn();
        let fill = |j0: usize, out: &mut [f32]| {
            if int8 {
                for (dj, o) in out.chunks_mut(m).enumerate() {
                    block_dot(self.ty, self.row(j0 + dj), &q8, o);
                }
                return;
            }
            let mut w = vec![0.0f32; k];
            for (dj, o) in out.chunks_mut(m).enumerate() {
                self.dequantize_row_into(j0 + dj, &mut w);
                for (i, v) in o.iter_mut().enumerate() {
                    *v = dot(&x[i * k..(i + 1) * k], &w);
                }
            }
        };
        if m == 1 {
            y[..n].par_chunks_mut(per).enumerate().for_each(|(c, out)| fill(c * per, out));
            return;
        }
        // Each task owns whole weight rows: it writes them as columns of y through a
        // transposed buffer.
        let mut t = vec![0.0f32; n * m];
        t.par_chunks_mut(per * m).enumerate().for_each(|(c, out)| fill(c * per, out));
        y[..m * n].par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                *v = t[j * m + i];
            }
        });
    }
}

impl QMatrix {
    /// `ys[i] = x · mats[i]ᵀ` for matrices sharing their input (a layer's query, key
    /// and value projections; its gate and up projections): where all take the packed
    /// kernel with the same encoding, the input is quantized once and all their rows
    /// are split across the threads in one parallel section instead of one each, which
    /// at batch 1 is much of a step's cost.
    pub fn matmul_many(mats: &[&QMatrix], x: &[f32], m: usize, ys: &mut [&mut [f32]]) {
        assert_eq!(mats.len(), ys.len(), "qmatmul: one output per matrix");
        let packed: Option<Vec<(&QMatrix, &Packed)>> = mats.iter().map(|q| q.packed().map(|p| (*q, p))).collect();
        // One section where all are packed alike: the same encoding and input width.
        let first = mats.first().copied().filter(|f| mats.iter().all(|q| (q.cols, q.ty) == (f.cols, f.ty)));
        match (packed, packed_kernel(), first) {
            (Some(packed), Some(kernel), Some(first)) if m > 0 => {
                let k = first.cols;
                assert!(x.len() >= m * k, "qmatmul: input smaller than {m} rows");
                let q8 = quantize_rows(&x[..m * k], k, with_sum(first.ty));
                packed_products(&packed, kernel, &q8, m, ys);
            }
            _ => {
                for (q, y) in mats.iter().zip(ys.iter_mut()) {
                    q.matmul(x, m, y);
                }
            }
        }
    }
}

/// The packed products of several matrices with the same quantized input, in one
/// parallel section: tasks of up to 64 groups of rows, from all the matrices, each
/// writing its groups' outputs straight into their columns of the result.
fn packed_products(
    mats: &[(&QMatrix, &Packed)],
    kernel: PackedKernel,
    q8: &[Vec<Q8Block>],
    m: usize,
    ys: &mut [&mut [f32]],
) {
    let total: usize = mats.iter().map(|(_, p)| p.groups()).sum();
    let per = (total / (rayon::current_num_threads() * 8)).clamp(1, 64);
    let mut tasks: Vec<(usize, usize, usize)> = Vec::with_capacity(total / per + mats.len());
    let mut outs = Vec::with_capacity(mats.len());
    for (i, ((q, p), y)) in mats.iter().zip(ys.iter_mut()).enumerate() {
        assert!(y.len() >= m * q.rows, "qmatmul: output smaller than {m} rows");
        assert_eq!(p.lanes, kernel.lanes, "qmatmul: packed for another kernel");
        outs.push(Columns(y.as_mut_ptr()));
        tasks.extend((0..p.groups()).step_by(per).map(|g0| (i, g0, (g0 + per).min(p.groups()))));
    }
    let outs = &outs;
    let lanes = kernel.lanes;
    tasks.into_par_iter().for_each_init(Vec::new, |tile: &mut Vec<f32>, (i, g0, g1)| {
        let ((q, p), y) = (&mats[i], &outs[i]);
        let n = q.rows;
        tile.resize(m * lanes, 0.0);
        for g in g0..g1 {
            (kernel.run)(p.ty, p.group(g), q8, tile);
            let (c0, w) = (g * lanes, lanes.min(n - g * lanes));
            // SAFETY: `y` holds m rows of n (asserted above) and outlives this section;
            // the tasks' group ranges are disjoint, so each writes only its own
            // columns c0..c0 + w of every row.
            unsafe {
                match (lanes, w) {
                    (16, 16) => put_columns::<16>(tile, y.0, n, c0),
                    (8, 8) => put_columns::<8>(tile, y.0, n, c0),
                    _ => {
                        for (r, t) in tile.chunks_exact(lanes).enumerate() {
                            std::ptr::copy_nonoverlapping(t.as_ptr(), y.0.add(r * n + c0), w);
                        }
                    }
                }
            }
        }
    });
}

/// Row `r` of `tile` (`L` wide) into columns `c0..c0 + L` of row `r` of `y` (`n`
/// wide): fixed-size copies, where a variable length would call `memcpy` per row.
///
/// # Safety
/// `y` must be valid for writes of `tile.len() / L` rows of `n`, and `c0 + L <= n`.
#[inline(always)]
unsafe fn put_columns<const L: usize>(tile: &[f32], y: *mut f32, n: usize, c0: usize) {
    for (r, t) in tile.chunks_exact(L).enumerate() {
        let t: &[f32; L] = t.try_into().expect("chunks_exact gives L");
        // SAFETY: in bounds by the caller's promise; `[f32; L]` has f32's alignment.
        unsafe { y.add(r * n + c0).cast::<[f32; L]>().write_unaligned(*t) };
    }
}

/// A result matrix the tasks of one parallel section fill, each in its own columns.
struct Columns(*mut f32);
// SAFETY: shared only within `packed_products`, whose tasks write disjoint elements.
unsafe impl Send for Columns {}
unsafe impl Sync for Columns {}

/// Whether inputs against `ty` carry Q8_1's `d · Σq` (weights with a minimum).
fn with_sum(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1)
}

/// Each row of `x` (`k` wide) quantized to 8 bits; split across threads only in runs
/// of at least four rows, enough to pay for the dispatch.
fn quantize_rows(x: &[f32], k: usize, with_sum: bool) -> Vec<Vec<Q8Block>> {
    x.par_chunks(k).with_min_len(4).map(|row| quantize_q8(row, with_sum)).collect()
}

type PackedFn = fn(GgmlType, &[u8], &[Vec<Q8Block>], &mut [f32]);

/// A packed 8-bit kernel: `run(ty, group, inputs, out)` writes `lanes` outputs per
/// input row into `out`.
#[derive(Clone, Copy)]
struct PackedKernel {
    lanes: usize,
    /// Whether it takes Q8_0 (Q4_0 and Q4_1 it always takes).
    q8_0: bool,
    run: PackedFn,
}

impl PackedKernel {
    fn takes(&self, ty: GgmlType) -> bool {
        matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1) || (ty == GgmlType::Q8_0 && self.q8_0)
    }
}

/// The packed 8-bit kernel this CPU runs best, where it runs one.
fn packed_kernel() -> Option<PackedKernel> {
    static CHOSEN: OnceLock<Option<PackedKernel>> = OnceLock::new();
    *CHOSEN.get_or_init(|| packed_kernels().last().copied())
}

/// Every packed kernel this CPU runs, slowest first (the tests check each).
fn packed_kernels() -> Vec<PackedKernel> {
    #[allow(unused_mut)]
    let mut kernels = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            kernels.push(PackedKernel { lanes: 8, q8_0: false, run: packed_avx2 });
        }
        if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
            kernels.push(PackedKernel { lanes: 16, q8_0: true, run: packed_vnni });
        }
    }
    kernels
}

#[cfg(target_arch = "x86_64")]
fn packed_avx2(ty: GgmlType, recs: &[u8], xs: &[Vec<Q8Block>], out: &mut [f32]) {
    // SAFETY: chosen only after `is_x86_feature_detected!` found AVX2, FMA and F16C;
    // `recs` is one group's whole eight-lane records and each `xs` row has as many
    // blocks; `out` has eight slots per input row (`packed_products`).
    unsafe { super::x86::packed_rows(ty, recs, xs, out) }
}

#[cfg(target_arch = "x86_64")]
fn packed_vnni(ty: GgmlType, recs: &[u8], xs: &[Vec<Q8Block>], out: &mut [f32]) {
    // SAFETY: chosen only after `is_x86_feature_detected!` found AVX-512 F, BW and
    // VNNI; `recs` is one group's whole sixteen-lane records and each `xs` row has as
    // many blocks; `out` has sixteen slots per input row.
    unsafe { super::x86::packed_rows_vnni(ty, recs, xs, out) }
}

/// A block of 32 inputs quantized to 8 bits: `x ≈ d · q`; `s` is `d · Σq` (Q8_1's
/// extra term, used against weights with a minimum).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Q8Block {
    pub(super) d: f32,
    pub(super) s: f32,
    /// `Σq`, exact (the packed Q4_0 kernel subtracts `8 · Σq` for the weights' offset).
    pub(super) sum: i32,
    pub(super) q: [i8; 32],
}

type QuantizeFn = fn(&[f32], bool) -> Vec<Q8Block>;

/// llama.cpp's x86 `quantize_row_q8_0`/`q8_1`: per block, `d = max|x| / 127` (stored
/// as f16), `q = x · 127 / max|x|` rounded to nearest even, and for Q8_1
/// `s = f16(d · Σq)`.
pub(crate) fn quantize_q8(x: &[f32], with_sum: bool) -> Vec<Q8Block> {
    static CHOSEN: OnceLock<QuantizeFn> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
            return quantize_q8_avx2;
        }
        quantize_q8_lanes
    })(x, with_sum)
}

#[cfg(target_arch = "x86_64")]
fn quantize_q8_avx2(x: &[f32], with_sum: bool) -> Vec<Q8Block> {
    #[target_feature(enable = "avx2,f16c")]
    fn inner(x: &[f32], with_sum: bool) -> Vec<Q8Block> {
        let mut out = Vec::with_capacity(x.len().div_ceil(32));
        let mut blocks = x.chunks_exact(32);
        for c in blocks.by_ref() {
            let c: &[f32; 32] = c.try_into().expect("chunks_exact gives 32");
            // SAFETY: this function's features are the kernel's.
            out.push(unsafe { super::x86::quantize_block(c, with_sum) });
        }
        if !blocks.remainder().is_empty() {
            let mut v = [0.0f32; 32];
            v[..blocks.remainder().len()].copy_from_slice(blocks.remainder());
            // SAFETY: as above.
            out.push(unsafe { super::x86::quantize_block(&v, with_sum) });
        }
        out
    }
    // SAFETY: chosen only after `is_x86_feature_detected!` found AVX2 and F16C.
    unsafe { inner(x, with_sum) }
}

/// A block from its quantized values: `d` and `s` rounded through f16 as llama.cpp
/// stores them.
#[inline(always)]
fn q8_block(d: f32, q: [i8; 32], sum: i32, with_sum: bool) -> Q8Block {
    let s = if with_sum { half::f16::from_f32(sum as f32 * d).to_f32() } else { 0.0 };
    Q8Block { d: half::f16::from_f32(d).to_f32(), s, sum, q }
}

/// [`quantize_q8`] on any CPU.
fn quantize_q8_lanes(x: &[f32], with_sum: bool) -> Vec<Q8Block> {
    x.chunks(32)
        .map(|c| {
            let amax = c.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            // As llama.cpp's x86 kernels: `127 / max`, rounded to nearest even.
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut q = [0i8; 32];
            for (q, v) in q.iter_mut().zip(c) {
                *q = round_to_i8(v * id);
            }
            q8_block(amax / 127.0, q, q.iter().map(|&v| i32::from(v)).sum(), with_sum)
        })
        .collect()
}

/// `x` (within ±127) rounded to the nearest integer, ties to even, without a libm
/// call or a saturating float-to-int conversion, so the loop vectorizes: adding
/// 1.5 · 2^23 leaves the rounded value in the low mantissa bits.
#[inline(always)]
fn round_to_i8(x: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    ((x + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits())) as i32 as i8
}

#[inline(always)]
fn f16_le(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// One encoded weight row against every quantized input row, block by block as
/// llama.cpp's `ggml_vec_dot_q4_0_q8_0`, `…q4_1_q8_1`, `…q5_0_q8_0`, `…q5_1_q8_1`,
/// `…q8_0_q8_0`: `out[i]` gets
/// row `i`'s dot product. Each weight block is unpacked once for the whole batch.
#[inline(always)]
fn block_dot_lanes(ty: GgmlType, w: &[u8], xs: &[Vec<Q8Block>], out: &mut [f32]) {
    let bb = ty.block_bytes();
    out.fill(0.0);
    for (bi, b) in w.chunks_exact(bb).enumerate() {
        let mut wq = [0i8; 32];
        let (scale, min) = match ty {
            GgmlType::Q8_0 => {
                for (o, &v) in wq.iter_mut().zip(&b[2..34]) {
                    *o = v as i8;
                }
                (f16_le(b), 0.0)
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let (off, bias) = if ty == GgmlType::Q4_0 { (2, 8) } else { (4, 0) };
                let (lo, hi) = wq.split_at_mut(16);
                for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[off..off + 16]) {
                    *l = (v & 0x0f) as i8 - bias;
                    *h = (v >> 4) as i8 - bias;
                }
                (f16_le(b), if ty == GgmlType::Q4_1 { f16_le(&b[2..]) } else { 0.0 })
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let with_min = ty == GgmlType::Q5_1;
                let bias = if with_min { 0 } else { 16 };
                for (o, v) in wq.iter_mut().zip(q5_values(b, with_min)) {
                    *o = v as i8 - bias;
                }
                (f16_le(b), if with_min { f16_le(&b[2..]) } else { 0.0 })
            }
            _ => unreachable!("only the 8-bit input path comes here"),
        };
        for (o, x) in out.iter_mut().zip(xs) {
            let xb = &x[bi];
            *o += scale * xb.d * dot_i8(&wq, &xb.q) as f32 + min * xb.s;
        }
    }
}

#[inline(always)]
fn dot_i8(a: &[i8; 32], b: &[i8; 32]) -> i32 {
    // Widening to i16 pairs first lets the compiler use multiply-add-pairs.
    let mut acc = [0i32; 8];
    for (a, b) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for j in 0..8 {
            acc[j] += i32::from(i16::from(a[j]) * i16::from(b[j]));
        }
    }
    acc.iter().sum()
}

type BlockDotFn = fn(GgmlType, &[u8], &[Vec<Q8Block>], &mut [f32]);

fn block_dot_fn() -> BlockDotFn {
    static CHOSEN: OnceLock<BlockDotFn> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            return block_dot_avx2;
        }
        block_dot_lanes
    })
}

#[cfg(target_arch = "x86_64")]
fn block_dot_avx2(ty: GgmlType, w: &[u8], xs: &[Vec<Q8Block>], out: &mut [f32]) {
    if matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1) {
        // No hand-written kernel for them: the portable one, compiled for AVX2.
        #[target_feature(enable = "avx2,fma,f16c")]
        fn lanes(ty: GgmlType, w: &[u8], xs: &[Vec<Q8Block>], out: &mut [f32]) {
            block_dot_lanes(ty, w, xs, out)
        }
        // SAFETY: as below.
        return unsafe { lanes(ty, w, xs, out) };
    }
    // SAFETY: chosen only after `is_x86_feature_detected!` found AVX2, FMA and F16C;
    // `w` is one row of whole blocks, each `xs` row that row's quantized input (same
    // count), and only Q4_0, Q4_1 and Q8_0 take this path.
    unsafe { super::x86::dot_rows(ty, w, xs, out) }
}

type DotFn = fn(&[f32], &[f32]) -> f32;

/// `Σ a·b` over the shorter of the two, with the fastest kernel this CPU runs.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_fn()(a, b)
}

fn dot_fn() -> DotFn {
    static CHOSEN: OnceLock<DotFn> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return dot_avx2;
        }
        dot_portable
    })
}

/// `L` independent accumulators so the compiler vectorizes; fused multiply-adds only
/// where the hardware has them (elsewhere `mul_add` is a slow library call).
#[inline(always)]
fn dot_lanes<const L: usize, const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let madd = |x: f32, y: f32, acc: f32| if FMA { x.mul_add(y, acc) } else { acc + x * y };
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..L {
            acc[l] = madd(x[l], y[l], acc[l]);
        }
    }
    ra.iter().zip(rb).fold(acc.iter().sum(), |s, (x, y)| madd(*x, *y, s))
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes::<8, false>(a, b)
}

#[cfg(target_arch = "x86_64")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn inner(a: &[f32], b: &[f32]) -> f32 {
        dot_lanes::<16, true>(a, b)
    }
    // SAFETY: chosen only after `is_x86_feature_detected!` found AVX2 and FMA.
    unsafe { inner(a, b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_agree_with_a_plain_sum() {
        let a: Vec<f32> = (0..1037).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..1037).map(|i| ((i * 5) % 11) as f32 * 0.25).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot_portable(&a, &b), want);
        assert_eq!(dot(&a, &b), want, "small integers sum exactly in any order");
        assert_eq!(dot_lanes::<16, true>(&a[..3], &b[..3]), a[..3].iter().zip(&b).map(|(x, y)| x * y).sum::<f32>());
    }

    /// The AVX2 kernels against the portable ones on random blocks of each encoding.
    #[test]
    fn the_simd_block_dots_agree_with_the_portable_ones() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1] {
            let blocks = 18;
            let mut w: Vec<u8> = (0..blocks * ty.block_bytes()).map(|_| rnd() as u8).collect();
            for b in w.chunks_exact_mut(ty.block_bytes()) {
                b[..2].copy_from_slice(&half::f16::from_f32(0.01 + (rnd() % 100) as f32 * 1e-4).to_le_bytes());
                if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                    b[2..4].copy_from_slice(&half::f16::from_f32(-0.05).to_le_bytes());
                }
            }
            let x: Vec<f32> = (0..blocks * 32).map(|_| (rnd() % 2001) as f32 / 1000.0 - 1.0).collect();
            let xs = vec![quantize_q8(&x, with_sum(ty))];
            let (mut portable, mut chosen) = ([0.0f32], [0.0f32]);
            block_dot_lanes(ty, &w, &xs, &mut portable);
            block_dot_fn()(ty, &w, &xs, &mut chosen);
            assert!(
                (portable[0] - chosen[0]).abs() <= 1e-4 * portable[0].abs().max(1.0),
                "{ty:?}: {portable:?} vs {chosen:?}"
            );
        }
    }

    #[test]
    fn rounding_to_i8_is_to_nearest_even() {
        for (x, want) in
            [(0.5f32, 0i8), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (126.7, 127), (-127.0, -127), (0.49, 0)]
        {
            assert_eq!(round_to_i8(x), want, "{x}");
        }
        for i in -1270..=1270 {
            let x = i as f32 / 10.0 + 0.03;
            assert_eq!(round_to_i8(x), x.round_ties_even() as i8, "{x}");
        }
    }

    /// Every packed kernel this CPU runs (AVX2's eight lanes, AVX-512 VNNI's sixteen)
    /// against the row-by-row portable one, for each encoding it takes, row counts
    /// that leave a partial last group and batches that leave partial tiles.
    #[test]
    fn the_packed_kernels_agree_with_the_row_kernel() {
        let kernels = packed_kernels();
        if kernels.is_empty() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C, so there is no packed kernel");
            return;
        }
        for kernel in kernels {
            for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0].into_iter().filter(|&t| kernel.takes(t)) {
                for rows in [1usize, 8, 13, 24, 40] {
                    let cols = 96;
                    let q = random_matrix(ty, rows, cols, rows as u64 * 31 + ty as u64);
                    let p = Packed::pack(ty, kernel.lanes, rows, cols / 32, |r| q.row(r)).unwrap();
                    for m in [1usize, 2, 3, 4, 5, 7, 8, 9, 10, 15, 17] {
                        let x: Vec<f32> = (0..m * cols).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
                        let q8 = quantize_rows(&x, cols, with_sum(ty));
                        let mut y = vec![f32::NAN; m * rows];
                        packed_products(&[(&q, &p)], kernel, &q8, m, &mut [&mut y]);
                        assert!(close(&y, &reference(&q, &x, m)), "{} lanes, {ty:?}, rows={rows}, m={m}", kernel.lanes);
                    }
                }
            }
        }
    }

    /// The vectorized quantization equals the portable one, ties and zeros included.
    #[test]
    fn quantizing_agrees_with_the_portable_code() {
        let mut x: Vec<f32> = (0..32 * 7 + 5).map(|i| ((i * 7919) % 2001) as f32 / 997.0 - 1.0).collect();
        x[32..64].fill(0.0); // a zero block: scale 0
        x[64] = 127.0; // q = x exactly, ties elsewhere at .5
        for (i, v) in x[65..96].iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        // Garbage in (NaN, infinity) stays consistent: the sum is the stored bytes' sum.
        let mut bad = x[..64].to_vec();
        bad[3] = f32::NAN;
        bad[40] = f32::INFINITY;
        for b in quantize_q8(&bad, true) {
            assert_eq!(b.sum, b.q.iter().map(|&v| i32::from(v)).sum::<i32>());
        }
        for with_sum in [false, true] {
            let (a, b) = (quantize_q8(&x, with_sum), quantize_q8_lanes(&x, with_sum));
            assert_eq!(a.len(), b.len());
            for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                assert_eq!((a.d, a.s, a.sum, a.q), (b.d, b.s, b.sum, b.q), "block {i}");
            }
        }
    }

    /// A random Q4_0/Q4_1/Q8_0 matrix with sane scales (and minimums).
    pub(crate) fn random_matrix(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> QMatrix {
        let mut s = seed | 1;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let bb = ty.block_bytes();
        let mut w: Vec<u8> = (0..rows * cols / 32 * bb).map(|_| rnd() as u8).collect();
        for b in w.chunks_exact_mut(bb) {
            b[..2].copy_from_slice(&half::f16::from_f32(0.01 + (rnd() % 100) as f32 * 1e-4).to_le_bytes());
            if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                b[2..4].copy_from_slice(&half::f16::from_f32(-0.05 + (rnd() % 10) as f32 * 1e-3).to_le_bytes());
            }
        }
        QMatrix::new(ty, rows, cols, w.into()).unwrap()
    }

    /// The row-by-row portable kernel's product: the reference for the others.
    fn reference(q: &QMatrix, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (q.rows(), q.cols());
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            let xs = vec![quantize_q8(&x[i * k..(i + 1) * k], with_sum(q.ggml_type()))];
            for j in 0..n {
                let mut o = [0.0f32];
                block_dot_lanes(q.ggml_type(), q.row(j), &xs, &mut o);
                y[i * n + j] = o[0];
            }
        }
        y
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * y.abs().max(1.0))
    }

    /// Several matrices over one input in one section equal the reference: fused (one
    /// encoding, one width) or not (mixed encodings or widths fall back to one call
    /// each). On one thread, tasks cover several groups with a partial last task.
    #[test]
    fn matmul_many_equals_the_reference() {
        let q = |ty, rows, cols, seed| random_matrix(ty, rows, cols, seed).with_activations(Activations::Int8);
        let sets = [
            vec![q(GgmlType::Q4_1, 100, 64, 1), q(GgmlType::Q4_1, 64, 64, 2), q(GgmlType::Q4_1, 37, 64, 3)],
            vec![q(GgmlType::Q4_0, 100, 64, 4), q(GgmlType::Q4_0, 13, 64, 5)],
            vec![q(GgmlType::Q4_0, 16, 64, 6), q(GgmlType::Q4_1, 24, 64, 7)],
            vec![q(GgmlType::Q4_0, 16, 64, 8), q(GgmlType::Q4_0, 8, 96, 9)],
            vec![q(GgmlType::Q4_0, 16, 64, 10), q(GgmlType::Q8_0, 5, 64, 11)],
        ];
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        for mats in &sets {
            for m in [1usize, 2, 6] {
                for single in [false, true] {
                    // Wide enough for every matrix's own stride (the fallback reads
                    // each with its own width).
                    let x: Vec<f32> = (0..m * 96).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
                    let mut outs: Vec<Vec<f32>> = mats.iter().map(|q| vec![f32::NAN; m * q.rows()]).collect();
                    let refs: Vec<&QMatrix> = mats.iter().collect();
                    let mut slices: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
                    let mut run = || QMatrix::matmul_many(&refs, &x, m, &mut slices);
                    if single {
                        one.install(run)
                    } else {
                        run()
                    }
                    for (q, y) in mats.iter().zip(&outs) {
                        let want = reference(q, &x[..m * q.cols()], m);
                        assert!(close(y, &want), "{:?} {}×{} m={m} single={single}", q.ggml_type(), q.rows(), q.cols());
                    }
                }
            }
        }
    }

    /// A matrix viewed from a file mapping gives the same products, and the same rows,
    /// after `prepare` has let its mapped pages go (they are read back from the file).
    #[test]
    fn releasing_mapped_pages_keeps_the_matrix() {
        let (rows, cols) = (64usize, 2048usize); // 64 × 2304 bytes: many whole pages
        let q = random_matrix(GgmlType::Q4_0, rows, cols, 13).with_activations(Activations::Int8);
        let path = std::env::temp_dir().join(format!("llmd-qmatrix-{}.bin", std::process::id()));
        std::fs::write(&path, q.bytes()).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a private read-only map of a file only this test writes, before.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.unwrap());
        std::fs::remove_file(&path).unwrap();
        let data = Bytes::from_owner(map.as_ref().to_vec()); // a heap copy, for the reference
        let heap = QMatrix::new(GgmlType::Q4_0, rows, cols, data).unwrap().with_activations(Activations::Int8);
        let owner = map.clone();
        let view = Bytes::from_owner(OwnedMap(owner));
        let mapped = QMatrix::new(GgmlType::Q4_0, rows, cols, view)
            .unwrap()
            .with_activations(Activations::Int8)
            .with_mapping(Some(map));
        mapped.prepare();
        let x: Vec<f32> = (0..3 * cols).map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0).collect();
        let (mut a, mut b) = (vec![0.0; 3 * rows], vec![0.0; 3 * rows]);
        heap.matmul(&x, 3, &mut a);
        mapped.matmul(&x, 3, &mut b);
        assert_eq!(a, b);
        assert_eq!(heap.to_f32(), mapped.to_f32(), "rows read back from the file");
    }

    struct OwnedMap(Arc<memmap2::Mmap>);
    impl AsRef<[u8]> for OwnedMap {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    /// Q5_0 and Q5_1 with 8-bit inputs (llama.cpp's `vec_dot_q5_*` arithmetic) equal the
    /// dequantized matrix times the dequantized 8-bit inputs, at batch 1 and batched
    /// (to float rounding, and for Q5_1 the f16 rounding of each block's `d · Σq`).
    #[test]
    fn q5_matmuls_take_8_bit_inputs() {
        for ty in [GgmlType::Q5_0, GgmlType::Q5_1] {
            let (rows, cols) = (13usize, 96usize);
            let q = random_matrix(ty, rows, cols, 21).with_activations(Activations::Int8);
            let w = q.to_f32();
            for m in [1usize, 5] {
                let x: Vec<f32> = (0..m * cols).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
                let mut y = vec![0.0; m * rows];
                q.matmul(&x, m, &mut y);
                for i in 0..m {
                    let xq: Vec<f32> = quantize_q8(&x[i * cols..(i + 1) * cols], false)
                        .iter()
                        .flat_map(|b| b.q.map(|v| f32::from(v) * b.d))
                        .collect();
                    for j in 0..rows {
                        let terms = (0..cols).map(|c| w[j * cols + c] * xq[c]);
                        let (want, size) = terms.fold((0.0f32, 0.0f32), |(s, a), t| (s + t, a + t.abs()));
                        let got = y[i * rows + j];
                        assert!((got - want).abs() <= 1e-3 * size + 1e-5, "{ty:?} m={m} ({i},{j}): {got} vs {want}");
                    }
                }
            }
        }
    }

    /// Changing the input mode drops what was packed for the old one.
    #[test]
    fn switching_activations_repacks() {
        let q = random_matrix(GgmlType::Q4_0, 16, 64, 12).with_activations(Activations::Int8);
        let x: Vec<f32> = (0..64).map(|i| (i % 9) as f32 - 4.0).collect();
        let mut y = vec![0.0; 16];
        q.matmul(&x, 1, &mut y); // packs, where the CPU has the kernel
        let f = q.with_activations(Activations::F32);
        assert!(f.packed().is_none());
        f.matmul(&x, 1, &mut y);
        let w = f.to_f32();
        for j in 0..16 {
            let want: f32 = (0..64).map(|c| x[c] * w[j * 64 + c]).sum();
            assert!((y[j] - want).abs() <= 1e-4 * want.abs().max(1.0), "{j}: {} vs {want}", y[j]);
        }
        let back = f.with_activations(Activations::Int8);
        assert_eq!(back.packed().is_some(), packed_kernel().is_some());
    }

    #[test]
    fn matmul_matches_the_dequantized_matrix_for_any_batch() {
        // A Q8_0 matrix of 5 rows × 64: scales 0.5, values i − 16.
        let mut data = Vec::new();
        for r in 0..5u8 {
            for _ in 0..2 {
                data.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
                data.extend((0..32u8).map(|i| (i as i8 - 16 + r as i8) as u8));
            }
        }
        let q = QMatrix::new(GgmlType::Q8_0, 5, 64, data.into()).unwrap().with_activations(Activations::F32);
        let w = q.to_f32();
        for m in [1usize, 3] {
            let x: Vec<f32> = (0..m * 64).map(|i| (i % 9) as f32 - 4.0).collect();
            let mut y = vec![0.0; m * 5];
            q.matmul(&x, m, &mut y);
            for i in 0..m {
                for j in 0..5 {
                    let want: f32 = (0..64).map(|c| x[i * 64 + c] * w[j * 64 + c]).sum();
                    assert_eq!(y[i * 5 + j], want, "m={m} ({i},{j})");
                }
            }
            // llama.cpp's 8-bit inputs: within their rounding (half a step of
            // max|x|/127 per input, times |w|).
            let mut y8 = vec![0.0; m * 5];
            q.clone().with_activations(Activations::Int8).matmul(&x, m, &mut y8);
            for (a, b) in y8.iter().zip(&y) {
                assert!((a - b).abs() <= 64.0 * 0.5 * (4.0 / 127.0) * 8.0, "{a} vs {b}");
            }
        }
        let p = q.permute_rows(&[4, 3, 2, 1, 0]).unwrap();
        assert_eq!(p.row(0), q.row(4));
        assert!(q.permute_rows(&[0, 1]).is_err() && q.permute_rows(&[0, 1, 2, 3, 3]).is_err());
        assert!(QMatrix::new(GgmlType::Q8_0, 5, 63, Bytes::new()).is_err());
    }
}
