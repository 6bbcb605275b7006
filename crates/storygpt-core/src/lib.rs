//! # storygpt-core
//!
//! The foundation every other storygpt crate builds on:
//!
//! - [`traits`]: the small traits models plug in through ([`TextEncoder`], [`ImageEncoder`],
//!   [`Denoiser`], [`Autoencoder`], [`NoiseScheduler`], [`LlmBackbone`],
//!   [`ConditioningMapper`]);
//! - [`Error`]: the one error type, whose variants carry the offending path, key or shape;
//! - [`config`]: Hugging Face `config.json` files into typed structs;
//! - [`weights`]: strict safetensors loading (single or sharded) through burn-store;
//! - [`fs`]: atomic file writes;
//! - [`backend`]: the burn backends compiled in (cargo features `flex`, `ndarray`, `tch`,
//!   `cuda`).
//!
//! StoryGPT-V: Shen & Elhoseiny, "Large Language Models as Consistent Story Visualizers",
//! <https://arxiv.org/abs/2312.02252>.

pub mod backend;
pub mod config;
pub mod error;
pub mod fs;
pub mod generation;
pub mod pipeline;
pub mod traits;
pub mod weights;

pub use config::ConfigFile;
pub use error::{Error, Result};
pub use traits::*;
pub use weights::{TensorLayout, WeightLoader};
