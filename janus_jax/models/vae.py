"""The SDXL-style diffusers `AutoencoderKL` (JanusFlow's latent space), encoder and decoder.

Letters: B batch, H/W image size, h/w latent size, C channels, Z latent channels, T = h*w
attention positions.

Parameter names mirror the diffusers checkpoint (`decoder.up_blocks.0.resnets.1.conv1.weight` ->
`decoder/up_blocks_0/resnets_1/conv1/kernel`; mid attention `to_q/to_k/to_v/to_out_0`). Images
are NHWC in [-1, 1]. `decode` takes latents already divided by the scaling factor, as diffusers
does; `to_vae_latents` / `from_vae_latents` apply the scaling and optional shift.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from janus_jax.models import layers

Dtype = Any


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes of an `AutoencoderKL` built from `DownEncoderBlock2D` / `UpDecoderBlock2D` blocks."""

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_groups: int = 32
  norm_eps: float = 1e-6  # fixed in diffusers' Encoder/Decoder
  scaling_factor: float = 0.13025
  shift_factor: float | None = None
  mid_attention: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True

  @property
  def downsample_factor(self) -> int:
    """Pixels per latent cell along a side (8 for the SDXL VAE)."""
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_diffusers(cls, d: dict) -> "Config":
    """From a diffusers `AutoencoderKL` config.json dict; rejects features this port lacks."""
    if d.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
      raise ValueError(f"VAE config is a {d['_class_name']!r}, expected 'AutoencoderKL'")
    for key, want in (("down_block_types", "DownEncoderBlock2D"),
                      ("up_block_types", "UpDecoderBlock2D")):
      bad = [b for b in d.get(key, []) if b != want]
      if bad:
        raise ValueError(f"VAE config {key} contains {bad}; only {want} is supported")
    if d.get("act_fn", "silu") != "silu":
      raise ValueError(f"VAE config act_fn={d['act_fn']!r}; only 'silu' is supported")
    if d.get("latents_mean") is not None or d.get("latents_std") is not None:
      raise ValueError("VAE config has latents_mean/latents_std, which this port does not apply")
    return cls(
        in_channels=d.get("in_channels", 3), out_channels=d.get("out_channels", 3),
        block_out_channels=tuple(d.get("block_out_channels", (64,))),
        layers_per_block=d.get("layers_per_block", 1),
        latent_channels=d.get("latent_channels", 4), norm_groups=d.get("norm_num_groups", 32),
        scaling_factor=d.get("scaling_factor", 0.18215), shift_factor=d.get("shift_factor"),
        mid_attention=d.get("mid_block_add_attention", True),
        use_quant_conv=d.get("use_quant_conv", True),
        use_post_quant_conv=d.get("use_post_quant_conv", True))

  @property
  def downscale(self) -> int:
    """Image size / latent size."""
    return 2 ** (len(self.block_out_channels) - 1)


VARIANTS = {
    # stabilityai/sdxl-vae, the VAE JanusFlow samples through.
    "sdxl": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                 scaling_factor=0.13025),
}


def get_config(variant: str, **overrides) -> Config:
  if variant not in VARIANTS:
    raise ValueError(f"unknown VAE variant {variant!r}; known: {sorted(VARIANTS)}")
  return Config(**{**VARIANTS[variant], **overrides})


def _conv3(features: int, name: str, **kw) -> nn.Conv:
  """3x3 conv with torch's padding=1."""
  return layers.conv(features, (3, 3), padding=((1, 1), (1, 1)), name=name, **kw)


def _norm(config: Config, name: str, **kw) -> nn.GroupNorm:
  return layers.group_norm(groups=config.norm_groups, eps=config.norm_eps, name=name, **kw)


class ResnetBlock(nn.Module):
  """diffusers `ResnetBlock2D` without time embedding: GN-SiLU-conv twice, 1x1 shortcut."""

  features: int
  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _conv3(self.features, "conv1", **kw)(nn.silu(_norm(c, "norm1", **kw)(x)))
    h = _conv3(self.features, "conv2", **kw)(nn.silu(_norm(c, "norm2", **kw)(h)))
    if x.shape[-1] != self.features:
      x = layers.conv(self.features, (1, 1), padding="VALID", name="conv_shortcut", **kw)(x)
    return x + h


class Attention(nn.Module):
  """The mid block's single-head spatial self-attention with a residual, scale C^-1/2."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: (B, h, w, C) -> (B, h, w, C)."""
    b, h, w, c = x.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    cfg = self.config
    y = _norm(cfg, "group_norm", **kw)(x)
    y = y.reshape(b, h * w, c)
    dense = lambda name: layers.dense(c, ("conv_in", "conv_out"), name=name, **kw)  # noqa: E731
    q, k, v = dense("to_q")(y), dense("to_k")(y), dense("to_v")(y)
    logits = jnp.einsum("BTC,BSC->BTS", q, k, preferred_element_type=jnp.float32) * c ** -0.5
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    y = dense("to_out_0")(jnp.einsum("BTS,BSC->BTC", probs, v))
    return x + y.reshape(b, h, w, c)


