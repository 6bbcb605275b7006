use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// Output of a [`TextEncoder`].
#[derive(Debug, Clone)]
pub struct TextEncoderOutput<B: Backend> {
    /// Per-token hidden states after the final layer norm: `[batch, seq, hidden]`. This is the
    /// UNet's `encoder_hidden_states` in Stable Diffusion 1.x.
    pub last_hidden_state: Tensor<B, 3>,
    /// One vector per sequence (CLIP pools at the end-of-text token): `[batch, hidden]`.
    pub pooler_output: Tensor<B, 2>,
}

/// Encodes token ids into per-token conditioning (CLIP's text tower in Stable Diffusion).
pub trait TextEncoder<B: Backend> {
    /// Encodes a batch of token ids.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`, `seq <= self.max_position_embeddings()`, every id
    ///   `< vocab size` (callers validate; see the tokenizer).
    /// - returns `last_hidden_state` `[batch, seq, self.hidden_size()]` and `pooler_output`
    ///   `[batch, self.hidden_size()]`.
    fn encode_text(&self, input_ids: Tensor<B, 2, Int>) -> TextEncoderOutput<B>;

    /// Width of the hidden states (`d_ctx` for the UNet's cross-attention).
    fn hidden_size(&self) -> usize;

    /// Longest sequence the encoder accepts (77 for CLIP).
    fn max_position_embeddings(&self) -> usize;
}
