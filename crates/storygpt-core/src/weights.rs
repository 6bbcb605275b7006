//! Loading safetensors checkpoints (single file or sharded) into burn modules, strictly.
//!
//! Every model in storygpt loads its Hugging Face weights through [`WeightLoader`]. It wraps
//! burn-store's [`SafetensorsStore`] (key remapping with [`KeyRemapper`], the
//! [`PyTorchToBurnAdapter`] that transposes `Linear` weights and renames norm `weight`/`bias` to
//! `gamma`/`beta`) and adds the checks burn-store leaves to the caller:
//!
//! | problem | error |
//! |---|---|
//! | truncated / corrupt file, header that is not JSON | [`Error::Safetensors`] naming the file |
//! | tensors the module needs but the file lacks | [`Error::MissingTensors`], every key listed |
//! | tensors in the file that the module does not use | [`Error::UnexpectedTensors`], unless declared ignorable |
//! | a tensor whose shape differs from the parameter | [`Error::ShapeMismatch`] with the key and both shapes |
//! | a tensor whose dtype cannot load (e.g. ints into a float weight) | [`Error::DTypeMismatch`] |
//! | a shard named in `*.safetensors.index.json` that does not exist | [`Error::MissingShard`] |
//!
//! All checks run on the safetensors headers *before* any tensor is applied, so a failed load
//! never hands back a half-loaded module (the module is consumed and dropped on error).
//!
//! Float tensors are converted to the requested float dtype while loading: an f16 or bf16
//! checkpoint loads into an f32 module (the default: each parameter keeps the dtype the module
//! was built with), or into bf16 parameters with [`WeightLoader::dtype`].
//!
//! # Key mapping
//!
//! Module field names mirror checkpoint keys (`encoder.layers.0.self_attn.q_proj.weight`), so most
//! keys match as they are. What differs is expressed with ordered regex remaps
//! ([`WeightLoader::remap`]), applied to each checkpoint key before matching, e.g. stripping
//! CLIP's optional `text_model.` prefix. In the PyTorch layout (the default),
//! `LayerNorm`/`GroupNorm`/`BatchNorm` `gamma`/`beta` match checkpoint `weight`/`bias`, burn's
//! `RmsNorm` `gamma` matches `weight`, and `Linear` weights are transposed (`[out, in]` in the
//! file, `[in, out]` in burn). Enum modules (e.g. a projection that is a conv in SD 1.x and a
//! linear in SD 2.x) do not add their variant name to the path: keys are those of the variant.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor};
use burn_store::{
    BurnToPyTorchAdapter, KeyRemapper, ModuleAdapter, ModuleSnapshot, ModuleStore,
    PyTorchToBurnAdapter, SafetensorsStore, TensorSnapshot,
};
use regex::Regex;
use serde::Deserialize;

use crate::config::read_json;
use crate::error::{Error, Result};

/// How the tensors in a checkpoint are laid out relative to burn's modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TensorLayout {
    /// PyTorch / Hugging Face: `Linear` weights are `[out, in]`, norms use `weight`/`bias`.
    #[default]
    PyTorch,
    /// Written by burn itself with the identity adapter: `[in, out]` and `gamma`/`beta`.
    Burn,
}

/// Strict safetensors loader with key remapping, dtype conversion and full error reporting.
///
/// ```no_run
/// # use storygpt_core::weights::WeightLoader;
/// # fn f<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(m: M) -> storygpt_core::Result<M> {
/// let model = WeightLoader::new()
///     .remap(r"^text_model\.", "")          // legacy transformers-4 prefix
///     .ignore_unexpected(r"position_ids$")  // a buffer, not a parameter
///     .load_dir(m, "clip_text".as_ref(), "model")?;
/// # Ok(model) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct WeightLoader {
    remaps: Vec<(String, String)>,
    ignore: Vec<String>,
    layout: TensorLayout,
    dtype: Option<DType>,
}

