"""Janus / Janus-Pro (`MultiModalityCausalLM`): SigLIP + aligner + LLaMA + VQ-16 + gen head.

Letters: B batch, T tokens, n images per row, P image tokens per image, D LLM width,
V text vocab, G VQ codebook size, S image side.

Submodule names are the checkpoint's top-level attributes, so a torch key like
`gen_head.vision_head.weight` lands at `gen_head/vision_head/kernel`.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from janus_jax.models import aligners
from janus_jax.models import gen_head
from janus_jax.models import llama
from janus_jax.models import siglip
from janus_jax.models import vq

Dtype = Any


@dataclasses.dataclass(frozen=True)
class Config:
  vision: siglip.Config
  aligner: aligners.Config
  vq: vq.Config
  gen_aligner: aligners.Config
  gen_head: gen_head.Config
  llm: llama.Config
  image_token_size: int  # rows of gen_embed (= VQ codebook size)
  gen_embed_dim: int  # width of gen_embed (= VQ code dim, 8)
  family: str = "janus"

  def __post_init__(self):
    d = self.llm.hidden_size
    checks = {
        "aligner.n_embed": (self.aligner.n_embed, d),
        "aligner.input_dim": (self.aligner.input_dim, self.vision.width),
        "gen_aligner.n_embed": (self.gen_aligner.n_embed, d),
        "gen_aligner.input_dim": (self.gen_aligner.input_dim, self.gen_embed_dim),
        "gen_head.n_embed": (self.gen_head.n_embed, d),
        "gen_head.image_token_size": (self.gen_head.image_token_size, self.image_token_size),
    }
    check_consistent("Janus", checks)

  @property
  def image_tokens(self) -> int:
    """Understanding tokens per image (576 at 384 px)."""
    return self.vision.num_patches

  @classmethod
  def from_json(cls, cfg: dict, extra: dict | None = None, tensor_shapes: dict | None = None,
                **llm_overrides) -> "Config":
    """From an original-layout `config.json` (`vision_config`, `aligner_config`, ...).

    Args:
      cfg: the parsed config.json.
      extra: sizes the config cannot express (a fixture's `extra`: `siglip` presets, `vq`).
      tensor_shapes: {torch key: shape}; when given, VQ sizes are derived from the weights.
      llm_overrides: fields of `llama.Config` to replace (e.g. remat_policy).
    """
    if "vision_config" not in cfg or "gen_vision_config" not in cfg:
      raise ValueError("not a Janus config.json: needs vision_config and gen_vision_config "
                       f"(found keys {sorted(cfg)}); JanusFlow checkpoints use janusflow.Config")
    extra = extra or {}
    vp = cfg["vision_config"]["params"]
    vision = siglip.Config.from_preset(vp["model_name"], vp.get("image_size"),
                                       extra.get("siglip"))
    if tensor_shapes is not None:
      vq_shapes = {k[len("gen_vision_model."):]: v for k, v in tensor_shapes.items()
                   if k.startswith("gen_vision_model.")}
      vq_cfg = vq.Config.from_shapes(vq_shapes)
    elif "vq" in extra:
      e = extra["vq"]
      vq_cfg = vq.Config(codebook_size=e["codebook_size"], codebook_dim=e["codebook_dim"],
                         z_channels=e["z_channels"], base_channels=e["base_channels"],
                         ch_mult=tuple(e["ch_mult"]))
    else:
      vq_cfg = vq.get_config("vq16")
    gen = cfg["gen_vision_config"]["params"]
    return cls(
        vision=vision,
        aligner=aligners.Config.from_params(cfg["aligner_config"]["params"]),
        vq=vq_cfg,
        gen_aligner=aligners.Config.from_params(cfg["gen_aligner_config"]["params"]),
        gen_head=gen_head.Config.from_params(cfg["gen_head_config"]["params"]),
        llm=llama.Config.from_hf(cfg["language_config"], **llm_overrides),
        image_token_size=gen["image_token_size"],
        gen_embed_dim=gen["n_embed"],
    )


def check_consistent(model_name: str, checks: dict) -> None:
  """Raises ValueError listing every size of `checks` ({name: (got, expected)}) that disagrees:
  the composite configs' check that their parts fit together."""
  bad = [f"{k}={got} (expected {want})" for k, (got, want) in checks.items() if got != want]
  if bad:
    raise ValueError(f"inconsistent {model_name} config: " + ", ".join(bad))


def _variant(llm_variant: str, d: int, vq_variant: str = "vq16") -> Config:
  vq_cfg = vq.get_config(vq_variant)
  vision = siglip.Config.from_preset("siglip_large_patch16_384")
  return Config(
      vision=vision,
      aligner=aligners.Config(vision.width, d, "mlp_gelu", 2),
      vq=vq_cfg,
      gen_aligner=aligners.Config(vq_cfg.codebook_dim, d, "mlp_gelu", 2),
      gen_head=gen_head.Config(d, d, vq_cfg.codebook_size),
      llm=llama.get_config(llm_variant),
      image_token_size=vq_cfg.codebook_size,
      gen_embed_dim=vq_cfg.codebook_dim,
  )


def get_config(variant: str) -> Config:
  """Released sizes: janus_1_3b, janus_pro_1b, janus_pro_7b; and `tiny` (the fixture's)."""
  if variant in ("janus_1_3b", "janus_pro_1b"):
    return _variant("deepseek_llm_1_3b", 2048)
  if variant == "janus_pro_7b":
    return _variant("deepseek_llm_7b", 4096)
  if variant == "tiny":
    vq_cfg = vq.get_config("tiny")
    vision = siglip.Config(image_size=32, patch_size=8, width=64, depth=2, heads=4)
    return Config(
        vision=vision, aligner=aligners.Config(64, 64), vq=vq_cfg,
        gen_aligner=aligners.Config(vq_cfg.codebook_dim, 64),
        gen_head=gen_head.Config(64, 64, vq_cfg.codebook_size), llm=llama.get_config("tiny"),
        image_token_size=vq_cfg.codebook_size, gen_embed_dim=vq_cfg.codebook_dim)
  raise ValueError(f"unknown Janus variant {variant!r}; known: janus_1_3b, janus_pro_1b, "
                   "janus_pro_7b, tiny")


def merge_embeddings(text_embeds, image_embeds, images_seq_mask, images_emb_mask):
  """Writes image embeddings into the image slots of the text embeddings (jit-friendly).

  Within each row, the k-th True slot of `images_seq_mask` receives the k-th valid image
  embedding (images in order, tokens in order), exactly like the reference's
  `E[images_seq_mask] = image_embeds[images_emb_mask]` when every row has as many slots as valid
  image tokens.

  Args:
    text_embeds: (B, T, D). image_embeds: (B, n, P, D).
    images_seq_mask: (B, T) bool. images_emb_mask: (B, n, P) bool.
  Returns:
    (B, T, D).
  """
  b, n, p, d = image_embeds.shape
  flat = image_embeds.reshape(b, n * p, d)
  valid = images_emb_mask.reshape(b, n * p)
  # Indices of valid image tokens first, in order (stable sort on "is invalid").
  order = jnp.argsort(~valid, axis=1, stable=True)
  rank = jnp.cumsum(images_seq_mask, axis=1) - 1  # (B, T): which valid token each slot takes
  src = jnp.take_along_axis(order, jnp.clip(rank, 0, n * p - 1), axis=1)
  gathered = jnp.take_along_axis(flat, src[..., None], axis=1).astype(text_embeds.dtype)
  return jnp.where(images_seq_mask[..., None], gathered, text_embeds)


class Model(nn.Module):
  """The Janus composite; see the module docstring and each method."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  vision_remat: bool = False

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.vision_model = siglip.Model(c.vision, remat=self.vision_remat, **kw)
    self.aligner = aligners.Model(c.aligner, axes=("vis_embed", "embed"), **kw)
    self.gen_vision_model = vq.Model(c.vq, **kw)
    self.gen_aligner = aligners.Model(c.gen_aligner, axes=(None, "embed"), **kw)
    self.gen_head = gen_head.Model(c.gen_head, **kw)
    self.gen_embed = nn.Embed(
        c.image_token_size, c.gen_embed_dim, embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("vocab", None)), **kw)
    self.language_model = llama.Model(c.llm, **kw)

  def encode_images(self, pixels: jax.Array) -> jax.Array:
    """(B, S, S, 3) normalised pixels -> (B, P, D) aligned understanding embeddings."""
    return self.aligner(self.vision_model(pixels))

  def embed_text(self, ids: jax.Array) -> jax.Array:
    """(B, T) ids -> (B, T, D). Negative ids (image slots) embed as id 0, like the reference."""
    return self.language_model.embed(jnp.maximum(ids, 0))

  def prepare_inputs_embeds(self, input_ids, pixel_values, images_seq_mask, images_emb_mask):
    """Text embeddings with images written into their slots.

    Args:
      input_ids: (B, T) int. pixel_values: (B, n, S, S, 3) normalised (zeros for absent images).
      images_seq_mask: (B, T) bool, the image-token slots. images_emb_mask: (B, n, P) bool.
    Returns:
      (B, T, D).
    """
    b, n = pixel_values.shape[:2]
    img = self.encode_images(pixel_values.reshape((b * n,) + pixel_values.shape[2:]))
    img = img.reshape(b, n, img.shape[1], img.shape[2])
    return merge_embeddings(self.embed_text(input_ids), img, images_seq_mask, images_emb_mask)

  def llm(self, embeds, positions, **kw) -> llama.Output:
    """LLM forward; kw: attn_mask, segment_ids, branch_ids, cache, tap_layer (`llama.Decoder`)."""
    return self.language_model(embeds, positions, **kw)

  def text_logits(self, hidden: jax.Array) -> jax.Array:
    """(B, T, D) -> (B, T, V)."""
    return self.language_model.logits(hidden)

  def gen_logits(self, hidden: jax.Array) -> jax.Array:
    """(B, T, D) -> (B, T, G) image-code logits."""
    return self.gen_head(hidden)

  def embed_image_codes(self, codes: jax.Array) -> jax.Array:
    """(B, T) int codes -> (B, T, D) LLM inputs: gen_aligner(gen_embed(codes))."""
    return self.gen_aligner(self.gen_embed(codes))

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """(B, h*w) int codes -> (B, S, S, 3) pixels in about [-1, 1] (unclipped)."""
    return self.gen_vision_model.decode_code(codes)

  def encode_pixels(self, pixels: jax.Array) -> jax.Array:
    """(B, S, S, 3) pixels in [-1, 1] -> (B, h*w) int32 VQ codes."""
    return self.gen_vision_model.encode(pixels)[1]

  def init_all(self, ids, pixels, vq_pixels):
    """Touches every parameter (use with `init`): ids (B, T), pixels (B, S, S, 3), vq_pixels."""
    h = self.llm(self.embed_text(ids) + self.encode_images(pixels)[:, :1],
                 jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)).hidden
    codes = self.encode_pixels(vq_pixels)
    return (self.text_logits(h), self.gen_logits(h + self.embed_image_codes(ids)),
            self.decode_codes(codes))


def init_inputs(config: Config, batch: int = 1):
  """Dummy arguments for `Model.init(..., method=Model.init_all)`."""
  # The VQ is fully convolutional: the smallest image its downsampling accepts is enough.
  s, vq_s = config.vision.image_size, config.vq.downsample_factor
  return (jnp.zeros((batch, 4), jnp.int32), jnp.zeros((batch, s, s, 3), jnp.float32),
          jnp.zeros((batch, vq_s, vq_s, 3), jnp.float32))


def abstract_params(config: Config, dtype=jnp.float32, param_dtype=jnp.float32):
  """Boxed (logically partitioned) parameter ShapeDtypeStructs, without allocating."""
  model = Model(config, dtype, param_dtype)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *init_inputs(config),
                                           method=Model.init_all))["params"]
