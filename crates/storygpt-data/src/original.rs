//! FlintstonesSV and PororoSV in the layouts the original StoryGPT-V code reads
//! (`data/<ds>/` after unpacking `flintstones.zip` / `pororo.zip`):
//!
//! ```text
//! split.json                        {"train": [ids], "val": [ids], "test": [ids]}
//! cleaned_annotations.json          id → {"caption", "tokens", "segments"} (Flintstones)
//!                                   id → {"captions": [...]}               (Pororo)
//! flintstones_annotations_v1-0.json the original list: globalID, characters[].entityLabel
//! following_cache3.pkl              id → the next 3 ids (stories of 4)
//! labels.pkl                        id → multi-hot characters (7 Flintstones / 9 Pororo)
//! labels_bg.pkl                     {"label": id → multi-hot backgrounds (323)} (Flintstones)
//! video_frames_sampled_4x/{id}.npy  uint8 [n_frames, H, W, 3]
//! seg_mask_4x_comb/{id}-frame{k}.npy  segment-id map per frame (Flintstones)
//! ```
//!
//! Opening validates the metadata and every frame file's `.npy` header, and returns the first
//! problem as an [`Error::DataFile`] naming the file (and the id inside it). Pickles are parsed
//! as data only ([`crate::pickle`]).
//!
//! Assumptions, where the original leaves things implicit:
//! - the order of `labels.pkl` is the order of [`FLINTSTONES_CAST`] / [`PORORO_CAST`] (the
//!   repository does not define it);
//! - bounding boxes are in 128-px coordinates (`bbox * resolution // 128` in the original);
//! - a missing segment map is not an error: the original falls back to an empty map.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use storygpt_core::{Error, Result};

use crate::coref;
use crate::dataset::{
    Character, FrameAnnotation, FrameImage, Gender, RefCaption, Segment, Split, StoryDataset,
};
use crate::npy;
use crate::pickle::{self, Value};

/// FlintstonesSV's cast in label order, with genders (`models/data.py:191-193`). The original
/// lists "mr slate"; the annotations call him "slate".
pub const FLINTSTONES_CAST: [(&str, Gender); 7] = [
    ("fred", Gender::Male),
    ("wilma", Gender::Female),
    ("barney", Gender::Male),
    ("betty", Gender::Female),
    ("pebbles", Gender::Female),
    ("slate", Gender::Male),
    ("dino", Gender::Male),
];

/// PororoSV's cast in label order (`gill/data.py:187-189`); Petty and Loopy are female.
pub const PORORO_CAST: [(&str, Gender); 9] = [
    ("Pororo", Gender::Male),
    ("Loopy", Gender::Female),
    ("Crong", Gender::Male),
    ("Eddy", Gender::Male),
    ("Poby", Gender::Male),
    ("Petty", Gender::Female),
    ("Tongtong", Gender::Male),
    ("Rody", Gender::Male),
    ("Harry", Gender::Male),
];

/// Which of the two layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// FlintstonesSV.
    Flintstones,
    /// PororoSV.
    Pororo,
}

/// FlintstonesSV or PororoSV, read from the original layout.
#[derive(Debug)]
pub struct OriginalDataset {
    layout: Layout,
    root: PathBuf,
    characters: Vec<Character>,
    num_backgrounds: usize,
    annotations: Vec<FrameAnnotation>,
    /// Flintstones: the characters of `flintstones_annotations_v1-0.json`, per frame (coref).
    entity_labels: Vec<Vec<String>>,
    index: HashMap<String, usize>,
    frame_ids: [Vec<String>; 3],
    stories: [Vec<Vec<String>>; 3],
}

fn json_file(path: &Path) -> Result<Json> {
    storygpt_core::config::read_json(path)
}

fn str_list(v: &Json) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_str().map(str::to_string))
        .collect()
}

