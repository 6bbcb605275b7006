//! Stage 0, the LLM: a small Llama-architecture causal LM pretrained from scratch on a
//! dataset's story text, standing in for OPT / Llama 2 on the story world. Each training text is
//! one story's captions in order, with pronouns (the referential captions) or with names, half
//! and half; the loss is next-token cross-entropy over real tokens.
//!
//! Validation: perplexity on the validation stories' referential text, and a **pronoun probe**:
//! at each caption that starts with a pronoun, given the story so far, is the right pronoun
//! (he / she / they) the most likely of the three?

use std::path::{Path, PathBuf};

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Device, ElementConversion, Int, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};
use storygpt_data::{Split, StoryDataset};
use storygpt_models::llama::{LlamaConfig, LlamaForCausalLM};
use storygpt_models::llm_tokenizer::LlmTokenizer;

use super::data::EpochSampler;
use super::{Metrics, Stage};

/// One story as text: (with pronouns, with names), and per caption of the referential text
/// the pronoun it starts with, if any.
#[derive(Debug, Clone)]
pub struct StoryText {
    /// Referential captions.
    pub referential: Vec<String>,
    /// Captions with names.
    pub named: Vec<String>,
}

/// The stories of a split as text.
pub fn story_texts(dataset: &dyn StoryDataset, split: Split) -> Result<Vec<StoryText>> {
    dataset
        .stories(split)
        .iter()
        .map(|story| {
            let images = vec![0; story.len()];
            let refs = dataset.referential_captions(story, &images)?;
            let named = story
                .iter()
                .map(|id| {
                    dataset
                        .annotation(id)
                        .map(|a| a.caption_for_image(0).to_string())
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(StoryText {
                referential: refs.into_iter().map(|r| r.text).collect(),
                named,
            })
        })
        .collect()
}

/// Cross-entropy of next-token prediction over `mask`ed positions; returns (mean loss, tokens).
pub fn lm_loss<B: Backend>(
    model: &LlamaForCausalLM<B>,
    ids: &[Vec<u32>],
    pad: u32,
    device: &Device<B>,
) -> Result<(Tensor<B, 1>, usize)> {
    let b = ids.len();
    let len = ids.iter().map(Vec::len).max().unwrap_or(0);
    if len < 2 {
        return Err(Error::InvalidInput(
            "language-model texts need at least 2 tokens".into(),
        ));
    }
    let mut input = Vec::with_capacity(b * (len - 1));
    let mut mask = Vec::with_capacity(b * (len - 1));
    let mut target = Vec::with_capacity(b * (len - 1));
    let mut tmask = Vec::with_capacity(b * (len - 1));
    for row in ids {
        for t in 0..len - 1 {
            input.push(i64::from(*row.get(t).unwrap_or(&pad)));
            mask.push(i64::from(t < row.len()));
            target.push(i64::from(*row.get(t + 1).unwrap_or(&pad)));
            tmask.push(if t + 1 < row.len() { 1.0f32 } else { 0.0 });
        }
    }
    let l = len - 1;
    let out = model.forward(
        Tensor::<B, 2, Int>::from_data(TensorData::new(input, [b, l]), device),
        Some(Tensor::<B, 2, Int>::from_data(
            TensorData::new(mask, [b, l]),
            device,
        )),
        None,
        false,
    )?;
    let v = out.logits.dims()[2];
    let logp = log_softmax(out.logits.reshape([b * l, v]), 1);
    let tgt = Tensor::<B, 2, Int>::from_data(TensorData::new(target, [b * l, 1]), device);
    let picked = logp.gather(1, tgt).reshape([b * l]);
    let n: f32 = tmask.iter().sum();
    let w = Tensor::<B, 1>::from_data(TensorData::new(tmask, [b * l]), device);
    Ok(((-(picked * w).sum()) / f64::from(n.max(1.0)), n as usize))
}

/// The LM stage.
pub struct LmStage<B: Backend> {
    train: Vec<StoryText>,
    val: Vec<StoryText>,
    tokenizer: LlmTokenizer,
    sampler: EpochSampler,
    batch_size: usize,
    device: B::Device,
}

fn encode(tok: &LlmTokenizer, captions: &[String]) -> Result<Vec<u32>> {
    let mut ids = tok.encode(&captions.join(" "))?;
    if let Some(eos) = tok.eos_token_id() {
        ids.push(eos);
    }
    Ok(ids)
}

impl<B: AutodiffBackend> Stage<B> for LmStage<B> {
    type Model = LlamaForCausalLM<B>;

    fn name(&self) -> &str {
        "lm"
    }

    fn loss(
        &mut self,
        model: &Self::Model,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor<B, 1>, Metrics)> {
        let idx = self.sampler.next(self.batch_size);
        let ids = idx
            .iter()
            .map(|&i| {
                let s = &self.train[i];
                encode(
                    &self.tokenizer,
                    if rng.random_bool(0.5) {
                        &s.referential
                    } else {
                        &s.named
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let pad = self.tokenizer.pad_token_id().unwrap_or(0);
        let (loss, _) = lm_loss(model, &ids, pad, &self.device)?;
        Ok((loss, Metrics::new()))
    }

    fn validate(
        &mut self,
        model: &LlamaForCausalLM<B::InnerBackend>,
        _step: usize,
        _run: &Path,
    ) -> Result<Metrics> {
        lm_metrics(model, &self.val, &self.tokenizer, &self.device)
    }

    fn data_state(&self) -> serde_json::Value {
        self.sampler.state()
    }

    fn restore_data_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.sampler.restore(state)
    }
}

/// Perplexity on referential text and the pronoun probe (see the module docs).
pub fn lm_metrics<B: Backend>(
    model: &LlamaForCausalLM<B>,
    stories: &[StoryText],
    tok: &LlmTokenizer,
    device: &Device<B>,
) -> Result<Metrics> {
    let pad = tok.pad_token_id().unwrap_or(0);
    let (mut nll, mut n) = (0.0f64, 0usize);
    for chunk in stories.chunks(32) {
        let ids = chunk
            .iter()
            .map(|s| encode(tok, &s.referential))
            .collect::<Result<Vec<_>>>()?;
        let (loss, k) = lm_loss(model, &ids, pad, device)?;
        nll += loss.into_scalar().elem::<f64>() * k as f64;
        n += k;
    }
    let pronouns: Vec<(String, u32)> = ["he", "she", "they"]
        .iter()
        .filter_map(|p| tok.token_to_id(p).map(|id| (p.to_string(), id)))
        .collect();
    let (mut right, mut probes) = (0usize, 0usize);
    for s in stories {
        for (i, cap) in s.referential.iter().enumerate().skip(1) {
            let first = cap.split_whitespace().next().unwrap_or("").to_lowercase();
            let Some(truth) = pronouns.iter().position(|(p, _)| *p == first) else {
                continue;
            };
            let ctx = tok.encode(&s.referential[..i].join(" "))?;
            let len = ctx.len();
            let x = Tensor::<B, 2, Int>::from_data(
                TensorData::new(
                    ctx.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(),
                    [1, len],
                ),
                device,
            );
            let logits = model.forward(x, None, None, false)?.logits;
            let v = logits.dims()[2];
            let last: Vec<f32> = logits
                .slice([0..1, len - 1..len, 0..v])
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap_or_default();
            let best = pronouns
                .iter()
                .enumerate()
                .max_by(|a, b| last[a.1.1 as usize].total_cmp(&last[b.1.1 as usize]))
                .map(|(k, _)| k);
            right += usize::from(best == Some(truth));
            probes += 1;
        }
    }
    let mut m = Metrics::new();
    m.insert("perplexity".into(), (nll / n.max(1) as f64).exp());
    m.insert(
        "pronoun_probe_accuracy".into(),
        right as f64 / probes.max(1) as f64,
    );
    m.insert("pronoun_probes".into(), probes as f64);
    Ok(m)
}

/// An LM run config: `[data]` (only `dataset` is read), `[model]` (transformers
/// `LlamaConfig`; `vocab_size` and the special ids come from the tokenizer built at the start),
/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmRunConfig {
    /// The dataset whose text is learned.
    pub dataset: PathBuf,
    /// The network.
    pub model: serde_json::Value,
    /// The loop.
    pub train: super::TrainConfig,
}

/// What an LM run reports.
#[derive(Debug, Clone, Serialize)]
pub struct LmReport {
    /// Steps done.
    pub steps: usize,
    /// All done (model exported).
    pub finished: bool,
    /// Final validation metrics.
    pub metrics: Metrics,
    /// Training seconds.
    pub seconds: f64,
}

/// Trains (or resumes) the LM; on completion writes `RUN/model/` (a `LlamaForCausalLM` folder
/// with its tokenizer).
pub fn train_lm<B: AutodiffBackend>(
    cfg: &LmRunConfig,
    opts: &super::RunOptions,
    device: &B::Device,
) -> Result<LmReport> {
    let config_toml = super::config::to_toml(cfg)?;
    let dataset = storygpt_data::open_dataset(&cfg.dataset)?;
    let tok_dir = opts.run_dir.join("tokenizer");
    let vocab = super::tokenizer::vocabulary(dataset.as_ref())?;
    let n = super::tokenizer::write_lm_tokenizer(&tok_dir, &vocab)?;
    let tokenizer = LlmTokenizer::from_dir(&tok_dir)?;
    let mut model_json = cfg.model.clone();
    model_json["vocab_size"] = n.into();
    model_json["bos_token_id"] = tokenizer.bos_token_id().into();
    model_json["eos_token_id"] = tokenizer.eos_token_id().into();
    model_json["pad_token_id"] = tokenizer.pad_token_id().into();
    model_json["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    model_json["model_type"] = "llama".into();
    let llama_cfg: LlamaConfig = super::export::model_config(&model_json, "model")?;
    let train = story_texts(dataset.as_ref(), Split::Train)?;
    let val = story_texts(dataset.as_ref(), Split::Val)?;
    B::seed(device, cfg.train.seed);
    let model = super::optim::init_transformer(
        LlamaForCausalLM::<B>::new(&llama_cfg, device)?,
        0.02,
        cfg.train.seed,
    );
    let mut stage = LmStage::<B> {
        sampler: EpochSampler::new(train.len(), cfg.train.seed),
        train,
        val,
        tokenizer,
        batch_size: cfg.train.batch_size,
        device: device.clone(),
    };
    let out = super::run(&mut stage, model, &cfg.train, cfg, opts, device)?;
    let metrics = out
        .state
        .validations
        .last()
        .map(|v| v.metrics.clone())
        .unwrap_or_default();
    if out.finished {
        let model = out.export();
        let card = super::export::ModelCard {
            title: "Story-world language model (stage 0)".into(),
            description: "A transformers `LlamaForCausalLM` pretrained from scratch on story-world \
                          stories (captions in order, with pronouns or with names), with a word-level \
                          tokenizer. The pronoun probe asks, at each caption that starts with a \
                          pronoun, whether he / she / they is ranked right given the story so far."
                .into(),
            data: format!("{} ({} training stories)", cfg.dataset.display(), stage.train.len()),
            steps: out.state.step,
            seconds: out.state.seconds,
            metrics: metrics
                .iter()
                .map(|(k, v)| (k.clone(), *v, "validation stories".to_string()))
                .collect(),
            config_toml: config_toml.clone(),
            command: "storygpt train-lm --config CONFIG --out RUN".into(),
        };
        let tok_json: serde_json::Value =
            storygpt_core::config::read_json(tok_dir.join("tokenizer.json"))?;
        let tok_cfg: serde_json::Value =
            storygpt_core::config::read_json(tok_dir.join("tokenizer_config.json"))?;
        super::export::write_model_folder(
            &opts.run_dir.join("model"),
            &model_json,
            super::export::Weights::new("model.safetensors", &model, &[]),
            &[
                ("tokenizer.json", tok_json),
                ("tokenizer_config.json", tok_cfg),
            ],
            &card,
        )?;
    }
    Ok(LmReport {
        steps: out.state.step,
        finished: out.finished,
        metrics,
        seconds: out.state.seconds,
    })
}
