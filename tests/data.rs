//! storygpt-data: the story world (determinism, labels, format errors), the FlintstonesSV /
//! PororoSV readers on their mini fixtures, the data-only pickle reader on CPython's pickles of
//! every protocol, co-reference against the original code's output, and both batchers.
//!
//! Fixtures: `.venv/bin/python scripts/reference/generate.py --only flintstones_mini --only
//! pororo_mini --only pickle_golden`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use storygpt::Error;
use storygpt::data::batch::{
    IGNORE_INDEX, Stage1Batch, Stage1Batcher, Stage1Config, Stage1Frames, Stage1Mode, Stage2Batch,
    Stage2Batcher, Stage2Config, Stage2Stories,
};
use storygpt::data::original::OriginalDataset;
use storygpt::data::pickle::{self, Value};
use storygpt::data::world::{self, StoryWorld, WorldConfig};
use storygpt::data::{Gender, Split, StoryDataset};

use crate::common::{TB, asset, fixture, unpack};

fn small_world(
    stories: usize,
    seed: u64,
    size: u32,
    threads: usize,
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("world");
    let cfg = WorldConfig {
        stories,
        size,
        seed,
        threads,
        ..WorldConfig::default()
    };
    world::generate(&cfg, &out, false, &|_, _| {}).unwrap();
    (tmp, out)
}

/// sha256 of every file under `dir`, by relative path.
fn hashes(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                let h = Sha256::digest(std::fs::read(&p).unwrap());
                out.insert(rel, format!("{h:x}"));
            }
        }
    }
    out
}

#[test]
fn world_same_seed_gives_identical_bytes_on_any_thread_count() {
    let (_a, da) = small_world(12, 7, 64, 1);
    let (_b, db) = small_world(12, 7, 64, 2);
    let (_c, dc) = small_world(12, 8, 64, 2);
    let (ha, hb, hc) = (hashes(&da), hashes(&db), hashes(&dc));
    assert_eq!(
        ha.len(),
        1 + 1 + 7 + 2 * 48,
        "manifest, README, portraits, frames+masks"
    );
    assert_eq!(ha, hb, "same seed, 1 vs 2 threads");
    assert_ne!(
        ha["manifest.json"], hc["manifest.json"],
        "another seed differs"
    );
}

#[test]
fn world_labels_masks_and_captions_are_consistent() {
    let (_t, dir) = small_world(40, 3, 96, 0);
    let w = StoryWorld::open(&dir).unwrap();
    w.validate_files(&|_, _| {}).unwrap();
    assert_eq!(w.characters().len(), 7);
    assert_eq!(
        w.characters()
            .iter()
            .filter(|c| c.gender == Gender::Female)
            .count(),
        3
    );
    assert_eq!(w.num_backgrounds(), 10);
    assert_eq!(
        (
            w.stories(Split::Train).len(),
            w.stories(Split::Val).len(),
            w.stories(Split::Test).len()
        ),
        (32, 4, 4)
    );
    let mut referential = 0;
    let mut per_count = [0usize; 4];
    for split in Split::ALL {
        for story in w.stories(split) {
            assert_eq!(story.len(), 4);
            let refs = w.referential_captions(story, &[0; 4]).unwrap();
            for (id, rc) in story.iter().zip(&refs) {
                let a = w.annotation(id).unwrap();
                assert!((1..=3).contains(&a.characters.len()), "{id}");
                per_count[a.characters.len()] += 1;
                assert_eq!(
                    a.segments.len(),
                    a.characters.len(),
                    "{id}: one segment per character"
                );
                assert_eq!(a.backgrounds.len(), 1);
                for s in &a.segments {
                    let c = s.character.unwrap();
                    // The segment's words name its character.
                    assert_eq!(a.tokens[s.start], w.characters()[c].name, "{id}");
                    assert!(a.captions[0].contains(&w.characters()[c].name));
                }
                // The mask holds exactly the segment ids, inside their boxes.
                let img = w.load_image(id, 0).unwrap();
                let m = img.segmap.unwrap();
                assert_eq!((img.image.width(), m.width), (96, 96));
                for (i, &v) in m.ids.iter().enumerate() {
                    if v == 0 {
                        continue;
                    }
                    let s = a
                        .segments
                        .iter()
                        .find(|s| s.id == v)
                        .expect("label is a segment");
                    let (x, y) = ((i % 96) as f32 / 96.0, (i / 96) as f32 / 96.0);
                    assert!(x >= s.bbox[0] && x < s.bbox[2] && y >= s.bbox[1] && y < s.bbox[3]);
                }
                // Stored and recomputed referential captions agree.
                let stored = &w
                    .manifest()
                    .stories
                    .iter()
                    .flat_map(|s| &s.frames)
                    .find(|f| &f.id == id)
                    .unwrap();
                assert_eq!(stored.referential_caption, rc.text);
                referential += usize::from(rc.referential);
            }
        }
    }
    assert!(
        per_count[1] > 0 && per_count[2] > 0 && per_count[3] > 0,
        "{per_count:?}"
    );
    assert!(
        referential >= 16,
        "only {referential} referential captions in 160 frames"
    );
}

