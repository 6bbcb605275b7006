//! diffusers' `unet_2d_blocks.py` for SD 1.x/2.x: `CrossAttnDownBlock2D`, `DownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`, `UpBlock2D`.
//!
//! A down (up) block with and without attention share one struct: `attentions` is empty for
//! the plain kind, so the checkpoint keys come out exactly as diffusers'.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor};

use crate::attention::{Probe, Transformer2DModel};
use crate::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};

/// Settings shared by every block of one UNet.
#[derive(Debug, Clone, Copy)]
pub struct BlockSettings {
    /// Time-embedding width (4 × the first block's channels).
    pub temb_channels: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// Resnet GroupNorm epsilon (`norm_eps`).
    pub eps: f64,
    /// Conditioning width.
    pub cross_attention_dim: usize,
    /// 1×1 conv (false) or linear (true) projections in the transformers.
    pub use_linear_projection: bool,
    /// Transformer blocks per attention (`transformer_layers_per_block`).
    pub transformer_layers: usize,
    /// Downsampler padding (`downsample_padding`).
    pub downsample_padding: usize,
}

fn transformer<B: Backend>(
    channels: usize,
    heads: usize,
    s: &BlockSettings,
    device: &Device<B>,
) -> Transformer2DModel<B> {
    Transformer2DModel::new(
        channels,
        heads,
        channels / heads,
        s.cross_attention_dim,
        s.transformer_layers,
        s.groups,
        s.use_linear_projection,
        device,
    )
}

/// `CrossAttnDownBlock2D` (with `attentions`) or `DownBlock2D` (without).
#[derive(Module, Debug)]
pub struct DownBlock<B: Backend> {
    /// Resnets, `layers_per_block` of them.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One transformer after each resnet (empty for `DownBlock2D`).
    pub attentions: Vec<Transformer2DModel<B>>,
    /// The stride-2 downsampler, except in the last block.
    pub downsamplers: Vec<Downsample2D<B>>,
}

impl<B: Backend> DownBlock<B> {
    /// Random weights; `heads` is `Some` for the cross-attention kind.
    pub fn new(
        c_in: usize,
        c_out: usize,
        layers: usize,
        heads: Option<usize>,
        add_downsample: bool,
        s: &BlockSettings,
        device: &Device<B>,
    ) -> Self {
        Self {
            resnets: (0..layers)
                .map(|i| {
                    let c = if i == 0 { c_in } else { c_out };
                    ResnetBlock2D::new(c, c_out, Some(s.temb_channels), s.groups, s.eps, device)
                })
                .collect(),
            attentions: match heads {
                Some(h) => (0..layers)
                    .map(|_| transformer(c_out, h, s, device))
                    .collect(),
                None => Vec::new(),
            },
            downsamplers: if add_downsample {
                vec![Downsample2D::new(c_out, s.downsample_padding, device)]
            } else {
                Vec::new()
            },
        }
    }

    /// Returns the output and the states passed to the up path (one per resnet, plus the
    /// downsampled output).
    pub(crate) fn forward_probe(
        &self,
        mut x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        probe: &mut Probe<'_, B>,
    ) -> (Tensor<B, 4>, Vec<Tensor<B, 4>>) {
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb.clone()));
            if let Some(attn) = self.attentions.get(i) {
                x = probe.scoped(
                    || format!("attentions.{i}"),
                    |p| attn.forward_probe(x, context.clone(), p),
                );
            }
            states.push(x.clone());
        }
        for down in &self.downsamplers {
            x = down.forward(x);
            states.push(x.clone());
        }
        (x, states)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, transformer, resnet.
#[derive(Module, Debug)]
pub struct MidBlock<B: Backend> {
    /// Two resnets.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One transformer between them.
    pub attentions: Vec<Transformer2DModel<B>>,
}

impl<B: Backend> MidBlock<B> {
    /// Random weights.
    pub fn new(channels: usize, heads: usize, s: &BlockSettings, device: &Device<B>) -> Self {
        let resnet = || {
            ResnetBlock2D::new(
                channels,
                channels,
                Some(s.temb_channels),
                s.groups,
                s.eps,
                device,
            )
        };
        Self {
            resnets: vec![resnet(), resnet()],
            attentions: vec![transformer(channels, heads, s, device)],
        }
    }

    pub(crate) fn forward_probe(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        probe: &mut Probe<'_, B>,
    ) -> Tensor<B, 4> {
        let mut x = self.resnets[0].forward(x, Some(temb.clone()));
        for (i, (attn, resnet)) in self.attentions.iter().zip(&self.resnets[1..]).enumerate() {
            x = probe.scoped(
                || format!("attentions.{i}"),
                |p| attn.forward_probe(x, context.clone(), p),
            );
            x = resnet.forward(x, Some(temb.clone()));
        }
        x
    }
}

/// `CrossAttnUpBlock2D` (with `attentions`) or `UpBlock2D` (without).
#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    /// Resnets, `layers_per_block + 1` of them, each reading a skip connection.
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// One transformer after each resnet (empty for `UpBlock2D`).
    pub attentions: Vec<Transformer2DModel<B>>,
    /// Nearest ×2 + conv, except in the last block.
    pub upsamplers: Vec<Upsample2D<B>>,
}

impl<B: Backend> UpBlock<B> {
    /// Random weights. Channel bookkeeping follows diffusers: resnet `i` reads
    /// `prev_output_channel` (first) or `c_out`, concatenated with a skip of `c_in` (last) or
    /// `c_out` channels.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_in: usize,
        c_out: usize,
        prev_output_channel: usize,
        layers: usize,
        heads: Option<usize>,
        add_upsample: bool,
        s: &BlockSettings,
        device: &Device<B>,
    ) -> Self {
        Self {
            resnets: (0..layers)
                .map(|i| {
                    let skip = if i == layers - 1 { c_in } else { c_out };
                    let c = if i == 0 { prev_output_channel } else { c_out };
                    ResnetBlock2D::new(
                        c + skip,
                        c_out,
                        Some(s.temb_channels),
                        s.groups,
                        s.eps,
                        device,
                    )
                })
                .collect(),
            attentions: match heads {
                Some(h) => (0..layers)
                    .map(|_| transformer(c_out, h, s, device))
                    .collect(),
                None => Vec::new(),
            },
            upsamplers: if add_upsample {
                vec![Upsample2D::new(c_out, device)]
            } else {
                Vec::new()
            },
        }
    }

    /// `skips` holds this block's skip states in the order they were produced; they are
    /// consumed from the last.
    pub(crate) fn forward_probe(
        &self,
        mut x: Tensor<B, 4>,
        mut skips: Vec<Tensor<B, 4>>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        probe: &mut Probe<'_, B>,
    ) -> Tensor<B, 4> {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().unwrap_or_else(|| {
                unreachable!("the UNet hands each up block one skip per resnet")
            });
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb.clone()));
            if let Some(attn) = self.attentions.get(i) {
                x = probe.scoped(
                    || format!("attentions.{i}"),
                    |p| attn.forward_probe(x, context.clone(), p),
                );
            }
        }
        for up in &self.upsamplers {
            x = up.forward(x);
        }
        x
    }
}
