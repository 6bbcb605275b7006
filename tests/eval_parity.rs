//! storygpt-eval against the Python reference: Inception-v3 features and logits
//! (pytorch-fid / torchvision on tiny random-weight networks), the image transforms of both FID
//! input chains, the Fréchet distance (scipy and a 50-digit mpmath reference), and Acc / F1
//! (a line-by-line port of the original `eval_cls.py`).
//!
//! Fixtures: `.venv/bin/python scripts/reference/generate.py --only inception_fid_tiny
//! --only inception_cls_tiny --only fid_golden --only metrics_golden`.

use burn::tensor::{Tensor, TensorData};
use serde_json::Value;
use storygpt::backend::default_device;
use storygpt::eval::fid::{GaussianStats, frechet_distance, frechet_distance_terms};
use storygpt::eval::fid_features::{FeatureExtractor, FidInputChain, InceptionFid};
use storygpt::eval::inception::{InceptionConfig, InceptionV3};
use storygpt::eval::metrics::{MultiLabelCounts, predict};
use storygpt::eval::transforms::{center_crop, resize_short_side, to_tensor};

use crate::common::{TB, assert_close, fixture, golden};

fn read_png(name: &str) -> image::RgbImage {
    image::open(fixture("inception_fid_tiny").join(name))
        .unwrap()
        .to_rgb8()
}

fn images() -> Vec<image::RgbImage> {
    ["img0.png", "img1.png", "img2.png"]
        .iter()
        .map(|n| read_png(n))
        .collect()
}

fn fid_net(chain: FidInputChain) -> InceptionFid<TB> {
    InceptionFid::from_path(fixture("inception_fid_tiny"), chain, &default_device()).unwrap()
}

fn row_tensor(values: Vec<f32>, n: usize) -> Tensor<TB, 2> {
    let d = values.len() / n;
    Tensor::from_data(TensorData::new(values, [n, d]), &default_device())
}

#[test]
fn fid_inception_standard_chain_matches_pytorch_fid() {
    let g = golden("inception_fid_tiny");
    let imgs = images();
    // ToTensor
    let t0 = to_tensor(&imgs[0]);
    assert_close(
        "standard_input",
        Tensor::<TB, 4>::from_data(
            TensorData::new(t0.data.clone(), [1, 3, 64, 64]),
            &default_device(),
        ),
        &g["standard_input"],
        0.0,
    );
    // the 299 bilinear resize, on the stored grid of rows/columns
    let idx: Vec<usize> = g["sub_index"]
        .clone()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap()
        .iter()
        .map(|&i| i as usize)
        .collect();
    let resized = FidInputChain::Standard.prepare(&imgs[0]);
    let mut sub = Vec::new();
    for c in 0..3 {
        for &y in &idx {
            for &x in &idx {
                sub.push(resized.data[c * 299 * 299 + y * 299 + x]);
            }
        }
    }
    let k = idx.len();
    assert_close(
        "standard_resized0_sub",
        Tensor::<TB, 4>::from_data(TensorData::new(sub, [1, 3, k, k]), &default_device()),
        &g["standard_resized0_sub"],
        1e-6,
    );
    // intermediate blocks of img0, then the pool features of all three images
    let net = fid_net(FidInputChain::Standard);
    let x = Tensor::<TB, 4>::from_data(
        TensorData::new(resized.data, [1, 3, 299, 299]),
        &default_device(),
    ) * 2.0
        - 1.0;
    let out = net.model.forward_features(x);
    assert_close("block0", out.block0, &g["block0"], 1e-4);
    assert_close("block1", out.block1, &g["block1"], 1e-4);
    assert_close("block2", out.block2, &g["block2"], 1e-4);
    let mut feats = Vec::new();
    for im in &imgs {
        feats.extend(
            net.extract(std::slice::from_ref(im), &default_device())
                .unwrap(),
        );
    }
    assert_eq!(net.dim(), 256);
    assert_close(
        "standard_pool",
        row_tensor(feats, 3),
        &g["standard_pool"],
        1e-4,
    );
}

#[test]
fn fid_inception_storygpt_chain_matches_the_original_evaluator() {
    let g = golden("inception_fid_tiny");
    let imgs = images();
    // PIL Resize(299) + CenterCrop(299), as bytes on the stored grid
    let idx: Vec<usize> = g["sub_index"]
        .clone()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap()
        .iter()
        .map(|&i| i as usize)
        .collect();
    let want: Vec<u8> = g["original_u8_sub"].clone().to_vec::<u8>().unwrap();
    let k = idx.len();
    for (n, im) in imgs.iter().enumerate() {
        let crop = center_crop(&resize_short_side(im, 299), 299);
        for (yi, &y) in idx.iter().enumerate() {
            for (xi, &x) in idx.iter().enumerate() {
                let ours = crop.get_pixel(x as u32, y as u32).0;
                let at = ((n * k + yi) * k + xi) * 3;
                assert_eq!(
                    &ours[..],
                    &want[at..at + 3],
                    "image {n} pixel ({x}, {y}): PIL bilinear resize + centre crop differ"
                );
            }
        }
    }
    let net = fid_net(FidInputChain::StorygptV);
    let feats = net.extract(&imgs, &default_device()).unwrap();
    assert_close(
        "original_pool",
        row_tensor(feats, 3),
        &g["original_pool"],
        1e-4,
    );
}

