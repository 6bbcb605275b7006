//! Story planning and captions: who is in each frame, where, doing what, and the sentence
//! that says so.
//!
//! A story keeps one place (sometimes moving once, with an arrival caption) and a small main
//! cast; each frame shows one to three characters. When a frame repeats the previous frame's
//! characters, the caption usually names them as a joint subject ("Fred and Wilma laugh"),
//! which is what the co-reference rule turns into "They".

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

use super::cast::Pose;
use super::places::PLACES;

/// One planned frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FramePlan {
    /// Index into [`PLACES`].
    pub place: usize,
    /// Characters in caption order, with their poses.
    pub cast: Vec<(usize, Pose)>,
    /// Caption words (punctuation split off).
    pub tokens: Vec<String>,
    /// The caption.
    pub caption: String,
    /// For each entry of `cast`, its word index in `tokens`.
    pub name_token: Vec<usize>,
}

/// Plans a story of `frames` frames over a cast of `n_chars` characters.
pub fn plan_story(
    rng: &mut impl Rng,
    names: &[&str],
    frames: usize,
    max_per_frame: usize,
) -> Vec<FramePlan> {
    let n_chars = names.len();
    let mut place = rng.random_range(0..PLACES.len());
    let cast_size = match rng.random_range(0.0..1.0f32) {
        x if x < 0.3 => 1,
        x if x < 0.75 => 2,
        _ => 3,
    }
    .min(max_per_frame)
    .min(n_chars);
    let mut all: Vec<usize> = (0..n_chars).collect();
    all.shuffle(rng);
    let story_cast: Vec<usize> = all[..cast_size].to_vec();

    let mut plans: Vec<FramePlan> = Vec::with_capacity(frames);
    let mut prev: Option<Vec<usize>> = None;
    for k in 0..frames {
        let arrival = k > 0 && rng.random_range(0.0..1.0f32) < 0.15;
        if arrival {
            let others: Vec<usize> = (0..PLACES.len()).filter(|&p| p != place).collect();
            place = *others.choose(rng).expect("several places");
        }
        let repeat = prev.is_some() && rng.random_range(0.0..1.0f32) < 0.5;
        let mut set: Vec<usize> = match (&prev, repeat) {
            (Some(p), true) => p.clone(),
            _ => {
                let n = rng.random_range(1..=story_cast.len());
                let mut c = story_cast.clone();
                c.shuffle(rng);
                c.truncate(n);
                if c.len() < max_per_frame.min(3) && rng.random_range(0.0..1.0f32) < 0.15 {
                    let visitors: Vec<usize> =
                        (0..n_chars).filter(|i| !story_cast.contains(i)).collect();
                    if let Some(&v) = visitors.choose(rng) {
                        c.push(v);
                    }
                }
                c
            }
        };
        let same_as_prev = prev.as_ref().is_some_and(|p| {
            let mut a = p.clone();
            let mut b = set.clone();
            a.sort_unstable();
            b.sort_unstable();
            a == b
        });
        set.shuffle(rng);
        let group_p = if same_as_prev { 0.85 } else { 0.5 };
        let group = set.len() == 1 || rng.random_range(0.0..1.0f32) < group_p;
        let plan = caption_frame(rng, names, place, &set, group, arrival);
        prev = Some(set);
        plans.push(plan);
    }
    plans
}

const POSES: [Pose; 5] = [Pose::Stand, Pose::Walk, Pose::Wave, Pose::Jump, Pose::Sit];

/// Singular verb phrases per pose.
fn singular(pose: Pose) -> &'static [&'static str] {
    match pose {
        Pose::Stand => &["is standing", "stands", "is smiling", "is thinking"],
        Pose::Walk => &["is walking", "walks around", "takes a walk"],
        Pose::Wave => &["waves", "is waving hello"],
        Pose::Jump => &["jumps", "jumps for joy", "is jumping"],
        Pose::Sit => &["sits down", "is sitting", "takes a rest"],
    }
}