/// The outcome of matching a checkpoint to a module: which (remapped) keys to apply and the
/// float dtype of each parameter.
struct Plan {
    used: BTreeSet<String>,
    target_dtypes: HashMap<String, DType>,
}

/// One tensor as described by a safetensors header.
#[derive(Debug, Clone)]
struct FileTensor {
    file: PathBuf,
    key: String,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
}

impl WeightLoader {
    /// A loader for PyTorch/Hugging Face checkpoints with no remapping.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the tensor layout of the checkpoint (default [`TensorLayout::PyTorch`]).
    pub fn layout(mut self, layout: TensorLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Adds a regex rewrite applied to every checkpoint key before matching. Rewrites run in
    /// the order they were added, each on the result of the previous one. `to` may use `$1`.
    pub fn remap(mut self, from: &str, to: &str) -> Self {
        self.remaps.push((from.to_string(), to.to_string()));
        self
    }

    /// Declares checkpoint keys matching `pattern` (a regex, tested against the original and
    /// the remapped key) as ignorable: they may be present without being used.
    pub fn ignore_unexpected(mut self, pattern: &str) -> Self {
        self.ignore.push(pattern.to_string());
        self
    }

    /// Loads every float tensor as `dtype` instead of the module's own parameter dtype.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = Some(dtype);
        self
    }

    /// Loads the weights of a model folder into `module`.
    ///
    /// Looks for `{stem}.safetensors`, then the sharded `{stem}.safetensors.index.json`
    /// (`stem` is `model` for transformers, `diffusion_pytorch_model` for diffusers).
    pub fn load_dir<B: Backend, M: Module<B>>(
        &self,
        module: M,
        dir: &Path,
        stem: &str,
    ) -> Result<M> {
        let single = dir.join(format!("{stem}.safetensors"));
        let index = dir.join(format!("{stem}.safetensors.index.json"));
        if single.is_file() {
            self.load_file(module, &single)
        } else if index.is_file() {
            self.load_sharded(module, &index)
        } else {
            Err(Error::WeightsNotFound {
                dir: dir.to_path_buf(),
                candidates: vec![
                    format!("{stem}.safetensors"),
                    format!("{stem}.safetensors.index.json"),
                ],
            })
        }
    }

    /// Loads one safetensors file into `module`.
    pub fn load_file<B: Backend, M: Module<B>>(&self, module: M, path: &Path) -> Result<M> {
        self.load_files(module, &[path.to_path_buf()], path)
    }

    /// Loads a sharded checkpoint described by a Hugging Face `*.safetensors.index.json`.
    pub fn load_sharded<B: Backend, M: Module<B>>(&self, module: M, index: &Path) -> Result<M> {
        let shards = shard_files(index)?;
        self.load_files(module, &shards, index)
    }

    /// Loads the union of several safetensors files into `module`; `report_path` names the
    /// checkpoint in errors about the whole set (missing or unexpected keys).
    pub fn load_files<B: Backend, M: Module<B>>(
        &self,
        module: M,
        files: &[PathBuf],
        report_path: &Path,
    ) -> Result<M> {
        let remapper = self.remapper()?;

        // 1. Read and validate every header.
        let mut headers = Vec::new();
        for file in files {
            headers.extend(read_header(file)?);
        }
        // 2.-3. Match against the module's parameters; every problem is an error here.
        let plan = self.plan(&module, headers, report_path)?;
        let (used, target_dtypes) = (plan.used, plan.target_dtypes);

        // 4. Everything checks out: apply through burn-store.
        let mut snapshots: Vec<TensorSnapshot> = Vec::with_capacity(used.len());
        for file in files {
            let mut store = SafetensorsStore::from_file(file).remap(remapper.clone());
            let all = store.get_all_snapshots().map_err(|e| Error::Safetensors {
                path: file.clone(),
                reason: e.to_string(),
            })?;
            snapshots.extend(
                all.iter()
                    .filter(|(k, _)| used.contains(*k))
                    .map(|(_, s)| s.clone()),
            );
        }
        self.apply(module, snapshots, target_dtypes, report_path)
    }

