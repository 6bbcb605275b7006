//! The burn backends compiled into this build, as cargo features.
//!
//! | feature | backend | device |
//! |---|---|---|
//! | `flex` (default) | pure-Rust CPU; gemm's AVX-512 kernels are compiled in and picked at run time on CPUs with `avx512f` | CPU |
//! | `ndarray` | ndarray CPU backend (f32/f64 only, no f16/bf16) | CPU |
//! | `tch` | LibTorch (`scripts/install-libtorch.sh`) | CPU, or CUDA when libtorch has it |
//! | `cuda` | CubeCL CUDA (driver and NVRTC loaded at run time) | GPU 0 |
//!
//! Model code is generic over `B: Backend`; only binaries and tests pick a concrete one.
//! [`DefaultBackend`] is the most specific backend compiled in (cuda, then tch, then ndarray,
//! then flex), so `cargo test --no-default-features --features ndarray` runs every test on
//! ndarray.

use burn::tensor::Device;

#[cfg(not(any(
    feature = "flex",
    feature = "ndarray",
    feature = "tch",
    feature = "cuda"
)))]
compile_error!("storygpt needs at least one backend feature: flex, ndarray, tch or cuda");

/// The pinned burn version (checked against Cargo.lock by a test).
pub const BURN_VERSION: &str = "0.21.0";

/// Pure-Rust CPU backend.
#[cfg(feature = "flex")]
pub type Flex = burn::backend::Flex;
/// ndarray CPU backend.
#[cfg(feature = "ndarray")]
pub type NdArray = burn::backend::NdArray<f32>;
/// LibTorch backend.
#[cfg(feature = "tch")]
pub type LibTorch = burn::backend::LibTorch<f32>;
/// CUDA backend.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;

/// The backend used by tests and by the CLI when `--backend` is not given.
#[cfg(feature = "cuda")]
pub type DefaultBackend = Cuda;
/// The backend used by tests and by the CLI when `--backend` is not given.
#[cfg(all(feature = "tch", not(feature = "cuda")))]
pub type DefaultBackend = LibTorch;
/// The backend used by tests and by the CLI when `--backend` is not given.
#[cfg(all(feature = "ndarray", not(any(feature = "cuda", feature = "tch"))))]
pub type DefaultBackend = NdArray;
/// The backend used by tests and by the CLI when `--backend` is not given.
#[cfg(all(
    feature = "flex",
    not(any(feature = "cuda", feature = "tch", feature = "ndarray"))
))]
pub type DefaultBackend = Flex;

/// The device of [`DefaultBackend`] (CPU for the CPU backends, GPU 0 for cuda).
pub fn default_device() -> Device<DefaultBackend> {
    Default::default()
}

/// A backend name, as accepted by the CLI's `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// `flex`
    Flex,
    /// `ndarray`
    NdArray,
    /// `tch`
    Tch,
    /// `cuda`
    Cuda,
}

impl BackendKind {
    /// Every backend storygpt knows, compiled in or not.
    pub const ALL: [BackendKind; 4] = [Self::Flex, Self::NdArray, Self::Tch, Self::Cuda];

    /// The feature / CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::NdArray => "ndarray",
            Self::Tch => "tch",
            Self::Cuda => "cuda",
        }
    }

    /// Whether this build includes the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            Self::Flex => cfg!(feature = "flex"),
            Self::NdArray => cfg!(feature = "ndarray"),
            Self::Tch => cfg!(feature = "tch"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// Parses a CLI name; errors list the compiled-in choices.
    pub fn parse(name: &str) -> crate::Result<Self> {
        let kind = Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| crate::Error::BackendUnavailable {
                name: name.to_string(),
                reason: format!(
                    "unknown backend; this build has: {}",
                    compiled_names().join(", ")
                ),
            })?;
        if !kind.is_compiled() {
            return Err(crate::Error::BackendUnavailable {
                name: name.to_string(),
                reason: format!(
                    "not compiled in (rebuild with `--features {}`); this build has: {}",
                    kind.name(),
                    compiled_names().join(", ")
                ),
            });
        }
        Ok(kind)
    }

    /// The default backend's kind.
    pub fn default_kind() -> Self {
        if cfg!(feature = "cuda") {
            Self::Cuda
        } else if cfg!(feature = "tch") {
            Self::Tch
        } else if cfg!(feature = "ndarray") {
            Self::NdArray
        } else {
            Self::Flex
        }
    }
}

/// Names of the backends compiled into this build, in [`BackendKind::ALL`] order.
pub fn compiled_names() -> Vec<&'static str> {
    BackendKind::ALL
        .into_iter()
        .filter(|k| k.is_compiled())
        .map(|k| k.name())
        .collect()
}

