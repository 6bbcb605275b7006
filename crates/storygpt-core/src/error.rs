//! The one error type of storygpt.
//!
//! Every variant carries the context a user needs to fix the problem: the offending file, the
//! tensor key, the config field or the shapes involved. Library code returns these errors and
//! never panics on user input.

use std::fmt;
use std::path::PathBuf;

/// Result alias used throughout storygpt.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in storygpt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (config, index, manifest) is not valid JSON or has the wrong structure.
    #[error("{}: invalid JSON: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said, with line and column.
        message: String,
    },

    /// A config file lacks a field that has no default.
    #[error("{}: missing required field `{field}`", path.display())]
    MissingConfigField {
        /// The config file.
        path: PathBuf,
        /// The missing field, as named in the JSON.
        field: String,
    },

    /// A config parsed, but its values are inconsistent (e.g. hidden size not divisible by heads).
    #[error("{}: invalid config: {message}", path_or_memory(path))]
    InvalidConfig {
        /// The config file, when the config came from one.
        path: Option<PathBuf>,
        /// What is wrong, naming the fields involved.
        message: String,
    },

    /// A safetensors file is truncated, corrupt, or uses an unsupported dtype.
    #[error("{}: not a valid safetensors file: {reason}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Tensors the model needs are absent from the checkpoint. Lists every one.
    #[error("{}: {} tensor(s) missing from the checkpoint: {}{}", path.display(), missing.len(), KeyList(missing), unused_hint(unused))]
    MissingTensors {
        /// The checkpoint file (or shard index).
        path: PathBuf,
        /// Every missing key, in checkpoint naming, sorted.
        missing: Vec<String>,
        /// Keys in the file that matched nothing (often the renamed counterparts of `missing`).
        unused: Vec<String>,
    },

    /// The checkpoint holds tensors the model does not use and the caller did not declare
    /// ignorable.
    #[error("{}: {} unexpected tensor(s) in the checkpoint: {}", path.display(), keys.len(), KeyList(keys))]
    UnexpectedTensors {
        /// The checkpoint file (or shard index).
        path: PathBuf,
        /// Every unexpected key, sorted.
        keys: Vec<String>,
    },

    /// A tensor in a checkpoint has a different shape from the model parameter it loads into.
    #[error("{}: tensor `{key}` has shape {found:?} in the checkpoint, the model expects {expected:?}", path.display())]
    ShapeMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The checkpoint key.
        key: String,
        /// The shape the model expects, in checkpoint layout.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A tensor in a checkpoint has a dtype that cannot load into the model parameter.
    #[error("{}: tensor `{key}` has dtype {found} in the checkpoint, the model expects {expected}", path.display())]
    DTypeMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The checkpoint key.
        key: String,
        /// What the parameter accepts (e.g. "a float dtype (F32, F16, BF16, F64)").
        expected: String,
        /// The dtype in the file.
        found: String,
    },

    /// A sharded checkpoint's index names a shard file that does not exist.
    #[error("{}: shard `{}` named in the index does not exist", index.display(), shard.display())]
    MissingShard {
        /// The `*.safetensors.index.json` file.
        index: PathBuf,
        /// The missing shard.
        shard: PathBuf,
    },

    /// No weights file was found in a model folder.
    #[error("{}: no weights found (looked for {})", dir.display(), candidates.join(", "))]
    WeightsNotFound {
        /// The model folder.
        dir: PathBuf,
        /// The file names that were tried.
        candidates: Vec<String>,
    },

    /// A runtime tensor input has the wrong shape.
    #[error("{what}: expected shape {expected}, got {found:?}")]
    InputShape {
        /// Which input.
        what: String,
        /// The expected shape, in words or with symbolic dims (e.g. "[batch, 4, h, w]").
        expected: String,
        /// The shape that was passed.
        found: Vec<usize>,
    },

    /// A value that must be finite is NaN or infinite (a covariance, a loss, features).
    #[error("{what} holds a NaN or infinite value at index {index:?}")]
    NonFinite {
        /// What holds it.
        what: String,
        /// Where: the index of the first bad entry.
        index: Vec<usize>,
    },

    /// User input is invalid (empty story, zero steps, NaN guidance, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A backend was asked for that is not compiled in or not available on this machine.
    #[error("backend `{name}` is not available: {reason}")]
    BackendUnavailable {
        /// The backend name.
        name: String,
        /// Why (not compiled in, no device, ...).
        reason: String,
    },

    /// A dataset file exists but its content is wrong: a bad `.npy` header, a pickle with an
    /// unexpected structure, a manifest entry that points nowhere, an image of the wrong size.
    /// Readers report the *first* bad file they meet.
    #[error("{}: {reason}", path.display())]
    DataFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it (naming the key, id or field where there is one).
        reason: String,
    },

    /// burn-store reported a problem while applying tensors that the pre-checks did not catch.
    #[error("{}: loading weights failed: {message}", path.display())]
    Load {
        /// The checkpoint file.
        path: PathBuf,
        /// burn-store's report.
        message: String,
    },
}

impl Error {
    /// A [`Error::DataFile`] for `path`.
    pub fn data_file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::DataFile {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

fn path_or_memory(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "<in-memory config>".to_string(),
    }
}

fn unused_hint(unused: &[String]) -> String {
    if unused.is_empty() {
        String::new()
    } else {
        format!(
            " (the file has {} key(s) that matched nothing: {})",
            unused.len(),
            KeyList(unused)
        )
    }
}

/// Formats a key list as `` `a`, `b`, `c` `` (every key: the error must name them all).
struct KeyList<'a>(&'a [String]);

impl fmt::Display for KeyList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, key) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{key}`")?;
        }
        Ok(())
    }
}
