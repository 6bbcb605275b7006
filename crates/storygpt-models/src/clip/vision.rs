//! CLIP's vision tower: `CLIPVisionModel` and `CLIPVisionModelWithProjection` (transformers
//! `modeling_clip.py`).
//!
//! Char-LDM encodes each character crop with ViT-L/14 + `visual_projection` (768-d
//! `image_embeds`, fused with the name token); stage 2 feeds frames to the LLM as the 1024-d
//! `pooler_output`.
//!
//! pixels → patch conv + class token + positions → `pre_layrnorm` (sic, the checkpoint's
//! spelling) → encoder (`last_hidden_state`) → `post_layernorm` of the class token
//! (`pooler_output`) → `visual_projection` (`image_embeds`).

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Device, Distribution, Int, Tensor};
use storygpt_core::{Error, ImageEncoder, ImageEncoderOutput, Result, WeightLoader};

use super::config::ClipVisionConfig;
use super::encoder::{ClipEncoder, EncoderDims};

/// Patch, class and position embeddings (`vision_model.embeddings`).
#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings<B: Backend> {
    /// The learned class token `[hidden]`.
    pub class_embedding: Param<Tensor<B, 1>>,
    /// `Conv2d(num_channels → hidden, kernel = stride = patch_size)`, no bias.
    pub patch_embedding: Conv2d<B>,
    /// `[num_patches + 1, hidden]`
    pub position_embedding: Embedding<B>,
}

/// The vision transformer (`vision_model` in checkpoints).
#[derive(Module, Debug)]
pub struct ClipVisionTransformer<B: Backend> {
    /// Embeddings.
    pub embeddings: ClipVisionEmbeddings<B>,
    /// LayerNorm before the encoder (spelled `pre_layrnorm` in every CLIP checkpoint).
    pub pre_layrnorm: LayerNorm<B>,
    /// Bidirectional encoder.
    pub encoder: ClipEncoder<B>,
    /// LayerNorm on the class token, giving `pooler_output`.
    pub post_layernorm: LayerNorm<B>,
    image_size: usize,
    num_channels: usize,
}

/// Output of [`ClipVisionTransformer::forward`].
#[derive(Debug, Clone)]
pub struct ClipVisionOutput<B: Backend> {
    /// `[batch, num_patches + 1, hidden]` (not post-normed, as in transformers).
    pub last_hidden_state: Tensor<B, 3>,
    /// `[batch, hidden]`: `post_layernorm(last_hidden_state[:, 0])`.
    pub pooler_output: Tensor<B, 2>,
}