    /// Loads a PyTorch checkpoint (`.pth`, `.pt`, `.bin`: a state dict, in the zip or legacy
    /// format) into `module`, with the same key rules and checks as the safetensors paths.
    ///
    /// The file is read as data by burn-store's PyTorch reader, which never executes the
    /// pickle. A state dict nested under `"state_dict"` is found too.
    pub fn load_pytorch<B: Backend, M: Module<B>>(&self, module: M, path: &Path) -> Result<M> {
        use burn_store::pytorch::PytorchReader;
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint not found"),
            ));
        }
        let reader = PytorchReader::new(path)
            .or_else(|_| PytorchReader::with_top_level_key(path, "state_dict"))
            .map_err(|e| Error::DataFile {
                path: path.to_path_buf(),
                reason: format!("not a readable PyTorch state dict: {e}"),
            })?;
        let remapper = self.remapper()?;
        let tensors = reader.into_tensors();
        let mut headers = Vec::with_capacity(tensors.len());
        for (key, snap) in &tensors {
            headers.push(FileTensor {
                file: path.to_path_buf(),
                key: key.clone(),
                dtype: safetensors_dtype(snap.dtype).ok_or_else(|| Error::DataFile {
                    path: path.to_path_buf(),
                    reason: format!("tensor `{key}` has unsupported dtype {:?}", snap.dtype),
                })?,
                shape: snap.shape.to_vec(),
            });
        }
        headers.sort_by(|a, b| a.key.cmp(&b.key));
        let plan = self.plan(&module, headers, path)?;
        let mut snapshots = Vec::with_capacity(plan.used.len());
        for (key, snap) in tensors {
            let mapped = remap_key(&remapper, &key);
            if !plan.used.contains(&mapped) {
                continue;
            }
            snapshots.push(TensorSnapshot::from_closure(
                snap.clone_data_fn(),
                snap.dtype,
                snap.shape.clone(),
                mapped.split('.').map(str::to_string).collect(),
                Vec::new(),
                Default::default(),
            ));
        }
        self.apply(module, snapshots, plan.target_dtypes, path)
    }

    /// Step 4 of a load: applies the checked snapshots through burn-store.
    fn apply<B: Backend, M: Module<B>>(
        &self,
        mut module: M,
        snapshots: Vec<TensorSnapshot>,
        target_dtypes: HashMap<String, DType>,
        report_path: &Path,
    ) -> Result<M> {
        let adapter = LoadAdapter {
            layout: self.layout,
            target_dtypes,
        };
        let result = module.apply(snapshots, None, Some(Box::new(adapter)), true);
        if !result.errors.is_empty() || !result.missing.is_empty() {
            return Err(Error::Load {
                path: report_path.to_path_buf(),
                message: result.to_string(),
            });
        }
        tracing::debug!(
            file = %report_path.display(),
            tensors = result.applied.len(),
            "loaded weights"
        );
        Ok(module)
    }

    /// Checks that a checkpoint with these tensors (key, shape; any float dtype) would load
    /// into `module` without error, without reading or allocating any weights. Used to prove
    /// full key coverage of real model layouts (e.g. SD 1.5's 686 UNet tensors) from key lists.
    pub fn check_keys<B: Backend, M: Module<B>>(
        &self,
        module: &M,
        keys: impl IntoIterator<Item = (String, Vec<usize>)>,
        source: &Path,
    ) -> Result<()> {
        let tensors = keys
            .into_iter()
            .map(|(key, shape)| FileTensor {
                file: source.to_path_buf(),
                key,
                dtype: safetensors::Dtype::F32,
                shape,
            })
            .collect();
        self.plan(module, tensors, source).map(|_| ())
    }

    /// Matches checkpoint tensors to the module's parameters (steps 2 and 3 of a load).
    fn plan<B: Backend, M: Module<B>>(
        &self,
        module: &M,
        headers: Vec<FileTensor>,
        report_path: &Path,
    ) -> Result<Plan> {
        let remapper = self.remapper()?;
        let ignore = self.ignore_patterns()?;
        let mut tensors: BTreeMap<String, FileTensor> = BTreeMap::new();
        for t in headers {
            let mapped = remap_key(&remapper, &t.key);
            if let Some(prev) = tensors.get(&mapped) {
                return Err(Error::Load {
                    path: report_path.to_path_buf(),
                    message: format!(
                        "keys `{}` ({}) and `{}` ({}) both map to `{mapped}`",
                        prev.key,
                        prev.file.display(),
                        t.key,
                        t.file.display()
                    ),
                });
            }
            tensors.insert(mapped, t);
        }

        // Inventory the module's parameters without initialising them.
        let params = ParamInventory::of(module);

        // Match parameters to tensors and check dtype and shape.
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut missing = Vec::new();
        let mut problems = Vec::new();
        let mut target_dtypes: HashMap<String, DType> = HashMap::new();
        for p in &params.params {
            let Some(key) = self
                .candidates(p)
                .into_iter()
                .find(|k| tensors.contains_key(k))
            else {
                missing.push(self.checkpoint_name(p));
                continue;
            };
            let t = &tensors[&key];
            used.insert(key.clone());
            if let Some(err) = check_dtype(p, t) {
                problems.push(err);
                continue;
            }
            let expected = self.expected_file_shape(p);
            if t.shape != expected {
                problems.push(Error::ShapeMismatch {
                    path: t.file.clone(),
                    key: t.key.clone(),
                    expected,
                    found: t.shape.clone(),
                });
                continue;
            }
            if p.kind == ParamKind::Float {
                let target = self
                    .dtype
                    .unwrap_or(p.dtype.unwrap_or(params.default_float));
                target_dtypes.insert(p.path.clone(), target);
            }
        }
        let unused: Vec<String> = tensors
            .iter()
            .filter(|(mapped, _)| !used.contains(*mapped))
            .filter(|(mapped, t)| {
                !ignore
                    .iter()
                    .any(|re| re.is_match(&t.key) || re.is_match(mapped))
            })
            .map(|(_, t)| t.key.clone())
            .collect();

        if !missing.is_empty() {
            missing.sort();
            return Err(Error::MissingTensors {
                path: report_path.to_path_buf(),
                missing,
                unused,
            });
        }
        if let Some(err) = problems.into_iter().next() {
            return Err(err);
        }
        if !unused.is_empty() {
            return Err(Error::UnexpectedTensors {
                path: report_path.to_path_buf(),
                keys: unused,
            });
        }
        Ok(Plan {
            used,
            target_dtypes,
        })
    }

    /// The checkpoint keys (after remapping) that can provide parameter `p`, in order.
    fn candidates(&self, p: &ParamInfo) -> Vec<String> {
        let mut keys = vec![p.path.clone()];
        if self.layout == TensorLayout::PyTorch
            && let Some(alt) = pytorch_param_name(p)
        {
            keys.push(replace_last_segment(&p.path, alt));
        }
        keys
    }

    /// How a missing parameter is named in errors: as the checkpoint would name it.
    fn checkpoint_name(&self, p: &ParamInfo) -> String {
        match (self.layout, pytorch_param_name(p)) {
            (TensorLayout::PyTorch, Some(alt)) => replace_last_segment(&p.path, alt),
            _ => p.path.clone(),
        }
    }

    /// The shape the checkpoint must have for parameter `p`.
    fn expected_file_shape(&self, p: &ParamInfo) -> Vec<usize> {
        let transposed = self.layout == TensorLayout::PyTorch
            && p.module_type.as_deref() == Some("Struct:Linear")
            && p.path.ends_with(".weight")
            && p.shape.len() == 2;
        if transposed {
            vec![p.shape[1], p.shape[0]]
        } else {
            p.shape.clone()
        }
    }

    fn remapper(&self) -> Result<KeyRemapper> {
        KeyRemapper::from_patterns(self.remaps.clone())
            .map_err(|e| Error::InvalidInput(format!("invalid key remap pattern: {e}")))
    }

    fn ignore_patterns(&self) -> Result<Vec<Regex>> {
        self.ignore
            .iter()
            .map(|p| {
                Regex::new(p)
                    .map_err(|e| Error::InvalidInput(format!("invalid ignore pattern `{p}`: {e}")))
            })
            .collect()
    }
}

