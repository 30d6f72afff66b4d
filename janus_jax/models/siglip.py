"""SigLIP ViT understanding encoder (timm-style, as built by the Janus reference).

Letters: B batch, P patches (tokens), W width, N heads, H head dim.

All blocks plus the final LayerNorm run; the attention-pool head is never executed (and is not
part of our parameters). MLP GELU is exact (erf): the Janus code uses `nn.GELU()`. Parameter
names mirror `vision_model.vision_tower.*`: `patch_embed/proj`, `pos_embed`, `blocks_i/{norm1,
attn/{qkv,proj}, norm2, mlp/{fc1,fc2}}`, `norm`. The fused qkv kernel keeps the checkpoint's
(W, 3W) layout with output rows ordered q, k, v, head-major inside each.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from janus_jax.models import layers

Dtype = Any


@dataclasses.dataclass(frozen=True)
class Config:
  image_size: int = 384
  patch_size: int = 16
  width: int = 1024
  depth: int = 24
  heads: int = 16
  mlp_ratio: float = 4.0
  eps: float = 1e-6

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid ** 2

  @property
  def mlp_dim(self) -> int:
    return int(self.width * self.mlp_ratio)  # timm truncates, e.g. so400m's 3.7362

  @classmethod
  def from_preset(cls, model_name: str, image_size: int | None = None,
                  presets: dict | None = None) -> "Config":
    """Sizes of a named reference preset; `presets` (e.g. a fixture's `extra.siglip`) wins."""
    table = {**PRESETS, **(presets or {})}
    if model_name not in table:
      raise ValueError(f"unknown SigLIP model_name {model_name!r}; known: {sorted(table)}")
    p = table[model_name]
    return cls(image_size=image_size or p["image_size"], patch_size=p["patch_size"],
               width=p["width"], depth=p["layers"], heads=p["heads"],
               mlp_ratio=p["mlp_ratio"])


# Presets of the reference's `SigLIP_MODEL_CONFIG` that Janus checkpoints name.
PRESETS = {
    "siglip_large_patch16_384": dict(image_size=384, patch_size=16, width=1024, layers=24,
                                     heads=16, mlp_ratio=4),
    "siglip_large_patch16_256": dict(image_size=256, patch_size=16, width=1024, layers=24,
                                     heads=16, mlp_ratio=4),
    "siglip_so400m_patch14_384": dict(image_size=336, patch_size=14, width=1152, layers=27,
                                      heads=16, mlp_ratio=3.7362),
}


class Attention(nn.Module):
  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: (B, P, W) -> (B, P, W); bidirectional multi-head attention, float32 softmax."""
    c = self.config
    h = c.width // c.heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = layers.dense(3 * c.width, ("vis_embed", "vis_mlp"), name="qkv", **kw)(x)
    q, k, v = jnp.split(qkv.reshape(x.shape[:2] + (3, c.heads, h)), 3, axis=2)
    q, k, v = (a[:, :, 0] for a in (q, k, v))  # (B, P, N, H)
    logits = jnp.einsum("BPNH,BQNH->BNPQ", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits * h ** -0.5, axis=-1).astype(self.dtype)
    out = jnp.einsum("BNPQ,BQNH->BPNH", probs, v).reshape(x.shape[:2] + (c.width,))
    return layers.dense(c.width, ("vis_mlp", "vis_embed"), name="proj", **kw)(out)


class Mlp(nn.Module):
  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.gelu(layers.dense(c.mlp_dim, ("vis_embed", "vis_mlp"), name="fc1", **kw)(x))
    return layers.dense(c.width, ("vis_mlp", "vis_embed"), name="fc2", **kw)(x)


class Block(nn.Module):
  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    norm = functools.partial(layers.layer_norm, eps=self.config.eps, dtype=self.dtype,
                             param_dtype=self.param_dtype, axis_name="vis_embed")
    x = x + Attention(self.config, self.dtype, self.param_dtype, name="attn")(
        norm(name="norm1")(x))
    x = x + Mlp(self.config, self.dtype, self.param_dtype, name="mlp")(norm(name="norm2")(x))
    return nn.with_logical_constraint(x, ("act_batch", "act_len", None))


class VisionTower(nn.Module):
  """The ViT itself (`vision_tower` in the checkpoint)."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, pixels):
    c = self.config
    if pixels.ndim != 4 or pixels.shape[1:] != (c.image_size, c.image_size, 3):
      raise ValueError(f"SigLIP expects (B, {c.image_size}, {c.image_size}, 3) normalised "
                       f"pixels, got {pixels.shape}")
    x = PatchEmbed(c, self.dtype, self.param_dtype, name="patch_embed")(pixels)
    x = x.reshape(x.shape[0], -1, c.width)  # row-major over the grid: token = row * grid + col
    pos = self.param("pos_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, "vis_embed")),
        (1, c.num_patches, c.width), self.param_dtype)
    x = x + pos.astype(self.dtype)
    block = nn.remat(Block) if self.remat else Block
    for i in range(c.depth):
      x = block(c, self.dtype, self.param_dtype, name=f"blocks_{i}")(x)
    return layers.layer_norm(eps=c.eps, dtype=self.dtype, param_dtype=self.param_dtype,
                             axis_name="vis_embed", name="norm")(x)


class PatchEmbed(nn.Module):
  """Non-overlapping patchify conv (`patch_embed.proj`): (B, S, S, 3) -> (B, g, g, W)."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels):
    p = self.config.patch_size
    return layers.conv(self.config.width, (p, p), strides=p, padding="VALID",
                       dtype=self.dtype, param_dtype=self.param_dtype,
                       name="proj")(pixels.astype(self.dtype))


class Model(nn.Module):
  """`CLIPVisionTower`: (B, S, S, 3) normalised pixels -> (B, P, W) features."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    return VisionTower(self.config, self.dtype, self.param_dtype, self.remat,
                       name="vision_tower")(pixels)
