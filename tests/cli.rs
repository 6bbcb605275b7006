//! The `storygpt` binary: `info` lists what is compiled in, errors exit non-zero with a message.

use std::process::Command;

fn storygpt(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_storygpt"))
        .args(args)
        .output()
        .expect("run storygpt");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `storygpt world generate` of `stories` 64-px stories with seed 3 into `out`; returns stderr.
fn generate_world(out: &str, stories: &str) -> String {
    let (ok, _, stderr) = storygpt(&[
        "world",
        "generate",
        "--out",
        out,
        "--stories",
        stories,
        "--size",
        "64",
        "--seed",
        "3",
    ]);
    assert!(ok, "{stderr}");
    stderr
}

#[test]
fn info_lists_the_compiled_backends() {
    let (ok, stdout, stderr) = storygpt(&["info"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("burn      0.21.0"), "{stdout}");
    let compiled = storygpt::backend::compiled_names();
    assert!(
        stdout.contains(&format!("backends compiled in: {}", compiled.join(", "))),
        "{stdout}"
    );
    for name in compiled {
        assert!(
            stdout.contains(&format!(" {name:<8} device:")),
            "{name} missing:\n{stdout}"
        );
    }
    assert!(stdout.contains("selected backend:"), "{stdout}");
}

#[test]
fn unknown_or_absent_backends_are_clear_errors() {
    let (ok, _, stderr) = storygpt(&["--backend", "tpu", "info"]);
    assert!(!ok);
    assert!(
        stderr.contains("backend `tpu` is not available: unknown backend"),
        "{stderr}"
    );
    if !cfg!(feature = "cuda") {
        let (ok, _, stderr) = storygpt(&["--backend", "cuda", "info"]);
        assert!(!ok);
        assert!(stderr.contains("not compiled in"), "{stderr}");
    }
}

#[test]
fn inspect_summarises_a_model_folder_and_rejects_a_corrupt_file() {
    let unet = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/unet_tiny");
    let (ok, stdout, stderr) = storygpt(&["inspect", unet]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("UNet2DConditionModel"), "{stdout}");
    assert!(stdout.contains("304 tensor(s)"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let (ok, _, stderr) = storygpt(&["inspect", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("bad.safetensors") && stderr.contains("not a valid safetensors"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `storygpt convert` writes a folder whose float weights are bf16 (half the bytes), equal to
/// the originals to bf16 rounding, with every other file copied; the normal loader reads it.
#[test]
fn convert_writes_a_bf16_folder_the_loaders_read() {
    let unet = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet_tiny");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("unet_bf16");
    let (ok, stdout, stderr) =
        storygpt(&["convert", unet.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("weights files"), "{stdout}");
    assert_eq!(
        std::fs::read(unet.join("config.json")).unwrap(),
        std::fs::read(out.join("config.json")).unwrap()
    );
    let name = "diffusion_pytorch_model.safetensors";
    let a = storygpt::core::weights::read_tensors(&unet.join(name)).unwrap();
    let b = storygpt::core::weights::read_tensors(&out.join(name)).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &a {
        let x: Vec<f32> = t.clone().convert::<f32>().to_vec().unwrap();
        let y: Vec<f32> = b[k].clone().convert::<f32>().to_vec().unwrap();
        assert_eq!(b[k].dtype, burn::tensor::DType::BF16, "{k}");
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() <= p.abs() / 128.0 + 1e-30, "{k}: {p} vs {q}");
        }
    }
    let before = std::fs::metadata(unet.join(name)).unwrap().len();
    let after = std::fs::metadata(out.join(name)).unwrap().len();
    assert!(after * 10 < before * 6, "{before} → {after} bytes");
    storygpt::models::unet_2d_condition::UNet2DConditionModel::<crate::common::TB>::from_pretrained(
        &out,
        &storygpt::backend::default_device(),
    )
    .unwrap();
}

/// `storygpt txt2img` on the tiny pipeline writes a PNG of the requested size, and the same
/// seed gives the same bytes.
#[test]
fn txt2img_writes_a_deterministic_png() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for entry in std::fs::read_dir(fixtures.join("sd_tiny_pipeline")).unwrap() {
        let p = entry.unwrap().path();
        let dest = dir.path().join(p.file_name().unwrap());
        if p.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            for f in std::fs::read_dir(&p).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, dest.join(f.file_name().unwrap())).unwrap();
            }
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
    for (component, from, weights) in [
        ("unet", "unet_tiny", "diffusion_pytorch_model.safetensors"),
        ("vae", "vae_tiny", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "clip_text_tiny", "model.safetensors"),
    ] {
        let to = dir.path().join(component);
        std::fs::create_dir_all(&to).unwrap();
        for f in ["config.json", weights] {
            std::fs::copy(fixtures.join(from).join(f), to.join(f)).unwrap();
        }
    }
    let model = dir.path().to_str().unwrap().to_string();
    let mut pngs = Vec::new();
    for name in ["a.png", "b.png"] {
        let out = dir.path().join(name);
        let (ok, _, stderr) = storygpt(&[
            "txt2img",
            "--model",
            &model,
            "--prompt",
            "Fred walks into the kitchen.",
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "4",
            "--height",
            "32",
            "--width",
            "32",
            "--seed",
            "7",
        ]);
        assert!(ok, "{stderr}");
        let img = image::open(&out).unwrap();
        assert_eq!((img.width(), img.height()), (32, 32));
        pngs.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(pngs[0], pngs[1], "same seed, same image");

    let (ok, _, stderr) = storygpt(&[
        "txt2img",
        "--model",
        &model,
        "--prompt",
        "x",
        "--out",
        "/tmp/x.jpg",
        "--steps",
        "1",
    ]);
    assert!(!ok && stderr.contains("must end in .png"), "{stderr}");
}

#[test]
fn world_generate_check_and_preview() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("w");
    let o = out.to_str().unwrap();
    let stderr = generate_world(o, "6");
    assert!(stderr.contains("6 stories, 24 frames of 64x64"), "{stderr}");
    assert!(stderr.contains("frames/s"), "{stderr}");
    // Refuses to overwrite by default.
    let (ok, _, stderr) = storygpt(&["world", "generate", "--out", o, "--stories", "2"]);
    assert!(!ok && stderr.contains("--overwrite"), "{stderr}");
    let (ok, _, stderr) = storygpt(&["world", "check", o]);
    assert!(ok && stderr.contains("24 frames OK"), "{stderr}");
    let sheet = tmp.path().join("p.png");
    let cast = tmp.path().join("c.png");
    let (ok, _, stderr) = storygpt(&[
        "world",
        "preview",
        "--dataset",
        o,
        "--out",
        sheet.to_str().unwrap(),
        "--frames",
        "4",
        "--cols",
        "2",
        "--cast",
        cast.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let img = image::open(&sheet).unwrap();
    // 2 x 2 tiles of 64 px with 4 caption lines under each, 6 px padding.
    assert_eq!(
        (img.width(), img.height()),
        (6 + 2 * 70, 6 + 2 * (64 + 36 + 6))
    );
    assert!(image::open(&cast).unwrap().width() > 7 * 64);
    // Bad arguments are typed errors, not panics.
    let (ok, _, stderr) = storygpt(&["world", "generate", "--out", "/tmp/x", "--frames", "51"]);
    assert!(!ok && stderr.contains("1..=50"), "{stderr}");
}

#[test]
fn eval_train_classifier_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("w");
    let w = world.to_str().unwrap();
    generate_world(w, "20");
    let judge = tmp.path().join("judge");
    let (ok, stdout, stderr) = storygpt(&[
        "eval",
        "train-classifier",
        "--dataset",
        w,
        "--kind",
        "char",
        "--steps",
        "5",
        "--out",
        judge.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("char classifier: 64 training frames, 5 steps"),
        "{stdout}"
    );
    for f in [
        "config.json",
        "classifier.json",
        "model.safetensors",
        "README.md",
    ] {
        assert!(judge.join(f).is_file(), "{f} missing");
    }
    // the ground truth of the test split, as generated frames (flat layout)
    let generated = tmp.path().join("gen");
    std::fs::create_dir_all(&generated).unwrap();
    for i in 18..20 {
        for f in 0..4 {
            let name = format!("s{i:05}_f{f:02}.png");
            std::fs::copy(world.join("frames").join(&name), generated.join(&name)).unwrap();
        }
    }
    let report = tmp.path().join("report");
    let args = [
        "eval",
        "run",
        "--generated",
        generated.to_str().unwrap(),
        "--dataset",
        w,
        "--out",
        report.to_str().unwrap(),
        "--char-classifier",
        judge.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = storygpt(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("| Char-Acc |"), "{stdout}");
    for f in ["metrics.json", "summary.md", "grid.png"] {
        assert!(report.join(f).is_file(), "{f} missing");
    }
    // one frame missing: a clear error naming it
    std::fs::remove_file(generated.join("s00019_f03.png")).unwrap();
    let (ok, _, stderr) = storygpt(&args);
    assert!(!ok);
    assert!(
        stderr.contains("s00019_f03.png") && stderr.contains("7 of the 8"),
        "{stderr}"
    );
}

/// The README's main command on the embedded story-world model (fewer sampler steps, to stay
/// cheap): one frame per sentence, the storyboard and `story.json`, with the pronoun flags.
#[test]
fn readme_main_command_draws_the_story_with_the_embedded_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("story");
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/storyworld");
    let (ok, stdout, stderr) = storygpt(&[
        "visualize",
        "--model",
        model,
        "--story",
        "Fred walks into the kitchen. He waves at Wilma. She laughs.",
        "--steps",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    for f in [
        "frame-01.png",
        "frame-02.png",
        "frame-03.png",
        "storyboard.png",
        "story.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let frame = image::open(out.join("frame-01.png")).unwrap();
    assert_eq!((frame.width(), frame.height()), (64, 64));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("story.json")).unwrap()).unwrap();
    let frames = json["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 3);
    let pronoun: Vec<bool> = frames
        .iter()
        .map(|f| f["pronoun"].as_bool().unwrap())
        .collect();
    assert_eq!(pronoun, vec![false, true, true]);
    assert_eq!(
        json["options"]["sample"]["scheduler"],
        "dpm_solver_multistep"
    );
}

/// `eval-story` on a validation story, two rows (one the diagnostic pipeline-with-names row),
/// other sampling options: the table has those rows only, the metrics record the split and the
/// options; bad row lists are typed errors.
#[test]
fn eval_story_draws_the_asked_rows_of_the_asked_split() {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("w");
    let w = world.to_str().unwrap();
    generate_world(w, "10");
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/storyworld");
    let out = tmp.path().join("eval");
    let o = out.to_str().unwrap();
    let args = |rows: &'static str, split: &'static str| {
        vec![
            "eval-story",
            "--model",
            model,
            "--data",
            w,
            "--split",
            split,
            "--stories",
            "1",
            "--rows",
            rows,
            "--steps",
            "2",
            "--guidance",
            "2.5",
            "--first-frame",
            "char-ldm",
            "--out",
            o,
        ]
    };
    let (ok, stdout, stderr) = storygpt(&args("ldm-names,pipeline-names", "val"));
    assert!(ok, "{stdout}\n{stderr}");
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    // the table (header, rule, 2 rows), then where Char-Acc is lost (blank, text, blank,
    // header, rule, 2 rows)
    assert_eq!(table.lines().count(), 11, "{table}");
    assert!(table.contains("| Char-LDM, named captions |"), "{table}");
    assert!(table.contains("| missing | extra | swapped |"), "{table}");
    assert!(
        table.contains("| StoryGPT-V pipeline, named captions |"),
        "the diagnostic row: {table}"
    );
    assert!(table.contains("| Char-Acc, pronoun frames |"), "{table}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["split"], "val");
    assert_eq!(metrics["options"]["sample"]["guidance_scale"], 2.5);
    assert_eq!(metrics["options"]["first_frame"], "char_ldm");
    let rows = metrics["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["frames"], 4, "one story of 4 frames: {row}");
        // every frame is in the breakdown: right ones by character count, wrong ones sorted
        let e = &row["char_errors"];
        let by_count = e["by_count"].as_array().unwrap();
        let frames: u64 = by_count.iter().map(|c| c[1].as_u64().unwrap()).sum();
        let right: u64 = by_count.iter().map(|c| c[2].as_u64().unwrap()).sum();
        let wrong = ["missing", "extra", "swapped"].map(|k| e[k].as_u64().unwrap());
        assert_eq!(frames, 4, "{row}");
        assert_eq!(right + wrong.iter().sum::<u64>(), 4, "{row}");
        assert!((row["char_acc"].as_f64().unwrap() - right as f64 * 25.0).abs() < 1e-9);
        // a percentage, or null when the story has no pronoun
        let p = &row["char_acc_pronoun_frames"];
        assert!(
            p.is_null() || (0.0..=100.0).contains(&p.as_f64().unwrap()),
            "{row}"
        );
    }
    assert!(out.join("stories.png").is_file());

    let (ok, _, stderr) = storygpt(&args("ldm-names,ldm-names", "val"));
    assert!(!ok && stderr.contains("twice"), "{stderr}");
    let (ok, _, stderr) = storygpt(&args("ldm-names", "holdout"));
    assert!(!ok && stderr.contains("unknown split"), "{stderr}");
}