#[test]
fn world_config_and_output_errors_are_typed() {
    for bad in [
        WorldConfig {
            stories: 0,
            ..WorldConfig::default()
        },
        WorldConfig {
            frames_per_story: 51,
            ..WorldConfig::default()
        },
        WorldConfig {
            size: 100,
            ..WorldConfig::default()
        },
        WorldConfig {
            max_characters_per_frame: 4,
            ..WorldConfig::default()
        },
    ] {
        assert!(
            matches!(bad.validate(), Err(Error::InvalidInput(_))),
            "{bad:?}"
        );
    }
    let (_t, dir) = small_world(3, 0, 32, 1);
    let cfg = WorldConfig {
        stories: 2,
        size: 32,
        ..WorldConfig::default()
    };
    let err = world::generate(&cfg, &dir, false, &|_, _| {}).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    // --overwrite replaces it whole.
    world::generate(&cfg, &dir, true, &|_, _| {}).unwrap();
    assert_eq!(StoryWorld::open(&dir).unwrap().manifest().stories.len(), 2);
    let leftovers: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        leftovers,
        ["world"],
        "no partial or old folders left behind"
    );
}

#[test]
fn world_reader_names_the_first_bad_file() {
    let (_t, dir) = small_world(3, 1, 32, 1);
    // A missing frame.
    let frame = dir.join("frames/s00001_f02.png");
    let saved = std::fs::read(&frame).unwrap();
    std::fs::remove_file(&frame).unwrap();
    match StoryWorld::open(&dir).unwrap_err() {
        Error::DataFile { path, reason } => {
            assert_eq!(path, frame);
            assert!(reason.contains("missing"), "{reason}");
        }
        e => panic!("{e}"),
    }
    // A corrupt PNG: found when decoding.
    std::fs::write(&frame, &saved[..saved.len() / 3]).unwrap();
    let w = StoryWorld::open(&dir).unwrap();
    match w.load_image("s00001_f02", 0).unwrap_err() {
        Error::DataFile { path, .. } => assert_eq!(path, frame),
        e => panic!("{e}"),
    }
    match w.validate_files(&|_, _| {}).unwrap_err() {
        Error::DataFile { path, .. } => assert_eq!(path, frame),
        e => panic!("{e}"),
    }
    // A manifest of another version.
    let mpath = dir.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(&mpath, text.replacen("\"version\": 1", "\"version\": 9", 1)).unwrap();
    match StoryWorld::open(&dir).unwrap_err() {
        Error::DataFile { path, reason } => {
            assert_eq!(path, mpath);
            assert!(reason.contains("version 9"), "{reason}");
        }
        e => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Pickle

fn to_json(v: &Value) -> Json {
    match v {
        Value::None => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!({ "int": i.to_string() }),
        Value::BigInt(i) => json!({ "int": i.to_string() }),
        Value::Float(f) => json!(f),
        Value::Str(s) => json!(s),
        Value::Bytes(b) => {
            json!({ "bytes": b.iter().map(|x| format!("{x:02x}")).collect::<String>() })
        }
        Value::List(l) => json!({ "list": l.iter().map(to_json).collect::<Vec<_>>() }),
        Value::Tuple(l) => json!({ "tuple": l.iter().map(to_json).collect::<Vec<_>>() }),
        Value::Dict(d) => Json::Object(
            d.iter()
                .map(|(k, v)| (k.as_str().unwrap().to_string(), to_json(v)))
                .collect(),
        ),
        Value::NdArray(a) => {
            let data: Vec<Json> = if a.dtype.contains('U') {
                a.to_strings()
                    .unwrap()
                    .into_iter()
                    .map(Json::from)
                    .collect()
            } else if a.dtype.contains('b') {
                a.to_f64()
                    .unwrap()
                    .into_iter()
                    .map(|x| json!(x != 0.0))
                    .collect()
            } else {
                a.to_f64().unwrap().into_iter().map(Json::from).collect()
            };
            if a.scalar {
                json!({ "scalar": { "dtype": a.dtype, "value": data[0] } })
            } else {
                json!({ "ndarray": { "dtype": a.dtype, "shape": a.shape, "data": data } })
            }
        }
        other => panic!("unexpected non-data value {other:?}"),
    }
}

/// JSON equality with numbers compared as f64 (and -0.0 == 0.0).
fn same(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x.as_f64() == y.as_f64(),
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn pickle_reads_cpython_pickles_of_every_protocol() {
    let expected: Json = serde_json::from_str(
        &std::fs::read_to_string(fixture("pickle_golden/expected.json")).unwrap(),
    )
    .unwrap();
    let files = [
        "obj_p0",
        "obj_p1",
        "obj_p2",
        "obj_p2_numpy1",
        "obj_p3",
        "obj_p4",
        "obj_p4_numpy1",
        "obj_p5",
    ];
    for f in files {
        let v = pickle::read_pickle(fixture(&format!("pickle_golden/{f}.pkl"))).unwrap();
        let got = to_json(&v);
        let (Json::Object(g), Json::Object(e)) = (&got, &expected) else {
            panic!()
        };
        for (k, want) in e {
            assert!(same(&g[k], want), "{f}: `{k}`: got {} want {want}", g[k]);
        }
        assert_eq!(g.len(), e.len(), "{f}");
    }
}

#[test]
fn hostile_and_broken_pickles_are_data_or_errors() {
    // A pickle that would run os.system: parsed, recorded, never called.
    let v = pickle::read_pickle(fixture("pickle_golden/bad_os_system.pkl")).unwrap();
    match &v {
        Value::Reduce { callable, .. } => match callable.as_ref() {
            Value::Global { name, .. } => assert_eq!(name, "system"),
            other => panic!("{other:?}"),
        },
        other => panic!("expected an inert call, got {other:?}"),
    }
    let p = fixture("pickle_golden/bad_truncated.pkl");
    match pickle::read_pickle(&p).unwrap_err() {
        Error::DataFile { path, reason } => {
            assert_eq!(path, p);
            assert!(reason.contains("truncated"), "{reason}");
        }
        e => panic!("{e}"),
    }
    let p = fixture("pickle_golden/bad_object_array.pkl");
    let err = pickle::read_pickle(&p).unwrap_err().to_string();
    assert!(err.contains("object array"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// FlintstonesSV / PororoSV

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let to = dst.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &to);
        } else {
            std::fs::copy(&p, &to).unwrap();
        }
    }
}

fn expected_referential(ds: &str) -> Json {
    serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("{ds}/expected_referential.json"))).unwrap(),
    )
    .unwrap()
}

