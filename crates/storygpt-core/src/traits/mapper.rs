use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Maps the LLM's `[IMG]` hidden states to denoiser conditioning (GILL's mapper in
/// StoryGPT-V: Linear → Transformer with learnable queries → Linear).
pub trait ConditioningMapper<B: Backend> {
    /// # Shapes
    /// - `img_states`: `[batch, num_img_tokens, llm_dim]`: last-layer hidden states at the
    ///   `[IMG0..R-1]` positions, with the `[IMG]` input embeddings already added;
    /// - returns `[batch, num_queries, output_dim]` (77 × 768 for SD 1.5), used in place of the
    ///   text encoder's `last_hidden_state`.
    fn map(&self, img_states: Tensor<B, 3>) -> Tensor<B, 3>;

    /// Number of learnable queries (the conditioning length, 77).
    fn num_queries(&self) -> usize;

    /// Width of the produced conditioning (`cross_attention_dim` of the denoiser).
    fn output_dim(&self) -> usize;
}
