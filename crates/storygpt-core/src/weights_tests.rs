//! Unit tests of the strict loader: every error path names the file/key/shape, and a property
//! test round-trips random tensors of every dtype the backend supports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, RmsNorm,
    RmsNormConfig,
};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use burn_store::ModuleSnapshot;
use proptest::prelude::*;
use safetensors::Dtype;

use super::*;
use crate::backend::{BackendKind, DefaultBackend as TB, default_device};

#[derive(Module, Debug)]
struct Block<B: Backend> {
    lin: Linear<B>,
}

/// A small module with every parameter flavour the loader must handle: a transposed Linear, a
/// bias-less Linear, LayerNorm and RmsNorm (renamed params), a ModuleList.
#[derive(Module, Debug)]
struct Net<B: Backend> {
    fc: Linear<B>,
    proj: Linear<B>,
    norm: LayerNorm<B>,
    rms: RmsNorm<B>,
    blocks: Vec<Block<B>>,
}

fn net(device: &<TB as burn::tensor::backend::BackendTypes>::Device) -> Net<TB> {
    Net {
        fc: LinearConfig::new(3, 5).init(device),
        proj: LinearConfig::new(5, 4).with_bias(false).init(device),
        norm: LayerNormConfig::new(5).init(device),
        rms: RmsNormConfig::new(5).init(device),
        blocks: (0..2)
            .map(|_| Block {
                lin: LinearConfig::new(5, 5).init(device),
            })
            .collect(),
    }
}

/// A tensor to write: key, shape, f32 values (converted to `dtype` when written).
struct T {
    key: String,
    shape: Vec<usize>,
    values: Vec<f32>,
    dtype: Dtype,
}

fn t(key: &str, shape: &[usize], seed: f32) -> T {
    let n: usize = shape.iter().product();
    T {
        key: key.to_string(),
        shape: shape.to_vec(),
        values: (0..n).map(|i| seed + i as f32 * 0.125).collect(),
        dtype: Dtype::F32,
    }
}

/// The checkpoint PyTorch would write for [`Net`].
fn pytorch_tensors() -> Vec<T> {
    vec![
        t("fc.weight", &[5, 3], 0.0),
        t("fc.bias", &[5], 1.0),
        t("proj.weight", &[4, 5], 2.0),
        t("norm.weight", &[5], 3.0),
        t("norm.bias", &[5], 4.0),
        t("rms.weight", &[5], 5.0),
        t("blocks.0.lin.weight", &[5, 5], 6.0),
        t("blocks.0.lin.bias", &[5], 7.0),
        t("blocks.1.lin.weight", &[5, 5], 8.0),
        t("blocks.1.lin.bias", &[5], 9.0),
    ]
}

fn bytes_of(t: &T) -> Vec<u8> {
    match t.dtype {
        Dtype::F32 => t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => t
            .values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => t
            .values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::I32 => t
            .values
            .iter()
            .flat_map(|v| (*v as i32).to_le_bytes())
            .collect(),
        Dtype::I64 => t
            .values
            .iter()
            .flat_map(|v| (*v as i64).to_le_bytes())
            .collect(),
        other => panic!("test helper does not write {other:?}"),
    }
}

fn write_st(path: &Path, tensors: &[T]) {
    let data: Vec<(String, Vec<u8>, &T)> = tensors
        .iter()
        .map(|t| (t.key.clone(), bytes_of(t), t))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(k, b, t)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn floats<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn tmp_file(dir: &tempfile::TempDir, name: &str, tensors: &[T]) -> PathBuf {
    let p = dir.path().join(name);
    write_st(&p, tensors);
    p
}

#[test]
fn loads_pytorch_layout_transposing_linear_and_renaming_norms() {
    let dir = tempfile::tempdir().unwrap();
    let file = tmp_file(&dir, "model.safetensors", &pytorch_tensors());
    let device = default_device();
    let m = WeightLoader::new().load_file(net(&device), &file).unwrap();

    // fc.weight is [5, 3] (out, in) in the file and [3, 5] (in, out) in burn.
    let w = m.fc.weight.val();
    assert_eq!(w.dims(), [3, 5]);
    let file_w = &pytorch_tensors()[0].values;
    let ours = floats(w);
    for o in 0..5 {
        for i in 0..3 {
            assert_eq!(ours[i * 5 + o], file_w[o * 3 + i], "fc.weight[{o},{i}]");
        }
    }
    assert_eq!(floats(m.norm.gamma.val()), pytorch_tensors()[3].values);
    assert_eq!(
        floats(m.norm.beta.unwrap().val()),
        pytorch_tensors()[4].values
    );
    assert_eq!(floats(m.rms.gamma.val()), pytorch_tensors()[5].values);
    assert_eq!(
        floats(m.blocks[1].lin.bias.as_ref().unwrap().val()),
        pytorch_tensors()[9].values
    );
    assert!(m.proj.bias.is_none());
}

#[test]
fn truncated_file_is_a_safetensors_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = tmp_file(&dir, "trunc.safetensors", &pytorch_tensors());
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 7]).unwrap();
    let err = WeightLoader::new()
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    assert!(
        matches!(err, Error::Safetensors { ref path, .. } if path == &file),
        "{err:?}"
    );
    assert!(err.to_string().contains("trunc.safetensors"), "{err}");

    // Only part of the header survives.
    std::fs::write(&file, &bytes[..20]).unwrap();
    let err = WeightLoader::new()
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    assert!(matches!(err, Error::Safetensors { .. }), "{err:?}");

    // Empty file.
    std::fs::write(&file, b"").unwrap();
    let err = WeightLoader::new()
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    assert!(matches!(err, Error::Safetensors { .. }), "{err:?}");
}