#[test]
fn flintstones_mini_loads_through_the_trait() {
    let ds = OriginalDataset::open(fixture("flintstones_mini")).unwrap();
    let ds: &dyn StoryDataset = &ds;
    assert_eq!(ds.name(), "flintstones");
    assert_eq!(ds.characters().len(), 7);
    assert_eq!(ds.num_backgrounds(), 323);
    assert_eq!(ds.stories(Split::Train).len(), 2);
    assert_eq!(ds.stories(Split::Test).len(), 1);
    assert!(ds.stories(Split::Train).iter().all(|s| s.len() == 4));
    for split in Split::ALL {
        for id in ds.frame_ids(split) {
            let a = ds.annotation(id).unwrap();
            assert_eq!(a.backgrounds.len(), 1, "{id}: one-hot background");
            for k in 0..a.num_images {
                let img = ds.load_image(id, k).unwrap();
                assert_eq!(img.image.dimensions(), (32, 32));
                let m = img.segmap.expect("every fixture frame has a mask");
                let mut ids: Vec<u32> = m.ids.iter().copied().filter(|&v| v > 0).collect();
                ids.sort_unstable();
                ids.dedup();
                let mut want: Vec<u32> = a.segments.iter().map(|s| s.id).collect();
                want.sort_unstable();
                assert_eq!(ids, want, "{id} frame {k}");
            }
            for s in &a.segments {
                assert!(s.character.is_some(), "{id}: {} is a cast member", s.word);
            }
        }
    }
    // The two-word name: "mr slate" → Slate.
    let slate = ds
        .frame_ids(Split::Train)
        .iter()
        .chain(ds.frame_ids(Split::Val))
        .chain(ds.frame_ids(Split::Test))
        .map(|id| ds.annotation(id).unwrap())
        .find(|a| a.captions[0].starts_with("Mr Slate"))
        .expect("a Mr Slate frame");
    assert_eq!(slate.segments[0].character, Some(5));
    assert_eq!(slate.characters, [5]);

    // Referential captions: the original evaluator's output (gender-correct).
    let want = expected_referential("flintstones_mini");
    for split in Split::ALL {
        for story in ds.stories(split) {
            let got = ds.referential_captions(story, &[0; 4]).unwrap();
            let e = &want[&story[0]]["eval"]["captions"];
            let texts: Vec<&str> = got.iter().map(|c| c.text.as_str()).collect();
            assert_eq!(json!(texts), *e, "story {}", story[0]);
        }
    }
}

