//! `storygpt eval run`: scores a folder of generated frames against a dataset split and writes
//! a report (`metrics.json`, `summary.md`, `grid.png`).
//!
//! # Layout of generated frames
//!
//! What story inference writes, and what the original `eval_llm.py` writes:
//!
//! ```text
//! GENERATED/{story}/{frame_id}.png    story = the id of the story's first frame
//! ```
//!
//! A flat `GENERATED/{frame_id}.png` (the original `eval_cls.py` layout) is accepted too. Every
//! frame of every story of the split must be there; a frame whose size differs from the
//! dataset's is resized to it (Pillow bilinear) with a warning.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use burn::tensor::backend::Backend;
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use storygpt_core::{Error, Result};
use storygpt_data::draw::{contact_sheet, save_png};
use storygpt_data::{Split, StoryDataset};
use storygpt_models::clip::image_processor::{PilFilter, resize_pil};

use crate::classifier::{LabelKind, LoadedClassifier};
use crate::clip_score::{ClipScorer, ClipScores};
use crate::fid::{FrechetTerms, GaussianStats, frechet_distance_terms};
use crate::fid_features::{ClassifierFeatures, FeatureExtractor};
use crate::metrics::{MultiLabelCounts, MultiLabelScores, per_label_accuracy, predict};

/// One generated frame and where it belongs.
#[derive(Debug, Clone)]
pub struct GeneratedFrame {
    /// Index of the story in the split.
    pub story: usize,
    /// Position in the story.
    pub position: usize,
    /// The dataset frame id.
    pub frame_id: String,
    /// The PNG.
    pub path: PathBuf,
}

/// The generated frames of a split, found on disk (see the module docs).
#[derive(Debug, Clone)]
pub struct GeneratedSet {
    /// The folder.
    pub root: PathBuf,
    /// Every frame, story-major.
    pub frames: Vec<GeneratedFrame>,
}

impl GeneratedSet {
    /// Finds the frames of every story of `split`.
    ///
    /// Errors: the folder does not exist ([`Error::Io`]); frames are missing
    /// ([`Error::DataFile`] naming the first missing file and the counts).
    pub fn find(root: &Path, dataset: &dyn StoryDataset, split: Split) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::io(
                root,
                std::io::Error::new(std::io::ErrorKind::NotFound, "generated folder not found"),
            ));
        }
        let stories = dataset.stories(split);
        if stories.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{} has no stories in its {} split",
                dataset.name(),
                split.name()
            )));
        }
        let expected: usize = stories.iter().map(Vec::len).sum();
        let mut frames = Vec::with_capacity(expected);
        let mut first_missing: Option<PathBuf> = None;
        for (si, story) in stories.iter().enumerate() {
            let story_dir = root.join(&story[0]);
            for (pos, fid) in story.iter().enumerate() {
                let nested = story_dir.join(format!("{fid}.png"));
                let flat = root.join(format!("{fid}.png"));
                let path = if nested.is_file() {
                    nested
                } else if flat.is_file() {
                    flat
                } else {
                    first_missing.get_or_insert(nested);
                    continue;
                };
                frames.push(GeneratedFrame {
                    story: si,
                    position: pos,
                    frame_id: fid.clone(),
                    path,
                });
            }
        }
        if let Some(missing) = first_missing {
            return Err(Error::DataFile {
                path: missing,
                reason: format!(
                    "the generated folder has {} of the {expected} frames of the {} split of {}; \
                     this is the first missing one (layout: GENERATED/{{first frame id}}/{{frame id}}.png \
                     or GENERATED/{{frame id}}.png)",
                    frames.len(),
                    split.name(),
                    dataset.name()
                ),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
            frames,
        })
    }
}

/// Reads a PNG (or any image) as RGB.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::open(path).map_err(|e| match e {
        image::ImageError::IoError(io) => Error::io(path, io),
        other => Error::data_file(path, format!("cannot decode image: {other}")),
    })?;
    Ok(img.to_rgb8())
}

/// Which FID to compute.
pub enum FidChoice<'a, B: Backend> {
    /// No FID.
    None,
    /// With an extractor (Inception or a classifier's features).
    With(&'a dyn FeatureExtractor<B>),
    /// With the character classifier's pooled features (story world; not comparable).
    CharClassifierFeatures,
}

