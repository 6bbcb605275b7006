//! # storygpt-eval
//!
//! The paper's metrics, computed as the original StoryGPT-V evaluator computes them:
//!
//! - [`metrics`]: character and background exact-match accuracy and micro-F1 from multi-label
//!   classifiers (`eval/eval_cls.py`);
//! - [`inception`]: Inception-v3 in torchvision's layout, as the original multi-label
//!   classifier and as pytorch-fid's FID network;
//! - [`small_cnn`]: a small, fast multi-label CNN, the story world's judge;
//! - [`fid`]: Fréchet distance with pytorch-fid's statistics and a stable matrix square root;
//! - [`fid_features`]: the FID feature spaces (pytorch-fid Inception with its input chains, or a
//!   classifier's pooled features);
//! - [`clip_score`]: CLIP text–image and image–image cosine scores;
//! - [`classifier`]: the classifier trait and classifier folders;
//! - [`train_classifier`]: training either judge (`storygpt eval train-classifier`);
//! - [`report`]: `storygpt eval run`, scoring a folder of generated frames;
//! - [`transforms`]: the evaluators' image transforms, ported exactly.

pub mod classifier;
pub mod clip_score;
pub mod fid;
pub mod fid_features;
pub mod inception;
pub mod metrics;
pub mod report;
pub mod small_cnn;
pub mod train_classifier;
pub mod transforms;