/// What `storygpt info` prints about one compiled backend.
#[derive(Debug, Clone)]
pub struct BackendReport {
    /// The backend.
    pub kind: BackendKind,
    /// The device it would run on, or why it cannot run here.
    pub device: String,
    /// Extra facts (kernels, threads, precision support).
    pub notes: Vec<String>,
}

/// Describes every compiled-in backend, probing the devices that may be absent (CUDA).
pub fn reports() -> Vec<BackendReport> {
    BackendKind::ALL
        .into_iter()
        .filter(|k| k.is_compiled())
        .map(report)
        .collect()
}

fn cpu_threads() -> String {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{n} CPU thread(s) available")
}

fn report(kind: BackendKind) -> BackendReport {
    match kind {
        BackendKind::Flex => {
            #[cfg(target_arch = "x86_64")]
            let simd = if std::arch::is_x86_feature_detected!("avx512f") {
                "gemm AVX-512 kernels: compiled in, active (CPU has avx512f)"
            } else if std::arch::is_x86_feature_detected!("fma") {
                "gemm AVX-512 kernels: compiled in, inactive (no avx512f; FMA kernels used)"
            } else {
                "gemm AVX-512 kernels: compiled in, inactive (no avx512f)"
            };
            #[cfg(not(target_arch = "x86_64"))]
            let simd = "gemm AVX-512 kernels: not applicable on this architecture";
            BackendReport {
                kind,
                device: "cpu".into(),
                notes: vec![
                    simd.into(),
                    cpu_threads(),
                    "dtypes: f32, f64, f16, bf16".into(),
                ],
            }
        }
        BackendKind::NdArray => BackendReport {
            kind,
            device: "cpu".into(),
            notes: vec![cpu_threads(), "dtypes: f32, f64 (no f16/bf16)".into()],
        },
        BackendKind::Tch => tch_report(),
        BackendKind::Cuda => cuda_report(),
    }
}

#[cfg(feature = "tch")]
fn tch_report() -> BackendReport {
    let device: burn::backend::libtorch::LibTorchDevice = Default::default();
    BackendReport {
        kind: BackendKind::Tch,
        device: format!("{device:?}"),
        notes: vec!["libtorch found at build time (see scripts/install-libtorch.sh)".into()],
    }
}

#[cfg(not(feature = "tch"))]
fn tch_report() -> BackendReport {
    unreachable!("tch_report is only called for compiled-in backends")
}

#[cfg(feature = "cuda")]
fn cuda_report() -> BackendReport {
    // Creating a CUDA tensor panics inside cubecl when no driver or GPU is present; probe once
    // on a helper thread so `info` can say so instead of aborting.
    let probe = std::thread::spawn(|| {
        let device = <Cuda as burn::tensor::backend::BackendTypes>::Device::default();
        let t = burn::tensor::Tensor::<Cuda, 1>::from_floats([1.0, 2.0], &device);
        let sum: f32 = t.sum().into_scalar();
        (format!("{device:?}"), sum)
    })
    .join();
    match probe {
        Ok((device, sum)) if (sum - 3.0).abs() < 1e-6 => BackendReport {
            kind: BackendKind::Cuda,
            device,
            notes: vec!["runtime probe: ok".into()],
        },
        Ok((device, sum)) => BackendReport {
            kind: BackendKind::Cuda,
            device,
            notes: vec![format!("runtime probe: WRONG RESULT (1+2 = {sum})")],
        },
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            BackendReport {
                kind: BackendKind::Cuda,
                device: "unavailable".into(),
                notes: vec![format!("runtime probe failed: {msg}")],
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_report() -> BackendReport {
    unreachable!("cuda_report is only called for compiled-in backends")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_compiled_and_rejects_others() {
        for kind in BackendKind::ALL {
            let parsed = BackendKind::parse(kind.name());
            assert_eq!(parsed.is_ok(), kind.is_compiled(), "{kind:?}");
            if let Err(e) = parsed {
                assert!(e.to_string().contains("not compiled in"), "{e}");
            }
        }
        let err = BackendKind::parse("tpu").unwrap_err();
        assert!(err.to_string().contains("unknown backend"), "{err}");
        assert!(BackendKind::default_kind().is_compiled());
        assert!(!compiled_names().is_empty());
    }

    #[test]
    fn burn_version_matches_lockfile() {
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock"))
                .expect("Cargo.lock is committed at the workspace root");
        let needle = format!("name = \"burn\"\nversion = \"{BURN_VERSION}\"");
        assert!(
            lock.contains(&needle),
            "Cargo.lock does not pin burn {BURN_VERSION}"
        );
    }

    #[test]
    fn default_backend_runs_a_tensor_op() {
        let device = default_device();
        let t = burn::tensor::Tensor::<DefaultBackend, 1>::from_floats([1.0, 2.0, 3.0], &device);
        let s: f32 = t.sum().into_scalar();
        assert_eq!(s, 6.0);
    }
}
