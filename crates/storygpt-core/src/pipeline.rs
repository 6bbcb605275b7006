//! The latent-diffusion sampling loop, written against the traits only: classifier-free
//! guidance, Char-LDM's delayed conditioning, an injected noise source and a step callback.
//!
//! Concrete pipelines (`Txt2ImgPipeline` in storygpt-models, the story pipeline) encode their
//! prompts, then call [`denoise`] and [`decode_to_images`].

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::error::{Error, Result};
use crate::traits::{Autoencoder, Denoiser, NoiseScheduler, NoiseSource};

/// Conditioning for one sampling run (batch `b`).
#[derive(Debug, Clone)]
pub struct Conditioning<B: Backend> {
    /// Unconditional / negative-prompt embedding `[b, seq, d]`, used when guidance > 1.
    pub negative: Tensor<B, 3>,
    /// Conditional embedding `[b, seq, d]` for step indices `<= switch_at` (all steps when
    /// `late` is `None`). In Char-LDM this is the plain text embedding.
    pub early: Tensor<B, 3>,
    /// Conditional embedding used after `switch_at` (Char-LDM: the character-fused or
    /// LLM-produced embedding).
    pub late: Option<Tensor<B, 3>>,
    /// Char-LDM's `start_merge_step`: the last step index that uses `early`.
    pub switch_at: usize,
}

impl<B: Backend> Conditioning<B> {
    /// The same conditioning for every step.
    pub fn constant(negative: Tensor<B, 3>, positive: Tensor<B, 3>) -> Self {
        Self {
            negative,
            early: positive,
            late: None,
            switch_at: 0,
        }
    }

    /// `early` for step indices `<= switch_at`, then `late` (Char-LDM delayed conditioning).
    pub fn delayed(
        negative: Tensor<B, 3>,
        early: Tensor<B, 3>,
        late: Tensor<B, 3>,
        switch_at: usize,
    ) -> Self {
        Self {
            negative,
            early,
            late: Some(late),
            switch_at,
        }
    }

    fn positive(&self, step: usize) -> Tensor<B, 3> {
        match &self.late {
            Some(late) if step > self.switch_at => late.clone(),
            _ => self.early.clone(),
        }
    }

    fn check(&self, batch: usize, denoiser_dim: usize) -> Result<()> {
        let mut all = vec![("negative", &self.negative), ("early", &self.early)];
        if let Some(late) = &self.late {
            all.push(("late", late));
        }
        let shape0 = self.early.dims();
        for (name, t) in all {
            let [b, l, d] = t.dims();
            if b != batch || d != denoiser_dim || l == 0 || [b, l, d] != shape0 {
                return Err(Error::InputShape {
                    what: format!("conditioning `{name}`"),
                    expected: format!(
                        "[{batch}, seq, {denoiser_dim}] like the others ({shape0:?})"
                    ),
                    found: vec![b, l, d],
                });
            }
        }
        Ok(())
    }
}

/// Sampling settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenoiseOptions {
    /// Scheduler steps.
    pub num_inference_steps: usize,
    /// Classifier-free guidance scale `g` (`ε = ε_u + g (ε_c − ε_u)`); `<= 1` disables CFG, as
    /// diffusers does.
    pub guidance_scale: f64,
}

/// What the step callback sees.
#[derive(Debug)]
pub struct StepInfo<'a, B: Backend> {
    /// Step index (0-based).
    pub index: usize,
    /// Total steps.
    pub total: usize,
    /// The timestep just processed.
    pub timestep: f64,
    /// The latents after this step.
    pub latents: &'a Tensor<B, 4>,
}

