//! Prints a completion from a causal LM folder (Llama or OPT, Hugging Face layout).
//!
//! ```bash
//! bash scripts/assets/build.sh smollm2-135m        # real SmolLM2-135M, built offline
//! cargo run --release --example llm_generate -- "Fred walks into the kitchen. He"
//! cargo run --release --example llm_generate -- --model DIR --tokens 48 --top-p 0.9 \
//!     --temperature 0.8 --seed 7 "Once upon a time,"
//! ```
//!
//! Without `--model`, the SmolLM2 asset (`target/storygpt-assets/smollm2-135m`) is used.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData};
use storygpt::backend::{DefaultBackend as B, default_device};
use storygpt::core::generation::{Decoding, GenerateConfig, generate};
use storygpt::core::{Error, LlmBackbone};
use storygpt::models::llama::LlamaForCausalLM;
use storygpt::models::llm_tokenizer::LlmTokenizer;
use storygpt::models::opt::OptForCausalLM;

fn main() -> storygpt::Result<()> {
    let mut model_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/storygpt-assets/smollm2-135m");
    let (mut tokens, mut top_p, mut temperature, mut seed) = (32usize, None, 1.0f32, 0u64);
    let mut prompt = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| Error::InvalidInput(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--model" => model_dir = PathBuf::from(value()?),
            "--tokens" => {
                tokens = value()?
                    .parse()
                    .map_err(|e| Error::InvalidInput(format!("--tokens: {e}")))?
            }
            "--top-p" => {
                top_p = Some(
                    value()?
                        .parse()
                        .map_err(|e| Error::InvalidInput(format!("--top-p: {e}")))?,
                )
            }
            "--temperature" => {
                temperature = value()?
                    .parse()
                    .map_err(|e| Error::InvalidInput(format!("--temperature: {e}")))?
            }
            "--seed" => {
                seed = value()?
                    .parse()
                    .map_err(|e| Error::InvalidInput(format!("--seed: {e}")))?
            }
            _ => prompt.push(a),
        }
    }
    let prompt = if prompt.is_empty() {
        "Fred walks into the kitchen. He".to_string()
    } else {
        prompt.join(" ")
    };
    if !model_dir.join("config.json").is_file() {
        eprintln!(
            "no model at {}: build SmolLM2 with `bash scripts/assets/build.sh smollm2-135m`, or pass --model DIR",
            model_dir.display()
        );
        std::process::exit(2);
    }
    let config: serde_json::Value =
        storygpt::core::config::read_json(model_dir.join("config.json"))?;
    let device = default_device();
    let t = Instant::now();
    let model: Box<dyn LlmBackbone<B>> = match config["model_type"].as_str() {
        Some("opt") => Box::new(OptForCausalLM::<B>::from_pretrained(&model_dir, &device)?),
        _ => Box::new(LlamaForCausalLM::<B>::from_pretrained(&model_dir, &device)?),
    };
    let tok = LlmTokenizer::from_dir(&model_dir)?;
    eprintln!(
        "loaded {} in {:.1} s",
        model_dir.display(),
        t.elapsed().as_secs_f64()
    );

    let ids = tok.encode(&prompt)?;
    let n = ids.len();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.into_iter().map(i64::from).collect(), [1, n]),
        &device,
    );
    let mut cfg = GenerateConfig::greedy(tokens).with_stop_tokens(tok.eos_token_id());
    if let Some(top_p) = top_p {
        cfg = cfg.with_decoding(Decoding::Sample {
            temperature,
            top_p,
            seed,
        });
    }
    let t = Instant::now();
    let out = generate(model.as_ref(), input, None, &cfg, &[])?;
    let secs = t.elapsed().as_secs_f64();
    let text = tok.decode(&out.tokens[0], true)?;
    println!("{prompt}{text}");
    eprintln!(
        "{} tokens in {secs:.2} s ({:.1} tokens/s, prompt {n} tokens)",
        out.tokens[0].len(),
        out.tokens[0].len() as f64 / secs
    );
    Ok(())
}
