//! Autoregressive generation for any [`LlmBackbone`]: greedy or top-p/temperature sampling,
//! stop tokens, and logit processors (StoryGPT-V forces `[IMG0]` by masking every other logit).
//!
//! The loop mirrors transformers' `generate` for decoder-only models:
//! - the prompt is one batch of embeddings (so visual tokens can be spliced in) with an optional
//!   padding mask; rows must be **left**-padded, so that every row's last position is a real
//!   token;
//! - with the KV cache (default), the prompt runs once and each step feeds one token;
//!   without it, every step recomputes the whole sequence (what the original code does);
//! - a row that emits a stop token is finished: its later slots hold `pad_token_id`, and the loop
//!   ends when every row is finished or `max_new_tokens` is reached.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, KvCache, LlmBackbone, Result};

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoding {
    /// The highest logit (the first one on ties, like `torch.argmax`).
    Greedy,
    /// Nucleus sampling: logits / `temperature`, keep the smallest set of most likely tokens
    /// whose probability reaches `top_p`, sample from it with a seeded generator.
    Sample {
        /// Softmax temperature (> 0).
        temperature: f32,
        /// Probability mass kept, in `(0, 1]`.
        top_p: f32,
        /// Seed of the sampler (ChaCha8).
        seed: u64,
    },
}

/// Options of [`generate`].
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    /// Upper bound on new tokens per row.
    pub max_new_tokens: usize,
    /// Greedy or sampling.
    pub decoding: Decoding,
    /// Tokens that finish a row (emitted, then padding follows).
    pub stop_tokens: Vec<u32>,
    /// Filler for rows that finished early.
    pub pad_token_id: u32,
    /// Reuse keys/values across steps (`false` recomputes the whole sequence every step).
    pub use_cache: bool,
}

impl GenerateConfig {
    /// Greedy decoding of up to `max_new_tokens` tokens, no stop tokens, with the cache.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            decoding: Decoding::Greedy,
            stop_tokens: Vec::new(),
            pad_token_id: 0,
            use_cache: true,
        }
    }

    /// Sets the stop tokens.
    pub fn with_stop_tokens(mut self, tokens: impl IntoIterator<Item = u32>) -> Self {
        self.stop_tokens = tokens.into_iter().collect();
        self
    }

    /// Sets the padding token of finished rows.
    pub fn with_pad_token_id(mut self, pad: u32) -> Self {
        self.pad_token_id = pad;
        self
    }

    /// Sets the decoding strategy.
    pub fn with_decoding(mut self, decoding: Decoding) -> Self {
        self.decoding = decoding;
        self
    }

    /// Enables or disables the KV cache.
    pub fn with_cache(mut self, use_cache: bool) -> Self {
        self.use_cache = use_cache;
        self
    }

    fn validate(&self) -> Result<()> {
        if let Decoding::Sample {
            temperature, top_p, ..
        } = self.decoding
            && !(temperature > 0.0 && top_p > 0.0 && top_p <= 1.0)
        {
            return Err(Error::InvalidInput(format!(
                "sampling needs temperature > 0 and top_p in (0, 1], got {temperature} and {top_p}"
            )));
        }
        Ok(())
    }
}

/// Changes the next-token logits of one row before the choice (transformers'
/// `LogitsProcessor`).
pub trait LogitsProcessor {
    /// `step` counts generated tokens (0 for the first); `logits` has one entry per token.
    fn process(&self, step: usize, logits: &mut [f32]);
}

/// Allows only the given tokens (all other logits become −∞) during the first `steps` steps
/// (`None`: every step). StoryGPT-V uses `AllowOnly::new([img0]).for_steps(1)` to force `[IMG0]`.
#[derive(Debug, Clone)]
pub struct AllowOnly {
    tokens: Vec<u32>,
    steps: Option<usize>,
}

impl AllowOnly {
    /// Allows only `tokens`, at every step.
    pub fn new(tokens: impl IntoIterator<Item = u32>) -> Self {
        Self {
            tokens: tokens.into_iter().collect(),
            steps: None,
        }
    }

    /// Restricts the rule to the first `steps` steps.
    pub fn for_steps(mut self, steps: usize) -> Self {
        self.steps = Some(steps);
        self
    }
}