#[test]
fn header_that_is_not_json_is_a_safetensors_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("garbage.safetensors");
    let header = b"{this is not json at all}   ";
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    std::fs::write(&file, bytes).unwrap();
    let err = WeightLoader::new()
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    assert!(
        matches!(err, Error::Safetensors { ref path, .. } if path == &file),
        "{err:?}"
    );
    assert!(err.to_string().contains("garbage.safetensors"), "{err}");
}

#[test]
fn missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.safetensors");
    let err = WeightLoader::new()
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.safetensors"));
}

#[test]
fn every_missing_key_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<T> = pytorch_tensors()
        .into_iter()
        .filter(|t| {
            !matches!(
                t.key.as_str(),
                "norm.weight" | "blocks.1.lin.bias" | "rms.weight"
            )
        })
        .collect();
    let file = tmp_file(&dir, "model.safetensors", &tensors);
    let err = WeightLoader::new()
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    match &err {
        Error::MissingTensors {
            path,
            missing,
            unused,
        } => {
            assert_eq!(path, &file);
            assert_eq!(missing, &["blocks.1.lin.bias", "norm.weight", "rms.weight"]);
            assert!(unused.is_empty());
        }
        other => panic!("wrong variant: {other:?}"),
    }
    let msg = err.to_string();
    for key in [
        "blocks.1.lin.bias",
        "norm.weight",
        "rms.weight",
        "model.safetensors",
    ] {
        assert!(msg.contains(key), "{msg}");
    }
}

#[test]
fn renamed_key_reports_missing_and_unused_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = pytorch_tensors();
    tensors[1].key = "fc.b".into();
    let file = tmp_file(&dir, "model.safetensors", &tensors);
    let err = WeightLoader::new()
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensors { missing, unused, .. }
            if missing == &["fc.bias"] && unused == &["fc.b"]),
        "{err:?}"
    );
}

#[test]
fn unexpected_key_is_an_error_unless_ignorable() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = pytorch_tensors();
    tensors.push(t("embeddings.position_ids", &[1, 7], 0.0));
    tensors.last_mut().unwrap().dtype = Dtype::I64;
    tensors.push(t("extra.weight", &[2], 0.0));
    let file = tmp_file(&dir, "model.safetensors", &tensors);

    let err = WeightLoader::new()
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    match &err {
        Error::UnexpectedTensors { path, keys } => {
            assert_eq!(path, &file);
            assert_eq!(keys, &["embeddings.position_ids", "extra.weight"]);
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert!(err.to_string().contains("extra.weight"), "{err}");

    let err = WeightLoader::new()
        .ignore_unexpected(r"position_ids$")
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedTensors { keys, .. } if keys == &["extra.weight"]),
        "{err:?}"
    );

    WeightLoader::new()
        .ignore_unexpected(r"position_ids$")
        .ignore_unexpected(r"^extra\.")
        .load_file(net(&default_device()), &file)
        .unwrap();
}

#[test]
fn shape_mismatch_names_key_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = pytorch_tensors();
    tensors[0] = t("fc.weight", &[5, 4], 0.0);
    let file = tmp_file(&dir, "model.safetensors", &tensors);
    let err = WeightLoader::new()
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    match &err {
        Error::ShapeMismatch {
            path,
            key,
            expected,
            found,
        } => {
            assert_eq!(path, &file);
            assert_eq!(key, "fc.weight");
            assert_eq!(
                expected,
                &[5, 3],
                "expected shape is given in checkpoint layout"
            );
            assert_eq!(found, &[5, 4]);
        }
        other => panic!("wrong variant: {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("fc.weight") && msg.contains("[5, 4]") && msg.contains("[5, 3]"),
        "{msg}"
    );
}

