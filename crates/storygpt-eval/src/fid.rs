//! Fréchet Inception Distance (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule
//! Converge to a Local Nash Equilibrium", <https://arxiv.org/abs/1706.08500>), with pytorch-fid's
//! statistics and a numerically careful matrix square root.
//!
//! ```text
//! d² = ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁ Σ₂)^{1/2})
//! ```
//!
//! pytorch-fid takes `scipy.linalg.sqrtm(Σ₁ Σ₂)` (a Schur method on a non-symmetric product),
//! which turns complex or non-finite on rank-deficient covariances (fewer samples than
//! dimensions) and then retries with `1e-6·I` added. Here the trace is computed from symmetric
//! eigendecompositions only (faer, f64):
//!
//! 1. `A = Σ₁^{1/2}` from the eigendecomposition of Σ₁;
//! 2. `Σ₁Σ₂` is similar to the symmetric positive semi-definite `A Σ₂ A`, so
//!    `Tr((Σ₁Σ₂)^{1/2}) = Σᵢ √λᵢ(A Σ₂ A)`.
//!
//! In both steps eigenvalues below the numerical-rank tolerance `n·ε·max|λ|` (negative
//! round-off included) count as exact zeros.
//!
//! The result is real and finite for any pair of valid covariances, singular ones included.

use faer::{Mat, Side};
use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};

/// Mean and covariance of a feature set (pytorch-fid's `mu`, `sigma`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaussianStats {
    /// Feature width `d`.
    pub dim: usize,
    /// Samples the statistics were computed from.
    pub count: usize,
    /// Mean, `d` values.
    pub mu: Vec<f64>,
    /// Covariance, `d × d` row-major, normalised by `count − 1` (`np.cov(rowvar=False)`).
    pub sigma: Vec<f64>,
}

impl GaussianStats {
    /// Statistics of `count × dim` row-major features (f32, as the networks produce them;
    /// accumulated in f64 like NumPy).
    pub fn from_features(features: &[f32], dim: usize) -> Result<Self> {
        let f64s: Vec<f64> = features.iter().map(|&v| f64::from(v)).collect();
        Self::from_features_f64(&f64s, dim)
    }

    /// Statistics of `count × dim` row-major f64 features.
    pub fn from_features_f64(features: &[f64], dim: usize) -> Result<Self> {
        if dim == 0 || !features.len().is_multiple_of(dim) {
            return Err(Error::InputShape {
                what: "FID features".into(),
                expected: format!("[count, {dim}] row-major"),
                found: vec![features.len()],
            });
        }
        let count = features.len() / dim;
        if count < 2 {
            return Err(Error::InvalidInput(format!(
                "FID needs at least 2 feature vectors for a covariance, got {count}"
            )));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "FID features".into(),
                index: vec![i / dim, i % dim],
            });
        }
        let mut mu = vec![0.0; dim];
        for row in features.chunks(dim) {
            for (m, &v) in mu.iter_mut().zip(row) {
                *m += v;
            }
        }
        mu.iter_mut().for_each(|m| *m /= count as f64);
        // Centred data as a [count, dim] matrix; Σ = XᵀX / (count − 1) via faer's GEMM.
        let x = Mat::<f64>::from_fn(count, dim, |i, j| features[i * dim + j] - mu[j]);
        let cov = x.transpose() * &x;
        let scale = 1.0 / (count as f64 - 1.0);
        let sigma = (0..dim * dim)
            .map(|k| cov[(k / dim, k % dim)] * scale)
            .collect();
        Ok(Self {
            dim,
            count,
            mu,
            sigma,
        })
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.mu.len() != self.dim || self.sigma.len() != self.dim * self.dim {
            return Err(Error::InputShape {
                what: format!("{what} statistics"),
                expected: format!("mu [{0}] and sigma [{0}, {0}]", self.dim),
                found: vec![self.mu.len(), self.sigma.len()],
            });
        }
        if let Some(i) = self.mu.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("{what} mean"),
                index: vec![i],
            });
        }
        if let Some(i) = self.sigma.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("{what} covariance"),
                index: vec![i / self.dim, i % self.dim],
            });
        }
        Ok(())
    }

    fn sigma_mat(&self) -> Mat<f64> {
        let d = self.dim;
        // Symmetrise: round-off can make Σ slightly asymmetric.
        Mat::from_fn(d, d, |i, j| {
            0.5 * (self.sigma[i * d + j] + self.sigma[j * d + i])
        })
    }
}

/// The terms of a Fréchet distance, for reports and debugging.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FrechetTerms {
    /// `‖μ₁ − μ₂‖²`.
    pub mean_term: f64,
    /// `Tr(Σ₁)`.
    pub trace1: f64,
    /// `Tr(Σ₂)`.
    pub trace2: f64,
    /// `Tr((Σ₁Σ₂)^{1/2})`.
    pub trace_sqrt: f64,
    /// The distance `mean_term + trace1 + trace2 − 2·trace_sqrt`.
    pub distance: f64,
}

