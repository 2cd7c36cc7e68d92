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

/// Step time as a function of the batch: a fixed overhead, a cost per prefill token, and
/// for decode a cost per sequence and per token of context attended to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyModel {
    /// Fixed cost of any step.
    pub step_overhead: Duration,
    /// Cost per token of prompt processed.
    pub per_prefill_token: Duration,
    /// Cost per sequence decoding a token.
    pub per_decode_seq: Duration,
    /// Cost per cached token a decoding sequence attends to.
    pub per_context_token: Duration,
}

impl Default for LatencyModel {
    /// Llama-3.1-8B in bf16 on one H100 SXM, from the card's datasheet figures (3.35 TB/s
    /// of HBM3, 989 TFLOPS dense bf16) and stated efficiencies, not from a trace:
    /// - `step_overhead` 7 ms: every step reads the 16 GB of weights, at 70 % of peak
    ///   bandwidth (the decode floor at batch 1: ~140 tokens/s, in line with what vLLM
    ///   users report for this pair);
    /// - `per_prefill_token` 32 µs: 2 × 8 G FLOPs a token at 50 % of peak compute
    ///   (~31 k prefill tokens/s);
    /// - `per_decode_seq` 32 µs: the same FLOPs for each sequence decoding a token;
    /// - `per_context_token` 56 ns: 128 KiB of K/V a cached token (32 layers × 8 KV
    ///   heads × 128 × 2 × 2 bytes) read at 70 % of peak bandwidth.
    ///
    /// Routing ratios depend on these (a miss costs `per_prefill_token` × its tokens);
    /// `llmd bench --sim-latency` runs others for sensitivity.
    fn default() -> Self {
        LatencyModel {
            step_overhead: Duration::from_micros(7_000),
            per_prefill_token: Duration::from_micros(32),
            per_decode_seq: Duration::from_micros(32),
            per_context_token: Duration::from_nanos(56),
        }
    }
}

impl std::fmt::Display for LatencyModel {
    /// The [`FromStr`](std::str::FromStr) spelling.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step={}us,prefill={}ns,decode={}ns,context={}ns",
            self.step_overhead.as_micros(),
            self.per_prefill_token.as_nanos(),
            self.per_decode_seq.as_nanos(),
            self.per_context_token.as_nanos()
        )
    }
}

impl std::str::FromStr for LatencyModel {
    type Err = String;

    /// `step=7ms,prefill=32us,decode=32us,context=56ns` (units `s`, `ms`, `us`, `ns`;
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
                other => return Err(format!("unknown latency key {other:?} (step, prefill, decode, context)")),
            }
        }
        Ok(m)
    }
}

impl LatencyModel {
    /// Time for one step over `inputs`.
    pub fn step_time(&self, inputs: &[SeqInput<'_>]) -> Duration {
        let mut t = self.step_overhead;
        for s in inputs {
            if s.tokens.len() == 1 && s.start > 0 {
                t += self.per_decode_seq + self.per_context_token * s.start as u32;
            } else {
                t += self.per_prefill_token * s.tokens.len() as u32;
            }
        }
        t
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
        SimBackend { latency, clock, vocab_size, max_context, tokens, seed, block_size: 16 }
    }

    /// Sets the tokens per KV block its [`KvBlockLayout`] reports (default 16, the
    /// engine's default); it must match the engine's `block_size` for KV transfer.
    pub fn with_block_size(mut self, block_size: usize) -> Self {
        self.block_size = block_size;
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
}
