//! StoryGPT-V inference, frame by frame (`eval_llm.py:119-210`, paper §3.4):
//!
//! ```text
//! for each sentence k:
//!   context = <BOS> Image: <img>[frame i: 4 visual tokens]</img> Caption: {sentence i} …   (i < k)
//!             Caption: {sentence k} Image: [IMG0]…[IMG7]
//!   h       = LLM(context) at the 8 [IMG] positions        one forward; the KV cache keeps the
//!                                                          part of the context shared with the
//!                                                          previous frame
//!   c       = mapper(h + e_[IMG])                          [l, d] conditioning
//!   frame k = Char-LDM(c): DDIM + CFG, the plain-text embedding of sentence k for the first
//!             `start_merge_step` steps (0 when the sentence has a pronoun), then c
//!   frame k → CLIP vision → 4 visual tokens for the next contexts
//! ```
//!
//! Differences from the original, on purpose:
//! - the KV cache is reused across frames (the original recomputes the whole context, twice,
//!   per frame); cached and recomputed `[IMG]` states agree to 1e-4 (tested);
//! - frame 1 can come from the LLM path too ([`FirstFrame::Llm`], the paper's description) or,
//!   as the original code does, from Char-LDM directly ([`FirstFrame::CharLdm`]), which needs
//!   the characters' names in the first sentence;
//! - the history can be capped to the last `history_window` frames (training saw 1–3), which
//!   keeps long stories inside the LLM's context; without a cap, a story whose context outgrows
//!   the LLM is a typed error before any frame is drawn.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use storygpt_core::pipeline::Conditioning;
use storygpt_core::traits::{Autoencoder, ConditioningMapper, ImageEncoder, KvCache, LlmBackbone};
use storygpt_core::{Error, Result};
use storygpt_data::batch::{Stage2Batcher, Stage2Config};
use storygpt_models::auto_lm::AutoCausalLm;
use storygpt_models::causal_lm::replace_param;
use storygpt_models::clip::ClipVisionModel;
use storygpt_models::llm_tokenizer::LlmTokenizer;
use storygpt_models::story_head::{StoryHead, StoryHeadConfig};

use crate::cast::Cast;
use crate::train::char_ldm::{
    CharLdmFolder, Prompt, SampleConfig, load_char_ldm, prompt_conditioning, sample_with,
};
use crate::train::stage2::clip_pixels;

/// Where frame 1 comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FirstFrame {
    /// The LLM path, as every other frame (the paper).
    #[default]
    Llm,
    /// Char-LDM on the sentence itself (the original code): names of the pipeline's
    /// [`Cast`] are fused with their portraits (without a cast, the sentence is text only); a
    /// pronoun has nothing to resolve to.
    CharLdm,
}

/// Inference settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoryOptions {
    /// DDIM steps, guidance, and `start_merge_step` for frames without a pronoun.
    pub sample: SampleConfig,
    /// Frame 1's path.
    pub first_frame: FirstFrame,
    /// At most this many earlier frames in the LLM's context (`None`: all of them).
    pub history_window: Option<usize>,
    /// Seed of frame `k` is `seed + k`.
    pub seed: u64,
}

impl Default for StoryOptions {
    fn default() -> Self {
        Self {
            sample: SampleConfig::default(),
            first_frame: FirstFrame::Llm,
            history_window: Some(3),
            seed: 0,
        }
    }
}

/// One drawn frame.
#[derive(Debug, Clone)]
pub struct StoryFrame {
    /// The sentence.
    pub caption: String,
    /// The frame.
    pub image: RgbImage,
    /// Noise seed.
    pub seed: u64,
    /// Whether the sentence has a pronoun (then conditioning switches at step 0).
    pub pronoun: bool,
    /// Earlier frames in the LLM context (0 for a Char-LDM-only first frame).
    pub history: usize,
    /// Context tokens the LLM computed for this frame (the rest came from the KV cache).
    pub new_tokens: usize,
    /// Context length.
    pub context_tokens: usize,
    /// Seconds for this frame (LLM + sampling + CLIP).
    pub seconds: f64,
}

