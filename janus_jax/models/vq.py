"""LlamaGen VQ-16 image tokenizer (`gen_vision_model` of Janus / Janus-Pro), NHWC.

Letters: B batch, H/W image height/width, h/w latent grid (H / F, W / F with F = 2**(levels-1)),
P = h*w latent positions (= image tokens per image, row-major), S attended positions, C channels,
E codebook dim, V codebook size.

Pixels in [-1, 1] -> conv encoder -> `quant_conv` (1x1, z -> E) -> nearest l2-normalised codebook
entry -> `post_quant_conv` (1x1, E -> z) -> conv decoder -> pixels of about [-1, 1] (unclipped).

Parameter paths mirror the torch attributes (`encoder.conv_blocks.2.res.0.nin_shortcut.weight` ->
`encoder/conv_blocks_2/res_0/nin_shortcut/kernel`); every 1x1 conv stays a (1, 1, I, O) conv so
that one layout transform serves all kernels. `janus_jax.convert.vq` holds the mapping tables.
"""

import dataclasses
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from janus_jax.models import layers

Dtype = Any


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes of the tokenizer. The decoder has `num_res_blocks + 1` ResnetBlocks per level."""

  codebook_size: int = 16384
  codebook_dim: int = 8
  z_channels: int = 256
  base_channels: int = 128
  ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  in_channels: int = 3
  out_channels: int = 3
  norm_groups: int = 32
  norm_eps: float = 1e-6
  codebook_l2_norm: bool = True
  commit_beta: float = 0.25

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)

  @classmethod
  def from_shapes(cls, shapes: dict[str, tuple], **overrides) -> "Config":
    """Derives every size from checkpoint tensor shapes.

    Args:
      shapes: key -> shape for the VQ tensors, keys relative to the VQ model (no
        `gen_vision_model.` / `model.vqmodel.` prefix), original (`encoder.conv_blocks.N.res.M`)
        or transformers (`encoder.down.N.block.M`) layout.
      overrides: fields shapes cannot express (`norm_groups`, `norm_eps`, `commit_beta`...).
    Raises:
      ValueError naming the missing key or the inconsistent sizes.
    """
    def shape(key):
      if key not in shapes:
        raise ValueError(f"VQ tensors have no {key!r}; cannot derive the tokenizer sizes")
      return tuple(shapes[key])

    level_re = re.compile(r"(encoder|decoder)\.(?:conv_blocks|down|up)\.(\d+)\."
                          r"(?:res|block)\.(\d+)\.conv1\.weight")
    first_out: dict[tuple[str, int], int] = {}  # (side, level) -> out channels of its block 0
    blocks: dict[tuple[str, int], int] = {}  # (side, level) -> number of ResnetBlocks
    for key in shapes:
      m = level_re.fullmatch(key)
      if m:
        side, lvl, blk = m.group(1), int(m.group(2)), int(m.group(3))
        blocks[(side, lvl)] = max(blocks.get((side, lvl), 0), blk + 1)
        if blk == 0:
          first_out[(side, lvl)] = tuple(shapes[key])[0]
    base, in_ch = shape("encoder.conv_in.weight")[:2]
    levels = sorted(lvl for side, lvl in first_out if side == "encoder")
    if not levels or levels != list(range(len(levels))):
      raise ValueError(f"VQ encoder levels are not 0..N-1: found {levels}")
    outs = [first_out[("encoder", i)] for i in levels]
    if any(o % base for o in outs):
      raise ValueError(f"VQ encoder level widths {outs} are not multiples of conv_in's {base}")
    ch_mult = tuple(o // base for o in outs)
    enc_blocks = sorted({blocks[("encoder", i)] for i in levels})
    dec_levels = sorted(lvl for side, lvl in first_out if side == "decoder")
    dec_outs = [first_out[("decoder", j)] for j in dec_levels]
    dec_blocks = sorted({blocks[("decoder", j)] for j in dec_levels})
    want_dec = [base * m for m in reversed(ch_mult)]
    if len(enc_blocks) != 1 or dec_outs != want_dec or dec_blocks != [enc_blocks[0] + 1]:
      raise ValueError(
          f"VQ encoder/decoder do not mirror each other: encoder widths {outs} with "
          f"{enc_blocks} blocks per level, decoder widths {dec_outs} with {dec_blocks} blocks "
          f"(want {want_dec} and one block more per level)")
    codebook_size, codebook_dim = shape("quantize.embedding.weight")
    z = shape("encoder.conv_out.weight")[0]
    if shape("quant_conv.weight")[:2] != (codebook_dim, z):
      raise ValueError(f"quant_conv.weight {shape('quant_conv.weight')} does not map "
                       f"z_channels {z} to codebook dim {codebook_dim}")
    kw = dict(codebook_size=codebook_size, codebook_dim=codebook_dim, z_channels=z,
              base_channels=base, ch_mult=ch_mult, num_res_blocks=enc_blocks[0],
              in_channels=in_ch, out_channels=shape("decoder.conv_out.weight")[0])
    kw.update(overrides)
    return cls(**kw)


VARIANTS = {
    # LlamaGen VQ-16 as shipped in every Janus / Janus-Pro checkpoint.
    "vq16": dict(),
    # The fixtures' tiny tokenizer (fixture.json extra.vq).
    "tiny": dict(codebook_size=256, codebook_dim=8, z_channels=64, base_channels=32),
}


def get_config(variant: str, **overrides) -> Config:
  """Named tokenizer sizes; `overrides` replace fields."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown VQ variant {variant!r}; known: {sorted(VARIANTS)}")
  return Config(**{**VARIANTS[variant], **overrides})


