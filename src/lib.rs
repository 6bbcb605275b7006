//! # storygpt
//!
//! StoryGPT-V story visualization in Rust: a character-aware latent diffusion model
//! (Char-LDM) conditioned by a frozen LLM that resolves pronouns across a story.
//! Paper: <https://arxiv.org/abs/2312.02252>.
//!
//! This crate re-exports the workspace and holds the CLI:
//!
//! - [`core`] (`storygpt-core`): traits, configs, errors, weight loading, backends;
//! - [`models`] (`storygpt-models`): CLIP, UNet, VAE, schedulers, OPT, Llama, mappers;
//! - [`data`] (`storygpt-data`): story world, FlintstonesSV/PororoSV readers, batchers;
//! - [`eval`] (`storygpt-eval`): Char/BG accuracy and F1, FID, CLIP score.
//!
//! Backends are cargo features (`flex` default, `ndarray`, `tch`, `cuda`); see [`backend`].

pub use storygpt_core as core;
pub use storygpt_core::{Error, Result, backend};
pub use storygpt_data as data;
pub use storygpt_eval as eval;
pub use storygpt_models as models;

pub mod cast;
pub mod cli;
pub mod pipeline;
pub mod story_eval;
pub mod train;

/// Helpers of the unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    /// A generated story world of `stories` stories at `size`², in a temporary folder (kept
    /// alive by the returned guard).
    pub fn tiny_world(
        stories: usize,
        size: u32,
    ) -> (tempfile::TempDir, Box<dyn storygpt_data::StoryDataset>) {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("world");
        let cfg = storygpt_data::world::WorldConfig {
            stories,
            size,
            ..Default::default()
        };
        storygpt_data::world::generate(&cfg, &out, false, &|_, _| {}).unwrap();
        let world = storygpt_data::open_dataset(&out).unwrap();
        (tmp, world)
    }
}