/// What one context position holds, so a new context can be matched against the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A token id.
    Token(u32),
    /// Visual token `index` of story frame `frame`.
    Visual {
        /// The frame.
        frame: usize,
        /// Which of its `m` tokens.
        index: usize,
    },
}

/// The LLM's KV cache across the frames of one story, with what each cached position holds.
pub struct ContextCache<B: Backend> {
    kv: KvCache<B>,
    slots: Vec<Slot>,
}

/// The whole StoryGPT-V model for inference: Char-LDM, the frozen LLM with its `[IMG]` rows,
/// the stage-2 head, and the CLIP vision tower that feeds frames back.
pub struct StoryPipeline<B: Backend> {
    /// Char-LDM (stage 1).
    pub ldm: CharLdmFolder<B>,
    /// The LLM, its vocabulary grown by the `[IMG]` tokens.
    pub lm: AutoCausalLm<B>,
    /// Visual projection, `[IMG]` rows, mapper.
    pub head: StoryHead<B>,
    /// The head's config.
    pub head_config: StoryHeadConfig,
    /// Encodes drawn frames for the next contexts.
    pub vision: ClipVisionModel<B>,
    /// Characters whose names Char-LDM fuses with their portraits when it draws a sentence
    /// itself (`--first-frame char-ldm`); the folder's `cast`, if any.
    pub cast: Option<Cast>,
    tokenizer: Arc<LlmTokenizer>,
    batcher: Stage2Batcher,
    img_ids: Vec<u32>,
    device: Device<B>,
}

/// `model_index.json` of a full StoryGPT-V folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoryIndex {
    /// The Char-LDM folder.
    pub ldm: PathBuf,
    /// The stage-2 head folder.
    pub head: PathBuf,
    /// Default inference settings.
    #[serde(default)]
    pub options: Option<StoryOptions>,
    /// A cast folder ([`crate::cast`]), relative to the StoryGPT-V folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cast: Option<PathBuf>,
}

impl<B: Backend> StoryPipeline<B> {
    /// Loads a StoryGPT-V folder (`model_index.json` naming `ldm` and `head`; see
    /// `models/storyworld/`). Returns the pipeline and the folder's default options.
    pub fn from_dir(dir: &Path, device: &Device<B>) -> Result<(Self, StoryOptions)> {
        let index: StoryIndex = storygpt_core::config::read_json(dir.join("model_index.json"))?;
        let mut p = Self::new(
            &StoryHeadConfig::resolve(dir, &index.ldm),
            &StoryHeadConfig::resolve(dir, &index.head),
            device,
        )?;
        if let Some(cast) = &index.cast {
            p.cast = Some(Cast::from_dir(&StoryHeadConfig::resolve(dir, cast))?);
        }
        Ok((p, index.options.unwrap_or_default()))
    }