#[test]
fn fid_weights_load_from_a_pytorch_pth_file() {
    let g = golden("inception_fid_tiny");
    let mut cfg = InceptionConfig::fid();
    cfg.width_divisor = 8;
    let model = InceptionV3::<TB>::from_file(
        fixture("inception_fid_tiny").join("model.pth"),
        &cfg,
        &default_device(),
    )
    .unwrap();
    let net = InceptionFid {
        model,
        chain: FidInputChain::Standard,
        batch_size: 8,
    };
    let mut feats = Vec::new();
    for im in &images() {
        feats.extend(
            net.extract(std::slice::from_ref(im), &default_device())
                .unwrap(),
        );
    }
    assert_close(
        "standard_pool (.pth)",
        row_tensor(feats, 3),
        &g["standard_pool"],
        1e-4,
    );
}

#[test]
fn missing_or_mismatched_inception_weights_are_typed_errors() {
    let dev = default_device();
    let err = InceptionV3::<TB>::from_file(
        "/nonexistent/pt_inception.pth",
        &InceptionConfig::fid(),
        &dev,
    )
    .unwrap_err();
    assert!(matches!(err, storygpt::Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("pt_inception.pth"), "{err}");
    // the tiny file against the full-size architecture: a shape mismatch naming the key
    let err = InceptionV3::<TB>::from_file(
        fixture("inception_fid_tiny").join("model.safetensors"),
        &InceptionConfig::fid(),
        &dev,
    )
    .unwrap_err();
    assert!(
        matches!(err, storygpt::Error::ShapeMismatch { .. }),
        "{err}"
    );
}

#[test]
fn inception_classifier_matches_torchvision() {
    let g = golden("inception_cls_tiny");
    let model =
        InceptionV3::<TB>::from_pretrained(fixture("inception_cls_tiny"), &default_device())
            .unwrap();
    assert!(model.transforms_input());
    let x: Tensor<TB, 4> = crate::common::float(&g, "input");
    let (logits, aux) = model.forward(x.clone());
    assert_close("logits", logits, &g["logits"], 1e-4);
    assert_close("aux_logits", aux.unwrap(), &g["aux_logits"], 1e-4);
    assert_close("pool", model.pool_features(x), &g["pool"], 1e-4);
}

fn fid_json() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixture("fid_golden").join("golden.json")).unwrap(),
    )
    .unwrap()
}

fn stats(set: &str) -> GaussianStats {
    let t =
        storygpt::core::weights::read_tensors(&fixture("fid_golden").join("features.safetensors"))
            .unwrap();
    let d = &t[set];
    let dim = d.shape[1];
    GaussianStats::from_features_f64(&d.clone().to_vec::<f64>().unwrap(), dim).unwrap()
}

#[test]
fn frechet_distance_matches_scipy_and_the_exact_value() {
    let g = fid_json();
    for pair in ["a", "b"] {
        let p = &g["pairs"][pair];
        let d = frechet_distance(
            &stats(&format!("{pair}_real")),
            &stats(&format!("{pair}_fake")),
        )
        .unwrap();
        let scipy = p["scipy"].as_f64().unwrap();
        let exact = p["exact"].as_f64().unwrap();
        let rel_scipy = (d - scipy).abs() / scipy.abs();
        let rel_exact = (d - exact).abs() / exact.abs();
        eprintln!(
            "pair {pair}: ours {d:.15} scipy {scipy:.15} (rel {rel_scipy:e}) exact {exact:.15} (rel {rel_exact:e})"
        );
        assert!(
            rel_scipy <= 1e-6,
            "pair {pair}: rust={d} scipy={scipy} rel {rel_scipy:e}"
        );
        assert!(
            rel_exact <= 1e-10,
            "pair {pair}: rust={d} exact={exact} rel {rel_exact:e}"
        );
    }
    // identical sets: zero up to round-off
    let c = frechet_distance(&stats("c_real"), &stats("c_fake")).unwrap();
    assert!(c.abs() < 1e-9, "identical sets gave {c}");
    // covariance normalised by N − 1, as np.cov
    let a = stats("a_real");
    for i in 0..3 {
        for j in 0..3 {
            let want = g["a_real_cov_3x3"][i][j].as_f64().unwrap();
            assert!((a.sigma[i * a.dim + j] - want).abs() < 1e-12);
        }
        assert!((a.mu[i] - g["a_real_mean_3"][i].as_f64().unwrap()).abs() < 1e-14);
    }
}

