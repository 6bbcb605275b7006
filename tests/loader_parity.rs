//! Loader parity: the `loader` fixture is a tiny PyTorch module (Linear with and without bias,
//! LayerNorm, Embedding, RMSNorm, a ModuleList, Conv2d, GroupNorm, an int64 buffer) saved by
//! PyTorch in f32, f16, bf16 and as a sharded checkpoint. Loading it into the mirror burn
//! module below must reproduce PyTorch's forward pass.
//!
//! Regenerate: `.venv/bin/python scripts/reference/generate.py --only loader`.

use crate::common::*;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig, PaddingConfig2d, RmsNorm, RmsNormConfig,
};
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Int, Tensor};
use serde::Deserialize;
use storygpt::core::{ConfigFile, Error, WeightLoader};

/// Mirror of `loader/config.json` (`some_unknown_field` is ignored).
#[derive(Debug, Deserialize)]
struct TinyNetConfig {
    hidden_size: usize,
    num_blocks: usize,
    vocab_size: usize,
    rms_norm_eps: f64,
    layer_norm_eps: f64,
}
impl ConfigFile for TinyNetConfig {}

#[derive(Module, Debug)]
struct Block<B: Backend> {
    lin: Linear<B>,
}

/// Field names are the checkpoint's key segments.
#[derive(Module, Debug)]
struct TinyNet<B: Backend> {
    fc: Linear<B>,
    norm: LayerNorm<B>,
    emb: Embedding<B>,
    rms: RmsNorm<B>,
    blocks: Vec<Block<B>>,
    proj: Linear<B>,
    conv: Conv2d<B>,
    gn: GroupNorm<B>,
}

impl TinyNetConfig {
    fn init<B: Backend>(&self, device: &Device<B>) -> TinyNet<B> {
        let d = self.hidden_size;
        TinyNet {
            fc: LinearConfig::new(3, d).init(device),
            norm: LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            emb: EmbeddingConfig::new(self.vocab_size, d).init(device),
            rms: RmsNormConfig::new(d)
                .with_epsilon(self.rms_norm_eps)
                .init(device),
            blocks: (0..self.num_blocks)
                .map(|_| Block {
                    lin: LinearConfig::new(d, d).init(device),
                })
                .collect(),
            proj: LinearConfig::new(d, 4).with_bias(false).init(device),
            conv: Conv2dConfig::new([4, 4], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            gn: GroupNormConfig::new(2, 4).with_epsilon(1e-5).init(device),
        }
    }
}

impl<B: Backend> TinyNet<B> {
    /// `x` [2, 3], `ids` [2], `img` [1, 4, 6, 6] -> (`vec` [2, 4], `out_img` [1, 4, 6, 6]).
    fn forward(
        &self,
        x: Tensor<B, 2>,
        ids: Tensor<B, 1, Int>,
        img: Tensor<B, 4>,
    ) -> (Tensor<B, 2>, Tensor<B, 4>) {
        let emb = self.emb.forward(ids.unsqueeze_dim(0)).squeeze_dim(0); // [2, d]
        let mut h = self.norm.forward(self.fc.forward(x)) + emb;
        h = self.rms.forward(h);
        for b in &self.blocks {
            h = h.clone() + b.lin.forward(h);
        }
        (
            self.proj.forward(h),
            self.gn.forward(self.conv.forward(img)),
        )
    }
}

fn loader() -> WeightLoader {
    // `position_ids` is an int64 buffer in the state dict, not a parameter.
    WeightLoader::new().ignore_unexpected(r"(^|\.)position_ids$")
}

fn check(file: &str, vec_key: &str, img_key: &str) {
    let dir = fixture("loader");
    let config = TinyNetConfig::from_dir(&dir).unwrap();
    let device = storygpt::backend::default_device();
    let model = loader()
        .load_file(config.init::<TB>(&device), &dir.join(file))
        .unwrap();
    let g = golden("loader");
    let (vec, img) = model.forward(float(&g, "x"), int(&g, "ids"), float(&g, "img"));
    assert_close(&format!("{file} vec"), vec, &g[vec_key], 1e-5);
    assert_close(&format!("{file} out_img"), img, &g[img_key], 1e-5);
}

#[test]
fn f32_checkpoint_matches_pytorch() {
    check("model.safetensors", "vec", "out_img");
}

#[test]
fn f16_checkpoint_matches_pytorch() {
    check("model.f16.safetensors", "vec_f16", "out_img_f16");
}

#[test]
fn bf16_checkpoint_matches_pytorch() {
    check("model.bf16.safetensors", "vec_bf16", "out_img_bf16");
}

#[test]
fn sharded_checkpoint_matches_pytorch() {
    let dir = fixture("loader/sharded");
    let config = TinyNetConfig::from_dir(&dir).unwrap();
    let device = storygpt::backend::default_device();
    let model = loader()
        .load_dir(config.init::<TB>(&device), &dir, "model")
        .unwrap();
    let g = golden("loader");
    let (vec, img) = model.forward(float(&g, "x"), int(&g, "ids"), float(&g, "img"));
    assert_close("sharded vec", vec, &g["vec"], 1e-5);
    assert_close("sharded out_img", img, &g["out_img"], 1e-5);
}

#[test]
fn without_the_ignore_rule_the_buffer_is_unexpected() {
    let dir = fixture("loader");
    let config = TinyNetConfig::from_dir(&dir).unwrap();
    let device = storygpt::backend::default_device();
    let err = WeightLoader::new()
        .load_file(config.init::<TB>(&device), &dir.join("model.safetensors"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedTensors { keys, .. } if keys == &["position_ids"]),
        "{err:?}"
    );
}

#[test]
fn a_config_with_the_wrong_width_is_a_shape_error() {
    let dir = fixture("loader");
    let mut config = TinyNetConfig::from_dir(&dir).unwrap();
    config.hidden_size = 6;
    let device = storygpt::backend::default_device();
    let err = loader()
        .load_file(config.init::<TB>(&device), &dir.join("model.safetensors"))
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
}
