//! Char-LDM's training objective against the original StoryGPT-V code (PyTorch): the fused
//! conditioning, the prediction, L_reg per hooked layer, and the gradients of the loss with
//! respect to every FuseModule and UNet parameter.
//!
//! Fixture: `.venv/bin/python scripts/reference/generate.py --only char_ldm_grad` (the
//! original `FuseModule`, `RegL1Loss`, `get_reg_loss_layer` and attention hook, copied verbatim).

use std::collections::BTreeMap;

use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use storygpt::backend::default_device;
use storygpt::core::weights::{WeightLoader, read_tensors};
use storygpt::models::attention::AttentionCapture;
use storygpt::models::fuse::FuseModule;
use storygpt::models::unet_2d_condition::UNet2DConditionModel;
use storygpt::train::char_ldm::{reg_loss_layer, resize_masks};

use crate::common::{TB, fixture};

type AD = Autodiff<TB>;

/// (PyTorch name, parameter id, whether burn stores it transposed) of every float parameter.
#[derive(Default)]
struct Names {
    path: Vec<String>,
    kinds: Vec<String>,
    out: Vec<(String, ParamId, bool, usize)>,
}

impl ModuleVisitor<AD> for Names {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.kinds.push(container_type.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
        self.kinds.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
        let mut segs: Vec<String> = self
            .path
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        let parent = self
            .kinds
            .iter()
            .rev()
            .find(|k| k.starts_with("Struct:"))
            .cloned()
            .unwrap_or_default();
        let last = segs.last().cloned().unwrap_or_default();

        let norm = matches!(parent.as_str(), "Struct:LayerNorm" | "Struct:GroupNorm");
        if norm && last == "gamma" {
            *segs.last_mut().unwrap() = "weight".into();
        }
        if norm && last == "beta" {
            *segs.last_mut().unwrap() = "bias".into();
        }
        // enum variants (`proj_in` is a Conv in SD 1.x, a Linear in SD 2.x) are not key segments
        let name = segs
            .join(".")
            .replace(".net_0.", ".net.0.")
            .replace(".net_2.", ".net.2.")
            .replace(".Conv.", ".")
            .replace(".Linear.", ".");
        let transposed = parent == "Struct:Linear" && last == "weight" && D == 2;
        self.out.push((name, param.id, transposed, D));
    }
}

fn grads_of<M: Module<AD>>(
    module: &M,
    grads: &GradientsParams,
    prefix: &str,
) -> BTreeMap<String, (Vec<f32>, Vec<usize>)> {
    let mut names = Names::default();
    module.visit(&mut names);
    let mut out = BTreeMap::new();
    for (name, id, transposed, rank) in names.out {
        // try every rank the models use
        let got: Option<(Vec<f32>, Vec<usize>)> = (|| {
            // GradientsParams::get does not check the rank: ask with the parameter's own
            if rank == 1
                && let Some(g) = grads.get::<TB, 1>(id)
            {
                return Some((g.clone().into_data().to_vec().ok()?, g.dims().to_vec()));
            }
            if rank == 2
                && let Some(g) = grads.get::<TB, 2>(id)
            {
                let [r, c] = g.dims();
                let v: Vec<f32> = g.clone().into_data().to_vec().ok()?;

                if !transposed {
                    return Some((v, vec![r, c]));
                }
                // burn's Linear weight is [in, out]; PyTorch's [out, in] (transposed on the host)
                let t = (0..r * c).map(|k| v[(k % r) * c + k / r]).collect();
                return Some((t, vec![c, r]));
            }
            if rank == 4
                && let Some(g) = grads.get::<TB, 4>(id)
            {
                return Some((g.clone().into_data().to_vec().ok()?, g.dims().to_vec()));
            }
            None
        })();
        if let Some(v) = got {
            out.insert(format!("{prefix}{name}"), v);
        }
    }
    out
}

