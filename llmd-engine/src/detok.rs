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

    /// A SentencePiece vocabulary (`▁` word starts, `<0xNN>` byte fallback, a decoder
    /// that strips the prefix space): the streamed text is the full decode's tail, the
    /// first generated word keeps its space after a prompt, and characters split across
    /// byte tokens come out whole.
    #[test]
    fn gguf_sentencepiece_streams_as_it_decodes() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/spm.gguf");
        let f = crate::gguf::GgufFile::open(&path).unwrap();
        let json = crate::gguf::tokenizer::from_gguf(&f).unwrap().json;
        let tok = crate::tokenizer::HfTokenizer::from_bytes(json.as_bytes()).unwrap();
        let ids = tok.encode("The answer is 東京 🦀, said the crab.", true).unwrap();
        for prompt_len in [0, 1, 3, 6] {
            let mut d = IncrementalDecoder::new(prompt_len);
            let (mut out, mut held) = (String::new(), 0);
            for n in prompt_len + 1..=ids.len() {
                let piece = d.step(&tok, &ids[..n]).unwrap();
                assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
                held += usize::from(piece.is_empty());
                out.push_str(&piece);
            }
            let prompt = tok.decode(&ids[..prompt_len], true).unwrap();
            assert_eq!(prompt + &out, tok.decode(&ids, true).unwrap(), "after a prompt of {prompt_len} tokens");
            // 東, 京 and 🦀 are 3, 3 and 4 byte tokens: all but each one's last held back.
            assert!(held >= 7, "{held} steps held back");
        }
    }
}
