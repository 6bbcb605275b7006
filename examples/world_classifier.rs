//! Trains the small CNN judge on story-world ground-truth frames and reports per-character
//! accuracy on the test split: the check that the cast is learnable and distinct.
//!
//! ```text
//! cargo run --release --example world_classifier -- [DATASET_DIR] [STEPS] [BATCH] [SEED]
//! ```
//!
//! Without a dataset folder it generates 2,000 stories (8,000 frames) at 128² into a temporary
//! folder. Prints the training time, the per-character and exact-match accuracy.

use std::time::Instant;

use burn::backend::Autodiff;
use storygpt::backend::{DefaultBackend, default_device};
use storygpt::data::world::{self, StoryWorld, WorldConfig};
use storygpt::data::{Split, StoryDataset};
use storygpt::eval::small_cnn::{FitConfig, LabelledImages, SmallCnnConfig, accuracy, fit};

fn main() -> storygpt::Result<()> {
    let mut args = std::env::args().skip(1);
    let tmp = tempfile::tempdir().map_err(|e| storygpt::Error::io("<tempdir>", e))?;
    let dir = match args.next().filter(|d| !d.is_empty()) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            let out = tmp.path().join("world");
            let cfg = WorldConfig {
                stories: 2000,
                seed: 1,
                ..WorldConfig::default()
            };
            let r = world::generate(&cfg, &out, false, &|_, _| {})?;
            println!("generated {} frames in {:.1} s", r.frames, r.seconds);
            out
        }
    };
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(300);
    let world = StoryWorld::open(&dir)?;
    let device = default_device();
    let cfg = SmallCnnConfig::new(world.characters().len());
    let t0 = Instant::now();
    let train = LabelledImages::from_dataset(&world, Split::Train, cfg.input_size, false)?;
    let test = LabelledImages::from_dataset(&world, Split::Test, cfg.input_size, false)?;
    println!(
        "{} train / {} test frames loaded in {:.1} s",
        train.len(),
        test.len(),
        t0.elapsed().as_secs_f64()
    );
    let t1 = Instant::now();
    let batch_size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(64);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let model = cfg.init::<Autodiff<DefaultBackend>>(seed, &device);
    let fit_cfg = FitConfig {
        steps,
        batch_size,
        ..FitConfig::default()
    };
    let model = fit(model, &train, &fit_cfg, &device, &mut |step, loss| {
        if step % 50 == 0 || step + 1 == steps {
            println!(
                "step {step:4}  loss {loss:.4}  {:.1} s",
                t1.elapsed().as_secs_f64()
            );
        }
    })?;
    let train_s = t1.elapsed().as_secs_f64();
    use burn::module::AutodiffModule;
    let acc = accuracy(&model.valid(), &test, &device);
    println!("trained {steps} steps in {train_s:.1} s");
    for (c, a) in world.characters().iter().zip(&acc.per_label) {
        println!("  {:8} {:.2} %", c.name, 100.0 * a);
    }
    println!(
        "min per-character {:.2} %, exact match {:.2} %",
        100.0 * acc.per_label.iter().cloned().fold(1.0, f64::min),
        100.0 * acc.exact
    );
    Ok(())
}
