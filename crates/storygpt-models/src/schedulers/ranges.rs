//! numpy and torch ranges reproduced bit for bit, and the timestep spacings built on them:
//! diffusers computes betas with `torch.linspace` and timesteps with `np.linspace` /
//! `np.arange`, and exact timesteps need the same arithmetic.

use super::TimestepSpacing;

/// `torch.linspace(start, end, steps, dtype=torch.float32)` bit for bit: torch's CPU kernel
/// computes `start + step·i` for the first half and `end − step·(steps−1−i)` for the second, in
/// float32, and its AVX2/AVX-512 builds fuse each into one multiply-add.
pub fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps <= 1 {
        return vec![start; steps];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// `numpy.linspace(start, stop, num)` (float64, endpoint included): `start + i·step`, with the
/// last value set to `stop`.
pub(crate) fn numpy_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = y.last_mut() {
        *last = stop;
    }
    y
}

/// `numpy.arange(start, stop, step)` for floats: `ceil((stop − start) / step)` values
/// `start + i·δ`, where numpy re-derives δ as `(start + step) − start`.
pub(crate) fn numpy_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| {
            if i == 1 {
                start + step
            } else {
                start + i as f64 * delta
            }
        })
        .collect()
}

/// The descending inference timesteps DDPM, DDIM and Euler share (diffusers' `set_timesteps`),
/// before rounding: `linspace` values are fractional here; DDPM / DDIM round them half to even,
/// Euler keeps them as float32.
pub(crate) fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_inference_steps: usize,
    num_train_timesteps: usize,
    steps_offset: usize,
) -> Vec<f64> {
    let (n, t) = (num_inference_steps, num_train_timesteps);
    match spacing {
        TimestepSpacing::Linspace => numpy_linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .rev()
            .collect(),
        TimestepSpacing::Leading => {
            let step_ratio = t / n;
            (0..n)
                .rev()
                .map(|i| (i * step_ratio + steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let step_ratio = t as f64 / n as f64;
            numpy_arange(t as f64, 0.0, -step_ratio)
                .into_iter()
                .map(|x| x.round_ties_even() - 1.0)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_linspace_matches_torch_values() {
        // Bit patterns of torch.linspace(a, b, 1000, dtype=torch.float32)[i] (torch 2.9, CPU).
        let linear = torch_linspace_f32(0.0001, 0.02, 1000);
        let scaled = torch_linspace_f32(0.00085f64.sqrt(), 0.012f64.sqrt(), 1000);
        let expected: [(&[f32], usize, u32); 8] = [
            (&linear, 0, 0x38d1_b717),
            (&linear, 1, 0x38fb_7d84),
            (&linear, 333, 0x3bdc_a34c),
            (&linear, 500, 0x3c24_d287),
            (&linear, 999, 0x3ca3_d70a),
            (&scaled, 1, 0x3cef_7eb8),
            (&scaled, 499, 0x3d8d_f216),
            (&scaled, 998, 0x3de0_2eae),
        ];
        for (values, i, bits) in expected {
            assert_eq!(values[i].to_bits(), bits, "index {i}: {}", values[i]);
        }
    }

    #[test]
    fn numpy_arange_counts_like_numpy() {
        // np.arange(1000, 0, -1000/7) has 7 values; np.arange(1000, 0, -100.0) has 10.
        assert_eq!(numpy_arange(1000.0, 0.0, -1000.0 / 7.0).len(), 7);
        assert_eq!(numpy_arange(1000.0, 0.0, -100.0).len(), 10);
    }
}
