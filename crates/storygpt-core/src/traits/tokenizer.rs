//! The two tokenizer capabilities the data pipeline needs, so `storygpt-data` can batch
//! captions without knowing which concrete tokenizer (CLIP BPE, GPT-2/OPT BPE, Llama
//! SentencePiece, your own) sits behind them.

use crate::error::Result;

/// The text encoder's tokenizer as Char-LDM uses it: fixed-length ids, and the *marking* of the
/// last token piece of each character name.
///
/// Char-LDM inserts a marker token (`<|image|>`) after each character name, tokenizes, then
/// removes the markers and flags the token before each one. `storygpt-models` implements this
/// for `ClipTokenizer`.
pub trait CaptionTokenizer: Send + Sync {
    /// The marker string to insert after each character name (e.g. `<|image|>`). It must be a
    /// token of the tokenizer.
    fn marker(&self) -> &str;

    /// Tokenizes `text`, which holds [`CaptionTokenizer::marker`] after each name. Returns the
    /// ids without the markers, padded (and truncated) to [`CaptionTokenizer::max_len`], and
    /// for each marker that survived truncation, in order, the position of the token before it.
    fn encode_marked(&self, text: &str) -> Result<(Vec<u32>, Vec<usize>)>;

    /// The fixed sequence length (77 for CLIP).
    fn max_len(&self) -> usize;
}

/// A causal LM's tokenizer as the stage-2 sequence builder uses it.
pub trait LmTokenizer: Send + Sync {
    /// Token ids of `text`, with the beginning-of-sequence token first when `add_bos` is set and
    /// nothing else added (no end-of-sequence token, no padding).
    fn encode_text(&self, text: &str, add_bos: bool) -> Result<Vec<u32>>;

    /// The id of a (special or added) token, if the vocabulary has it.
    fn token_id(&self, token: &str) -> Option<u32>;

    /// The padding id.
    fn pad_id(&self) -> u32;
}
