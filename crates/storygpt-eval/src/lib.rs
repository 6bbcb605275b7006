//! # storygpt-eval
//!
//! The paper's metrics: character and background accuracy / micro-F1 from multi-label
//! classifiers (exactly as the original `eval_cls.py`), FID with pytorch-fid parity, CLIP
//! text-image and image-image scores, and reports.
//!
//! So far: [`small_cnn`], the small multi-label CNN that judges story-world frames. The rest
//! is filled in by the evaluation issue of wave 1.

pub mod small_cnn;
