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
pub mod auto_lm;
pub mod autoencoder_kl;
pub mod causal_lm;
pub mod clip;
pub mod embeddings;
pub mod fuse;
pub mod gill_mapper;
pub mod llama;
pub mod llm_tokenizer;
pub mod opt;
pub mod resnet;
pub mod rope;
pub mod schedulers;
pub mod story_head;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;

/// Applies a `Linear` to `[b, n, d]` as one `[b·n, d]` matrix product.
///
/// burn's `Linear` on a rank-3 input runs a broadcast batched matmul, one small GEMM per batch
/// element; flattening first gives one GEMM with `b·n` rows, which is markedly faster on CPU
/// for the short sequences of CLIP and the UNet's low-resolution blocks.
pub(crate) fn linear3<B: burn::tensor::backend::Backend>(
    layer: &burn::nn::Linear<B>,
    x: burn::tensor::Tensor<B, 3>,
) -> burn::tensor::Tensor<B, 3> {
    let [b, n, d] = x.dims();
    let y = layer.forward(x.reshape([b * n, d]));
    let out = y.dims()[1];
    y.reshape([b, n, out])
}
pub mod txt2img;
