//! Char-LDM's `FuseModule` (StoryGPT-V `models/model.py:126-151`, after FastComposer): at the
//! text-encoder *output*, the vector of each character-name token (its last BPE piece) is fused
//! with the CLIP image embedding of that character:
//!
//! ```text
//! fused = LN( mlp2( mlp1([t ; v]) + t ) )
//! mlp1  = LN(2d) → Linear(2d→d) → GELU → Linear(d→d)          (no residual)
//! mlp2  = x + (LN(d) → Linear(d→d) → GELU → Linear(d→d))(x)   (residual)
//! ```
//!
//! and scattered back into the sequence at the marked positions only (`fuse_object_embeddings`,
//! paper eq. 1). Field names are the original checkpoint's (`mlp1.layernorm`, `mlp1.fc1`,
//! `layer_norm`), so `postfuse_module.*` keys load as they are.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Device, Int, Tensor};

/// The original's `MLP`: `LN → fc1 → GELU → fc2`, plus the input when `use_residual`.
#[derive(Module, Debug)]
pub struct FuseMlp<B: Backend> {
    /// LayerNorm on the input.
    pub layernorm: LayerNorm<B>,
    /// `[in → hidden]`.
    pub fc1: Linear<B>,
    /// `[hidden → out]`.
    pub fc2: Linear<B>,
    use_residual: bool,
}

impl<B: Backend> FuseMlp<B> {
    fn new(
        d_in: usize,
        d_out: usize,
        hidden: usize,
        use_residual: bool,
        device: &Device<B>,
    ) -> Self {
        Self {
            layernorm: LayerNormConfig::new(d_in).init(device),
            fc1: LinearConfig::new(d_in, hidden).init(device),
            fc2: LinearConfig::new(hidden, d_out).init(device),
            use_residual,
        }
    }

    /// `[..., in] → [..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let h = self
            .fc2
            .forward(gelu(self.fc1.forward(self.layernorm.forward(x.clone()))));
        if self.use_residual { h + x } else { h }
    }
}

/// The fuse module (see the module docs).
#[derive(Module, Debug)]
pub struct FuseModule<B: Backend> {
    /// `[t ; v]` (2d) → d.
    pub mlp1: FuseMlp<B>,
    /// d → d with a residual.
    pub mlp2: FuseMlp<B>,
    /// Final LayerNorm.
    pub layer_norm: LayerNorm<B>,
}

impl<B: Backend> FuseModule<B> {
    /// Random weights for text-encoder width `embed_dim` (768 for SD 1.x; the image embedding
    /// must have the same width).
    pub fn new(embed_dim: usize, device: &Device<B>) -> Self {
        Self {
            mlp1: FuseMlp::new(2 * embed_dim, embed_dim, embed_dim, false, device),
            mlp2: FuseMlp::new(embed_dim, embed_dim, embed_dim, true, device),
            layer_norm: LayerNormConfig::new(embed_dim).init(device),
        }
    }

    /// Width `d`.
    pub fn embed_dim(&self) -> usize {
        self.layer_norm.gamma.dims()[0]
    }

    /// `fuse_fn`: `[..., d]` text vectors and `[..., d]` image embeddings → fused `[..., d]`.
    pub fn fuse<const D: usize>(&self, text: Tensor<B, D>, image: Tensor<B, D>) -> Tensor<B, D> {
        let h = self
            .mlp1
            .forward(Tensor::cat(vec![text.clone(), image], D - 1))
            + text;
        self.layer_norm.forward(self.mlp2.forward(h))
    }

    /// `fuse_object_embeddings`: replaces the text-encoder output at each valid character
    /// position by its fusion with that character's image embedding; every other position is
    /// untouched.
    ///
    /// # Shapes
    /// - `text_embeds`: `[b, l, d]` (the text encoder's `last_hidden_state`);
    /// - `token_idx`: `[b, m]` positions in `0..l` (the last piece of each name);
    /// - `valid`: `[b, m]`, which of the `m` slots hold a character;
    /// - `object_embeds`: `[b, m, d]` image embeddings;
    /// - returns `[b, l, d]`.
    pub fn fuse_object_embeddings(
        &self,
        text_embeds: Tensor<B, 3>,
        token_idx: Tensor<B, 2, Int>,
        valid: Tensor<B, 2, Bool>,
        object_embeds: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let [b, l, _] = text_embeds.dims();
        let m = token_idx.dims()[1];
        let device = text_embeds.device();
        // one-hot [b, m, l] of the marked positions, zero rows for unused slots
        let positions = Tensor::<B, 1, Int>::arange(0..l as i64, &device)
            .reshape([1, 1, l])
            .expand([b, m, l]);
        let onehot = positions
            .equal(token_idx.reshape([b, m, 1]).expand([b, m, l]))
            .float()
            * valid.float().reshape([b, m, 1]);
        // the text vectors at those positions: [b, m, d]
        let picked = onehot.clone().matmul(text_embeds.clone());
        let fused = self.fuse(picked, object_embeds);
        // scatter back: fused rows where marked, the text elsewhere
        let keep = (onehot.clone().sum_dim(1).reshape([b, l, 1]) * -1.0 + 1.0).clamp(0.0, 1.0);
        text_embeds * keep + onehot.swap_dims(1, 2).matmul(fused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use storygpt_core::backend::{DefaultBackend as TB, default_device};

    #[test]
    fn only_marked_positions_change() {
        let dev = default_device();
        let fuse = FuseModule::<TB>::new(8, &dev);
        let text = Tensor::<TB, 3>::random([2, 5, 8], burn::tensor::Distribution::Default, &dev);
        let img = Tensor::<TB, 3>::random([2, 2, 8], burn::tensor::Distribution::Default, &dev);
        let idx =
            Tensor::<TB, 2, Int>::from_data(TensorData::new(vec![1i64, 3, 2, 0], [2, 2]), &dev);
        let valid = Tensor::<TB, 2, Bool>::from_data(
            TensorData::new(vec![true, true, true, false], [2, 2]),
            &dev,
        );
        let out = fuse.fuse_object_embeddings(text.clone(), idx, valid, img.clone());
        let diff: Vec<f32> = (out.clone() - text.clone())
            .abs()
            .sum_dim(2)
            .into_data()
            .to_vec()
            .unwrap();
        // sample 0: positions 1 and 3 changed; sample 1: position 2 only (slot 2 is unused)
        let changed: Vec<bool> = diff.iter().map(|&d| d > 1e-6).collect();
        assert_eq!(
            changed,
            [
                false, true, false, true, false, false, false, true, false, false
            ]
        );
        // the fused vector equals fuse(t, v) at that position
        let want = fuse.fuse(
            text.clone().slice([0..1, 1..2]),
            img.clone().slice([0..1, 0..1]),
        );
        let got = out.slice([0..1, 1..2]);
        let err: f32 = (want - got).abs().max().into_scalar();
        assert!(err < 1e-5, "{err}");
    }
}
