//! Inception-v3 (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision",
//! <https://arxiv.org/abs/1512.00567>) in torchvision's layout, in two variants:
//!
//! - [`InceptionVariant::Torchvision`]: `torchvision.models.Inception3`, the network the
//!   original StoryGPT-V evaluator fine-tunes as a multi-label classifier (`fc` and
//!   `AuxLogits.fc` replaced by heads of 7, 9 or 323 outputs; `eval/eval_cls.py`);
//! - [`InceptionVariant::Fid`]: pytorch-fid's `fid_inception_v3`, the TensorFlow FID network
//!   (`pt_inception-2015-12-05`): `FIDInceptionA`/`C`/`E_1` average-pool without counting the
//!   padding, `FIDInceptionE_2` (`Mixed_7c`) max-pools; 1008 classes, no auxiliary head.
//!
//! Field names are torchvision's state-dict keys (`Conv2d_1a_3x3.conv.weight`,
//! `Mixed_6b.branch7x7_2.bn.running_var`, `AuxLogits.fc.weight`), so a torchvision or
//! pytorch-fid checkpoint loads as it is ([`InceptionV3::from_file`]; `.pth` files go
//! through burn-store's PyTorch reader). `width_divisor` shrinks every layer width for the tiny
//! parity fixtures; it is 1 for the real networks.

// Field names are torchvision's checkpoint keys (`Conv2d_1a_3x3`, `Mixed_5b`, `AuxLogits`).
#![allow(non_snake_case)]

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{adaptive_avg_pool2d, avg_pool2d, max_pool2d};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use storygpt_core::weights::WeightLoader;
use storygpt_core::{Error, Result};

/// Which Inception-v3 flavour (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InceptionVariant {
    /// `torchvision.models.inception_v3`.
    Torchvision,
    /// pytorch-fid's `fid_inception_v3` (the TF FID network).
    Fid,
}

/// Shape of an [`InceptionV3`]; serialised as the `config.json` of a saved classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InceptionConfig {
    /// Always `"inception_v3"`.
    #[serde(default = "inception_v3_name")]
    pub architecture: String,
    /// torchvision or FID blocks.
    pub variant: InceptionVariant,
    /// Divides every layer width (1 for the real networks; the tiny fixtures use 8).
    #[serde(default = "one")]
    pub width_divisor: usize,
    /// Outputs of `fc` (1000 ImageNet, 1008 FID, 7/9/323 for the StoryGPT-V classifiers).
    pub num_classes: usize,
    /// Whether the auxiliary head `AuxLogits` exists (torchvision's `aux_logits`).
    pub aux_logits: bool,
    /// torchvision's `transform_input`: re-normalise ImageNet-normalised input to the
    /// `(x − 0.5) / 0.5` range the Google weights expect (on whenever torchvision loads its
    /// pretrained weights, so in the original StoryGPT-V classifiers).
    pub transform_input: bool,
}

fn inception_v3_name() -> String {
    "inception_v3".into()
}

fn one() -> usize {
    1
}

impl InceptionConfig {
    /// pytorch-fid's network for `pt_inception-2015-12-05-6726825d.pth`.
    pub fn fid() -> Self {
        Self {
            architecture: inception_v3_name(),
            variant: InceptionVariant::Fid,
            width_divisor: 1,
            num_classes: 1008,
            aux_logits: false,
            transform_input: false,
        }
    }

    /// The original evaluator's multi-label classifier: torchvision Inception-v3 with both
    /// heads replaced by `num_classes` outputs (`models.inception_v3(pretrained=True)`, which
    /// turns `transform_input` on).
    pub fn classifier(num_classes: usize) -> Self {
        Self {
            architecture: inception_v3_name(),
            variant: InceptionVariant::Torchvision,
            width_divisor: 1,
            num_classes,
            aux_logits: true,
            transform_input: true,
        }
    }

