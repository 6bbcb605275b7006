use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::Result;

/// Output of [`LlmBackbone::forward_embeds`].
#[derive(Debug, Clone)]
pub struct LlmOutput<B: Backend> {
    /// Last-layer hidden states (after the final norm / `project_out`): `[batch, seq, embed_dim]`.
    /// StoryGPT-V reads the `[IMG]` positions of this tensor.
    pub last_hidden_state: Tensor<B, 3>,
    /// With `output_hidden_states`, the input embeddings followed by each layer's output
    /// (`num_layers + 1` tensors, as transformers' `hidden_states`).
    pub hidden_states: Option<Vec<Tensor<B, 3>>>,
    /// Next-token logits: `[batch, seq, vocab_size]`.
    pub logits: Tensor<B, 3>,
}

/// Cached keys and values of one attention layer: `[batch, kv_heads, past_len, head_dim]`.
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    /// Keys (after rotary embedding, for models that use it).
    pub key: Tensor<B, 4>,
    /// Values.
    pub value: Tensor<B, 4>,
}

/// The key/value cache of a causal LM, owned by the caller.
///
/// StoryGPT-V's inference keeps one cache for the whole story: each new frame appends its
/// caption and 4 visual tokens instead of recomputing the history.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerKv<B>>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model with `num_layers` attention layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Number of cached positions (0 when empty).
    pub fn seq_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |kv| kv.key.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.seq_len() == 0
    }

    /// Number of layers this cache serves.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Appends new keys/values (`[batch, kv_heads, new_len, head_dim]`) to layer `layer` and
    /// returns the full keys/values including the past.
    ///
    /// # Panics
    /// If `layer >= self.num_layers()`: the model, not the user, picks the index.
    pub fn append(&mut self, layer: usize, key: Tensor<B, 4>, value: Tensor<B, 4>) -> LayerKv<B> {
        let full = match self.layers[layer].take() {
            None => LayerKv { key, value },
            Some(past) => LayerKv {
                key: Tensor::cat(vec![past.key, key], 2),
                value: Tensor::cat(vec![past.value, value], 2),
            },
        };
        self.layers[layer] = Some(full.clone());
        full
    }

    /// Keeps only the first `len` cached positions (to reuse a shared prefix across calls).
    pub fn truncate(&mut self, len: usize) {
        for kv in self.layers.iter_mut().flatten() {
            let [b, h, l, d] = kv.key.dims();
            if len < l {
                kv.key = kv.key.clone().slice([0..b, 0..h, 0..len, 0..d]);
                kv.value = kv.value.clone().slice([0..b, 0..h, 0..len, 0..d]);
            }
        }
        if len == 0 {
            self.layers.iter_mut().for_each(|l| *l = None);
        }
    }
}

/// A causal language model usable as StoryGPT-V's frozen backbone (OPT, Llama, or your own).
///
/// The model reads *embeddings*, not only ids, so that visual tokens (CLIP features mapped to
/// `embed_dim`) and learned `[IMG]` embeddings can be spliced between text tokens.
/// See `docs/guides/add-an-llm.md` for implementing it for a new model.
pub trait LlmBackbone<B: Backend> {
    /// Width of input embeddings and of `last_hidden_state` (OPT: `word_embed_proj_dim`;
    /// Llama: `hidden_size`).
    fn embed_dim(&self) -> usize;

    /// Number of rows of the input embedding table (including added tokens).
    fn vocab_size(&self) -> usize;

    /// Number of decoder layers (the length of a [`KvCache`]).
    fn num_layers(&self) -> usize;

    /// Longest total sequence (cache + new tokens) the model supports.
    fn max_position_embeddings(&self) -> usize;