/// What to score and with what.
pub struct EvalOptions<'a, B: Backend> {
    /// The split whose stories were generated.
    pub split: Split,
    /// Character classifier (Char-Acc / Char-F1).
    pub char_classifier: Option<&'a LoadedClassifier<B>>,
    /// Background classifier (BG-Acc / BG-F1).
    pub bg_classifier: Option<&'a LoadedClassifier<B>>,
    /// FID feature space.
    pub fid: FidChoice<'a, B>,
    /// CLIP T-I / I-I scores.
    pub clip: Option<&'a ClipScorer<B>>,
    /// Stories shown in the grid.
    pub grid_stories: usize,
    /// Seed of the ground-truth image draw for clips with several images (the original picks
    /// one at random).
    pub seed: u64,
}

/// The FID part of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FidReport {
    /// `d²`.
    pub value: f64,
    /// Its terms.
    pub terms: FrechetTerms,
    /// The feature space.
    pub features: String,
    /// Whether the value can be compared with published Inception FIDs.
    pub comparable_to_inception_fid: bool,
    /// Real / generated samples.
    pub samples: usize,
}

/// Scores of one classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierReport {
    /// The paper's Acc / F1 (and micro precision / recall).
    pub generated: MultiLabelScores,
    /// The same classifier on the ground-truth frames: the ceiling of the judge.
    pub ground_truth: MultiLabelScores,
    /// Per-label accuracy on the generated frames, by label name.
    pub per_label_accuracy: Vec<(String, f64)>,
    /// Which classifier.
    pub classifier: String,
}

/// `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Dataset name.
    pub dataset: String,
    /// Split.
    pub split: Split,
    /// Stories scored.
    pub stories: usize,
    /// Frames scored.
    pub frames: usize,
    /// Char-Acc / Char-F1.
    pub character: Option<ClassifierReport>,
    /// BG-Acc / BG-F1.
    pub background: Option<ClassifierReport>,
    /// FID.
    pub fid: Option<FidReport>,
    /// CLIP T-I / I-I.
    pub clip: Option<ClipScores>,
    /// Warnings raised on the way (resized frames, ...).
    pub warnings: Vec<String>,
}

fn classify<B: Backend>(
    c: &LoadedClassifier<B>,
    generated: &[RgbImage],
    ground_truth: &[RgbImage],
    truth: &[Vec<bool>],
    device: &Device<B>,
) -> Result<ClassifierReport> {
    let l = c.model.num_labels();
    let gen_preds = predict(&c.model.logits(generated, device)?, l);
    let gt_preds = predict(&c.model.logits(ground_truth, device)?, l);
    let mut g = MultiLabelCounts::default();
    g.add(&gen_preds, truth)?;
    let mut t = MultiLabelCounts::default();
    t.add(&gt_preds, truth)?;
    Ok(ClassifierReport {
        generated: g.scores(),
        ground_truth: t.scores(),
        per_label_accuracy: c
            .meta
            .labels
            .iter()
            .cloned()
            .zip(per_label_accuracy(&gen_preds, truth))
            .collect(),
        classifier: c.model.describe(),
    })
}

fn labels_for(
    dataset: &dyn StoryDataset,
    ids: &[&str],
    kind: LabelKind,
    n: usize,
) -> Result<Vec<Vec<bool>>> {
    ids.iter()
        .map(|id| {
            let ann = dataset.annotation(id)?;
            let v = match kind {
                LabelKind::Character => ann.character_labels(n),
                LabelKind::Background => ann.background_labels(n),
            };
            Ok(v.iter().map(|&x| x > 0.5).collect())
        })
        .collect()
}

fn check_classifier(
    c: &LoadedClassifier<impl Backend>,
    want: LabelKind,
    n: usize,
    dataset: &dyn StoryDataset,
) -> Result<()> {
    if c.meta.kind != want || c.meta.labels.len() != n {
        return Err(Error::InvalidInput(format!(
            "the {} classifier predicts {} {:?} labels, but {} has {n}",
            want.short(),
            c.meta.labels.len(),
            c.meta.kind,
            dataset.name()
        )));
    }
    Ok(())
}

