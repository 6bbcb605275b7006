//! CLIP image preprocessing against transformers 5.24's `CLIPImageProcessorPil` (the PIL
//! backend): the bicubic resize is compared byte for byte with Pillow's, and the final
//! `pixel_values` within 1e-3 (the bound; the measured difference is printed).
//!
//! Regenerate: `.venv/bin/python scripts/reference/generate.py --only clip_image_processor`.

use crate::common::{TB, assert_close, fixture, golden};
use storygpt::backend::default_device;
use storygpt::core::Error;
use storygpt::models::clip::image_processor::{
    ClipImageProcessor, resize_bicubic_pil, resize_output_size, to_rgb_on_white,
};

const IMAGES: [&str; 5] = [
    "scene",
    "portrait_rgba",
    "tiny_upscale",
    "square224",
    "gray_l",
];

#[test]
fn bicubic_resize_is_byte_identical_to_pillow() {
    let g = golden("clip_image_processor");
    for name in IMAGES {
        let img = image::open(fixture(&format!("clip_image_processor/{name}.png"))).unwrap();
        let rgb = to_rgb_on_white(&img);
        let (h, w) = resize_output_size(rgb.height() as usize, rgb.width() as usize, 224);
        let ours = resize_bicubic_pil(&rgb, w, h);
        let reference = &g[&format!("resized_{name}")];
        assert_eq!(
            reference.shape.to_vec(),
            vec![h, w, 3],
            "{name}: output size"
        );
        let want: Vec<u8> = reference.clone().to_vec().unwrap();
        let diff = ours
            .as_raw()
            .iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            diff,
            0,
            "{name}: {diff} of {} bytes differ from Pillow",
            want.len()
        );
    }
}

#[test]
fn pixel_values_match_transformers() {
    let g = golden("clip_image_processor");
    for dir in ["clip_image_processor", "clip_image_processor/hub_legacy"] {
        let processor = ClipImageProcessor::from_dir(fixture(dir)).unwrap();
        for name in IMAGES {
            let path = fixture(&format!("clip_image_processor/{name}.png"));
            let pixels = processor
                .preprocess_file::<TB>(&path, &default_device())
                .unwrap();
            assert_close(
                &format!("{dir} {name}"),
                pixels,
                &g[&format!("pixel_values_{name}")],
                1e-3,
            );
        }
    }
}

#[test]
fn bad_images_are_typed_errors() {
    let processor = ClipImageProcessor::default();
    let empty = image::DynamicImage::new_rgb8(0, 12);
    let err = processor
        .preprocess::<TB>(&empty, &default_device())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");

    let dir = tempfile::tempdir().unwrap();
    let not_png = dir.path().join("frame.png");
    std::fs::write(&not_png, b"definitely not a png").unwrap();
    let err = processor
        .preprocess_file::<TB>(&not_png, &default_device())
        .unwrap_err();
    assert!(err.to_string().contains("frame.png"), "{err}");
    let err = processor
        .preprocess_file::<TB>(&dir.path().join("missing.png"), &default_device())
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}
