//! The image transforms the original evaluators apply, ported exactly:
//!
//! - torchvision's `Resize(size)` on PIL images (shorter side to `size`, Pillow's antialiased
//!   bilinear filter), `CenterCrop(size)` (offsets rounded half-to-even, as Python's `round`),
//!   `ToTensor()` (bytes / 255, channel-first) and `Normalize(mean, std)`;
//! - PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` without antialiasing,
//!   which pytorch-fid uses to bring images to 299².
//!
//! Everything runs on the host on `Vec<f32>` / `RgbImage`, so every backend sees the same
//! numbers.

use image::RgbImage;
use storygpt_models::clip::image_processor::{PilFilter, resize_pil};

/// ImageNet channel means (torchvision's `Normalize` in the original evaluators).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A channel-first float image `[3, height, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChwImage {
    /// `3 · height · width` values, channel-major.
    pub data: Vec<f32>,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// torchvision `ToTensor()`: bytes / 255, channel-first.
pub fn to_tensor(img: &RgbImage) -> ChwImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let n = w * h;
    let mut data = Vec::with_capacity(3 * n);
    for c in 0..3 {
        data.extend((0..n).map(|i| f32::from(raw[3 * i + c]) / 255.0));
    }
    ChwImage {
        data,
        height: h,
        width: w,
    }
}

/// torchvision `Normalize(mean, std)`, in place.
pub fn normalize(img: &mut ChwImage, mean: [f32; 3], std: [f32; 3]) {
    let n = img.height * img.width;
    for c in 0..3 {
        for v in &mut img.data[c * n..(c + 1) * n] {
            *v = (*v - mean[c]) / std[c];
        }
    }
}

/// Output size of torchvision's `Resize(size)` with an int: the shorter side becomes `size`,
/// the longer `int(size · long / short)`.
pub fn resize_short_side_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    if width <= height {
        (size, (size as f64 * height as f64 / width as f64) as usize)
    } else {
        ((size as f64 * width as f64 / height as f64) as usize, size)
    }
}

/// torchvision `Resize(size)` on a PIL image: shorter side to `size`, Pillow bilinear.
pub fn resize_short_side(img: &RgbImage, size: usize) -> RgbImage {
    let (w, h) = resize_short_side_size(img.width() as usize, img.height() as usize, size);
    resize_pil(img, w, h, PilFilter::Bilinear)
}

/// Python's `int(round(d / 2))` for an integer `d` (round half to even).
fn half_round_even(d: i64) -> i64 {
    if d % 2 == 0 {
        d / 2
    } else {
        let lo = (d - 1).div_euclid(2);
        if lo % 2 == 0 { lo } else { lo + 1 }
    }
}

/// torchvision `CenterCrop(size)`: offsets `int(round((h − size) / 2))`, zero padding where the
/// image is smaller.
pub fn center_crop(img: &RgbImage, size: usize) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let s = size as i64;
    if w < s || h < s {
        // torchvision pads with zeros first (symmetrically, the extra pixel right/bottom).
        let pad_l = (s - w).max(0) / 2;
        let pad_t = (s - h).max(0) / 2;
        let padded = RgbImage::from_fn(w.max(s) as u32, h.max(s) as u32, |x, y| {
            let (sx, sy) = (x as i64 - pad_l, y as i64 - pad_t);
            if sx >= 0 && sy >= 0 && sx < w && sy < h {
                *img.get_pixel(sx as u32, sy as u32)
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        return center_crop(&padded, size);
    }
    let top = half_round_even(h - s);
    let left = half_round_even(w - s);
    image::imageops::crop_imm(img, left as u32, top as u32, size as u32, size as u32).to_image()
}

/// The original StoryGPT-V classifier / FID transform: `Resize(299)`, `CenterCrop(299)`,
/// `ToTensor()`, ImageNet `Normalize` (`eval/eval_all.py`).
pub fn storygpt_eval_transform(img: &RgbImage, size: usize) -> ChwImage {
    let resized = resize_short_side(img, size);
    let mut t = to_tensor(&center_crop(&resized, size));
    normalize(&mut t, IMAGENET_MEAN, IMAGENET_STD);
    t
}

/// PyTorch's `F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)`
/// (no antialiasing), computed in f32 as PyTorch's CPU kernel does.
pub fn resize_bilinear_torch(img: &ChwImage, out_h: usize, out_w: usize) -> ChwImage {
    let (h, w) = (img.height, img.width);
    if (h, w) == (out_h, out_w) {
        return img.clone();
    }
    // Source index and weight per output index (`area_pixel_compute_source_index`).
    let axis = |in_size: usize, out_size: usize| -> Vec<(usize, usize, f32)> {
        let scale = in_size as f32 / out_size as f32;
        (0..out_size)
            .map(|o| {
                let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (src as usize).min(in_size - 1);
                let i1 = (i0 + 1).min(in_size - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let ys = axis(h, out_h);
    let xs = axis(w, out_w);
    let mut data = Vec::with_capacity(3 * out_h * out_w);
    for c in 0..3 {
        let plane = &img.data[c * h * w..(c + 1) * h * w];
        for &(y0, y1, ly) in &ys {
            let hy = 1.0 - ly;
            for &(x0, x1, lx) in &xs {
                let hx = 1.0 - lx;
                let v = hy * (hx * plane[y0 * w + x0] + lx * plane[y0 * w + x1])
                    + ly * (hx * plane[y1 * w + x0] + lx * plane[y1 * w + x1]);
                data.push(v);
            }
        }
    }
    ChwImage {
        data,
        height: out_h,
        width: out_w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_side_sizes_follow_torchvision() {
        assert_eq!(resize_short_side_size(512, 512, 299), (299, 299));
        assert_eq!(resize_short_side_size(96, 80, 299), (358, 299));
        assert_eq!(resize_short_side_size(80, 96, 299), (299, 358));
    }

    #[test]
    fn center_crop_rounds_half_to_even() {
        assert_eq!(half_round_even(0), 0);
        assert_eq!(half_round_even(1), 0); // round(0.5) = 0
        assert_eq!(half_round_even(3), 2); // round(1.5) = 2
        assert_eq!(half_round_even(5), 2); // round(2.5) = 2
        assert_eq!(half_round_even(59), 30); // round(29.5) = 30
        let img = RgbImage::from_fn(302, 300, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let c = center_crop(&img, 299);
        // left = round(1.5) = 2, top = round(0.5) = 0
        assert_eq!(c.get_pixel(0, 0).0, [2, 0, 0]);
    }

    #[test]
    fn bilinear_upsampling_keeps_constants_and_endpoints() {
        let img = ChwImage {
            data: vec![0.25; 3 * 4 * 5],
            height: 4,
            width: 5,
        };
        let out = resize_bilinear_torch(&img, 9, 7);
        assert!(out.data.iter().all(|&v| (v - 0.25).abs() < 1e-7));
        // a ramp along x: corners stay at the ends (clamped source index)
        let ramp = ChwImage {
            data: (0..3).flat_map(|_| [0.0, 1.0, 0.0, 1.0]).collect(),
            height: 2,
            width: 2,
        };
        let up = resize_bilinear_torch(&ramp, 2, 4);
        assert_eq!(&up.data[..4], &[0.0, 0.25, 0.75, 1.0]);
    }
}
