//! Reading `scheduler_config.json` as diffusers writes it: Python's `json` emits bare `NaN`,
//! `Infinity` and `-Infinity` (`"lambda_min_clipped": -Infinity` in every
//! `DPMSolverMultistepScheduler` config), which strict JSON parsers reject.

use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use storygpt_core::config::parse_json;
use storygpt_core::{ConfigFile, Error, Result};

/// Reads a `scheduler_config.json`, accepting the bare `NaN`, `Infinity` and `-Infinity` that
/// Python's `json` writes (diffusers saves `"lambda_min_clipped": -Infinity`): outside strings
/// they become the strings `"NaN"`, `"Infinity"`, `"-Infinity"`, which [`json_f64`] reads back.
pub(crate) fn read_scheduler_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_json(path, &quote_non_finite(&bytes))
}

fn quote_non_finite(json: &[u8]) -> Vec<u8> {
    const WORDS: [&[u8]; 3] = [b"-Infinity", b"Infinity", b"NaN"];
    let mut out = Vec::with_capacity(json.len() + 16);
    let (mut i, mut in_string, mut escaped) = (0, false, false);
    while i < json.len() {
        let c = json[i];
        if in_string {
            in_string = escaped || c != b'"';
            escaped = !escaped && c == b'\\';
        } else if c == b'"' {
            in_string = true;
        } else if let Some(word) = WORDS.iter().find(|w| json[i..].starts_with(w)) {
            out.push(b'"');
            out.extend_from_slice(word);
            out.push(b'"');
            i += word.len();
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Deserialises an `f64` written as a JSON number or as one of the strings `"NaN"`,
/// `"Infinity"`, `"-Infinity"` (see [`read_scheduler_json`]).
pub(crate) fn json_f64<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrWord {
        Number(f64),
        Word(String),
    }
    match NumberOrWord::deserialize(d)? {
        NumberOrWord::Number(x) => Ok(x),
        NumberOrWord::Word(w) => match w.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            other => Err(serde::de::Error::custom(format!(
                "expected a number, found the string {other:?}"
            ))),
        },
    }
}

/// Reads and validates a scheduler config file (the `ConfigFile::from_file` of every scheduler
/// config here, so that Python's non-finite literals load).
pub(crate) fn read_config<C: ConfigFile>(path: &Path) -> Result<C> {
    let config: C = read_scheduler_json(path)?;
    config.validate().map_err(|message| Error::InvalidConfig {
        path: Some(path.to_path_buf()),
        message,
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_literals_are_quoted_outside_strings_only() {
        let json = br#"{"a": -Infinity, "b": "NaN -Infinity \"Infinity", "c": [NaN, Infinity]}"#;
        let out = String::from_utf8(quote_non_finite(json)).unwrap();
        assert_eq!(
            out,
            r#"{"a": "-Infinity", "b": "NaN -Infinity \"Infinity", "c": ["NaN", "Infinity"]}"#
        );
    }
}
