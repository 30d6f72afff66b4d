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
segment. The KV cache is an explicit pytree with a fixed capacity (one buffer pair per layer);
every row writes the same slots, which left padding makes possible. Training runs the layers as
the `nn.scan`; cached decoding runs them one by one, on parameters split per layer
(`split_layers`), and grows its cache in stages (`segment_capacities`, `grow_cache`). A split
layer may hold its q/k/v kernels stacked as one `self_attn/qkv_proj` (D, 3, N, H) and its
gate/up kernels as one `mlp/gate_up_proj` (D, 2, F), one product each
(`janus_jax.sampling.decode_layout` lays parameters out so for decoding).
"""

from collections.abc import Mapping
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
  """Fixed-capacity KV cache, one buffer pair per layer.

  k, v: L-tuples of (B, K, S, H) arrays. Separate buffers, not one stacked (L, ...) array:
    a decode step then updates each layer's buffer in place and hands it to the attention dots
    as it is, where slicing a layer out of a stacked cache inside the step copies it first.
  valid: (B, S) bool, slot holds a real (unmasked) token.
  index: int32 scalar, the next slot to write (shared by all rows).
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  valid: jax.Array
  index: jax.Array

  @property
  def capacity(self) -> int:
    return self.valid.shape[1]


def init_cache(config: Config, batch: int, capacity: int, dtype: Dtype = jnp.float32) -> Cache:
  """An empty cache of `capacity` slots for `batch` rows."""
  shape = (batch, config.num_kv_heads, capacity, config.head_dim)
  zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))  # noqa: E731
  return Cache(k=zeros(), v=zeros(), valid=jnp.zeros((batch, capacity), bool),
               index=jnp.zeros((), jnp.int32))


def grow_cache(cache: Cache, capacity: int) -> Cache:
  """The same cache with `capacity` slots; the new slots are empty (invalid)."""
  extra = capacity - cache.capacity
  if extra < 0:
    raise ValueError(f"cannot shrink a cache of {cache.capacity} slots to {capacity}")
  if extra == 0:
    return cache
  pad = lambda a: jnp.pad(a, [(0, 0), (0, 0), (0, extra), (0, 0)])  # noqa: E731
  return Cache(k=tuple(map(pad, cache.k)), v=tuple(map(pad, cache.v)),
               valid=jnp.pad(cache.valid, [(0, 0), (0, extra)]), index=cache.index)


