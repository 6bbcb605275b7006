//! Stage 0, VAE: an `AutoencoderKL` trained on a dataset's frames, standing in for SD's VAE on
//! the story world. Loss: `L1 + 0.5·MSE` on pixels plus `kl_weight ·` the posterior's KL to
//! N(0, I) summed over latent dimensions (mean over the batch); the decoder reads a posterior
//! sample. No adversarial or perceptual loss.
//!
//! Validation: PSNR of the reconstructions (posterior mode) of the validation frames, and a
//! PNG of originals above reconstructions. The export writes a diffusers `vae/` folder whose
//! `scaling_factor` is `1 / std` of the training latents (as SD's 0.18215 was chosen).

use std::path::Path;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use storygpt_core::Result;
use storygpt_core::traits::Autoencoder;
use storygpt_data::draw::{contact_sheet, save_png};
use storygpt_models::autoencoder_kl::AutoencoderKL;

use super::data::{EpochSampler, FrameStore, normal, tensor_to_images};
use super::{Metrics, Stage};

/// VAE loss settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeLossConfig {
    /// Weight of the KL term (per-sample sum over latent dimensions).
    #[serde(default = "d_kl")]
    pub kl_weight: f64,
}

fn d_kl() -> f64 {
    1e-6
}

impl Default for VaeLossConfig {
    fn default() -> Self {
        Self { kl_weight: d_kl() }
    }
}

/// The VAE stage.
pub struct VaeStage<B: Backend> {
    train: FrameStore,
    val: FrameStore,
    sampler: EpochSampler,
    batch_size: usize,
    loss: VaeLossConfig,
    device: B::Device,
}

impl<B: Backend> VaeStage<B> {
    /// A stage over in-memory frames.
    pub fn new(
        train: FrameStore,
        val: FrameStore,
        batch_size: usize,
        seed: u64,
        loss: VaeLossConfig,
        device: &B::Device,
    ) -> Self {
        Self {
            sampler: EpochSampler::new(train.images.len(), seed),
            train,
            val,
            batch_size,
            loss,
            device: device.clone(),
        }
    }
}

/// PSNR (dB) of images in `[-1, 1]` against references, over the whole batch.
pub fn psnr<B: Backend>(x: Tensor<B, 4>, reference: Tensor<B, 4>) -> f64 {
    // on [0, 1]: MSE / 4
    let mse: f64 = (x - reference)
        .powf_scalar(2.0)
        .mean()
        .into_scalar()
        .elem::<f64>()
        / 4.0;
    10.0 * (1.0 / mse.max(1e-12)).log10()
}

impl<B: AutodiffBackend> Stage<B> for VaeStage<B> {
    type Model = AutoencoderKL<B>;

    fn name(&self) -> &str {
        "vae"
    }

    fn loss(
        &mut self,
        model: &Self::Model,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor<B, 1>, Metrics)> {
        let idx = self.sampler.next(self.batch_size);
        let x = self.train.batch::<B>(&idx, &self.device);
        let posterior = model.encode(x.clone());
        let noise = normal::<B, 4>(rng, posterior.mean.dims(), &self.device);
        let recon = model.decode(posterior.sample(noise));
        let diff = recon - x;
        let l1 = diff.clone().abs().mean();
        let mse = diff.powf_scalar(2.0).mean();
        let kl = posterior.kl().mean();
        let loss = l1.clone() + mse.clone() * 0.5 + kl.clone() * self.loss.kl_weight;
        let mut m = Metrics::new();
        m.insert("l1".into(), l1.into_scalar().elem());
        m.insert("kl".into(), kl.into_scalar().elem());
        Ok((loss, m))
    }

    fn validate(
        &mut self,
        model: &AutoencoderKL<B::InnerBackend>,
        step: usize,
        run: &Path,
    ) -> Result<Metrics> {
        let (mut se, mut n) = (0.0, 0usize);
        let mut shown = Vec::new();
        for chunk in (0..self.val.images.len()).collect::<Vec<_>>().chunks(32) {
            let x = self.val.batch::<B::InnerBackend>(chunk, &self.device);
            let recon = model
                .decode(model.encode(x.clone()).mode())
                .clamp(-1.0, 1.0);
            let p = psnr(recon.clone(), x.clone());
            se += 10f64.powf(-p / 10.0) * chunk.len() as f64;
            n += chunk.len();
            if shown.is_empty() {
                let k = chunk.len().min(8);
                let orig = tensor_to_images(x.slice(0..k));
                let rec = tensor_to_images(recon.slice(0..k));
                shown = orig
                    .into_iter()
                    .map(|i| (i, "frame".to_string()))
                    .chain(rec.into_iter().map(|i| (i, "recon".to_string())))
                    .collect();
            }
        }
        let psnr = 10.0 * (n as f64 / se.max(1e-12)).log10();
        if !shown.is_empty() {
            let cols = shown.len() / 2;
            save_png(
                &run.join(format!("val-{step:06}.png")),
                &contact_sheet(&shown, cols, 1, 2),
            )?;
        }
        let mut m = Metrics::new();
        m.insert("psnr_db".into(), psnr);
        Ok(m)
    }

    fn data_state(&self) -> serde_json::Value {
        self.sampler.state()
    }

    fn restore_data_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.sampler.restore(state)
    }
}

