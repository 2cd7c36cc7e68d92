//! Reading an engine's Prometheus exposition (vLLM's text format or llmd's OpenMetrics)
//! into [`EndpointMetrics`]. Only the series the scorers use are read; everything else
//! is skipped, so newer engines with more metrics parse fine.

use crate::endpoint::EndpointMetrics;

/// What one scrape yields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scraped {
    /// The metrics scorers use.
    pub metrics: EndpointMetrics,
    /// `block_size` label of `vllm:cache_config_info`, if present.
    pub block_size: Option<usize>,
    /// `num_gpu_blocks` label of `vllm:cache_config_info` (the KV cache's size), if present.
    pub num_gpu_blocks: Option<u64>,
    /// Where the engine publishes KV events (`endpoint` label of llmd's
    /// `llmd:kv_events_info`), so pickers find the stream without being told.
    pub kv_events: Option<String>,
}

/// Label pairs of one sample.
type Labels = Vec<(String, String)>;

/// Splits `name{labels} value` into its parts (labels unescaped).
fn sample(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        let mut key = String::new();
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next().map(|x| x.1) != Some('"') {
                        return None;
                    }
                    let mut val = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next().map(|x| x.1) {
                                Some('n') => val.push('\n'),
                                Some(o) => val.push(o),
                                None => return None,
                            },
                            '"' => break,
                            o => val.push(o),
                        }
                    }
                    labels.push((std::mem::take(&mut key), val));
                }
                o => key.push(o),
            }
        }
        &body[end? + 1..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// Every sample of an exposition as `(name, labels, value)`; comments and lines that do
/// not parse are skipped.
pub fn samples(text: &str) -> impl Iterator<Item = (&str, Vec<(String, String)>, f64)> {
    text.lines().filter_map(sample)
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn list(v: Option<&str>) -> Vec<String> {
    v.map(|s| s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(String::from).collect()).unwrap_or_default()
}

/// Parses an exposition. Engines with several data-parallel ranks report several series:
/// queues add up; cache usage takes the fullest rank.
pub fn parse(text: &str) -> Scraped {
    let mut out = Scraped::default();
    let mut lora_ts = f64::NEG_INFINITY;
    let mut saw_kv = false;
    for line in text.lines() {
        let Some((name, labels, value)) = sample(line) else { continue };
        match name {
            "vllm:num_requests_waiting" => out.metrics.waiting += value.max(0.0) as u64,
            "vllm:num_requests_running" => out.metrics.running += value.max(0.0) as u64,
            // vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc; read both.
            "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => {
                out.metrics.kv_usage = if saw_kv { out.metrics.kv_usage.max(value) } else { value };
                saw_kv = true;
            }
            // An info gauge whose value is a timestamp: the newest sample is current.
            "vllm:lora_requests_info" if value >= lora_ts => {
                lora_ts = value;
                out.metrics.active_loras = list(label(&labels, "running_lora_adapters"));
                out.metrics.waiting_loras = list(label(&labels, "waiting_lora_adapters"));
                out.metrics.max_loras = label(&labels, "max_lora").and_then(|m| m.parse().ok()).unwrap_or(0);
            }
            "vllm:cache_config_info" => {
                out.block_size = label(&labels, "block_size").and_then(|b| b.parse().ok());
                out.num_gpu_blocks = label(&labels, "num_gpu_blocks").and_then(|b| b.parse().ok());
            }
            "llmd:kv_events_info" => out.kv_events = label(&labels, "endpoint").map(String::from),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vllm_text_format() {
        let text = r#"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 3.0
vllm:num_requests_waiting{engine="1",model_name="llama"} 2.0
vllm:num_requests_running{engine="0",model_name="llama"} 7.0
vllm:gpu_cache_usage_perc{engine="0",model_name="llama"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.5
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql, chat",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters="old",waiting_lora_adapters="x"} 1.6e9
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",num_gpu_blocks="2048"} 1.0
vllm:prompt_tokens_total{engine="0",model_name="llama"} 1234.0
llmd:kv_events_info{endpoint="tcp://127.0.0.1:40123",topic=""} 1
"#;
        let s = parse(text);
        assert_eq!((s.metrics.waiting, s.metrics.running), (5, 7));
        assert_eq!(s.metrics.kv_usage, 0.5);
        assert_eq!(s.metrics.active_loras, vec!["sql", "chat"]);
        assert!(s.metrics.waiting_loras.is_empty());
        assert_eq!((s.metrics.max_loras, s.block_size, s.num_gpu_blocks), (4, Some(16), Some(2048)));
        assert_eq!(s.kv_events.as_deref(), Some("tcp://127.0.0.1:40123"));
    }

    #[test]
    fn reads_openmetrics_and_ignores_garbage() {
        let text = "vllm:num_requests_waiting{model_name=\"a\\\"b\",engine=\"0\"} 4\n# EOF\nnot a metric\n{broken 1\nvllm:num_requests_running 2\n";
        let s = parse(text);
        assert_eq!((s.metrics.waiting, s.metrics.running), (4, 2));
    }
}
