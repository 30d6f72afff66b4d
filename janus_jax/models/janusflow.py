"""JanusFlow (`janus.janusflow.models.MultiModalityCausalLM`): SigLIP + linear aligner + LLaMA,
with rectified-flow generation through the ShallowUViT encoder/decoder in a VAE latent space.

Letters: B batch, T tokens, n images per row, P understanding tokens per image (SigLIP patches),
Q generation tokens per image (latent grid h*w), D LLM width, C UViT width, V text vocab,
Z latent channels.

Submodule names are the checkpoint's top-level attributes (`vision_gen_dec_aligner_norm.weight`
-> `vision_gen_dec_aligner_norm/scale`). The reference hard-codes the aligner widths (1024, 768,
2048); here they come from the SigLIP, UViT and LLM configs, which is the same for the released
model and lets tiny configs work. The SDXL VAE is not part of the checkpoint (`models/vae.py`).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from janus_jax.models import janus
from janus_jax.models import layers
from janus_jax.models import llama
from janus_jax.models import siglip
from janus_jax.models import uvit

Dtype = Any


@dataclasses.dataclass(frozen=True)
class Config:
  vision: siglip.Config
  encoder: uvit.EncoderConfig
  decoder: uvit.DecoderConfig
  llm: llama.Config
  # The reference samples 48x48 latents (384 px through the SDXL VAE); not in config.json.
  gen_latent_size: int = 48
  # CLIPVisionTower normalises inside the model only when both are in the vision params.
  pixel_mean: tuple[float, ...] | None = None
  pixel_std: tuple[float, ...] | None = None
  family: str = "janusflow"

  def __post_init__(self):
    d = self.llm.hidden_size
    checks = {
        "vision_gen_enc hidden_size": (self.encoder.cond_dim, d),
        "vision_gen_dec hidden_size": (self.decoder.cond_dim, d),
        "vision_gen_dec block_out_channels[-1] (skip width)": (self.decoder.channels,
                                                               self.encoder.channels),
        "vision_gen_dec out_channels": (self.decoder.out_channels, self.latent_channels),
    }
    janus.check_consistent("JanusFlow", checks)

  @property
  def latent_channels(self) -> int:
    return self.encoder.input_channels

  @property
  def image_tokens(self) -> int:
    """Understanding slots per image: beg_of_und_embed + the SigLIP patches (577 at 384 px)."""
    return self.vision.num_patches + 1

  def gen_tokens(self, latent_size: int) -> int:
    """Generation tokens for a square latent of `latent_size` (576 for 48)."""
    e = self.encoder
    side = (latent_size + 2 * e.padding - e.kernel_size) // e.stride + 1
    return side * side

  @classmethod
  def from_json(cls, cfg: dict, extra: dict | None = None, tensor_shapes: dict | None = None,
                **llm_overrides) -> "Config":
    """From an original-layout JanusFlow `config.json`.

    Args:
      cfg: the parsed config.json (`vision_und_enc_config`, `vision_gen_enc_config`,
        `vision_gen_dec_config`, `language_config`).
      extra: sizes the config cannot express (a fixture's `extra.siglip` presets,
        optional `gen_latent_size`).
      tensor_shapes: {torch key: shape}; when given, UViT sizes are checked against the weights.
      llm_overrides: fields of `llama.Config` to replace.
    """
    need = ("vision_und_enc_config", "vision_gen_enc_config", "vision_gen_dec_config")
    if any(k not in cfg for k in need):
      hint = (" (this is a Janus / Janus-Pro config: use janus.Config)"
              if "gen_vision_config" in cfg else "")
      raise ValueError(f"not a JanusFlow config.json: needs {', '.join(need)}; found keys "
                       f"{sorted(cfg)}{hint}")
    extra = extra or {}
    vp = cfg["vision_und_enc_config"]["params"]
    vision = siglip.Config.from_preset(vp["model_name"], vp.get("image_size"),
                                       extra.get("siglip"))
    mean, std = vp.get("pixel_mean"), vp.get("pixel_std")
    norm = (tuple(mean), tuple(std)) if mean is not None and std is not None else (None, None)
    return cls(
        vision=vision,
        encoder=uvit.EncoderConfig.from_params(cfg["vision_gen_enc_config"]["params"],
                                               tensor_shapes),
        decoder=uvit.DecoderConfig.from_params(cfg["vision_gen_dec_config"]["params"],
                                               tensor_shapes),
        llm=llama.Config.from_hf(cfg["language_config"], **llm_overrides),
        gen_latent_size=extra.get("gen_latent_size", 48),
        pixel_mean=norm[0], pixel_std=norm[1])


def get_config(variant: str) -> Config:
  """`janusflow_1_3b` (the released sizes; UViT norm_eps from the code default) or `tiny`."""
  if variant == "janusflow_1_3b":
    d = 2048
    return Config(
        vision=siglip.Config.from_preset("siglip_large_patch16_384"),
        encoder=uvit.EncoderConfig(input_channels=4, channels=768, cond_dim=d),
        decoder=uvit.DecoderConfig(in_channels=768, out_channels=4, channels=768, cond_dim=d),
        llm=llama.get_config("deepseek_llm_1_3b"))
  if variant == "tiny":
    return Config(
        vision=siglip.Config(image_size=32, patch_size=8, width=64, depth=2, heads=4),
        encoder=uvit.EncoderConfig(input_channels=4, channels=32, cond_dim=64),
        decoder=uvit.DecoderConfig(in_channels=32, out_channels=4, channels=32, cond_dim=64),
        llm=llama.get_config("tiny"), gen_latent_size=8)
  raise ValueError(f"unknown JanusFlow variant {variant!r}; known: janusflow_1_3b, tiny")


class Model(nn.Module):
  """The JanusFlow composite; see the module docstring and each method."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  vision_remat: bool = False

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = c.llm.hidden_size
    self.vision_und_enc_model = siglip.Model(c.vision, remat=self.vision_remat, **kw)
    self.vision_und_enc_aligner = layers.dense(d, ("vis_embed", "embed"), **kw)
    self.beg_of_und_embed = self.param(
        "beg_of_und_embed", nn.with_logical_partitioning(nn.initializers.zeros, (None, "embed")),
        (1, d), self.param_dtype)
    self.vision_gen_enc_model = uvit.Encoder(c.encoder, **kw)
    self.vision_gen_enc_aligner = layers.dense(d, ("conv_in", "embed"), **kw)
    self.vision_gen_dec_model = uvit.Decoder(c.decoder, **kw)
    self.vision_gen_dec_aligner_norm = layers.RMSNorm(c.llm.rms_norm_eps, axis_name="embed",
                                                      **kw)
    self.vision_gen_dec_aligner = layers.dense(c.decoder.in_channels, ("embed", "conv_in"),
                                               **kw)
    self.language_model = llama.Model(c.llm, **kw)

  # --- understanding -------------------------------------------------------------------------

  def encode_images(self, pixels: jax.Array) -> jax.Array:
    """(B, S, S, 3) processor-normalised pixels -> (B, P + 1, D): beg_of_und_embed, then the
    aligned SigLIP features."""
    c = self.config
    if c.pixel_mean is not None:
      pixels = (pixels - jnp.asarray(c.pixel_mean)) / jnp.asarray(c.pixel_std)
    feats = self.vision_und_enc_aligner(self.vision_und_enc_model(pixels))
    boi = jnp.broadcast_to(self.beg_of_und_embed.astype(feats.dtype)[None],
                           (feats.shape[0], 1, feats.shape[-1]))
    return jnp.concatenate([boi, feats], axis=1)

  def embed_text(self, ids: jax.Array) -> jax.Array:
    """(B, T) ids -> (B, T, D). Negative ids embed as id 0, like the reference."""
    return self.language_model.embed(jnp.maximum(ids, 0))

  def prepare_inputs_embeds(self, input_ids, pixel_values, images_seq_mask, images_emb_mask):
    """Text embeddings with images written into their slots.

    Args:
      input_ids: (B, T) int. pixel_values: (B, n, S, S, 3) (zeros for absent images).
      images_seq_mask: (B, T) bool: the `<begin_of_image>` and placeholder slots.
      images_emb_mask: (B, n, P + 1) bool.
    Returns:
      (B, T, D).
    """
    b, n = pixel_values.shape[:2]
    img = self.encode_images(pixel_values.reshape((b * n,) + pixel_values.shape[2:]))
    img = img.reshape(b, n, img.shape[1], img.shape[2])
    return janus.merge_embeddings(self.embed_text(input_ids), img, images_seq_mask,
                                  images_emb_mask)

  def llm(self, embeds, positions, **kw) -> llama.Output:
    """LLM forward; kw: attn_mask, segment_ids, branch_ids, cache, tap_layer (`llama.Decoder`)."""
    return self.language_model(embeds, positions, **kw)

  def text_logits(self, hidden: jax.Array) -> jax.Array:
    """(B, T, D) -> (B, T, V)."""
    return self.language_model.logits(hidden)

  # --- generation ----------------------------------------------------------------------------

  def gen_encode(self, z: jax.Array, t: jax.Array):
    """Noisy latent -> LLM input tokens.

    Args:
      z: (B, H, W, Z) latents. t: (B,) times already x1000.
    Returns:
      tokens (B, Q, D) (row-major over the h x w grid), t_emb (B, D) (the time token and the
      UViT condition), skip (B, h, w, C) (for `gen_decode`).
    """
    x, t_emb = self.vision_gen_enc_model(z, t)
    b, h, w, c = x.shape
    tokens = self.vision_gen_enc_aligner(x.reshape(b, h * w, c))
    return tokens, t_emb, x

  def gen_decode(self, hidden: jax.Array, skip: jax.Array, t_emb: jax.Array) -> jax.Array:
    """LLM outputs at the Q latent positions -> velocity.

    Args:
      hidden: (B, Q, D) final-normed LLM states. skip: (B, h, w, C). t_emb: (B, D).
    Returns:
      (B, H, W, Z) velocity.
    """
    b, h, w, _ = skip.shape
    x = self.vision_gen_dec_aligner(self.vision_gen_dec_aligner_norm(hidden))
    return self.vision_gen_dec_model(x.reshape(b, h, w, x.shape[-1]), skip, t_emb)

  def init_all(self, ids, pixels, z):
    """Touches every parameter (for `init`): ids (B, T), pixels (B, S, S, 3), z (B, H, W, Z)."""
    b = ids.shape[0]
    tokens, t_emb, skip = self.gen_encode(z, jnp.zeros((b,), jnp.float32))
    und = self.encode_images(pixels)
    x = jnp.concatenate([self.embed_text(ids), und, t_emb[:, None], tokens], axis=1)
    h = self.llm(x, jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])).hidden
    return self.text_logits(h), self.gen_decode(h[:, -tokens.shape[1]:], skip, t_emb)


def init_inputs(config: Config, batch: int = 1):
  """Dummy arguments for `Model.init(..., method=Model.init_all)`."""
  s, e = config.vision.image_size, config.encoder
  # The UViT is fully convolutional: one patch of latent is enough.
  return (jnp.zeros((batch, 2), jnp.int32), jnp.zeros((batch, s, s, 3), jnp.float32),
          jnp.zeros((batch, e.kernel_size, e.kernel_size, e.input_channels), jnp.float32))


def abstract_params(config: Config, dtype=jnp.float32, param_dtype=jnp.float32):
  """Boxed (logically partitioned) parameter ShapeDtypeStructs, without allocating."""
  model = Model(config, dtype, param_dtype)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *init_inputs(config),
                                           method=Model.init_all))["params"]
