//! `Txt2ImgPipeline`: Stable Diffusion text-to-image from a diffusers folder
//! (`StableDiffusionPipeline` layout), with classifier-free guidance, a negative prompt,
//! seeds or given initial latents, and Char-LDM's delayed conditioning.
//!
//! The stages follow diffusers' `__call__`: 1. check inputs, 2. encode prompts, 3. timesteps,
//! 4. latents, 5. denoising loop ([`storygpt_core::pipeline::denoise`]), 6. decode.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use serde_json::Value;
use storygpt_core::pipeline::{
    Conditioning, DenoiseOptions, StepInfo, decode_to_images, denoise, images_to_rgb8,
    initial_latents,
};
use storygpt_core::{Error, NoiseScheduler, NoiseSource, Result, SeededNoise};

use crate::autoencoder_kl::AutoencoderKL;
use crate::clip::{ClipTextModel, ClipTokenizer};
use crate::schedulers::load_scheduler;
use crate::unet_2d_condition::UNet2DConditionModel;

/// The components of a Stable Diffusion 1.x/2.x folder.
pub struct Txt2ImgPipeline<B: Backend> {
    /// CLIP BPE tokenizer (`tokenizer/`).
    pub tokenizer: ClipTokenizer,
    /// CLIP text encoder (`text_encoder/`).
    pub text_encoder: ClipTextModel<B>,
    /// Denoiser (`unet/`).
    pub unet: UNet2DConditionModel<B>,
    /// Autoencoder (`vae/`).
    pub vae: AutoencoderKL<B>,
    /// Sampler (`scheduler/`).
    pub scheduler: Box<dyn NoiseScheduler<B>>,
    device: Device<B>,
}

/// One text-to-image request.
#[derive(Debug, Clone)]
pub struct Txt2ImgRequest {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt (`""` = unconditional).
    pub negative_prompt: String,
    /// Image height in pixels (multiple of 8 × the UNet's downsampling for SD).
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Scheduler steps.
    pub num_inference_steps: usize,
    /// CFG scale (7.5 in diffusers; Char-LDM uses 5).
    pub guidance_scale: f64,
    /// Seed of the initial latents and stochastic steps (when no latents are given).
    pub seed: u64,
    /// Char-LDM delayed conditioning: use `prompt` for step indices `<= k`, then this prompt.
    pub delayed: Option<(usize, String)>,
}

impl Default for Txt2ImgRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            height: 512,
            width: 512,
            num_inference_steps: 50,
            guidance_scale: 7.5,
            seed: 0,
            delayed: None,
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Txt2ImgOutput<B: Backend> {
    /// Final latents `[1, c, h/f, w/f]` (unscaled by the VAE factor, as diffusers returns them).
    pub latents: Tensor<B, 4>,
    /// The image as `[1, h, w, 3]` floats in `[0, 1]`.
    pub image: Tensor<B, 4>,
    /// The image as RGB bytes (row-major `h × w × 3`), rounded as diffusers' `numpy_to_pil`.
    pub rgb8: Vec<u8>,
}

fn component_class(index: &Value, name: &str) -> Option<String> {
    index
        .get(name)?
        .as_array()?
        .get(1)?
        .as_str()
        .map(str::to_string)
}

