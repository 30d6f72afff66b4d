"""LLaMA decoder (the DeepSeek-LLM backbone of every Janus model), HF `LlamaForCausalLM` semantics.

Letters: B batch, T query length, S key length (cache capacity), D model width, N query heads,
K key/value heads, G = N // K query heads per KV head, H head dim, F FFN width, V vocab, L layers.

Parameter paths mirror the checkpoint (`language_model.model.layers.N.self_attn.q_proj.weight`
-> `model/layers/self_attn/q_proj/kernel`), except that the L decoder layers are one `nn.scan`
with a leading `layers` axis, and projection kernels keep their head axes: q (D, N, H),
k/v (D, K, H), o (N, H, D).

Positions are always supplied by the caller (plain `0..T-1`, a cache offset, or
`cumsum(mask) - 1` for left-padded prompts, as HF `generate` does). Masking is by *slot*: query
slot i may see key slot j <= i whose token is valid and, when segment ids are given, in the same
segment. The KV cache is an explicit pytree with a fixed capacity; every row writes the same
slots, which left padding makes possible.
"""

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from janus_jax.models import layers

Dtype = Any
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows stay NaN-free


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes of the decoder. `from_hf` reads a transformers `LlamaConfig` dict."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  max_position_embeddings: int = 16384
  # Activation rematerialisation inside the layer scan: see REMAT_POLICIES.
  remat_policy: str = "none"

  @classmethod
  def from_hf(cls, d: dict, **overrides) -> "Config":
    """Builds a config from a HF `LlamaConfig` dict (the `language_config` of a Janus config)."""
    if d.get("rope_scaling"):
      raise ValueError(f"rope_scaling={d['rope_scaling']!r} is not supported (Janus uses none)")
    rope = d.get("rope_parameters") or {}  # transformers 5 moved rope_theta in here
    if rope.get("rope_type", "default") != "default":
      raise ValueError(f"rope_parameters={rope!r}: only default RoPE is supported")
    if d.get("hidden_act", "silu") != "silu":
      raise ValueError(f"hidden_act={d['hidden_act']!r}: only 'silu' is supported")
    heads = d["num_attention_heads"]
    kw = dict(
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // heads,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        rope_theta=d.get("rope_theta", rope.get("rope_theta", 10000.0)),
        max_position_embeddings=d.get("max_position_embeddings", 16384),
    )
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict:
    """The inverse of `from_hf` (a `language_config` dict)."""
    return dict(
        model_type="llama", vocab_size=self.vocab_size, hidden_size=self.hidden_size,
        intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
        num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
        head_dim=self.head_dim, rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta,
        max_position_embeddings=self.max_position_embeddings, hidden_act="silu",
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False)


VARIANTS = {
    # DeepSeek-LLM 1.3B: Janus-1.3B, Janus-Pro-1B, JanusFlow-1.3B.
    "deepseek_llm_1_3b": dict(vocab_size=102400, hidden_size=2048, intermediate_size=5632,
                              num_layers=24, num_heads=16, num_kv_heads=16, head_dim=128),
    # DeepSeek-LLM 7B: Janus-Pro-7B.
    "deepseek_llm_7b": dict(vocab_size=102400, hidden_size=4096, intermediate_size=11008,
                            num_layers=30, num_heads=32, num_kv_heads=32, head_dim=128),
    # The fixtures' tiny decoder.
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                 num_heads=4, num_kv_heads=4, head_dim=16, max_position_embeddings=512),
}


