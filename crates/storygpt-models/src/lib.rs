//! # storygpt-models
//!
//! Concrete models, one file per Hugging Face / diffusers component, each loading from a model
//! folder with `from_pretrained(dir, &device)` through `storygpt_core::WeightLoader`:
//! CLIP text and vision encoders, `UNet2DConditionModel`, `AutoencoderKL`, the schedulers,
//! `OptForCausalLM`, `LlamaForCausalLM`, and the GILL conditioning mapper.
//!
//! The components arrive with the next wave-1 issues (CLIP, SD stack, LLMs); this crate is
//! where they live, implementing the traits of `storygpt_core::traits`.

pub mod activation;
pub mod attention;
pub mod autoencoder_kl;
pub mod clip;
pub mod embeddings;
pub mod resnet;
pub mod schedulers;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;