    /// Loads a Char-LDM folder and a stage-2 head folder (whose config names the LLM and
    /// CLIP folders).
    pub fn new(ldm_dir: &Path, head_dir: &Path, device: &Device<B>) -> Result<Self> {
        let ldm = load_char_ldm::<B>(ldm_dir, device)?;
        let (head, head_config) = StoryHead::<B>::from_pretrained(head_dir, device)?;
        let llm_dir = StoryHeadConfig::resolve(head_dir, &head_config.llm);
        let vision_dir = StoryHeadConfig::resolve(head_dir, &head_config.visual_encoder);
        let mut tokenizer = LlmTokenizer::from_dir(&llm_dir)?;
        let names: Vec<&str> = head_config.img_tokens.iter().map(String::as_str).collect();
        let img_ids = tokenizer.add_special_tokens(&names);
        let mut lm = AutoCausalLm::<B>::from_pretrained(&llm_dir, device)?;
        if lm.vocab_size() != head_config.base_vocab_size {
            return Err(Error::InvalidConfig {
                path: Some(head_dir.join("config.json")),
                message: format!(
                    "base_vocab_size {} but the LLM in {} has {} rows",
                    head_config.base_vocab_size,
                    llm_dir.display(),
                    lm.vocab_size()
                ),
            });
        }
        let expected: Vec<u32> = (0..names.len())
            .map(|i| (head_config.base_vocab_size + i) as u32)
            .collect();
        if img_ids != expected {
            return Err(Error::InvalidConfig {
                path: Some(head_dir.join("config.json")),
                message: format!(
                    "the [IMG] tokens got ids {img_ids:?} in {}'s tokenizer, expected {expected:?}",
                    llm_dir.display()
                ),
            });
        }
        // Install the trained [IMG] rows.
        let base = lm.input_embeddings().val();
        let [v, d] = base.dims();
        let table = Tensor::cat(vec![base.slice([0..v, 0..d]), head.img_embeddings.val()], 0);
        lm.resize_token_embeddings(v + names.len())?;
        replace_param(lm.input_embeddings_mut(), table);
        let vision = ClipVisionModel::<B>::from_pretrained(&vision_dir, device)?;
        let tokenizer = Arc::new(tokenizer);
        let batcher = Stage2Batcher::new(
            tokenizer.clone(),
            Stage2Config {
                img_tokens: head_config.img_tokens.clone(),
                visual_tokens: head_config.n_visual_tokens,
                max_len: lm.max_position_embeddings(),
                ..Stage2Config::default()
            },
        )?;
        Ok(Self {
            ldm,
            lm,
            head,
            head_config,
            vision,
            cast: None,
            tokenizer,
            batcher,
            img_ids,
            device: device.clone(),
        })
    }

    /// Checks a story before drawing anything: not empty, every sentence within the text
    /// encoder's and the LLM's limits, and (without a history window) the whole story within
    /// the LLM's context.
    pub fn check_story(&self, story: &[String], opts: &StoryOptions) -> Result<()> {
        if story.is_empty() || story.iter().all(|s| s.trim().is_empty()) {
            return Err(Error::InvalidInput(
                "the story is empty: give at least one sentence".into(),
            ));
        }
        let limit = self.ldm.frozen.tokenizer.model_max_length;
        // Count tokens without the tokenizer's truncation, which would hide the overflow.
        let mut counter = self.ldm.frozen.tokenizer.inner().clone();
        counter
            .with_truncation(None)
            .map_err(|e| Error::InvalidInput(format!("text-encoder tokenizer: {e}")))?;
        for (k, s) in story.iter().enumerate() {
            if s.trim().is_empty() {
                return Err(Error::InvalidInput(format!("sentence {} is empty", k + 1)));
            }
            let n = counter
                .encode(s.as_str(), true)
                .map_err(|e| Error::InvalidInput(format!("tokenizing sentence {}: {e}", k + 1)))?
                .len();
            if n > limit {
                return Err(Error::InvalidInput(format!(
                    "sentence {} has {n} text-encoder tokens, more than the limit of {limit}: {s:?}",
                    k + 1
                )));
            }
        }
        for k in 0..story.len() {
            let (slots, _) = self.context(story, k, opts)?;
            let max = self.lm.max_position_embeddings();
            if slots.len() > max {
                return Err(Error::InvalidInput(format!(
                    "frame {} needs a context of {} tokens, more than the LLM holds ({max}); \
                     set a history window (e.g. 3 earlier frames) or shorten the story",
                    k + 1,
                    slots.len()
                )));
            }
        }
        Ok(())
    }

    /// The context of frame `k` as slots, and the number of earlier frames in it.
    fn context(
        &self,
        story: &[String],
        k: usize,
        opts: &StoryOptions,
    ) -> Result<(Vec<Slot>, usize)> {
        let first = opts.history_window.map_or(0, |w| k.saturating_sub(w));
        let seq = self.batcher.window(story, first, k)?;
        let m = self.head_config.n_visual_tokens;
        let mut slots: Vec<Slot> = seq.ids.iter().map(|&t| Slot::Token(t)).collect();
        for (h, &start) in seq.image_slot_starts.iter().enumerate() {
            for j in 0..m {
                slots[start + j] = Slot::Visual {
                    frame: first + h,
                    index: j,
                };
            }
        }
        Ok((slots, seq.num_history))
    }

