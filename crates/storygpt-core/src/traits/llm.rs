use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

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
    ///   transformers; `None` attends to everything;
    /// - the cache holds `past` positions and grows by `seq`.
    fn forward_embeds(
        &self,
        inputs_embeds: Tensor<B, 3>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
        output_hidden_states: bool,
    ) -> LlmOutput<B>;

    /// A fresh, empty cache for this model.
    fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.num_layers())
    }
}