impl LogitsProcessor for AllowOnly {
    fn process(&self, step: usize, logits: &mut [f32]) {
        if self.steps.is_some_and(|n| step >= n) {
            return;
        }
        let kept: Vec<(usize, f32)> = self
            .tokens
            .iter()
            .filter_map(|&t| logits.get(t as usize).map(|&v| (t as usize, v)))
            .collect();
        logits.fill(f32::NEG_INFINITY);
        for (t, v) in kept {
            logits[t] = v;
        }
    }
}

/// Forbids the given tokens (their logits become −∞) at every step.
#[derive(Debug, Clone)]
pub struct Suppress(pub Vec<u32>);

impl LogitsProcessor for Suppress {
    fn process(&self, _step: usize, logits: &mut [f32]) {
        for &t in &self.0 {
            if let Some(v) = logits.get_mut(t as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
    }
}

/// What [`generate`] returns.
#[derive(Debug, Clone)]
pub struct GenerateOutput<B: Backend> {
    /// New tokens, `[batch][n]` with the same `n` for every row (stop token included, then
    /// `pad_token_id`), as transformers returns them after the prompt.
    pub tokens: Vec<Vec<u32>>,
    /// Whether each row emitted a stop token.
    pub finished: Vec<bool>,
    /// The cache after the last step (prompt + all fed tokens), when `use_cache`.
    pub cache: Option<KvCache<B>>,
}

/// Generates from token ids (`[batch, seq]`, left-padded when `attention_mask` is given).
pub fn generate<B: Backend, M: LlmBackbone<B> + ?Sized>(
    model: &M,
    input_ids: Tensor<B, 2, Int>,
    attention_mask: Option<Tensor<B, 2, Int>>,
    config: &GenerateConfig,
    processors: &[&dyn LogitsProcessor],
) -> Result<GenerateOutput<B>> {
    crate::check_token_ids(&input_ids, model.vocab_size())?;
    let embeds = model.embed_tokens(input_ids);
    generate_from_embeds(model, embeds, attention_mask, config, processors)
}

/// Generates from prompt embeddings `[batch, seq, embed_dim]` (text and spliced visual tokens).
pub fn generate_from_embeds<B: Backend, M: LlmBackbone<B> + ?Sized>(
    model: &M,
    inputs_embeds: Tensor<B, 3>,
    attention_mask: Option<Tensor<B, 2, Int>>,
    config: &GenerateConfig,
    processors: &[&dyn LogitsProcessor],
) -> Result<GenerateOutput<B>> {
    config.validate()?;
    let [batch, seq, _] = inputs_embeds.dims();
    let device = inputs_embeds.device();
    let mut mask: Vec<Vec<i64>> = match attention_mask {
        None => vec![vec![1; seq]; batch],
        Some(m) => {
            let dims = m.dims();
            if dims != [batch, seq] {
                return Err(Error::InputShape {
                    what: "generate attention_mask".into(),
                    expected: format!("[{batch}, {seq}]"),
                    found: dims.to_vec(),
                });
            }
            let v = m
                .into_data()
                .convert::<i64>()
                .into_vec::<i64>()
                .map_err(|e| Error::InvalidInput(format!("attention_mask: {e:?}")))?;
            v.chunks(seq.max(1)).map(<[i64]>::to_vec).collect()
        }
    };
    if mask.iter().any(|row| row.last() != Some(&1)) {
        return Err(Error::InvalidInput(
            "generate needs left padding: the last position of every row must be a real token \
             (attention_mask 1)"
                .into(),
        ));
    }
    let needed = seq + config.max_new_tokens.saturating_sub(1);
    if needed > model.max_position_embeddings() {
        return Err(Error::InputShape {
            what: "generate: prompt + new tokens exceed max_position_embeddings".into(),
            expected: format!(
                "prompt {seq} + {} new tokens - 1 <= {}",
                config.max_new_tokens,
                model.max_position_embeddings()
            ),
            found: vec![batch, needed],
        });
    }
    let mask_tensor = |mask: &[Vec<i64>]| {
        let cols = mask[0].len();
        let flat: Vec<i64> = mask.iter().flatten().copied().collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [batch, cols]), &device)
    };