/// Runs the denoising loop from `latents` (already scaled by the scheduler's
/// `init_noise_sigma`, see [`initial_latents`]).
///
/// 1. `set_timesteps`;
/// 2. per timestep: scale the input, one batched denoiser call on `[uncond; cond]` when
///    guidance is on, guidance, `scheduler.step`;
/// 3. return the latents.
///
/// Errors: zero steps or more than the scheduler's training steps, a non-finite guidance
/// scale, and conditioning whose batch or width does not fit the latents / denoiser.
pub fn denoise<B: Backend>(
    denoiser: &dyn Denoiser<B>,
    scheduler: &mut dyn NoiseScheduler<B>,
    mut latents: Tensor<B, 4>,
    conditioning: &Conditioning<B>,
    options: DenoiseOptions,
    noise: &mut dyn NoiseSource<B>,
    callback: &mut dyn FnMut(StepInfo<'_, B>),
) -> Result<Tensor<B, 4>> {
    if !options.guidance_scale.is_finite() {
        return Err(Error::InvalidInput(format!(
            "guidance_scale must be finite, got {}",
            options.guidance_scale
        )));
    }
    let [batch, ..] = latents.dims();
    conditioning.check(batch, denoiser.cross_attention_dim())?;
    scheduler.set_timesteps(options.num_inference_steps)?;
    let timesteps = scheduler.timesteps().to_vec();
    let cfg = options.guidance_scale > 1.0;
    let device = latents.device();
    let total = timesteps.len();

    for (i, &t) in timesteps.iter().enumerate() {
        let input = scheduler.scale_model_input(latents.clone(), t);
        let positive = conditioning.positive(i);
        let noise_pred = if cfg {
            // One batched call: [uncond; cond].
            let input = Tensor::cat(vec![input.clone(), input], 0);
            let context = Tensor::cat(vec![conditioning.negative.clone(), positive], 0);
            let ts = Tensor::<B, 1>::from_data(
                TensorData::new(vec![t as f32; 2 * batch], [2 * batch]),
                &device,
            );
            let out = denoiser.predict(input, ts, context);
            let [uncond, cond] = out
                .chunk(2, 0)
                .try_into()
                .unwrap_or_else(|_| unreachable!("an even batch splits in two"));
            uncond.clone() + (cond - uncond) * options.guidance_scale
        } else {
            let ts =
                Tensor::<B, 1>::from_data(TensorData::new(vec![t as f32; batch], [batch]), &device);
            denoiser.predict(input, ts, positive)
        };
        latents = scheduler.step(noise_pred, t, latents, noise);
        callback(StepInfo {
            index: i,
            total,
            timestep: t,
            latents: &latents,
        });
    }
    Ok(latents)
}

/// Initial latents: the given ones, or standard-normal noise, times the scheduler's
/// `init_noise_sigma` (diffusers' `prepare_latents`).
pub fn initial_latents<B: Backend>(
    scheduler: &dyn NoiseScheduler<B>,
    shape: [usize; 4],
    given: Option<Tensor<B, 4>>,
    noise: &mut dyn NoiseSource<B>,
    device: &B::Device,
) -> Result<Tensor<B, 4>> {
    let latents = match given {
        Some(l) if l.dims() != shape => {
            return Err(Error::InputShape {
                what: "initial latents".into(),
                expected: format!("{shape:?}"),
                found: l.dims().to_vec(),
            });
        }
        Some(l) => l,
        None => noise.noise(shape, device),
    };
    Ok(latents * scheduler.init_noise_sigma())
}

/// Decodes latents and converts to `[b, h, w, 3]` values in `[0, 1]`
/// (`vae.decode(latents / scaling_factor)`, then `(x / 2 + 0.5).clamp(0, 1)`).
pub fn decode_to_images<B: Backend>(
    vae: &dyn Autoencoder<B>,
    latents: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let image = vae.decode(latents / vae.scaling_factor());
    (image / 2.0 + 0.5).clamp(0.0, 1.0).permute([0, 2, 3, 1])
}

/// `[b, h, w, 3]` values in `[0, 1]` → one RGB byte buffer per image, rounding as diffusers'
/// `numpy_to_pil` (`(x · 255).round()`).
pub fn images_to_rgb8<B: Backend>(images: Tensor<B, 4>) -> Vec<(usize, usize, Vec<u8>)> {
    let [b, h, w, c] = images.dims();
    let values: Vec<f32> = images
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    (0..b)
        .map(|i| {
            let px = &values[i * h * w * c..(i + 1) * h * w * c];
            (
                h,
                w,
                px.iter()
                    .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
                    .collect(),
            )
        })
        .collect()
}
