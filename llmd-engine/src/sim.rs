//! The simulated backend: everything but the arithmetic. The engine above it schedules,
//! allocates blocks, emits metrics and KV events exactly as with a real model; each step
//! takes the time a [`LatencyModel`] says, spent on the injected [`Clock`] (so tests on
//! a manual clock run instantly), and produces deterministic tokens. Dozens of these
//! replicas fit on one small machine, which is what scheduler tests and benchmarks need.
//!
//! KV transfer: the simulator holds no keys or values, so its [`KvBlockLayout`] has zero
//! layers and its blocks export as zero bytes; importing checks the layout and the
//! (empty) buffer and writes nothing. What a transfer changes is the engine's block
//! table and prefix cache, which the engine above updates exactly as with a real model,
//! so prefix hits after an import behave the same.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, LogitsWanted, SeqInput, StepLogits};
use crate::clock::Clock;
use crate::error::{EngineError, Result};
use crate::kv::{KvBlockLayout, KvDtype};

/// Step time as a function of the batch, a roofline: a step takes the longer of reading
/// the weights once (`step_overhead`) and the prompt tokens' arithmetic (they overlap: a
/// small prefill hides under the weight read, a large one is compute-bound), plus a small
/// cost per decoding sequence, plus reading the cached K/V every sequence attends to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyModel {
    /// The floor of any step: reading the weights once.
    pub step_overhead: Duration,
    /// Arithmetic per prompt token processed (overlaps the weight read).
    pub per_prefill_token: Duration,
    /// Added per sequence decoding a token.
    pub per_decode_seq: Duration,
    /// Added per cached token a sequence attends to (decode, or a prompt chunk after a
    /// cached prefix).
    pub per_context_token: Duration,
    /// Moving one token's K/V between engines (prefill/decode disaggregation): its bytes
    /// over the link's bandwidth. Spent by the decode side before the request is queued,
    /// not on the engine's step, as an RDMA read overlaps the decode engine's work.
    pub per_transfer_token: Duration,
    /// Copying one token's K/V from host memory back into the device (KV offloading):
    /// its bytes over the host-to-device bandwidth. Spent while the request waits, not
    /// on the engine's step, as vLLM's offloader loads asynchronously.
    pub per_onboard_token: Duration,
    /// Reading one token's K/V from the disk tier, on top of `per_onboard_token`: its
    /// bytes over the disk's read bandwidth.
    pub per_disk_token: Duration,
}

impl Default for LatencyModel {
    /// Llama-3.1-8B's shapes in bf16 on one H100 80GB HBM3, measured by
    /// `scripts/gpu/calibrate_sim.py` (recorded in
    /// `benches/calibration/h100-llama-3.1-8b-shape.json`: PyTorch 2.11, cuBLAS GEMMs,
    /// flash attention, every step replayed as a CUDA graph):
    /// - `step_overhead` 9.3 ms: a decode step of one sequence (16 GB of weights read at
    ///   ~1.7 TB/s; vLLM's fused kernels get nearer the 3.35 TB/s peak, so this is on the
    ///   slow side);
    /// - `per_prefill_token` 33.5 µs: the slope of prefill time over 1 024–4 096 tokens
    ///   (~30 k tokens/s);
    /// - `per_decode_seq` 10.7 µs and `per_context_token` 42 ns: least squares over decode
    ///   steps of 1–128 sequences with 512–4 096 cached tokens each (within 7 %);
    /// - `per_transfer_token` 5.2 µs: not measured; a token's K/V in this model is
    ///   128 KiB (32 layers × K and V × 8 heads × 128 × 2 bytes), over 25 GB/s (a
    ///   200 Gb/s RDMA link at its usual efficiency, as NIXL over UCX gets). A 5 000-token
    ///   prompt moves 655 MB in 26 ms.
    /// - `per_onboard_token` 5.2 µs: not measured; the same 128 KiB over 25 GB/s of
    ///   host-to-device DMA (PCIe Gen5 x16 at about half its peak, as vLLM's offloader's
    ///   contiguous block copies get). A cached 2 000-token prefix comes back in 10.5 ms
    ///   instead of 67 ms of prefill.
    /// - `per_disk_token` 21.8 µs: not measured; 128 KiB over 6 GB/s (one NVMe Gen4
    ///   drive's sequential read).
    ///
    /// With these a 2 400-token prompt computed from scratch takes ~80 ms in two chunks of
    /// the engine's 2 048-token budget, and the same prompt with its prefix cached ~9.4 ms.
    /// Routing ratios depend on that gap; `llmd bench --sim-latency` runs other costs for
    /// sensitivity.
    fn default() -> Self {
        LatencyModel {
            step_overhead: Duration::from_micros(9_300),
            per_prefill_token: Duration::from_nanos(33_500),
            per_decode_seq: Duration::from_nanos(10_700),
            per_context_token: Duration::from_nanos(42),
            per_transfer_token: Duration::from_nanos(5_243),
            per_onboard_token: Duration::from_nanos(5_243),
            per_disk_token: Duration::from_nanos(21_845),
        }
    }
}