/// Plural verb phrases per pose.
fn plural(pose: Pose) -> &'static [&'static str] {
    match pose {
        Pose::Stand => &[
            "are talking",
            "are standing",
            "talk",
            "laugh",
            "are smiling",
        ],
        Pose::Walk => &["walk together", "are walking", "take a walk"],
        Pose::Wave => &["wave", "are waving hello"],
        Pose::Jump => &["jump", "jump for joy", "are jumping"],
        Pose::Sit => &["sit down", "are sitting", "take a rest"],
    }
}

/// Relations "{A} <verb> {B...}": the subject's pose and the phrase.
const RELATIONS: [(Pose, &str); 5] = [
    (Pose::Wave, "waves at"),
    (Pose::Stand, "talks to"),
    (Pose::Walk, "walks towards"),
    (Pose::Jump, "jumps next to"),
    (Pose::Sit, "sits next to"),
];

fn caption_frame(
    rng: &mut impl Rng,
    names: &[&str],
    place: usize,
    set: &[usize],
    group: bool,
    arrival: bool,
) -> FramePlan {
    let p = &PLACES[place];
    let mut tokens: Vec<String> = Vec::new();
    let mut name_token = Vec::new();
    let push_names = |tokens: &mut Vec<String>, ids: &[usize], name_token: &mut Vec<usize>| {
        for (i, &c) in ids.iter().enumerate() {
            if i > 0 {
                if i + 1 == ids.len() {
                    tokens.push("and".into());
                } else {
                    tokens.push(",".into());
                }
            }
            name_token.push(tokens.len());
            tokens.push(names[c].to_string());
        }
    };
    let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    let cast: Vec<(usize, Pose)>;
    if arrival {
        // "{A} walks into the park." / "{A} and {B} walk into the park."
        push_names(&mut tokens, set, &mut name_token);
        tokens.push(if set.len() == 1 { "walks" } else { "walk" }.into());
        tokens.extend(words(p.into));
        cast = set.iter().map(|&c| (c, Pose::Walk)).collect();
    } else if group {
        let pose = *POSES.choose(rng).expect("poses");
        push_names(&mut tokens, set, &mut name_token);
        let verb = if set.len() == 1 {
            singular(pose).choose(rng)
        } else {
            plural(pose).choose(rng)
        }
        .expect("verbs");
        tokens.extend(words(verb));
        tokens.extend(words(p.at));
        cast = set.iter().map(|&c| (c, pose)).collect();
    } else {
        let (pose, verb) = *RELATIONS.choose(rng).expect("relations");
        push_names(&mut tokens, &set[..1], &mut name_token);
        tokens.extend(words(verb));
        push_names(&mut tokens, &set[1..], &mut name_token);
        tokens.extend(words(p.at));
        let mut c = vec![(set[0], pose)];
        c.extend(set[1..].iter().map(|&x| (x, Pose::Stand)));
        cast = c;
    }
    tokens.push(".".into());
    let caption = join_tokens(&tokens);
    FramePlan {
        place,
        cast,
        tokens,
        caption,
        name_token,
    }
}

/// Joins caption words with spaces, with no space before `,` and `.`.
pub fn join_tokens(tokens: &[String]) -> String {
    let mut s = String::new();
    for t in tokens {
        if !s.is_empty() && t != "," && t != "." {
            s.push(' ');
        }
        s.push_str(t);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn captions_name_every_character_once_and_end_with_a_place() {
        let names = [
            "Fred", "Wilma", "Barney", "Betty", "Pebbles", "Slate", "Dino",
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            for f in plan_story(&mut rng, &names, 4, 3) {
                assert!((1..=3).contains(&f.cast.len()));
                assert_eq!(f.name_token.len(), f.cast.len());
                for (&t, &(c, _)) in f.name_token.iter().zip(&f.cast) {
                    assert_eq!(f.tokens[t], names[c]);
                }
                assert!(f.caption.ends_with(&format!(
                    "{}.",
                    PLACES[f.place].at.split(' ').next_back().unwrap()
                )));
                assert_eq!(join_tokens(&f.tokens), f.caption);
            }
        }
    }
}
