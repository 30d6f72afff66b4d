"""JanusFlow's ShallowUViT: the ConvNeXt encoder and decoder around the LLM in latent space.

Letters: B batch, h/w latent grid, C channels, D condition width (the LLM width), F = 4C.

The encoder turns a noisy VAE latent `z (B, 2h, 2w, Cz)` and a time `t` (already x1000) into a
grid of tokens `(B, h, w, C)` plus a time embedding `t_emb (B, D)`; the grid is also the skip that
the decoder concatenates back. The decoder turns the LLM's grid `(B, h, w, C_llm)` plus that skip
into a velocity `(B, 2h, 2w, Cz)` through a 1x1 conv and a pixel shuffle.

Parameter names mirror the checkpoint (`vision_gen_enc_model.mid_block.res_blocks.0.depthwise`
-> `mid_block/res_blocks_0/depthwise`). Every layout is NHWC; the pixel shuffle reproduces
torch's channel order (input channel `c*r*r + i*r + j` -> output `(c, r*y + i, r*x + j)`).
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from janus_jax.models import layers

Dtype = Any
_GRN_EPS = 1e-6  # fixed in ConvNeXt-V2's GRN, independent of norm_eps
_SHUFFLE = 2  # the reference's Unpatchify always uses patch size 2


def _shape(tensor_shapes, key):
  if tensor_shapes is None or key not in tensor_shapes:
    return None
  return tuple(tensor_shapes[key])


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """`ShallowUViTEncoder` sizes. `channels` is `block_out_channels[0]` (= the last entry)."""

  input_channels: int = 4
  channels: int = 768
  cond_dim: int = 2048  # `hidden_size`: width of t_emb and of the conditioning
  kernel_size: int = 2
  stride: int = 2
  padding: int = 0
  layers_in_middle: int = 2
  use_mid_block: bool = True
  use_bias: bool = True
  norm_eps: float = 1e-6

  @classmethod
  def from_params(cls, params: dict, tensor_shapes: dict | None = None,
                  prefix: str = "vision_gen_enc_model.") -> "EncoderConfig":
    """From `vision_gen_enc_config.params`; the patch kernel is checked against `in_conv.weight`.

    Args:
      params: the config's params dict (reference constructor arguments and defaults).
      tensor_shapes: optional {torch key: shape}; when given, sizes are read from the weights and
        any disagreement with `params` is an error.
    """
    boc = tuple(params.get("block_out_channels", (768,)))
    if len(set(boc)) != 1:
      raise ValueError(f"ShallowUViTEncoder block_out_channels={boc}: the reference only works "
                       "when every entry is equal (in_conv feeds the mid block directly)")
    kernel = params.get("kernel_size", 7)
    stride = params.get("stride", 4)
    padding = params.get("padding")
    if padding is None:
      padding = math.ceil(kernel - stride)  # the reference's default
    kw = dict(
        input_channels=params.get("input_channels", 3), channels=boc[0],
        cond_dim=params.get("hidden_size", 2048), kernel_size=kernel, stride=stride,
        padding=padding, layers_in_middle=params.get("layers_in_middle", 2),
        use_mid_block=params.get("use_mid_block", True), use_bias=params.get("use_bias", True),
        norm_eps=params.get("norm_eps", 1e-6))
    w = _shape(tensor_shapes, prefix + "in_conv.weight")
    if w is not None:
      got = dict(channels=w[0], input_channels=w[1], kernel_size=w[2])
      bad = {k: (kw[k], v) for k, v in got.items() if kw[k] != v}
      if bad or w[2] != w[3]:
        raise ValueError(f"{prefix}in_conv.weight {w} disagrees with the config: "
                         f"{ {k: f'config {a}, weights {b}' for k, (a, b) in bad.items()} }")
    t = _shape(tensor_shapes, prefix + "time_embed.linear_1.weight")
    if t is not None and t != (kw["cond_dim"], kw["channels"]):
      raise ValueError(f"{prefix}time_embed.linear_1.weight {t} disagrees with hidden_size="
                       f"{kw['cond_dim']}, channels={kw['channels']}")
    return cls(**kw)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """`ShallowUViTDecoder` sizes.

  The mid block runs at `in_channels + channels` (LLM grid concatenated with the encoder skip);
  `upsamples` unpatchify stages follow, the last one producing `out_channels`.
  """

  in_channels: int = 768
  out_channels: int = 4
  channels: int = 768  # block_out_channels[-1], the skip width
  cond_dim: int = 2048
  upsamples: int = 1
  layers_in_middle: int = 2
  use_mid_block: bool = True
  use_bias: bool = True
  norm_eps: float = 1e-6

  @property
  def mid_channels(self) -> int:
    return self.in_channels + self.channels

  @classmethod
  def from_params(cls, params: dict, tensor_shapes: dict | None = None,
                  prefix: str = "vision_gen_dec_model.") -> "DecoderConfig":
    """From `vision_gen_dec_config.params`, checked against the weights when shapes are given."""
    kw = dict(
        in_channels=params.get("in_channels", 768), out_channels=params.get("out_channels", 3),
        channels=tuple(params.get("block_out_channels", (768,)))[-1],
        cond_dim=params.get("hidden_size", 2048), upsamples=params.get("upsamples", 2),
        layers_in_middle=params.get("layers_in_middle", 2),
        use_mid_block=params.get("use_mid_block", True), use_bias=params.get("use_bias", True),
        norm_eps=params.get("norm_eps", 1e-6))
    cfg = cls(**kw)
    n = _shape(tensor_shapes, prefix + "input_norm.weight")
    if n is not None and n != (cfg.in_channels,):
      raise ValueError(f"{prefix}input_norm.weight {n} disagrees with in_channels="
                       f"{cfg.in_channels}")
    if tensor_shapes is not None:
      stages = {k.split(".")[2] for k in tensor_shapes if k.startswith(prefix + "out_convs.")}
      if len(stages) != cfg.upsamples:
        raise ValueError(f"{prefix}out_convs has {len(stages)} stages in the weights, config "
                         f"says upsamples={cfg.upsamples}")
    u = _shape(tensor_shapes, f"{prefix}out_convs.{cfg.upsamples - 1}.unpatch_conv.weight")
    if u is not None and u[0] != cfg.out_channels * _SHUFFLE ** 2:
      raise ValueError(f"{prefix}out_convs.{cfg.upsamples - 1}.unpatch_conv.weight {u}: expected "
                       f"{cfg.out_channels * _SHUFFLE ** 2} output channels "
                       f"(out_channels={cfg.out_channels} x {_SHUFFLE}x{_SHUFFLE})")
    return cfg


def timestep_features(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`, in float32.

  Args:
    t: (B,) times (already multiplied by 1000).
  Returns:
    (B, dim) float32: [cos(t f), sin(t f)] with f_i = max_period^(-i / (dim // 2)).
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
  """torch `PixelShuffle(r)` on NHWC: (B, h, w, C*r*r) -> (B, h*r, w*r, C)."""
  b, h, w, crr = x.shape
  c = crr // (r * r)
  x = x.reshape(b, h, w, c, r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)  # (B, h, i, w, j, C)
  return x.reshape(b, h * r, w * r, c)


class GlobalResponseNorm(nn.Module):
  """ConvNeXt-V2 GRN over NHWC: x * (1 + scale * n) + bias, n = |x|_HW / mean_C |x|_HW.

  `scale`/`bias` are the checkpoint's `weight`/`bias` (1,1,1,F), stored as (F,).
  """

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    f = x.shape[-1]
    mk = lambda name: self.param(  # noqa: E731
        name, nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (f,),
        self.param_dtype)
    scale, bias = mk("scale"), mk("bias")
    x32 = x.astype(jnp.float32)
    g = jnp.sqrt(jnp.sum(jnp.square(x32), axis=(1, 2), keepdims=True))  # (B, 1, 1, F)
    n = (g / (jnp.mean(g, axis=-1, keepdims=True) + _GRN_EPS)).astype(self.dtype)
    x = x.astype(self.dtype)
    return bias.astype(self.dtype) + (scale.astype(self.dtype) * n + 1) * x


class ConvNextBlock(nn.Module):
  """Depthwise 7x7 -> RMSNorm -> Linear C->4C -> GELU -> GRN -> Linear 4C->C, residual, then
  scale/shift conditioning on the block output (after the residual, as in the reference)."""

  channels: int
  use_bias: bool
  norm_eps: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cond):
    """x: (B, h, w, C); cond: (B, D) -> (B, h, w, C)."""
    c = self.channels
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    residual = x
    x = layers.conv(c, (7, 7), padding=((3, 3), (3, 3)), groups=c, name="depthwise", **kw)(x)
    x = layers.RMSNorm(self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                       name="norm")(x)
    x = layers.dense(4 * c, ("conv_in", "conv_out"), name="channelwise_linear_1", **kw)(x)
    x = layers.gelu(x)
    x = GlobalResponseNorm(self.dtype, self.param_dtype, name="channelwise_norm")(x)
    x = layers.dense(c, ("conv_out", "conv_in"), name="channelwise_linear_2", **kw)(x)
    x = x + residual
    mod = layers.dense(2 * c, ("embed", "conv_in"), name="cond_embeds_mapper", **kw)(
        nn.silu(cond.astype(self.dtype)))
    scale, shift = jnp.split(mod, 2, axis=-1)  # rows [0:C] scale, [C:2C] shift
    return x * (1 + scale[:, None, None, :]) + shift[:, None, None, :]


class MidBlock(nn.Module):
  """`UVitBlock` without down/upsampling: `num_blocks` ConvNeXt blocks named `res_blocks_i`."""

  channels: int
  num_blocks: int
  use_bias: bool
  norm_eps: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cond):
    for i in range(self.num_blocks):
      x = ConvNextBlock(self.channels, self.use_bias, self.norm_eps, self.dtype,
                        self.param_dtype, name=f"res_blocks_{i}")(x, cond)
    return x


class TimestepEmbedding(nn.Module):
  """diffusers `TimestepEmbedding`: linear_1 -> SiLU -> linear_2."""

  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.dense(self.features, (None, "embed"), name="linear_1", **kw)(x)
    return layers.dense(self.features, ("embed", None), name="linear_2", **kw)(nn.silu(x))


class Encoder(nn.Module):
  """`ShallowUViTEncoder`."""

  config: EncoderConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, t: jax.Array):
    """Encodes a noisy latent.

    Args:
      z: (B, H, W, Cz) latent.
      t: (B,) times already multiplied by 1000 (the sampler rounds them to the model dtype).
    Returns:
      (x_emb (B, h, w, C), t_emb (B, D)); x_emb is also the decoder's skip.
    """
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    t_feat = timestep_features(t, c.channels).astype(self.dtype)
    t_emb = TimestepEmbedding(c.cond_dim, c.use_bias, name="time_embed", **kw)(t_feat)
    p = c.padding
    # The reference's in_conv always has a bias, whatever use_bias says.
    x = layers.conv(c.channels, (c.kernel_size, c.kernel_size), strides=c.stride,
                    padding=((p, p), (p, p)), name="in_conv", **kw)(z.astype(self.dtype))
    if c.use_mid_block:
      x = MidBlock(c.channels, c.layers_in_middle, c.use_bias, c.norm_eps, name="mid_block",
                   **kw)(x, t_emb)
    return x, t_emb


class Unpatchify(nn.Module):
  """RMSNorm -> 1x1 conv to `features * 4` -> pixel shuffle x2."""

  features: int
  use_bias: bool
  norm_eps: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.RMSNorm(self.norm_eps, name="norm", **kw)(x)
    x = layers.conv(self.features * _SHUFFLE ** 2, (1, 1), padding="VALID",
                    use_bias=self.use_bias, name="unpatch_conv", **kw)(x)
    return pixel_shuffle(x, _SHUFFLE)


class Decoder(nn.Module):
  """`ShallowUViTDecoder`."""

  config: DecoderConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array, t_emb: jax.Array) -> jax.Array:
    """Predicts the velocity.

    Args:
      x: (B, h, w, C_in) grid from the LLM side. skip: (B, h, w, C) encoder output.
      t_emb: (B, D).
    Returns:
      (B, h * 2^u, w * 2^u, out_channels) with u = `upsamples`.
    """
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.RMSNorm(c.norm_eps, name="input_norm", **kw)(x.astype(self.dtype))
    x = jnp.concatenate([x, skip.astype(self.dtype)], axis=-1)
    if c.use_mid_block:
      x = MidBlock(c.mid_channels, c.layers_in_middle, c.use_bias, c.norm_eps,
                   name="mid_block", **kw)(x, t_emb)
    for rank in range(c.upsamples):
      features = c.out_channels if rank == c.upsamples - 1 else c.channels
      x = Unpatchify(features, c.use_bias, c.norm_eps, name=f"out_convs_{rank}", **kw)(x)
    return x
