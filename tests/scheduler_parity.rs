//! The six noise schedulers against diffusers 0.42.1 on `tests/fixtures/schedulers/<config>/`:
//! exact timesteps and ᾱ / σ tables, `init_noise_sigma`, `add_noise`, and whole sampling loops
//! (every `scale_model_input` and `step` output, max |diff| ≤ 1e-4) driven by a deterministic
//! stand-in for the UNet, with the stochastic schedulers replaying diffusers' noise.
//!
//! Regenerate: `.venv/bin/python scripts/reference/generate.py --only schedulers`.

use std::collections::{BTreeMap, VecDeque};
use std::f64::consts::PI;
use std::path::Path;

use crate::common::*;
use burn::tensor::{Device, Tensor, TensorData};
use storygpt::core::{NoiseScheduler, NoiseSource};
use storygpt::models::schedulers::{
    DdimScheduler, DdpmScheduler, DpmSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler, PndmScheduler, SchedulerKind, load_scheduler,
};

/// Max |ours − diffusers| for every `model_input_i`, `prev_i` and `noisy` tensor.
const TOL: f32 = 1e-4;

/// The stand-in denoiser, as in `sched_model_fn` of `scripts/reference/generate.py`:
/// `model_input · (0.8 · cos(t / 1000 · π / 2)) + 0.05 · sin(t / 100)`.
fn model_fn(model_input: Tensor<TB, 4>, t: f64) -> Tensor<TB, 4> {
    model_input
        .mul_scalar(0.8 * (t / 1000.0 * PI / 2.0).cos())
        .add_scalar(0.05 * (t / 100.0).sin())
}

/// Hands out the noise diffusers drew (`noise_{i}` of the golden), in order.
struct ReplayNoise(VecDeque<Tensor<TB, 4>>);

impl NoiseSource<TB> for ReplayNoise {
    fn noise(&mut self, shape: [usize; 4], _device: &Device<TB>) -> Tensor<TB, 4> {
        let z = self
            .0
            .pop_front()
            .expect("the scheduler drew more noise than diffusers did");
        assert_eq!(z.dims(), shape, "noise shape");
        z
    }
}

type Golden = BTreeMap<String, TensorData>;

/// The step count the fixture ran (PLMS visits more timesteps than that).
fn num_inference_steps(g: &Golden) -> usize {
    f64s(g, "num_inference_steps")[0] as usize
}

fn f64s(g: &Golden, key: &str) -> Vec<f64> {
    g.get(key)
        .unwrap_or_else(|| panic!("golden has no `{key}`"))
        .clone()
        .convert::<f64>()
        .to_vec()
        .unwrap()
}

/// Max |ours − reference| over `ours`, failing with the worst element when above `TOL`.
fn compare(what: &str, ours: Tensor<TB, 4>, reference: &TensorData) -> f32 {
    let ours = ours.into_data().convert::<f32>();
    assert_eq!(ours.shape, reference.shape, "{what}: shape");
    let a: Vec<f32> = ours.to_vec().unwrap();
    let b: Vec<f32> = reference.clone().convert::<f32>().to_vec().unwrap();
    let (mut worst, mut at) = (0f32, 0);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let d = (x - y).abs();
        if d.is_nan() || d > worst {
            (worst, at) = (d, i);
        }
    }
    assert!(
        worst <= TOL,
        "{what}: max |diff| = {worst:e} > {TOL:e} at index {at}: rust={} python={}",
        a[at],
        b[at]
    );
    worst
}

fn class_of(dir: &Path) -> SchedulerKind {
    SchedulerKind::from_dir(dir).unwrap_or_else(|e| panic!("{e}"))
}

/// The scheduler of `dir` built by its concrete type's `from_dir`, with η from the golden.
fn concrete(dir: &Path, g: &Golden) -> Box<dyn NoiseScheduler<TB>> {
    let eta = g.get("eta").map(|_| f64s(g, "eta")[0]).unwrap_or(0.0);
    match class_of(dir) {
        SchedulerKind::Ddpm => Box::new(DdpmScheduler::from_dir(dir).unwrap()),
        SchedulerKind::Ddim => Box::new(DdimScheduler::from_dir(dir).unwrap().with_eta(eta)),
        SchedulerKind::Pndm => Box::new(PndmScheduler::<TB>::from_dir(dir).unwrap()),
        SchedulerKind::EulerDiscrete => Box::new(EulerDiscreteScheduler::from_dir(dir).unwrap()),
        SchedulerKind::EulerAncestralDiscrete => {
            Box::new(EulerAncestralDiscreteScheduler::from_dir(dir).unwrap())
        }
        SchedulerKind::DpmSolverMultistep => {
            Box::new(DpmSolverMultistepScheduler::<TB>::from_dir(dir).unwrap())
        }
    }
}