impl OriginalDataset {
    /// Opens a folder, telling the layouts apart by `flintstones_annotations_v1-0.json`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        if root.join("flintstones_annotations_v1-0.json").is_file() {
            Self::flintstones(root)
        } else {
            Self::pororo(root)
        }
    }

    /// Opens FlintstonesSV.
    pub fn flintstones(root: impl AsRef<Path>) -> Result<Self> {
        Self::load(root.as_ref(), Layout::Flintstones)
    }

    /// Opens PororoSV.
    pub fn pororo(root: impl AsRef<Path>) -> Result<Self> {
        Self::load(root.as_ref(), Layout::Pororo)
    }

    /// Which layout this is.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    fn load(root: &Path, layout: Layout) -> Result<Self> {
        let cast: &[(&str, Gender)] = match layout {
            Layout::Flintstones => &FLINTSTONES_CAST,
            Layout::Pororo => &PORORO_CAST,
        };
        let characters: Vec<Character> = cast
            .iter()
            .map(|&(name, gender)| Character {
                name: coref::capitalize(name),
                gender,
                portrait: None,
            })
            .collect();

        // split.json
        let split_path = root.join("split.json");
        let split = json_file(&split_path)?;
        let mut split_ids: [Vec<String>; 3] = Default::default();
        for s in Split::ALL {
            split_ids[s as usize] = split.get(s.name()).and_then(str_list).ok_or_else(|| {
                Error::data_file(
                    &split_path,
                    format!("`{}` must be a list of frame ids", s.name()),
                )
            })?;
        }

        // following_cache3.pkl: id → the next 3 ids.
        let follow_path = root.join("following_cache3.pkl");
        let follow = pickle::read_pickle(&follow_path)?;
        let follow_dict = follow.as_dict().ok_or_else(|| {
            Error::data_file(
                &follow_path,
                format!("expected a dict id → next ids, found {}", follow.kind()),
            )
        })?;
        let mut followers: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in follow_dict {
            let (Some(id), Some(next)) = (k.as_str(), v.as_str_list()) else {
                return Err(Error::data_file(
                    &follow_path,
                    format!(
                        "expected str → list of str, found {} → {}",
                        k.kind(),
                        v.kind()
                    ),
                ));
            };
            followers.insert(id.to_string(), next);
        }

        // cleaned_annotations.json
        let ann_path = root.join("cleaned_annotations.json");
        let ann_json = json_file(&ann_path)?;
        let ann_map = ann_json.as_object().ok_or_else(|| {
            Error::data_file(&ann_path, "expected an object mapping frame ids to records")
        })?;

        // flintstones_annotations_v1-0.json (Flintstones): per-frame entity labels.
        let mut entities: HashMap<String, Vec<String>> = HashMap::new();
        if layout == Layout::Flintstones {
            let v1_path = root.join("flintstones_annotations_v1-0.json");
            let v1 = json_file(&v1_path)?;
            let list = v1.as_array().ok_or_else(|| {
                Error::data_file(&v1_path, "expected a list of annotation records")
            })?;
            for (i, rec) in list.iter().enumerate() {
                let id = rec.get("globalID").and_then(Json::as_str);
                let chars = rec.get("characters").and_then(Json::as_array);
                let (Some(id), Some(chars)) = (id, chars) else {
                    return Err(Error::data_file(
                        &v1_path,
                        format!("record {i} lacks `globalID` or `characters`"),
                    ));
                };
                let labels = chars
                    .iter()
                    .map(|c| {
                        c.get("entityLabel")
                            .and_then(Json::as_str)
                            .map(|s| s.trim().to_lowercase())
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        Error::data_file(
                            &v1_path,
                            format!("record {id}: a character lacks `entityLabel`"),
                        )
                    })?;
                entities.insert(id.to_string(), labels);
            }
        }

        // labels.pkl and labels_bg.pkl
        let labels = read_label_dict(&root.join("labels.pkl"), None, Some(cast.len()))?;
        let bg_path = root.join("labels_bg.pkl");
        let bg_labels = if layout == Layout::Flintstones && bg_path.is_file() {
            Some(read_label_dict(&bg_path, Some("label"), None)?)
        } else {
            None
        };
        let num_backgrounds = bg_labels
            .as_ref()
            .and_then(|m| m.values().next().map(Vec::len))
            .unwrap_or(0);

        // Every id the splits and stories reference.
        let mut stories: [Vec<Vec<String>>; 3] = Default::default();
        let mut wanted: Vec<String> = Vec::new();
        let mut seen: std::collections::HashSet<String> = Default::default();
        for s in Split::ALL {
            for id in &split_ids[s as usize] {
                if seen.insert(id.clone()) {
                    wanted.push(id.clone());
                }
                if let Some(next) = followers.get(id)
                    && next.len() == 3
                {
                    let mut story = vec![id.clone()];
                    story.extend(next.iter().cloned());
                    for f in next {
                        if seen.insert(f.clone()) {
                            wanted.push(f.clone());
                        }
                    }
                    stories[s as usize].push(story);
                }
            }
        }

        let frames_dir = root.join("video_frames_sampled_4x");
        let mut annotations = Vec::with_capacity(wanted.len());
        let mut entity_labels = Vec::with_capacity(wanted.len());
        let mut index = HashMap::new();
        for id in &wanted {
            let rec = ann_map.get(id).ok_or_else(|| {
                Error::data_file(
                    &ann_path,
                    format!("frame `{id}` (listed in split.json or following_cache3.pkl) has no annotation"),
                )
            })?;
            let bad = |what: &str| Error::data_file(&ann_path, format!("frame `{id}`: {what}"));
            let (captions, tokens, segments) = match layout {
                Layout::Flintstones => {
                    let caption = rec
                        .get("caption")
                        .and_then(Json::as_str)
                        .ok_or_else(|| bad("missing `caption`"))?
                        .to_string();
                    let tokens = match rec.get("tokens") {
                        Some(t) => {
                            str_list(t).ok_or_else(|| bad("`tokens` is not a list of str"))?
                        }
                        None => caption.split(' ').map(str::to_string).collect(),
                    };
                    let segs = match rec.get("segments") {
                        Some(s) => s
                            .as_array()
                            .ok_or_else(|| bad("`segments` is not a list"))?
                            .clone(),
                        None => Vec::new(),
                    };
                    let mut segments = Vec::with_capacity(segs.len());
                    for (j, s) in segs.iter().enumerate() {
                        segments.push(
                            parse_segment(s, tokens.len())
                                .map_err(|e| bad(&format!("segment {j}: {e}")))?,
                        );
                    }
                    (vec![caption], tokens, segments)
                }
                Layout::Pororo => {
                    let caps = rec
                        .get("captions")
                        .and_then(str_list)
                        .filter(|c| !c.is_empty())
                        .ok_or_else(|| bad("`captions` must be a non-empty list of str"))?;
                    let tokens = caps[0].split(' ').map(str::to_string).collect();
                    (caps, tokens, Vec::new())
                }
            };
            let ents = entities.get(id).cloned().unwrap_or_default();
            let chars: Vec<usize> = match labels.get(id) {
                Some(v) => v
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| **x > 0.5)
                    .map(|(i, _)| i)
                    .collect(),
                None => {
                    let mut c: Vec<usize> =
                        ents.iter().filter_map(|e| cast_index(cast, e)).collect();
                    c.sort_unstable();
                    c.dedup();
                    c
                }
            };
            let backgrounds = bg_labels
                .as_ref()
                .and_then(|m| m.get(id))
                .map(|v| {
                    v.iter()
                        .enumerate()
                        .filter(|(_, x)| **x > 0.5)
                        .map(|(i, _)| i)
                        .collect()
                })
                .unwrap_or_default();
            let npy_path = frames_dir.join(format!("{id}.npy"));
            let num_images = frames_in(&npy_path)?;
            let segments = segments
                .into_iter()
                .map(|mut s: Segment| {
                    s.character = cast_index(cast, &s.word);
                    s
                })
                .collect();
            index.insert(id.clone(), annotations.len());
            annotations.push(FrameAnnotation {
                id: id.clone(),
                captions,
                tokens,
                segments,
                characters: chars,
                backgrounds,
                num_images,
            });
            entity_labels.push(ents);
        }
        Ok(Self {
            layout,
            root: root.to_path_buf(),
            characters,
            num_backgrounds,
            annotations,
            entity_labels,
            index,
            frame_ids: split_ids,
            stories,
        })
    }

    fn position(&self, id: &str) -> Result<usize> {
        self.index.get(id).copied().ok_or_else(|| {
            Error::InvalidInput(format!("frame `{id}` is not in {}", self.root.display()))
        })
    }
}

