//! The small traits every model plugs in through.
//!
//! Pipelines ([`crate`]'s `CharLdmPipeline` / `StoryPipeline`, later) are written against these
//! traits only, so a researcher can swap in a new LLM or denoiser by implementing one of them.
//! Each trait is deliberately small: the shapes it takes and returns are documented on every
//! method, inputs are validated at the boundary (loaders, pipelines), and `forward`-style
//! methods stay infallible.
//!
//! | trait | role in StoryGPT-V | HF / diffusers counterpart |
//! |---|---|---|
//! | [`TextEncoder`] | caption → `[B, 77, d_ctx]` conditioning | `CLIPTextModel` |
//! | [`ImageEncoder`] | frame / character crop → CLIP features | `CLIPVisionModelWithProjection` |
//! | [`Denoiser`] | ε-prediction given latents, timestep, conditioning | `UNet2DConditionModel` |
//! | [`Autoencoder`] | pixels ↔ latents | `AutoencoderKL` |
//! | [`NoiseScheduler`] | the sampling / training noise schedule | `SchedulerMixin` |
//! | [`LlmBackbone`] | frozen causal LM reading text + visual tokens | `OPTForCausalLM`, `LlamaForCausalLM` |
//! | [`ConditioningMapper`] | `[IMG]` hidden states → `[B, 77, d_ctx]` | GILL's `TextFcLayer` |
//! | [`CaptionTokenizer`], [`LmTokenizer`] | captions → ids for the batchers | `CLIPTokenizer`, `AutoTokenizer` |

mod autoencoder;
mod denoiser;
mod image_encoder;
mod llm;
mod mapper;
mod scheduler;
mod text_encoder;
mod tokenizer;

pub use autoencoder::{Autoencoder, DiagonalGaussian};
pub use denoiser::Denoiser;
pub use image_encoder::{ImageEncoder, ImageEncoderOutput};
pub use llm::{
    KvCache, LayerKv, LlmBackbone, LlmOutput, check_token_ids, mask_frozen_rows, rescale_new_rows,
};
pub use mapper::ConditioningMapper;
pub use scheduler::{NoiseScheduler, NoiseSource, PredictionType, SeededNoise};
pub use text_encoder::{TextEncoder, TextEncoderOutput};
pub use tokenizer::{CaptionTokenizer, LmTokenizer};