    /// Checks the widths divide and the head is not empty.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.architecture != "inception_v3" {
            return Err(format!(
                "architecture is `{}`, expected `inception_v3`",
                self.architecture
            ));
        }
        let d = self.width_divisor;
        if d == 0 || [32, 48, 80, 96, 160, 448, 2048].iter().any(|w| w % d != 0) {
            return Err(format!(
                "width_divisor ({d}) must divide every Inception width (32, 48, 80, 96, 160, 448, ...)"
            ));
        }
        if self.num_classes == 0 {
            return Err("num_classes must be positive".into());
        }
        Ok(())
    }

    /// Reads and validates `dir/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("config.json");
        let cfg: Self = storygpt_core::config::read_json(&path)?;
        cfg.validate().map_err(|message| Error::InvalidConfig {
            path: Some(path),
            message,
        })?;
        Ok(cfg)
    }

    /// Width of the pooled features (2048 for the real network).
    pub fn pool_dim(&self) -> usize {
        2048 / self.width_divisor
    }

    /// A freshly initialised network (validated config).
    #[inline(never)]
    pub fn init<B: Backend>(&self, device: &Device<B>) -> Result<InceptionV3<B>> {
        self.validate().map_err(|message| Error::InvalidConfig {
            path: None,
            message,
        })?;
        Ok(InceptionV3::new(self, device))
    }
}

/// `BasicConv2d`: a bias-less convolution, batch norm (eps 0.001), ReLU.
#[derive(Module, Debug)]
pub struct BasicConv2d<B: Backend> {
    /// The convolution (`conv.weight`).
    pub conv: Conv2d<B>,
    /// Its batch norm (`bn.weight`, `bn.bias`, `bn.running_mean`, `bn.running_var`).
    pub bn: BatchNorm<B>,
}

impl<B: Backend> BasicConv2d<B> {
    fn new(
        c_in: usize,
        c_out: usize,
        kernel: [usize; 2],
        stride: usize,
        padding: [usize; 2],
        device: &Device<B>,
    ) -> Self {
        Self {
            conv: Conv2dConfig::new([c_in, c_out], kernel)
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(
                    padding[0], padding[1], padding[0], padding[1],
                ))
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(c_out).with_epsilon(1e-3).init(device),
        }
    }

    /// `relu(bn(conv(x)))`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        relu(self.bn.forward(self.conv.forward(x)))
    }
}

/// Square kernel `k`, stride 1, padding `p`.
fn bc<B: Backend>(i: usize, o: usize, k: usize, p: usize, d: &Device<B>) -> BasicConv2d<B> {
    BasicConv2d::new(i, o, [k, k], 1, [p, p], d)
}

/// How a block's pooling branch pools (torchvision vs the FID blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolBranch {
    /// `avg_pool2d(3, 1, 1)`, padding counted (torchvision).
    AvgCountPad,
    /// `avg_pool2d(3, 1, 1, count_include_pad=False)` (FIDInceptionA / C / E_1).
    AvgNoCountPad,
    /// `max_pool2d(3, 1, 1)` (FIDInceptionE_2).
    Max,
}

fn pool3x3_s1<B: Backend>(x: Tensor<B, 4>, kind: PoolBranch) -> Tensor<B, 4> {
    match kind {
        PoolBranch::AvgCountPad => avg_pool2d(x, [3, 3], [1, 1], [1, 1], true, false),
        PoolBranch::AvgNoCountPad => avg_pool2d(x, [3, 3], [1, 1], [1, 1], false, false),
        PoolBranch::Max => max_pool2d(x, [3, 3], [1, 1], [1, 1], [1, 1], false),
    }
}