def swish(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(x)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """`F.normalize(x, dim=-1)`: x / max(|x|, eps), with the norm taken in float32."""
  x32 = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
  return (x32 / jnp.maximum(norm, eps)).astype(x.dtype)


class _Block(nn.Module):
  """Shared fields of the conv blocks: sizes from `config`, the two dtypes."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def conv(self, features, kernel=3, name=None, **kw):
    return layers.conv(features, (kernel, kernel), dtype=self.dtype,
                       param_dtype=self.param_dtype, name=name, **kw)

  def norm(self, name):
    return layers.group_norm(groups=self.config.norm_groups, eps=self.config.norm_eps,
                             dtype=self.dtype, param_dtype=self.param_dtype, name=name)


class ResnetBlock(_Block):
  """GN-swish-conv twice plus a residual; a 1x1 `nin_shortcut` when the width changes."""

  features: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C_in) -> (B, H, W, features)."""
    h = self.conv(self.features, name="conv1")(swish(self.norm("norm1")(x)))
    # Dropout is 0 in every released tokenizer, so it is left out.
    h = self.conv(self.features, name="conv2")(swish(self.norm("norm2")(h)))
    if x.shape[-1] != self.features:
      x = self.conv(self.features, kernel=1, name="nin_shortcut")(x)
    return x + h


class AttnBlock(_Block):
  """Single-head self-attention over all P = H*W positions, scale C**-0.5, residual."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H, W, C)."""
    b, hh, ww, c = x.shape
    h = self.norm("norm")(x)
    q, k, v = (self.conv(c, kernel=1, name=n)(h).reshape(b, hh * ww, c) for n in "qkv")
    logits = jnp.einsum("BPC,BSC->BPS", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits * (c ** -0.5), axis=-1)
    out = jnp.einsum("BPS,BSC->BPC", probs.astype(self.dtype), v).reshape(b, hh, ww, c)
    return x + self.conv(c, kernel=1, name="proj_out")(out)


class Downsample(_Block):
  """Halves H and W: zero pad right and bottom by one, then a VALID stride-2 3x3 conv."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # The reference pads asymmetrically (F.pad(x, (0, 1, 0, 1))); SAME padding would pad both
    # sides of an odd total and shift every output pixel.
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return self.conv(x.shape[-1], strides=2, padding="VALID", name="conv")(x)


class Upsample(_Block):
  """Nearest-neighbour x2, then a 3x3 conv."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Nearest upsampling is exact in any dtype, so the reference's bf16 round trip is moot here.
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return self.conv(x.shape[-1], name="conv")(x)


class Level(_Block):
  """One resolution level (`conv_blocks.i`): ResnetBlocks, optional AttnBlocks after each,
  optional resampling at the end."""

  features: int = 0
  num_blocks: int = 0
  attention: bool = False
  resample: str | None = None  # "down", "up" or None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
    for j in range(self.num_blocks):
      x = ResnetBlock(**kw, features=self.features, name=f"res_{j}")(x)
      if self.attention:
        x = AttnBlock(**kw, name=f"attn_{j}")(x)
    if self.resample == "down":
      x = Downsample(**kw, name="downsample")(x)
    elif self.resample == "up":
      x = Upsample(**kw, name="upsample")(x)
    return x


def _mid(block: _Block, x: jax.Array) -> jax.Array:
  """The [ResnetBlock, AttnBlock, ResnetBlock] middle (`mid.0..2`) of a coder."""
  kw = dict(config=block.config, dtype=block.dtype, param_dtype=block.param_dtype)
  x = ResnetBlock(**kw, features=x.shape[-1], name="mid_0")(x)
  x = AttnBlock(**kw, name="mid_1")(x)
  return ResnetBlock(**kw, features=x.shape[-1], name="mid_2")(x)


class Encoder(_Block):
  """(B, H, W, in_channels) pixels -> (B, h, w, z_channels)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    kw = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype)
    x = self.conv(c.base_channels, name="conv_in")(x)
    last = len(c.ch_mult) - 1
    for i, mult in enumerate(c.ch_mult):
      x = Level(**kw, features=c.base_channels * mult, num_blocks=c.num_res_blocks,
                attention=i == last, resample=None if i == last else "down",
                name=f"conv_blocks_{i}")(x)
    x = _mid(self, x)
    return self.conv(c.z_channels, name="conv_out")(swish(self.norm("norm_out")(x)))


class Decoder(_Block):
  """(B, h, w, z_channels) -> (B, H, W, out_channels); level j runs ch_mult[-1 - j]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    kw = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype)
    x = self.conv(c.base_channels * c.ch_mult[-1], name="conv_in")(x)
    x = _mid(self, x)
    last = len(c.ch_mult) - 1
    for j, mult in enumerate(reversed(c.ch_mult)):
      x = Level(**kw, features=c.base_channels * mult, num_blocks=c.num_res_blocks + 1,
                attention=j == 0, resample=None if j == last else "up",
                name=f"conv_blocks_{j}")(x)
    return self.conv(c.out_channels, name="conv_out")(swish(self.norm("norm_out")(x)))