    /// The `[IMG]` hidden states (`+` their input embeddings) of frame `k`: `[1, R, d]`. With a
    /// cache, only the context after the part shared with the cached one is computed.
    ///
    /// `visual[i]` holds frame `i`'s `m` visual tokens `[m, d]`.
    fn img_states(
        &self,
        slots: &[Slot],
        visual: &[Tensor<B, 2>],
        cache: &mut ContextCache<B>,
    ) -> Result<(Tensor<B, 3>, usize)> {
        let ContextCache { kv, slots: cached } = cache;
        let r = self.img_ids.len();
        let mut shared = cached.iter().zip(slots).take_while(|(a, b)| a == b).count();
        shared = shared.min(slots.len() - r);
        kv.truncate(shared);
        let d = self.lm.embed_dim();
        let mut rows: Vec<Tensor<B, 2>> = Vec::new();
        let mut run: Vec<i64> = Vec::new();
        let flush = |run: &mut Vec<i64>, rows: &mut Vec<Tensor<B, 2>>| {
            if !run.is_empty() {
                let n = run.len();
                let ids = Tensor::<B, 2, Int>::from_data(
                    TensorData::new(std::mem::take(run), [1, n]),
                    &self.device,
                );
                rows.push(self.lm.embed_tokens(ids).reshape([n, d]));
            }
        };
        for s in &slots[shared..] {
            match *s {
                Slot::Token(t) => run.push(i64::from(t)),
                Slot::Visual { frame, index } => {
                    flush(&mut run, &mut rows);
                    let v = visual.get(frame).ok_or_else(|| {
                        Error::InvalidInput(format!("frame {frame} has no visual tokens yet"))
                    })?;
                    rows.push(v.clone().slice([index..index + 1, 0..d]));
                }
            }
        }
        flush(&mut run, &mut rows);
        let new = slots.len() - shared;
        let embeds = Tensor::cat(rows, 0).reshape([1, new, d]);
        let out = self
            .lm
            .forward_embeds(embeds.clone(), None, Some(kv), false)?;
        *cached = slots.to_vec();
        let h = out.last_hidden_state.slice([0..1, new - r..new, 0..d]);
        let e = embeds.slice([0..1, new - r..new, 0..d]);
        Ok((h + e, new))
    }

    /// The `[IMG]` states of frame `k` of `story` given the earlier frames' visual tokens,
    /// computed from scratch (`cache = None`) or through a cache shared across calls. Exposed
    /// for the KV-cache equivalence test.
    pub fn img_hidden_states(
        &self,
        story: &[String],
        k: usize,
        visual: &[Tensor<B, 2>],
        opts: &StoryOptions,
        cache: Option<&mut ContextCache<B>>,
    ) -> Result<Tensor<B, 3>> {
        let (slots, _) = self.context(story, k, opts)?;
        match cache {
            Some(c) => Ok(self.img_states(&slots, visual, c)?.0),
            None => Ok(self.img_states(&slots, visual, &mut self.new_cache())?.0),
        }
    }

    /// The LLM tokenizer, `[IMG]` tokens included.
    pub fn tokenizer(&self) -> &LlmTokenizer {
        &self.tokenizer
    }

    /// An empty context cache for a new story.
    pub fn new_cache(&self) -> ContextCache<B> {
        ContextCache {
            kv: self.lm.new_cache(),
            slots: Vec::new(),
        }
    }