def segment_capacities(start: int, capacity: int, segments: int) -> list[int]:
  """Cache sizes for decoding in `segments` stages from `start` written slots to `capacity`.

  Every decode step attends over its whole cache buffer, so a run that fills a cache of its
  final size from the first step on reads slots that hold nothing yet. Decoding instead grows
  the cache (`grow_cache`) through these sizes, one compiled loop per size, and step s uses the
  smallest one above its slot: about (1 + 1/segments) / 2 of the final cache is read on average
  instead of all of it. Returns increasing sizes > start, the last equal to `capacity`.
  """
  if not 0 <= start < capacity:
    raise ValueError(f"need 0 <= start < capacity, got start={start}, capacity={capacity}")
  if segments < 1:
    raise ValueError(f"segments must be >= 1, got {segments}")
  span = capacity - start
  sizes = {start + -(-span * (j + 1) // segments) for j in range(segments)}
  return sorted(sizes)


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
      mask: (B, T, T) bool without a cache; with one, (B, T, S) over the cache slots once the
        new tokens are written into them.
      kv: None, or (k, v, index): this layer's cache buffers, each (B, K, S, H), and the slot
        the first new token goes to (int32 scalar). The new keys/values are written there and
        the new tokens attend over the whole buffer (the mask hides what they must not see).
    Returns:
      (out (B, T, D), the updated (k, v) buffers or None).
    """
    c = self.config
    d, n, k_, h = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    init = nn.initializers.lecun_normal()
    mk = lambda name, shape, axes: layers.kernel(  # noqa: E731
        self, name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)
    x = x.astype(self.dtype)
    if self.has_variable("params", "qkv_proj"):  # stacked for decoding: one product
      wqkv = mk("qkv_proj", (d, 3, n, h), ("embed", None, "heads", "head_dim"))
      q, k, v = layers.einsum("BTD,DCNH->CBTNH", x, wqkv.astype(self.dtype))
    else:
      wq = mk("q_proj", (d, n, h), ("embed", "heads", "head_dim"))
      wk = mk("k_proj", (d, k_, h), ("embed", "kv_heads", "head_dim"))
      wv = mk("v_proj", (d, k_, h), ("embed", "kv_heads", "head_dim"))
      q = layers.einsum("BTD,DNH->BTNH", x, wq.astype(self.dtype))
      k = layers.einsum("BTD,DKH->BTKH", x, wk.astype(self.dtype))
      v = layers.einsum("BTD,DKH->BTKH", x, wv.astype(self.dtype))
    wo = mk("o_proj", (n, h, d), ("heads", "head_dim", "embed"))  # after q/k/v: init order
    q = rope(q, positions, c.rope_theta)
    k = rope(k, positions, c.rope_theta)
    q = nn.with_logical_constraint(q, ("act_batch", "act_len", "act_heads", None))
    q = q.reshape(q.shape[:2] + (k_, n // k_, h))  # (B, T, K, G, H)
    if kv is None:  # keys (B, S, K, H) are the new tokens' own
      keys, values, new_kv, spec = k, v, None, "BSKH"
    else:  # write the new keys/values into this layer's (B, K, S, H) cache, read all of it
      ck, cv, index = kv
      write = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
          buf, new.transpose(0, 2, 1, 3).astype(buf.dtype), index, axis=2)
      keys, values = write(ck, k), write(cv, v)
      new_kv, spec = (keys, values), "BKSH"
    logits = jnp.einsum(f"BTKGH,{spec}->BKGTS", q, keys.astype(self.dtype),
                        preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, None, None], logits * (h ** -0.5), _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum(f"BKGTS,{spec}->BTKGH", probs, values.astype(self.dtype))
    out = out.reshape(out.shape[:2] + (n, h))
    return layers.einsum("BTNH,NHD->BTD", out, wo.astype(self.dtype)), new_kv


class Mlp(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    if self.has_variable("params", "gate_up_proj"):  # stacked for decoding: one product
      w = layers.kernel(self, "gate_up_proj", nn.initializers.zeros_init(),  # never made here
                        (x.shape[-1], 2, c.intermediate_size), self.param_dtype)
      gate, up = layers.einsum("BTD,DCF->CBTF", x.astype(self.dtype), w.astype(self.dtype))
    else:
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
    """cache: None, or this layer's (k, v, index) (see `Attention`)."""
    x, tap = carry
    c = self.config
    norm = functools.partial(layers.RMSNorm, eps=c.rms_norm_eps, axis_name="embed",
                             dtype=self.dtype, param_dtype=self.param_dtype)
    h, new_kv = Attention(c, self.dtype, self.param_dtype, name="self_attn")(
        norm(name="input_layernorm")(x), positions, mask, cache)
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
    x = nn.with_logical_constraint(embeds.astype(self.dtype), ("act_batch", "act_len", "act_emb"))
    tap = None if tap_layer is None else jnp.zeros_like(x)
    tap_layer = tap_layer if tap_layer is not None else -1
    stacked = None if self.is_initializing() else nn.meta.unbox(self.variables["params"]["layers"])
    split = isinstance(stacked, (tuple, list))  # `split_layers` was applied
    if cache is None:
      slots = jnp.arange(t)
      mask = attention_mask(slots, slots, valid, segment_ids, segment_ids, branch_ids, branch_ids)
      if not split:
        layer_ids = jnp.arange(self.config.num_layers)
        (x, tap), _ = self.layers((x, tap), layer_ids, positions, mask, None, tap_layer)
        return Output(hidden=self.norm(x), tap=tap)
    else:
      if segment_ids is not None or branch_ids is not None:
        raise ValueError("segment_ids / branch_ids are for packed training sequences, not "
                         "cached decoding")
      if stacked is None:
        raise ValueError("initialise the decoder without a cache")
      # The new tokens take slots [index, index + T) and see every valid slot before theirs.
      kv_valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, valid, cache.index, axis=1)
      mask = attention_mask(cache.index + jnp.arange(t), jnp.arange(cache.capacity), kv_valid)
    # Layer by layer, each with its own cache buffers (see `Cache`). Inside a decode loop the
    # parameters should arrive split (`split_layers`, outside the loop): slicing the scanned
    # ones here copies every layer's weights on every step, which XLA does not hoist.
    block = Block(self.config, self.dtype, self.param_dtype, parent=None)
    ks, vs = [], []
    for i in range(self.config.num_layers):
      layer_params = stacked[i] if split else jax.tree.map(lambda a, i=i: a[i], stacked)
      kv = None if cache is None else (cache.k[i], cache.v[i], cache.index)
      (x, tap), new_kv = block.apply({"params": layer_params}, (x, tap), i, positions, mask, kv,
                                     tap_layer)
      if cache is not None:
        ks.append(new_kv[0])
        vs.append(new_kv[1])
    new_cache = None
    if cache is not None:
      new_cache = Cache(k=tuple(ks), v=tuple(vs), valid=kv_valid, index=cache.index + t)
    return Output(hidden=self.norm(x), cache=new_cache, tap=tap)


def split_layers(params, take=None):
  """`params` with every decoder's scanned layers split into an L-tuple of per-layer trees.

  Decoding runs the layers one by one (see `Decoder.__call__`); give it split parameters from
  outside the decode loop. Works on any tree that holds decoder parameters (a whole Janus
  model's, say); leaves already split trees as they are. `take` maps one stacked (L, ...) array
  to its L slices (default: indexing). Outside `jit` the slices are copies: a `take` that frees
  each stacked array once sliced keeps the weights from being held twice.
  """
  if not isinstance(params, Mapping):
    return params
  out = {k: split_layers(v, take) for k, v in params.items()}
  layers_ = params.get("layers")
  if "embed_tokens" in params and layers_ is not None and not isinstance(layers_, (tuple, list)):
    leaves, treedef = jax.tree.flatten(nn.meta.unbox(layers_))
    take = take or (lambda a: [a[i] for i in range(a.shape[0])])
    columns = [take(a) for a in leaves]
    out["layers"] = tuple(treedef.unflatten([c[i] for c in columns])
                          for i in range(len(columns[0])))
  return out


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
