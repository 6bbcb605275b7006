//! `.npy` files of the original datasets, read with `npyz`: video frames (`uint8
//! [n_frames, H, W, 3]`) and segment-id maps (any integer dtype, `[H, W]`).

use std::io::BufReader;
use std::path::Path;

use npyz::{DType, NpyFile, Order, TypeChar};
use storygpt_core::{Error, Result};

/// An `[n, H, W, 3]` stack of RGB frames.
#[derive(Debug, Clone)]
pub struct FrameStack {
    /// Number of frames.
    pub frames: usize,
    /// Frame height.
    pub height: usize,
    /// Frame width.
    pub width: usize,
    /// `n * H * W * 3` bytes, row-major.
    pub data: Vec<u8>,
}

impl FrameStack {
    /// Frame `k` as an RGB image.
    pub fn frame(&self, k: usize) -> Option<image::RgbImage> {
        if k >= self.frames {
            return None;
        }
        let n = self.height * self.width * 3;
        image::RgbImage::from_raw(
            self.width as u32,
            self.height as u32,
            self.data[k * n..(k + 1) * n].to_vec(),
        )
    }
}

fn open(path: &Path) -> Result<NpyFile<BufReader<std::fs::File>>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    NpyFile::new(BufReader::new(file))
        .map_err(|e| Error::data_file(path, format!("not a valid .npy file: {e}")))
}

fn type_str(npy: &NpyFile<BufReader<std::fs::File>>) -> Option<npyz::TypeStr> {
    match npy.dtype() {
        DType::Plain(ts) => Some(ts),
        _ => None,
    }
}

/// Reads `video_frames_sampled_4x/{id}.npy`: `uint8 [n, H, W, 3]`, C order.
pub fn read_frames(path: impl AsRef<Path>) -> Result<FrameStack> {
    let path = path.as_ref();
    let npy = open(path)?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let dtype = npy.dtype().descr();
    let ok_type =
        type_str(&npy).is_some_and(|ts| ts.type_char() == TypeChar::Uint && ts.size_field() == 1);
    if !ok_type {
        return Err(Error::data_file(
            path,
            format!("frames must be uint8, the file holds dtype {dtype}"),
        ));
    }
    if shape.len() != 4 || shape[3] != 3 || shape[0] == 0 {
        return Err(Error::data_file(
            path,
            format!("frames must have shape [n_frames >= 1, H, W, 3], the file has {shape:?}"),
        ));
    }
    if npy.order() != Order::C {
        return Err(Error::data_file(path, "frames must be in C order"));
    }
    let data = npy
        .into_vec::<u8>()
        .map_err(|e| Error::data_file(path, format!("reading the frame data failed: {e}")))?;
    Ok(FrameStack {
        frames: shape[0],
        height: shape[1],
        width: shape[2],
        data,
    })
}

/// A segment-id map: `0` is background, other values are segment ids.
#[derive(Debug, Clone)]
pub struct SegMap {
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// `H * W` ids, row-major.
    pub ids: Vec<u32>,
}

/// Reads `seg_mask_4x_comb/{id}-frame{k}.npy`: an integer (or bool) `[H, W]` map.
pub fn read_segmap(path: impl AsRef<Path>) -> Result<SegMap> {
    let path = path.as_ref();
    let npy = open(path)?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let dtype = npy.dtype().descr();
    if shape.len() != 2 {
        return Err(Error::data_file(
            path,
            format!("a segment map must have shape [H, W], the file has {shape:?}"),
        ));
    }
    let fortran = npy.order() == Order::Fortran;
    let ts = type_str(&npy).ok_or_else(|| {
        Error::data_file(path, format!("segment map has unsupported dtype {dtype}"))
    })?;
    let bad = |e: std::io::Error| Error::data_file(path, format!("reading the map failed: {e}"));
    let ids: Vec<i64> = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Bool, 1) => npy
            .into_vec::<bool>()
            .map_err(bad)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Uint, 1) => to_i64(npy.into_vec::<u8>().map_err(bad)?),
        (TypeChar::Uint, 2) => to_i64(npy.into_vec::<u16>().map_err(bad)?),
        (TypeChar::Uint, 4) => to_i64(npy.into_vec::<u32>().map_err(bad)?),
        (TypeChar::Int, 1) => to_i64(npy.into_vec::<i8>().map_err(bad)?),
        (TypeChar::Int, 2) => to_i64(npy.into_vec::<i16>().map_err(bad)?),
        (TypeChar::Int, 4) => to_i64(npy.into_vec::<i32>().map_err(bad)?),
        (TypeChar::Int, 8) => npy.into_vec::<i64>().map_err(bad)?,
        (TypeChar::Uint, 8) => npy
            .into_vec::<u64>()
            .map_err(bad)?
            .into_iter()
            .map(|v| i64::try_from(v).unwrap_or(-1))
            .collect(),
        _ => {
            return Err(Error::data_file(
                path,
                format!("segment map must have an integer dtype, the file holds {dtype}"),
            ));
        }
    };
    let (h, w) = (shape[0], shape[1]);
    let mut out = vec![0u32; h * w];
    for (i, v) in ids.into_iter().enumerate() {
        let id = u32::try_from(v)
            .map_err(|_| Error::data_file(path, format!("segment map holds an invalid id {v}")))?;
        // Fortran order: element i is at (i % h, i / h).
        let dst = if fortran { (i % h) * w + i / h } else { i };
        out[dst] = id;
    }
    Ok(SegMap {
        height: h,
        width: w,
        ids: out,
    })
}

fn to_i64<T: Into<i64>>(v: Vec<T>) -> Vec<i64> {
    v.into_iter().map(Into::into).collect()
}
