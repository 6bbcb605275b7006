//! CLIP's text tower: `CLIPTextModel` and `CLIPTextModelWithProjection` (transformers
//! `modeling_clip.py`), the text encoder of Stable Diffusion 1.x.
//!
//! ids → token + position embeddings → causal pre-norm encoder → `final_layer_norm`
//! (`last_hidden_state`, the UNet's conditioning) → pooled at the end-of-text token.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use storygpt_core::{Error, Result, TextEncoder, TextEncoderOutput, WeightLoader};

use super::config::ClipTextConfig;
use super::encoder::{ClipEncoder, EncoderDims};

/// Token and position embeddings (`text_model.embeddings`).
#[derive(Module, Debug)]
pub struct ClipTextEmbeddings<B: Backend> {
    /// `[vocab_size, hidden]`
    pub token_embedding: Embedding<B>,
    /// `[max_position_embeddings, hidden]`
    pub position_embedding: Embedding<B>,
}

/// The text transformer (`text_model` in checkpoints).
#[derive(Module, Debug)]
pub struct ClipTextTransformer<B: Backend> {
    /// Embeddings.
    pub embeddings: ClipTextEmbeddings<B>,
    /// Causal encoder.
    pub encoder: ClipEncoder<B>,
    /// Final LayerNorm; its output is `last_hidden_state`.
    pub final_layer_norm: LayerNorm<B>,
    eos_token_id: usize,
    legacy_pooling: bool,
    vocab_size: usize,
    max_position_embeddings: usize,
}

/// Output of [`ClipTextTransformer::forward`].
#[derive(Debug, Clone)]
pub struct ClipTextOutput<B: Backend> {
    /// `[batch, seq, hidden]`
    pub last_hidden_state: Tensor<B, 3>,
    /// `[batch, hidden]`
    pub pooler_output: Tensor<B, 2>,
    /// With `output_hidden_states`: embeddings and each layer's output (before the final norm).
    pub hidden_states: Option<Vec<Tensor<B, 3>>>,
}

impl<B: Backend> ClipTextTransformer<B> {
    fn new(config: &ClipTextConfig, device: &Device<B>) -> Self {
        Self {
            embeddings: ClipTextEmbeddings {
                token_embedding: EmbeddingConfig::new(config.vocab_size, config.hidden_size)
                    .init(device),
                position_embedding: EmbeddingConfig::new(
                    config.max_position_embeddings,
                    config.hidden_size,
                )
                .init(device),
            },
            encoder: ClipEncoder::new(
                EncoderDims {
                    hidden: config.hidden_size,
                    intermediate: config.intermediate_size,
                    heads: config.num_attention_heads,
                    layers: config.num_hidden_layers,
                    eps: config.layer_norm_eps,
                    act: config.hidden_act,
                },
                device,
            ),
            final_layer_norm: LayerNormConfig::new(config.hidden_size)
                .with_epsilon(config.layer_norm_eps)
                .init(device),
            eos_token_id: config.eos_token_id,
            legacy_pooling: config.legacy_pooling(),
            vocab_size: config.vocab_size,
            max_position_embeddings: config.max_position_embeddings,
        }
    }

