//! The integration suite, linked as one test binary.
//!
//! Each file beside this one is a module of that binary rather than a binary of its own: the
//! models pull all of burn into every test executable (about 140 MB each), so fifteen binaries
//! per backend cost minutes of linking and gigabytes of disk in CI for nothing.
//!
//! Run one area with a filter, e.g. `cargo test --release --test integration unet_parity::`.

mod common;

mod char_ldm_grad;
mod cli;
mod clip_image_processor;
mod clip_parity;
mod clip_tokenizer;
mod data;
mod eval_parity;
mod eval_report;
mod fixtures_integrity;
mod gill_mapper;
mod llm_parity;
mod llm_tokenizer;
mod loader_parity;
mod scheduler_parity;
mod sd15_layout;
mod smollm2;
mod storyworld_models;
mod train;
mod txt2img_parity;
mod unet_parity;
mod vae_parity;
mod world_classifier;

/// `examples/storyworld_two_stage.rs`, whose smoke test (every stage for a few steps, then the
/// story and the table) runs here: in this binary it shares the compiled models and training
/// loops with the other tests, where as a test target of its own it compiled all of them again
/// for each backend (about 100 s of CPU per backend in CI). Its `main` is unused here.
#[allow(dead_code)]
#[path = "../examples/storyworld_two_stage.rs"]
mod storyworld_two_stage;