fn max_pool_3s2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    max_pool2d(x, [3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// `InceptionA` (Mixed_5b/5c/5d): 1×1, 5×5, double 3×3 and pooling branches.
#[derive(Module, Debug)]
pub struct InceptionA<B: Backend> {
    pub branch1x1: BasicConv2d<B>,
    pub branch5x5_1: BasicConv2d<B>,
    pub branch5x5_2: BasicConv2d<B>,
    pub branch3x3dbl_1: BasicConv2d<B>,
    pub branch3x3dbl_2: BasicConv2d<B>,
    pub branch3x3dbl_3: BasicConv2d<B>,
    pub branch_pool: BasicConv2d<B>,
    #[module(skip)]
    pool: PoolBranch,
}

impl<B: Backend> InceptionA<B> {
    fn new(c_in: usize, pool_features: usize, w: Widths, pool: PoolBranch, d: &Device<B>) -> Self {
        Self {
            branch1x1: bc(c_in, w.of(64), 1, 0, d),
            branch5x5_1: bc(c_in, w.of(48), 1, 0, d),
            branch5x5_2: bc(w.of(48), w.of(64), 5, 2, d),
            branch3x3dbl_1: bc(c_in, w.of(64), 1, 0, d),
            branch3x3dbl_2: bc(w.of(64), w.of(96), 3, 1, d),
            branch3x3dbl_3: bc(w.of(96), w.of(96), 3, 1, d),
            branch_pool: bc(c_in, w.of(pool_features), 1, 0, d),
            pool,
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b5 = self
            .branch5x5_2
            .forward(self.branch5x5_1.forward(x.clone()));
        let b3 = self.branch3x3dbl_3.forward(
            self.branch3x3dbl_2
                .forward(self.branch3x3dbl_1.forward(x.clone())),
        );
        let bp = self.branch_pool.forward(pool3x3_s1(x, self.pool));
        Tensor::cat(vec![b1, b5, b3, bp], 1)
    }
}

/// `InceptionB` (Mixed_6a): the 35→17 grid reduction.
#[derive(Module, Debug)]
pub struct InceptionB<B: Backend> {
    pub branch3x3: BasicConv2d<B>,
    pub branch3x3dbl_1: BasicConv2d<B>,
    pub branch3x3dbl_2: BasicConv2d<B>,
    pub branch3x3dbl_3: BasicConv2d<B>,
}

impl<B: Backend> InceptionB<B> {
    fn new(c_in: usize, w: Widths, d: &Device<B>) -> Self {
        Self {
            branch3x3: BasicConv2d::new(c_in, w.of(384), [3, 3], 2, [0, 0], d),
            branch3x3dbl_1: bc(c_in, w.of(64), 1, 0, d),
            branch3x3dbl_2: bc(w.of(64), w.of(96), 3, 1, d),
            branch3x3dbl_3: BasicConv2d::new(w.of(96), w.of(96), [3, 3], 2, [0, 0], d),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b3 = self.branch3x3.forward(x.clone());
        let bd = self.branch3x3dbl_3.forward(
            self.branch3x3dbl_2
                .forward(self.branch3x3dbl_1.forward(x.clone())),
        );
        Tensor::cat(vec![b3, bd, max_pool_3s2(x)], 1)
    }
}

/// `InceptionC` (Mixed_6b–6e): factorised 7×7 branches.
#[derive(Module, Debug)]
pub struct InceptionC<B: Backend> {
    pub branch1x1: BasicConv2d<B>,
    pub branch7x7_1: BasicConv2d<B>,
    pub branch7x7_2: BasicConv2d<B>,
    pub branch7x7_3: BasicConv2d<B>,
    pub branch7x7dbl_1: BasicConv2d<B>,
    pub branch7x7dbl_2: BasicConv2d<B>,
    pub branch7x7dbl_3: BasicConv2d<B>,
    pub branch7x7dbl_4: BasicConv2d<B>,
    pub branch7x7dbl_5: BasicConv2d<B>,
    pub branch_pool: BasicConv2d<B>,
    #[module(skip)]
    pool: PoolBranch,
}

impl<B: Backend> InceptionC<B> {
    fn new(c_in: usize, c7: usize, w: Widths, pool: PoolBranch, d: &Device<B>) -> Self {
        let (c7, c192) = (w.of(c7), w.of(192));
        // (1, 7) kernels pad (0, 3); (7, 1) kernels pad (3, 0).
        let row = |i, o| BasicConv2d::new(i, o, [1, 7], 1, [0, 3], d);
        let col = |i, o| BasicConv2d::new(i, o, [7, 1], 1, [3, 0], d);
        Self {
            branch1x1: bc(c_in, c192, 1, 0, d),
            branch7x7_1: bc(c_in, c7, 1, 0, d),
            branch7x7_2: row(c7, c7),
            branch7x7_3: col(c7, c192),
            branch7x7dbl_1: bc(c_in, c7, 1, 0, d),
            branch7x7dbl_2: col(c7, c7),
            branch7x7dbl_3: row(c7, c7),
            branch7x7dbl_4: col(c7, c7),
            branch7x7dbl_5: row(c7, c192),
            branch_pool: bc(c_in, c192, 1, 0, d),
            pool,
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b7 = [&self.branch7x7_1, &self.branch7x7_2, &self.branch7x7_3]
            .iter()
            .fold(x.clone(), |h, c| c.forward(h));
        let bd = [
            &self.branch7x7dbl_1,
            &self.branch7x7dbl_2,
            &self.branch7x7dbl_3,
            &self.branch7x7dbl_4,
            &self.branch7x7dbl_5,
        ]
        .iter()
        .fold(x.clone(), |h, c| c.forward(h));
        let bp = self.branch_pool.forward(pool3x3_s1(x, self.pool));
        Tensor::cat(vec![b1, b7, bd, bp], 1)
    }
}

/// `InceptionD` (Mixed_7a): the 17→8 grid reduction.
#[derive(Module, Debug)]
pub struct InceptionD<B: Backend> {
    pub branch3x3_1: BasicConv2d<B>,
    pub branch3x3_2: BasicConv2d<B>,
    pub branch7x7x3_1: BasicConv2d<B>,
    pub branch7x7x3_2: BasicConv2d<B>,
    pub branch7x7x3_3: BasicConv2d<B>,
    pub branch7x7x3_4: BasicConv2d<B>,
}

impl<B: Backend> InceptionD<B> {
    fn new(c_in: usize, w: Widths, d: &Device<B>) -> Self {
        let c192 = w.of(192);
        Self {
            branch3x3_1: bc(c_in, c192, 1, 0, d),
            branch3x3_2: BasicConv2d::new(c192, w.of(320), [3, 3], 2, [0, 0], d),
            branch7x7x3_1: bc(c_in, c192, 1, 0, d),
            branch7x7x3_2: BasicConv2d::new(c192, c192, [1, 7], 1, [0, 3], d),
            branch7x7x3_3: BasicConv2d::new(c192, c192, [7, 1], 1, [3, 0], d),
            branch7x7x3_4: BasicConv2d::new(c192, c192, [3, 3], 2, [0, 0], d),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b3 = self
            .branch3x3_2
            .forward(self.branch3x3_1.forward(x.clone()));
        let b7 = [
            &self.branch7x7x3_1,
            &self.branch7x7x3_2,
            &self.branch7x7x3_3,
            &self.branch7x7x3_4,
        ]
        .iter()
        .fold(x.clone(), |h, c| c.forward(h));
        Tensor::cat(vec![b3, b7, max_pool_3s2(x)], 1)
    }
}

/// `InceptionE` (Mixed_7b, 7c): expanded filter banks with split 1×3 / 3×1 outputs.
#[derive(Module, Debug)]
pub struct InceptionE<B: Backend> {
    pub branch1x1: BasicConv2d<B>,
    pub branch3x3_1: BasicConv2d<B>,
    pub branch3x3_2a: BasicConv2d<B>,
    pub branch3x3_2b: BasicConv2d<B>,
    pub branch3x3dbl_1: BasicConv2d<B>,
    pub branch3x3dbl_2: BasicConv2d<B>,
    pub branch3x3dbl_3a: BasicConv2d<B>,
    pub branch3x3dbl_3b: BasicConv2d<B>,
    pub branch_pool: BasicConv2d<B>,
    #[module(skip)]
    pool: PoolBranch,
}

impl<B: Backend> InceptionE<B> {
    fn new(c_in: usize, w: Widths, pool: PoolBranch, d: &Device<B>) -> Self {
        let c384 = w.of(384);
        let row = |i, o| BasicConv2d::new(i, o, [1, 3], 1, [0, 1], d);
        let col = |i, o| BasicConv2d::new(i, o, [3, 1], 1, [1, 0], d);
        Self {
            branch1x1: bc(c_in, w.of(320), 1, 0, d),
            branch3x3_1: bc(c_in, c384, 1, 0, d),
            branch3x3_2a: row(c384, c384),
            branch3x3_2b: col(c384, c384),
            branch3x3dbl_1: bc(c_in, w.of(448), 1, 0, d),
            branch3x3dbl_2: bc(w.of(448), c384, 3, 1, d),
            branch3x3dbl_3a: row(c384, c384),
            branch3x3dbl_3b: col(c384, c384),
            branch_pool: bc(c_in, w.of(192), 1, 0, d),
            pool,
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b1 = self.branch1x1.forward(x.clone());
        let h = self.branch3x3_1.forward(x.clone());
        let b3 = Tensor::cat(
            vec![
                self.branch3x3_2a.forward(h.clone()),
                self.branch3x3_2b.forward(h),
            ],
            1,
        );
        let h = self
            .branch3x3dbl_2
            .forward(self.branch3x3dbl_1.forward(x.clone()));
        let bd = Tensor::cat(
            vec![
                self.branch3x3dbl_3a.forward(h.clone()),
                self.branch3x3dbl_3b.forward(h),
            ],
            1,
        );
        let bp = self.branch_pool.forward(pool3x3_s1(x, self.pool));
        Tensor::cat(vec![b1, b3, bd, bp], 1)
    }
}

/// `InceptionAux`: the auxiliary classifier on the 17×17 grid (training only in torchvision).
#[derive(Module, Debug)]
pub struct InceptionAux<B: Backend> {
    pub conv0: BasicConv2d<B>,
    pub conv1: BasicConv2d<B>,
    pub fc: Linear<B>,
}

impl<B: Backend> InceptionAux<B> {
    fn new(c_in: usize, num_classes: usize, w: Widths, d: &Device<B>) -> Self {
        Self {
            conv0: bc(c_in, w.of(128), 1, 0, d),
            conv1: bc(w.of(128), w.of(768), 5, 0, d),
            fc: LinearConfig::new(w.of(768), num_classes).init(d),
        }
    }

    /// `[B, 768, 17, 17]` → `[B, num_classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        // 17×17 → 5×5
        let x = avg_pool2d(x, [5, 5], [3, 3], [0, 0], true, false);
        let x = self.conv1.forward(self.conv0.forward(x));
        let x = adaptive_avg_pool2d(x, [1, 1]);
        let [b, c, _, _] = x.dims();
        self.fc.forward(x.reshape([b, c]))
    }
}

#[derive(Debug, Clone, Copy)]
struct Widths(usize);

impl Widths {
    fn of(self, c: usize) -> usize {
        c / self.0
    }
}

/// Outputs of [`InceptionV3::forward_features`].
#[derive(Debug, Clone)]
pub struct InceptionOutput<B: Backend> {
    /// After the first max pool (pytorch-fid block 0): `[B, 64, 73, 73]` at 299².
    pub block0: Tensor<B, 4>,
    /// After the second max pool (block 1): `[B, 192, 35, 35]`.
    pub block1: Tensor<B, 4>,
    /// After Mixed_6e, the auxiliary head's input (block 2): `[B, 768, 17, 17]`.
    pub block2: Tensor<B, 4>,
    /// The global average pool of Mixed_7c (block 3, FID's features): `[B, 2048]`.
    pub pool: Tensor<B, 2>,
}

/// Inception-v3 (see the module docs).
#[derive(Module, Debug)]
pub struct InceptionV3<B: Backend> {
    pub Conv2d_1a_3x3: BasicConv2d<B>,
    pub Conv2d_2a_3x3: BasicConv2d<B>,
    pub Conv2d_2b_3x3: BasicConv2d<B>,
    pub Conv2d_3b_1x1: BasicConv2d<B>,
    pub Conv2d_4a_3x3: BasicConv2d<B>,
    pub Mixed_5b: InceptionA<B>,
    pub Mixed_5c: InceptionA<B>,
    pub Mixed_5d: InceptionA<B>,
    pub Mixed_6a: InceptionB<B>,
    pub Mixed_6b: InceptionC<B>,
    pub Mixed_6c: InceptionC<B>,
    pub Mixed_6d: InceptionC<B>,
    pub Mixed_6e: InceptionC<B>,
    pub AuxLogits: Option<InceptionAux<B>>,
    pub Mixed_7a: InceptionD<B>,
    pub Mixed_7b: InceptionE<B>,
    pub Mixed_7c: InceptionE<B>,
    /// The classification head `[2048 → num_classes]`.
    pub fc: Linear<B>,
    #[module(skip)]
    config: InceptionConfig,
}

impl<B: Backend> InceptionV3<B> {
    // The model struct is ~140 KB (94 conv + batch-norm pairs inline): constructors and
    // loaders stay out of line so callers' stack frames do not hold several copies of it.
    #[inline(never)]
    fn new(cfg: &InceptionConfig, d: &Device<B>) -> Self {
        let w = Widths(cfg.width_divisor);
        let fid = cfg.variant == InceptionVariant::Fid;
        let (pool_a, pool_e1, pool_e2) = if fid {
            (
                PoolBranch::AvgNoCountPad,
                PoolBranch::AvgNoCountPad,
                PoolBranch::Max,
            )
        } else {
            (
                PoolBranch::AvgCountPad,
                PoolBranch::AvgCountPad,
                PoolBranch::AvgCountPad,
            )
        };
        // Channel counts between blocks (torchvision's hard-coded in_channels).
        let c = |x: usize| w.of(x);
        let mixed_5 = |i: usize| w.of(64) + w.of(64) + w.of(96) + i;
        let c5b = mixed_5(w.of(32));
        let c5c = mixed_5(w.of(64));
        let c6a = w.of(384) + w.of(96) + c5c;
        let c6 = 4 * w.of(192);
        let c7a = w.of(320) + w.of(192) + c6;
        let c7 = w.of(320) + 4 * w.of(384) + w.of(192);
        debug_assert_eq!(c7, cfg.pool_dim());
        Self {
            Conv2d_1a_3x3: BasicConv2d::new(3, c(32), [3, 3], 2, [0, 0], d),
            Conv2d_2a_3x3: bc(c(32), c(32), 3, 0, d),
            Conv2d_2b_3x3: bc(c(32), c(64), 3, 1, d),
            Conv2d_3b_1x1: bc(c(64), c(80), 1, 0, d),
            Conv2d_4a_3x3: bc(c(80), c(192), 3, 0, d),
            Mixed_5b: InceptionA::new(c(192), 32, w, pool_a, d),
            Mixed_5c: InceptionA::new(c5b, 64, w, pool_a, d),
            Mixed_5d: InceptionA::new(c5c, 64, w, pool_a, d),
            Mixed_6a: InceptionB::new(c5c, w, d),
            Mixed_6b: InceptionC::new(c6a, 128, w, pool_a, d),
            Mixed_6c: InceptionC::new(c6, 160, w, pool_a, d),
            Mixed_6d: InceptionC::new(c6, 160, w, pool_a, d),
            Mixed_6e: InceptionC::new(c6, 192, w, pool_a, d),
            AuxLogits: cfg
                .aux_logits
                .then(|| InceptionAux::new(c6, cfg.num_classes, w, d)),
            Mixed_7a: InceptionD::new(c6, w, d),
            Mixed_7b: InceptionE::new(c7a, w, pool_e1, d),
            Mixed_7c: InceptionE::new(c7, w, pool_e2, d),
            fc: LinearConfig::new(c7, cfg.num_classes).init(d),
            config: cfg.clone(),
        }
    }

    /// The key rules of torchvision / pytorch-fid checkpoints: BatchNorm's
    /// `num_batches_tracked` counters are not parameters here.
    pub fn weight_loader() -> WeightLoader {
        WeightLoader::new().ignore_unexpected(r"num_batches_tracked$")
    }

    /// Loads `dir/config.json` and `dir/model.safetensors` (a classifier saved by storygpt, or
    /// a converted torchvision checkpoint with a config).
    #[inline(never)]
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device<B>) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = InceptionConfig::from_dir(dir)?;
        Self::weight_loader().load_dir(cfg.init(device)?, dir, "model")
    }

    /// Loads a single checkpoint file for `config`: `.safetensors`, or a PyTorch `.pth`/`.pt`
    /// (`pt_inception-2015-12-05-6726825d.pth`, a torchvision state dict) read as data by
    /// burn-store's PyTorch reader. Missing, unexpected or mis-shaped tensors are errors.
    #[inline(never)]
    pub fn from_file(
        path: impl AsRef<Path>,
        config: &InceptionConfig,
        device: &Device<B>,
    ) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "weights file not found"),
            ));
        }
        let model = config.init(device)?;
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        if is_safetensors {
            Self::weight_loader().load_file(model, path)
        } else {
            Self::weight_loader().load_pytorch(model, path)
        }
    }

    /// Whether the model re-normalises its input (`transform_input`).
    pub fn transforms_input(&self) -> bool {
        self.config.transform_input
    }

    /// The config the model was built from.
    pub fn config(&self) -> &InceptionConfig {
        &self.config
    }

    /// Replaces the recorded config (after swapping heads, e.g. ImageNet → 7 labels).
    pub(crate) fn with_config(mut self, config: InceptionConfig) -> Self {
        self.config = config;
        self
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (torchvision layout), atomically.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        storygpt_core::weights::save_file(
            self,
            &dir.join("model.safetensors"),
            storygpt_core::weights::TensorLayout::PyTorch,
        )?;
        storygpt_core::fs::write_json_atomic(dir.join("config.json"), &self.config)
    }

    /// Number of outputs of `fc`.
    pub fn num_classes(&self) -> usize {
        self.fc.weight.dims()[1]
    }

    /// torchvision's `_transform_input`: ImageNet-normalised channels → `(x − 0.5) / 0.5`.
    fn transform(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if !self.config.transform_input {
            return x;
        }
        const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
        const STD: [f64; 3] = [0.229, 0.224, 0.225];
        let chans: Vec<Tensor<B, 4>> = x
            .chunk(3, 1)
            .into_iter()
            .enumerate()
            .map(|(i, ch)| ch * (STD[i] / 0.5) + (MEAN[i] - 0.5) / 0.5)
            .collect();
        Tensor::cat(chans, 1)
    }

    /// The stem and the Mixed blocks up to Mixed_6e (pytorch-fid blocks 0–2).
    fn trunk(&self, x: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        // 299 → 149 → 147 → 147 → 73
        let x = self.Conv2d_1a_3x3.forward(x);
        let x = self.Conv2d_2a_3x3.forward(x);
        let x = self.Conv2d_2b_3x3.forward(x);
        let block0 = max_pool_3s2(x);
        // 73 → 73 → 71 → 35
        let x = self.Conv2d_3b_1x1.forward(block0.clone());
        let x = self.Conv2d_4a_3x3.forward(x);
        let block1 = max_pool_3s2(x);
        // 35 → 35 → 17
        let x = self.Mixed_5b.forward(block1.clone());
        let x = self.Mixed_5c.forward(x);
        let x = self.Mixed_5d.forward(x);
        let x = self.Mixed_6a.forward(x);
        let x = self.Mixed_6b.forward(x);
        let x = self.Mixed_6c.forward(x);
        let x = self.Mixed_6d.forward(x);
        let block2 = self.Mixed_6e.forward(x);
        (block0, block1, block2)
    }

    /// 17 → 8 → global average pool: `[B, 2048]`.
    fn head(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = self.Mixed_7a.forward(x);
        let x = self.Mixed_7b.forward(x);
        let x = self.Mixed_7c.forward(x);
        let x = adaptive_avg_pool2d(x, [1, 1]);
        let [b, c, _, _] = x.dims();
        x.reshape([b, c])
    }

    /// Every intermediate pytorch-fid exposes, for input already at the network's scale
    /// (`[-1, 1]` for the FID weights; ImageNet-normalised for torchvision classifiers, which
    /// `transform_input` then re-normalises).
    ///
    /// # Shapes
    /// `x`: `[B, 3, 299, 299]` (other sizes ≥ 75 work; the grid sizes change).
    pub fn forward_features(&self, x: Tensor<B, 4>) -> InceptionOutput<B> {
        let (block0, block1, block2) = self.trunk(self.transform(x));
        let pool = self.head(block2.clone());
        InceptionOutput {
            block0,
            block1,
            block2,
            pool,
        }
    }

    /// The pooled 2048-d features (FID's `pool3`).
    pub fn pool_features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let (_, _, block2) = self.trunk(self.transform(x));
        self.head(block2)
    }

    /// Classifier logits `[B, num_classes]` and, when the model has the auxiliary head, its
    /// logits from the 17×17 grid. Dropout (p = 0.5 before `fc` in torchvision) is applied only
    /// in training, by the caller's [`InceptionV3::forward_train`].
    pub fn forward(&self, x: Tensor<B, 4>) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let (_, _, block2) = self.trunk(self.transform(x));
        let aux = self.AuxLogits.as_ref().map(|a| a.forward(block2.clone()));
        (self.fc.forward(self.head(block2)), aux)
    }

    /// Training forward: like [`InceptionV3::forward`] with torchvision's dropout (p = 0.5) on
    /// the pooled features. Only meaningful under an autodiff backend.
    pub fn forward_train(
        &self,
        x: Tensor<B, 4>,
        dropout: &burn::nn::Dropout,
    ) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
        let (_, _, block2) = self.trunk(self.transform(x));
        let aux = self.AuxLogits.as_ref().map(|a| a.forward(block2.clone()));
        let pooled = dropout.forward(self.head(block2));
        (self.fc.forward(pooled), aux)
    }
}
