//! Benchmark scenarios: YAML files under `benches/scenarios/` that generate a seeded,
//! bounded list of requests with Poisson (open-loop) arrival times.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use llmd_scheduler::plugins::latency::{TPOT_SLO_HEADER, TTFT_SLO_HEADER};
use serde::Deserialize;

/// Latency objectives a request must meet to count toward goodput.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
pub struct Slo {
    /// Time to first token, milliseconds.
    pub ttft_ms: f64,
    /// Mean inter-token latency, milliseconds.
    pub itl_ms: f64,
}

/// A scenario file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name used in reports.
    pub name: String,
    /// `shared-prefix` (prefixes × questions), `multi-turn` (conversations that grow
    /// turn by turn) or `random`.
    pub kind: String,
    /// Requests per run.
    pub requests: usize,
    /// Arrival rates to sweep, requests per second.
    pub rates: Vec<f64>,
    /// Seed for prompts and arrivals.
    pub seed: u64,
    /// Distinct shared prefixes (`shared-prefix`).
    #[serde(default)]
    pub prefixes: usize,
    /// Characters per shared prefix.
    #[serde(default)]
    pub prefix_chars: usize,
    /// Characters per question.
    #[serde(default)]
    pub question_chars: usize,
    /// Characters per prompt (`random`); with `prompt_chars_max`, the shortest.
    #[serde(default)]
    pub prompt_chars: usize,
    /// Longest prompt (`random`): lengths uniform in `prompt_chars..=prompt_chars_max`.
    #[serde(default)]
    pub prompt_chars_max: Option<usize>,
    /// Conversations (`multi-turn`).
    #[serde(default)]
    pub sessions: usize,
    /// Characters each turn adds to its conversation (`multi-turn`).
    #[serde(default)]
    pub turn_chars: usize,
    /// Tokens to generate per request; with `max_tokens_max`, the fewest.
    pub max_tokens: usize,
    /// Most tokens to generate: counts uniform in `max_tokens..=max_tokens_max`.
    #[serde(default)]
    pub max_tokens_max: Option<usize>,
    /// Goodput objectives.
    pub slo: Slo,
    /// KV-cache blocks per replica when `llmd bench` starts the cluster: the memory
    /// pressure the scenario is about (`--kv-blocks` overrides).
    #[serde(default)]
    pub kv_blocks: Option<usize>,
    /// Requests left out of the steady-state figures (default: the first quarter).
    #[serde(default)]
    pub warmup_requests: Option<usize>,
    /// A cache-pressure sweep (`shared-prefix`): for each factor, a run whose prefix
    /// working set is that many times one replica's KV capacity (`prefixes` is then
    /// derived: factor × blocks × 16 tokens ÷ the prefix's tokens at a byte a token).
    #[serde(default)]
    pub kv_pressure: Option<Vec<f64>>,
    /// Send every request with llm-d's SLO headers, `x-llm-d-slo-ttft-ms` and
    /// `x-llm-d-slo-tpot-ms`, set to `slo`'s TTFT and mean ITL: what predicted-latency
    /// routing's SLO mode reads (it also needs `"stream": true`, which the built-in
    /// client always sends). Built-in client only. Default false.
    #[serde(default)]
    pub slo_headers: bool,
    /// Host memory per replica for KV offloading, in KV blocks, for routings that turn
    /// it on (`ROUTING@cpu`, `@cpu-disk`, `@shared-disk`; a disk tier holds four times
    /// as many).
    #[serde(default)]
    pub offload_blocks: Option<usize>,
}

/// One request of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// When to send it, from the run's start.
    pub at: Duration,
    /// The prompt.
    pub prompt: String,
    /// Tokens to generate.
    pub max_tokens: usize,
    /// Extra request headers (name, value): the SLO headers with `slo_headers`.
    pub headers: Vec<(String, String)>,
}