#[test]
fn integer_tensor_for_a_float_weight_is_a_dtype_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = pytorch_tensors();
    tensors[1].dtype = Dtype::I32;
    let file = tmp_file(&dir, "model.safetensors", &tensors);
    let err = WeightLoader::new()
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    match &err {
        Error::DTypeMismatch {
            path, key, found, ..
        } => {
            assert_eq!(path, &file);
            assert_eq!(key, "fc.bias");
            assert_eq!(found, "I32");
        }
        other => panic!("wrong variant: {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("fc.bias") && msg.contains("I32") && msg.contains("float"),
        "{msg}"
    );
}

#[test]
fn half_precision_files_load_into_the_module_dtype() {
    for dtype in [Dtype::F16, Dtype::BF16] {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = pytorch_tensors();
        for t in &mut tensors {
            t.dtype = dtype;
            // values that are not exactly representable, so rounding is visible
            t.values.iter_mut().for_each(|v| *v = *v * 1.001 + 0.0003);
        }
        let file = tmp_file(&dir, "model.safetensors", &tensors);
        let m = WeightLoader::new()
            .load_file(net(&default_device()), &file)
            .unwrap();
        let gamma = m.norm.gamma.val();
        assert_eq!(
            gamma.dtype(),
            DType::F32,
            "{dtype:?} loads as the module's f32"
        );
        let expected: Vec<f32> = tensors[3]
            .values
            .iter()
            .map(|v| match dtype {
                Dtype::F16 => half::f16::from_f32(*v).to_f32(),
                _ => half::bf16::from_f32(*v).to_f32(),
            })
            .collect();
        assert_eq!(floats(gamma), expected, "{dtype:?}");
    }
}

#[test]
fn remapping_strips_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = pytorch_tensors();
    for t in &mut tensors {
        t.key = format!("text_model.{}", t.key);
    }
    let file = tmp_file(&dir, "model.safetensors", &tensors);
    let err = WeightLoader::new()
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    assert!(matches!(err, Error::MissingTensors { .. }), "{err:?}");
    let m = WeightLoader::new()
        .remap(r"^text_model\.", "")
        .load_file(net(&default_device()), &file)
        .unwrap();
    assert_eq!(floats(m.rms.gamma.val()), pytorch_tensors()[5].values);
}

#[test]
fn invalid_patterns_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let file = tmp_file(&dir, "model.safetensors", &pytorch_tensors());
    let err = WeightLoader::new()
        .remap("(unclosed", "")
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    let err = WeightLoader::new()
        .ignore_unexpected("[")
        .load_file(net(&default_device()), &file)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
}

