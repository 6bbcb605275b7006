//! Referential ("co-reference") captions: Story-LDM's Algorithm 1, as StoryGPT-V applies it.
//!
//! The stage-2 LLM reads captions whose names were replaced by pronouns wherever the cast did
//! not change from the previous frame, and must still produce the conditioning of the caption
//! *with* names. Two rules exist, one per dataset:
//!
//! - [`by_character_sets`] (FlintstonesSV and the story world). Keep the "immediate" character
//!   set of the previous frame. When frame *i* has the same set, replace its names:
//!   one character → "He" / "She"; two → "A and B" (either order) → "They"; three →
//!   "A, B and C" → "They". Otherwise frame *i*'s set becomes the immediate set.
//! - [`by_caption_prefix`] (PororoSV). A leading run of names shared with the previous caption
//!   becomes "They"; the main character repeated from the previous caption becomes He/She.
//!
//! Fixed relative to the original code (`gill/data.py`, `models/data.py`):
//! - **gender**: the training copy tests a *list* against the female list, which is always
//!   false, so Wilma and Betty became "He" in stage-2 training. Here the character's gender
//!   decides, in training and evaluation alike.
//! - a frame with no character never matches (the original raises `IndexError`);
//! - three names match in any order (the original tried only the annotation order), and a
//!   frame is flagged referential only when a name was actually replaced (the original set the
//!   flag even when the names were not found); on PororoSV a "They" replacement is flagged too.

use crate::dataset::{Gender, RefCaption};

/// Python's `str.capitalize()`: first character upper case, the rest lower case.
pub fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// One frame for [`by_character_sets`]: its caption and the characters in it.
#[derive(Debug, Clone)]
pub struct CastFrame<'a> {
    /// The caption with names.
    pub caption: &'a str,
    /// The characters present, as `(name as the caption writes it, gender)`.
    pub cast: Vec<(&'a str, Gender)>,
}

/// The FlintstonesSV / story-world rule (see the module docs).
pub fn by_character_sets(frames: &[CastFrame<'_>]) -> Vec<RefCaption> {
    let mut out = Vec::with_capacity(frames.len());
    let mut immediate: Vec<(&str, Gender)> = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let mut text = frame.caption.to_string();
        let same = i > 0 && !frame.cast.is_empty() && same_set(&frame.cast, &immediate);
        if same {
            match immediate.as_slice() {
                [(name, gender)] => text = text.replace(name, gender.pronoun()),
                [a, b] => {
                    for phrase in [
                        format!("{} and {}", a.0, b.0),
                        format!("{} and {}", b.0, a.0),
                    ] {
                        if text.contains(&phrase) {
                            text = text.replace(&phrase, "They");
                            break;
                        }
                    }
                }
                [a, b, c] => {
                    for [x, y, z] in [
                        [a, b, c],
                        [a, c, b],
                        [b, a, c],
                        [b, c, a],
                        [c, a, b],
                        [c, b, a],
                    ] {
                        let phrase = format!("{}, {} and {}", x.0, y.0, z.0);
                        if text.contains(&phrase) {
                            text = text.replace(&phrase, "They");
                            break;
                        }
                    }
                }
                _ => {}
            }
        } else {
            immediate = frame.cast.clone();
        }
        let referential = text != frame.caption;
        out.push(RefCaption { text, referential });
    }
    out
}

fn same_set(a: &[(&str, Gender)], b: &[(&str, Gender)]) -> bool {
    let mut x: Vec<&str> = a.iter().map(|c| c.0).collect();
    let mut y: Vec<&str> = b.iter().map(|c| c.0).collect();
    x.sort_unstable();
    y.sort_unstable();
    x == y
}

/// The PororoSV rule (see the module docs). `names` lists every spelling of every character
/// the original searches for (e.g. "Pororo" and "pororo"), in its order; `gender` gives each
/// spelling's gender.
pub fn by_caption_prefix(captions: &[&str], names: &[(&str, Gender)]) -> Vec<RefCaption> {
    let is_name = |w: &str| names.iter().any(|(n, _)| *n == w);
    let gender_of = |w: &str| {
        names
            .iter()
            .find(|(n, _)| *n == w)
            .map_or(Gender::Male, |(_, g)| *g)
    };
    // The original's "main character" of a caption: the first name found in it; with several
    // names and several sentences, the first name of the last sentence.
    let main_character = |caption: &str| -> String {
        let found: Vec<&str> = names
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| caption.contains(n))
            .collect();
        match found.len() {
            0 => String::new(),
            1 => found[0].to_string(),
            _ => {
                let body = caption.strip_suffix(|_: char| true).unwrap_or(caption);
                let sentences: Vec<&str> = body.split('.').collect();
                if sentences.len() > 1 {
                    let last = sentences[sentences.len() - 1];
                    names
                        .iter()
                        .map(|(n, _)| *n)
                        .find(|n| last.contains(n))
                        .map_or(String::new(), str::to_string)
                } else {
                    found[0].to_string()
                }
            }
        }
    };

    let mut out = Vec::with_capacity(captions.len());
    let mut immediate = String::new();
    let mut previous = String::new();
    for (i, &caption) in captions.iter().enumerate() {
        let mut text = caption.to_string();
        let mut referential = false;
        if i == 0 {
            immediate = main_character(caption);
            previous = caption.to_string();
        } else {
            // A leading run of names, commas and "and" shared with the previous caption.
            let prefix = common_prefix(&previous, caption);
            let words: Vec<&str> = prefix.split(' ').collect();
            let mut stop = 0;
            for (w_idx, word) in words.iter().enumerate() {
                stop = w_idx;
                let bare = word.replace([',', '\''], "");
                if !is_name(bare.trim()) && !word.contains(',') && !word.contains("and") {
                    break;
                }
            }
            let run = &words[..stop];
            if run.len() > 1 {
                text = text.replacen(&run.join(" "), "They", 1);
                referential = true;
            }
            let main = main_character(&text);
            if !main.is_empty() && main == immediate {
                previous = text.clone();
                text = text.replace(&main, gender_of(&main).pronoun());
                referential = true;
            } else {
                immediate = main;
            }
        }
        out.push(RefCaption { text, referential });
    }
    out
}