#[test]
fn pororo_mini_loads_through_the_trait() {
    let ds = OriginalDataset::open(fixture("pororo_mini")).unwrap();
    assert_eq!(ds.name(), "pororo");
    assert_eq!(ds.characters().len(), 9);
    assert_eq!(ds.num_backgrounds(), 0);
    let story = ds.stories(Split::Train)[0].clone();
    let a = ds.annotation(&story[0]).unwrap();
    assert_eq!(a.captions.len(), 3);
    assert_eq!(a.num_images, 2);
    // Caption of image k: min(ceil((k+1)/n·c), c−1) → images 0, 1 → captions 2, 2.
    assert_eq!(a.caption_for_image(0), a.captions[2]);
    assert!(
        a.characters.contains(&0) && a.characters.contains(&2),
        "Pororo and Crong"
    );
    let img = ds.load_image(&story[0], 1).unwrap();
    assert!(img.segmap.is_none());
    assert!(matches!(
        ds.load_image(&story[0], 2),
        Err(Error::InvalidInput(_))
    ));
    let want = expected_referential("pororo_mini");
    for split in [Split::Train, Split::Test] {
        for story in ds.stories(split) {
            // Image 0 of every clip, as the original's training loader picks with 2 images.
            let sel = &want[&story[0]]["selections"]["train_frame0"];
            let images = vec![0; story.len()];
            for (j, id) in story.iter().enumerate() {
                let a = ds.annotation(id).unwrap();
                let k = sel["caption_indices"][j].as_u64().unwrap() as usize;
                assert_eq!(a.caption_for_image(0), a.captions[k], "{id}");
            }
            let e = &sel["eval"];
            let got = ds.referential_captions(story, &images).unwrap();
            let texts: Vec<&str> = got.iter().map(|c| c.text.as_str()).collect();
            assert_eq!(json!(texts), e["captions"], "story {}", story[0]);
        }
    }
}

fn expect_data_file(err: Error, file: &Path, needle: &str) {
    match err {
        Error::DataFile { path, reason } => {
            assert_eq!(path, file, "{reason}");
            assert!(reason.contains(needle), "`{needle}` not in: {reason}");
        }
        Error::Io { path, .. } if needle == "<io>" => assert_eq!(path, file),
        e => panic!("expected a DataFile error for {}, got {e}", file.display()),
    }
}