#[test]
fn frechet_distance_is_stable_for_rank_deficient_covariances() {
    // 40 samples in 64 dimensions: both covariances have rank 39. The symmetric route stays
    // real and finite and agrees with the 50-digit reference to ~1e-12, where scipy's sqrtm
    // is off by ~1e-8.
    let g = fid_json();
    let p = &g["pairs"]["b"];
    assert_eq!(p["rank_real"].as_u64(), Some(39));
    let t = frechet_distance_terms(&stats("b_real"), &stats("b_fake")).unwrap();
    let exact_tr = p["trace_sqrt_exact"].as_f64().unwrap();
    assert!(t.distance.is_finite() && t.trace_sqrt.is_finite());
    let rel = (t.trace_sqrt - exact_tr).abs() / exact_tr;
    assert!(
        rel < 1e-10,
        "trace sqrt {} vs exact {exact_tr} (rel {rel:e})",
        t.trace_sqrt
    );
    // and the same with the sets swapped (A = Σ₂^{1/2} on a singular Σ₂)
    let swapped = frechet_distance(&stats("b_fake"), &stats("b_real")).unwrap();
    assert!(
        (swapped - t.distance).abs() / t.distance < 1e-10,
        "{swapped} vs {}",
        t.distance
    );
}

#[test]
fn acc_and_f1_equal_the_original_evaluator_exactly() {
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("metrics_golden").join("cases.json")).unwrap(),
    )
    .unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let logits: Vec<Vec<f32>> = serde_json::from_value(c["logits"].clone()).unwrap();
        let labels: Vec<Vec<u8>> = serde_json::from_value(c["labels"].clone()).unwrap();
        let want_preds: Vec<Vec<u8>> = serde_json::from_value(c["preds"].clone()).unwrap();
        let l = labels[0].len();
        let flat: Vec<f32> = logits.concat();
        let preds = predict(&flat, l);
        let preds_u8: Vec<Vec<u8>> = preds
            .iter()
            .map(|r| r.iter().map(|&b| u8::from(b)).collect())
            .collect();
        assert_eq!(preds_u8, want_preds, "{name}: predictions");
        let truth: Vec<Vec<bool>> = labels
            .iter()
            .map(|r| r.iter().map(|&v| v == 1).collect())
            .collect();
        let mut counts = MultiLabelCounts::default();
        counts.add(&preds, &truth).unwrap();
        let s = counts.scores();
        assert_eq!(s.accuracy, c["acc"].as_f64().unwrap(), "{name}: Acc");
        match c["f1"].as_f64() {
            Some(f1) => {
                assert_eq!(s.f1, f1, "{name}: F1 (original, float32)");
                assert_eq!(
                    s.precision,
                    c["precision"].as_f64().unwrap(),
                    "{name}: precision"
                );
                assert_eq!(s.recall, c["recall"].as_f64().unwrap(), "{name}: recall");
            }
            // the original divides by zero (NaN); we report scikit-learn's zero_division=0
            None => assert_eq!(s.f1, c["sklearn_f1"].as_f64().unwrap(), "{name}: F1"),
        }
        let sk = c["sklearn_f1"].as_f64().unwrap();
        assert!(
            (counts.f1_f64() - sk).abs() < 1e-9,
            "{name}: exact F1 {} vs sklearn {sk}",
            counts.f1_f64()
        );
    }
}

#[test]
fn clip_scores_match_transformers() {
    use storygpt::eval::clip_score::ClipScorer;
    let g = golden("clip_model_tiny");
    // a CLIPModel folder: the tiny model plus the real CLIP tokenizer
    let dir = crate::common::unpack("clip_tokenizer");
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        std::fs::copy(fixture("clip_model_tiny").join(f), dir.path().join(f)).unwrap();
    }
    let dev = default_device();
    let scorer = ClipScorer::<TB>::from_pretrained(dir.path(), &dev).unwrap();
    let load = |n: &str| {
        image::open(fixture("clip_model_tiny").join(n))
            .unwrap()
            .to_rgb8()
    };
    let generated: Vec<_> = ["img0.png", "img1.png", "img2.png"]
        .iter()
        .map(|n| load(n))
        .collect();
    let refs: Vec<_> = ["ref0.png", "ref1.png", "ref2.png"]
        .iter()
        .map(|n| load(n))
        .collect();
    let captions = [
        "Fred walks into the kitchen.",
        "Wilma and Betty talk in the park.",
        "A red ball on the beach at night.",
    ];
    let s = scorer.score(&captions, &generated, &refs, &dev).unwrap();
    let ti: f32 = g["text_image_mean"].clone().to_vec::<f32>().unwrap()[0];
    let ii: f32 = g["image_image_mean"].clone().to_vec::<f32>().unwrap()[0];
    eprintln!(
        "CLIP T-I {} (ref {ti}), I-I {} (ref {ii})",
        s.text_image, s.image_image
    );
    assert!(
        (s.text_image - f64::from(ti)).abs() < 1e-4,
        "T-I {} vs {ti}",
        s.text_image
    );
    assert!(
        (s.image_image - f64::from(ii)).abs() < 1e-4,
        "I-I {} vs {ii}",
        s.image_image
    );
    assert_eq!(s.frames, 3);
    // per-frame text embeddings, normalised
    let t = scorer.embed_texts(&captions, &dev).unwrap();
    let want: Tensor<TB, 2> = crate::common::float(&g, "text_embeds");
    let want = want.clone() / want.powf_scalar(2.0).sum_dim(1).sqrt();
    assert_close("normalised text embeds", t, &want.into_data(), 1e-4);
}
