//! Side-by-side benchmark of OPT against transformers (`scripts/reference/bench_llm.py`): an
//! OPT-1.3B-shaped model with random weights, prefill of 160 tokens (f32 and bf16) and 32 greedy
//! decode steps with the KV cache. Prints one JSON line per benchmark, like the Python script.
//!
//! ```bash
//! RAYON_NUM_THREADS=2 cargo run --release --example bench_llm -- --iters 3
//! .venv/bin/python scripts/reference/bench_llm.py --threads 2 --iters 3
//! ```
//! See `docs/perf.md` for recorded numbers.

use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use storygpt::backend::{BackendKind, DefaultBackend as B, default_device};
use storygpt::core::LlmBackbone;
use storygpt::core::generation::{GenerateConfig, generate};
use storygpt::core::weights::cast_floats;
use storygpt::models::opt::{OptConfig, OptForCausalLM};

const PROMPT: usize = 160;
const NEW: usize = 32;

fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

fn main() -> storygpt::Result<()> {
    let mut iters = 3;
    let mut dtypes = vec!["f32".to_string(), "bf16".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iters" => iters = args.next().and_then(|v| v.parse().ok()).unwrap_or(iters),
            "--dtypes" => {
                dtypes = args
                    .next()
                    .map(|v| v.split(',').map(str::to_string).collect())
                    .unwrap_or(dtypes)
            }
            _ => {}
        }
    }
    let device = default_device();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let backend = BackendKind::default_kind().name();
    let config = OptConfig::opt_1_3b();
    let t0 = Instant::now();
    let mut model = OptForCausalLM::<B>::new(&config, &device)?;
    let init_s = t0.elapsed().as_secs_f64();
    // The same ids in every run (any ids work: the weights are random).
    let ids: Vec<i64> = (0..PROMPT as i64).map(|i| 3 + (i * 7919) % 50000).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, PROMPT]), &device);
    let params = config.vocab_size * config.hidden_size
        + config.num_hidden_layers
            * (4 * config.hidden_size * config.hidden_size
                + 2 * config.hidden_size * config.ffn_dim);
    let gflop = 2.0 * PROMPT as f64 * params as f64 / 1e9;

    for dtype in &dtypes {
        if dtype == "bf16" {
            model = cast_floats(model, DType::BF16);
        }
        let prefill = || {
            let out = model.forward(ids.clone(), None, None, false).unwrap();
            let _ = out.logits.slice([0..1, 0..1, 0..1]).into_data();
            B::sync(&device).ok();
        };
        prefill();
        let times: Vec<f64> = (0..iters)
            .map(|_| {
                let t = Instant::now();
                prefill();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let (med, min) = median(times);
        println!(
            "{{\"bench\": \"opt1.3b_prefill{PROMPT}_{dtype}\", \"backend\": \"{backend}\", \"threads\": \"{threads}\", \"median_ms\": {med:.1}, \"min_ms\": {min:.1}, \"iters\": {iters}, \"gflop\": {gflop:.1}, \"gflop_per_s\": {:.1}, \"init_s\": {init_s:.1}}}",
            gflop / (med / 1e3)
        );

        // Decode: time generate(1 token) (= the prefill) and generate(1 + 32); the difference is
        // the 32 one-token steps with the cache.
        let run = |n: usize| {
            let t = Instant::now();
            let out = generate(&model, ids.clone(), None, &GenerateConfig::greedy(n), &[]).unwrap();
            assert_eq!(out.tokens[0].len(), n);
            t.elapsed().as_secs_f64() * 1e3
        };
        run(2);
        let steps: Vec<f64> = (0..iters).map(|_| run(NEW + 1) - run(1)).collect();
        let (med, min) = median(steps);
        println!(
            "{{\"bench\": \"opt1.3b_decode{NEW}_{dtype}\", \"backend\": \"{backend}\", \"threads\": \"{threads}\", \"median_ms\": {med:.1}, \"min_ms\": {min:.1}, \"iters\": {iters}, \"tokens_per_s\": {:.2}, \"vocab\": {}}}",
            NEW as f64 / (med / 1e3),
            model.vocab_size()
        );
    }
    Ok(())
}
