//! Optimisation pieces burn 0.21 leaves to the caller: PyTorch-equivalent AdamW settings, the
//! learning-rate schedules, **global**-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`,
//! not burn's per-tensor clipping) and an exponential moving average of the weights.

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use std::collections::HashMap;

use super::config::{LrSchedule, TrainConfig};

/// AdamW with the config's β, ε and decoupled weight decay (burn's defaults differ from
/// PyTorch's; these are PyTorch's unless the config says otherwise).
pub fn adamw(cfg: &TrainConfig) -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(cfg.beta1 as f32)
        .with_beta_2(cfg.beta2 as f32)
        .with_epsilon(cfg.eps as f32)
        .with_weight_decay(cfg.weight_decay as f32)
}

/// The learning rate at optimizer step `step` (0-based) of `total`.
///
/// 1. warm-up (if any): `lr · (step + 1) / warmup`;
/// 2. then constant, stepped (`lr · γ^⌊(step − warmup) / step_size⌋`) or cosine
///    (`min + (lr − min)(1 + cos(π t)) / 2`, `t` from 0 after warm-up to 1 at the last step).
pub fn learning_rate(schedule: &LrSchedule, lr: f64, step: usize, total: usize) -> f64 {
    let warm = |warmup: usize| -> Option<f64> {
        (step < warmup).then(|| lr * (step + 1) as f64 / warmup as f64)
    };
    match *schedule {
        LrSchedule::Constant => lr,
        LrSchedule::WarmupStep {
            warmup,
            step_size,
            gamma,
        } => warm(warmup)
            .unwrap_or_else(|| lr * gamma.powi(((step - warmup) / step_size.max(1)) as i32)),
        LrSchedule::Cosine { warmup, min_lr } => warm(warmup).unwrap_or_else(|| {
            let span = total.saturating_sub(warmup + 1).max(1) as f64;
            let t = ((step - warmup) as f64 / span).min(1.0);
            min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }),
    }
}

/// Sums the squares of every gradient of `module`'s parameters.
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s: f64 = g.powf_scalar(2.0).sum().into_scalar().elem();
            self.total += s;
        }
    }
}

/// Multiplies every gradient of `module`'s parameters by a factor.
struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// The global L2 norm of all gradients of `module`.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut v = SquaredNorm::<B> {
        grads,
        total: 0.0,
        _b: std::marker::PhantomData,
    };
    module.visit(&mut v);
    v.total.sqrt()
}

/// `clip_grad_norm_(max_norm)`: scales all gradients by `max / (norm + 1e-6)` when the global
/// norm exceeds `max`. Returns the norm before clipping.
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = grad_norm::<B, M>(module, grads);
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        scale_grads::<B, M>(module, grads, coef);
    }
    norm
}

/// Multiplies all gradients of `module` by `factor`.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    let mut v = Scale::<B> {
        grads,
        factor,
        _b: std::marker::PhantomData,
    };
    module.visit(&mut v);
}

/// Adds `other`'s gradients into `acc` (gradient accumulation over micro-batches).
pub fn accumulate_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    acc: &mut GradientsParams,
    mut other: GradientsParams,
) {
    struct Add<'a, B: AutodiffBackend> {
        acc: &'a mut GradientsParams,
        other: &'a mut GradientsParams,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Add<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.other.remove::<B::InnerBackend, D>(param.id) {
                let sum = match self.acc.remove::<B::InnerBackend, D>(param.id) {
                    Some(a) => a + g,
                    None => g,
                };
                self.acc.register(param.id, sum);
            }
        }
    }
    module.visit(&mut Add::<B> {
        acc,
        other: &mut other,
        _b: std::marker::PhantomData,
    });
}

/// An exponential moving average of a module's trained float parameters, kept on the inner
/// backend. Frozen parameters (no gradient) keep their values bit for bit: blending an unchanged
/// value with itself would round it.
#[derive(Debug, Clone)]
pub struct Ema<M> {
    /// The averaged module.
    pub module: M,
    /// Maximum decay.
    pub decay: f64,
}

