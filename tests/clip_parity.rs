//! CLIP text and vision towers against transformers 5.24 on the tiny random-weight fixtures
//! (max |diff| <= 1e-4 in f32), in both checkpoint layouts, plus f16/bf16 weights.
//!
//! Regenerate: `.venv/bin/python scripts/reference/generate.py --only clip_text_tiny` (etc.).

use crate::common::*;
use storygpt::backend::default_device;
use storygpt::core::{Error, ImageEncoder, TextEncoder};
use storygpt::models::clip::{
    ClipTextConfig, ClipTextModel, ClipTextModelWithProjection, ClipVisionModel,
    ClipVisionModelWithProjection,
};

const TOL: f32 = 1e-4;

fn check_text(folder: &str, golden_folder: &str, tol: f32) {
    let model = ClipTextModel::<TB>::from_pretrained(fixture(folder), &default_device())
        .unwrap_or_else(|e| panic!("{e}"));
    let g = golden(golden_folder);
    let ids = int::<2>(&g, "input_ids");
    model.text_model.check_input_ids(&ids).unwrap();
    let out = model.encode_text(ids);
    assert_close(
        &format!("{folder} last_hidden_state"),
        out.last_hidden_state,
        &g["last_hidden_state"],
        tol,
    );
    assert_close(
        &format!("{folder} pooler_output"),
        out.pooler_output,
        &g["pooler_output"],
        tol,
    );
}

#[test]
fn text_transformers5_layout() {
    check_text("clip_text_tiny", "clip_text_tiny", TOL);
}

#[test]
fn text_legacy_layout_with_prefix_and_position_ids() {
    check_text("clip_text_tiny_legacy", "clip_text_tiny_legacy", TOL);
}