#[test]
fn original_layout_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("flintstones");
    copy_dir(&fixture("flintstones_mini"), &root);
    let id = "s_01_e_02_shot_010581_010660";

    // A bad .npy header.
    let npy = root.join(format!("video_frames_sampled_4x/{id}.npy"));
    let good = std::fs::read(&npy).unwrap();
    let mut bad = good.clone();
    bad[1..6].copy_from_slice(b"XXXXX");
    std::fs::write(&npy, &bad).unwrap();
    expect_data_file(
        OriginalDataset::open(&root).unwrap_err(),
        &npy,
        "not a valid .npy",
    );
    // A missing frame file.
    std::fs::remove_file(&npy).unwrap();
    expect_data_file(OriginalDataset::open(&root).unwrap_err(), &npy, "<io>");
    std::fs::write(&npy, &good).unwrap();

    // labels.pkl as a list instead of a dict.
    let labels = root.join("labels.pkl");
    let good_labels = std::fs::read(&labels).unwrap();
    std::fs::copy(fixture("pickle_golden/labels_list.pkl"), &labels).unwrap();
    expect_data_file(
        OriginalDataset::open(&root).unwrap_err(),
        &labels,
        "expected a dict",
    );
    std::fs::write(&labels, good_labels).unwrap();
    // labels_bg.pkl without its `label` key.
    let bg = root.join("labels_bg.pkl");
    std::fs::copy(fixture("pickle_golden/labels_bg_no_label_key.pkl"), &bg).unwrap();
    expect_data_file(OriginalDataset::open(&root).unwrap_err(), &bg, "`label`");
    // A hostile pickle is an unexpected structure, not code.
    std::fs::copy(fixture("pickle_golden/bad_os_system.pkl"), &bg).unwrap();
    expect_data_file(OriginalDataset::open(&root).unwrap_err(), &bg, "system");
}

// ---------------------------------------------------------------------------------------------
// Batchers

fn clip_tokenizer() -> Arc<storygpt::models::clip::ClipTokenizer> {
    let dir = unpack("clip_tokenizer");
    let mut tok = storygpt::models::clip::ClipTokenizer::from_dir(dir.path()).unwrap();
    tok.add_special_tokens(&[storygpt::models::clip::IMAGE_MARKER]);
    Arc::new(tok)
}