class MidBlock(nn.Module):
  """resnets_0 -> attentions_0 (optional) -> resnets_1."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = x.shape[-1]
    x = ResnetBlock(c, self.config, name="resnets_0", **kw)(x)
    if self.config.mid_attention:
      x = Attention(self.config, name="attentions_0", **kw)(x)
    return ResnetBlock(c, self.config, name="resnets_1", **kw)(x)


class Downsample(nn.Module):
  """Zero-pad right/bottom by one, then a stride-2 3x3 VALID conv (diffusers padding=0)."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return layers.conv(x.shape[-1], (3, 3), strides=2, padding="VALID", name="conv",
                       dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Upsample(nn.Module):
  """Nearest x2 then a 3x3 conv."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv3(x.shape[-1], "conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Block(nn.Module):
  """`DownEncoderBlock2D` / `UpDecoderBlock2D`: resnets_0..n-1, then an optional resampler."""

  features: int
  num_resnets: int
  resample: str | None  # "down", "up" or None
  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.num_resnets):
      x = ResnetBlock(self.features, self.config, name=f"resnets_{j}", **kw)(x)
    if self.resample == "down":
      x = Downsample(name="downsamplers_0", **kw)(x)
    elif self.resample == "up":
      x = Upsample(name="upsamplers_0", **kw)(x)
    return x


class Encoder(nn.Module):
  """Image (B, H, W, 3) -> moments (B, h, w, 2Z) (before quant_conv)."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = _conv3(c.block_out_channels[0], "conv_in", **kw)(x.astype(self.dtype))
    n = len(c.block_out_channels)
    for i, ch in enumerate(c.block_out_channels):
      x = Block(ch, c.layers_per_block, "down" if i != n - 1 else None, c,
                name=f"down_blocks_{i}", **kw)(x)
    x = MidBlock(c, name="mid_block", **kw)(x)
    x = nn.silu(_norm(c, "conv_norm_out", **kw)(x))
    return _conv3(2 * c.latent_channels, "conv_out", **kw)(x)


class Decoder(nn.Module):
  """Latent (B, h, w, Z) (after post_quant_conv) -> image (B, H, W, 3)."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    chans = c.block_out_channels[::-1]
    x = _conv3(chans[0], "conv_in", **kw)(z.astype(self.dtype))
    x = MidBlock(c, name="mid_block", **kw)(x)
    for i, ch in enumerate(chans):
      x = Block(ch, c.layers_per_block + 1, "up" if i != len(chans) - 1 else None, c,
                name=f"up_blocks_{i}", **kw)(x)
    x = nn.silu(_norm(c, "conv_norm_out", **kw)(x))
    return _conv3(c.out_channels, "conv_out", **kw)(x)


class Model(nn.Module):
  """`AutoencoderKL`: encoder, quant_conv, post_quant_conv, decoder."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder(c, **kw)
    self.decoder = Decoder(c, **kw)
    if c.use_quant_conv:
      self.quant_conv = layers.conv(2 * c.latent_channels, (1, 1), padding="VALID", **kw)
    if c.use_post_quant_conv:
      self.post_quant_conv = layers.conv(c.latent_channels, (1, 1), padding="VALID", **kw)

  def encode(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, H, W, 3) in [-1, 1] -> (mean, logvar), each (B, h, w, Z); logvar clipped to [-30, 20].

    Latents are unscaled: multiply by the scaling factor (`to_vae_latents` inverse) for the flow.
    """
    moments = self.encoder(pixels)
    if self.config.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z: jax.Array) -> jax.Array:
    """(B, h, w, Z) unscaled latents -> (B, H, W, 3) pixels (~[-1, 1], not clipped)."""
    if self.config.use_post_quant_conv:
      z = self.post_quant_conv(z.astype(self.dtype))
    return self.decoder(z)

  def __call__(self, pixels, rng=None):
    """Encode (sampling the posterior when `rng` is given, else its mean) and decode; touches
    every parameter, for `init`."""
    mean, logvar = self.encode(pixels)
    return self.decode(sample_posterior(mean, logvar, rng))


def sample_posterior(mean: jax.Array, logvar: jax.Array, rng: jax.Array | None) -> jax.Array:
  """A draw from the diagonal Gaussian (its mean when `rng` is None)."""
  if rng is None:
    return mean
  eps = jax.random.normal(rng, mean.shape, jnp.float32).astype(mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def to_vae_latents(config: Config, z: jax.Array) -> jax.Array:
  """Flow-space latents -> what `decode` takes: z / scaling_factor (+ shift_factor)."""
  z = z / config.scaling_factor
  return z + config.shift_factor if config.shift_factor is not None else z


def from_vae_latents(config: Config, z: jax.Array) -> jax.Array:
  """`encode` output -> flow-space latents: (z - shift_factor) * scaling_factor."""
  if config.shift_factor is not None:
    z = z - config.shift_factor
  return z * config.scaling_factor
