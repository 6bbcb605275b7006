//! The cast of a story world: each character's name and reference portrait.
//!
//! Char-LDM fuses a character name in a caption with the CLIP embedding of that character's
//! portrait; the cast is what lets a plain sentence ("Fred waves at Wilma.") become a fused
//! prompt (`Fred <|image|> waves at Wilma <|image|>.` with Fred's and Wilma's portraits). A
//! StoryGPT-V folder may carry one (`model_index.json`: `"cast": "cast"`), a folder holding
//! `cast.json` and the portraits:
//!
//! ```json
//! {"characters": [{"name": "Fred", "portrait": "fred.png"}, {"name": "Wilma", "portrait": "wilma.png"}]}
//! ```
//!
//! (the `characters` list of a story-world `manifest.json` has the same fields).

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Deserialize;
use storygpt_core::{Error, Result};
use storygpt_data::StoryDataset;
use storygpt_models::clip::IMAGE_MARKER;

use crate::train::char_ldm::Prompt;

/// The file inside a cast folder.
pub const CAST_FILE: &str = "cast.json";

/// One character: its name as captions spell it and its portrait.
#[derive(Debug, Clone)]
pub struct CastMember {
    /// The name (matched case-insensitively, as a whole word).
    pub name: String,
    /// The reference portrait.
    pub portrait: RgbImage,
}

/// The characters whose names are fused with their portraits.
#[derive(Debug, Clone, Default)]
pub struct Cast {
    /// In the order of the source (dataset manifest or `cast.json`).
    pub characters: Vec<CastMember>,
}

#[derive(Deserialize)]
struct CastJson {
    characters: Vec<CastEntry>,
}

#[derive(Deserialize)]
struct CastEntry {
    name: String,
    portrait: PathBuf,
}

impl Cast {
    /// The characters of `dataset` that have a portrait (a dataset without portraits, such as
    /// FlintstonesSV's, gives an empty cast).
    ///
    /// # Errors
    /// A portrait the manifest names that cannot be read or decoded, naming the file.
    pub fn from_dataset(dataset: &dyn StoryDataset) -> Result<Self> {
        let characters = dataset
            .characters()
            .iter()
            .zip(crate::train::char_ldm::portraits(dataset)?)
            .filter_map(|(c, portrait)| {
                Some(CastMember {
                    name: c.name.clone(),
                    portrait: portrait?,
                })
            })
            .collect();
        Ok(Cast { characters })
    }