#[test]
fn stage1_batches_mark_names_crop_characters_and_mix_conditions() {
    let (_t, dir) = small_world(30, 5, 64, 0);
    let world: Arc<dyn StoryDataset> = Arc::new(StoryWorld::open(&dir).unwrap());
    let tok = clip_tokenizer();
    let config = Stage1Config {
        resolution: 64,
        crop_size: 32,
        flip_crops: false,
        ..Stage1Config::default()
    };
    let batcher = Stage1Batcher::new(tok.clone(), config).unwrap();
    let frames = Stage1Frames::new(world.clone(), Split::Train, 1, 11).unwrap();
    assert_eq!(frames.len(), 24 * 4);
    let device = Default::default();
    let items: Vec<_> = (0..frames.len()).map(|i| frames.get(i).unwrap()).collect();
    let batch: Stage1Batch<TB> = batcher.batch(items, &device).unwrap();
    let n = frames.len();
    assert_eq!(batch.pixel_values.dims(), [n, 3, 64, 64]);
    assert_eq!(batch.input_ids.dims(), [n, 77]);
    assert_eq!(batch.image_token_idx.dims(), [n, 4]);
    assert_eq!(batch.object_pixel_values.dims(), [n, 4, 3, 32, 32]);
    assert_eq!(batch.object_masks.dims(), [n, 4, 8, 8]);
    let px: Vec<f32> = batch.pixel_values.to_data().to_vec().unwrap();
    assert!(px.iter().all(|v| (-1.0..=1.0).contains(v)));

    let ids: Vec<i64> = batch.input_ids.to_data().convert::<i64>().to_vec().unwrap();
    let idx: Vec<i64> = batch
        .image_token_idx
        .to_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    let masks: Vec<f32> = batch.object_masks.to_data().to_vec().unwrap();
    let crops: Vec<f32> = batch.object_pixel_values.to_data().to_vec().unwrap();
    for (b, mode) in batch.modes.iter().enumerate() {
        let ann = world.annotation(&batch.ids[b]).unwrap();
        match mode {
            Stage1Mode::Fused => {
                assert_eq!(batch.num_objects[b], ann.segments.len());
                // Each marked position holds the last piece of a character's name.
                let mut names: Vec<String> = ann
                    .segments
                    .iter()
                    .map(|s| ann.tokens[s.start].clone())
                    .collect();
                names.sort_by_key(|n| ann.tokens.iter().position(|t| t == n));
                for (j, name) in names.iter().enumerate() {
                    let pos = idx[b * 4 + j] as usize;
                    let piece = *tok
                        .encode(name)
                        .unwrap()
                        .input_ids
                        .iter()
                        .rev()
                        .nth(1)
                        .unwrap();
                    assert_eq!(ids[b * 77 + pos] as u32, piece, "{} {name}", batch.ids[b]);
                    // The mask covers the character's share of the frame.
                    let seg = ann
                        .segments
                        .iter()
                        .find(|s| &ann.tokens[s.start] == name)
                        .unwrap();
                    let cover: f32 = masks[(b * 4 + j) * 64..(b * 4 + j + 1) * 64].iter().sum();
                    let area = world
                        .load_image(&batch.ids[b], 0)
                        .unwrap()
                        .segmap
                        .unwrap()
                        .ids
                        .iter()
                        .filter(|&&v| v == seg.id)
                        .count() as f32;
                    assert!((cover * 64.0 - area).abs() < 1e-2, "{cover} vs {area}");
                    let crop = &crops[(b * 4 + j) * 3 * 32 * 32..(b * 4 + j + 1) * 3 * 32 * 32];
                    assert!(
                        crop.iter().all(|v| (0.0..=1.0).contains(v))
                            && crop.iter().any(|&v| v > 0.0)
                    );
                }
            }
            Stage1Mode::TextOnly => {
                assert_eq!(
                    ann.segments.len(),
                    1,
                    "text-only only for one-character frames"
                );
                assert_eq!(batch.num_objects[b], 0);
            }
            Stage1Mode::Unconditional => {
                assert_eq!(batch.num_objects[b], 0);
                // Empty caption: <|startoftext|> <|endoftext|> then padding.
                assert_eq!(ids[b * 77 + 1], ids[b * 77 + 76]);
            }
        }
    }

    // The mixture: 10 % unconditional, 10 % text-only (one-character frames), over many seeds.
    let mut counts = [0usize; 3];
    let mut single = 0;
    for epoch in 0..25 {
        let mut f = Stage1Frames::new(world.clone(), Split::Train, 1, 99).unwrap();
        f.set_epoch(epoch);
        let items: Vec<_> = (0..f.len()).map(|i| f.get(i).unwrap()).collect();
        single += items
            .iter()
            .filter(|i| i.as_ref().unwrap().segments.len() == 1)
            .count();
        let b: Stage1Batch<TB> = batcher.batch(items, &device).unwrap();
        for m in b.modes {
            counts[m as usize] += 1;
        }
    }
    let total: usize = counts.iter().sum();
    let uncond = counts[0] as f64 / total as f64;
    let text_only = counts[1] as f64 / single as f64;
    assert!((uncond - 0.1).abs() < 0.025, "unconditional {uncond}");
    assert!(
        (text_only - 0.1).abs() < 0.04,
        "text-only among 1-character frames {text_only}"
    );
}

fn gpt2_with_img_tokens() -> Arc<storygpt::models::llm_tokenizer::LlmTokenizer> {
    let mut tok =
        storygpt::models::llm_tokenizer::LlmTokenizer::from_dir(asset("gpt2-tokenizer")).unwrap();
    let img: Vec<String> = (0..8).map(|i| format!("[IMG{i}]")).collect();
    let refs: Vec<&str> = img.iter().map(String::as_str).collect();
    tok.add_tokens(&refs);
    Arc::new(tok)
}

