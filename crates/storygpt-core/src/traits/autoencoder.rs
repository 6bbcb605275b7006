use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// A diagonal Gaussian over latents, as returned by a VAE encoder
/// (diffusers' `DiagonalGaussianDistribution`).
#[derive(Debug, Clone)]
pub struct DiagonalGaussian<B: Backend> {
    /// `[batch, latent_channels, h, w]`
    pub mean: Tensor<B, 4>,
    /// Log-variance, clamped to `[-30, 20]` as in diffusers: same shape as `mean`.
    pub logvar: Tensor<B, 4>,
}

impl<B: Backend> DiagonalGaussian<B> {
    /// Builds the posterior from the encoder's `moments` (`[batch, 2c, h, w]`: mean then
    /// log-variance), clamping the log-variance as diffusers does.
    pub fn from_moments(moments: Tensor<B, 4>) -> Self {
        let [mean, logvar] = moments
            .chunk(2, 1)
            .try_into()
            .unwrap_or_else(|_| unreachable!("chunk(2) of an even channel count gives 2 parts"));
        Self {
            mean,
            logvar: logvar.clamp(-30.0, 20.0),
        }
    }

    /// Standard deviation `exp(logvar / 2)`.
    pub fn std(&self) -> Tensor<B, 4> {
        (self.logvar.clone() * 0.5).exp()
    }

    /// A sample `mean + std · noise`, with the noise supplied by the caller (reproducible).
    pub fn sample(&self, noise: Tensor<B, 4>) -> Tensor<B, 4> {
        self.mean.clone() + self.std() * noise
    }

    /// The distribution's mode (its mean).
    pub fn mode(&self) -> Tensor<B, 4> {
        self.mean.clone()
    }

    /// KL divergence to the standard normal, summed over latent dims: `[batch]`.
    pub fn kl(&self) -> Tensor<B, 1> {
        let var = self.logvar.clone().exp();
        let kl = (self.mean.clone().powf_scalar(2.0) + var - 1.0 - self.logvar.clone()) * 0.5;
        kl.flatten::<2>(1, 3).sum_dim(1).squeeze_dim(1)
    }
}

/// Maps pixels to latents and back (`AutoencoderKL`).
///
/// Latents are *unscaled*: multiply by [`Autoencoder::scaling_factor`] before the denoiser and
/// divide before [`Autoencoder::decode`] (pipelines do this).
pub trait Autoencoder<B: Backend> {
    /// Encodes images in `[-1, 1]`.
    ///
    /// # Shapes
    /// `image`: `[batch, 3, H, W]` with `H`, `W` divisible by [`Autoencoder::downsample_factor`];
    /// returns a posterior over `[batch, latent_channels, H/f, W/f]`.
    fn encode(&self, image: Tensor<B, 4>) -> DiagonalGaussian<B>;

    /// Decodes latents into images in (roughly) `[-1, 1]`.
    ///
    /// # Shapes
    /// `latents`: `[batch, latent_channels, h, w]`; returns `[batch, 3, h·f, w·f]`.
    fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4>;

    /// Latent scaling factor from the config (0.18215 for SD 1.x).
    fn scaling_factor(&self) -> f64;

    /// Number of latent channels (4 for SD).
    fn latent_channels(&self) -> usize;

    /// Spatial downsampling factor `f` (8 for SD).
    fn downsample_factor(&self) -> usize;
}