def get_config(variant: str, **overrides) -> Config:
  """Named decoder sizes; `overrides` replace fields (e.g. `remat_policy="full"`)."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown LLaMA variant {variant!r}; known: {sorted(VARIANTS)}")
  return Config(**{**VARIANTS[variant], **overrides})


REMAT_POLICIES = {
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@flax.struct.dataclass
class Cache:
  """Fixed-capacity KV cache for all layers.

  k, v: (L, B, K, S, H) (slots next to head dim, so a layer's first slots are one strided read).
  valid: (B, S) bool, slot holds a real (unmasked) token.
  index: int32 scalar, the next slot to write (shared by all rows).
  """

  k: jax.Array
  v: jax.Array
  valid: jax.Array
  index: jax.Array

  @property
  def capacity(self) -> int:
    return self.k.shape[3]


def init_cache(config: Config, batch: int, capacity: int, dtype: Dtype = jnp.float32) -> Cache:
  """An empty cache of `capacity` slots for `batch` rows."""
  shape = (config.num_layers, batch, config.num_kv_heads, capacity, config.head_dim)
  return Cache(
      k=jnp.zeros(shape, dtype),
      v=jnp.zeros(shape, dtype),
      valid=jnp.zeros((batch, capacity), bool),
      index=jnp.zeros((), jnp.int32),
  )


@flax.struct.dataclass
class Output:
  """hidden: (B, T, D) after the final norm. cache: updated cache or None.

  tap: (B, T, D) output of layer `tap_layer` (0-based, before the final norm) or None.
  """

  hidden: jax.Array
  cache: Cache | None = None
  tap: jax.Array | None = None


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Half-split (NeoX / HF rotate_half) rotary embedding.

  Args:
    x: (B, T, N, H).
    positions: (B, T) int.
  Returns:
    (B, T, N, H) in x.dtype; cos/sin are computed in float32 and cast to x.dtype first, as HF does.
  """
  h = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))  # (H/2,)
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, H/2)
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # (B, T, 1, H)
  cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * cos + rotated * sin


def attention_mask(q_slots, kv_slots, kv_valid, q_segments=None, kv_segments=None,
                   q_branches=None, kv_branches=None):
  """Boolean (B, T, S) mask: causal by slot, valid keys only, same segment.

  Args:
    q_slots: (T,) or (B, T) int slot of each query. kv_slots: (S,) int.
    kv_valid: (B, S) bool. q_segments / kv_segments: (B, T) / (B, S) int or None.
    q_branches / kv_branches: (B, T) / (B, S) int or None: a key of branch 0 (the trunk) is seen
      by every later query of its segment, a key of branch k > 0 only by queries of branch k
      (independent continuations of one shared prefix, `data.examples`).
  """
  q_slots = jnp.asarray(q_slots)
  if q_slots.ndim == 1:
    q_slots = q_slots[None]
  mask = (kv_slots[None, None, :] <= q_slots[:, :, None]) & kv_valid[:, None, :]
  if q_segments is not None:
    mask &= q_segments[:, :, None] == kv_segments[:, None, :]
  if q_branches is not None:
    kb = kv_branches[:, None, :]
    mask &= (kb == 0) | (kb == q_branches[:, :, None])
  return mask


# Decoding attends to the cache in this many size classes: a step reads only the smallest
# prefix of whole classes that covers the slots written so far (the rest are masked anyway).
# CPU decoding is memory-bound, and a fixed-capacity cache would otherwise be read in full
# from the first step on; with 8 classes a run reads ~9/16 of it on average instead.
_READ_BUCKETS = 8