    /// Reads `dir/cast.json` and its portraits (paths relative to `dir`).
    ///
    /// # Errors
    /// A missing or malformed `cast.json`, an empty name, a portrait path leaving the folder, or
    /// a portrait that cannot be read, naming the file.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let file = dir.join(CAST_FILE);
        let json: CastJson = storygpt_core::config::read_json(&file)?;
        let mut characters = Vec::with_capacity(json.characters.len());
        for entry in json.characters {
            if entry.name.trim().is_empty() || entry.name.contains(char::is_whitespace) {
                return Err(Error::InvalidConfig {
                    path: Some(file),
                    message: format!("character name {:?} must be one word", entry.name),
                });
            }
            if entry.portrait.is_absolute()
                || entry
                    .portrait
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(Error::InvalidConfig {
                    path: Some(file),
                    message: format!(
                        "{}'s portrait {:?} must be a path inside the cast folder",
                        entry.name, entry.portrait
                    ),
                });
            }
            let path = dir.join(&entry.portrait);
            let portrait = image::open(&path)
                .map_err(|e| Error::InvalidConfig {
                    path: Some(path.clone()),
                    message: format!("{}'s portrait: {e}", entry.name),
                })?
                .to_rgb8();
            characters.push(CastMember {
                name: entry.name,
                portrait,
            });
        }
        Ok(Cast { characters })
    }

    /// The caption with `<|image|>` after each cast name it contains (before any punctuation
    /// that follows the name), and those characters' portraits in marker order.
    pub fn mark(&self, caption: &str) -> Prompt {
        let mut words: Vec<String> = Vec::new();
        let mut portraits = Vec::new();
        for w in caption.split_whitespace() {
            let bare: String = w.chars().take_while(|c| c.is_alphanumeric()).collect();
            let member = (!bare.is_empty())
                .then(|| {
                    self.characters
                        .iter()
                        .find(|c| c.name.eq_ignore_ascii_case(&bare))
                })
                .flatten();
            match member {
                Some(m) => {
                    let tail = &w[bare.len()..];
                    words.push(format!("{bare} {IMAGE_MARKER}{tail}"));
                    portraits.push(m.portrait.clone());
                }
                None => words.push(w.to_string()),
            }
        }
        Prompt {
            marked_caption: words.join(" "),
            caption: caption.to_string(),
            portraits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cast() -> Cast {
        let member = |name: &str, v: u8| CastMember {
            name: name.into(),
            portrait: RgbImage::from_pixel(4, 4, image::Rgb([v, v, v])),
        };
        Cast {
            characters: vec![member("Fred", 10), member("Wilma", 20)],
        }
    }

    #[test]
    fn marks_each_cast_name_before_its_punctuation_with_its_portrait() {
        let p = cast().mark("Fred waves at wilma. Barney laughs, Fred too!");
        assert_eq!(
            p.marked_caption,
            format!(
                "Fred {m} waves at wilma {m}. Barney laughs, Fred {m} too!",
                m = IMAGE_MARKER
            )
        );
        assert_eq!(p.caption, "Fred waves at wilma. Barney laughs, Fred too!");
        let shades: Vec<u8> = p.portraits.iter().map(|i| i.get_pixel(0, 0).0[0]).collect();
        assert_eq!(shades, vec![10, 20, 10]);
        // a name inside a longer word is not a name
        let p = cast().mark("Fredrik and Wilmas walk.");
        assert!(p.portraits.is_empty() && p.marked_caption == p.caption);
    }

    #[test]
    fn a_dataset_cast_has_every_portrait_and_refuses_an_unreadable_one() {
        let (_tmp, world) = crate::test_support::tiny_world(2, 32);
        let cast = Cast::from_dataset(world.as_ref()).unwrap();
        assert_eq!(cast.characters.len(), world.characters().len());
        assert!(cast.characters.iter().all(|c| c.portrait.width() == 32));
        // a corrupt portrait is an error naming it, not a character silently dropped
        let bad = world.characters()[1].portrait.clone().unwrap();
        std::fs::write(&bad, b"not a png").unwrap();
        let err = Cast::from_dataset(world.as_ref()).unwrap_err().to_string();
        assert!(err.contains(&bad.display().to_string()), "{err}");
        std::fs::remove_file(&bad).unwrap();
        let err = crate::train::char_ldm::portraits(world.as_ref())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&bad.display().to_string()), "{err}");
    }

    #[test]
    fn reads_a_cast_folder_and_refuses_bad_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .save(dir.join("fred.png"))
            .unwrap();
        let write = |json: &str| std::fs::write(dir.join(CAST_FILE), json).unwrap();
        write(r#"{"characters": [{"name": "Fred", "portrait": "fred.png"}]}"#);
        let c = Cast::from_dir(dir).unwrap();
        assert_eq!(c.characters.len(), 1);
        assert_eq!(c.characters[0].portrait.get_pixel(7, 7).0, [1, 2, 3]);
        for (json, needle) in [
            (
                r#"{"characters": [{"name": "Fred", "portrait": "nope.png"}]}"#,
                "nope.png",
            ),
            (
                r#"{"characters": [{"name": "Fred", "portrait": "../fred.png"}]}"#,
                "inside the cast folder",
            ),
            (
                r#"{"characters": [{"name": "Mr Fred", "portrait": "fred.png"}]}"#,
                "one word",
            ),
            (r#"{"characters": [{"name": "Fred"}]}"#, "portrait"),
        ] {
            write(json);
            let err = Cast::from_dir(dir).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