fn common_prefix<'a>(a: &'a str, b: &str) -> &'a str {
    let n = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i);
    // `n` is a byte index into `a` on a char boundary.
    &a[..n.min(a.len())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use Gender::{Female, Male};

    fn frames<'a>(spec: &'a [(&'a str, &'a [(&'a str, Gender)])]) -> Vec<CastFrame<'a>> {
        spec.iter()
            .map(|(caption, cast)| CastFrame {
                caption,
                cast: cast.to_vec(),
            })
            .collect()
    }

    fn texts(r: &[RefCaption]) -> Vec<&str> {
        r.iter().map(|c| c.text.as_str()).collect()
    }

    #[test]
    fn one_character_becomes_he_or_she() {
        let spec: &[(&str, &[(&str, Gender)])] = &[
            ("Fred walks into the kitchen.", &[("Fred", Male)]),
            ("Fred waves.", &[("Fred", Male)]),
            ("Wilma sits in the park.", &[("Wilma", Female)]),
            ("Wilma laughs.", &[("Wilma", Female)]),
        ];
        let r = by_character_sets(&frames(spec));
        assert_eq!(
            texts(&r),
            [
                "Fred walks into the kitchen.",
                "He waves.",
                "Wilma sits in the park.",
                "She laughs."
            ]
        );
        assert_eq!(
            r.iter().map(|c| c.referential).collect::<Vec<_>>(),
            [false, true, false, true]
        );
    }

    #[test]
    fn two_and_three_characters_become_they() {
        let two: &[(&str, Gender)] = &[("Fred", Male), ("Wilma", Female)];
        let three: &[(&str, Gender)] = &[("Fred", Male), ("Wilma", Female), ("Barney", Male)];
        let spec: &[(&str, &[(&str, Gender)])] = &[
            ("Fred and Wilma talk in the park.", two),
            ("Wilma and Fred laugh.", two),
            ("Fred, Wilma and Barney dance.", three),
            ("Barney, Fred and Wilma sit down.", three),
        ];
        let r = by_character_sets(&frames(spec));
        assert_eq!(
            texts(&r),
            [
                "Fred and Wilma talk in the park.",
                "They laugh.",
                "Fred, Wilma and Barney dance.",
                "They sit down."
            ]
        );
    }

    #[test]
    fn a_change_of_cast_resets() {
        let spec: &[(&str, &[(&str, Gender)])] = &[
            ("Fred walks.", &[("Fred", Male)]),
            ("Betty waves.", &[("Betty", Female)]),
            ("Fred jumps.", &[("Fred", Male)]),
            ("Fred sits.", &[("Fred", Male)]),
        ];
        let r = by_character_sets(&frames(spec));
        assert_eq!(
            texts(&r),
            ["Fred walks.", "Betty waves.", "Fred jumps.", "He sits."]
        );
    }

    #[test]
    fn no_character_never_matches() {
        let spec: &[(&str, &[(&str, Gender)])] =
            &[("An empty room.", &[]), ("The room is still empty.", &[])];
        let r = by_character_sets(&frames(spec));
        assert!(r.iter().all(|c| !c.referential));
    }

    #[test]
    fn capitalize_like_python() {
        assert_eq!(capitalize("mr slate"), "Mr slate");
        assert_eq!(capitalize("fred"), "Fred");
        assert_eq!(capitalize(""), "");
    }

    #[test]
    fn pororo_prefix_and_main_character() {
        let names: &[(&str, Gender)] = &[
            ("Pororo", Male),
            ("Loopy", Female),
            ("Crong", Male),
            ("pororo", Male),
            ("loopy", Female),
            ("crong", Male),
        ];
        let caps = [
            "Pororo and Crong are playing in the snow.",
            "Pororo and Crong are laughing.",
            "Loopy is baking.",
            "Loopy smiles.",
        ];
        let r = by_caption_prefix(&caps, names);
        assert_eq!(
            texts(&r),
            [
                "Pororo and Crong are playing in the snow.",
                "They are laughing.",
                "Loopy is baking.",
                "She smiles."
            ]
        );
    }
}