impl<B: Backend> ClipVisionTransformer<B> {
    fn new(config: &ClipVisionConfig, device: &Device<B>) -> Self {
        let norm = || {
            LayerNormConfig::new(config.hidden_size)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let p = config.patch_size;
        Self {
            embeddings: ClipVisionEmbeddings {
                class_embedding: Param::from_tensor(Tensor::random(
                    [config.hidden_size],
                    Distribution::Normal(0.0, 1.0),
                    device,
                )),
                patch_embedding: Conv2dConfig::new(
                    [config.num_channels, config.hidden_size],
                    [p, p],
                )
                .with_stride([p, p])
                .with_bias(false)
                .init(device),
                position_embedding: EmbeddingConfig::new(
                    config.num_positions(),
                    config.hidden_size,
                )
                .init(device),
            },
            pre_layrnorm: norm(),
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
            post_layernorm: norm(),
            image_size: config.image_size,
            num_channels: config.num_channels,
        }
    }

    /// Encodes preprocessed pixels.
    ///
    /// # Shapes
    /// `pixel_values`: `[batch, num_channels, image_size, image_size]`
    /// (see [`ClipVisionTransformer::check_pixel_values`]).
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> ClipVisionOutput<B> {
        let [batch, ..] = pixel_values.dims();
        let device = pixel_values.device();

        // 1. Patches: [b, hidden, g, g] -> [b, g*g, hidden]
        let patches = self.embeddings.patch_embedding.forward(pixel_values);
        let [_, hidden, gh, gw] = patches.dims();
        let patches = patches.reshape([batch, hidden, gh * gw]).swap_dims(1, 2);

        // 2. Prepend the class token, add positions.
        let class = self
            .embeddings
            .class_embedding
            .val()
            .reshape([1, 1, hidden])
            .expand([batch, 1, hidden]);
        let x = Tensor::cat(vec![class, patches], 1); // [b, 1 + g*g, hidden]
        let positions =
            Tensor::<B, 1, Int>::arange(0..(gh * gw + 1) as i64, &device).unsqueeze_dim(0);
        let x = x + self.embeddings.position_embedding.forward(positions);

        // 3. pre-norm, encoder; 4. pool the class token.
        let x = self.pre_layrnorm.forward(x);
        let (last_hidden_state, _) = self.encoder.forward(x, false, false);
        let class_state = last_hidden_state
            .clone()
            .slice([0..batch, 0..1, 0..hidden])
            .reshape([batch, hidden]);
        let pooler_output = self.post_layernorm.forward(class_state);
        ClipVisionOutput {
            last_hidden_state,
            pooler_output,
        }
    }

    /// Checks the input shape before [`ClipVisionTransformer::forward`].
    pub fn check_pixel_values(&self, pixel_values: &Tensor<B, 4>) -> Result<()> {
        let [b, c, h, w] = pixel_values.dims();
        if b == 0 || c != self.num_channels || h != self.image_size || w != self.image_size {
            return Err(Error::InputShape {
                what: "CLIP pixel_values".into(),
                expected: format!(
                    "[batch >= 1, {}, {}, {}]",
                    self.num_channels, self.image_size, self.image_size
                ),
                found: vec![b, c, h, w],
            });
        }
        Ok(())
    }

    /// Freezes everything except the last `n` encoder layers (Char-LDM trains the last 2 of
    /// its image encoder; `post_layernorm` and the projection stay frozen).
    pub fn train_only_last_layers(mut self, n: usize) -> Self {
        self.embeddings = self.embeddings.no_grad();
        self.pre_layrnorm = self.pre_layrnorm.no_grad();
        self.post_layernorm = self.post_layernorm.no_grad();
        let total = self.encoder.layers.len();
        let keep = total.saturating_sub(n);
        self.encoder.layers = self
            .encoder
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, layer)| if i < keep { layer.no_grad() } else { layer })
            .collect();
        self
    }
}

/// `CLIPVisionModel`.
#[derive(Module, Debug)]
pub struct ClipVisionModel<B: Backend> {
    /// Keys `vision_model.*`.
    pub vision_model: ClipVisionTransformer<B>,
}

/// `CLIPVisionModelWithProjection`.
#[derive(Module, Debug)]
pub struct ClipVisionModelWithProjection<B: Backend> {
    /// Keys `vision_model.*`.
    pub vision_model: ClipVisionTransformer<B>,
    /// `[hidden → projection_dim]`, no bias.
    pub visual_projection: Linear<B>,
}

/// Full `CLIPModel` checkpoints also hold the text tower, which a vision model ignores.
fn vision_loader(with_projection: bool) -> WeightLoader {
    let mut loader = WeightLoader::new()
        .ignore_unexpected(r"position_ids$")
        .ignore_unexpected(r"^(text_model|text_projection|logit_scale)");
    if !with_projection {
        loader = loader.ignore_unexpected(r"^visual_projection\.");
    }
    loader
}