impl std::fmt::Display for LatencyModel {
    /// The [`FromStr`](std::str::FromStr) spelling.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step={}us,prefill={}ns,decode={}ns,context={}ns,transfer={}ns,onboard={}ns,disk={}ns",
            self.step_overhead.as_micros(),
            self.per_prefill_token.as_nanos(),
            self.per_decode_seq.as_nanos(),
            self.per_context_token.as_nanos(),
            self.per_transfer_token.as_nanos(),
            self.per_onboard_token.as_nanos(),
            self.per_disk_token.as_nanos()
        )
    }
}

impl std::str::FromStr for LatencyModel {
    type Err = String;

    /// `step=9.3ms,prefill=33.5us,decode=10.7us,context=42ns` (units `s`, `ms`, `us`, `ns`;
    /// keys left out keep the default's value).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut m = LatencyModel::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("{part:?}: expected KEY=DURATION"))?;
            let value = value.trim();
            let split = value.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(value.len());
            let (number, unit) = value.split_at(split);
            let n: f64 = number.parse().map_err(|_| format!("{part:?}: {number:?} is not a number"))?;
            let scale = match unit {
                "s" => 1.0,
                "ms" => 1e-3,
                "us" | "µs" => 1e-6,
                "ns" => 1e-9,
                other => return Err(format!("{part:?}: unit {other:?} (use s, ms, us or ns)")),
            };
            let d = Duration::try_from_secs_f64(n * scale).map_err(|_| format!("{part:?}: not a usable duration"))?;
            match key.trim() {
                "step" => m.step_overhead = d,
                "prefill" => m.per_prefill_token = d,
                "decode" => m.per_decode_seq = d,
                "context" => m.per_context_token = d,
                "transfer" => m.per_transfer_token = d,
                "onboard" => m.per_onboard_token = d,
                "disk" => m.per_disk_token = d,
                other => {
                    return Err(format!(
                        "unknown latency key {other:?} (step, prefill, decode, context, transfer, onboard, disk)"
                    ));
                }
            }
        }
        Ok(m)
    }
}

impl LatencyModel {
    /// Time for one step over `inputs`.
    pub fn step_time(&self, inputs: &[SeqInput<'_>]) -> Duration {
        let mut prefill = Duration::ZERO;
        let mut added = Duration::ZERO;
        for s in inputs {
            if s.tokens.len() == 1 && s.start > 0 {
                added += self.per_decode_seq;
            } else {
                prefill += self.per_prefill_token * s.tokens.len() as u32;
            }
            added += self.per_context_token * s.start as u32;
        }
        self.step_overhead.max(prefill) + added
    }
}

/// A backend that computes nothing.
pub struct SimBackend {
    latency: LatencyModel,
    clock: Arc<dyn Clock>,
    vocab_size: usize,
    max_context: usize,
    tokens: std::ops::Range<u32>,
    seed: u64,
    block_size: usize,
    kv_bytes_per_token: usize,
}

impl std::fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBackend").field("latency", &self.latency).finish_non_exhaustive()
    }
}

impl SimBackend {
    /// A simulated model with `vocab_size` tokens; generated tokens are drawn from
    /// `tokens` (e.g. printable ASCII for the byte tokenizer).
    pub fn new(
        latency: LatencyModel,
        clock: Arc<dyn Clock>,
        vocab_size: usize,
        max_context: usize,
        tokens: std::ops::Range<u32>,
        seed: u64,
    ) -> Self {
        SimBackend {
            latency,
            clock,
            vocab_size,
            max_context,
            tokens,
            seed,
            block_size: 16,
            kv_bytes_per_token: 128 << 10,
        }
    }

    /// Sets the tokens per KV block its [`KvBlockLayout`] reports (default 16, the
    /// engine's default); it must match the engine's `block_size` for KV transfer.
    pub fn with_block_size(mut self, block_size: usize) -> Self {
        self.block_size = block_size;
        self
    }

    /// Sets the bytes one token's K/V would take (default 128 KiB, Llama-3.1-8B in
    /// bf16): what KV offloading's capacities count, as the simulator holds no data.
    pub fn with_kv_bytes_per_token(mut self, bytes: usize) -> Self {
        self.kv_bytes_per_token = bytes;
        self
    }
}