struct Collect<B: Backend> {
    values: HashMap<ParamId, Vec<f32>>,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.val().is_require_grad() {
            return;
        }
        let v = param
            .val()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        self.values.insert(param.id, v);
    }
}

struct Blend<B: Backend> {
    values: HashMap<ParamId, Vec<f32>>,
    decay: f32,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleMapper<B> for Blend<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(new) = self.values.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let shape = tensor.shape();
        let device = tensor.device();
        let fresh = Tensor::<B, D>::from_data(burn::tensor::TensorData::new(new, shape), &device);
        let blended = tensor * self.decay + fresh * (1.0 - self.decay);
        Param::from_mapped_value(id, blended, mapper)
    }
}

impl<M> Ema<M> {
    /// Starts the average at `module`'s current weights.
    pub fn new(module: M, decay: f64) -> Self {
        Self { module, decay }
    }

    /// `ema ← d·ema + (1 − d)·θ` with `d = min(decay, (1 + step) / (10 + step))`, for every
    /// parameter of the autodiff module `current` that requires a gradient.
    pub fn update<B: AutodiffBackend, AM: AutodiffModule<B, InnerModule = M>>(
        &mut self,
        current: &AM,
        step: usize,
    ) where
        M: Module<B::InnerBackend> + Clone,
    {
        let d = self.decay.min((1.0 + step as f64) / (10.0 + step as f64)) as f32;
        let mut c = Collect::<B> {
            values: HashMap::new(),
            _b: std::marker::PhantomData,
        };
        current.visit(&mut c);
        let mut blend = Blend::<B::InnerBackend> {
            values: c.values,
            decay: d,
            _b: std::marker::PhantomData,
        };
        self.module = self.module.clone().map(&mut blend);
    }
}

/// Transformers-style initialisation for training from scratch: every rank-2 weight
/// (linear layers, embeddings) drawn from N(0, `std`²) (`initializer_range`, 0.02 for Llama),
/// biases zero, norms untouched. Burn's defaults (N(0, 1) embeddings) make a tied LM head
/// produce logits of order √d at initialisation.
pub fn init_transformer<B: Backend, M: Module<B>>(module: M, std: f64, seed: u64) -> M {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    struct Init {
        rng: rand_chacha::ChaCha8Rng,
        std: f64,
        path: Vec<String>,
    }
    impl<B: Backend> ModuleMapper<B> for Init {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let shape = tensor.shape();
            let device = tensor.device();
            let n: usize = shape.num_elements();
            let is_bias = self.path.last().is_some_and(|p| p == "bias");
            let values: Option<Vec<f32>> = if D == 2 {
                let dist = Normal::new(0.0, self.std).unwrap_or_else(|_| unreachable!("std > 0"));
                Some((0..n).map(|_| dist.sample(&mut self.rng) as f32).collect())
            } else if is_bias {
                Some(vec![0.0; n])
            } else {
                None
            };
            let out = match values {
                Some(v) => {
                    let req = tensor.is_require_grad();
                    Tensor::<B, D>::from_data(burn::tensor::TensorData::new(v, shape), &device)
                        .set_require_grad(req)
                }
                None => tensor,
            };
            Param::from_mapped_value(id, out, mapper)
        }
    }
    module.map(&mut Init {
        rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
        std: std.max(1e-12),
        path: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let s = LrSchedule::WarmupStep {
            warmup: 4,
            step_size: 10,
            gamma: 0.1,
        };
        assert!((learning_rate(&s, 1.0, 0, 100) - 0.25).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 3, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 13, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&s, 1.0, 14, 100) - 0.1).abs() < 1e-12);
        let c = LrSchedule::Cosine {
            warmup: 0,
            min_lr: 0.0,
        };
        assert!((learning_rate(&c, 2.0, 0, 11) - 2.0).abs() < 1e-12);
        assert!((learning_rate(&c, 2.0, 5, 11) - 1.0).abs() < 1e-12);
        assert!(learning_rate(&c, 2.0, 10, 11).abs() < 1e-12);
        assert_eq!(learning_rate(&LrSchedule::Constant, 3.0, 7, 10), 3.0);
    }
}
