//! `Txt2ImgPipeline` against diffusers' `StableDiffusionPipeline` on the tiny pipeline
//! fixture: prompt ids and embeddings, every step's latents (PNDM, CFG 7.5), the final
//! latents within 1e-4, the image within 1/255, a negative prompt, and Char-LDM's delayed
//! conditioning (prompt A for step indices <= 1, then prompt B).
//!
//! The fixture folder holds configs, tokenizer and scheduler; the weights come from the
//! `unet_tiny`, `vae_tiny` and `clip_text_tiny` fixtures (see its `assemble.json`).
//! Regenerate: `.venv/bin/python scripts/reference/generate.py --only sd_tiny_pipeline`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;
use burn::tensor::TensorData;
use storygpt::backend::default_device;
use storygpt::core::Error;
use storygpt::models::txt2img::{Txt2ImgPipeline, Txt2ImgRequest};

/// Copies the pipeline folder and the component weights it references into a temp dir.
fn assemble() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("sd_tiny_pipeline");
    copy_dir(&src, dir.path());
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("assemble.json")).unwrap()).unwrap();
    for (component, spec) in plan.as_object().unwrap() {
        let to = dir.path().join(component);
        std::fs::create_dir_all(&to).unwrap();
        let from = fixture(spec["from"].as_str().unwrap());
        for f in spec["files"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

fn request(negative: &str, delayed: Option<(usize, String)>) -> Txt2ImgRequest {
    Txt2ImgRequest {
        prompt: "Fred walks into the kitchen.".into(),
        negative_prompt: negative.into(),
        height: 32,
        width: 32,
        num_inference_steps: 3,
        guidance_scale: 7.5,
        seed: 0,
        delayed,
    }
}

fn run(
    pipe: &mut Txt2ImgPipeline<TB>,
    g: &BTreeMap<String, TensorData>,
    req: &Txt2ImgRequest,
    prefix: &str,
    step_key: &str,
) {
    let mut steps = Vec::new();
    let out = pipe
        .generate(req, Some(float(g, "latents_init")), &mut |s| {
            steps.push(s.latents.clone())
        })
        .unwrap();
    assert_eq!(
        steps.len(),
        4,
        "PNDM with skip_prk_steps runs steps + 1 UNet calls"
    );
    for (i, l) in steps.into_iter().enumerate() {
        assert_close(
            &format!("{prefix}step {i} latents"),
            l,
            &g[&format!("{step_key}{i}")],
            1e-4,
        );
    }
    let final_key = if prefix == "delayed " {
        "delayed_final_latents".to_string()
    } else {
        format!("{}final_latents", prefix.replace(' ', "_"))
    };
    assert_close(
        &format!("{prefix}final latents"),
        out.latents,
        &g[&final_key],
        1e-4,
    );
    let image_key = if prefix == "delayed " {
        "delayed_image".to_string()
    } else {
        format!("{}image", prefix.replace(' ', "_"))
    };
    assert_close(
        &format!("{prefix}image"),
        out.image,
        &g[&image_key],
        1.0 / 255.0,
    );
    let want: Vec<u8> = g[&format!("{image_key}_u8")].clone().to_vec().unwrap();
    let worst = out
        .rgb8
        .iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 1, "{prefix}uint8 image differs by {worst}");
}

#[test]
fn pipeline_matches_diffusers() {
    let dir = assemble();
    let mut pipe =
        Txt2ImgPipeline::<TB>::from_pretrained(dir.path(), &default_device(), None, None).unwrap();
    let g = golden("sd_tiny_pipeline");

    // prompts
    let ids: Vec<i64> = g["prompt_ids"].clone().convert::<i64>().to_vec().unwrap();
    let ours: Vec<i64> = pipe
        .tokenizer
        .encode_padded("Fred walks into the kitchen.")
        .unwrap()
        .input_ids
        .iter()
        .map(|&i| i as i64)
        .collect();
    assert_eq!(ours, ids);
    let emb = pipe
        .encode_prompts(&["Fred walks into the kitchen.", ""])
        .unwrap();
    let [p, n] = emb.chunk(2, 0).try_into().unwrap();
    assert_close("prompt embeds", p, &g["prompt_embeds"], 1e-4);
    assert_close("negative embeds", n, &g["negative_embeds"], 1e-4);

    run(&mut pipe, &g, &request("", None), "", "latents_step_");
    run(
        &mut pipe,
        &g,
        &request("blurry", None),
        "blurry ",
        "blurry_latents_step_",
    );
    run(
        &mut pipe,
        &g,
        &request(
            "",
            Some((1, "Fred and Wilma walk into the kitchen.".into())),
        ),
        "delayed ",
        "delayed_latents_step_",
    );
}

#[test]
fn bad_requests_are_typed_errors() {
    let dir = assemble();
    let mut pipe =
        Txt2ImgPipeline::<TB>::from_pretrained(dir.path(), &default_device(), None, None).unwrap();
    let mut ok = |r: Txt2ImgRequest| pipe.generate(&r, None, &mut |_| {});
    let err = ok(Txt2ImgRequest {
        num_inference_steps: 0,
        ..request("", None)
    })
    .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    let err = ok(Txt2ImgRequest {
        guidance_scale: f64::NAN,
        ..request("", None)
    })
    .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    let err = ok(Txt2ImgRequest {
        height: 30,
        ..request("", None)
    })
    .unwrap_err();
    assert!(err.to_string().contains("multiples of 4"), "{err}");

    // a folder whose model_index names an unsupported component
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("model_index.json")).unwrap())
            .unwrap();
    index["unet"] = serde_json::json!(["diffusers", "UNet2DModel"]);
    std::fs::write(dir.path().join("model_index.json"), index.to_string()).unwrap();
    let err = Txt2ImgPipeline::<TB>::from_pretrained(dir.path(), &default_device(), None, None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("UNet2DModel"), "{err}");
}