impl Backend for SimBackend {
    fn execute(&mut self, inputs: &[SeqInput<'_>]) -> Result<Vec<StepLogits>> {
        self.clock.sleep(self.latency.step_time(inputs));
        let span = u64::from(self.tokens.end.saturating_sub(self.tokens.start).max(1));
        Ok(inputs
            .iter()
            .map(|s| match s.logits {
                LogitsWanted::None => StepLogits::None,
                _ => {
                    // A function of position and previous token: repeatable, and the
                    // same for a request whether it ran alone or batched.
                    let last = s.tokens.last().copied().unwrap_or(0);
                    let pos = (s.start + s.tokens.len()) as u64;
                    let mut z = self.seed ^ pos.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(last) << 32;
                    z = (z ^ (z >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z ^= z >> 29;
                    StepLogits::Token(self.tokens.start + (z % span) as u32)
                }
            })
            .collect())
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn simulated_transfer_per_token(&self) -> Option<Duration> {
        Some(self.latency.per_transfer_token)
    }

    fn kv_block_bytes(&self) -> Option<usize> {
        Some(self.kv_bytes_per_token * self.block_size)
    }

    fn simulated_onboard_time(&self, tokens: usize, from_disk: usize) -> Option<Duration> {
        let n = |t: usize| u32::try_from(t).unwrap_or(u32::MAX);
        Some(self.latency.per_onboard_token * n(tokens) + self.latency.per_disk_token * n(from_disk))
    }

    fn kv_layout(&self) -> Option<KvBlockLayout> {
        Some(KvBlockLayout {
            num_layers: 0,
            block_size: self.block_size,
            kv_heads: 0,
            head_dim: 0,
            dtype: KvDtype::F16,
        })
    }

    fn export_kv_blocks(&self, _blocks: &[u32]) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn import_kv_blocks(&mut self, _blocks: &[u32], layout: &KvBlockLayout, data: &[u8]) -> Result<()> {
        if let Some(ours) = self.kv_layout() {
            ours.check_compatible(layout)?;
        }
        if !data.is_empty() {
            return Err(EngineError::KvTransfer(format!("{} bytes for simulated blocks, which hold none", data.len())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_specs_parse_print_and_reject_nonsense() {
        let m: LatencyModel = "step=8ms, prefill=160us".parse().unwrap();
        assert_eq!(m.step_overhead, Duration::from_millis(8));
        assert_eq!(m.per_prefill_token, Duration::from_micros(160));
        assert_eq!(m.per_decode_seq, LatencyModel::default().per_decode_seq);
        assert_eq!(m.to_string().parse::<LatencyModel>().unwrap(), m);
        for bad in ["step", "step=fast", "step=3 parsecs", "warp=1ms", "step=-1ms"] {
            assert!(bad.parse::<LatencyModel>().is_err(), "{bad}");
        }
    }

    fn seq(tokens: &[u32], start: usize) -> SeqInput<'_> {
        SeqInput { tokens, start, block_table: &[], logits: LogitsWanted::Last }
    }

    #[test]
    fn step_time_is_a_roofline_of_weight_reads_and_prompt_arithmetic() {
        let m: LatencyModel = "step=10ms,prefill=10us,decode=1us,context=1ns".parse().unwrap();
        let ms = Duration::from_millis;
        // an empty step still reads the weights
        assert_eq!(m.step_time(&[]), ms(10));
        // 500 prompt tokens (5 ms of arithmetic) hide under the weight read; 3 000 do not
        let small = vec![0u32; 500];
        let big = vec![0u32; 3_000];
        assert_eq!(m.step_time(&[seq(&small, 0)]), ms(10));
        assert_eq!(m.step_time(&[seq(&big, 0)]), ms(30));
        // decoding sequences add their own cost and their context's, prefill or not
        let one = [7u32];
        let t = m.step_time(&[seq(&big, 0), seq(&one, 1_000), seq(&one, 2_000)]);
        assert_eq!(t, ms(30) + Duration::from_micros(2) + Duration::from_nanos(3_000));
        // a prompt chunk after a cached prefix pays for attending to it
        assert_eq!(m.step_time(&[seq(&small, 4_000)]), ms(10) + Duration::from_nanos(4_000));
    }

    #[test]
    fn the_default_prices_a_cached_prefix_far_below_a_miss() {
        // the routing benchmarks rest on this gap: a 2 400-token prompt in the engine's
        // 2 048-token chunks, against its last 80 tokens after a cached prefix
        let m = LatencyModel::default();
        let prompt = vec![0u32; 2_400];
        let miss = m.step_time(&[seq(&prompt[..2_048], 0)]) + m.step_time(&[seq(&prompt[2_048..], 2_048)]);
        let hit = m.step_time(&[seq(&prompt[2_320..], 2_320)]);
        assert!(miss > hit * 8 && miss < hit * 10, "miss {miss:?} hit {hit:?}");
    }
}
