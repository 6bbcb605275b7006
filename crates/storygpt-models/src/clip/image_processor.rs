//! `CLIPImageProcessor` (transformers, PIL backend): convert to RGB, resize the shortest side
//! with Pillow's bicubic filter, center-crop, rescale to `[0, 1]`, normalise with the CLIP
//! mean/std.
//!
//! # Resampling
//!
//! transformers resizes through `PIL.Image.resize(..., resample=BICUBIC)` on the uint8 image.
//! Pillow's resampler is a separable convolution (horizontal pass, then vertical) whose kernel
//! is stretched by the downscale factor (antialiasing), with coefficients in 22-bit fixed
//! point and a uint8 rounding after each pass. No Rust crate reproduces it bit for bit (the
//! `image` crate's Catmull-Rom filter computes in f32 and differs by ±1 level), so
//! [`resize_bicubic_pil`] ports `libImaging/Resample.c` (Pillow 11): same support, same
//! coefficient normalisation, same fixed-point rounding. The tests compare the resized uint8
//! image to Pillow's exactly.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor, TensorData};
use image::{DynamicImage, RgbImage};
use serde::Deserialize;
use storygpt_core::{Error, Result};

/// `preprocessor_config.json` of a CLIP image processor. Defaults are transformers'.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipImageProcessorConfig {
    /// Resize so the shortest side is `size.shortest_edge`.
    #[serde(default = "yes")]
    pub do_resize: bool,
    /// `{"shortest_edge": 224}`, or a bare int in old configs.
    #[serde(default = "default_size")]
    pub size: SizeSpec,
    /// PIL resampling filter id; 3 = bicubic (the only one CLIP uses; others are rejected).
    #[serde(default = "bicubic")]
    pub resample: u32,
    /// Center-crop to `crop_size`.
    #[serde(default = "yes")]
    pub do_center_crop: bool,
    /// `{"height": 224, "width": 224}`, or a bare int.
    #[serde(default = "default_size")]
    pub crop_size: SizeSpec,
    /// Multiply by `rescale_factor`.
    #[serde(default = "yes")]
    pub do_rescale: bool,
    /// 1/255.
    #[serde(default = "default_rescale")]
    pub rescale_factor: f64,
    /// Subtract `image_mean`, divide by `image_std`.
    #[serde(default = "yes")]
    pub do_normalize: bool,
    /// Per-channel mean (CLIP's by default).
    #[serde(default = "clip_mean")]
    pub image_mean: [f64; 3],
    /// Per-channel std (CLIP's by default).
    #[serde(default = "clip_std")]
    pub image_std: [f64; 3],
    /// Convert any image mode to RGB first (drops alpha, replicates gray).
    #[serde(default = "yes")]
    pub do_convert_rgb: bool,
}

/// A size as written in HF configs: an int, or a map with `shortest_edge` or `height`/`width`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    /// A bare int: shortest edge for `size`, square for `crop_size`.
    Int(usize),
    /// `{"shortest_edge": n}`.
    ShortestEdge {
        /// Target shortest side.
        shortest_edge: usize,
    },
    /// `{"height": h, "width": w}`.
    HeightWidth {
        /// Height.
        height: usize,
        /// Width.
        width: usize,
    },
}

fn yes() -> bool {
    true
}
fn bicubic() -> u32 {
    3
}
fn default_size() -> SizeSpec {
    SizeSpec::Int(224)
}
fn default_rescale() -> f64 {
    1.0 / 255.0
}
/// OpenAI CLIP's normalisation mean.
pub const CLIP_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's normalisation std.
pub const CLIP_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
fn clip_mean() -> [f64; 3] {
    CLIP_MEAN
}
fn clip_std() -> [f64; 3] {
    CLIP_STD
}

impl Default for ClipImageProcessorConfig {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: SizeSpec::ShortestEdge { shortest_edge: 224 },
            resample: 3,
            do_center_crop: true,
            crop_size: SizeSpec::HeightWidth {
                height: 224,
                width: 224,
            },
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            do_convert_rgb: true,
        }
    }
}