/// Rewrites a safetensors file with every F32 tensor stored as F16 (host-side, so the test
/// needs no f16 support from the backend).
fn to_f16_file(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let converted: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| match view.dtype() {
            safetensors::Dtype::F32 => {
                let data: Vec<u8> = view
                    .data()
                    .chunks_exact(4)
                    .flat_map(|c| {
                        half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .to_le_bytes()
                    })
                    .collect();
                (name, safetensors::Dtype::F16, view.shape().to_vec(), data)
            }
            other => (name, other, view.shape().to_vec(), view.data().to_vec()),
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = converted
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(to, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// `fp16` variant files (`diffusion_pytorch_model.fp16.safetensors`, `model.fp16.safetensors`)
/// load when asked for, and reproduce the f32 run within f16's weight rounding.
#[test]
fn fp16_variant_files_load() {
    let dir = assemble();
    let device = default_device();
    let p = dir.path();
    // Each component's weights as f16 under the variant name; the f32 files are removed so that
    // only the variant can be loaded.
    for (f32_file, f16_file) in [
        (
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
        ),
        (
            "vae/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors",
        ),
        (
            "text_encoder/model.safetensors",
            "text_encoder/model.fp16.safetensors",
        ),
    ] {
        to_f16_file(&p.join(f32_file), &p.join(f16_file));
        std::fs::remove_file(p.join(f32_file)).unwrap();
    }
    let infos = storygpt::core::weights::tensor_infos(
        &p.join("unet/diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    assert!(
        infos.iter().all(|t| t.dtype == "F16"),
        "the variant file really is f16"
    );

    assert!(
        Txt2ImgPipeline::<TB>::from_pretrained(p, &device, None, None).is_err(),
        "no f32 files left"
    );
    let mut pipe = Txt2ImgPipeline::<TB>::from_pretrained(p, &device, Some("fp16"), None).unwrap();
    let g = golden("sd_tiny_pipeline");
    let out = pipe
        .generate(
            &request("", None),
            Some(float(&g, "latents_init")),
            &mut |_| {},
        )
        .unwrap();
    assert_close(
        "fp16 variant final latents (f32 compute)",
        out.latents,
        &g["final_latents"],
        5e-2,
    );
}
