//! What OPT and Llama share as decoder-only causal LMs: input checks, the padding mask read
//! once per call, position ids derived from that mask, the additive attention bias, grouped-query
//! head repetition, and the tied or untied output head.
//!
//! transformers conventions followed here:
//! - `attention_mask` covers the cached past *and* the new tokens, `[batch, past + seq]`, with 1
//!   for real tokens and 0 for padding, on either side;
//! - the position of a token is the number of real tokens before it (`cumsum(mask) - 1`), which
//!   is what `generate` passes for left-padded batches; padded slots get a dummy position;
//! - a query attends to the real keys at or before its own position.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use storygpt_core::{Error, KvCache, Result};

/// The host copy of a call's padding mask plus the shapes around it.
#[derive(Debug, Clone)]
pub struct CallMask {
    /// `[batch][past + seq]`, `true` = real token.
    pub rows: Vec<Vec<bool>>,
    /// Cached positions before this call.
    pub past: usize,
    /// New positions in this call.
    pub seq: usize,
}

impl CallMask {
    /// Reads `attention_mask` (`None` = all real) and checks its shape against the call.
    pub fn new<B: Backend>(
        attention_mask: Option<Tensor<B, 2, Int>>,
        batch: usize,
        past: usize,
        seq: usize,
    ) -> Result<Self> {
        let total = past + seq;
        let rows = match attention_mask {
            None => vec![vec![true; total]; batch],
            Some(mask) => {
                let dims = mask.dims();
                if dims != [batch, total] {
                    return Err(Error::InputShape {
                        what: "attention_mask (cached past + new tokens)".into(),
                        expected: format!("[{batch}, {total}]"),
                        found: dims.to_vec(),
                    });
                }
                let values = mask
                    .into_data()
                    .convert::<i64>()
                    .into_vec::<i64>()
                    .map_err(|e| Error::InvalidInput(format!("attention_mask: {e:?}")))?;
                if let Some(bad) = values.iter().find(|&&v| v != 0 && v != 1) {
                    return Err(Error::InvalidInput(format!(
                        "attention_mask must hold 0 (padding) or 1 (token), found {bad}"
                    )));
                }
                values
                    .chunks(total)
                    .map(|r| r.iter().map(|&v| v == 1).collect())
                    .collect()
            }
        };
        Ok(Self { rows, past, seq })
    }

    /// Whether every position of every row is a real token (then plain causal attention does).
    pub fn is_dense(&self) -> bool {
        self.rows.iter().all(|r| r.iter().all(|&m| m))
    }

    /// Positions of the new tokens, `cumsum(mask) - 1` over the whole row, with `pad_position`
    /// for padded slots: `[batch][seq]`.
    pub fn positions(&self, pad_position: i64) -> Vec<Vec<i64>> {
        self.rows
            .iter()
            .map(|row| {
                let mut seen = 0i64;
                let all: Vec<i64> = row
                    .iter()
                    .map(|&m| {
                        seen += i64::from(m);
                        if m { seen - 1 } else { pad_position }
                    })
                    .collect();
                all[self.past..].to_vec()
            })
            .collect()
    }

    /// The additive bias `[batch, heads, seq, past + seq]`: 0 where a query may attend, the
    /// dtype's most negative finite value elsewhere. Finite, so that a fully padded query row
    /// (left padding) gives a uniform, not NaN, distribution; its output is never read.
    pub fn bias<B: Backend>(&self, heads: usize, dtype: DType, device: &Device<B>) -> Tensor<B, 4> {
        let (batch, total) = (self.rows.len(), self.past + self.seq);
        let blocked = match dtype {
            DType::F16 => -65504.0f32,
            _ => f32::MIN,
        };
        let mut values = Vec::with_capacity(batch * self.seq * total);
        for row in &self.rows {
            for i in 0..self.seq {
                let query = self.past + i;
                values.extend(
                    row.iter()
                        .enumerate()
                        .map(|(j, &real)| if real && j <= query { 0.0 } else { blocked }),
                );
            }
        }
        let bias = Tensor::<B, 4>::from_data(
            TensorData::new(values, [batch, 1, self.seq, total]),
            (device, dtype),
        );
        bias.expand([batch, heads, self.seq, total])
    }
}

