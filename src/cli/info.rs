//! `storygpt info`: what this build can run on.

use std::io::Write;

use super::stdout_error;
use crate::backend::{self, BackendKind};

/// Prints versions, the compiled-in backends with their devices, and the selected backend.
pub fn run(selected: BackendKind) -> crate::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "storygpt {}", env!("CARGO_PKG_VERSION")).map_err(stdout_error)?;
    writeln!(out, "  burn      {}", backend::BURN_VERSION).map_err(stdout_error)?;
    writeln!(out, "  rustc     {}", env!("STORYGPT_RUSTC_VERSION")).map_err(stdout_error)?;
    writeln!(out, "  profile   {}", env!("STORYGPT_BUILD_PROFILE")).map_err(stdout_error)?;
    writeln!(
        out,
        "  target    {}-{}",
        std::env::consts::ARCH,
        std::env::consts::OS
    )
    .map_err(stdout_error)?;
    writeln!(out).map_err(stdout_error)?;
    writeln!(
        out,
        "backends compiled in: {}",
        backend::compiled_names().join(", ")
    )
    .map_err(stdout_error)?;
    for r in backend::reports() {
        let mark = if r.kind == selected { "*" } else { " " };
        writeln!(out, "{mark} {:<8} device: {}", r.kind.name(), r.device).map_err(stdout_error)?;
        for note in &r.notes {
            writeln!(out, "           {note}").map_err(stdout_error)?;
        }
    }
    let missing: Vec<&str> = BackendKind::ALL
        .into_iter()
        .filter(|k| !k.is_compiled())
        .map(|k| k.name())
        .collect();
    if !missing.is_empty() {
        writeln!(
            out,
            "not compiled in: {} (enable with cargo --features)",
            missing.join(", ")
        )
        .map_err(stdout_error)?;
    }
    writeln!(
        out,
        "selected backend: {} (* above; change with --backend)",
        selected.name()
    )
    .map_err(stdout_error)?;
    Ok(())
}