fn eig_failed(e: impl std::fmt::Debug) -> Error {
    Error::InvalidInput(format!(
        "symmetric eigendecomposition did not converge: {e:?}"
    ))
}

/// Eigenvalues at or below the numerical-rank tolerance `n · ε · max|λ|` are round-off of
/// exact zeros (a covariance of fewer samples than dimensions): they are set to zero, because
/// their square roots (~√ε each) would otherwise add up to a visible error.
fn rank_threshold(lambdas: &[f64]) -> f64 {
    let max = lambdas.iter().fold(0.0f64, |m, &l| m.max(l.abs()));
    lambdas.len() as f64 * f64::EPSILON * max
}

/// `√λ`, with λ below the rank tolerance treated as zero.
fn sqrt_eig(l: f64, tol: f64) -> f64 {
    if l <= tol { 0.0 } else { l.sqrt() }
}

/// `Tr((Σ₁Σ₂)^{1/2})` through `Σ₁^{1/2} Σ₂ Σ₁^{1/2}` (see the module docs).
fn trace_sqrt_product(s1: &Mat<f64>, s2: &Mat<f64>) -> Result<f64> {
    let n = s1.nrows();
    let e1 = s1.self_adjoint_eigen(Side::Lower).map_err(eig_failed)?;
    let (u, s) = (e1.U(), e1.S());
    let l1: Vec<f64> = (0..n).map(|j| s[j]).collect();
    let tol1 = rank_threshold(&l1);
    // A = U diag(√λ) Uᵀ
    let us = Mat::<f64>::from_fn(n, n, |i, j| u[(i, j)] * sqrt_eig(l1[j], tol1));
    let a = &us * u.transpose();
    let m = &a * s2 * &a;
    let m = Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let lambdas = m
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(eig_failed)?;
    let tol = rank_threshold(&lambdas);
    Ok(lambdas.iter().map(|&l| sqrt_eig(l, tol)).sum())
}

/// The Fréchet distance between two Gaussians, with its terms.
///
/// Errors: different widths, or statistics holding NaN / infinity
/// ([`Error::NonFinite`] names the entry).
pub fn frechet_distance_terms(a: &GaussianStats, b: &GaussianStats) -> Result<FrechetTerms> {
    a.check("first")?;
    b.check("second")?;
    if a.dim != b.dim {
        return Err(Error::InputShape {
            what: "FID statistics".into(),
            expected: format!("the same width on both sides ({})", a.dim),
            found: vec![b.dim],
        });
    }
    let mean_term: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y).powi(2)).sum();
    let (s1, s2) = (a.sigma_mat(), b.sigma_mat());
    let trace1: f64 = (0..a.dim).map(|i| s1[(i, i)]).sum();
    let trace2: f64 = (0..a.dim).map(|i| s2[(i, i)]).sum();
    let trace_sqrt = trace_sqrt_product(&s1, &s2)?;
    Ok(FrechetTerms {
        mean_term,
        trace1,
        trace2,
        trace_sqrt,
        distance: mean_term + trace1 + trace2 - 2.0 * trace_sqrt,
    })
}

/// The Fréchet distance `d²` (what pytorch-fid reports as FID).
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<f64> {
    Ok(frechet_distance_terms(a, b)?.distance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_dimensional_closed_form() {
        // 1-D: d² = (μ₁−μ₂)² + (σ₁ − σ₂)²
        let a = GaussianStats {
            dim: 1,
            count: 10,
            mu: vec![1.0],
            sigma: vec![4.0],
        };
        let b = GaussianStats {
            dim: 1,
            count: 10,
            mu: vec![3.0],
            sigma: vec![9.0],
        };
        let d = frechet_distance(&a, &b).unwrap();
        assert!((d - (4.0 + 1.0)).abs() < 1e-12, "{d}");
    }

    #[test]
    fn covariance_matches_numpy_convention() {
        // rows (1, 2), (3, 6): mean (2, 4), cov [[2, 4], [4, 8]] with N − 1
        let s = GaussianStats::from_features_f64(&[1.0, 2.0, 3.0, 6.0], 2).unwrap();
        assert_eq!(s.mu, vec![2.0, 4.0]);
        for (x, y) in s.sigma.iter().zip([2.0, 4.0, 4.0, 8.0]) {
            assert!((x - y).abs() < 1e-12);
        }
    }

    #[test]
    fn nan_covariance_is_a_typed_error_naming_the_entry() {
        let mut a = GaussianStats::from_features_f64(&[1.0, 2.0, 3.0, 6.0, 0.0, 1.0], 2).unwrap();
        let b = a.clone();
        a.sigma[3] = f64::NAN;
        let err = frechet_distance(&a, &b).unwrap_err();
        assert!(
            matches!(&err, Error::NonFinite { index, .. } if index == &vec![1, 1]),
            "{err}"
        );
        assert!(err.to_string().contains("covariance"), "{err}");
    }
}
