//! diffusers' `resnet.py` / `downsampling.py` / `upsampling.py`: `ResnetBlock2D`,
//! `Downsample2D`, `Upsample2D`.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor};

/// A 3×3 convolution with padding 1 (the workhorse of the UNet and VAE).
pub(crate) fn conv3x3<B: Backend>(c_in: usize, c_out: usize, device: &Device<B>) -> Conv2d<B> {
    Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

/// A 1×1 convolution.
pub(crate) fn conv1x1<B: Backend>(c_in: usize, c_out: usize, device: &Device<B>) -> Conv2d<B> {
    Conv2dConfig::new([c_in, c_out], [1, 1]).init(device)
}

/// Feature maps at or below this many pixels run 3×3 convolutions as one im2col GEMM.
const IM2COL_MAX_PIXELS: usize = 8 * 8;

/// A 3×3, stride-1, padding-1 convolution (the UNet/VAE workhorse).
///
/// At low resolution (the UNet's 8² and 4² blocks at 256², with 1280 channels) burn-flex's
/// direct convolution is far from GEMM speed, so small maps are lowered to one matrix product:
/// the 9 shifted copies of the padded input form `[b·h·w, 9·c]`, times the weight
/// `[9·c, out]`. Larger maps use burn's conv kernel.
pub(crate) fn conv3x3_forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    if h * w > IM2COL_MAX_PIXELS || B::ad_enabled(&x.device()) {
        return conv.forward(x);
    }
    let weight = conv.weight.val(); // [out, c, 3, 3]
    let out = weight.dims()[0];
    let padded = x.pad((1, 1, 1, 1), burn::tensor::ops::PadMode::Constant(0.0));
    // [b, c, 9, h, w], the 9 taps in (ky, kx) order as in the weight.
    let taps: Vec<Tensor<B, 4>> = (0..3)
        .flat_map(|ky| (0..3).map(move |kx| (ky, kx)))
        .map(|(ky, kx)| padded.clone().slice([0..b, 0..c, ky..ky + h, kx..kx + w]))
        .collect();
    let cols = Tensor::stack::<5>(taps, 2) // [b, c, 9, h, w]
        .reshape([b, c * 9, h * w])
        .swap_dims(1, 2) // [b, hw, 9c]
        .reshape([b * h * w, c * 9]);
    let wmat = weight.reshape([out, c * 9]).swap_dims(0, 1); // [9c, out]
    let mut y = cols.matmul(wmat); // [b·hw, out]
    if let Some(bias) = &conv.bias {
        y = y + bias.val().reshape([1, out]);
    }
    y.reshape([b, h * w, out])
        .swap_dims(1, 2)
        .reshape([b, out, h, w])
}

/// GroupNorm with the given epsilon.
pub(crate) fn group_norm<B: Backend>(
    groups: usize,
    channels: usize,
    eps: f64,
    device: &Device<B>,
) -> GroupNorm<B> {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}

/// `ResnetBlock2D` with `time_embedding_norm="default"`:
/// `x + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))`, with a 1×1
/// `conv_shortcut` on `x` when the channel count changes.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    /// GroupNorm on the input.
    pub norm1: GroupNorm<B>,
    /// First 3×3 conv.
    pub conv1: Conv2d<B>,
    /// Time-embedding projection (absent in the VAE, which has no time input).
    pub time_emb_proj: Option<Linear<B>>,
    /// GroupNorm before the second conv.
    pub norm2: GroupNorm<B>,
    /// Second 3×3 conv.
    pub conv2: Conv2d<B>,
    /// 1×1 projection of the residual when `in != out`.
    pub conv_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock2D<B> {
    /// Random weights. `temb_channels` is `None` in the VAE.
    pub fn new(
        c_in: usize,
        c_out: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
        device: &Device<B>,
    ) -> Self {
        Self {
            norm1: group_norm(groups, c_in, eps, device),
            conv1: conv3x3(c_in, c_out, device),
            time_emb_proj: temb_channels.map(|t| LinearConfig::new(t, c_out).init(device)),
            norm2: group_norm(groups, c_out, eps, device),
            conv2: conv3x3(c_out, c_out, device),
            conv_shortcut: (c_in != c_out).then(|| conv1x1(c_in, c_out, device)),
        }
    }

    /// # Shapes
    /// `x`: `[b, c_in, h, w]`, `temb`: `[b, temb_channels]` → `[b, c_out, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<Tensor<B, 2>>) -> Tensor<B, 4> {
        let mut h = conv3x3_forward(&self.conv1, silu(self.norm1.forward(x.clone())));
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(silu(temb)); // [b, c_out]
            let [b, c] = t.dims();
            h = h + t.reshape([b, c, 1, 1]);
        }
        let h = conv3x3_forward(&self.conv2, silu(self.norm2.forward(h)));
        let residual = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        residual + h
    }
}

/// `Downsample2D` with a convolution: 3×3 stride 2. The UNet pads 1 on every side; the VAE
/// pads only bottom/right by 1 (diffusers' `padding=0` path: `F.pad(x, (0, 1, 0, 1))`).
#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    /// The strided convolution.
    pub conv: Conv2d<B>,
}

impl<B: Backend> Downsample2D<B> {
    /// `padding` is diffusers' `downsample_padding` (1 in the UNet, 0 in the VAE).
    pub fn new(channels: usize, padding: usize, device: &Device<B>) -> Self {
        let pad = if padding == 0 {
            PaddingConfig2d::Explicit(0, 0, 1, 1)
        } else {
            PaddingConfig2d::Explicit(padding, padding, padding, padding)
        };
        Self {
            conv: Conv2dConfig::new([channels, channels], [3, 3])
                .with_stride([2, 2])
                .with_padding(pad)
                .init(device),
        }
    }

    /// `[b, c, h, w] → [b, c, h/2, w/2]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.conv.forward(x)
    }
}

/// `Upsample2D` with a convolution: nearest-neighbour ×2, then a 3×3 conv.
#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    /// The convolution after upsampling.
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample2D<B> {
    /// Random weights.
    pub fn new(channels: usize, device: &Device<B>) -> Self {
        Self {
            conv: conv3x3(channels, channels, device),
        }
    }

    /// `[b, c, h, w] → [b, c, 2h, 2w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv3x3_forward(&self.conv, upsample_nearest2x(x))
    }
}

/// Nearest-neighbour ×2 upsampling (`F.interpolate(scale_factor=2.0, mode="nearest")`), done
/// by repeating each pixel into a 2×2 block.
pub fn upsample_nearest2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use storygpt_core::backend::{DefaultBackend as TB, default_device};

    #[test]
    fn im2col_conv_matches_the_conv_kernel() {
        let device = default_device();
        for (c, out, hw) in [(5, 7, 4), (8, 3, 16), (3, 4, 1)] {
            let conv = conv3x3::<TB>(c, out, &device);
            let x =
                Tensor::<TB, 4>::random([2, c, hw, hw], Distribution::Normal(0.0, 1.0), &device);
            let want = conv.forward(x.clone());
            let got = conv3x3_forward(&conv, x);
            let diff: f32 = (want - got).abs().max().into_scalar();
            assert!(diff < 1e-5, "c={c} out={out} hw={hw}: {diff}");
        }
    }
}
