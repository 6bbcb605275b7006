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