    /// A frame's `m` visual tokens `[m, d]` from its pixels.
    pub fn visual_tokens(&self, image: &RgbImage) -> Tensor<B, 2> {
        let size = ImageEncoder::image_size(&self.vision);
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(clip_pixels(image, size), [1, 3, size, size]),
            &self.device,
        );
        let pooled = self.vision.forward(x).pooler_output;
        let t = self.head.visual_tokens(pooled);
        let [_, m, d] = t.dims();
        t.reshape([m, d])
    }

    /// Draws the story, one frame per sentence. `on_frame(k, n)` is called before frame `k`.
    ///
    /// # Errors
    /// An empty story, an empty or over-long sentence, or (without a history window) a story
    /// longer than the LLM's context: all before drawing anything.
    pub fn visualize(
        &self,
        story: &[String],
        opts: &StoryOptions,
        on_frame: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<StoryFrame>> {
        self.check_story(story, opts)?;
        if opts.first_frame == FirstFrame::Llm && !self.head_config.first_frame_trained {
            tracing::warn!(
                "frame 1 takes the LLM path, but this head was not trained on first frames \
                 (first_frame_targets = false); --first-frame char-ldm is the original's choice"
            );
        }
        if opts.first_frame == FirstFrame::CharLdm && self.cast.is_none() {
            tracing::warn!(
                "frame 1 is drawn by Char-LDM alone, but this pipeline has no cast: its names \
                 are not fused with portraits (text-only conditioning)"
            );
        }
        let mut frames: Vec<StoryFrame> = Vec::with_capacity(story.len());
        let mut visual: Vec<Tensor<B, 2>> = Vec::with_capacity(story.len());
        let mut cache = self.new_cache();
        let res = self.ldm.resolution as usize;
        let latent_side = res / Autoencoder::downsample_factor(&self.ldm.frozen.vae);
        let latent_ch = Autoencoder::latent_channels(&self.ldm.frozen.vae);
        for (k, caption) in story.iter().enumerate() {
            on_frame(k, story.len());
            let t0 = Instant::now();
            let pronoun = has_pronoun(caption);
            let seed = opts.seed + k as u64;
            let ldm_alone = k == 0 && opts.first_frame == FirstFrame::CharLdm;
            // The text-only and unconditional branches read the plain sentence; the fused one
            // is used only when Char-LDM draws the sentence itself.
            let prompt = match &self.cast {
                Some(cast) if ldm_alone => cast.mark(caption),
                _ => Prompt {
                    marked_caption: caption.clone(),
                    caption: caption.clone(),
                    portraits: Vec::new(),
                },
            };
            let (null, text_only, fused) = prompt_conditioning(
                &self.ldm.model,
                &self.ldm.frozen,
                std::slice::from_ref(&prompt),
                self.ldm.crop_size,
                &self.device,
            )?;
            let (late, history, new_tokens, context_tokens) = if ldm_alone {
                (fused, 0, 0, 0)
            } else {
                let (slots, history) = self.context(story, k, opts)?;
                let (states, new) = self.img_states(&slots, &visual, &mut cache)?;
                (self.head.gill_mapper.map(states), history, new, slots.len())
            };
            let switch = if pronoun {
                0
            } else {
                opts.sample.start_merge_step
            };
            let cond = Conditioning::delayed(null, text_only, late, switch);
            let image = sample_with(
                &self.ldm.model,
                &self.ldm.frozen,
                &cond,
                &opts.sample,
                [1, latent_ch, latent_side, latent_side],
                seed,
                &self.device,
            )?
            .into_iter()
            .next()
            .ok_or_else(|| Error::InvalidInput("the sampler returned no frame".into()))?;
            visual.push(self.visual_tokens(&image));
            frames.push(StoryFrame {
                caption: caption.clone(),
                image,
                seed,
                pronoun,
                history,
                new_tokens,
                context_tokens,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        Ok(frames)
    }
}

/// Whether a sentence refers to a character by pronoun (he, she, they, him, her, them, his,
/// their).
pub fn has_pronoun(sentence: &str) -> bool {
    sentence.split(|c: char| !c.is_alphabetic()).any(|w| {
        matches!(
            w.to_lowercase().as_str(),
            "he" | "she" | "they" | "him" | "her" | "them" | "his" | "their" | "hers"
        )
    })
}

/// Splits story text into sentences at `.`, `!` and `?` (keeping the mark).
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        cur.push(ch);
        if matches!(ch, '.' | '!' | '?') {
            let s = cur.trim().to_string();
            if !s.is_empty() && s.chars().any(char::is_alphanumeric) {
                out.push(s);
            }
            cur.clear();
        }
    }
    let s = cur.trim().to_string();
    if s.chars().any(char::is_alphanumeric) {
        out.push(s);
    }
    out
}
