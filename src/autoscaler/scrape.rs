//! A replica's `/metrics` as a policy reads it: the gauges as they are, and window means
//! (ITL, TTFT, prefill time, prompt and output lengths) and rates from how much the
//! counters and histograms grew since the same replica was last read.

use std::collections::HashMap;

use llmd_autoscale::ReplicaMetrics;

/// Sums and counts of the series a window needs, over every engine rank.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counters {
    success: f64,
    ttft: (f64, f64),
    itl: (f64, f64),
    prefill: (f64, f64),
    prompt: (f64, f64),
    output: (f64, f64),
}

fn counters(text: &str) -> Counters {
    let mut c = Counters::default();
    for (name, _, v) in llmd_scheduler::scrape::samples(text) {
        let slot = match name {
            "vllm:request_success_total" => {
                c.success += v;
                continue;
            }
            "vllm:time_to_first_token_seconds_sum" => &mut c.ttft.0,
            "vllm:time_to_first_token_seconds_count" => &mut c.ttft.1,
            // vLLM renamed time_per_output_token to inter_token_latency; read both.
            "vllm:inter_token_latency_seconds_sum" | "vllm:time_per_output_token_seconds_sum" => &mut c.itl.0,
            "vllm:inter_token_latency_seconds_count" | "vllm:time_per_output_token_seconds_count" => &mut c.itl.1,
            "vllm:request_prefill_time_seconds_sum" => &mut c.prefill.0,
            "vllm:request_prefill_time_seconds_count" => &mut c.prefill.1,
            "vllm:request_prompt_tokens_sum" => &mut c.prompt.0,
            "vllm:request_prompt_tokens_count" => &mut c.prompt.1,
            "vllm:request_generation_tokens_sum" => &mut c.output.0,
            "vllm:request_generation_tokens_count" => &mut c.output.1,
            _ => continue,
        };
        *slot += v;
    }
    c
}

/// One replica's window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// Its gauges and latency means, for the policy.
    pub metrics: ReplicaMetrics,
    /// Requests finished per second (`vllm:request_success_total`'s rate): its share of
    /// the arrival rate once the load is steady.
    pub finished_rate: f64,
    /// Prompt tokens and requests finished in the window (for the mean prompt).
    pub prompt: (f64, f64),
    /// Output tokens and requests finished in the window (for the mean output).
    pub output: (f64, f64),
}

/// The last counters seen per replica.
#[derive(Debug, Default)]
pub struct Windows {
    last: HashMap<String, (f64, Counters)>,
}

impl Windows {
    /// Reads replica `name` (of `variant`) from its exposition `text` at `now` seconds.
    /// The first read of a replica has gauges only; a counter that went down (the
    /// engine restarted) starts the window again.
    pub fn read(&mut self, name: &str, variant: &str, text: &str, now: f64) -> Reading {
        let scraped = llmd_scheduler::scrape::parse(text);
        let cur = counters(text);
        let prev = self.last.insert(name.to_string(), (now, cur));
        let mut r = Reading {
            metrics: ReplicaMetrics {
                name: name.into(),
                variant: variant.into(),
                kv_usage: scraped.metrics.kv_usage,
                waiting: scraped.metrics.waiting as f64,
                running: scraped.metrics.running as f64,
                itl: None,
                ttft: None,
                prefill_time: None,
                prefill_rate: None,
            },
            ..Reading::default()
        };
        let Some((then, old)) = prev else { return r };
        let secs = now - then;
        if secs <= 0.0 || cur.success < old.success {
            return r;
        }
        let d = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0, a.1 - b.1);
        let mean = |(sum, n): (f64, f64)| (n > 0.0).then(|| sum / n);
        r.metrics.ttft = mean(d(cur.ttft, old.ttft));
        r.metrics.itl = mean(d(cur.itl, old.itl));
        let prefill = d(cur.prefill, old.prefill);
        r.metrics.prefill_time = mean(prefill);
        r.metrics.prefill_rate = Some(prefill.1 / secs);
        r.finished_rate = (cur.success - old.success) / secs;
        r.prompt = d(cur.prompt, old.prompt);
        r.output = d(cur.output, old.output);
        r
    }

    /// Forgets replicas not in `live` (gone pods).
    pub fn retain(&mut self, live: &[String]) {
        self.last.retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn exposition(success: f64, ttft: (f64, f64), itl: (f64, f64), waiting: f64) -> String {
        format!(
            "vllm:num_requests_waiting{{engine=\"0\"}} {waiting}\nvllm:num_requests_running{{engine=\"0\"}} 4\n\
             vllm:kv_cache_usage_perc{{engine=\"0\"}} 0.5\n\
             vllm:request_success_total{{finished_reason=\"length\"}} {success}\n\
             vllm:time_to_first_token_seconds_sum {}\nvllm:time_to_first_token_seconds_count {}\n\
             vllm:inter_token_latency_seconds_sum {}\nvllm:inter_token_latency_seconds_count {}\n\
             vllm:request_prefill_time_seconds_sum {}\nvllm:request_prefill_time_seconds_count {}\n\
             vllm:request_prompt_tokens_sum {}\nvllm:request_prompt_tokens_count {success}\n",
            ttft.0,
            ttft.1,
            itl.0,
            itl.1,
            ttft.0 / 2.0,
            ttft.1,
            success * 500.0
        )
    }

    #[test]
    fn windows_turn_counters_into_means_and_rates() {
        let mut w = Windows::default();
        let first = w.read("p", "v", &exposition(10.0, (2.0, 10.0), (3.0, 100.0), 1.0), 0.0);
        assert_eq!((first.metrics.waiting, first.metrics.running, first.metrics.kv_usage), (1.0, 4.0, 0.5));
        assert_eq!((first.metrics.itl, first.finished_rate), (None, 0.0), "the first read has no window");
        let second = w.read("p", "v", &exposition(40.0, (8.0, 40.0), (6.0, 200.0), 0.0), 15.0);
        assert_eq!(second.finished_rate, 2.0);
        assert!((second.metrics.ttft.unwrap() - 0.2).abs() < 1e-12);
        assert!((second.metrics.itl.unwrap() - 0.03).abs() < 1e-12);
        assert!((second.metrics.prefill_time.unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(second.metrics.prefill_rate, Some(2.0));
        assert_eq!(second.prompt, (15_000.0, 30.0));
        // A restarted engine (counters fell): gauges only, the window starts again.
        let restarted = w.read("p", "v", &exposition(1.0, (0.1, 1.0), (0.0, 0.0), 0.0), 30.0);
        assert_eq!((restarted.metrics.itl, restarted.finished_rate), (None, 0.0));
    }
}