    /// Encodes token ids.
    ///
    /// # Shapes
    /// `input_ids`: `[batch, seq]`, `seq <= max_position_embeddings`, ids `< vocab_size`
    /// (see [`ClipTextTransformer::check_input_ids`]).
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        output_hidden_states: bool,
    ) -> ClipTextOutput<B> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();

        // 1. Embeddings: token + learned absolute position.
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device).unsqueeze_dim(0);
        let x = self.embeddings.token_embedding.forward(input_ids.clone())
            + self.embeddings.position_embedding.forward(positions);

        // 2. Causal encoder, 3. final norm.
        let (x, hidden_states) = self.encoder.forward(x, true, output_hidden_states);
        let last_hidden_state = self.final_layer_norm.forward(x);

        // 4. Pool at the end-of-text token of each row.
        let eos_index = self.eos_positions(input_ids); // [batch]
        let hidden = last_hidden_state.dims()[2];
        let index = eos_index.reshape([batch, 1, 1]).expand([batch, 1, hidden]);
        let pooler_output = last_hidden_state
            .clone()
            .gather(1, index)
            .reshape([batch, hidden]);

        ClipTextOutput {
            last_hidden_state,
            pooler_output,
            hidden_states,
        }
    }

    /// Position of the end-of-text token in each row: `argmax(ids)` for legacy configs
    /// (`eos_token_id == 2`), else the first occurrence of `eos_token_id` (0 for a row without
    /// one, as torch's argmax over an all-false row).
    fn eos_positions(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 1, Int> {
        let [batch, _] = input_ids.dims();
        if self.legacy_pooling {
            return input_ids.argmax(1).reshape([batch]);
        }
        // (ids == eos) as int, argmax gives the first maximal (= first eos) position.
        input_ids
            .equal_elem(self.eos_token_id as i64)
            .int()
            .argmax(1)
            .reshape([batch])
    }

    /// Checks ids before [`ClipTextTransformer::forward`]: rank, length and vocabulary range.
    pub fn check_input_ids(&self, input_ids: &Tensor<B, 2, Int>) -> Result<()> {
        let [batch, seq] = input_ids.dims();
        if batch == 0 || seq == 0 || seq > self.max_position_embeddings {
            return Err(Error::InputShape {
                what: "CLIP text input_ids".into(),
                expected: format!("[batch >= 1, 1..={}]", self.max_position_embeddings),
                found: vec![batch, seq],
            });
        }
        let data: TensorData = input_ids.clone().max().into_data();
        let max = data.convert::<i64>().to_vec::<i64>().unwrap_or_default();
        let min = input_ids
            .clone()
            .min()
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap_or_default();
        if let (Some(&hi), Some(&lo)) = (max.first(), min.first())
            && (lo < 0 || hi as usize >= self.vocab_size)
        {
            return Err(Error::InvalidInput(format!(
                "CLIP text input_ids must be in 0..{}, got values in {lo}..={hi}",
                self.vocab_size
            )));
        }
        Ok(())
    }
}

/// `CLIPTextModel`: the text transformer alone (SD 1.x `text_encoder/`).
#[derive(Module, Debug)]
pub struct ClipTextModel<B: Backend> {
    /// Keys `text_model.*` (transformers 4) or without the prefix (transformers 5).
    pub text_model: ClipTextTransformer<B>,
}

/// `CLIPTextModelWithProjection`: adds `text_projection` (no bias) on the pooled output.
#[derive(Module, Debug)]
pub struct ClipTextModelWithProjection<B: Backend> {
    /// The text transformer.
    pub text_model: ClipTextTransformer<B>,
    /// `[hidden → projection_dim]`, no bias.
    pub text_projection: Linear<B>,
}

/// Key rules shared by the text models: transformers-5 files drop the `text_model.` prefix;
/// transformers-4 files carry a `position_ids` buffer; full `CLIPModel` checkpoints also hold
/// the vision tower and the projections, which a text model ignores.
fn text_loader(with_projection: bool) -> WeightLoader {
    let mut loader = WeightLoader::new()
        .remap(
            r"^(embeddings|encoder|final_layer_norm)\.",
            "text_model.$1.",
        )
        .ignore_unexpected(r"position_ids$")
        .ignore_unexpected(r"^(vision_model|visual_projection|logit_scale)");
    if !with_projection {
        loader = loader.ignore_unexpected(r"^text_projection\.");
    }
    loader
}

impl<B: Backend> ClipTextModel<B> {
    /// Random weights from a config (validated).
    pub fn new(config: &ClipTextConfig, device: &Device<B>) -> Result<Self> {
        config.validate().map_err(|message| Error::InvalidConfig {
            path: None,
            message,
        })?;
        Ok(Self {
            text_model: ClipTextTransformer::new(config, device),
        })
    }