/// Scores `generated` against `dataset` (see the module docs); `on_progress(stage)` is called
/// as each metric starts.
pub fn evaluate<B: Backend>(
    generated: &GeneratedSet,
    dataset: &dyn StoryDataset,
    options: &EvalOptions<'_, B>,
    device: &Device<B>,
    on_progress: &mut dyn FnMut(&str),
) -> Result<(EvalReport, Vec<RgbImage>, Vec<RgbImage>)> {
    let mut warnings = Vec::new();
    on_progress("reading frames");
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut gen_imgs = Vec::with_capacity(generated.frames.len());
    let mut gt_imgs = Vec::with_capacity(generated.frames.len());
    let mut resized = 0usize;
    let mut first_resized = None;
    for f in &generated.frames {
        let ann = dataset.annotation(&f.frame_id)?;
        let k = if ann.num_images > 1 {
            rng.random_range(0..ann.num_images)
        } else {
            0
        };
        let gt = dataset.load_image(&f.frame_id, k)?.image;
        let mut g = read_rgb(&f.path)?;
        if g.dimensions() != gt.dimensions() {
            resized += 1;
            first_resized.get_or_insert_with(|| (f.path.clone(), g.dimensions(), gt.dimensions()));
            g = resize_pil(
                &g,
                gt.width() as usize,
                gt.height() as usize,
                PilFilter::Bilinear,
            );
        }
        gen_imgs.push(g);
        gt_imgs.push(gt);
    }
    if let Some((path, from, to)) = first_resized {
        let msg = format!(
            "{resized} generated frame(s) differ in size from the dataset's and were resized \
             (first: {} is {}x{}, ground truth {}x{})",
            path.display(),
            from.0,
            from.1,
            to.0,
            to.1
        );
        tracing::warn!("{msg}");
        warnings.push(msg);
    }
    let ids: Vec<&str> = generated
        .frames
        .iter()
        .map(|f| f.frame_id.as_str())
        .collect();

    let mut character = None;
    if let Some(c) = options.char_classifier {
        on_progress("character classifier");
        let n = dataset.characters().len();
        check_classifier(c, LabelKind::Character, n, dataset)?;
        let truth = labels_for(dataset, &ids, LabelKind::Character, n)?;
        character = Some(classify(c, &gen_imgs, &gt_imgs, &truth, device)?);
    }
    let mut background = None;
    if let Some(c) = options.bg_classifier {
        on_progress("background classifier");
        let n = dataset.num_backgrounds();
        check_classifier(c, LabelKind::Background, n, dataset)?;
        let truth = labels_for(dataset, &ids, LabelKind::Background, n)?;
        background = Some(classify(c, &gen_imgs, &gt_imgs, &truth, device)?);
    }

    let classifier_features;
    let extractor: Option<&dyn FeatureExtractor<B>> = match &options.fid {
        FidChoice::None => None,
        FidChoice::With(e) => Some(*e),
        FidChoice::CharClassifierFeatures => {
            let c = options.char_classifier.ok_or_else(|| {
                Error::InvalidInput("classifier-feature FID needs a character classifier".into())
            })?;
            classifier_features = ClassifierFeatures {
                classifier: c.model.as_ref(),
            };
            Some(&classifier_features)
        }
    };
    let fid = match extractor {
        None => None,
        Some(e) => {
            on_progress("FID");
            let real = GaussianStats::from_features(&e.extract(&gt_imgs, device)?, e.dim())?;
            let fake = GaussianStats::from_features(&e.extract(&gen_imgs, device)?, e.dim())?;
            let terms = frechet_distance_terms(&real, &fake)?;
            Some(FidReport {
                value: terms.distance,
                terms,
                features: e.describe(),
                comparable_to_inception_fid: e.comparable_to_inception_fid(),
                samples: gen_imgs.len(),
            })
        }
    };

    let clip = match options.clip {
        None => None,
        Some(scorer) => {
            on_progress("CLIP scores");
            let captions: Vec<String> = ids
                .iter()
                .map(|id| {
                    dataset
                        .annotation(id)
                        .map(|a| a.caption_for_image(0).to_string())
                })
                .collect::<Result<_>>()?;
            let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
            Some(scorer.score(&refs, &gen_imgs, &gt_imgs, device)?)
        }
    };

    let report = EvalReport {
        dataset: dataset.name().to_string(),
        split: options.split,
        stories: generated.frames.last().map_or(0, |f| f.story + 1),
        frames: generated.frames.len(),
        character,
        background,
        fid,
        clip,
        warnings,
    };
    Ok((report, gen_imgs, gt_imgs))
}