/// ᾱ and (for the σ schedulers) σ tables after `set_timesteps(n)`, from the concrete types.
fn tables(dir: &Path, n: usize) -> (Vec<f64>, Option<Vec<f64>>) {
    fn set<S: NoiseScheduler<TB>>(mut s: S, n: usize) -> S {
        s.set_timesteps(n).unwrap();
        s
    }
    match class_of(dir) {
        SchedulerKind::Ddpm => (
            set(DdpmScheduler::from_dir(dir).unwrap(), n).alphas_cumprod,
            None,
        ),
        SchedulerKind::Ddim => (
            set(DdimScheduler::from_dir(dir).unwrap(), n).alphas_cumprod,
            None,
        ),
        SchedulerKind::Pndm => (
            set(PndmScheduler::<TB>::from_dir(dir).unwrap(), n).alphas_cumprod,
            None,
        ),
        SchedulerKind::EulerDiscrete => {
            let s = set(EulerDiscreteScheduler::from_dir(dir).unwrap(), n);
            (s.alphas_cumprod, Some(s.sigmas))
        }
        SchedulerKind::EulerAncestralDiscrete => {
            let s = set(EulerAncestralDiscreteScheduler::from_dir(dir).unwrap(), n);
            (s.alphas_cumprod, Some(s.sigmas))
        }
        SchedulerKind::DpmSolverMultistep => {
            let s = set(DpmSolverMultistepScheduler::<TB>::from_dir(dir).unwrap(), n);
            (s.alphas_cumprod, Some(s.sigmas))
        }
    }
}

/// Timesteps must be identical, except with Euler's Karras σ's: there fractional timesteps come
/// from mapping σ back to t through the log-σ table, and torch's CPU `sqrt` and numpy's
/// float32 `log` (SIMD) are not correctly rounded while ours are; the one-ulp differences in
/// those tables move a few timesteps by up to ~1e-4 (measured 3.1e-5, two float32 ulps at
/// t = 146). The timesteps only reach the model, so the trajectory still matches to 1e-4.
fn check_timesteps(folder: &str, ours: &[f64], reference: &[f64]) {
    assert_eq!(ours.len(), reference.len(), "{folder}: number of timesteps");
    let tol = if folder == "euler_karras" { 1e-4 } else { 0.0 };
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!(
            (a - b).abs() <= tol,
            "{folder}: timestep {i}: rust={a} python={b}"
        );
    }
}

/// Runs one fixture; returns the max |diff| over the trajectory and over `add_noise`.
fn run(folder: &str, scheduler: &mut dyn NoiseScheduler<TB>, g: &Golden) -> (f32, f32) {
    let reference_timesteps = f64s(g, "timesteps");
    let n = num_inference_steps(g);
    scheduler.set_timesteps(n).unwrap();
    check_timesteps(folder, scheduler.timesteps(), &reference_timesteps);
    let init_noise_sigma = f64s(g, "init_noise_sigma")[0];
    assert!(
        (scheduler.init_noise_sigma() - init_noise_sigma).abs() <= 1e-6,
        "{folder}: init_noise_sigma rust={} python={init_noise_sigma}",
        scheduler.init_noise_sigma()
    );

    // add_noise on the fresh schedule.
    let add_noise_diff = compare(
        &format!("{folder} add_noise"),
        scheduler.add_noise(float(g, "x0"), float(g, "noise"), &f64s(g, "t")),
        &g["noisy"],
    );

    // The sampling loop, from sample0 · init_noise_sigma.
    let timesteps = scheduler.timesteps().to_vec();
    let mut noise = ReplayNoise(
        (0..timesteps.len())
            .filter(|i| g.contains_key(&format!("noise_{i}")))
            .map(|i| float(g, &format!("noise_{i}")))
            .collect(),
    );
    let mut sample = float::<4>(g, "sample0").mul_scalar(scheduler.init_noise_sigma());
    let mut worst = 0f32;
    for (i, &t) in timesteps.iter().enumerate() {
        let model_input = scheduler.scale_model_input(sample.clone(), t);
        worst = worst.max(compare(
            &format!("{folder} model_input_{i} (t={t})"),
            model_input.clone(),
            &g[&format!("model_input_{i}")],
        ));
        let model_output = model_fn(model_input, t);
        sample = scheduler.step(model_output, t, sample, &mut noise);
        worst = worst.max(compare(
            &format!("{folder} prev_{i} (t={t})"),
            sample.clone(),
            &g[&format!("prev_{i}")],
        ));
    }
    assert!(
        noise.0.is_empty(),
        "{folder}: diffusers drew {} more noise tensor(s)",
        noise.0.len()
    );
    (worst, add_noise_diff)
}