/// The cast index of a name ("mr slate" and "slate" both name Slate).
fn cast_index(cast: &[(&str, Gender)], word: &str) -> Option<usize> {
    let w = word.trim().to_lowercase();
    let w = w
        .strip_prefix("mr ")
        .or_else(|| w.strip_prefix("mr. "))
        .unwrap_or(&w);
    cast.iter().position(|(n, _)| n.to_lowercase() == w)
}

fn parse_segment(s: &Json, n_tokens: usize) -> std::result::Result<Segment, String> {
    let int = |k: &str| {
        s.get(k)
            .and_then(Json::as_i64)
            .ok_or_else(|| format!("missing integer `{k}`"))
    };
    let id = int("id")?;
    let start = int("start")?;
    let end = int("end")?;
    let word = s
        .get("word")
        .and_then(Json::as_str)
        .ok_or("missing `word`")?
        .to_lowercase();
    let bbox: Vec<f64> = s
        .get("bbox")
        .and_then(Json::as_array)
        .and_then(|b| b.iter().map(Json::as_f64).collect())
        .ok_or("`bbox` must be 4 numbers")?;
    if bbox.len() != 4 {
        return Err(format!("`bbox` has {} numbers, expected 4", bbox.len()));
    }
    if id <= 0 || start < 0 || end <= start || end as usize > n_tokens {
        return Err(format!(
            "id {id} / start {start} / end {end} out of range ({n_tokens} tokens)"
        ));
    }
    Ok(Segment {
        id: id as u32,
        character: None,
        word,
        start: start as usize,
        end: end as usize,
        bbox: [
            (bbox[0] / 128.0) as f32,
            (bbox[1] / 128.0) as f32,
            (bbox[2] / 128.0) as f32,
            (bbox[3] / 128.0) as f32,
        ],
    })
}