/// The markdown summary of a report.
pub fn summary_markdown(r: &EvalReport) -> String {
    let mut s = format!(
        "# Evaluation: {} ({} split)\n\n{} stories, {} frames.\n\n| metric | generated | ground truth (judge ceiling) |\n|---|---|---|\n",
        r.dataset,
        r.split.name(),
        r.stories,
        r.frames
    );
    for (name, c) in [("Char", &r.character), ("BG", &r.background)] {
        if let Some(c) = c {
            s += &format!(
                "| {name}-Acc | {:.2} | {:.2} |\n| {name}-F1 | {:.2} | {:.2} |\n",
                c.generated.accuracy, c.ground_truth.accuracy, c.generated.f1, c.ground_truth.f1
            );
        }
    }
    if let Some(f) = &r.fid {
        s += &format!(
            "| FID{} | {:.4} | – |\n",
            if f.comparable_to_inception_fid {
                ""
            } else {
                " (domain features, not Inception)"
            },
            f.value
        );
    }
    if let Some(c) = &r.clip {
        s += &format!(
            "| CLIP T-I | {:.4} | – |\n| CLIP I-I | {:.4} | – |\n",
            c.text_image, c.image_image
        );
    }
    s += "\nAcc = % of frames whose whole predicted label vector is right; F1 = micro-F1 × 100 \
          (the original StoryGPT-V `eval_cls.py`).\n";
    for (name, c) in [("Characters", &r.character), ("Backgrounds", &r.background)] {
        if let Some(c) = c {
            s += &format!(
                "\n## {name}: per-label accuracy\n\nJudge: {}.\n\n",
                c.classifier
            );
            for (label, acc) in &c.per_label_accuracy {
                s += &format!("- {label}: {:.2} %\n", 100.0 * acc);
            }
        }
    }
    if let Some(f) = &r.fid {
        s += &format!(
            "\n## FID\n\n{} over {} real and {} generated frames.{}\n",
            f.features,
            f.samples,
            f.samples,
            if f.comparable_to_inception_fid {
                ""
            } else {
                " **This is not an Inception FID: do not compare it with published FIDs.**"
            }
        );
    }
    if !r.warnings.is_empty() {
        s += "\n## Warnings\n\n";
        for w in &r.warnings {
            s += &format!("- {w}\n");
        }
    }
    s += "\n![ground truth (odd rows) and generated (even rows)](grid.png)\n";
    s
}

/// The grid: for each of the first `stories` stories, a row of ground-truth frames with their
/// captions, then the generated frames.
pub fn grid(
    dataset: &dyn StoryDataset,
    set: &GeneratedSet,
    generated: &[RgbImage],
    ground_truth: &[RgbImage],
    stories: usize,
) -> Result<RgbImage> {
    let cols = set.frames.iter().map(|f| f.position + 1).max().unwrap_or(1);
    let mut tiles = Vec::new();
    let last_story = set.frames.iter().map(|f| f.story).max().unwrap_or(0);
    for s in 0..stories.min(last_story + 1) {
        let idx: Vec<usize> = (0..set.frames.len())
            .filter(|&i| set.frames[i].story == s)
            .collect();
        for (row, imgs, label) in [(0, ground_truth, "GT: "), (1, generated, "gen")] {
            for c in 0..cols {
                match idx.get(c) {
                    Some(&i) => {
                        let caption = if row == 0 {
                            let ann = dataset.annotation(&set.frames[i].frame_id)?;
                            format!("{label}{}", ann.caption_for_image(0))
                        } else {
                            label.to_string()
                        };
                        tiles.push((imgs[i].clone(), caption));
                    }
                    None => tiles.push((RgbImage::new(1, 1), String::new())),
                }
            }
        }
    }
    Ok(contact_sheet(&tiles, cols, 3, 4))
}

/// Writes `metrics.json`, `summary.md` and `grid.png` into `out` (created if needed), each
/// atomically.
pub fn write_report(out: &Path, report: &EvalReport, grid_image: &RgbImage) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    storygpt_core::fs::write_json_atomic(out.join("metrics.json"), report)?;
    storygpt_core::fs::write_atomic(out.join("summary.md"), summary_markdown(report).as_bytes())?;
    save_png(&out.join("grid.png"), grid_image)
}
