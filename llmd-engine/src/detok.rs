//! Incremental detokenization: turns each new token into the text it adds, holding back
//! bytes that do not yet form whole UTF-8 characters (byte-level BPE splits them).

use crate::error::Result;
use crate::tokenizer::Tokenize;

/// Prompt tokens decoded as context for the first generated token, as vLLM does, so
/// tokenizers that mark word starts (SentencePiece's `▁`) give the right leading space.
const PROMPT_CONTEXT: usize = 5;

/// Per-request decoding state over the whole sequence (prompt + output).
#[derive(Debug, Clone, Default)]
pub(crate) struct IncrementalDecoder {
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// A decoder for a sequence whose first `prompt_len` tokens are the prompt.
    pub(crate) fn new(prompt_len: usize) -> Self {
        IncrementalDecoder { prefix_offset: prompt_len.saturating_sub(PROMPT_CONTEXT), read_offset: prompt_len }
    }

    /// Text added by the last token of `ids` (empty while a character is incomplete).
    pub(crate) fn step(&mut self, tok: &dyn Tokenize, ids: &[u32]) -> Result<String> {
        let prefix = tok.decode(&ids[self.prefix_offset..self.read_offset], true)?;
        let full = tok.decode(&ids[self.prefix_offset..], true)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && let Some(delta) = full.get(prefix.len()..)
        {
            let delta = delta.to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = ids.len();
            return Ok(delta);
        }
        Ok(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::ByteTokenizer;

    #[test]
    fn multibyte_characters_come_out_whole() {
        let text = "a é 東 ✓";
        let ids = ByteTokenizer.encode(text, false).unwrap();
        let mut d = IncrementalDecoder::new(0);
        let mut out = String::new();
        for n in 1..=ids.len() {
            let piece = d.step(&ByteTokenizer, &ids[..n]).unwrap();
            assert!(!piece.contains('\u{FFFD}'));
            out.push_str(&piece);
        }
        assert_eq!(out, text);
    }
}
