//! CLIP (Radford et al., 2021, <https://arxiv.org/abs/2103.00020>), mirroring transformers'
//! `modeling_clip.py`: the text tower conditions Stable Diffusion, the vision tower encodes
//! character crops (Char-LDM) and story frames (stage 2).

pub mod config;
pub mod encoder;
pub mod image_processor;
pub mod text;
pub mod tokenizer;
pub mod vision;

pub use config::{ClipTextConfig, ClipVisionConfig};
pub use image_processor::{ClipImageProcessor, ClipImageProcessorConfig};
pub use text::{ClipTextModel, ClipTextModelWithProjection, ClipTextOutput};
pub use tokenizer::{ClipEncoding, ClipTokenizer, IMAGE_MARKER};
pub use vision::{ClipVisionModel, ClipVisionModelWithProjection, ClipVisionOutput};
