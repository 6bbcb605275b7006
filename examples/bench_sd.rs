//! Side-by-side benchmark of the SD 1.5 UNet and VAE against diffusers
//! (`scripts/reference/bench_sd.py`): random weights with the real SD 1.5 configs, f32.
//!
//! - `unet_sd15_cfg_step`: one classifier-free-guidance step at 256² (latent `[2, 4, 32, 32]`,
//!   context `[2, 77, 768]`): 2 × 180 GFLOP;
//! - `vae_decode_256`: latents `[1, 4, 32, 32]` → a 256² image (≈622 GFLOP);
//! - `tiny_pipeline` (with `--pipeline DIR`, the assembled `sd_tiny_pipeline` fixture): 3 PNDM
//!   steps at 32² with CFG, end to end from the prompt;
//! - `breakdown` (only with `--only breakdown`): one resnet and one transformer per resolution.
//!
//! ```bash
//! RAYON_NUM_THREADS=2 cargo run --release --example bench_sd -- --iters 5 [--pipeline DIR]
//! .venv/bin/python scripts/reference/bench_sd.py --threads 2 --iters 5
//! ```

use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use storygpt::backend::{BackendKind, DefaultBackend as B, default_device};
use storygpt::core::Autoencoder;
use storygpt::models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use storygpt::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};

fn time<F: FnMut()>(mut f: F, warmup: usize, iters: usize) -> (f64, f64) {
    for _ in 0..warmup {
        f();
    }
    let mut ms: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    (ms[ms.len() / 2], ms[0])
}

fn main() -> storygpt::Result<()> {
    let mut iters = 5;
    let mut only: Option<String> = None;
    let mut pipeline: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iters" => iters = args.next().and_then(|v| v.parse().ok()).unwrap_or(iters),
            "--only" => only = args.next(),
            "--pipeline" => pipeline = args.next(),
            _ => {}
        }
    }
    let device = default_device();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let backend = BackendKind::default_kind().name();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);

    if run("unet_sd15_cfg_step") {
        let unet = UNet2DConditionModel::<B>::new(&UNet2DConditionConfig::sd_v1_5(), &device)?;
        let sample =
            Tensor::<B, 4>::random([2, 4, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let t = Tensor::<B, 1>::from_floats([500.0, 500.0], &device);
        let ctx = Tensor::<B, 3>::random([2, 77, 768], Distribution::Normal(0.0, 1.0), &device);
        let (median, min) = time(
            || {
                let out = unet.forward(sample.clone(), t.clone(), ctx.clone());
                let _ = out.into_data();
                B::sync(&device).ok();
            },
            1,
            iters,
        );
        let gflops = 360.0 / (median / 1e3);
        println!(
            "{{\"bench\": \"unet_sd15_cfg_step\", \"backend\": \"{backend}\", \"threads\": \"{threads}\", \"median_ms\": {median:.0}, \"min_ms\": {min:.0}, \"iters\": {iters}, \"gflop\": 360, \"gflop_per_s\": {gflops:.0}}}"
        );
    }
    if run("vae_decode_256") {
        let vae = AutoencoderKL::<B>::new(&AutoencoderKLConfig::sd_v1_5(), &device)?;
        let z = Tensor::<B, 4>::random([1, 4, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let (median, min) = time(
            || {
                let _ = vae.decode(z.clone()).into_data();
                B::sync(&device).ok();
            },
            1,
            iters,
        );
        println!(
            "{{\"bench\": \"vae_decode_256\", \"backend\": \"{backend}\", \"threads\": \"{threads}\", \"median_ms\": {median:.0}, \"min_ms\": {min:.0}, \"iters\": {iters}, \"gflop\": 622}}"
        );
    }
    if run("matmul_peak") {
        // The reference point for the GFLOP/s above: a 1024³ f32 matmul on the same backend.
        let a = Tensor::<B, 2>::random([1024, 1024], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<B, 2>::random([1024, 1024], Distribution::Normal(0.0, 1.0), &device);
        let (median, min) = time(
            || {
                let _ = a.clone().matmul(b.clone()).into_data();
                B::sync(&device).ok();
            },
            3,
            20,
        );
        println!(
            "{{\"bench\": \"matmul_1024\", \"backend\": \"{backend}\", \"threads\": \"{threads}\", \"median_ms\": {median:.2}, \"best_gflop_per_s\": {:.0}, \"median_gflop_per_s\": {:.0}}}",
            2.147 / (min / 1e3),
            2.147 / (median / 1e3)
        );
    }
    if let Some(dir) = pipeline.filter(|_| run("tiny_pipeline")) {
        // The assembled tiny pipeline (see tests/txt2img_parity.rs): 3 PNDM steps, 32², CFG 7.5.
        use storygpt::models::txt2img::{Txt2ImgPipeline, Txt2ImgRequest};
        let mut pipe = Txt2ImgPipeline::<B>::from_pretrained(&dir, &device, None, None)?;
        let request = Txt2ImgRequest {
            prompt: "Fred walks into the kitchen.".into(),
            height: 32,
            width: 32,
            num_inference_steps: 3,
            ..Default::default()
        };
        let (median, min) = time(
            || {
                let _ = pipe
                    .generate(&request, None, &mut |_| {})
                    .map(|o| o.rgb8.len());
            },
            2,
            iters * 4,
        );
        println!(
            "{{\"bench\": \"tiny_pipeline\", \"backend\": \"{backend}\", \"threads\": \"{threads}\", \"median_ms\": {median:.1}, \"min_ms\": {min:.1}, \"iters\": {}}}",
            iters * 4
        );
    }
    if only.as_deref() == Some("breakdown") {
        breakdown(&device, iters);
    }
    Ok(())
}

/// Times one resnet and one transformer block per UNet resolution (CFG batch 2 at 256²), to
/// see where a UNet step goes.
fn breakdown(device: &burn::tensor::Device<B>, iters: usize) {
    use storygpt::models::attention::Transformer2DModel;
    use storygpt::models::resnet::ResnetBlock2D;
    let temb = Tensor::<B, 2>::random([2, 1280], Distribution::Normal(0.0, 1.0), device);
    let ctx = Tensor::<B, 3>::random([2, 77, 768], Distribution::Normal(0.0, 1.0), device);
    for (c, hw) in [(320, 32), (640, 16), (1280, 8), (1280, 4)] {
        let x = Tensor::<B, 4>::random([2, c, hw, hw], Distribution::Normal(0.0, 1.0), device);
        let r = ResnetBlock2D::<B>::new(c, c, Some(1280), 32, 1e-5, device);
        let (rm, _) = time(
            || {
                let _ = r.forward(x.clone(), Some(temb.clone())).into_data();
            },
            1,
            iters,
        );
        let t = Transformer2DModel::<B>::new(c, 8, c / 8, 768, 1, 32, false, device);
        let (tm, _) = time(
            || {
                let _ = t.forward(x.clone(), ctx.clone()).into_data();
            },
            1,
            iters,
        );
        let conv_gflop = 2.0 * 2.0 * (c * c * 9 * hw * hw) as f64 * 2.0 / 1e9;
        println!(
            "{{\"bench\": \"breakdown\", \"channels\": {c}, \"hw\": {hw}, \"resnet_ms\": {rm:.1}, \"resnet_conv_gflop_per_s\": {:.0}, \"transformer_ms\": {tm:.1}}}",
            conv_gflop / (rm / 1e3)
        );
    }
}
