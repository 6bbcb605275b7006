//! σ tables shared by the σ-parameterised schedulers (Euler, Euler-ancestral, DPM-Solver++):
//! σ_t = √((1 − ᾱ_t) / ᾱ_t), its interpolation at fractional timesteps, Karras et al.'s σ
//! spacing and the inverse map σ → t, each as diffusers computes it (torch float32 for the table,
//! numpy float64 for the rest).

/// σ_t for t = 0..T, computed like `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` on a float32
/// tensor, each operation rounded to float32. torch's CPU `sqrt` is not correctly rounded and
/// this one is, so about 1 value in 5 differs from diffusers' by one float32 ulp.
pub(crate) fn sigma_table(alphas_cumprod: &[f64]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| {
            let a = a as f32;
            ((1.0 - a) / a).sqrt()
        })
        .collect()
}

/// `np.interp(x, np.arange(len(fp)), fp)` at one point: `slope·(x − j) + fp[j]`, exact at the
/// grid points and clamped at the ends.
pub(crate) fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return f64::from(fp[0]);
    }
    if x >= last as f64 {
        return f64::from(fp[last]);
    }
    let j = x.floor() as usize;
    let (lo, hi) = (f64::from(fp[j]), f64::from(fp[j + 1]));
    if x == j as f64 {
        return lo;
    }
    (hi - lo) * (x - j as f64) + lo
}

/// Karras et al. 2022, eq. 5 with ρ = 7: `n` σ's from σ_max down to σ_min, evenly spaced in
/// σ^(1/ρ) (diffusers' `_convert_to_karras`).
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / RHO);
    let max_inv_rho = sigma_max.powf(1.0 / RHO);
    super::numpy_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(RHO))
        .collect()
}

/// The (fractional) training timestep whose σ is `sigma`: linear interpolation in log σ between
/// the two neighbouring table entries (diffusers' `_sigma_to_t`).
///
/// `log_sigmas` is `np.log` of the float32 table, itself float32. numpy's SIMD float32 log is
/// not always correctly rounded, and this uses the correctly rounded value, so the result can
/// differ from diffusers' in the last float32 bit (DPM-Solver rounds it to an integer anyway).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // `cumsum(dists >= 0).argmax()`: the last index whose log σ is ≤ log_sigma, else 0.
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - f64::from(l) >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    // `low - high` is a float32 difference in numpy; `low - log_sigma` is float64.
    let w = ((f64::from(low) - log_sigma) / f64::from(low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// `np.log` of the σ table (float32; see [`sigma_to_t`] on rounding).
pub(crate) fn log_sigmas(table: &[f32]) -> Vec<f32> {
    table.iter().map(|&s| f64::from(s).ln() as f32).collect()
}

/// The index of `timestep` in `timesteps` the way Euler looks it up (`index_for_timestep`):
/// the second match when it occurs twice (so that img2img, which starts in the middle, does not
/// skip a σ), else the first; `None` when absent.
pub(crate) fn index_for_timestep(timesteps: &[f64], timestep: f64) -> Option<usize> {
    let mut matches = timesteps
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == timestep)
        .map(|(i, _)| i);
    let first = matches.next()?;
    Some(matches.next().unwrap_or(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interp_is_exact_on_the_grid_and_linear_between() {
        let fp = [1.0f32, 2.0, 4.0];
        assert_eq!(interp(1.0, &fp), 2.0);
        assert_eq!(interp(1.5, &fp), 3.0);
        assert_eq!(interp(-1.0, &fp), 1.0);
        assert_eq!(interp(7.0, &fp), 4.0);
    }

    #[test]
    fn sigma_to_t_inverts_the_table() {
        let table: Vec<f32> = (0..10).map(|i| (i as f32 + 1.0) * 0.5).collect();
        let logs = log_sigmas(&table);
        assert!((sigma_to_t(f64::from(table[4]), &logs) - 4.0).abs() < 1e-6);
        assert_eq!(sigma_to_t(100.0, &logs), 9.0);
        assert_eq!(sigma_to_t(0.0, &logs), 0.0);
    }

    #[test]
    fn second_match_wins() {
        assert_eq!(index_for_timestep(&[3.0, 2.0, 2.0, 1.0], 2.0), Some(2));
        assert_eq!(index_for_timestep(&[3.0, 2.0, 1.0], 1.0), Some(2));
        assert_eq!(index_for_timestep(&[3.0, 2.0], 5.0), None);
    }
}
