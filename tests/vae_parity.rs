//! `AutoencoderKL` against diffusers 0.42.1 on the tiny fixture: posterior mean/log-variance
//! and decode within 1e-4, in both the current and the legacy attention key layouts.
//!
//! Regenerate: `.venv/bin/python scripts/reference/generate.py --only vae_tiny --only vae_tiny_legacy`.

use crate::common::*;
use storygpt::backend::default_device;
use storygpt::core::{Autoencoder, Error};
use storygpt::models::autoencoder_kl::AutoencoderKL;

fn check(folder: &str) {
    let vae = AutoencoderKL::<TB>::from_pretrained(fixture(folder), &default_device())
        .unwrap_or_else(|e| panic!("{e}"));
    let g = golden(folder);
    let image = float::<4>(&g, "image");
    vae.check_image(&image).unwrap();
    let posterior = vae.encode(image);
    assert_close(
        &format!("{folder} posterior mean"),
        posterior.mean.clone(),
        &g["posterior_mean"],
        1e-4,
    );
    assert_close(
        &format!("{folder} posterior logvar"),
        posterior.logvar.clone(),
        &g["posterior_logvar"],
        1e-4,
    );
    let decoded = vae.decode(posterior.mode());
    assert_close(&format!("{folder} decoded"), decoded, &g["decoded"], 1e-4);
    assert_eq!(vae.scaling_factor(), 0.18215);
    assert_eq!(vae.downsample_factor(), 2);
}

#[test]
fn current_key_layout_matches_diffusers() {
    check("vae_tiny");
}

#[test]
fn legacy_attention_key_names_load() {
    check("vae_tiny_legacy");
}

#[test]
fn image_size_must_divide() {
    let vae = AutoencoderKL::<TB>::from_pretrained(fixture("vae_tiny"), &default_device()).unwrap();
    let bad = burn::tensor::Tensor::<TB, 4>::zeros([1, 3, 31, 32], &default_device());
    assert!(matches!(
        vae.check_image(&bad),
        Err(Error::InputShape { .. })
    ));
}