    let mut rng = match config.decoding {
        Decoding::Sample { seed, .. } => Some(ChaCha8Rng::seed_from_u64(seed)),
        Decoding::Greedy => None,
    };
    let mut tokens = vec![Vec::with_capacity(config.max_new_tokens); batch];
    let mut finished = vec![false; batch];
    let mut cache = config.use_cache.then(|| model.new_cache());
    let mut all_embeds = inputs_embeds.clone();
    let mut out = model.forward_embeds(
        inputs_embeds,
        Some(mask_tensor(&mask)),
        cache.as_mut(),
        false,
    )?;

    for step in 0..config.max_new_tokens {
        let [_, l, v] = out.logits.dims();
        let last = out
            .logits
            .slice([0..batch, l - 1..l, 0..v])
            .reshape([batch, v])
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| Error::InvalidInput(format!("logits: {e:?}")))?;
        let mut next = Vec::with_capacity(batch);
        for (row, logits) in last.chunks(v).enumerate() {
            if finished[row] {
                next.push(config.pad_token_id);
                continue;
            }
            let mut logits = logits.to_vec();
            for p in processors {
                p.process(step, &mut logits);
            }
            let token = match (&config.decoding, rng.as_mut()) {
                (
                    Decoding::Sample {
                        temperature, top_p, ..
                    },
                    Some(rng),
                ) => sample_top_p(&logits, *temperature, *top_p, rng),
                _ => argmax(&logits),
            };
            if config.stop_tokens.contains(&token) {
                finished[row] = true;
            }
            next.push(token);
        }
        for (row, &t) in next.iter().enumerate() {
            tokens[row].push(t);
        }
        if finished.iter().all(|&f| f) || step + 1 == config.max_new_tokens {
            break;
        }
        let ids: Vec<i64> = next.iter().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, 1]), &device);
        let step_embeds = model.embed_tokens(ids);
        for row in mask.iter_mut() {
            row.push(1);
        }
        out = if let Some(cache) = cache.as_mut() {
            model.forward_embeds(step_embeds, Some(mask_tensor(&mask)), Some(cache), false)?
        } else {
            all_embeds = Tensor::cat(vec![all_embeds, step_embeds], 1);
            model.forward_embeds(all_embeds.clone(), Some(mask_tensor(&mask)), None, false)?
        };
    }
    Ok(GenerateOutput {
        tokens,
        finished,
        cache,
    })
}

/// Index of the largest value, the first on ties (`torch.argmax`); NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// transformers' `TemperatureLogitsWarper` + `TopPLogitsWarper`, then one categorical draw.
fn sample_top_p(logits: &[f32], temperature: f32, top_p: f32, rng: &mut ChaCha8Rng) -> u32 {
    let scaled: Vec<f32> = logits.iter().map(|&x| x / temperature).collect();
    let max = scaled.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = scaled
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, f64::from(x - max).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    // Most likely first; keep tokens until the mass reaches top_p (at least one).
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= f64::from(top_p) {
            break;
        }
    }
    let probs = &probs[..kept];
    let mut u = rng.random::<f64>() * mass;
    for &(i, p) in probs {
        if u < p {
            return i as u32;
        }
        u -= p;
    }
    probs[kept - 1].0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.0]), 1);
    }

    #[test]
    fn allow_only_masks_every_other_token_for_its_steps() {
        let p = AllowOnly::new([2]).for_steps(1);
        let mut l = vec![5.0, 4.0, -1.0];
        p.process(0, &mut l);
        assert_eq!(argmax(&l), 2);
        assert_eq!(l[0], f32::NEG_INFINITY);
        let mut l = vec![5.0, 4.0, -1.0];
        p.process(1, &mut l);
        assert_eq!(l, vec![5.0, 4.0, -1.0]);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p ≈ [0.665, 0.245, 0.090]: top_p 0.5 keeps only the first token.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..50 {
            assert_eq!(sample_top_p(&[2.0, 1.0, 0.0], 1.0, 0.5, &mut rng), 0);
        }
        // top_p 1 reaches every token eventually.
        let mut seen = [false; 3];
        for _ in 0..500 {
            seen[sample_top_p(&[2.0, 1.0, 0.0], 1.0, 1.0, &mut rng) as usize] = true;
        }
        assert_eq!(seen, [true; 3]);
    }
}