/// Casts every float parameter of `module` to `dtype` (e.g. `DType::BF16` to halve the memory
/// of a frozen LLM), keeping parameter ids and trainability.
pub fn cast_floats<B: Backend, M: Module<B>>(module: M, dtype: burn::tensor::DType) -> M {
    struct Cast(burn::tensor::DType);
    impl<B: Backend> burn::module::ModuleMapper<B> for Cast {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<burn::tensor::Tensor<B, D>>,
        ) -> burn::module::Param<burn::tensor::Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let require_grad = tensor.is_require_grad();
            let tensor = tensor.cast(self.0).set_require_grad(require_grad);
            burn::module::Param::from_mapped_value(id, tensor, mapper)
        }
    }
    module.map(&mut Cast(dtype))
}

/// Saves `module` as a safetensors file, atomically.
///
/// In [`TensorLayout::PyTorch`] the file is what transformers/diffusers would write for the
/// same module (`Linear` weights `[out, in]`, norm `weight`/`bias`), with metadata
/// `{"format": "pt"}`, so [`WeightLoader`] and the Python reference both read it.
pub fn save_file<B: Backend, M: Module<B>>(
    module: &M,
    path: &Path,
    layout: TensorLayout,
) -> Result<()> {
    save_file_renamed(module, path, layout, &[])
}

