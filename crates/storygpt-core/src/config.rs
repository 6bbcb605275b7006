//! Reading Hugging Face style JSON configs (`config.json`, `scheduler_config.json`, ...) into
//! typed structs.
//!
//! Config structs mirror the JSON with serde: fields keep the Hugging Face key names, optional
//! keys carry `#[serde(default = ...)]` with the Hugging Face default, and unknown keys are
//! ignored (serde's default), because real configs carry many fields a port does not need
//! (`_name_or_path`, `transformers_version`, ...). A missing required key is an
//! [`Error::MissingConfigField`] that names the field and the file.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Reads and deserialises a JSON file.
///
/// Errors: [`Error::Io`] if the file cannot be read, [`Error::MissingConfigField`] if a required
/// field is absent, [`Error::Json`] for any other parse or type error (with line and column).
pub fn read_json<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_json(path, &bytes)
}

/// Deserialises JSON bytes that came from `path` (used for error messages only).
///
/// Python's `json` module writes the non-standard literals `Infinity`, `-Infinity` and `NaN`
/// (diffusers' DPM-Solver configs carry `"lambda_min_clipped": -Infinity`); they are read as
/// `±f64::MAX` and `null`.
pub fn parse_json<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    match python_literals_to_json(bytes) {
        Some(fixed) => serde_json::from_slice(&fixed),
        None => serde_json::from_slice(bytes),
    }
    .map_err(|e| json_error(path, e))
}

/// Rewrites `Infinity` / `-Infinity` / `NaN` outside strings; `None` when there are none.
fn python_literals_to_json(bytes: &[u8]) -> Option<Vec<u8>> {
    const INF: &[u8] = b"Infinity";
    const NAN: &[u8] = b"NaN";
    let (mut out, mut in_string, mut escaped, mut changed) = (Vec::new(), false, false, false);
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
        } else if bytes[i..].starts_with(INF) {
            out.extend_from_slice(b"1.7976931348623157e308");
            i += INF.len();
            changed = true;
            continue;
        } else if bytes[i..].starts_with(NAN) {
            out.extend_from_slice(b"null");
            i += NAN.len();
            changed = true;
            continue;
        }
        out.push(c);
        i += 1;
    }
    changed.then_some(out)
}

fn json_error(path: &Path, e: serde_json::Error) -> Error {
    // serde reports a missing field as "missing field `name` at line L column C".
    let message = e.to_string();
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(end) = rest.find('`')
    {
        return Error::MissingConfigField {
            path: path.to_path_buf(),
            field: rest[..end].to_string(),
        };
    }
    Error::Json {
        path: path.to_path_buf(),
        message,
    }
}

/// A typed config stored as a JSON file in a model folder.
///
/// Implementors are serde mirrors of the Hugging Face file; `validate` checks the invariants
/// the model relies on (so `forward` can stay infallible).
pub trait ConfigFile: DeserializeOwned {
    /// The file name inside a model folder, e.g. `config.json`.
    const FILE_NAME: &'static str = "config.json";

    /// Checks the values for consistency. The message names the offending fields.
    fn validate(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// Reads `dir/FILE_NAME`, then validates it.
    fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join(Self::FILE_NAME))
    }

    /// Reads a config file at an explicit path, then validates it.
    fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let config: Self = read_json(path)?;
        config.validate().map_err(|message| Error::InvalidConfig {
            path: Some(path.to_path_buf()),
            message,
        })?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct TinyConfig {
        hidden_size: usize,
        num_attention_heads: usize,
        #[serde(default = "default_eps")]
        layer_norm_eps: f64,
    }
    fn default_eps() -> f64 {
        1e-5
    }
    impl ConfigFile for TinyConfig {
        fn validate(&self) -> std::result::Result<(), String> {
            if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
                return Err(format!(
                    "hidden_size ({}) is not divisible by num_attention_heads ({})",
                    self.hidden_size, self.num_attention_heads
                ));
            }
            Ok(())
        }
    }

    fn write(dir: &Path, json: &str) {
        std::fs::write(dir.join("config.json"), json).unwrap();
    }

    #[test]
    fn unknown_fields_are_ignored_and_defaults_apply() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            r#"{"hidden_size": 32, "num_attention_heads": 4, "transformers_version": "5.0", "x": {"y": [1]}}"#,
        );
        let c = TinyConfig::from_dir(dir.path()).unwrap();
        assert_eq!(c.hidden_size, 32);
        assert_eq!(c.layer_norm_eps, 1e-5);
    }

    #[test]
    fn missing_field_names_field_and_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), r#"{"hidden_size": 32}"#);
        let err = TinyConfig::from_dir(dir.path()).unwrap_err();
        match &err {
            Error::MissingConfigField { path, field } => {
                assert_eq!(field, "num_attention_heads");
                assert_eq!(path, &dir.path().join("config.json"));
            }
            other => panic!("wrong variant: {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("num_attention_heads") && msg.contains("config.json"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_type_and_bad_json_are_json_errors_with_location() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            r#"{"hidden_size": "big", "num_attention_heads": 4}"#,
        );
        let err = TinyConfig::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Json { .. }), "{err:?}");
        assert!(err.to_string().contains("line 1"), "{err}");

        write(dir.path(), "{not json");
        let err = TinyConfig::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Json { .. }), "{err:?}");
    }

    #[test]
    fn validation_failure_is_invalid_config() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            r#"{"hidden_size": 30, "num_attention_heads": 4}"#,
        );
        let err = TinyConfig::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        assert!(err.to_string().contains("not divisible"), "{err}");
    }

    #[test]
    fn python_infinity_and_nan_literals_parse() {
        #[derive(Debug, Deserialize)]
        struct C {
            lo: f64,
            hi: f64,
            nan: Option<f64>,
            name: String,
        }
        let c: C = parse_json(
            Path::new("scheduler_config.json"),
            br#"{"lo": -Infinity, "hi": Infinity, "nan": NaN, "name": "not -Infinity or NaN"}"#,
        )
        .unwrap();
        assert_eq!((c.lo, c.hi, c.nan), (-f64::MAX, f64::MAX, None));
        assert_eq!(c.name, "not -Infinity or NaN");
    }

    #[test]
    fn missing_file_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = TinyConfig::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("config.json"));
    }
}