/// Reads a dict id → numeric vector (`labels.pkl`), or the dict under `key`
/// (`labels_bg.pkl`'s `label`). `len`: the expected vector length.
fn read_label_dict(
    path: &Path,
    key: Option<&str>,
    len: Option<usize>,
) -> Result<HashMap<String, Vec<f64>>> {
    let value = pickle::read_pickle(path)?;
    let dict: &Value = match key {
        Some(k) => value.get(k).ok_or_else(|| {
            Error::data_file(
                path,
                format!("expected a dict with key `{k}`, found {}", value.kind()),
            )
        })?,
        None => &value,
    };
    let entries = dict.as_dict().ok_or_else(|| {
        Error::data_file(
            path,
            format!("expected a dict id → label vector, found {}", dict.kind()),
        )
    })?;
    let mut out = HashMap::with_capacity(entries.len());
    let mut first_len = len;
    for (k, v) in entries {
        let id = k.as_str().ok_or_else(|| {
            Error::data_file(path, format!("expected str keys, found {}", k.kind()))
        })?;
        let vec = v.as_f64_vec().ok_or_else(|| {
            Error::data_file(
                path,
                format!("`{id}`: expected a numeric vector, found {}", v.kind()),
            )
        })?;
        match first_len {
            Some(n) if n != vec.len() => {
                return Err(Error::data_file(
                    path,
                    format!(
                        "`{id}`: label vector has length {}, expected {n}",
                        vec.len()
                    ),
                ));
            }
            None => first_len = Some(vec.len()),
            _ => {}
        }
        out.insert(id.to_string(), vec);
    }
    Ok(out)
}