fn check(folder: &str) {
    let dir = fixture(&format!("schedulers/{folder}"));
    let g = golden(&format!("schedulers/{folder}"));

    // Tables, bit for bit (float32 values).
    let n = num_inference_steps(&g);
    let (alphas_cumprod, sigmas) = tables(&dir, n);
    let reference = f64s(&g, "alphas_cumprod");
    assert_eq!(alphas_cumprod.len(), reference.len());
    for (i, (a, b)) in alphas_cumprod.iter().zip(&reference).enumerate() {
        assert!(a == b, "{folder}: alphas_cumprod[{i}]: rust={a} python={b}");
    }
    // σ tables to one float32 ulp: torch's CPU `sqrt` is not correctly rounded
    // (190 of the 1000 SD σ's are one ulp off); ours is.
    if let Some(sigmas) = sigmas {
        let reference = f64s(&g, "sigmas");
        assert_eq!(sigmas.len(), reference.len(), "{folder}: number of sigmas");
        for (i, (a, b)) in sigmas.iter().zip(&reference).enumerate() {
            let ulp = f64::from(f32::EPSILON) * b.abs();
            assert!(
                (a - b).abs() <= ulp,
                "{folder}: sigmas[{i}]: rust={a} python={b}"
            );
        }
    }

    // The trajectory through load_scheduler (η comes from the golden, so ddim_eta only checks
    // the schedule there) and through the concrete type.
    let mut loaded = load_scheduler::<TB>(&dir).unwrap_or_else(|e| panic!("{e}"));
    if g.contains_key("eta") {
        loaded.set_timesteps(n).unwrap();
        check_timesteps(folder, loaded.timesteps(), &f64s(&g, "timesteps"));
    } else {
        run(folder, loaded.as_mut(), &g);
    }
    let (worst, add_noise_diff) = run(folder, concrete(&dir, &g).as_mut(), &g);
    eprintln!(
        "{folder:22} steps {:2}  max |diff| trajectory {worst:.3e}  add_noise {add_noise_diff:.3e}",
        f64s(&g, "timesteps").len()
    );
}

macro_rules! parity {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { check(stringify!($name)); })*

        /// Every fixture folder has a test above.
        #[test]
        fn every_fixture_is_tested() {
            let tested = [$(stringify!($name)),*];
            let dir = fixture("schedulers");
            let mut missing = Vec::new();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                if !tested.contains(&name.as_str()) {
                    missing.push(name);
                }
            }
            assert!(missing.is_empty(), "untested fixtures: {missing:?}");
        }
    };
}

parity!(
    ddpm,
    ddpm_v,
    ddpm_sample,
    ddpm_fixed_large_log,
    ddim,
    ddim_25,
    ddim_trailing,
    ddim_eta,
    ddim_v,
    linear_betas,
    cosine,
    pndm,
    pndm_25,
    pndm_prk,
    euler,
    euler_leading,
    euler_v,
    euler_karras,
    euler_ancestral,
    dpmpp2m,
    dpmpp2m_karras,
    dpmpp_v,
    dpmpp1,
    dpmpp3m,
    dpmpp2m_heun,
    dpmpp2m_sde,
);

#[test]
fn ddim_and_pndm_take_the_same_first_step() {
    // offline-assets.md §2.3: from the same x and ε, the first DDIM and PLMS steps agree (PLMS
    // starts with the transfer φ of eq. 9, which is DDIM's η = 0 update).
    let g = golden("schedulers/ddim");
    let x = float::<4>(&g, "sample0");
    let mut ddim = load_scheduler::<TB>(fixture("schedulers/ddim")).unwrap();
    let mut pndm = load_scheduler::<TB>(fixture("schedulers/pndm")).unwrap();
    ddim.set_timesteps(10).unwrap();
    pndm.set_timesteps(10).unwrap();
    let eps = model_fn(x.clone(), 901.0);
    let mut none = ReplayNoise(VecDeque::new());
    let a = ddim.step(eps.clone(), 901.0, x.clone(), &mut none);
    let b = pndm.step(eps, 901.0, x, &mut none);
    let diff: f32 = (a - b).abs().max().into_scalar();
    assert!(diff < 1e-5, "{diff}");
}
