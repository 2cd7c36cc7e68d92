//! Tokenizing for routing, cached by text prefix (feature `render`).
//!
//! Prefix-aware scorers need a request's token ids, and tokenizing a long prompt costs
//! milliseconds (2.3 ms for 2 480 tokens of a Hugging Face tokenizer here) — as much as a
//! cache hit saves on a small model. But the prompts that matter share long prefixes:
//! [`PrefixCachedTokenizer`] cuts the text into chunks of about `chunk_bytes` at single
//! spaces between words, keys each chunk by a hash chained over the chunks before it, and
//! keeps each chunk's token ids; a prompt whose leading chunks were seen is tokenized only
//! from the first new chunk on.
//!
//! Encoding the chunks apart gives the same ids as encoding the whole text when the
//! tokenizer's pre-tokenizer starts a new piece at a space before a word (byte-level BPE
//! as in Llama 3, Qwen and GPT-2; word-level). Not every tokenizer does (SentencePiece
//! prepends a marker to each piece it is given), so the cache checks itself: its first
//! `verify` prompts are also encoded whole, and any difference turns it off for good,
//! every later prompt encoded whole. Routing is all it serves: engines tokenize for
//! themselves.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use llmd_openai::Tokenize;
use lru::LruCache;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// A [`Tokenize`] that caches token ids per chunk of text prefix. See the module docs.
pub struct PrefixCachedTokenizer {
    inner: std::sync::Arc<dyn Tokenize>,
    chunk_bytes: usize,
    chunks: Mutex<LruCache<u64, Vec<u32>>>,
    // Prompts still to check against a whole encoding; the cache is off once one differs.
    to_verify: AtomicUsize,
    off: AtomicBool,
    // Special tokens `encode(…, true)` adds before the text (a BOS), learned once.
    specials: Mutex<Option<Vec<u32>>>,
}

impl std::fmt::Debug for PrefixCachedTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixCachedTokenizer")
            .field("chunk_bytes", &self.chunk_bytes)
            .field("off", &self.off.load(Ordering::Relaxed))
            .finish()
    }
}

impl PrefixCachedTokenizer {
    /// Wraps `inner`: chunks of about 512 bytes, up to 65 536 of them kept, the first 16
    /// prompts verified.
    pub fn new(inner: std::sync::Arc<dyn Tokenize>) -> Self {
        Self::with(inner, 512, 65_536, 16)
    }

    /// Wraps `inner` with chunks of about `chunk_bytes`, up to `capacity` chunks kept,
    /// the first `verify` prompts checked against a whole encoding.
    pub fn with(inner: std::sync::Arc<dyn Tokenize>, chunk_bytes: usize, capacity: usize, verify: usize) -> Self {
        PrefixCachedTokenizer {
            inner,
            chunk_bytes: chunk_bytes.max(16),
            chunks: Mutex::new(LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN))),
            to_verify: AtomicUsize::new(verify),
            off: AtomicBool::new(false),
            specials: Mutex::new(None),
        }
    }

    /// Whether a verified difference turned the cache off.
    pub fn is_off(&self) -> bool {
        self.off.load(Ordering::Relaxed)
    }

    /// Cut points: after about every `chunk_bytes`, the next single space that sits
    /// between two non-space characters (a piece boundary for the tokenizers above).
    fn cuts(&self, text: &str) -> Vec<usize> {
        let b = text.as_bytes();
        let mut cuts = Vec::new();
        let mut next = self.chunk_bytes;
        while next < b.len() {
            let found = (next..b.len().saturating_sub(1))
                .find(|&i| b[i] == b' ' && !b[i - 1].is_ascii_whitespace() && !b[i + 1].is_ascii_whitespace());
            let Some(i) = found else { break };
            cuts.push(i);
            next = i + self.chunk_bytes;
        }
        cuts
    }

    fn cached_encode(&self, text: &str) -> llmd_openai::Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut parent = 0u64;
        let mut start = 0;
        let mut cuts = self.cuts(text);
        cuts.push(text.len());
        for end in cuts {
            let chunk = &text[start..end];
            parent = xxh3_64_with_seed(chunk.as_bytes(), parent);
            let hit = self.chunks.lock().unwrap_or_else(|p| p.into_inner()).get(&parent).cloned();
            let ids = match hit {
                Some(ids) => ids,
                None => {
                    let ids = self.inner.encode(chunk, false)?;
                    self.chunks.lock().unwrap_or_else(|p| p.into_inner()).put(parent, ids.clone());
                    ids
                }
            };
            out.extend_from_slice(&ids);
            start = end;
        }
        Ok(out)
    }

    fn specials(&self) -> llmd_openai::Result<Vec<u32>> {
        let mut s = self.specials.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = &*s {
            return Ok(v.clone());
        }
        let v = self.inner.encode("", true)?;
        *s = Some(v.clone());
        Ok(v)
    }
}