#[test]
fn stage2_sequences_interleave_history_and_keep_the_img_tokens() {
    use storygpt::core::LmTokenizer;
    let (_t, dir) = small_world(10, 2, 64, 0);
    let world: Arc<dyn StoryDataset> = Arc::new(StoryWorld::open(&dir).unwrap());
    let tok = gpt2_with_img_tokens();
    let config = Stage2Config {
        image_size: 32,
        ..Stage2Config::default()
    };
    let batcher = Stage2Batcher::new(tok.clone(), config.clone()).unwrap();
    let stories = Stage2Stories::new(world.clone(), Split::Train, 4);
    let items: Vec<_> = (0..stories.len())
        .map(|i| stories.get(i).unwrap().unwrap())
        .collect();
    let batch: Stage2Batch<TB> = batcher
        .batch(items.iter().cloned().map(Ok).collect(), &Default::default())
        .unwrap();
    let n = items.len();
    let l = batch.input_ids.dims()[1];
    let ids: Vec<i64> = batch.input_ids.to_data().convert::<i64>().to_vec().unwrap();
    let labels: Vec<i64> = batch.labels.to_data().convert::<i64>().to_vec().unwrap();
    let starts: Vec<i64> = batch
        .image_slot_starts
        .to_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    let img_pos: Vec<i64> = batch
        .img_token_positions
        .to_data()
        .convert::<i64>()
        .to_vec()
        .unwrap();
    let h = batch.history_pixels.dims()[1];
    let img_ids: Vec<u32> = (0..8)
        .map(|i| tok.token_id(&format!("[IMG{i}]")).unwrap())
        .collect();
    let mut targets = [0usize; 4];
    for (b, item) in items.iter().enumerate() {
        let t = item.target;
        targets[t] += 1;
        assert!(t >= 1);
        assert_eq!(
            batch.num_history[b], t,
            "short captions: the whole history fits"
        );
        assert_eq!(batch.target_ids[b], item.ids[t]);
        // [IMG] tokens: in place, only [IMG0] supervised.
        for (r, &want) in img_ids.iter().enumerate() {
            let p = img_pos[b * 8 + r] as usize;
            assert_eq!(ids[b * l + p] as u32, want);
            assert_eq!(
                labels[b * l + p],
                if r == 0 {
                    i64::from(want)
                } else {
                    IGNORE_INDEX
                }
            );
        }
        // Image slots: 4 per history frame, unsupervised.
        for j in 0..t {
            let s = starts[b * h + j] as usize;
            for q in s..s + 4 {
                assert_eq!(labels[b * l + q], IGNORE_INDEX);
            }
        }
        // The text between the slots reads like the original's prompt.
        let mut text_ids = Vec::new();
        let mut j = 0;
        let end = img_pos[b * 8] as usize;
        while j < end {
            if (0..t).any(|k| starts[b * h + k] as usize == j) {
                text_ids.push(None);
                j += 4;
            } else {
                text_ids.push(Some(ids[b * l + j] as u32));
                j += 1;
            }
        }
        let mut text = String::new();
        for chunk in text_ids.split(Option::is_none) {
            let chunk: Vec<u32> = chunk.iter().map(|x| x.unwrap()).collect();
            text.push_str(&tok.decode(&chunk, false).unwrap());
            text.push_str("<ImageHere>");
        }
        let mut want = String::new();
        for cap in &item.captions[..t] {
            want.push_str(&format!(" Image: <img><ImageHere></img> Caption: {cap}"));
        }
        want.push_str(&format!(
            " Caption: {} Image: <ImageHere>",
            item.captions[t]
        ));
        assert!(text.ends_with(&want), "{text:?}\n{want:?}");
        let _ = n;
    }
    assert!(
        targets[0] == 0 && targets[1] > 0 && targets[3] > 0,
        "{targets:?}"
    );

    // Too long: the oldest history frames go first; the target alone must fit.
    let item = items.iter().find(|i| i.target == 3).unwrap();
    let full = batcher.sequence(&item.captions, 3).unwrap();
    let tight = Stage2Batcher::new(
        tok.clone(),
        Stage2Config {
            max_len: full.ids.len() - 1,
            ..config.clone()
        },
    )
    .unwrap();
    let seq = tight.sequence(&item.captions, 3).unwrap();
    assert!(seq.num_history < 3 && seq.ids.len() < full.ids.len());
    assert_eq!(
        &seq.ids[seq.ids.len() - 8..],
        &full.ids[full.ids.len() - 8..]
    );
    let tiny = Stage2Batcher::new(
        tok.clone(),
        Stage2Config {
            max_len: 12,
            ..config
        },
    )
    .unwrap();
    assert!(matches!(
        tiny.sequence(&item.captions, 3),
        Err(Error::InvalidInput(_))
    ));
}