/// Checks the embeddings of a forward call: rank-3 width, non-empty, and the total length
/// against `max_positions`.
pub fn check_embeds<B: Backend>(
    model: &str,
    embeds: &Tensor<B, 3>,
    embed_dim: usize,
    past: usize,
    max_positions: usize,
) -> Result<()> {
    let [batch, seq, dim] = embeds.dims();
    if batch == 0 || seq == 0 || dim != embed_dim {
        return Err(Error::InputShape {
            what: format!("{model} inputs_embeds"),
            expected: format!("[batch >= 1, seq >= 1, {embed_dim}]"),
            found: vec![batch, seq, dim],
        });
    }
    if past + seq > max_positions {
        return Err(Error::InputShape {
            what: format!(
                "{model} sequence (cached {past} + new {seq} tokens) exceeds max_position_embeddings"
            ),
            expected: format!("total length <= {max_positions}"),
            found: vec![batch, past + seq],
        });
    }
    Ok(())
}

/// Checks a cache handed to a forward call: one slot per decoder layer, same batch.
pub fn check_cache<B: Backend>(model: &str, cache: &KvCache<B>, num_layers: usize) -> Result<()> {
    if cache.num_layers() != num_layers {
        return Err(Error::InvalidInput(format!(
            "{model}: the KV cache has {} layers, the model {num_layers}; make it with new_cache()",
            cache.num_layers()
        )));
    }
    Ok(())
}

/// Everything a forward call checks before touching the cache: the cache's layer count, the
/// embeddings' width and the total length, and the mask (read into a [`CallMask`]). An error
/// here leaves the cache unchanged.
pub fn prepare_call<B: Backend>(
    model: &str,
    inputs_embeds: &Tensor<B, 3>,
    attention_mask: Option<Tensor<B, 2, Int>>,
    cache: Option<&KvCache<B>>,
    dims: (usize, usize, usize),
) -> Result<CallMask> {
    let (embed_dim, num_layers, max_positions) = dims;
    let past = cache.map_or(0, |c| c.seq_len());
    if let Some(c) = cache {
        check_cache(model, c, num_layers)?;
    }
    check_embeds(model, inputs_embeds, embed_dim, past, max_positions)?;
    let [b, l, _] = inputs_embeds.dims();
    CallMask::new(attention_mask, b, past, l)
}

/// Scaled dot-product attention over `[b, heads, seq, head_dim]` queries and
/// `[b, kv_heads, past + seq, head_dim]` keys/values, repeating each key/value head for its
/// group of query heads (grouped-query attention; `kv_heads == heads` is plain multi-head).
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &CallMask,
    scale: f64,
) -> Tensor<B, 4> {
    let [b, heads, seq, _] = q.dims();
    let k = repeat_kv(k, heads);
    let v = repeat_kv(v, heads);
    let options = |is_causal| AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal,
    };
    if mask.is_dense() {
        // One new query sees the whole past: no mask at all.
        if seq == 1 {
            return attention(q, k, v, None, None, options(false));
        }
        // `is_causal` only without a past: backends disagree on where the diagonal sits when
        // there are more keys than queries (burn's fallback aligns it bottom-right, libtorch's
        // SDPA top-left), so a chunk after a cached past takes the explicit bias below.
        if mask.past == 0 {
            return attention(q, k, v, None, None, options(true));
        }
    }
    let bias = mask.bias::<B>(heads, q.dtype(), &q.device());
    debug_assert_eq!(bias.dims()[0], b);
    attention(q, k, v, None, Some(bias), options(false))
}

/// `[b, kv_heads, l, d]` → `[b, heads, l, d]`, each kv head serving `heads / kv_heads`
/// consecutive query heads (transformers' `repeat_kv`).
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, heads: usize) -> Tensor<B, 4> {
    let [b, kv_heads, l, d] = x.dims();
    if kv_heads == heads {
        return x;
    }
    let n_rep = heads / kv_heads;
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv_heads, n_rep, l, d])
        .reshape([b, heads, l, d])
}

