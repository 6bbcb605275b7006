use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// The noise-prediction network of a latent diffusion model (`UNet2DConditionModel`).
pub trait Denoiser<B: Backend> {
    /// Predicts the model output (ε, or v for v-prediction models) for noisy latents.
    ///
    /// # Shapes
    /// - `sample`: `[batch, in_channels, h, w]`, `h` and `w` divisible by
    ///   [`Denoiser::downsample_factor`];
    /// - `timestep`: `[batch]`, the (possibly fractional) diffusion timestep of each sample;
    /// - `encoder_hidden_states`: `[batch, seq, cross_attention_dim]` (77 × 768 for SD 1.5);
    /// - returns `[batch, out_channels, h, w]`.
    fn predict(
        &self,
        sample: Tensor<B, 4>,
        timestep: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 3>,
    ) -> Tensor<B, 4>;

    /// Latent channels the network reads (4 for SD).
    fn in_channels(&self) -> usize;

    /// Width of the conditioning it cross-attends to.
    fn cross_attention_dim(&self) -> usize;

    /// Total spatial downsampling inside the network; latent sides must be multiples of it.
    fn downsample_factor(&self) -> usize;
}