impl<B: Backend> Txt2ImgPipeline<B> {
    /// Loads a diffusers Stable Diffusion folder (`model_index.json` + component folders).
    /// `variant` selects e.g. the `fp16` weight files; `dtype` the float type of the weights.
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        device: &Device<B>,
        variant: Option<&str>,
        dtype: Option<DType>,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let index_path = dir.join("model_index.json");
        let index: Value = storygpt_core::config::read_json(&index_path)?;
        let expect = |name: &str, classes: &[&str]| -> Result<()> {
            match component_class(&index, name) {
                Some(c) if classes.contains(&c.as_str()) => Ok(()),
                other => Err(Error::InvalidConfig {
                    path: Some(index_path.clone()),
                    message: format!("component `{name}` is {other:?}; supported: {classes:?}"),
                }),
            }
        };
        expect("unet", &["UNet2DConditionModel"])?;
        expect("vae", &["AutoencoderKL"])?;
        expect("text_encoder", &["CLIPTextModel"])?;
        expect("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"])?;
        let text_dir = dir.join("text_encoder");
        Ok(Self {
            tokenizer: ClipTokenizer::from_dir(dir.join("tokenizer"))?,
            text_encoder: ClipTextModel::from_pretrained_with(&text_dir, device, variant, dtype)?,
            unet: UNet2DConditionModel::from_pretrained_with(
                dir.join("unet"),
                device,
                variant,
                dtype,
            )?,
            vae: AutoencoderKL::from_pretrained_with(dir.join("vae"), device, variant, dtype)?,
            scheduler: load_scheduler(dir.join("scheduler"))?,
            device: device.clone(),
        })
    }

    /// Encodes prompts into `[n, 77, d]` (padded to 77 and truncated, as diffusers).
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<Tensor<B, 3>> {
        let mut ids = Vec::with_capacity(prompts.len() * self.tokenizer.model_max_length);
        for p in prompts {
            ids.extend(
                self.tokenizer
                    .encode_padded(p)?
                    .input_ids
                    .into_iter()
                    .map(|i| i as i64),
            );
        }
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids, [prompts.len(), self.tokenizer.model_max_length]),
            &self.device,
        );
        self.text_encoder.text_model.check_input_ids(&ids)?;
        Ok(self.text_encoder.forward(ids).last_hidden_state)
    }

    fn latent_shape(&self, request: &Txt2ImgRequest) -> Result<[usize; 4]> {
        use storygpt_core::{Autoencoder, Denoiser};
        let vae_f = self.vae.downsample_factor();
        let f = vae_f * self.unet.downsample_factor();
        if request.height == 0
            || request.width == 0
            || !request.height.is_multiple_of(f)
            || !request.width.is_multiple_of(f)
        {
            return Err(Error::InvalidInput(format!(
                "height and width must be positive multiples of {f} for this model, got {}x{}",
                request.height, request.width
            )));
        }
        Ok([
            1,
            self.unet.in_channels(),
            request.height / vae_f,
            request.width / vae_f,
        ])
    }

    /// Generates one image. `latents` replaces the seeded initial noise (before
    /// `init_noise_sigma` scaling, as diffusers' `latents=` argument); `on_step` sees every step.
    pub fn generate(
        &mut self,
        request: &Txt2ImgRequest,
        latents: Option<Tensor<B, 4>>,
        on_step: &mut dyn FnMut(StepInfo<'_, B>),
    ) -> Result<Txt2ImgOutput<B>> {
        // 1. check inputs
        let shape = self.latent_shape(request)?;
        // 2. encode prompts
        let negative = self.encode_prompts(&[&request.negative_prompt])?;
        let early = self.encode_prompts(&[&request.prompt])?;
        let conditioning = match &request.delayed {
            None => Conditioning::constant(negative, early),
            Some((k, late)) => {
                Conditioning::delayed(negative, early, self.encode_prompts(&[late])?, *k)
            }
        };
        // 3.-5. timesteps, latents, denoising loop
        let mut noise = SeededNoise::new(request.seed);
        let latents = initial_latents(
            self.scheduler.as_ref(),
            shape,
            latents,
            &mut noise as &mut dyn NoiseSource<B>,
            &self.device,
        )?;
        let latents = denoise(
            &self.unet,
            self.scheduler.as_mut(),
            latents,
            &conditioning,
            DenoiseOptions {
                num_inference_steps: request.num_inference_steps,
                guidance_scale: request.guidance_scale,
            },
            &mut noise,
            on_step,
        )?;
        // 6. decode
        let image = decode_to_images(&self.vae, latents.clone());
        let rgb8 = images_to_rgb8(image.clone())
            .into_iter()
            .next()
            .map(|(_, _, px)| px)
            .unwrap_or_default();
        Ok(Txt2ImgOutput {
            latents,
            image,
            rgb8,
        })
    }
}

/// Writes RGB bytes as a PNG, atomically.
pub fn save_png(path: &Path, width: usize, height: usize, rgb8: &[u8]) -> Result<()> {
    let img =
        image::RgbImage::from_raw(width as u32, height as u32, rgb8.to_vec()).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{} bytes is not a {width}x{height} RGB image",
                rgb8.len()
            ))
        })?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::InvalidInput(format!("PNG encoding failed: {e}")))?;
    storygpt_core::fs::write_atomic(path, &bytes)
}