/// `1 / std` of the posterior means of `frames` (the latent scaling factor).
pub fn latent_scaling_factor<B: Backend>(
    model: &AutoencoderKL<B>,
    frames: &FrameStore,
    device: &B::Device,
) -> f64 {
    let (mut sum, mut sq, mut n) = (0.0f64, 0.0f64, 0usize);
    for chunk in (0..frames.images.len().min(1024))
        .collect::<Vec<_>>()
        .chunks(64)
    {
        let z = model.encode(frames.batch::<B>(chunk, device)).mode();
        let v: Vec<f32> = z.into_data().convert::<f32>().to_vec().unwrap_or_default();
        for x in v {
            sum += f64::from(x);
            sq += f64::from(x) * f64::from(x);
            n += 1;
        }
    }
    let mean = sum / n.max(1) as f64;
    let var = (sq / n.max(1) as f64 - mean * mean).max(1e-12);
    1.0 / var.sqrt()
}

/// Where a stage's frames come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset folder (story world, FlintstonesSV or PororoSV layout).
    pub dataset: std::path::PathBuf,
    /// Training resolution (frames are resized to this square).
    pub resolution: u32,
    /// Validation frames (from the val split).
    #[serde(default = "d_val")]
    pub val_frames: usize,
    /// Use at most this many training frames (all when absent).
    #[serde(default)]
    pub train_frames: Option<usize>,
}

fn d_val() -> usize {
    200
}

/// A VAE run config (TOML): `[data]`, `[model]` (diffusers `AutoencoderKL` config.json keys),
/// `[train]`, `[loss]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeRunConfig {
    /// Frames.
    pub data: DataConfig,
    /// The network, as diffusers' `config.json`.
    pub model: serde_json::Value,
    /// The loop.
    pub train: super::TrainConfig,
    /// The loss.
    #[serde(default)]
    pub loss: VaeLossConfig,
}

/// What a finished (or paused) VAE run reports.
#[derive(Debug, Clone, Serialize)]
pub struct VaeReport {
    /// Steps done.
    pub steps: usize,
    /// Whether all steps are done (the model folder is written only then).
    pub finished: bool,
    /// Validation PSNR of the exported weights.
    pub psnr_db: Option<f64>,
    /// Latent scaling factor written into the config.
    pub scaling_factor: Option<f64>,
    /// Training seconds.
    pub seconds: f64,
}

/// Trains (or resumes) a VAE; on completion writes `RUN/model/` (diffusers `AutoencoderKL`).
pub fn train_vae<B: AutodiffBackend>(
    cfg: &VaeRunConfig,
    opts: &super::RunOptions,
    device: &B::Device,
) -> Result<VaeReport> {
    use storygpt_models::autoencoder_kl::AutoencoderKLConfig;
    let config_toml = super::config::to_toml(cfg)?;
    let model_cfg: AutoencoderKLConfig = super::export::model_config(&cfg.model, "model")?;
    let dataset = storygpt_data::open_dataset(&cfg.data.dataset)?;
    let train = FrameStore::load(
        dataset.as_ref(),
        storygpt_data::Split::Train,
        cfg.data.resolution,
        cfg.data.train_frames,
    )?;
    let val = FrameStore::load(
        dataset.as_ref(),
        storygpt_data::Split::Val,
        cfg.data.resolution,
        Some(cfg.data.val_frames),
    )?;
    B::seed(device, cfg.train.seed);
    let model = AutoencoderKL::<B>::new(&model_cfg, device)?;
    let mut stage = VaeStage::<B>::new(
        train,
        val,
        cfg.train.batch_size,
        cfg.train.seed,
        cfg.loss.clone(),
        device,
    );
    let out = super::run(&mut stage, model, &cfg.train, cfg, opts, device)?;
    if !out.finished {
        return Ok(VaeReport {
            steps: out.state.step,
            finished: false,
            psnr_db: None,
            scaling_factor: None,
            seconds: out.state.seconds,
        });
    }
    let model = out.export();
    let psnr = out
        .state
        .validations
        .last()
        .and_then(|v| v.metrics.get("psnr_db").copied());
    let scale = latent_scaling_factor(&model, &stage.train, device);
    let mut config = cfg.model.clone();
    config["_class_name"] = "AutoencoderKL".into();
    config["scaling_factor"] = scale.into();
    config["sample_size"] = cfg.data.resolution.into();
    let card = super::export::ModelCard {
        title: "Story-world VAE (stage 0)".into(),
        description: format!(
            "A diffusers `AutoencoderKL` trained from scratch on story-world frames, standing in for \
             SD's VAE. Loss: L1 + 0.5·MSE + {}·KL. Latent scaling factor = 1/std of the training \
             latents.",
            cfg.loss.kl_weight
        ),
        data: format!(
            "{} ({} training frames at {}²)",
            cfg.data.dataset.display(),
            stage.train.images.len(),
            cfg.data.resolution
        ),
        steps: out.state.step,
        seconds: out.state.seconds,
        metrics: vec![
            (
                "val PSNR (dB)".into(),
                psnr.unwrap_or(f64::NAN),
                format!(
                    "{} validation frames, posterior mode",
                    stage.val.images.len()
                ),
            ),
            (
                "scaling_factor".into(),
                scale,
                "1 / std of the latents".into(),
            ),
        ],
        config_toml,
        command: "storygpt train-vae --config CONFIG --out RUN".into(),
    };
    super::export::write_model_folder(
        &opts.run_dir.join("model"),
        &config,
        super::export::Weights::new("diffusion_pytorch_model.safetensors", &model, &[]),
        &[],
        &card,
    )?;
    Ok(VaeReport {
        steps: out.state.step,
        finished: true,
        psnr_db: psnr,
        scaling_factor: Some(scale),
        seconds: out.state.seconds,
    })
}
