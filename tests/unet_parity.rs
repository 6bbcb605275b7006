//! `UNet2DConditionModel` against diffusers 0.42.1 on the tiny fixture (SD-1.x block layout,
//! 32/64 channels): noise prediction within 1e-4, attention capture, input validation.
//!
//! Regenerate: `.venv/bin/python scripts/reference/generate.py --only unet_tiny`.

use crate::common::*;
use burn::tensor::Tensor;
use storygpt::backend::default_device;
use storygpt::core::{Denoiser, Error};
use storygpt::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};

fn unet() -> UNet2DConditionModel<TB> {
    UNet2DConditionModel::from_pretrained(fixture("unet_tiny"), &default_device())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn timesteps(g: &std::collections::BTreeMap<String, burn::tensor::TensorData>) -> Tensor<TB, 1> {
    int::<1>(g, "timestep").float()
}

#[test]
fn noise_prediction_matches_diffusers() {
    let model = unet();
    let g = golden("unet_tiny");
    let (sample, t, ctx) = (
        float::<4>(&g, "sample"),
        timesteps(&g),
        float::<3>(&g, "encoder_hidden_states"),
    );
    model.check_inputs(&sample, &t, &ctx).unwrap();
    let out = model.predict(sample, t, ctx);
    assert_close("unet_tiny out", out, &g["out"], 1e-4);
}

#[test]
fn capture_does_not_change_the_output_and_probabilities_sum_to_one() {
    let model = unet();
    let g = golden("unet_tiny");
    let layers = model.cross_attention_layers();
    assert_eq!(
        layers,
        [
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
            "down_blocks.0.attentions.1.transformer_blocks.0.attn2",
            "mid_block.attentions.0.transformer_blocks.0.attn2",
            "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
            "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
            "up_blocks.1.attentions.2.transformer_blocks.0.attn2",
        ]
    );
    let mut capture = storygpt::models::attention::AttentionCapture::new(layers.clone());
    let out = model.forward_with_capture(
        float(&g, "sample"),
        timesteps(&g),
        float(&g, "encoder_hidden_states"),
        &mut capture,
    );
    assert_close("unet_tiny out with capture", out, &g["out"], 1e-4);
    assert_eq!(capture.probs.len(), layers.len());
    for (name, p) in &capture.probs {
        let [b, heads, hw, keys] = p.dims();
        assert_eq!((b, heads, keys), (2, 8, 77), "{name}");
        assert!(hw == 256 || hw == 64, "{name}: {hw}");
        let sums = p.clone().sum_dim(3);
        let ones = Tensor::<TB, 4>::ones(sums.dims(), &default_device());
        assert_close(&format!("{name} row sums"), sums, &ones.into_data(), 1e-5);
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let model = unet();
    let device = default_device();
    let t = Tensor::<TB, 1>::from_floats([10.0], &device);
    let ctx = Tensor::<TB, 3>::zeros([1, 77, 32], &device);
    // latent side not divisible by the downsampling factor (2)
    let odd = Tensor::<TB, 4>::zeros([1, 4, 15, 16], &device);
    assert!(matches!(
        model.check_inputs(&odd, &t, &ctx),
        Err(Error::InputShape { .. })
    ));
    // context width != cross_attention_dim
    let ok = Tensor::<TB, 4>::zeros([1, 4, 16, 16], &device);
    let wide = Tensor::<TB, 3>::zeros([1, 77, 48], &device);
    let err = model.check_inputs(&ok, &t, &wide).unwrap_err();
    assert!(
        err.to_string().contains("cross_attention_dim = 32"),
        "{err}"
    );
    model.check_inputs(&ok, &t, &ctx).unwrap();

    // unknown block type
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("unet_tiny/config.json")).unwrap()).unwrap();
    cfg["down_block_types"][1] = "SimpleCrossAttnDownBlock2D".into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let err = UNet2DConditionModel::<TB>::from_pretrained(dir.path(), &device).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    assert!(
        err.to_string().contains("SimpleCrossAttnDownBlock2D"),
        "{err}"
    );
    let _: UNet2DConditionConfig =
        serde_json::from_slice(&std::fs::read(fixture("unet_tiny/config.json")).unwrap()).unwrap();
}

/// Captured probabilities equal diffusers' `AttnProcessor` on every attn2 layer (batch
/// element 0 stored in full, both elements through their sum over pixels).
#[test]
fn captured_probabilities_match_diffusers_attn_processor() {
    let model = unet();
    let g = golden("unet_tiny_attn");
    let mut capture =
        storygpt::models::attention::AttentionCapture::new(model.cross_attention_layers());
    let out = model.forward_with_capture(
        float(&g, "sample"),
        timesteps(&g),
        float(&g, "encoder_hidden_states"),
        &mut capture,
    );
    assert_close("unet_tiny_attn out", out, &g["out"], 1e-4);
    for (name, p) in &capture.probs {
        let [b, h, hw, l] = p.dims();
        let first = p.clone().slice([0..1, 0..h, 0..hw, 0..l]);
        assert_close(
            &format!("probs {name}"),
            first,
            &g[&format!("probs.{name}")],
            1e-5,
        );
        let summed = p.clone().sum_dim(2).reshape([b, h, l]);
        assert_close(
            &format!("sum over pixels {name}"),
            summed,
            &g[&format!("probs_hw_sum.{name}")],
            1e-4,
        );
    }
}
