//! Feature extractors for FID, behind [`FeatureExtractor`]:
//!
//! - [`InceptionFid`]: pytorch-fid's Inception-v3 pool3 (2048-d) with a selectable input chain
//!   ([`FidInputChain`]); the only extractor whose score is comparable with published FIDs;
//! - [`ClassifierFeatures`]: the pooled features of any [`MultiLabelClassifier`] (the story
//!   world's small CNN), for a domain FID when no Inception weights are at hand. Its score is
//!   **not** comparable to Inception FID, and reports say so.

use std::path::Path;

use burn::tensor::Device;
use burn::tensor::backend::Backend;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};

use crate::classifier::{MultiLabelClassifier, stack_chw, to_vec};
use crate::inception::{InceptionConfig, InceptionV3};
use crate::transforms::{ChwImage, resize_bilinear_torch, storygpt_eval_transform, to_tensor};

/// How frames reach the FID network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FidInputChain {
    /// pytorch-fid: `ToTensor` in `[0, 1]`, bilinear resize to 299² (`align_corners=False`,
    /// no antialiasing), `2x − 1`.
    Standard,
    /// The original StoryGPT-V evaluator (`eval/eval_all.py` + `eval/fid_score.py`): PIL
    /// `Resize(299)` + `CenterCrop(299)` + `ToTensor` + ImageNet `Normalize`, then `(x + 1) / 2`
    /// (`normalize=True`), then pytorch-fid's own `2x − 1`. Net effect: the network sees
    /// ImageNet-normalised pixels instead of `[-1, 1]`, so values differ from standard FID.
    StorygptV,
}

impl FidInputChain {
    /// Parses `standard` or `storygpt-v`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "standard" | "pytorch-fid" => Ok(Self::Standard),
            "storygpt-v" | "storygptv" | "original" => Ok(Self::StorygptV),
            other => Err(Error::InvalidInput(format!(
                "unknown FID input chain `{other}` (expected standard or storygpt-v)"
            ))),
        }
    }

    /// The tensor the network receives (before its `normalize_input`'s `2x − 1`, which
    /// [`InceptionFid`] applies), in `[0, 1]` for the standard chain.
    pub fn prepare(self, img: &RgbImage) -> ChwImage {
        match self {
            FidInputChain::Standard => resize_bilinear_torch(&to_tensor(img), 299, 299),
            FidInputChain::StorygptV => {
                let mut t = storygpt_eval_transform(img, 299);
                // `normalize=True` in fid_score: [-1, 1] → [0, 1] (applied to normalised data).
                t.data.iter_mut().for_each(|v| *v = (*v + 1.0) / 2.0);
                // already 299², so pytorch-fid's resize is the identity
                t
            }
        }
    }
}

/// Turns frames into feature vectors for FID.
pub trait FeatureExtractor<B: Backend> {
    /// Width of a feature vector.
    fn dim(&self) -> usize;
    /// Features `[n, dim]`, row-major.
    fn extract(&self, images: &[RgbImage], device: &Device<B>) -> Result<Vec<f32>>;
    /// What the score is, for reports ("Inception-v3 pool3 (pytorch-fid), storygpt-v chain").
    fn describe(&self) -> String;
    /// Whether the score can be compared with published (Inception) FIDs.
    fn comparable_to_inception_fid(&self) -> bool;
}

/// pytorch-fid's FID network with an input chain.
#[derive(Debug)]
pub struct InceptionFid<B: Backend> {
    /// The network (FID variant).
    pub model: InceptionV3<B>,
    /// How frames are prepared.
    pub chain: FidInputChain,
    /// Images per forward pass.
    pub batch_size: usize,
}

impl<B: Backend> InceptionFid<B> {
    /// Loads the FID weights: `pt_inception-2015-12-05-6726825d.pth` (read as data by
    /// burn-store's PyTorch reader) or a `.safetensors` conversion of it. A folder with a
    /// `config.json` (e.g. the tiny test network) is read with that config.
    pub fn from_path(
        path: impl AsRef<Path>,
        chain: FidInputChain,
        device: &Device<B>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let model = if path.is_dir() {
            InceptionV3::from_pretrained(path, device)?
        } else {
            InceptionV3::from_file(path, &InceptionConfig::fid(), device)?
        };
        Ok(Self {
            model,
            chain,
            batch_size: 32,
        })
    }

    /// Pool features of already prepared images (see [`FidInputChain::prepare`]).
    pub fn features_of_prepared(&self, images: Vec<ChwImage>, device: &Device<B>) -> Vec<f32> {
        // pytorch-fid's normalize_input: [0, 1] → [-1, 1]
        let x = stack_chw(images, device) * 2.0 - 1.0;
        to_vec(self.model.pool_features(x))
    }
}

impl<B: Backend> FeatureExtractor<B> for InceptionFid<B> {
    fn dim(&self) -> usize {
        self.model.fc.weight.dims()[0]
    }

    fn extract(&self, images: &[RgbImage], device: &Device<B>) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(images.len() * self.dim());
        for chunk in images.chunks(self.batch_size.max(1)) {
            let prepared = chunk.iter().map(|im| self.chain.prepare(im)).collect();
            out.extend(self.features_of_prepared(prepared, device));
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        format!(
            "Inception-v3 pool3 (pytorch-fid weights), {} input chain",
            match self.chain {
                FidInputChain::Standard => "standard",
                FidInputChain::StorygptV => "StoryGPT-V",
            }
        )
    }

    fn comparable_to_inception_fid(&self) -> bool {
        true
    }
}

/// The pooled features of a classifier, as a domain FID feature space.
pub struct ClassifierFeatures<'a, B: Backend> {
    /// The classifier.
    pub classifier: &'a dyn MultiLabelClassifier<B>,
}

impl<B: Backend> FeatureExtractor<B> for ClassifierFeatures<'_, B> {
    fn dim(&self) -> usize {
        self.classifier.feature_dim()
    }

    fn extract(&self, images: &[RgbImage], device: &Device<B>) -> Result<Vec<f32>> {
        self.classifier.features(images, device)
    }

    fn describe(&self) -> String {
        format!(
            "{} pooled features: NOT comparable to Inception FID",
            self.classifier.describe()
        )
    }

    fn comparable_to_inception_fid(&self) -> bool {
        false
    }
}