fn write_sharded(dir: &Path, tensors: Vec<T>) -> PathBuf {
    let (a, b): (Vec<T>, Vec<T>) =
        tensors
            .into_iter()
            .enumerate()
            .fold((Vec::new(), Vec::new()), |(mut a, mut b), (i, t)| {
                if i % 2 == 0 {
                    a.push(t)
                } else {
                    b.push(t)
                }
                (a, b)
            });
    write_st(&dir.join("model-00001-of-00002.safetensors"), &a);
    write_st(&dir.join("model-00002-of-00002.safetensors"), &b);
    let mut map = serde_json::Map::new();
    for t in &a {
        map.insert(t.key.clone(), "model-00001-of-00002.safetensors".into());
    }
    for t in &b {
        map.insert(t.key.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    let path = dir.join("model.safetensors.index.json");
    std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
    path
}

#[test]
fn sharded_checkpoints_load_and_a_missing_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let index = write_sharded(dir.path(), pytorch_tensors());
    let m = WeightLoader::new()
        .load_dir(net(&default_device()), dir.path(), "model")
        .unwrap();
    assert_eq!(
        floats(m.blocks[0].lin.bias.as_ref().unwrap().val()),
        pytorch_tensors()[7].values
    );
    assert_eq!(
        floats(m.fc.bias.as_ref().unwrap().val()),
        pytorch_tensors()[1].values
    );

    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = WeightLoader::new()
        .load_sharded(net(&default_device()), &index)
        .unwrap_err();
    match &err {
        Error::MissingShard { index: i, shard } => {
            assert_eq!(i, &index);
            assert!(shard.ends_with("model-00002-of-00002.safetensors"));
        }
        other => panic!("wrong variant: {other:?}"),
    }
    assert!(
        err.to_string().contains("model-00002-of-00002.safetensors"),
        "{err}"
    );
}

#[test]
fn a_folder_without_weights_says_what_it_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let err = WeightLoader::new()
        .load_dir(
            net(&default_device()),
            dir.path(),
            "diffusion_pytorch_model",
        )
        .unwrap_err();
    assert!(matches!(err, Error::WeightsNotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("diffusion_pytorch_model.safetensors.index.json")
    );
}

// ---------------------------------------------------------------------------------------------
// Round trip: save -> load for every float dtype the backend supports, plus an int parameter.

#[derive(Module, Debug)]
struct RoundTrip<B: Backend> {
    lin: Linear<B>,
    norm: LayerNorm<B>,
    rms: RmsNorm<B>,
    emb: Embedding<B>,
    conv: Conv2d<B>,
    steps: Param<Tensor<B, 1, Int>>,
}

fn round_trip_module(
    d_in: usize,
    d_out: usize,
    vocab: usize,
    seed: u64,
    device: &<TB as burn::tensor::backend::BackendTypes>::Device,
) -> RoundTrip<TB> {
    TB::seed(device, seed);
    RoundTrip {
        lin: LinearConfig::new(d_in, d_out).init(device),
        norm: LayerNormConfig::new(d_out).init(device),
        rms: RmsNormConfig::new(d_out).init(device),
        emb: EmbeddingConfig::new(vocab, d_out).init(device),
        conv: Conv2dConfig::new([d_in, d_out], [3, 3]).init(device),
        steps: Param::initialized(
            burn::module::ParamId::new(),
            Tensor::from_data(
                TensorData::new(
                    (0..vocab as i64).map(|i| i * 7 - 3).collect::<Vec<_>>(),
                    [vocab],
                ),
                device,
            ),
        ),
    }
}

/// Every parameter's data, keyed by path.
fn params_of<M: Module<TB>>(m: &M) -> HashMap<String, TensorData> {
    m.collect(None, None, false)
        .into_iter()
        .map(|s| (s.full_path(), s.to_data().unwrap()))
        .collect()
}

/// Float dtypes the default backend can hold as parameters.
fn supported_float_dtypes() -> Vec<DType> {
    match BackendKind::default_kind() {
        // burn-ndarray has no f16/bf16 kernels.
        BackendKind::NdArray => vec![DType::F32, DType::F64],
        _ => vec![DType::F32, DType::F64, DType::F16, DType::BF16],
    }
}

#[test]
fn round_trip_covers_these_dtypes() {
    // Makes the dtype coverage of the property test visible in the test output.
    let dtypes = supported_float_dtypes();
    eprintln!(
        "round trip on {} covers float dtypes {dtypes:?} and an int parameter",
        BackendKind::default_kind().name()
    );
    assert!(dtypes.contains(&DType::F32));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn save_load_round_trip(
        d_in in 1usize..6,
        d_out in 1usize..6,
        vocab in 1usize..9,
        seed in any::<u64>(),
        dtype_index in 0usize..4,
        layout in prop_oneof![Just(TensorLayout::PyTorch), Just(TensorLayout::Burn)],
    ) {
        let dtypes = supported_float_dtypes();
        let dtype = dtypes[dtype_index % dtypes.len()];
        let device = default_device();
        let dir = tempfile::tempdir().unwrap();
        let loader = WeightLoader::new().layout(layout);

        // A module whose float params are in `dtype`: save in f32, reload as `dtype`.
        let original = round_trip_module(d_in, d_out, vocab, seed, &device);
        let f32_file = dir.path().join("f32.safetensors");
        save_file(&original, &f32_file, layout).unwrap();
        let typed = loader
            .clone()
            .dtype(dtype)
            .load_file(round_trip_module(d_in, d_out, vocab, seed ^ 1, &device), &f32_file)
            .unwrap();
        prop_assert_eq!(typed.lin.weight.val().dtype(), dtype);

        // save (dtype) -> load (dtype) is exact.
        let typed_file = dir.path().join("typed.safetensors");
        save_file(&typed, &typed_file, layout).unwrap();
        let reloaded = loader
            .clone()
            .dtype(dtype)
            .load_file(round_trip_module(d_in, d_out, vocab, seed ^ 2, &device), &typed_file)
            .unwrap();
        let (want, got) = (params_of(&typed), params_of(&reloaded));
        prop_assert_eq!(want.len(), got.len());
        for (path, data) in &want {
            prop_assert_eq!(data, &got[path], "{} ({:?}, {:?})", path, dtype, layout);
        }

        // The `dtype` file loads into the default-f32 module as the exact f32 images.
        let widened = loader
            .load_file(round_trip_module(d_in, d_out, vocab, seed ^ 3, &device), &typed_file)
            .unwrap();
        prop_assert_eq!(widened.lin.weight.val().dtype(), DType::F32);
        let got = params_of(&widened);
        for (path, data) in &want {
            let expected = if data.dtype.is_float() { data.clone().convert_dtype(DType::F32) } else { data.clone() };
            prop_assert_eq!(&expected, &got[path], "{} widened from {:?}", path, dtype);
        }
    }
}