#[test]
fn text_with_projection() {
    let model = ClipTextModelWithProjection::<TB>::from_pretrained(
        fixture("clip_text_tiny_projection"),
        &default_device(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let g = golden("clip_text_tiny_projection");
    let (out, text_embeds) = model.forward(int(&g, "input_ids"));
    assert_close(
        "projection last_hidden_state",
        out.last_hidden_state,
        &g["last_hidden_state"],
        TOL,
    );
    assert_close(
        "projection pooler_output",
        out.pooler_output,
        &g["pooler_output"],
        TOL,
    );
    assert_close(
        "projection text_embeds",
        text_embeds,
        &g["text_embeds"],
        TOL,
    );
}

#[test]
fn vision_with_projection() {
    let model = ClipVisionModelWithProjection::<TB>::from_pretrained(
        fixture("clip_vision_tiny"),
        &default_device(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let g = golden("clip_vision_tiny");
    let pixels = float::<4>(&g, "pixel_values");
    model.vision_model.check_pixel_values(&pixels).unwrap();
    let out = model.encode_image(pixels);
    assert_close(
        "vision last_hidden_state",
        out.last_hidden_state,
        &g["last_hidden_state"],
        TOL,
    );
    assert_close(
        "vision pooler_output",
        out.pooler_output,
        &g["pooler_output"],
        TOL,
    );
    assert_close(
        "vision image_embeds",
        out.image_embeds.unwrap(),
        &g["image_embeds"],
        TOL,
    );
    assert_eq!(model.projection_dim(), Some(32));
}

#[test]
fn vision_model_without_projection_ignores_the_projection_key() {
    let model =
        ClipVisionModel::<TB>::from_pretrained(fixture("clip_vision_tiny"), &default_device())
            .unwrap_or_else(|e| panic!("{e}"));
    let g = golden("clip_vision_tiny");
    let out = model.forward(float(&g, "pixel_values"));
    assert_close(
        "vision-only pooler_output",
        out.pooler_output,
        &g["pooler_output"],
        TOL,
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    let device = default_device();
    // hidden size not divisible by heads
    let dir = tempfile::tempdir().unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("clip_text_tiny/config.json")).unwrap())
            .unwrap();
    config["hidden_size"] = 30.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = ClipTextModel::<TB>::from_pretrained(dir.path(), &device).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    assert!(err.to_string().contains("num_attention_heads"), "{err}");

    // a checkpoint missing a layer: a 3-layer config against the 2-layer file
    let dir = tempfile::tempdir().unwrap();
    config["hidden_size"] = 32.into();
    config["num_hidden_layers"] = 3.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        fixture("clip_text_tiny/model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let err = ClipTextModel::<TB>::from_pretrained(dir.path(), &device).unwrap_err();
    match &err {
        Error::MissingTensors { missing, .. } => {
            assert_eq!(missing.len(), 16, "{missing:?}");
            assert!(
                missing
                    .iter()
                    .all(|k| k.starts_with("text_model.encoder.layers.2.")),
                "{missing:?}"
            );
        }
        other => panic!("wrong variant: {other:?}"),
    }

    // ids outside the vocabulary, and a sequence longer than 77
    let model = ClipTextModel::<TB>::from_pretrained(fixture("clip_text_tiny"), &device).unwrap();
    let ids = burn::tensor::Tensor::<TB, 2, burn::tensor::Int>::from_ints([[1, 5000]], &device);
    assert!(matches!(
        model.text_model.check_input_ids(&ids),
        Err(Error::InvalidInput(_))
    ));
    let long = burn::tensor::Tensor::<TB, 2, burn::tensor::Int>::zeros([1, 78], &device);
    assert!(matches!(
        model.text_model.check_input_ids(&long),
        Err(Error::InputShape { .. })
    ));

    // the SD 1.5 preset is a valid config
    ClipTextConfig::sd_v1_5().validate().unwrap();
}

#[test]
fn sd_legacy_config_pools_at_argmax() {
    // eos_token_id 2 in config.json (openai / SD 1.x); row 1 also contains id 2 earlier on,
    // so "first occurrence of 2" would pool at the wrong position.
    check_text("clip_text_tiny_sd_legacy", "clip_text_tiny_sd_legacy", TOL);
}

/// Half-precision checkpoints: loaded into f32 they reproduce transformers' f32 run of the
/// same (rounded) weights to 1e-4; run in half precision, within the stated tolerances.
#[test]
fn half_precision_checkpoints_load_and_run() {
    use burn::tensor::DType;
    let device = default_device();

    let text =
        ClipTextModel::<TB>::from_pretrained(fixture("clip_text_tiny_fp16"), &device).unwrap();
    let g = golden("clip_text_tiny_fp16");
    let out = text.forward(int(&g, "input_ids"));
    assert_close(
        "fp16 file -> f32 last_hidden_state",
        out.last_hidden_state,
        &g["last_hidden_state"],
        TOL,
    );
    assert_close(
        "fp16 file -> f32 pooler_output",
        out.pooler_output,
        &g["pooler_output"],
        TOL,
    );

    let vision = ClipVisionModelWithProjection::<TB>::from_pretrained(
        fixture("clip_vision_tiny_bf16"),
        &device,
    )
    .unwrap();
    let gv = golden("clip_vision_tiny_bf16");
    let (out, embeds) = vision.forward(float(&gv, "pixel_values"));
    assert_close(
        "bf16 file -> f32 last_hidden_state",
        out.last_hidden_state,
        &gv["last_hidden_state"],
        TOL,
    );
    assert_close(
        "bf16 file -> f32 image_embeds",
        embeds,
        &gv["image_embeds"],
        TOL,
    );

    if storygpt::backend::BackendKind::default_kind() == storygpt::backend::BackendKind::NdArray {
        eprintln!("half-precision compute NOT run: the ndarray backend has no f16/bf16 kernels");
        return;
    }
    // Compute in half precision: f16 keeps ~3 significant digits, bf16 ~2.
    let text16 = ClipTextModel::<TB>::from_pretrained_dtype(
        fixture("clip_text_tiny_fp16"),
        &device,
        Some(DType::F16),
    )
    .unwrap();
    let out = text16.forward(int(&g, "input_ids"));
    assert_eq!(out.last_hidden_state.dtype(), DType::F16);
    assert_close(
        "f16 compute last_hidden_state",
        out.last_hidden_state,
        &g["last_hidden_state"],
        2e-2,
    );
    assert_close(
        "f16 compute pooler_output",
        out.pooler_output,
        &g["pooler_output"],
        2e-2,
    );

    let vision16 = ClipVisionModelWithProjection::<TB>::from_pretrained_dtype(
        fixture("clip_vision_tiny_bf16"),
        &device,
        Some(DType::BF16),
    )
    .unwrap();
    let (out, embeds) = vision16.forward(float::<4>(&gv, "pixel_values").cast(DType::BF16));
    assert_eq!(embeds.dtype(), DType::BF16);
    assert_close(
        "bf16 compute last_hidden_state",
        out.last_hidden_state,
        &gv["last_hidden_state"],
        1e-1,
    );
    assert_close(
        "bf16 compute image_embeds",
        embeds,
        &gv["image_embeds"],
        1e-1,
    );
}