/// The CLIP image processor.
#[derive(Debug, Clone, Default)]
pub struct ClipImageProcessor {
    /// Its configuration.
    pub config: ClipImageProcessorConfig,
}

impl ClipImageProcessor {
    /// Reads `dir/preprocessor_config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("preprocessor_config.json");
        let config: ClipImageProcessorConfig = storygpt_core::config::read_json(&path)?;
        Self::new(config).map_err(|e| match e {
            Error::InvalidConfig { message, .. } => Error::InvalidConfig {
                path: Some(path),
                message,
            },
            other => other,
        })
    }

    /// Validates a config.
    pub fn new(config: ClipImageProcessorConfig) -> Result<Self> {
        let invalid = |message: String| Error::InvalidConfig {
            path: None,
            message,
        };
        if config.do_resize && config.resample != 3 {
            return Err(invalid(format!(
                "resample = {} is not supported; CLIP uses 3 (bicubic)",
                config.resample
            )));
        }
        if config.image_std.contains(&0.0) {
            return Err(invalid("image_std must not contain 0".into()));
        }
        let (h, w) = crop_hw(config.crop_size);
        if shortest_edge(config.size) == 0 || h == 0 || w == 0 {
            return Err(invalid("size and crop_size must be positive".into()));
        }
        Ok(Self { config })
    }

    /// Opens an image file and preprocesses it.
    pub fn preprocess_file<B: Backend>(
        &self,
        path: &Path,
        device: &Device<B>,
    ) -> Result<Tensor<B, 4>> {
        let img = image::open(path).map_err(|e| match e {
            image::ImageError::IoError(io) => Error::io(path, io),
            other => {
                Error::InvalidInput(format!("{}: cannot decode image: {other}", path.display()))
            }
        })?;
        self.preprocess(&img, device)
    }

    /// Preprocesses one image into `pixel_values` `[1, 3, crop_h, crop_w]`.
    ///
    /// Errors with [`Error::InvalidInput`] for an image with a zero side.
    pub fn preprocess<B: Backend>(
        &self,
        image: &DynamicImage,
        device: &Device<B>,
    ) -> Result<Tensor<B, 4>> {
        let (values, h, w) = self.preprocess_to_vec(image)?;
        Ok(Tensor::from_data(
            TensorData::new(values, [1, 3, h, w]),
            device,
        ))
    }

    /// Preprocesses one image into CHW f32 values, returning `(values, height, width)`.
    pub fn preprocess_to_vec(&self, image: &DynamicImage) -> Result<(Vec<f32>, usize, usize)> {
        if image.width() == 0 || image.height() == 0 {
            return Err(Error::InvalidInput(format!(
                "image has a zero side ({}x{})",
                image.width(),
                image.height()
            )));
        }
        let c = &self.config;
        // 1. RGB, transparency composited onto white (transformers' `convert_to_rgb`).
        let mut rgb: RgbImage = if c.do_convert_rgb {
            to_rgb_on_white(image)
        } else {
            image.to_rgb8()
        };
        // 2. Resize the shortest side.
        if c.do_resize {
            let (h, w) = resize_output_size(
                rgb.height() as usize,
                rgb.width() as usize,
                shortest_edge(c.size),
            );
            rgb = resize_bicubic_pil(&rgb, w, h);
        }
        // 3. Center crop (zero padding if the image is smaller, as transformers).
        let rgb = if c.do_center_crop {
            let (ch, cw) = crop_hw(c.crop_size);
            center_crop(&rgb, ch, cw)
        } else {
            rgb
        };
        // 4. Rescale and normalise, HWC u8 -> CHW f32.
        let (h, w) = (rgb.height() as usize, rgb.width() as usize);
        let mut out = vec![0f32; 3 * h * w];
        for (x, y, p) in rgb.enumerate_pixels() {
            for ch in 0..3 {
                let mut v = p[ch] as f64;
                if c.do_rescale {
                    v *= c.rescale_factor;
                }
                let mut v = v as f32;
                if c.do_normalize {
                    v = (v - c.image_mean[ch] as f32) / c.image_std[ch] as f32;
                }
                out[ch * h * w + y as usize * w + x as usize] = v;
            }
        }
        Ok((out, h, w))
    }
}

