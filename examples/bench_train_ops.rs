//! Forward + backward timings of the layers the story-world stages train, on the default
//! backend under autodiff: where does a training step go?
//!
//! ```text
//! cargo run --release --example bench_train_ops
//! ```

use std::time::Instant;

use burn::backend::Autodiff;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{GroupNormConfig, PaddingConfig2d};
use burn::tensor::{Distribution, Tensor};
use storygpt::backend::{DefaultBackend, default_device};

type B = Autodiff<DefaultBackend>;

fn time<F: FnMut()>(name: &str, mut f: F) {
    f();
    let n = 3;
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    println!(
        "{name:50} {:8.1} ms",
        t.elapsed().as_secs_f64() * 1e3 / n as f64
    );
}

fn main() {
    let dev = default_device();
    for (c, s) in [(32usize, 64usize), (64, 32), (64, 16), (128, 16), (128, 8)] {
        let conv = Conv2dConfig::new([c, c], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init::<B>(&dev);
        let x = Tensor::<B, 4>::random([16, c, s, s], Distribution::Normal(0.0, 1.0), &dev);
        let gflop = 2.0 * 9.0 * (c * c * s * s * 16) as f64 / 1e9;
        time(
            &format!("conv3x3 {c}ch {s}² b16 fwd ({gflop:.2} GFLOP)"),
            || {
                let _ = conv.forward(x.clone()).sum().into_scalar();
            },
        );
        let xg = x.clone().require_grad();
        time(&format!("conv3x3 {c}ch {s}² b16 fwd+bwd"), || {
            let y = conv.forward(xg.clone()).sum();
            let _ = y.backward();
        });
        let gn = GroupNormConfig::new(16, c).init::<B>(&dev);
        time(&format!("groupnorm {c}ch {s}² b16 fwd+bwd"), || {
            let y = gn.forward(xg.clone()).sum();
            let _ = y.backward();
        });
        time(&format!("manual groupnorm {c}ch {s}² b16 fwd+bwd"), || {
            let [b, ch, h, w] = xg.dims();
            let g = 16;
            let xr = xg.clone().reshape([b, g, ch / g * h * w]);
            let mean = xr.clone().mean_dim(2);
            let xc = xr - mean;
            let var = (xc.clone() * xc.clone()).mean_dim(2);
            let xn = (xc / (var + 1e-5).sqrt()).reshape([b, ch, h, w]);
            let gamma = gn.gamma.as_ref().unwrap().val().reshape([1, ch, 1, 1]);
            let beta = gn.beta.as_ref().unwrap().val().reshape([1, ch, 1, 1]);
            let y = (xn * gamma + beta).sum();
            let _ = y.backward();
        });
    }
}