    /// Loads `dir/config.json` and `dir/model.safetensors` (or a sharded index).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device<B>) -> Result<Self> {
        let dir = dir.as_ref();
        Self::from_pretrained_dtype(dir, device, None)
    }

    /// Like `from_pretrained`, loading float weights as `dtype` (e.g. `DType::BF16`) instead of
    /// the device's default float type, whatever the checkpoint's dtype.
    pub fn from_pretrained_dtype(
        dir: impl AsRef<Path>,
        device: &Device<B>,
        dtype: Option<DType>,
    ) -> Result<Self> {
        Self::from_pretrained_with(dir, device, None, dtype)
    }

    /// Like `from_pretrained_dtype`, reading the weights `model.<variant>.safetensors` (e.g.
    /// `fp16`) when a variant is given.
    pub fn from_pretrained_with(
        dir: impl AsRef<Path>,
        device: &Device<B>,
        variant: Option<&str>,
        dtype: Option<DType>,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ClipTextConfig::from_dir(dir)?;
        let mut loader = text_loader(false);
        if let Some(d) = dtype {
            loader = loader.dtype(d);
        }
        let stem = variant.map_or_else(|| "model".to_string(), |v| format!("model.{v}"));
        loader.load_dir(Self::new(&config, device)?, dir, &stem)
    }

    /// See [`ClipTextTransformer::forward`].
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> ClipTextOutput<B> {
        self.text_model.forward(input_ids, false)
    }

    /// The key rules of CLIP text checkpoints (both transformers layouts, full CLIP folders).
    pub fn weight_loader() -> WeightLoader {
        text_loader(false)
    }
}

impl<B: Backend> ClipTextModelWithProjection<B> {
    /// Random weights from a config (validated).
    pub fn new(config: &ClipTextConfig, device: &Device<B>) -> Result<Self> {
        config.validate().map_err(|message| Error::InvalidConfig {
            path: None,
            message,
        })?;
        Ok(Self {
            text_model: ClipTextTransformer::new(config, device),
            text_projection: LinearConfig::new(config.hidden_size, config.projection_dim)
                .with_bias(false)
                .init(device),
        })
    }

    /// Loads `dir/config.json` and the weights.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device<B>) -> Result<Self> {
        let dir = dir.as_ref();
        Self::from_pretrained_dtype(dir, device, None)
    }

    /// Like `from_pretrained`, loading float weights as `dtype` (e.g. `DType::BF16`) instead of
    /// the device's default float type, whatever the checkpoint's dtype.
    pub fn from_pretrained_dtype(
        dir: impl AsRef<Path>,
        device: &Device<B>,
        dtype: Option<DType>,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ClipTextConfig::from_dir(dir)?;
        let mut loader = text_loader(true);
        if let Some(d) = dtype {
            loader = loader.dtype(d);
        }
        loader.load_dir(Self::new(&config, device)?, dir, "model")
    }

    /// Hidden states, pooled output, and `text_embeds = text_projection(pooled)` `[batch, proj]`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> (ClipTextOutput<B>, Tensor<B, 2>) {
        let out = self.text_model.forward(input_ids, false);
        let text_embeds = self.text_projection.forward(out.pooler_output.clone());
        (out, text_embeds)
    }
}

impl<B: Backend> TextEncoder<B> for ClipTextModel<B> {
    fn encode_text(&self, input_ids: Tensor<B, 2, Int>) -> TextEncoderOutput<B> {
        let out = self.forward(input_ids);
        TextEncoderOutput {
            last_hidden_state: out.last_hidden_state,
            pooler_output: out.pooler_output,
        }
    }

    fn hidden_size(&self) -> usize {
        self.text_model.final_layer_norm.gamma.dims()[0]
    }

    fn max_position_embeddings(&self) -> usize {
        self.text_model.max_position_embeddings
    }
}

impl<B: Backend> TextEncoder<B> for ClipTextModelWithProjection<B> {
    fn encode_text(&self, input_ids: Tensor<B, 2, Int>) -> TextEncoderOutput<B> {
        let out = self.text_model.forward(input_ids, false);
        TextEncoderOutput {
            last_hidden_state: out.last_hidden_state,
            pooler_output: out.pooler_output,
        }
    }

    fn hidden_size(&self) -> usize {
        self.text_model.final_layer_norm.gamma.dims()[0]
    }

    fn max_position_embeddings(&self) -> usize {
        self.text_model.max_position_embeddings
    }
}
