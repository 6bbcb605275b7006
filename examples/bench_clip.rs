//! Side-by-side benchmark of the CLIP towers against transformers
//! (`scripts/reference/bench_clip.py`): random weights with the real ViT-L/14 shapes, a [1, 77]
//! text batch and one 224² image, f32. Prints one JSON line per model, like the Python script.
//!
//! ```bash
//! RAYON_NUM_THREADS=2 cargo run --release --example bench_clip -- --iters 10
//! .venv/bin/python scripts/reference/bench_clip.py --threads 2 --iters 10
//! ```
//! See `docs/perf.md` for recorded numbers.

use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use storygpt::backend::{BackendKind, DefaultBackend as B, default_device};
use storygpt::models::clip::{
    ClipTextConfig, ClipTextModel, ClipVisionConfig, ClipVisionModelWithProjection,
};

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
    let mut iters = 10;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--iters" {
            iters = args.next().and_then(|v| v.parse().ok()).unwrap_or(iters);
        }
    }
    let device = default_device();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let backend = BackendKind::default_kind().name();

    let text_cfg = ClipTextConfig {
        eos_token_id: 49407,
        bos_token_id: 49406,
        ..ClipTextConfig::sd_v1_5()
    };
    let text = ClipTextModel::<B>::new(&text_cfg, &device)?;
    let ids = Tensor::<B, 2, Int>::random([1, 77], Distribution::Uniform(0.0, 49406.0), &device);
    let (median, min) = time(
        || {
            let out = text.forward(ids.clone());
            let _ = out.pooler_output.into_data();
            B::sync(&device).ok();
        },
        2,
        iters,
    );
    println!(
        "{{\"model\": \"clip_text_l14\", \"backend\": \"{backend}\", \"threads\": \"{threads}\", \"median_ms\": {median:.1}, \"min_ms\": {min:.1}, \"iters\": {iters}}}"
    );

    let vision = ClipVisionModelWithProjection::<B>::new(&ClipVisionConfig::vit_l_14(), &device)?;
    let pixels = Tensor::<B, 4>::random([1, 3, 224, 224], Distribution::Normal(0.0, 1.0), &device);
    let (median, min) = time(
        || {
            let (_, embeds) = vision.forward(pixels.clone());
            let _ = embeds.into_data();
            B::sync(&device).ok();
        },
        2,
        iters,
    );
    println!(
        "{{\"model\": \"clip_vision_l14\", \"backend\": \"{backend}\", \"threads\": \"{threads}\", \"median_ms\": {median:.1}, \"min_ms\": {min:.1}, \"iters\": {iters}}}"
    );
    Ok(())
}