    /// Looks up token embeddings.
    ///
    /// # Shapes
    /// `input_ids`: `[batch, seq]` with ids `< vocab_size()`; returns `[batch, seq, embed_dim]`.
    fn embed_tokens(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3>;

    /// Runs the decoder on embeddings, appending to `cache` when given.
    ///
    /// # Shapes
    /// - `inputs_embeds`: `[batch, seq, embed_dim]`;
    /// - `attention_mask`: `[batch, past + seq]`, 1 = attend, 0 = padding (left or right), as in
    ///   transformers; `None` attends to everything. Positions are counted over the real tokens
    ///   (`cumsum(mask) - 1`), as transformers' `generate` does;
    /// - the cache holds `past` positions and grows by `seq`.
    ///
    /// # Errors
    /// A wrong embedding width or mask shape, a mask value other than 0/1, a cache made for
    /// another model, or `past + seq > max_position_embeddings()`; nothing is appended then.
    fn forward_embeds(
        &self,
        inputs_embeds: Tensor<B, 3>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
        output_hidden_states: bool,
    ) -> Result<LlmOutput<B>>;

    /// Runs the decoder on token ids: transformers' `forward(input_ids, attention_mask)`.
    ///
    /// # Errors
    /// An id outside `0..vocab_size()`, and whatever [`LlmBackbone::forward_embeds`] rejects.
    fn forward_ids(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
        output_hidden_states: bool,
    ) -> Result<LlmOutput<B>> {
        check_token_ids(&input_ids, self.vocab_size())?;
        self.forward_embeds(
            self.embed_tokens(input_ids),
            attention_mask,
            cache,
            output_hidden_states,
        )
    }

    /// A fresh, empty cache for this model.
    fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.num_layers())
    }

    /// Grows (or shrinks) the vocabulary to `new_vocab` rows, as transformers'
    /// `resize_token_embeddings`: the input embeddings and an untied output head both change;
    /// new rows start at the mean of the existing rows. Used for the added `[IMG0..7]` and
    /// `<|image|>` tokens.
    fn resize_token_embeddings(&mut self, new_vocab: usize) -> Result<()>;

    /// The input embedding matrix `[vocab_size, embed_dim]` as a parameter: its id finds its
    /// gradient, for [`mask_frozen_rows`].
    fn input_embeddings(&self) -> &Param<Tensor<B, 2>>;

    /// Mutable access to the input embedding matrix, for [`rescale_new_rows`] after a step.
    fn input_embeddings_mut(&mut self) -> &mut Param<Tensor<B, 2>>;
}

/// Checks token ids: `[batch >= 1, seq >= 1]`, every id in `0..vocab`.
pub fn check_token_ids<B: Backend>(input_ids: &Tensor<B, 2, Int>, vocab: usize) -> Result<()> {
    let [batch, seq] = input_ids.dims();
    if batch == 0 || seq == 0 {
        return Err(crate::Error::InputShape {
            what: "input_ids".into(),
            expected: "[batch >= 1, seq >= 1]".into(),
            found: vec![batch, seq],
        });
    }
    let ids = input_ids
        .clone()
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|e| crate::Error::InvalidInput(format!("input_ids: {e:?}")))?;
    if let Some(bad) = ids.iter().find(|&&id| id < 0 || id as usize >= vocab) {
        return Err(crate::Error::InvalidInput(format!(
            "input_ids must be in 0..{vocab} (the vocabulary size), found {bad}"
        )));
    }
    Ok(())
}

/// Zeroes the gradient of the rows before `first_trainable` of an embedding matrix
/// `[vocab, d]`, so an optimizer step changes only the added rows (StoryGPT-V trains only the
/// `[IMG]` rows of the frozen LLM's table, `train_llm_v2.py:607-617`).
pub fn mask_frozen_rows<B: Backend>(grad: Tensor<B, 2>, first_trainable: usize) -> Tensor<B, 2> {
    let [vocab, d] = grad.dims();
    let first = first_trainable.min(vocab);
    if first == 0 {
        return grad;
    }
    let zeros = Tensor::zeros([first, d], &grad.device());
    grad.slice_assign([0..first, 0..d], zeros)
}

/// Rescales each row from `first_new` on to the mean L2 norm of the rows before it (the frozen
/// vocabulary), as StoryGPT-V does after every step (`train_llm_v2.py:625-630`). Returns the
/// matrix unchanged when there are no frozen or no new rows.
pub fn rescale_new_rows<B: Backend>(weight: Tensor<B, 2>, first_new: usize) -> Tensor<B, 2> {
    let [vocab, d] = weight.dims();
    if first_new == 0 || first_new >= vocab {
        return weight;
    }
    let frozen = weight.clone().slice([0..first_new, 0..d]);
    let target = frozen.powi_scalar(2).sum_dim(1).sqrt().mean(); // [1]
    let new = weight.clone().slice([first_new..vocab, 0..d]);
    let norms = new.clone().powi_scalar(2).sum_dim(1).sqrt(); // [n, 1]
    let scaled = new * target.unsqueeze::<2>() / norms;
    weight.slice_assign([first_new..vocab, 0..d], scaled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{DefaultBackend as TB, default_device};

    #[test]
    fn frozen_rows_get_no_gradient_and_new_rows_get_the_mean_norm() {
        let dev = default_device();
        let grad = Tensor::<TB, 2>::ones([4, 2], &dev);
        let g = mask_frozen_rows(grad, 3)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        assert_eq!(g, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]);

        // Frozen rows with norms 1, 3 and 5 (mean 3); the new row [0, 10] becomes [0, 3].
        let w = Tensor::<TB, 2>::from_data([[1.0, 0.0], [0.0, 3.0], [3.0, 4.0], [0.0, 10.0]], &dev);
        let r = rescale_new_rows(w, 3)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        assert_eq!(&r[..6], &[1.0, 0.0, 0.0, 3.0, 3.0, 4.0]);
        assert!(
            (r[6] - 0.0).abs() < 1e-6 && (r[7] - 3.0).abs() < 1e-5,
            "{r:?}"
        );
    }
}