/// Like [`save_file`], renaming keys with ordered regex rules (the inverse of a loader's
/// remaps, e.g. `.ff.net_0.` → `.ff.net.0.` for diffusers UNets).
pub fn save_file_renamed<B: Backend, M: Module<B>>(
    module: &M,
    path: &Path,
    layout: TensorLayout,
    renames: &[(&str, &str)],
) -> Result<()> {
    let rules = renames
        .iter()
        .map(|(from, to)| {
            Regex::new(from)
                .map(|re| (re, to.to_string()))
                .map_err(|e| Error::InvalidInput(format!("invalid rename pattern `{from}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut store = SafetensorsStore::from_bytes(None)
        .skip_enum_variants(true)
        .metadata("format", "pt")
        .with_to_adapter(SaveAdapter { layout, rules });
    module.save_into(&mut store).map_err(|e| Error::Load {
        path: path.to_path_buf(),
        message: format!("collecting tensors to save failed: {e}"),
    })?;
    let bytes = store.get_bytes().map_err(|e| Error::Load {
        path: path.to_path_buf(),
        message: format!("serialising safetensors failed: {e}"),
    })?;
    crate::fs::write_atomic(path, &canonical_header(bytes))
}

/// Rewrites a safetensors header with its keys (and `__metadata__`'s) in sorted order, so the
/// same weights always give the same bytes (burn-store keeps the metadata in a `HashMap`).
fn canonical_header(bytes: Vec<u8>) -> Vec<u8> {
    let parsed = (|| {
        let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
        let header = bytes.get(8..8usize.checked_add(n)?)?;
        let value: serde_json::Value = serde_json::from_slice(header).ok()?;
        Some((n, value))
    })();
    let Some((n, value)) = parsed else {
        return bytes;
    };
    // `serde_json::Map` is a BTreeMap here (no `preserve_order`): serialising sorts the keys.
    let mut header = serde_json::to_vec(&value).unwrap_or_default();
    if header.is_empty() {
        return bytes;
    }
    // The data section must start 8-byte aligned, padded with spaces as safetensors does.
    while (8 + header.len()) % 8 != 0 {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// Inverse of [`LoadAdapter`]'s layout part, for saving, plus key renames.
#[derive(Clone)]
struct SaveAdapter {
    layout: TensorLayout,
    rules: Vec<(Regex, String)>,
}

impl ModuleAdapter for SaveAdapter {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        let adapted = self.adapt_layout(snapshot);
        if self.rules.is_empty() {
            return adapted;
        }
        let mut key = adapted.full_path();
        for (re, to) in &self.rules {
            key = re.replace_all(&key, to.as_str()).into_owned();
        }
        TensorSnapshot::from_closure(
            adapted.clone_data_fn(),
            adapted.dtype,
            adapted.shape.clone(),
            key.split('.').map(str::to_string).collect(),
            adapted.container_stack.clone().unwrap_or_default(),
            adapted.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

impl SaveAdapter {
    fn adapt_layout(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        if self.layout != TensorLayout::PyTorch {
            return snapshot.clone();
        }
        let adapted = BurnToPyTorchAdapter.adapt(snapshot);
        let is_rms_gamma = adapted.module_type().as_deref() == Some("Struct:RmsNorm")
            && adapted
                .path_stack
                .as_ref()
                .and_then(|p| p.last())
                .map(String::as_str)
                == Some("gamma");
        if !is_rms_gamma {
            return adapted;
        }
        let mut path = adapted.path_stack.clone().unwrap_or_default();
        if let Some(last) = path.last_mut() {
            *last = "weight".to_string();
        }
        TensorSnapshot::from_closure(
            adapted.clone_data_fn(),
            adapted.dtype,
            adapted.shape.clone(),
            path,
            adapted.container_stack.clone().unwrap_or_default(),
            adapted.tensor_id.unwrap_or_default(),
        )
    }
}

/// The PyTorch name of a burn parameter whose name differs (`gamma` -> `weight`, ...).
fn pytorch_param_name(p: &ParamInfo) -> Option<&'static str> {
    let name = p.path.rsplit('.').next()?;
    match (p.module_type.as_deref()?, name) {
        (
            "Struct:LayerNorm" | "Struct:GroupNorm" | "Struct:BatchNorm" | "Struct:RmsNorm",
            "gamma",
        ) => Some("weight"),
        ("Struct:LayerNorm" | "Struct:GroupNorm" | "Struct:BatchNorm", "beta") => Some("bias"),
        _ => None,
    }
}

fn replace_last_segment(path: &str, name: &str) -> String {
    match path.rsplit_once('.') {
        Some((head, _)) => format!("{head}.{name}"),
        None => name.to_string(),
    }
}

fn remap_key(remapper: &KeyRemapper, key: &str) -> String {
    let mut out = key.to_string();
    for (re, to) in remapper.to_regex_pairs() {
        if re.is_match(&out) {
            out = re.replace_all(&out, to.as_str()).to_string();
        }
    }
    out
}

fn check_dtype(p: &ParamInfo, t: &FileTensor) -> Option<Error> {
    use safetensors::Dtype as D;
    let ok = match p.kind {
        ParamKind::Float => matches!(t.dtype, D::F16 | D::BF16 | D::F32 | D::F64),
        ParamKind::Int => matches!(
            t.dtype,
            D::I8 | D::I16 | D::I32 | D::I64 | D::U8 | D::U32 | D::U64
        ),
        ParamKind::Bool => matches!(t.dtype, D::BOOL),
    };
    (!ok).then(|| Error::DTypeMismatch {
        path: t.file.clone(),
        key: t.key.clone(),
        expected: match p.kind {
            ParamKind::Float => "a float dtype (F32, F16, BF16 or F64)",
            ParamKind::Int => "an integer dtype",
            ParamKind::Bool => "BOOL",
        }
        .to_string(),
        found: format!("{:?}", t.dtype),
    })
}

/// The safetensors dtype of a burn dtype, for the checks shared by every checkpoint format.
fn safetensors_dtype(d: DType) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as S;
    Some(match d {
        DType::F64 => S::F64,
        DType::F32 | DType::Flex32 => S::F32,
        DType::F16 => S::F16,
        DType::BF16 => S::BF16,
        DType::I64 => S::I64,
        DType::I32 => S::I32,
        DType::I16 => S::I16,
        DType::I8 => S::I8,
        DType::U64 => S::U64,
        DType::U32 => S::U32,
        DType::U8 => S::U8,
        DType::Bool(_) => S::BOOL,
        _ => return None,
    })
}

/// Reads and validates a safetensors header (and that the data section is complete).
fn read_header(path: &Path) -> Result<Vec<FileTensor>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and dropped before this function returns; a file modified
    // concurrently can only produce wrong values, which the header checks below reject or the
    // caller sees as bad weights, not memory unsafety in our code.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut out: Vec<FileTensor> = st
        .tensors()
        .into_iter()
        .map(|(key, view)| FileTensor {
            file: path.to_path_buf(),
            key,
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The shard files named by a Hugging Face `*.safetensors.index.json`, each checked to exist.
pub fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let parsed: ShardIndex = read_json(index)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let names: BTreeSet<&String> = parsed.weight_map.values().collect();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let shard = dir.join(name);
        if !shard.is_file() {
            return Err(Error::MissingShard {
                index: index.to_path_buf(),
                shard,
            });
        }
        files.push(shard);
    }
    Ok(files)
}

/// Reads every tensor of a safetensors file into host memory, keyed by name (for golden
/// outputs, embedding shards and other data files; models load through [`WeightLoader`]).
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, burn::tensor::TensorData>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (key, view) in st.tensors() {
        let dtype = burn_dtype(view.dtype()).ok_or_else(|| Error::Safetensors {
            path: path.to_path_buf(),
            reason: format!("tensor `{key}` has unsupported dtype {:?}", view.dtype()),
        })?;
        let data = burn::tensor::TensorData::from_bytes_vec(
            view.data().to_vec(),
            view.shape().to_vec(),
            dtype,
        );
        out.insert(key, data);
    }
    Ok(out)
}

fn burn_dtype(dtype: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as D;
    Some(match dtype {
        D::F64 => DType::F64,
        D::F32 => DType::F32,
        D::F16 => DType::F16,
        D::BF16 => DType::BF16,
        D::I64 => DType::I64,
        D::I32 => DType::I32,
        D::I16 => DType::I16,
        D::I8 => DType::I8,
        D::U64 => DType::U64,
        D::U32 => DType::U32,
        D::U16 => DType::U16,
        D::U8 => DType::U8,
        D::BOOL => DType::Bool(burn::tensor::BoolStore::Native),
        _ => return None,
    })
}

/// Name, dtype and shape of one tensor in a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The key in the file.
    pub key: String,
    /// The safetensors dtype name (`F32`, `BF16`, `I64`, ...).
    pub dtype: String,
    /// The shape.
    pub shape: Vec<usize>,
}

/// Describes every tensor of a safetensors file, sorted by key, after validating the file.
pub fn tensor_infos(path: &Path) -> Result<Vec<TensorInfo>> {
    Ok(read_header(path)?
        .into_iter()
        .map(|t| TensorInfo {
            key: t.key,
            dtype: format!("{:?}", t.dtype),
            shape: t.shape,
        })
        .collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamKind {
    Float,
    Int,
    Bool,
}

#[derive(Debug, Clone)]
struct ParamInfo {
    /// burn record path, e.g. `encoder.layers.0.layer_norm1.gamma`.
    path: String,
    /// The innermost user-defined module type, e.g. `Struct:LayerNorm`.
    module_type: Option<String>,
    kind: ParamKind,
    shape: Vec<usize>,
    /// The parameter's dtype when it is already initialised.
    dtype: Option<DType>,
}

/// Visits a module and records each parameter's path, container and shape without forcing
/// lazy initialisation (which for a 1B-parameter model would allocate gigabytes for nothing).
struct ParamInventory {
    path: Vec<String>,
    containers: Vec<String>,
    params: Vec<ParamInfo>,
    default_float: DType,
}

impl ParamInventory {
    fn of<B: Backend, M: Module<B>>(module: &M) -> Self {
        // `Module::devices` would initialise every lazy parameter; the visitor records the
        // first parameter's device lazily instead.
        let mut visitor = InventoryVisitor::<B> {
            inv: ParamInventory {
                path: Vec::new(),
                containers: Vec::new(),
                params: Vec::new(),
                default_float: DType::F32,
            },
            device: None,
        };
        module.visit(&mut visitor);
        let device = visitor.device.unwrap_or_default();
        visitor.inv.default_float = Tensor::<B, 1>::zeros([1], &device).dtype();
        visitor.inv
    }

    fn record(&mut self, kind: ParamKind, shape: Vec<usize>, dtype: Option<DType>) {
        let module_type = self
            .containers
            .iter()
            .rev()
            .find(|c| c.starts_with("Struct:") || c.starts_with("Enum:"))
            .cloned();
        self.params.push(ParamInfo {
            path: self.path.join("."),
            module_type,
            kind,
            shape,
            dtype,
        });
    }
}

struct InventoryVisitor<B: Backend> {
    inv: ParamInventory,
    device: Option<B::Device>,
}

impl<B: Backend> ModuleVisitor<B> for InventoryVisitor<B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        // Enum variants are not part of checkpoint keys (see the module docs).
        if !container_type.starts_with("Enum:") {
            self.inv.path.push(name.to_string());
        }
        self.inv.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.inv.path.pop();
        }
        self.inv.containers.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.device.get_or_insert_with(|| param.lazy_device());
        let dtype = param.is_initialized().then(|| param.val().dtype());
        self.inv
            .record(ParamKind::Float, param.lazy_shape().to_vec(), dtype);
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        self.device.get_or_insert_with(|| param.lazy_device());
        self.inv
            .record(ParamKind::Int, param.lazy_shape().to_vec(), None);
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<B, D, Bool>>) {
        self.device.get_or_insert_with(|| param.lazy_device());
        self.inv
            .record(ParamKind::Bool, param.lazy_shape().to_vec(), None);
    }
}

/// burn-store adapter: the PyTorch layout conversion (transpose `Linear`, norm names, and
/// `RmsNorm.gamma` <- `weight`, which burn's adapter lacks), then a cast of float tensors to
/// each parameter's target dtype.
#[derive(Clone)]
struct LoadAdapter {
    layout: TensorLayout,
    target_dtypes: HashMap<String, DType>,
}

impl ModuleAdapter for LoadAdapter {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        let adapted = match self.layout {
            TensorLayout::PyTorch => PyTorchToBurnAdapter.adapt(snapshot),
            TensorLayout::Burn => snapshot.clone(),
        };
        let Some(&target) = self.target_dtypes.get(&adapted.full_path()) else {
            return adapted;
        };
        if !adapted.dtype.is_float() || adapted.dtype == target {
            return adapted;
        }
        let data_fn = adapted.clone_data_fn();
        TensorSnapshot::from_closure(
            std::rc::Rc::new(move || Ok(data_fn()?.convert_dtype(target))),
            target,
            adapted.shape.clone(),
            adapted.path_stack.clone().unwrap_or_default(),
            adapted.container_stack.clone().unwrap_or_default(),
            adapted.tensor_id.unwrap_or_default(),
        )
    }

    fn get_alternative_param_name(&self, param_name: &str, container_type: &str) -> Option<String> {
        if self.layout != TensorLayout::PyTorch {
            return None;
        }
        if container_type == "Struct:RmsNorm" && param_name == "gamma" {
            return Some("weight".to_string());
        }
        PyTorchToBurnAdapter.get_alternative_param_name(param_name, container_type)
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
#[path = "weights_tests.rs"]
mod tests;
