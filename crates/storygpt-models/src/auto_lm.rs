//! transformers' `AutoModelForCausalLM` for the backbones storygpt ships: reads `model_type`
//! from a folder's `config.json` and loads [`OptForCausalLM`] or [`LlamaForCausalLM`]. Stage 2
//! and the story pipeline hold an [`AutoCausalLm`] so one config key swaps the LLM.

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Int, Tensor};
use storygpt_core::traits::{KvCache, LlmBackbone, LlmOutput};
use storygpt_core::{Error, Result};

use crate::llama::LlamaForCausalLM;
use crate::opt::OptForCausalLM;

/// OPT or Llama, chosen by `config.json`'s `model_type`.
// One per process and never moved in a hot loop; boxing the variants would only add an
// indirection to every call (and burn's Module derive does not see through `Box`).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum AutoCausalLm<B: Backend> {
    /// `model_type: "opt"`.
    Opt(OptForCausalLM<B>),
    /// `model_type: "llama"` (Llama 2, SmolLM2, the story world's LM).
    Llama(LlamaForCausalLM<B>),
}

impl<B: Backend> AutoCausalLm<B> {
    /// Loads the folder's model.
    ///
    /// # Errors
    /// A `model_type` other than `opt` / `llama` (named, with the file), and whatever the
    /// model's own loader rejects.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device<B>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("config.json");
        let cfg: serde_json::Value = storygpt_core::config::read_json(&path)?;
        match cfg.get("model_type").and_then(|v| v.as_str()) {
            Some("opt") => Ok(Self::Opt(OptForCausalLM::from_pretrained(dir, device)?)),
            Some("llama") => Ok(Self::Llama(LlamaForCausalLM::from_pretrained(dir, device)?)),
            other => Err(Error::InvalidConfig {
                path: Some(path),
                message: format!(
                    "model_type {other:?}: storygpt's causal LMs are \"opt\" and \"llama\""
                ),
            }),
        }
    }

    fn inner(&self) -> &dyn LlmBackbone<B> {
        match self {
            Self::Opt(m) => m,
            Self::Llama(m) => m,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn LlmBackbone<B> {
        match self {
            Self::Opt(m) => m,
            Self::Llama(m) => m,
        }
    }
}

impl<B: Backend> LlmBackbone<B> for AutoCausalLm<B> {
    fn embed_dim(&self) -> usize {
        self.inner().embed_dim()
    }

    fn vocab_size(&self) -> usize {
        self.inner().vocab_size()
    }

    fn num_layers(&self) -> usize {
        self.inner().num_layers()
    }

    fn max_position_embeddings(&self) -> usize {
        self.inner().max_position_embeddings()
    }

    fn embed_tokens(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.inner().embed_tokens(input_ids)
    }

    fn forward_embeds(
        &self,
        inputs_embeds: Tensor<B, 3>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
        output_hidden_states: bool,
    ) -> Result<LlmOutput<B>> {
        self.inner()
            .forward_embeds(inputs_embeds, attention_mask, cache, output_hidden_states)
    }

    fn resize_token_embeddings(&mut self, new_vocab: usize) -> Result<()> {
        self.inner_mut().resize_token_embeddings(new_vocab)
    }

    fn input_embeddings(&self) -> &Param<Tensor<B, 2>> {
        self.inner().input_embeddings()
    }

    fn input_embeddings_mut(&mut self) -> &mut Param<Tensor<B, 2>> {
        self.inner_mut().input_embeddings_mut()
    }
}
