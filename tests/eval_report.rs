//! `storygpt eval`: the committed story-world judges on unseen ground truth, the report
//! (`metrics.json`, `summary.md`, `grid.png`) and its input errors.

use std::path::{Path, PathBuf};

use storygpt::backend::default_device;
use storygpt::data::world::{self, StoryWorld, WorldConfig};
use storygpt::data::{Split, StoryDataset};
use storygpt::eval::classifier::{LabelKind, load_classifier};
use storygpt::eval::metrics::{MultiLabelCounts, predict};
use storygpt::eval::report::{
    EvalOptions, EvalReport, FidChoice, GeneratedSet, evaluate, grid, write_report,
};

use crate::common::TB;

fn judge(kind: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("models/storyworld/judge-{kind}"))
}

/// A fresh story world the judges never saw (another seed than their training data).
fn unseen_world(dir: &Path, stories: usize, size: u32) -> StoryWorld {
    let cfg = WorldConfig {
        stories,
        seed: 7,
        size,
        ..WorldConfig::default()
    };
    world::generate(&cfg, dir, false, &|_, _| {}).unwrap();
    StoryWorld::open(dir).unwrap()
}

#[test]
fn committed_judges_read_unseen_ground_truth_at_99_percent() {
    let tmp = tempfile::tempdir().unwrap();
    let w = unseen_world(&tmp.path().join("w"), 200, 128);
    let dev = default_device();
    for (kind, n) in [("char", 7), ("bg", 10)] {
        let c = load_classifier::<TB>(judge(kind), &dev).unwrap();
        assert_eq!(c.meta.labels.len(), n);
        let mut imgs = Vec::new();
        let mut truth = Vec::new();
        for split in Split::ALL {
            for id in w.frame_ids(split) {
                imgs.push(w.load_image(id, 0).unwrap().image);
                let ann = w.annotation(id).unwrap();
                let l = if kind == "char" {
                    ann.character_labels(n)
                } else {
                    ann.background_labels(n)
                };
                truth.push(l.iter().map(|&v| v > 0.5).collect::<Vec<_>>());
            }
        }
        let preds = predict(&c.model.logits(&imgs, &dev).unwrap(), n);
        let mut counts = MultiLabelCounts::default();
        counts.add(&preds, &truth).unwrap();
        let s = counts.scores();
        eprintln!(
            "{kind} judge on {} unseen frames: Acc {:.2} %, F1 {:.2}",
            s.frames, s.accuracy, s.f1
        );
        assert_eq!(s.frames, 800);
        assert!(
            s.accuracy >= 99.0,
            "{kind} judge: Acc {:.2} % < 99 %",
            s.accuracy
        );
    }
}

/// Copies the ground-truth frames of the test split into the generated-frames layout.
fn gt_as_generated(w: &StoryWorld, out: &Path) {
    for story in w.stories(Split::Test) {
        let dir = out.join(&story[0]);
        std::fs::create_dir_all(&dir).unwrap();
        for id in story {
            w.load_image(id, 0)
                .unwrap()
                .image
                .save(dir.join(format!("{id}.png")))
                .unwrap();
        }
    }
}

fn run(w: &StoryWorld, gen_dir: &Path) -> storygpt::Result<EvalReport> {
    let dev = default_device();
    let c = load_classifier::<TB>(judge("char"), &dev)?;
    let b = load_classifier::<TB>(judge("bg"), &dev)?;
    let set = GeneratedSet::find(gen_dir, w, Split::Test)?;
    let options = EvalOptions {
        split: Split::Test,
        char_classifier: Some(&c),
        bg_classifier: Some(&b),
        fid: FidChoice::CharClassifierFeatures,
        clip: None,
        grid_stories: 3,
        seed: 0,
    };
    let (report, g, t) = evaluate(&set, w, &options, &dev, &mut |_| {})?;
    let sheet = grid(w, &set, &g, &t, 3)?;
    write_report(&gen_dir.with_extension("report"), &report, &sheet)?;
    Ok(report)
}