/// The number of frames in a `video_frames_sampled_4x` file, from its header.
fn frames_in(path: &Path) -> Result<usize> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let header = npyz::NpyHeader::from_reader(std::io::BufReader::new(file))
        .map_err(|e| Error::data_file(path, format!("not a valid .npy file: {e}")))?;
    let shape = header.shape();
    if shape.len() != 4 || shape[3] != 3 || shape[0] == 0 {
        return Err(Error::data_file(
            path,
            format!("frames must have shape [n_frames >= 1, H, W, 3], the file has {shape:?}"),
        ));
    }
    Ok(shape[0] as usize)
}

impl StoryDataset for OriginalDataset {
    fn name(&self) -> &str {
        match self.layout {
            Layout::Flintstones => "flintstones",
            Layout::Pororo => "pororo",
        }
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn characters(&self) -> &[Character] {
        &self.characters
    }

    fn num_backgrounds(&self) -> usize {
        self.num_backgrounds
    }

    fn frame_ids(&self, split: Split) -> &[String] {
        &self.frame_ids[split as usize]
    }

    fn stories(&self, split: Split) -> &[Vec<String>] {
        &self.stories[split as usize]
    }

    fn annotation(&self, id: &str) -> Result<&FrameAnnotation> {
        Ok(&self.annotations[self.position(id)?])
    }

    fn load_image(&self, id: &str, k: usize) -> Result<FrameImage> {
        let i = self.position(id)?;
        let path = self
            .root
            .join("video_frames_sampled_4x")
            .join(format!("{id}.npy"));
        let stack = npy::read_frames(&path)?;
        let image = stack.frame(k).ok_or_else(|| {
            Error::InvalidInput(format!(
                "frame `{id}` has {} images, asked for image {k}",
                stack.frames
            ))
        })?;
        let segmap = if self.layout == Layout::Flintstones {
            let mpath = self
                .root
                .join("seg_mask_4x_comb")
                .join(format!("{id}-frame{k}.npy"));
            if mpath.is_file() {
                let m = npy::read_segmap(&mpath)?;
                if (m.width, m.height) != (stack.width, stack.height) {
                    return Err(Error::data_file(
                        &mpath,
                        format!(
                            "segment map is {}x{}, the frame is {}x{}",
                            m.width, m.height, stack.width, stack.height
                        ),
                    ));
                }
                Some(m)
            } else {
                None
            }
        } else {
            None
        };
        let _ = i;
        Ok(FrameImage { image, segmap })
    }

    fn referential_captions(&self, story: &[String], images: &[usize]) -> Result<Vec<RefCaption>> {
        let idx = story
            .iter()
            .map(|id| self.position(id))
            .collect::<Result<Vec<_>>>()?;
        match self.layout {
            Layout::Flintstones => {
                let names: Vec<Vec<(String, Gender)>> = idx
                    .iter()
                    .map(|&i| {
                        self.entity_labels[i]
                            .iter()
                            .map(|e| {
                                let gender = cast_index(&FLINTSTONES_CAST, e)
                                    .map_or(Gender::Male, |c| FLINTSTONES_CAST[c].1);
                                (coref::capitalize(e), gender)
                            })
                            .collect()
                    })
                    .collect();
                let frames: Vec<coref::CastFrame<'_>> = idx
                    .iter()
                    .zip(&names)
                    .map(|(&i, n)| coref::CastFrame {
                        caption: &self.annotations[i].captions[0],
                        cast: n.iter().map(|(s, g)| (s.as_str(), *g)).collect(),
                    })
                    .collect();
                Ok(coref::by_character_sets(&frames))
            }
            Layout::Pororo => {
                let caps: Vec<&str> = idx
                    .iter()
                    .enumerate()
                    .map(|(j, &i)| {
                        self.annotations[i].caption_for_image(images.get(j).copied().unwrap_or(0))
                    })
                    .collect();
                let mut names: Vec<(&str, Gender)> =
                    PORORO_CAST.iter().map(|&(n, g)| (n, g)).collect();
                let lower: Vec<(String, Gender)> = PORORO_CAST
                    .iter()
                    .map(|&(n, g)| (n.to_lowercase(), g))
                    .collect();
                names.extend(lower.iter().map(|(n, g)| (n.as_str(), *g)));
                Ok(coref::by_caption_prefix(&caps, &names))
            }
        }
    }
}
