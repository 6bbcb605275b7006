//! FID statistics and Fréchet distance at pytorch-fid's width (2048), side by side with
//! `scripts/reference/bench_fid.py` (numpy + scipy, pytorch-fid's `calculate_frechet_distance`).
//!
//! ```text
//! cargo run --release --example bench_fid -- [SAMPLES] [DIM] [REPEATS]
//! ```
//!
//! Both draw the same kind of features (a random mixing matrix applied to Gaussian noise, so
//! the covariances are full and correlated) and report the median of `REPEATS` runs of each
//! stage: mean + covariance of two sets, then the distance.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use storygpt::eval::fid::{GaussianStats, frechet_distance};

fn features(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let k = 64;
    let mix: Vec<f32> = (0..k * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut out = vec![0f32; n * d];
    for i in 0..n {
        let z: Vec<f32> = (0..k).map(|_| rng.random_range(-1.0..1.0)).collect();
        for j in 0..d {
            let mut v = rng.random_range(-0.1..0.1);
            for (t, zt) in z.iter().enumerate() {
                v += zt * mix[t * d + j];
            }
            out[i * d + j] = v;
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> storygpt::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().ok());
    let n = args.next().flatten().unwrap_or(2000);
    let d = args.next().flatten().unwrap_or(2048);
    let repeats = args.next().flatten().unwrap_or(3);
    let (a, b) = (features(n, d, 1), features(n, d, 2));
    let (mut t_stats, mut t_dist) = (Vec::new(), Vec::new());
    let mut value = 0.0;
    for _ in 0..repeats {
        let t0 = Instant::now();
        let sa = GaussianStats::from_features(&a, d)?;
        let sb = GaussianStats::from_features(&b, d)?;
        t_stats.push(t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        value = frechet_distance(&sa, &sb)?;
        t_dist.push(t1.elapsed().as_secs_f64());
    }
    println!(
        "storygpt fid n={n} d={d}: stats {:.3} s, distance {:.3} s (median of {repeats}); FID {value:.4}",
        median(t_stats),
        median(t_dist)
    );
    Ok(())
}