impl<B: Backend> ClipVisionModel<B> {
    /// Random weights from a config (validated).
    pub fn new(config: &ClipVisionConfig, device: &Device<B>) -> Result<Self> {
        config.validate().map_err(|message| Error::InvalidConfig {
            path: None,
            message,
        })?;
        Ok(Self {
            vision_model: ClipVisionTransformer::new(config, device),
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
        let config = ClipVisionConfig::from_dir(dir)?;
        let mut loader = vision_loader(false);
        if let Some(d) = dtype {
            loader = loader.dtype(d);
        }
        loader.load_dir(Self::new(&config, device)?, dir, "model")
    }

    /// See [`ClipVisionTransformer::forward`].
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> ClipVisionOutput<B> {
        self.vision_model.forward(pixel_values)
    }
}

impl<B: Backend> ClipVisionModelWithProjection<B> {
    /// Random weights from a config (validated).
    pub fn new(config: &ClipVisionConfig, device: &Device<B>) -> Result<Self> {
        config.validate().map_err(|message| Error::InvalidConfig {
            path: None,
            message,
        })?;
        Ok(Self {
            vision_model: ClipVisionTransformer::new(config, device),
            visual_projection: LinearConfig::new(config.hidden_size, config.projection_dim)
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
        let config = ClipVisionConfig::from_dir(dir)?;
        let mut loader = vision_loader(true);
        if let Some(d) = dtype {
            loader = loader.dtype(d);
        }
        loader.load_dir(Self::new(&config, device)?, dir, "model")
    }

    /// Hidden states, pooled output, and `image_embeds = visual_projection(pooled)`.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> (ClipVisionOutput<B>, Tensor<B, 2>) {
        let out = self.vision_model.forward(pixel_values);
        let image_embeds = self.visual_projection.forward(out.pooler_output.clone());
        (out, image_embeds)
    }

    /// Freezes everything except the last `n` encoder layers, including the projection.
    pub fn train_only_last_layers(mut self, n: usize) -> Self {
        self.vision_model = self.vision_model.train_only_last_layers(n);
        self.visual_projection = self.visual_projection.no_grad();
        self
    }
}

impl<B: Backend> ImageEncoder<B> for ClipVisionModel<B> {
    fn encode_image(&self, pixel_values: Tensor<B, 4>) -> ImageEncoderOutput<B> {
        let out = self.forward(pixel_values);
        ImageEncoderOutput {
            last_hidden_state: out.last_hidden_state,
            pooler_output: out.pooler_output,
            image_embeds: None,
        }
    }

    fn image_size(&self) -> usize {
        self.vision_model.image_size
    }

    fn hidden_size(&self) -> usize {
        self.vision_model.post_layernorm.gamma.dims()[0]
    }

    fn projection_dim(&self) -> Option<usize> {
        None
    }
}

impl<B: Backend> ImageEncoder<B> for ClipVisionModelWithProjection<B> {
    fn encode_image(&self, pixel_values: Tensor<B, 4>) -> ImageEncoderOutput<B> {
        let (out, image_embeds) = self.forward(pixel_values);
        ImageEncoderOutput {
            last_hidden_state: out.last_hidden_state,
            pooler_output: out.pooler_output,
            image_embeds: Some(image_embeds),
        }
    }

    fn image_size(&self) -> usize {
        self.vision_model.image_size
    }

    fn hidden_size(&self) -> usize {
        self.vision_model.post_layernorm.gamma.dims()[0]
    }

    fn projection_dim(&self) -> Option<usize> {
        Some(self.visual_projection.weight.dims()[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::module::ModuleVisitor;
    use storygpt_core::backend::{DefaultBackend, default_device};

    type AD = Autodiff<DefaultBackend>;

    /// Records which parameter paths still require a gradient.
    #[derive(Default)]
    struct Trainable {
        path: Vec<String>,
        trainable: Vec<String>,
        frozen: Vec<String>,
    }

    impl ModuleVisitor<AD> for Trainable {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
            let p = self.path.join(".");
            if param.val().is_require_grad() {
                self.trainable.push(p);
            } else {
                self.frozen.push(p);
            }
        }
    }

    #[test]
    fn only_the_last_layers_stay_trainable() {
        let config = ClipVisionConfig {
            hidden_size: 8,
            intermediate_size: 12,
            projection_dim: 4,
            num_hidden_layers: 3,
            num_attention_heads: 2,
            image_size: 8,
            patch_size: 4,
            ..ClipVisionConfig::vit_l_14()
        };
        let model = ClipVisionModelWithProjection::<AD>::new(&config, &default_device())
            .unwrap()
            .train_only_last_layers(2);
        let mut v = Trainable::default();
        model.visit(&mut v);
        assert!(!v.trainable.is_empty());
        assert!(
            v.trainable
                .iter()
                .all(|p| p.starts_with("vision_model.encoder.layers.1.")
                    || p.starts_with("vision_model.encoder.layers.2.")),
            "{:?}",
            v.trainable
        );
        for frozen in [
            "vision_model.encoder.layers.0.self_attn.q_proj.weight",
            "vision_model.embeddings.class_embedding",
            "vision_model.post_layernorm.gamma",
            "visual_projection.weight",
        ] {
            assert!(
                v.frozen.iter().any(|p| p == frozen),
                "{frozen} should be frozen"
            );
        }
    }
}
