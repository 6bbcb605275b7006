use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Output of an [`ImageEncoder`].
#[derive(Debug, Clone)]
pub struct ImageEncoderOutput<B: Backend> {
    /// Patch (and class) token states: `[batch, tokens, hidden]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// The pooled image vector (CLIP: class token after `post_layernorm`): `[batch, hidden]`.
    /// StoryGPT-V feeds this to the LLM's visual-token projection.
    pub pooler_output: Tensor<B, 2>,
    /// The pooled vector through the projection head, when the model has one:
    /// `[batch, projection_dim]`. Char-LDM fuses this with the character-name token.
    pub image_embeds: Option<Tensor<B, 2>>,
}

/// Encodes images (frames, character crops) into feature vectors (CLIP's vision tower).
pub trait ImageEncoder<B: Backend> {
    /// Encodes preprocessed pixels.
    ///
    /// # Shapes
    /// - `pixel_values`: `[batch, 3, s, s]` with `s = self.image_size()`, already resized and
    ///   normalised by the matching image processor.
    /// - returns [`ImageEncoderOutput`] (see its fields).
    fn encode_image(&self, pixel_values: Tensor<B, 4>) -> ImageEncoderOutput<B>;

    /// Side length of the square input (224 for ViT-L/14).
    fn image_size(&self) -> usize;

    /// Width of `pooler_output`.
    fn hidden_size(&self) -> usize;

    /// Width of `image_embeds`, when there is a projection head.
    fn projection_dim(&self) -> Option<usize>;
}