def _codebook_init(key, shape, dtype=jnp.float32):
  """The reference's init: uniform(-1/V, 1/V), then rows l2-normalised."""
  w = jax.random.uniform(key, shape, jnp.float32, -1.0 / shape[0], 1.0 / shape[0])
  return l2_normalize(w).astype(dtype)


class Quantizer(nn.Module):
  """Nearest-codebook-entry lookup; the codebook is the `embedding` parameter (V, E)."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c = self.config
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(_codebook_init, (None, None)),
        (c.codebook_size, c.codebook_dim), self.param_dtype)

  def codebook(self) -> jax.Array:
    """(V, E) rows as used for lookup: l2-normalised when `codebook_l2_norm` (eps 1e-12)."""
    e = jnp.asarray(self.embedding, self.dtype)
    return l2_normalize(e) if self.config.codebook_l2_norm else e

  def __call__(self, z: jax.Array):
    """Quantises latents.

    Args:
      z: (B, h, w, E) `quant_conv` output.
    Returns:
      quant (B, h, w, E): straight-through `z + sg(z_q - z)` (z normalised first, as the
        reference does, so forward values are the normalised codebook rows);
      codes (B, h*w) int32, row-major;
      losses: dict of scalar float32 `codebook` = mean((z_q - sg(z))^2) and
        `commitment` = beta * mean((sg(z_q) - z)^2).
    """
    b, hh, ww, e = z.shape
    if e != self.config.codebook_dim:
      raise ValueError(f"latents have {e} channels, the codebook has dim "
                       f"{self.config.codebook_dim}")
    if self.config.codebook_l2_norm:
      z = l2_normalize(z)
    codebook = self.codebook()
    z32, e32 = z.astype(jnp.float32), codebook.astype(jnp.float32)
    # Same expansion as the reference, |z|^2 + |e|^2 - 2 z.e, in full float32 precision: the
    # argmin must not flip on near ties, and E is tiny so HIGHEST costs nothing.
    dist = (jnp.sum(jnp.square(z32), -1, keepdims=True) + jnp.sum(jnp.square(e32), -1)
            - 2 * jnp.einsum("BhwE,VE->BhwV", z32, e32, precision=jax.lax.Precision.HIGHEST))
    codes = jnp.argmin(dist, axis=-1).astype(jnp.int32)
    z_q = jnp.take(codebook, codes, axis=0).astype(z.dtype)
    sg = jax.lax.stop_gradient
    losses = {
        "codebook": jnp.mean(jnp.square(z_q.astype(jnp.float32) - sg(z32))),
        "commitment": self.config.commit_beta
                      * jnp.mean(jnp.square(sg(z_q.astype(jnp.float32)) - z32)),
    }
    quant = z + sg(z_q - z)
    return quant, codes.reshape(b, hh * ww), losses


class Model(nn.Module):
  """`VQModel`: encoder, quant_conv, quantize, post_quant_conv, decoder."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c = self.config
    kw = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype)
    conv1x1 = lambda n: layers.conv(n, (1, 1), dtype=self.dtype,  # noqa: E731
                                    param_dtype=self.param_dtype)
    self.encoder = Encoder(**kw)
    self.quant_conv = conv1x1(c.codebook_dim)
    self.quantize = Quantizer(**kw)
    self.post_quant_conv = conv1x1(c.z_channels)
    self.decoder = Decoder(**kw)

  def _check_pixels(self, pixels: jax.Array):
    c = self.config
    f = c.downsample_factor
    if pixels.ndim != 4 or pixels.shape[-1] != c.in_channels:
      raise ValueError(f"pixels must be (B, H, W, {c.in_channels}) NHWC, got {pixels.shape}")
    if pixels.shape[1] % f or pixels.shape[2] % f:
      raise ValueError(f"image size {pixels.shape[1]}x{pixels.shape[2]} is not divisible by the "
                       f"VQ downsample factor {f}")

  def latents(self, pixels: jax.Array) -> jax.Array:
    """(B, H, W, 3) pixels in [-1, 1] -> (B, h, w, E) `quant_conv` latents, before lookup."""
    self._check_pixels(pixels)
    return self.quant_conv(self.encoder(pixels))

  def quantize_with_losses(self, pixels: jax.Array):
    """(B, H, W, 3) pixels in [-1, 1] -> (quant (B, h, w, E), codes (B, P), losses dict)."""
    return self.quantize(self.latents(pixels))

  def encode(self, pixels: jax.Array):
    """Tokenises images.

    Args:
      pixels: (B, H, W, 3) in [-1, 1]; H and W multiples of `downsample_factor`.
    Returns:
      quant (B, h, w, E) straight-through quantised latents, codes (B, h*w) int32 row-major.
    """
    quant, codes, _ = self.quantize_with_losses(pixels)
    return quant, codes

  def decode(self, quant: jax.Array) -> jax.Array:
    """(B, h, w, E) quantised latents -> (B, H, W, 3) pixels of about [-1, 1], unclipped."""
    return self.decoder(self.post_quant_conv(quant.astype(self.dtype)))

  def decode_code(self, codes: jax.Array) -> jax.Array:
    """Decodes token ids.

    Args:
      codes: (B, h*w) with a square grid, or (B, h, w); ints in [0, V). Out-of-range ids cannot
        be checked under jit; `jnp.take` clamps them.
    Returns:
      (B, H, W, 3) pixels of about [-1, 1], unclipped.
    """
    if codes.ndim == 2:
      side = math.isqrt(codes.shape[1])
      if side * side != codes.shape[1]:
        raise ValueError(f"{codes.shape[1]} codes per image is not a square grid; pass them "
                         f"as (B, h, w)")
      codes = codes.reshape(codes.shape[0], side, side)
    elif codes.ndim != 3:
      raise ValueError(f"codes must be (B, h*w) or (B, h, w), got shape {codes.shape}")
    if not jnp.issubdtype(codes.dtype, jnp.integer):
      raise ValueError(f"codes must be integers, got {codes.dtype}")
    return self.decode(jnp.take(self.quantize.codebook(), codes, axis=0))

  def loss(self, pixels: jax.Array):
    """Training objective terms for reconstructing `pixels` (B, H, W, 3) in [-1, 1].

    Returns:
      (total scalar, dict of float32 scalars `reconstruction` (mean squared error),
      `codebook`, `commitment`). Perceptual / adversarial terms are left to the trainer.
    """
    total, (terms, _, _) = self.loss_and_codes(pixels)
    return total, terms

  def loss_and_codes(self, pixels: jax.Array, pixel_weights: jax.Array | None = None):
    """`loss` plus what the trainer's dead-code restarts need: (total, (terms, codes (B, P),
    latents (B, h, w, E) the codes were chosen for, before normalisation)).

    pixel_weights: optional (B, H, W, 1) weights of each pixel's squared error in the
    `reconstruction` term (its mean over pixels and channels then weighs them); None: plain MSE.
    """
    z = self.latents(pixels)
    quant, codes, losses = self.quantize(z)
    recon = self.decode(quant).astype(jnp.float32)
    err = jnp.square(recon - pixels.astype(jnp.float32))
    if pixel_weights is not None:
      err = err * pixel_weights.astype(jnp.float32)
    terms = {"reconstruction": jnp.mean(err), **losses}
    return sum(terms.values()), (terms, codes, z)

  def init_all(self, pixels: jax.Array) -> jax.Array:
    """Touches every parameter (for `init`): (B, H, W, 3) -> reconstruction (B, H, W, 3)."""
    quant, _ = self.encode(pixels)
    return self.decode(quant)
