//! The stage-2 comparison of the paper's Table 1 on a dataset's test stories, scored by the
//! character and background judges:
//!
//! | row | what draws each frame |
//! |---|---|
//! | `pipeline, pronoun captions` | the full StoryGPT-V pipeline fed the referential captions |
//! | `Char-LDM, pronoun captions` | Char-LDM alone on the same captions (a name left in a caption is fused with its portrait; a pronoun has nothing to fuse) |
//! | `Char-LDM, named captions` | Char-LDM alone on the captions with names (the ceiling the LLM aims at) |
//! | `pipeline, named captions` | a diagnostic row, not the paper's: the pipeline fed the captions with names, so that no pronoun is left to resolve |
//!
//! Each row also scores its frames whose caption has a pronoun on their own (`Char-Acc,
//! pronoun frames`): with the diagnostic row, this separates what the pipeline loses to pronoun
//! resolution from what it loses to the alignment of its conditioning.
//!
//! Every row uses the same seed per frame, the same sampler settings and the same judges.
//! [`StoryEvalSpec`] picks the split (tune sampler settings on `val`, report on `test`) and the
//! rows to draw.

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::Device;
use burn::tensor::backend::Backend;
use image::RgbImage;
use serde::Serialize;
use storygpt_core::pipeline::Conditioning;
use storygpt_core::traits::Autoencoder;
use storygpt_core::{Error, Result};
use storygpt_data::{Split, StoryDataset};

use crate::cast::Cast;
use crate::pipeline::{StoryOptions, StoryPipeline};
use crate::train::Metrics;
use crate::train::char_ldm::{
    Prompt, ValidationSet, frame_prompt, judge_frames, judged_labels, portraits,
    prompt_conditioning, sample_with_seeds,
};
use storygpt_eval::metrics::SetErrors;

/// What draws the frames of one row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StoryRowKind {
    /// The full StoryGPT-V pipeline fed the referential (pronoun) captions.
    Pipeline,
    /// Char-LDM alone fed the same pronoun captions.
    LdmPronouns,
    /// Char-LDM alone fed the captions with names.
    LdmNames,
    /// Diagnostic: the full pipeline fed the captions with names (nothing to resolve).
    PipelineNames,
}

impl StoryRowKind {
    /// The three rows of the paper's table, in its order.
    pub const ALL: [StoryRowKind; 3] = [
        StoryRowKind::Pipeline,
        StoryRowKind::LdmPronouns,
        StoryRowKind::LdmNames,
    ];

    /// The row's name in the table.
    pub fn label(self) -> &'static str {
        match self {
            StoryRowKind::Pipeline => "StoryGPT-V pipeline, pronoun captions",
            StoryRowKind::LdmPronouns => "Char-LDM, pronoun captions",
            StoryRowKind::LdmNames => "Char-LDM, named captions",
            StoryRowKind::PipelineNames => "StoryGPT-V pipeline, named captions",
        }
    }
}

/// Which stories are drawn and which rows are scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoryEvalSpec {
    /// The split whose stories are drawn, in the dataset's order.
    pub split: Split,
    /// How many stories (the first ones of the split).
    pub stories: usize,
    /// The rows, in table order; each appears at most once.
    pub rows: Vec<StoryRowKind>,
}

