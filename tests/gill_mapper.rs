//! StoryGPT-V's `[IMG]` → conditioning mapper (GILL's `TextFcLayer(mode='gill_mapper')`, a
//! pre-norm `nn.Transformer` over 77 learnable queries) against PyTorch.
//!
//! Fixture: `.venv/bin/python scripts/reference/generate.py --only gill_mapper_tiny` (2 + 3
//! layers, 4 heads, random biases and LayerNorm affines, the original's key prefix).

use storygpt::Error;
use storygpt::backend::default_device;
use storygpt::core::ConfigFile;
use storygpt::core::traits::ConditioningMapper;
use storygpt::models::gill_mapper::{GillMapper, GillMapperConfig};

use crate::common::{TB, assert_close, fixture, float, golden};

#[test]
fn mapper_matches_pytorch_nn_transformer() {
    let dev = default_device();
    let mapper = GillMapper::<TB>::from_pretrained(fixture("gill_mapper_tiny"), &dev).unwrap();
    assert_eq!(mapper.num_queries(), 77);
    assert_eq!(mapper.output_dim(), 16);
    assert_eq!(mapper.num_input_tokens(), 8);
    let g = golden("gill_mapper_tiny");
    let out = mapper.forward(float(&g, "hidden"), float(&g, "img_embeds"));
    assert_close("mapper output [2, 77, 16]", out, &g["output"], 1e-4);
}

#[test]
fn mapper_output_for_one_sample_does_not_depend_on_the_batch() {
    let dev = default_device();
    let mapper = GillMapper::<TB>::from_pretrained(fixture("gill_mapper_tiny"), &dev).unwrap();
    let g = golden("gill_mapper_tiny");
    let x = float::<3>(&g, "hidden") + float::<3>(&g, "img_embeds");
    let both = mapper.map(x.clone());
    let second = mapper.map(x.narrow(0, 1, 1));
    let diff = (both.narrow(0, 1, 1) - second).abs().max().into_scalar();
    assert!(diff < 1e-5, "batch dependence {diff}");
}

#[test]
fn bad_mapper_configs_and_weights_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("gill_mapper_tiny/config.json")).unwrap(),
    )
    .unwrap();
    // Heads that do not divide the width.
    cfg["nhead"] = 5.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    match GillMapperConfig::from_dir(dir) {
        Err(Error::InvalidConfig { path, message }) => {
            assert_eq!(path.as_deref(), Some(dir.join("config.json").as_path()));
            assert!(message.contains("nhead"), "{message}");
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    // A width that does not match the weights: the shape error names the tensor.
    cfg["nhead"] = 4.into();
    cfg["in_dim"] = 25.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        fixture("gill_mapper_tiny/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    match GillMapper::<TB>::from_pretrained(dir, &default_device()) {
        Err(Error::ShapeMismatch { key, .. }) => assert!(key.contains("fc.weight"), "{key}"),
        other => panic!("expected ShapeMismatch, got {:?}", other.map(|_| ())),
    }
}
