//! A real Stable Diffusion 1.5 folder's layout is covered 100 %: the UNet (686 tensors), VAE
//! (248, also with legacy attention names) and text encoder (transformers 5 and 4 key forms)
//! built from the real SD 1.5 configs expect exactly the keys and shapes diffusers and
//! transformers write: no missing key, no unexpected key. No weights are allocated (the key
//! lists were produced on PyTorch's meta device; burn parameters stay lazy).
//!
//! Regenerate: `.venv/bin/python scripts/reference/generate.py --only sd15_layout`.

use crate::common::{TB, fixture};
use storygpt::backend::default_device;
use storygpt::core::ConfigFile;
use storygpt::models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use storygpt::models::clip::{ClipTextConfig, ClipTextModel};
use storygpt::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};

fn keys(rel: &str) -> Vec<(String, Vec<usize>)> {
    let path = fixture(rel);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[test]
fn unet_keys_are_covered() {
    let dir = fixture("sd15_layout/unet");
    let config = UNet2DConditionConfig::from_dir(&dir).unwrap();
    let model = UNet2DConditionModel::<TB>::new(&config, &default_device()).unwrap();
    let k = keys("sd15_layout/unet/keys.json");
    assert_eq!(k.len(), 686);
    UNet2DConditionModel::<TB>::weight_loader()
        .check_keys(&model, k, &dir.join("keys.json"))
        .unwrap();
    // The preset is the same config.
    let preset =
        UNet2DConditionModel::<TB>::new(&UNet2DConditionConfig::sd_v1_5(), &default_device())
            .unwrap();
    UNet2DConditionModel::<TB>::weight_loader()
        .check_keys(&preset, keys("sd15_layout/unet/keys.json"), &dir)
        .unwrap();
}

#[test]
fn vae_keys_are_covered_in_both_attention_namings() {
    let dir = fixture("sd15_layout/vae");
    let config = AutoencoderKLConfig::from_dir(&dir).unwrap();
    assert_eq!(config.scaling_factor, 0.18215);
    let model = AutoencoderKL::<TB>::new(&config, &default_device()).unwrap();
    for file in ["keys.json", "keys_legacy_attention.json"] {
        let k = keys(&format!("sd15_layout/vae/{file}"));
        assert_eq!(k.len(), 248, "{file}");
        AutoencoderKL::<TB>::weight_loader()
            .check_keys(&model, k, &dir.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

#[test]
fn text_encoder_keys_are_covered_in_both_transformers_layouts() {
    let dir = fixture("sd15_layout/text_encoder");
    let config = ClipTextConfig::from_dir(&dir).unwrap();
    assert!(config.legacy_pooling(), "SD 1.5 ships eos_token_id 2");
    let model = ClipTextModel::<TB>::new(&config, &default_device()).unwrap();
    for file in ["keys.json", "keys_transformers4.json"] {
        ClipTextModel::<TB>::weight_loader()
            .check_keys(
                &model,
                keys(&format!("sd15_layout/text_encoder/{file}")),
                &dir.join(file),
            )
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

#[test]
fn a_missing_key_in_a_layout_is_reported() {
    let dir = fixture("sd15_layout/unet");
    let config = UNet2DConditionConfig::from_dir(&dir).unwrap();
    let model = UNet2DConditionModel::<TB>::new(&config, &default_device()).unwrap();
    let mut k = keys("sd15_layout/unet/keys.json");
    k.retain(|(key, _)| key != "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight");
    let err = UNet2DConditionModel::<TB>::weight_loader()
        .check_keys(&model, k, &dir)
        .unwrap_err();
    assert!(err.to_string().contains("ff.net_2.weight"), "{err}");
}