/// transformers' `convert_to_rgb`: images with an alpha channel are alpha-composited onto an
/// opaque white background (`PIL.Image.alpha_composite`, whose integer arithmetic is
/// reproduced here), others are converted to RGB.
pub fn to_rgb_on_white(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        image::Rgb([
            composite_on_white(r, a),
            composite_on_white(g, a),
            composite_on_white(b, a),
        ])
    })
}

/// One channel of Pillow's `alpha_composite(white, src)` (libImaging/AlphaComposite.c, 7-bit
/// precision, rounded divisions by 255).
fn composite_on_white(c: u8, a: u8) -> u8 {
    const PRECISION_BITS: u32 = 7;
    if a == 0 {
        return 255;
    }
    let (c, a) = (c as u32, a as u32);
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = c * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    let div255 = ((tmp >> 8) + tmp) >> 8;
    (div255 >> PRECISION_BITS) as u8
}

fn shortest_edge(size: SizeSpec) -> usize {
    match size {
        SizeSpec::Int(n) | SizeSpec::ShortestEdge { shortest_edge: n } => n,
        SizeSpec::HeightWidth { height, width } => height.min(width),
    }
}

fn crop_hw(size: SizeSpec) -> (usize, usize) {
    match size {
        SizeSpec::Int(n) | SizeSpec::ShortestEdge { shortest_edge: n } => (n, n),
        SizeSpec::HeightWidth { height, width } => (height, width),
    }
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side
/// becomes `short`, the long side `int(short * long / short_side)`.
pub fn resize_output_size(height: usize, width: usize, short: usize) -> (usize, usize) {
    let (s, l) = if height <= width {
        (height, width)
    } else {
        (width, height)
    };
    let new_long = (short as f64 * l as f64 / s as f64) as usize;
    if height <= width {
        (short, new_long)
    } else {
        (new_long, short)
    }
}

/// transformers' `center_crop`: offsets `(size - crop) // 2`; pads with zeros when the image
/// is smaller than the crop.
pub fn center_crop(img: &RgbImage, crop_h: usize, crop_w: usize) -> RgbImage {
    let (h, w) = (img.height() as i64, img.width() as i64);
    let top = (h - crop_h as i64).div_euclid(2);
    let left = (w - crop_w as i64).div_euclid(2);
    RgbImage::from_fn(crop_w as u32, crop_h as u32, |x, y| {
        let (sx, sy) = (x as i64 + left, y as i64 + top);
        if sx >= 0 && sy >= 0 && sx < w && sy < h {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Pillow's resampling (libImaging/Resample.c), 8 bits per channel.

/// The Pillow filters ported here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilFilter {
    /// `Image.BILINEAR`: the triangle filter, support 1 (torchvision's default `Resize` on PIL
    /// images).
    Bilinear,
    /// `Image.BICUBIC`: Keys' cubic with a = −0.5, support 2 (CLIP's processor).
    Bicubic,
}

impl PilFilter {
    fn support(self) -> f64 {
        match self {
            PilFilter::Bilinear => 1.0,
            PilFilter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            PilFilter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            PilFilter::Bicubic => bicubic_filter(x),
        }
    }
}

/// Fixed-point precision of Pillow's 8-bit coefficients: 32 − 8 − 2.
const PRECISION_BITS: u32 = 22;

/// Keys' cubic with a = −0.5 (Pillow's `bicubic_filter`), support 2.
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: the first input index and the fixed-point weights (`precompute_coeffs` +
/// `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize, filter: PilFilter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) cast truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let mut k: Vec<f64> = (0..n)
                .map(|x| filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|w| *w /= ww);
            }
            let fixed = k
                .iter()
                .map(|&w| {
                    let scaled = w * (1u32 << PRECISION_BITS) as f64;
                    if w < 0.0 {
                        (scaled - 0.5) as i32
                    } else {
                        (scaled + 0.5) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

/// Pillow's `clip8`: fixed point back to a byte, saturating.
fn clip8(v: i32) -> u8 {
    let v = v >> PRECISION_BITS;
    v.clamp(0, 255) as u8
}

/// Resizes an RGB image exactly as `PIL.Image.resize((w, h), Image.BICUBIC)` does.
pub fn resize_bicubic_pil(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    resize_pil(img, out_w, out_h, PilFilter::Bicubic)
}

/// Resizes an RGB image exactly as `PIL.Image.resize((w, h), filter)` does (antialiased when
/// shrinking: the filter support grows with the scale).
pub fn resize_pil(img: &RgbImage, out_w: usize, out_h: usize, filter: PilFilter) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    if (in_w, in_h) == (out_w, out_h) {
        return img.clone();
    }
    let src = img.as_raw();
    // Horizontal pass (skipped by Pillow when the width is unchanged).
    let (tmp, tmp_w) = if in_w != out_w {
        let coeffs = coefficients(in_w, out_w, filter);
        let mut tmp = vec![0u8; out_w * in_h * 3];
        for y in 0..in_h {
            let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
            for (x, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (j, w) in k.iter().enumerate() {
                        ss += row[(xmin + j) * 3 + c] as i32 * w;
                    }
                    tmp[(y * out_w + x) * 3 + c] = clip8(ss);
                }
            }
        }
        (tmp, out_w)
    } else {
        (src.clone(), in_w)
    };
    // Vertical pass (skipped when the height is unchanged).
    let out = if in_h != out_h {
        let coeffs = coefficients(in_h, out_h, filter);
        let mut out = vec![0u8; tmp_w * out_h * 3];
        for (y, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..tmp_w {
                for c in 0..3 {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (j, w) in k.iter().enumerate() {
                        ss += tmp[((ymin + j) * tmp_w + x) * 3 + c] as i32 * w;
                    }
                    out[(y * tmp_w + x) * 3 + c] = clip8(ss);
                }
            }
        }
        out
    } else {
        tmp
    };
    RgbImage::from_raw(out_w as u32, out_h as u32, out)
        .unwrap_or_else(|| unreachable!("buffer sized out_w * out_h * 3"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_follows_transformers() {
        assert_eq!(resize_output_size(240, 320, 224), (224, 298));
        assert_eq!(resize_output_size(300, 200, 224), (336, 224));
        assert_eq!(resize_output_size(40, 50, 224), (224, 280));
        assert_eq!(resize_output_size(224, 224, 224), (224, 224));
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o, f) in [
            (320, 298, PilFilter::Bicubic),
            (50, 280, PilFilter::Bicubic),
            (1000, 224, PilFilter::Bicubic),
            (7, 3, PilFilter::Bicubic),
            (512, 299, PilFilter::Bilinear),
            (64, 299, PilFilter::Bilinear),
        ] {
            for (_, k) in coefficients(i, o, f) {
                let s: i64 = k.iter().map(|&w| w as i64).sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}: {s}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 13, 90]));
        let out = resize_bicubic_pil(&img, 224, 139);
        assert!(out.pixels().all(|p| p.0 == [200, 13, 90]));
    }

    #[test]
    fn zero_width_image_is_an_error() {
        let p = ClipImageProcessor::default();
        let img = DynamicImage::new_rgb8(0, 10);
        let err = p.preprocess_to_vec(&img).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        assert!(err.to_string().contains("0x10"), "{err}");
    }
}
