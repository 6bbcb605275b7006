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