impl StoryEvalSpec {
    /// The paper's table: all three rows on the first `stories` test stories.
    pub fn test(stories: usize) -> Self {
        StoryEvalSpec {
            split: Split::Test,
            stories,
            rows: StoryRowKind::ALL.to_vec(),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct StoryEvalRow {
    /// What drew the frames.
    pub name: String,
    /// Exact character-set accuracy, %.
    pub char_acc: f64,
    /// Character F1 (micro), %.
    pub char_f1: f64,
    /// Background accuracy, %.
    pub bg_acc: f64,
    /// Background F1, %.
    pub bg_f1: f64,
    /// Exact character-set accuracy over the frames whose caption has a pronoun, %.
    pub char_acc_pronoun_frames: f64,
    /// Frames scored.
    pub frames: usize,
    /// Seconds spent drawing them.
    pub seconds: f64,
    /// Where Char-Acc is lost (by characters in the frame; missing, extra or swapped
    /// characters); `None` without a character judge.
    pub char_errors: Option<SetErrors>,
}

/// The generated frames of the three rows, per story, for pictures.
pub struct StoryEvalFrames {
    /// Frame ids, story by story.
    pub ids: Vec<String>,
    /// Referential captions, aligned with `ids`.
    pub captions: Vec<String>,
    /// Frames of each row of the spec, aligned with `ids`.
    pub rows: Vec<Vec<RgbImage>>,
}

/// Scores the rows of `spec` on the first `spec.stories` stories of its split of `dataset`
/// (`on_story(i, n)` before each).
pub fn evaluate_stories<B: Backend + 'static>(
    pipe: &StoryPipeline<B>,
    dataset: Arc<dyn StoryDataset>,
    spec: &StoryEvalSpec,
    opts: &StoryOptions,
    judges: (Option<&std::path::Path>, Option<&std::path::Path>),
    on_story: &mut dyn FnMut(usize, usize),
    device: &Device<B>,
) -> Result<(Vec<StoryEvalRow>, StoryEvalFrames)> {
    if spec.rows.is_empty() {
        return Err(Error::InvalidInput(
            "story evaluation: no rows to draw".to_string(),
        ));
    }
    if let Some(r) = spec
        .rows
        .iter()
        .enumerate()
        .find_map(|(i, r)| spec.rows[..i].contains(r).then_some(r))
    {
        return Err(Error::InvalidInput(format!(
            "story evaluation: row `{}` is asked for twice",
            r.label()
        )));
    }
    let stories: Vec<Vec<String>> = dataset
        .stories(spec.split)
        .iter()
        .take(spec.stories)
        .cloned()
        .collect();
    if stories.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} has no {:?} stories",
            dataset.root().display(),
            spec.split
        )));
    }
    let load = |p: Option<&std::path::Path>| {
        p.map(|d| storygpt_eval::classifier::load_classifier::<B>(d, device))
            .transpose()
    };
    let cast = portraits(dataset.as_ref())?;
    let marker = Cast::from_dataset(dataset.as_ref())?;
    let val = ValidationSet {
        dataset: dataset.clone(),
        ids: Vec::new(),
        portraits: cast.clone(),
        char_judge: load(judges.0)?,
        bg_judge: load(judges.1)?,
        sample: opts.sample.clone(),
    };
    let ldm = &pipe.ldm;
    let latent_side = ldm.resolution as usize / Autoencoder::downsample_factor(&ldm.frozen.vae);
    let shape = [
        Autoencoder::latent_channels(&ldm.frozen.vae),
        latent_side,
        latent_side,
    ];
    let mut ids = Vec::new();
    let mut captions = Vec::new();
    let mut pronoun_frames = Vec::new();
    let mut rows: Vec<Vec<RgbImage>> = vec![Vec::new(); spec.rows.len()];
    let mut seconds = vec![0.0f64; spec.rows.len()];
    for (s, story) in stories.iter().enumerate() {
        on_story(s, stories.len());
        let images = vec![0; story.len()];
        let (refs, referential): (Vec<String>, Vec<bool>) = dataset
            .referential_captions(story, &images)?
            .into_iter()
            .map(|c| (c.text, c.referential))
            .unzip();
        let story_opts = StoryOptions {
            seed: opts.seed + 1000 * s as u64,
            ..opts.clone()
        };
        // Char-LDM alone: the story's frames in one batch per row, each from its own seed.
        let seeds: Vec<u64> = (0..story.len())
            .map(|k| story_opts.seed + k as u64)
            .collect();
        for (row, kind) in spec.rows.iter().enumerate() {
            let t0 = Instant::now();
            let prompts = match kind {
                StoryRowKind::Pipeline | StoryRowKind::PipelineNames => {
                    let named: Vec<String>;
                    let sentences: &[String] = if *kind == StoryRowKind::Pipeline {
                        &refs
                    } else {
                        named = story
                            .iter()
                            .map(|id| Ok(dataset.annotation(id)?.caption_for_image(0).to_string()))
                            .collect::<Result<Vec<_>>>()?;
                        &named
                    };
                    let drawn = pipe.visualize(sentences, &story_opts, &mut |_, _| {})?;
                    rows[row].extend(drawn.into_iter().map(|f| f.image));
                    seconds[row] += t0.elapsed().as_secs_f64();
                    continue;
                }
                StoryRowKind::LdmPronouns => {
                    refs.iter().map(|r| marker.mark(r)).collect::<Vec<Prompt>>()
                }
                StoryRowKind::LdmNames => story
                    .iter()
                    .map(|id| frame_prompt(dataset.as_ref(), id, &cast))
                    .collect::<Result<Vec<_>>>()?,
            };
            let (null, plain, fused) =
                prompt_conditioning(&ldm.model, &ldm.frozen, &prompts, ldm.crop_size, device)?;
            let cond = Conditioning::delayed(null, plain, fused, opts.sample.start_merge_step);
            let imgs = sample_with_seeds(
                &ldm.model,
                &ldm.frozen,
                &cond,
                &opts.sample,
                shape,
                &seeds,
                device,
            )?;
            rows[row].extend(imgs);
            seconds[row] += t0.elapsed().as_secs_f64();
        }
        ids.extend(story.iter().cloned());
        captions.extend(refs);
        pronoun_frames.extend(referential);
    }
    let mut table = Vec::new();
    for (r, kind) in spec.rows.iter().enumerate() {
        let mut m = Metrics::new();
        judge_frames(&val, &ids, &rows[r], device, &mut m)?;
        let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        let (pron_ids, pron_frames): (Vec<String>, Vec<RgbImage>) = ids
            .iter()
            .zip(&rows[r])
            .zip(&pronoun_frames)
            .filter(|(_, p)| **p)
            .map(|((id, f), _)| (id.clone(), f.clone()))
            .unzip();
        let char_errors = judged_labels(&val, &ids, &rows[r], true, device)?
            .map(|(p, t)| SetErrors::of(&p, &t))
            .transpose()?;
        let mut pm = Metrics::new();
        if !pron_ids.is_empty() {
            judge_frames(&val, &pron_ids, &pron_frames, device, &mut pm)?;
        }
        table.push(StoryEvalRow {
            name: kind.label().to_string(),
            char_acc: get("char_acc"),
            char_f1: get("char_f1"),
            bg_acc: get("bg_acc"),
            bg_f1: get("bg_f1"),
            char_acc_pronoun_frames: pm.get("char_acc").copied().unwrap_or(f64::NAN),
            frames: rows[r].len(),
            seconds: seconds[r],
            char_errors,
        });
    }
    Ok((
        table,
        StoryEvalFrames {
            ids,
            captions,
            rows,
        },
    ))
}