/// Logits from the last hidden states: through `lm_head` when the checkpoint has its own, else
/// through the (tied) input embedding matrix `[vocab, d]`.
pub fn lm_logits<B: Backend>(
    hidden: Tensor<B, 3>,
    lm_head: Option<&Linear<B>>,
    tied_weight: &Param<Tensor<B, 2>>,
) -> Tensor<B, 3> {
    match lm_head {
        Some(head) => crate::linear3(head, hidden),
        None => {
            let [b, n, d] = hidden.dims();
            let w = tied_weight.val(); // [vocab, d]
            let vocab = w.dims()[0];
            hidden
                .reshape([b * n, d])
                .matmul(w.transpose())
                .reshape([b, n, vocab])
        }
    }
}

/// Grows an embedding matrix `[vocab, d]` to `[new_vocab, d]` (or shrinks it). New rows are the
/// mean of the old rows, which keeps them inside the distribution the model has seen
/// (transformers' `mean_resizing`, without its small random perturbation, so resizing is
/// deterministic).
pub fn resize_rows<B: Backend>(weight: Tensor<B, 2>, new_vocab: usize) -> Tensor<B, 2> {
    let [vocab, d] = weight.dims();
    if new_vocab <= vocab {
        return weight.slice([0..new_vocab, 0..d]);
    }
    let mean = weight.clone().mean_dim(0); // [1, d]
    let extra = mean.expand([new_vocab - vocab, d]);
    Tensor::cat(vec![weight, extra], 0)
}

/// Replaces a parameter's value, keeping its id (so optimizer state and names still match).
/// The value becomes a leaf (detached from whatever computed it), as a parameter must be under
/// autodiff.
pub fn replace_param<B: Backend, const D: usize>(
    param: &mut Param<Tensor<B, D>>,
    value: Tensor<B, D>,
) {
    let require_grad = param.is_require_grad();
    let id = param.id;
    *param = Param::initialized(id, value.detach().set_require_grad(require_grad));
}

#[cfg(test)]
mod tests {
    use super::*;
    use storygpt_core::backend::{DefaultBackend as TB, default_device};

    #[test]
    fn positions_count_real_tokens_and_skip_the_past() {
        let mask = CallMask {
            rows: vec![vec![true, true, true, true], vec![false, false, true, true]],
            past: 1,
            seq: 3,
        };
        assert_eq!(mask.positions(1), vec![vec![1, 2, 3], vec![1, 0, 1]]);
        assert!(!mask.is_dense());
    }

    #[test]
    fn bias_blocks_future_and_padding() {
        let mask = CallMask {
            rows: vec![vec![false, true, true]],
            past: 0,
            seq: 3,
        };
        let bias = mask.bias::<TB>(1, DType::F32, &default_device());
        let v = bias.into_data().into_vec::<f32>().unwrap();
        let open: Vec<bool> = v.iter().map(|&x| x == 0.0).collect();
        #[rustfmt::skip]
        assert_eq!(open, vec![
            false, false, false,
            false, true, false,
            false, true, true,
        ]);
    }

    #[test]
    fn mask_shape_and_values_are_checked() {
        let dev = default_device();
        let m = Tensor::<TB, 2, Int>::from_data([[1, 1, 1]], &dev);
        assert!(matches!(
            CallMask::new(Some(m), 1, 1, 1),
            Err(Error::InputShape { .. })
        ));
        let m = Tensor::<TB, 2, Int>::from_data([[1, 2]], &dev);
        assert!(matches!(
            CallMask::new(Some(m), 1, 0, 2),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn repeat_kv_serves_consecutive_heads() {
        let dev = default_device();
        let x = Tensor::<TB, 4>::from_data([[[[1.0]], [[2.0]]]], &dev); // [1, 2, 1, 1]
        let y = repeat_kv(x, 4).into_data().into_vec::<f32>().unwrap();
        assert_eq!(y, vec![1.0, 1.0, 2.0, 2.0]);
    }
}