def _bucket_sizes(capacity: int) -> list[int]:
  n = min(_READ_BUCKETS, capacity)
  return [-(-capacity * (j + 1) // n) for j in range(n)]


class Attention(nn.Module):
  """Multi-head causal self-attention with RoPE, GQA and an optional per-layer KV cache."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, mask, kv=None):
    """Attention of T new tokens over themselves and, when decoding, a cache of S slots.

    Args:
      x: (B, T, D). positions: (B, T).
      mask: without a cache, (B, T, T) bool. With one, a pair ((B, T, S) over the cached
        slots, (B, T, T) among the new tokens).
      kv: None, or (cache k, cache v, layer, written): the whole stacked cache, each
        (L, B, K, S, H), this layer's index and the number of slots written (int32 scalars).
        Only this layer's first slots that cover `written` are read (see `_READ_BUCKETS`);
        the cache is never rewritten here: the new keys/values are returned, and the decoder
        writes all layers' at once after the layer scan (a per-layer full-cache update would
        copy the whole cache every step).
    Returns:
      (out (B, T, D), (new k, new v) each (B, K, T, H) or None).
    """
    c = self.config
    d, n, k_, h = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    init = nn.initializers.lecun_normal()
    mk = lambda name, shape, axes: self.param(  # noqa: E731
        name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)
    wq = mk("q_proj", (d, n, h), ("embed", "heads", "head_dim"))
    wk = mk("k_proj", (d, k_, h), ("embed", "kv_heads", "head_dim"))
    wv = mk("v_proj", (d, k_, h), ("embed", "kv_heads", "head_dim"))
    wo = mk("o_proj", (n, h, d), ("heads", "head_dim", "embed"))
    x = x.astype(self.dtype)
    q = jnp.einsum("BTD,DNH->BTNH", x, wq.astype(self.dtype))
    k = jnp.einsum("BTD,DKH->BTKH", x, wk.astype(self.dtype))
    v = jnp.einsum("BTD,DKH->BTKH", x, wv.astype(self.dtype))
    q = rope(q, positions, c.rope_theta)
    k = rope(k, positions, c.rope_theta)
    q = nn.with_logical_constraint(q, ("act_batch", "act_len", "act_heads", None))
    q = q.reshape(q.shape[:2] + (k_, n // k_, h))  # (B, T, K, G, H)

    def masked(logits, m):
      return jnp.where(m[:, None, None], logits * (h ** -0.5), _MASK_VALUE)

    # New tokens (letters T for queries, U for keys); one softmax spans cached and new keys.
    new = jnp.einsum("BTKGH,BUKH->BKGTU", q, k, preferred_element_type=jnp.float32)
    if kv is None:
      probs = jax.nn.softmax(masked(new, mask), axis=-1).astype(self.dtype)
      out = jnp.einsum("BKGTU,BUKH->BTKGH", probs, v)
      new_kv = None
    else:
      ck_all, cv_all, layer, written = kv
      cached_mask, new_mask = mask
      new = masked(new, new_mask)

      def attend(s):  # over this layer's first s cached slots and the new tokens
        def branch():
          start = (layer, 0, 0, 0, 0)
          shape = (1,) + ck_all.shape[1:3] + (s, ck_all.shape[4])
          ck = jax.lax.dynamic_slice(ck_all, start, shape)[0].astype(self.dtype)
          cv = jax.lax.dynamic_slice(cv_all, start, shape)[0].astype(self.dtype)
          old = jnp.einsum("BTKGH,BKSH->BKGTS", q, ck, preferred_element_type=jnp.float32)
          logits = jnp.concatenate([masked(old, cached_mask[..., :s]), new], axis=-1)
          probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
          return (jnp.einsum("BKGTS,BKSH->BTKGH", probs[..., :s], cv)
                  + jnp.einsum("BKGTU,BUKH->BTKGH", probs[..., s:], v))
        return branch

      capacity = ck_all.shape[3]
      sizes = _bucket_sizes(capacity)
      bucket = jnp.clip((written * len(sizes) + capacity - 1) // capacity - 1, 0, len(sizes) - 1)
      out = jax.lax.switch(bucket, [attend(size) for size in sizes])
      new_kv = (k.transpose(0, 2, 1, 3).astype(ck_all.dtype),
                v.transpose(0, 2, 1, 3).astype(cv_all.dtype))
    out = out.reshape(out.shape[:2] + (n, h))
    return jnp.einsum("BTNH,NHD->BTD", out, wo.astype(self.dtype)), new_kv


class Mlp(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    gate = layers.dense(c.intermediate_size, ("embed", "mlp"), name="gate_proj", **kw)(x)
    up = layers.dense(c.intermediate_size, ("embed", "mlp"), name="up_proj", **kw)(x)
    h = nn.with_logical_constraint(nn.silu(gate) * up, ("act_batch", "act_len", "act_mlp"))
    return layers.dense(c.hidden_size, ("mlp", "embed"), name="down_proj", **kw)(h)


class Block(nn.Module):
  """One pre-norm decoder layer, written as a scan body: (carry, per-layer xs) -> (carry, ys)."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, carry, layer_idx, positions, mask, cache, tap_layer):
    """cache: None, or (k, v, written) of the whole stacked cache (see `Attention`)."""
    x, tap = carry
    kv = None if cache is None else (cache[0], cache[1], layer_idx, cache[2])
    c = self.config
    norm = functools.partial(layers.RMSNorm, eps=c.rms_norm_eps, axis_name="embed",
                             dtype=self.dtype, param_dtype=self.param_dtype)
    h, new_kv = Attention(c, self.dtype, self.param_dtype, name="self_attn")(
        norm(name="input_layernorm")(x), positions, mask, kv)
    x = x + h
    x = x + Mlp(c, self.dtype, self.param_dtype, name="mlp")(
        norm(name="post_attention_layernorm")(x))
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_emb"))
    if tap is not None:
      tap = jnp.where(layer_idx == tap_layer, x, tap)
    return (x, tap), new_kv


class Decoder(nn.Module):
  """`LlamaModel`: token embedding, L scanned layers, final RMSNorm."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c = self.config
    self.embed_tokens = nn.Embed(
        c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("vocab", "embed")))
    block = Block
    policy = REMAT_POLICIES[c.remat_policy]
    if c.remat_policy != "none":
      block = nn.remat(Block, policy=policy, prevent_cse=False, static_argnums=(6,))
    self.layers = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=c.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(c, self.dtype, self.param_dtype)
    self.norm = layers.RMSNorm(c.rms_norm_eps, axis_name="embed", dtype=self.dtype,
                               param_dtype=self.param_dtype)

  def embed(self, ids: jax.Array) -> jax.Array:
    """(B, T) int -> (B, T, D)."""
    return self.embed_tokens(ids)

  def __call__(self, embeds, positions, *, attn_mask=None, segment_ids=None, branch_ids=None,
               cache=None, tap_layer=None) -> Output:
    """Runs the decoder over input embeddings.

    Args:
      embeds: (B, T, D) input embeddings.
      positions: (B, T) int RoPE positions.
      attn_mask: (B, T) bool/int, 1 where the token is real (keys of 0 are never attended);
        defaults to all ones.
      segment_ids: (B, T) int for packed sequences (no cache); attention stays in a segment.
      branch_ids: (B, T) int or None, with segment_ids: 0 on a segment's shared prefix, k on its
        k-th branch, which sees the prefix and itself only (`attention_mask`).
      cache: a `Cache`; the T tokens are written at slots [cache.index, cache.index + T).
      tap_layer: static int; also return the output of that layer (0-based).
    Returns:
      `Output` with the final-normed hidden states, the updated cache and the tap.
    """
    b, t, _ = embeds.shape
    valid = jnp.ones((b, t), bool) if attn_mask is None else attn_mask.astype(bool)
    if cache is None:
      slots = jnp.arange(t)
      mask = attention_mask(slots, slots, valid, segment_ids, segment_ids, branch_ids, branch_ids)
      kv = None
    else:
      if segment_ids is not None or branch_ids is not None:
        raise ValueError("segment_ids / branch_ids are for packed training sequences, not cached "
                         "decoding")
      index = cache.index
      kv_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, valid, index, axis=1)
      # Every new token sees all valid slots written before `index`, and the new tokens
      # causally among themselves.
      written = cache.valid & (jnp.arange(cache.capacity) < index)[None]
      slots = jnp.arange(t)
      mask = (jnp.broadcast_to(written[:, None, :], (b, t, cache.capacity)),
              attention_mask(slots, slots, valid))
      kv = (cache.k, cache.v, index)
    x = nn.with_logical_constraint(embeds.astype(self.dtype), ("act_batch", "act_len", "act_emb"))
    tap = None if tap_layer is None else jnp.zeros_like(x)
    layer_ids = jnp.arange(self.config.num_layers)
    (x, tap), new_kv = self.layers((x, tap), layer_ids, positions, mask, kv,
                                   tap_layer if tap_layer is not None else -1)
    new_cache = None
    if cache is not None:
      new_cache = Cache(
          k=jax.lax.dynamic_update_slice_in_dim(cache.k, new_kv[0], index, axis=3),
          v=jax.lax.dynamic_update_slice_in_dim(cache.v, new_kv[1], index, axis=3),
          valid=kv_valid, index=index + t)
    return Output(hidden=self.norm(x), cache=new_cache, tap=tap)


class Model(nn.Module):
  """`LlamaForCausalLM`: `model` (the decoder) and an untied `lm_head`."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.model = Decoder(self.config, self.dtype, self.param_dtype)
    self.lm_head = layers.dense(self.config.vocab_size, ("embed", "vocab"), use_bias=False,
                                dtype=self.dtype, param_dtype=self.param_dtype)

  def embed(self, ids: jax.Array) -> jax.Array:
    """(B, T) int token ids -> (B, T, D) embeddings."""
    return self.model.embed(ids)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """(B, T, D) final-normed hidden -> (B, T, V) text logits in `dtype`."""
    return self.lm_head(hidden)

  def __call__(self, embeds, positions, **kw) -> Output:
    """Decoder forward; see `Decoder.__call__` for arguments."""
    return self.model(embeds, positions, **kw)

  def init_all(self, ids):
    """Touches every parameter (for `init`): (B, T) ids -> (B, T, V) logits."""
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    return self.logits(self(self.embed(ids), positions).hidden)