#[test]
fn report_on_ground_truth_frames_equals_the_judge_ceiling() {
    let tmp = tempfile::tempdir().unwrap();
    let w = unseen_world(&tmp.path().join("w"), 30, 64);
    let gen_dir = tmp.path().join("gen");
    gt_as_generated(&w, &gen_dir);
    let r = run(&w, &gen_dir).unwrap();
    assert_eq!(r.frames, 3 * 4);
    let c = r.character.as_ref().unwrap();
    assert_eq!(c.generated, c.ground_truth);
    assert!(r.background.is_some());
    let fid = r.fid.as_ref().unwrap();
    assert!(!fid.comparable_to_inception_fid);
    assert!(fid.value.abs() < 1e-6, "identical sets: FID {}", fid.value);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let out = gen_dir.with_extension("report");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json["frames"], 12);
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("Char-Acc") && md.contains("not Inception"),
        "{md}"
    );
    let grid = image::open(out.join("grid.png")).unwrap();
    assert!(grid.width() > 4 * 64 && grid.height() > 6 * 64);
}

#[test]
fn missing_generated_frames_name_the_first_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let w = unseen_world(&tmp.path().join("w"), 30, 64);
    let gen_dir = tmp.path().join("gen");
    gt_as_generated(&w, &gen_dir);
    let story = &w.stories(Split::Test)[1];
    let gone = gen_dir.join(&story[0]).join(format!("{}.png", story[2]));
    std::fs::remove_file(&gone).unwrap();
    let err = run(&w, &gen_dir).unwrap_err();
    match &err {
        storygpt::Error::DataFile { path, reason } => {
            assert_eq!(path, &gone);
            assert!(reason.contains("11 of the 12"), "{reason}");
        }
        other => panic!("expected DataFile, got {other}"),
    }
    // a folder that does not exist at all
    let err = run(&w, &tmp.path().join("nope")).unwrap_err();
    assert!(matches!(err, storygpt::Error::Io { .. }), "{err}");
}

#[test]
fn wrongly_sized_frames_are_resized_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let w = unseen_world(&tmp.path().join("w"), 30, 64);
    let gen_dir = tmp.path().join("gen");
    gt_as_generated(&w, &gen_dir);
    let story = &w.stories(Split::Test)[0];
    let p = gen_dir.join(&story[0]).join(format!("{}.png", story[1]));
    let img = image::open(&p).unwrap().to_rgb8();
    image::imageops::resize(&img, 96, 96, image::imageops::FilterType::Triangle)
        .save(&p)
        .unwrap();
    let r = run(&w, &gen_dir).unwrap();
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].contains("96x96") && r.warnings[0].contains("64x64"),
        "{}",
        r.warnings[0]
    );
    assert_eq!(r.frames, 12);
    // a classifier for the wrong label kind is rejected
    let dev = default_device();
    let b = load_classifier::<TB>(judge("bg"), &dev).unwrap();
    assert_eq!(b.meta.kind, LabelKind::Background);
    let set = GeneratedSet::find(&gen_dir, &w, Split::Test).unwrap();
    let options = EvalOptions {
        split: Split::Test,
        char_classifier: Some(&b),
        bg_classifier: None,
        fid: FidChoice::None,
        clip: None,
        grid_stories: 1,
        seed: 0,
    };
    let err = evaluate(&set, &w, &options, &dev, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("char classifier"), "{err}");
}

#[test]
fn inception_training_loop_reduces_the_loss() {
    use burn::backend::Autodiff;
    use storygpt::eval::train_classifier::{
        ClassifierArch, TrainClassifierConfig, train_classifier,
    };
    let tmp = tempfile::tempdir().unwrap();
    let w = unseen_world(&tmp.path().join("w"), 10, 64);
    let mut cfg = TrainClassifierConfig::new(LabelKind::Character, ClassifierArch::Inception);
    cfg.width_divisor = 8;
    cfg.steps = 8;
    cfg.batch_size = 4;
    cfg.learning_rate = 1e-3;
    let mut losses = Vec::new();
    let out = tmp.path().join("cls");
    let r = train_classifier::<Autodiff<TB>>(&w, &cfg, &out, &default_device(), &mut |_, l| {
        losses.push(l)
    })
    .unwrap();
    eprintln!("Inception (width/8) losses: {losses:?}");
    let first: f32 = losses[..2].iter().sum::<f32>() / 2.0;
    let last: f32 = losses[losses.len() - 2..].iter().sum::<f32>() / 2.0;
    assert!(last < first, "loss did not go down: {losses:?}");
    assert_eq!(r.test_frames, w.frame_ids(Split::Test).len());
    // the folder loads back as a classifier
    let c = load_classifier::<TB>(&out, &default_device()).unwrap();
    assert_eq!(c.meta.labels.len(), 7);
    assert!(out.join("README.md").is_file());
}