/// Seeded draws: the same scenario file always yields the same requests.
struct Rng(llmd_kvcache::rng::SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn text(&mut self, chars: usize) -> String {
        const WORDS: [&str; 16] = [
            "cache", "token", "block", "route", "model", "serve", "query", "batch", "prefix", "decode", "replica",
            "latency", "kernel", "tensor", "stream", "gateway",
        ];
        let mut s = String::with_capacity(chars + 8);
        while s.len() < chars {
            s.push_str(WORDS[(self.next() % 16) as usize]);
            s.push(' ');
        }
        s.truncate(chars);
        s
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let s: Scenario = serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        s.check().with_context(|| format!("{}", path.display()))?;
        Ok(s)
    }

    fn check(&self) -> Result<()> {
        if self.requests == 0 || self.rates.is_empty() || self.rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
            bail!("requests must be positive and rates a non-empty list of positive numbers");
        }
        match self.kind.as_str() {
            "shared-prefix" if (self.prefixes == 0 && self.kv_pressure.is_none()) || self.prefix_chars == 0 => {
                bail!("shared-prefix needs prefix_chars, and prefixes or kv_pressure")
            }
            _ if self
                .kv_pressure
                .as_ref()
                .is_some_and(|p| p.is_empty() || p.iter().any(|f| !(f.is_finite() && *f > 0.0))) =>
            {
                bail!("kv_pressure must be a non-empty list of positive factors")
            }
            _ if self.kv_pressure.is_some() && self.kind != "shared-prefix" => {
                bail!("kv_pressure applies to shared-prefix scenarios")
            }
            "shared-prefix" => Ok(()),
            "random" if self.prompt_chars == 0 => bail!("random needs prompt_chars"),
            _ if self.prompt_chars_max.is_some_and(|m| m < self.prompt_chars) => {
                bail!("prompt_chars_max is below prompt_chars")
            }
            _ if self.max_tokens_max.is_some_and(|m| m < self.max_tokens) => {
                bail!("max_tokens_max is below max_tokens")
            }
            "random" => Ok(()),
            "multi-turn" if self.sessions == 0 || self.turn_chars == 0 => {
                bail!("multi-turn needs sessions and turn_chars")
            }
            "multi-turn" => Ok(()),
            other => bail!("unknown kind {other:?} (shared-prefix, multi-turn, random)"),
        }
    }

    /// Requests left out of the steady-state figures.
    pub fn warmup(&self) -> usize {
        self.warmup_requests.unwrap_or(self.requests / 4).min(self.requests)
    }

    /// The scenario once per cache-pressure factor (itself alone without a sweep), each
    /// named `NAME@FACTORx` with the prefix count that makes the prefixes' working set
    /// that factor of `kv_blocks` blocks of `block_size` tokens (byte tokenizer: a token
    /// a character, plus one).
    pub fn pressure_variants(&self, kv_blocks: usize, block_size: usize) -> Vec<Scenario> {
        let Some(factors) = &self.kv_pressure else { return vec![self.clone()] };
        let prefix_blocks = (self.prefix_chars + 1).div_ceil(block_size).max(1) as f64;
        factors
            .iter()
            .map(|&f| {
                let prefixes = ((f * kv_blocks as f64 / prefix_blocks).round() as usize).max(1);
                Scenario { name: format!("{}@{f}x", self.name), prefixes, kv_pressure: None, ..self.clone() }
            })
            .collect()
    }

    /// The requests of a run at `rate` requests per second.
    pub fn plan(&self, rate: f64) -> Vec<Planned> {
        let mut rng = Rng(llmd_kvcache::rng::SplitMix64::new(self.seed));
        let prefixes: Vec<String> = (0..self.prefixes).map(|_| rng.text(self.prefix_chars)).collect();
        // Each conversation so far; a turn appends to one at random.
        let mut sessions: Vec<String> = (0..self.sessions).map(|i| format!("Conversation {i}.\n")).collect();
        let mut at = 0.0f64;
        let headers: Vec<(String, String)> = if self.slo_headers {
            vec![
                (TTFT_SLO_HEADER.to_string(), self.slo.ttft_ms.to_string()),
                (TPOT_SLO_HEADER.to_string(), self.slo.itl_ms.to_string()),
            ]
        } else {
            Vec::new()
        };
        (0..self.requests)
            .map(|i| {
                // Exponential gaps: a Poisson process.
                at += -rng.unit().ln() / rate;
                let prompt = match self.kind.as_str() {
                    "shared-prefix" => {
                        let p = &prefixes[(rng.next() % prefixes.len() as u64) as usize];
                        format!("{p}\nQuestion {i}: {}", rng.text(self.question_chars))
                    }
                    "multi-turn" => {
                        let k = (rng.next() % sessions.len() as u64) as usize;
                        let turn = rng.text(self.turn_chars);
                        sessions[k].push_str(&format!("User: {turn}\n"));
                        sessions[k].clone()
                    }
                    _ => {
                        let chars = match self.prompt_chars_max {
                            Some(max) => {
                                self.prompt_chars + (rng.next() % (max - self.prompt_chars + 1) as u64) as usize
                            }
                            None => self.prompt_chars,
                        };
                        rng.text(chars)
                    }
                };
                let max_tokens = match self.max_tokens_max {
                    Some(max) => self.max_tokens + (rng.next() % (max - self.max_tokens + 1) as u64) as usize,
                    None => self.max_tokens,
                };
                Planned { at: Duration::from_secs_f64(at), prompt, max_tokens, headers: headers.clone() }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_seeded_bounded_and_poisson_paced() {
        let s: Scenario = serde_yaml_ng::from_str(
            "{name: t, kind: shared-prefix, requests: 2000, rates: [50], seed: 9, prefixes: 3, prefix_chars: 50, question_chars: 10, max_tokens: 4, slo: {ttft_ms: 1, itl_ms: 1}}",
        )
        .unwrap();
        let a = s.plan(50.0);
        assert_eq!(a, s.plan(50.0));
        assert_eq!(a.len(), 2000);
        // Mean gap of a Poisson process at 50/s is 20 ms.
        let mean = a.last().unwrap().at.as_secs_f64() / 2000.0;
        assert!((mean - 0.02).abs() < 0.002, "{mean}");
        let distinct: std::collections::HashSet<&str> = a.iter().map(|p| &p.prompt[..50]).collect();
        assert_eq!(distinct.len(), 3);
        let chat: Scenario = serde_yaml_ng::from_str(
            "{name: c, kind: multi-turn, requests: 20, rates: [5], seed: 1, sessions: 2, turn_chars: 10, max_tokens: 2, slo: {ttft_ms: 1, itl_ms: 1}}",
        )
        .unwrap();
        chat.check().unwrap();
        let turns = chat.plan(5.0);
        // Every turn extends an earlier prompt of its conversation.
        for (i, t) in turns.iter().enumerate().skip(2) {
            let earlier = turns[..i].iter().filter(|p| t.prompt.starts_with(&p.prompt)).count();
            assert!(earlier >= 1 || t.prompt.matches("User:").count() == 1, "turn {i}");
        }
        let bad: Result<Scenario, _> = serde_yaml_ng::from_str(
            "{name: t, kind: x, requests: 1, rates: [1], seed: 1, max_tokens: 1, slo: {ttft_ms: 1, itl_ms: 1}}",
        );
        assert!(bad.unwrap().check().is_err());
    }

    #[test]
    fn a_pressure_sweep_sizes_the_prefix_count_to_the_cache() {
        let s: Scenario = serde_yaml_ng::from_str(
            "{name: cp, kind: shared-prefix, requests: 40, rates: [5], seed: 1, kv_pressure: [0.25, 1, 4], prefix_chars: 2399, question_chars: 8, max_tokens: 2, slo: {ttft_ms: 1, itl_ms: 1}}",
        )
        .unwrap();
        s.check().unwrap();
        // 2 400 tokens a prefix = 150 blocks of 16; 1 024 blocks a replica.
        let v = s.pressure_variants(1024, 16);
        let got: Vec<(&str, usize)> = v.iter().map(|x| (x.name.as_str(), x.prefixes)).collect();
        assert_eq!(got, [("cp@0.25x", 2), ("cp@1x", 7), ("cp@4x", 27)]);
        assert!(v.iter().all(|x| x.kv_pressure.is_none() && x.plan(5.0).len() == 40));
        assert_eq!(s.warmup(), 10, "a quarter by default");
        // Nonsense factors, or a sweep on a scenario without prefixes, are refused.
        let bad: Scenario = serde_yaml_ng::from_str(
            "{name: cp, kind: shared-prefix, requests: 4, rates: [5], seed: 1, kv_pressure: [0], prefix_chars: 10, max_tokens: 2, slo: {ttft_ms: 1, itl_ms: 1}}",
        )
        .unwrap();
        assert!(bad.check().is_err());
        let random: Scenario = serde_yaml_ng::from_str(
            "{name: r, kind: random, requests: 4, rates: [5], seed: 1, kv_pressure: [1], prompt_chars: 10, max_tokens: 2, slo: {ttft_ms: 1, itl_ms: 1}}",
        )
        .unwrap();
        assert!(random.check().is_err());
    }

    #[test]
    fn mixed_sizes_stay_in_their_ranges() {
        let s: Scenario = serde_yaml_ng::from_str(
            "{name: m, kind: random, requests: 500, rates: [10], seed: 2, prompt_chars: 10, prompt_chars_max: 40, max_tokens: 2, max_tokens_max: 9, slo: {ttft_ms: 1, itl_ms: 1}}",
        )
        .unwrap();
        s.check().unwrap();
        let plan = s.plan(10.0);
        assert!(plan.iter().all(|p| (10..=40).contains(&p.prompt.len()) && (2..=9).contains(&p.max_tokens)));
        // Both ends are reached: the ranges are really used.
        assert!(plan.iter().any(|p| p.prompt.len() <= 12) && plan.iter().any(|p| p.prompt.len() >= 38));
        assert!(plan.iter().any(|p| p.max_tokens == 2) && plan.iter().any(|p| p.max_tokens == 9));
        let bad: Scenario = serde_yaml_ng::from_str(
            "{name: m, kind: random, requests: 1, rates: [1], seed: 2, prompt_chars: 10, prompt_chars_max: 5, max_tokens: 2, slo: {ttft_ms: 1, itl_ms: 1}}",
        )
        .unwrap();
        assert!(bad.check().is_err());
    }

    #[test]
    fn slo_headers_carry_the_scenarios_own_objectives() {
        let base = "{name: s, kind: random, requests: 3, rates: [5], seed: 2, prompt_chars: 10, max_tokens: 2, slo: {ttft_ms: 250, itl_ms: 12.5}";
        let without: Scenario = serde_yaml_ng::from_str(&format!("{base}}}")).unwrap();
        assert!(!without.slo_headers);
        assert!(without.plan(5.0).iter().all(|p| p.headers.is_empty()), "off by default");
        let with: Scenario = serde_yaml_ng::from_str(&format!("{base}, slo_headers: true}}")).unwrap();
        with.check().unwrap();
        let plan = with.plan(5.0);
        let want = [
            ("x-llm-d-slo-ttft-ms".to_string(), "250".to_string()),
            ("x-llm-d-slo-tpot-ms".to_string(), "12.5".to_string()),
        ];
        assert!(plan.iter().all(|p| p.headers == want), "{:?}", plan[0].headers);
        // The headers change nothing else about the plan.
        let same = |a: &[Planned], b: &[Planned]| {
            a.iter().zip(b).all(|(x, y)| (x.at, &x.prompt, x.max_tokens) == (y.at, &y.prompt, y.max_tokens))
        };
        assert!(same(&plan, &without.plan(5.0)));
    }
}