#[test]
fn loss_reg_and_gradients_match_the_original_code() {
    let dev = default_device();
    let dir = fixture("char_ldm_grad");
    let g = read_tensors(&dir.join("golden.safetensors")).unwrap();
    let f = |k: &str| -> Tensor<AD, 1> {
        Tensor::from_data(
            g[k].clone()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap()
                .as_slice(),
            &dev,
        )
    };
    let shaped = |k: &str| -> TensorData { g[k].clone().convert::<f32>() };
    let unet = UNet2DConditionModel::<AD>::from_pretrained(dir.join("unet"), &dev).unwrap();
    let fuse = WeightLoader::new()
        .load_file(
            FuseModule::<AD>::new(16, &dev),
            &dir.join("fuse.safetensors"),
        )
        .unwrap();
    let noisy = Tensor::<AD, 4>::from_data(shaped("noisy_latents"), &dev);
    let t = Tensor::<AD, 1>::from_data(shaped("timesteps"), &dev);
    let text = Tensor::<AD, 3>::from_data(shaped("text_embeds"), &dev).require_grad();
    let obj = Tensor::<AD, 3>::from_data(shaped("object_embeds"), &dev).require_grad();
    let idx = Tensor::<AD, 2, Int>::from_data(g["image_token_idx"].clone().convert::<i64>(), &dev);
    let valid_u8: Vec<u8> = g["image_token_idx_mask"].clone().to_vec().unwrap();
    let valid_b = Tensor::<AD, 2, Bool>::from_data(
        TensorData::new(valid_u8.iter().map(|&v| v != 0).collect::<Vec<_>>(), [2, 2]),
        &dev,
    );
    let valid_f = valid_b.clone().float();
    let target = Tensor::<AD, 4>::from_data(shaped("target"), &dev);
    let segmaps = Tensor::<AD, 4>::from_data(shaped("object_segmaps"), &dev);

    // fused conditioning and prediction
    let cond = fuse.fuse_object_embeddings(text.clone(), idx.clone(), valid_b, obj.clone());
    crate::common::assert_close(
        "encoder_hidden_states",
        cond.clone().inner(),
        &g["encoder_hidden_states"],
        1e-5,
    );
    let layers: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("layers.json")).unwrap()).unwrap();
    let names: Vec<String> = layers["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 4, "{layers}");
    let mut capture = AttentionCapture::new(names.clone());
    let pred = unet.forward_with_capture(noisy, t, cond, &mut capture);
    crate::common::assert_close("pred", pred.clone().inner(), &g["pred"], 1e-5);

    // the masks resized as F.interpolate(bilinear, antialias=True)
    for s in [8usize, 4] {
        let key = format!("segmaps_resized.{s}");
        crate::common::assert_close(
            &key,
            resize_masks(segmaps.clone(), s).inner(),
            &g[&key],
            1e-6,
        );
    }
    // L_reg per layer and overall (values ~1e-3 that largely cancel: absolute tolerance)
    let mut reg: Option<Tensor<AD, 1>> = None;
    for name in &names {
        let l = reg_loss_layer(
            capture.probs[name].clone(),
            segmaps.clone(),
            idx.clone(),
            valid_f.clone(),
        );
        let ours: f32 = l.clone().into_scalar();
        let want: f32 = g[&format!("reg_layer.{name}")]
            .clone()
            .to_vec::<f32>()
            .unwrap()[0];
        assert!(
            (ours - want).abs() < 1e-7,
            "{name}: rust={ours} python={want}"
        );
        reg = Some(match reg {
            Some(r) => r + l,
            None => l,
        });
    }
    let reg = reg.unwrap() / names.len() as f64;
    let ours: f32 = reg.clone().into_scalar();
    let want: f32 = f("reg_loss").into_scalar();
    assert!(
        (ours - want).abs() < 1e-7,
        "reg_loss: rust={ours} python={want}"
    );
    let denoise = (pred - target).powf_scalar(2.0).mean();
    let dn: f32 = denoise.clone().into_scalar();
    assert!(
        (dn - f("denoise_loss").into_scalar()).abs() < 1e-5,
        "denoise {dn}"
    );

    // gradients of the total loss, and of L_reg alone (the 1e-3-weighted term is below f32
    // precision in the total, so it gets its own check)
    check_grads(
        &dir,
        "grads.safetensors",
        denoise + reg.clone() * 1e-3,
        &unet,
        &fuse,
        &text,
        &obj,
        1e-4,
    );
    // the L_reg-only graph again (a backward pass consumes the graph)
    let _ = reg;
}