/// The table as markdown, then where each row loses Char-Acc.
pub fn markdown(rows: &[StoryEvalRow]) -> String {
    let mut s = String::from(
        "| frames drawn by | Char-Acc | Char-F1 | BG-Acc | BG-F1 | Char-Acc, pronoun frames | frames | s/frame |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.2} |\n",
            r.name,
            r.char_acc,
            r.char_f1,
            r.bg_acc,
            r.bg_f1,
            r.char_acc_pronoun_frames,
            r.frames,
            r.seconds / r.frames.max(1) as f64
        ));
    }
    let counts: std::collections::BTreeSet<usize> = rows
        .iter()
        .filter_map(|r| r.char_errors.as_ref())
        .flat_map(|e| e.by_count.iter().map(|c| c.0))
        .collect();
    if counts.is_empty() {
        return s;
    }
    s.push_str("\nWhere Char-Acc is lost: Char-Acc by characters in the frame (frames), and each wrong frame as characters missing (none extra), extra (none missing) or swapped:\n\n| frames drawn by |");
    for c in &counts {
        s.push_str(&format!(
            " {c} character{} |",
            if *c == 1 { "" } else { "s" }
        ));
    }
    s.push_str(" missing | extra | swapped |\n|---|");
    s.push_str(&"---|".repeat(counts.len() + 3));
    s.push('\n');
    for r in rows {
        let Some(e) = &r.char_errors else { continue };
        s.push_str(&format!("| {} |", r.name));
        for c in &counts {
            match e.by_count.iter().find(|x| x.0 == *c) {
                Some(&(_, n, right)) => s.push_str(&format!(
                    " {:.1} ({n}) |",
                    right as f64 * 100.0 / n.max(1) as f64
                )),
                None => s.push_str(" – |"),
            }
        }
        s.push_str(&format!(" {} | {} | {} |\n", e.missing, e.extra, e.swapped));
    }
    s
}