impl Tokenize for PrefixCachedTokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> llmd_openai::Result<Vec<u32>> {
        if self.is_off() || text.len() <= self.chunk_bytes {
            return self.inner.encode(text, add_special_tokens);
        }
        let mut ids = if add_special_tokens { self.specials()? } else { Vec::new() };
        ids.extend(self.cached_encode(text)?);
        let verifying = self.to_verify.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
        if verifying {
            let whole = self.inner.encode(text, add_special_tokens)?;
            if whole != ids {
                self.off.store(true, Ordering::Relaxed);
                tracing::warn!(
                    "this tokenizer does not encode text in pieces as it encodes it whole: prefix cache off"
                );
                return Ok(whole);
            }
        }
        Ok(ids)
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> llmd_openai::Result<String> {
        self.inner.decode(ids, skip_special_tokens)
    }

    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    /// One id per whitespace-separated word (hash), BOS = 1 when asked; counts the bytes
    /// it was given to encode.
    struct Words(AtomicUsize);

    impl Tokenize for Words {
        fn encode(&self, text: &str, add_special_tokens: bool) -> llmd_openai::Result<Vec<u32>> {
            self.0.fetch_add(text.len(), Ordering::Relaxed);
            let words = text.split_whitespace().map(|w| 2 + (xxh3_64_with_seed(w.as_bytes(), 0) % 1000) as u32);
            Ok(add_special_tokens.then_some(1).into_iter().chain(words).collect())
        }
        fn decode(&self, _: &[u32], _: bool) -> llmd_openai::Result<String> {
            Ok(String::new())
        }
        fn vocab_size(&self) -> usize {
            1002
        }
        fn token_to_id(&self, _: &str) -> Option<u32> {
            None
        }
    }

    /// Like [`Words`], but marks the first word of whatever it is given (as
    /// SentencePiece's dummy prefix does): pieces differ from the whole.
    struct MarksFirst;

    impl Tokenize for MarksFirst {
        fn encode(&self, text: &str, _: bool) -> llmd_openai::Result<Vec<u32>> {
            Ok(text.split_whitespace().enumerate().map(|(i, w)| if i == 0 { 0 } else { w.len() as u32 }).collect())
        }
        fn decode(&self, _: &[u32], _: bool) -> llmd_openai::Result<String> {
            Ok(String::new())
        }
        fn vocab_size(&self) -> usize {
            100
        }
        fn token_to_id(&self, _: &str) -> Option<u32> {
            None
        }
    }

    fn prompt(system: &str, question: &str) -> String {
        format!("{} {question}", std::iter::repeat_n(system, 120).collect::<Vec<_>>().join(" "))
    }

    #[test]
    fn a_shared_prefix_is_tokenized_once_and_ids_match_a_whole_encoding() {
        let words = Arc::new(Words(AtomicUsize::new(0)));
        let cached = PrefixCachedTokenizer::with(words.clone(), 256, 1024, 2);
        let reference = Words(AtomicUsize::new(0));
        let a = prompt("the policy says keep data safe", "what about backups?");
        let b = prompt("the policy says keep data safe", "and retention?");
        for (text, special) in [(&a, true), (&b, true), (&b, false)] {
            assert_eq!(cached.encode(text, special).unwrap(), reference.encode(text, special).unwrap());
        }
        assert!(!cached.is_off());
        // Past verification, a third prompt with the same prefix costs about its tail.
        words.0.store(0, Ordering::Relaxed);
        let c = prompt("the policy says keep data safe", "who may read it?");
        assert_eq!(cached.encode(&c, true).unwrap(), reference.encode(&c, true).unwrap());
        let encoded = words.0.load(Ordering::Relaxed);
        assert!(encoded < 2 * 256 + 32, "re-encoded {encoded} of {} bytes", c.len());
        // Short texts go straight through.
        assert_eq!(cached.encode("hi there", true).unwrap(), reference.encode("hi there", true).unwrap());
    }

    #[test]
    fn a_tokenizer_that_pieces_differently_turns_the_cache_off() {
        let cached = PrefixCachedTokenizer::with(Arc::new(MarksFirst), 64, 1024, 4);
        let a = prompt("alpha beta gamma", "delta?");
        // The verified prompt comes back as the whole encoding, and the cache is off.
        assert_eq!(cached.encode(&a, false).unwrap(), MarksFirst.encode(&a, false).unwrap());
        assert!(cached.is_off());
        assert_eq!(cached.encode(&a, false).unwrap(), MarksFirst.encode(&a, false).unwrap());
    }

    #[test]
    fn cuts_fall_on_single_spaces_between_words() {
        let t = PrefixCachedTokenizer::with(Arc::new(Words(AtomicUsize::new(0))), 16, 8, 0);
        let text = "aaaaaaaaaaaaaaaaaaaa  bbbbbbbbbbbbbbbbbbbbbbbb\ncccc dddd eeeeeeeeeeeeeeeeeee ffff";
        for c in t.cuts(text) {
            let b = text.as_bytes();
            assert_eq!(b[c], b' ');
            assert!(!b[c - 1].is_ascii_whitespace() && !b[c + 1].is_ascii_whitespace(), "cut at {c}");
        }
        assert!(!t.cuts(text).is_empty());
    }
}