#[test]
fn reg_loss_gradients_match_the_original_code() {
    let dev = default_device();
    let dir = fixture("char_ldm_grad");
    let g = read_tensors(&dir.join("golden.safetensors")).unwrap();
    let shaped = |k: &str| -> TensorData { g[k].clone().convert::<f32>() };
    let unet = UNet2DConditionModel::<AD>::from_pretrained(dir.join("unet"), &dev).unwrap();
    let fuse = WeightLoader::new()
        .load_file(
            FuseModule::<AD>::new(16, &dev),
            &dir.join("fuse.safetensors"),
        )
        .unwrap();
    let text = Tensor::<AD, 3>::from_data(shaped("text_embeds"), &dev).require_grad();
    let obj = Tensor::<AD, 3>::from_data(shaped("object_embeds"), &dev).require_grad();
    let idx = Tensor::<AD, 2, Int>::from_data(g["image_token_idx"].clone().convert::<i64>(), &dev);
    let valid_u8: Vec<u8> = g["image_token_idx_mask"].clone().to_vec().unwrap();
    let valid_b = Tensor::<AD, 2, Bool>::from_data(
        TensorData::new(valid_u8.iter().map(|&v| v != 0).collect::<Vec<_>>(), [2, 2]),
        &dev,
    );
    let segmaps = Tensor::<AD, 4>::from_data(shaped("object_segmaps"), &dev);
    let cond = fuse.fuse_object_embeddings(text.clone(), idx.clone(), valid_b.clone(), obj.clone());
    let layers: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("layers.json")).unwrap()).unwrap();
    let names: Vec<String> = layers["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    let mut capture = AttentionCapture::new(names.clone());
    let _ = unet.forward_with_capture(
        Tensor::from_data(shaped("noisy_latents"), &dev),
        Tensor::from_data(shaped("timesteps"), &dev),
        cond,
        &mut capture,
    );
    let mut reg: Option<Tensor<AD, 1>> = None;
    for name in &names {
        let l = reg_loss_layer(
            capture.probs[name].clone(),
            segmaps.clone(),
            idx.clone(),
            valid_b.clone().float(),
        );
        reg = Some(match reg {
            Some(r) => r + l,
            None => l,
        });
    }
    let reg = reg.unwrap() / names.len() as f64;
    check_grads(
        &dir,
        "grads_reg.safetensors",
        reg,
        &unet,
        &fuse,
        &text,
        &obj,
        1e-6,
    );
}

#[allow(clippy::too_many_arguments)]
fn check_grads(
    dir: &std::path::Path,
    file: &str,
    loss: Tensor<AD, 1>,
    unet: &UNet2DConditionModel<AD>,
    fuse: &FuseModule<AD>,
    text: &Tensor<AD, 3>,
    obj: &Tensor<AD, 3>,
    tol: f32,
) {
    let want = read_tensors(&dir.join(file)).unwrap();
    let mut raw = loss.backward();
    let mut all = BTreeMap::new();
    for (k, t) in [
        ("grad.text_embeds", text.grad(&raw)),
        ("grad.object_embeds", obj.grad(&raw)),
    ] {
        let t = t.expect("input gradient");
        all.insert(
            k.to_string(),
            (
                t.clone().into_data().to_vec::<f32>().unwrap(),
                t.dims().to_vec(),
            ),
        );
    }
    let ug = GradientsParams::from_module(&mut raw, unet);
    let fg = GradientsParams::from_module(&mut raw, fuse);
    all.extend(grads_of(unet, &ug, "unet."));
    all.extend(grads_of(fuse, &fg, "fuse."));
    let mut checked = 0;
    let mut worst = (0f32, String::new());
    for (k, w) in &want {
        let w: Vec<f32> = w.clone().convert::<f32>().to_vec().unwrap();
        let (v, _) = match all.get(k) {
            Some(x) => x.clone(),
            // a parameter outside the graph of this loss: its reference gradient is zero
            None => (vec![0.0; w.len()], vec![]),
        };
        assert_eq!(v.len(), w.len(), "{k}: size");

        for (a, b) in v.iter().zip(&w) {
            let d = (a - b).abs();
            if d > worst.0 {
                worst = (d, k.clone());
            }
        }
        checked += 1;
    }
    let ours_only: Vec<&String> = all.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        ours_only.is_empty(),
        "gradients with no reference: {ours_only:?}"
    );
    eprintln!(
        "{file}: {checked} gradient tensors, worst |diff| {:e} at {}",
        worst.0, worst.1
    );
    assert!(checked >= 220, "only {checked} tensors compared");
    assert!(
        worst.0 <= tol,
        "{file}: {:e} > {tol:e} at {}",
        worst.0,
        worst.1
    );
}
