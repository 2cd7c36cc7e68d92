//! Output processing: what one sampled token adds to a request — stop conditions,
//! incremental detokenization with stop strings held back, and the [`RequestOutput`].

use super::ReqState;
use crate::sampling::Sampled;
use crate::tokenizer::Tokenize;

/// Why a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token or a stop string.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
    /// Cancelled (the client went away).
    Abort,
    /// The backend failed while computing it.
    Error,
}

impl FinishReason {
    /// The OpenAI / vLLM spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Error => "error",
        }
    }
}

/// What ended a request with [`FinishReason::Stop`], besides EOS (vLLM's `stop_reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// One of the request's stop token ids.
    Token(u32),
    /// One of its stop strings (not included in the text).
    Text(String),
}

/// What one request produced in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutput {
    /// Request id.
    pub id: String,
    /// Tokens generated this step.
    pub token_ids: Vec<u32>,
    /// Text they add (stop strings removed; may lag tokens by an incomplete character).
    pub text: String,
    /// Logprobs per new token, when requested.
    pub logprobs: Vec<Sampled>,
    /// Set on the request's last output.
    pub finished: Option<FinishReason>,
    /// The stop token or string that ended it, if one did.
    pub stop_reason: Option<StopReason>,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens generated so far.
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache (or computed by a remote prefill).
    pub cached_tokens: usize,
    /// On the last output: what the request's KV transfer did, if it had one.
    pub kv_transfer: Option<Box<super::KvTransferOutcome>>,
}

impl ReqState {
    /// The output of a request that ends with no new token (aborted or failed).
    pub(super) fn final_output(&self, id: &str, reason: FinishReason) -> RequestOutput {
        RequestOutput {
            id: id.to_string(),
            token_ids: Vec::new(),
            text: String::new(),
            logprobs: Vec::new(),
            finished: Some(reason),
            stop_reason: None,
            prompt_tokens: self.prompt_len,
            completion_tokens: self.output.len(),
            cached_tokens: self.cached_tokens,
            kv_transfer: None,
        }
    }

    /// The output for `sampled`, already appended to the sequence and the output:
    /// whether it ends the request, and the text it adds.
    pub(super) fn token_output(
        &mut self,
        id: &str,
        sampled: Sampled,
        eos: &[u32],
        tokenizer: &dyn Tokenize,
        max_model_len: usize,
    ) -> RequestOutput {
        let st = self;
        let token = sampled.token;
        // Before min_tokens (counting this one), nothing ends the request but length.
        let may_stop = st.output.len() > st.params.min_tokens;
        let is_eos = may_stop && !st.params.ignore_eos && eos.contains(&token);
        let mut finished = None;
        let mut stop_reason = None;
        if is_eos {
            finished = Some(FinishReason::Stop);
        } else if may_stop && st.params.stop_token_ids.contains(&token) {
            finished = Some(FinishReason::Stop);
            stop_reason = Some(StopReason::Token(token));
        } else {
            // A token the tokenizer cannot decode (a model whose vocabulary outgrows
            // its tokenizer) costs its text, not the engine.
            let piece = st.decoder.step(tokenizer, st.seq.tokens()).unwrap_or_else(|e| {
                tracing::warn!(request = %id, token, error = %e, "cannot detokenize");
                String::new()
            });
            st.text.push_str(&piece);
            let found = if may_stop { find_stop(&st.text, &st.params.stop, st.text.len() - piece.len()) } else { None };
            if let Some((pos, stop)) = found {
                st.text.truncate(pos);
                finished = Some(FinishReason::Stop);
                stop_reason = Some(StopReason::Text(stop));
            }
        }
        if finished.is_none() && (st.output.len() >= st.params.max_tokens || st.seq.tokens().len() >= max_model_len) {
            finished = Some(FinishReason::Length);
        }
        // Hold back text that could still turn out to start a stop string.
        let hold = if finished.is_some() {
            0
        } else {
            st.params.stop.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0)
        };
        let mut safe = st.text.len().saturating_sub(hold).max(st.emitted);
        while !st.text.is_char_boundary(safe) {
            safe -= 1;
        }
        let text = st.text[st.emitted..safe].to_string();
        st.emitted = safe;
        RequestOutput {
            id: id.to_string(),
            token_ids: vec![token],
            text,
            logprobs: if st.params.logprobs.is_some() { vec![sampled] } else { Vec::new() },
            finished,
            stop_reason,
            prompt_tokens: st.prompt_len,
            completion_tokens: st.output.len(),
            cached_tokens: st.cached_tokens,
            kv_transfer: None,
        }
    }
}

/// The first stop string found in the text after `from` (less the stop's length, so a
/// match spanning the boundary is found): its byte offset and the string.
fn find_stop(text: &str, stops: &[String], from: usize) -> Option<(usize, String)> {
    stops
        .iter()
        .filter_map(|s| {
            let mut start = from.saturating_sub(s.len());
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            text[start..].find(s.as_str()).map(|p| (p + start, s.clone()))
        })
        .min_by_key(|(pos, _)| *pos)
}
