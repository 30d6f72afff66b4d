"""JanusFlow text-to-image: classifier-free-guided rectified-flow Euler sampling, then VAE decode.

Letters: B images, R = 2B rows (cond then uncond), L prompt prefix slots (left-padded, each
prompt without its last token), Q latent tokens per image, D LLM width, Z latent channels,
h/w latent size.

The algorithm is the reference's (`demo/app_janusflow.py`):
  * rows [cond x B; uncond x B] (halves, not interleaved); an uncond row keeps only its BOS, the
    other prompt tokens become `pad_id` and are masked out;
  * the prompt's last token (the generation tag) is dropped; each step appends `t_emb` and the
    Q latent tokens; positions are 0.. per prompt (left padding shifts them, see `prompt_rows`);
  * step s of N: `t = s / N * 1000` (rounded to the model dtype), `v = w v_cond - (w - 1)
    v_uncond`, `z += dt v` with `dt = 1/N` in the integration dtype;
  * image = `vae.decode(z / scaling_factor)`, clipped, `(x + 1) / 2 * 255` truncated to uint8.

Unlike the reference, which re-runs the whole prompt every step (its cache-keeping loop iterates
over an empty list), the prompt prefix's keys/values are computed once: prefix tokens attend only
within the prefix, so they do not change across steps. Each step runs the 1 + Q new tokens
against that cache. `prefix_cache=False` gives the reference's full recompute, for testing.

The Euler update runs in the model dtype (bf16 in the reference, including `dt = bf16(1/N)`)
unless `integrate_fp32=True`, which keeps z, the guidance combine and dt in float32 while the
network still runs in its own dtype.
"""

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from janus_jax import errors
from janus_jax.convert import vae as vae_convert
from janus_jax.models import janusflow
from janus_jax.models import llama
from janus_jax.models import vae as vae_lib
from janus_jax.sampling import image_ar


@dataclasses.dataclass(frozen=True)
class Prompts:
  """Host-built prompt rows for R = 2B rows.

  ids: (R, L) int32. mask: (R, L) bool, real tokens. offset: (R,) int32 left-padding per row
  (positions are `slot - offset`).
  """

  ids: np.ndarray
  mask: np.ndarray
  offset: np.ndarray


def prompt_rows(prompt_ids_list: Sequence[Sequence[int]], pad_id: int) -> Prompts:
  """Cond rows then uncond rows, left-padded, each prompt without its last token."""
  if not prompt_ids_list:
    raise errors.InputError("prompt_ids_list is empty: give one list of token ids per image")
  prompts = [list(map(int, p)) for p in prompt_ids_list]
  short = [i for i, p in enumerate(prompts) if len(p) < 2]
  if short:
    raise errors.InputError(f"prompts {short} have fewer than 2 tokens; each needs BOS ... and the "
                            "generation tag (which is dropped and replaced by the time token)")
  kept = [p[:-1] for p in prompts]
  length = max(len(p) for p in kept)
  rows, masks, offsets = [], [], []
  for uncond in (False, True):
    for p in kept:
      pad = length - len(p)
      toks = [p[0]] + [pad_id] * (len(p) - 1) if uncond else p
      valid = [True] + [False] * (len(p) - 1) if uncond else [True] * len(p)
      rows.append([pad_id] * pad + toks)
      masks.append([False] * pad + valid)
      offsets.append(pad)
  return Prompts(np.asarray(rows, np.int32), np.asarray(masks, bool),
                 np.asarray(offsets, np.int32))


def check_model(model) -> None:
  """Raises a clear error unless `model` is a JanusFlow model."""
  image_ar.require_model(model, janusflow.Config, "JanusFlow sampling needs a janusflow.Model",
                         "Janus / Janus-Pro checkpoints generate with janus_jax.sampling.image_ar")


def _step_velocity(model, params, z, t_step, prompt_embeds, prompt_mask, positions, cache,
                   cfg_weight, out_dtype):
  """One guided velocity evaluation.

  Args:
    z: (B, h, w, Z). t_step: scalar float32 time x1000. prompt_embeds: (R, L, D) (unused when
    `cache` is given). prompt_mask: (R, L) bool. positions: (R, L + 1 + Q). cache: the prefix
    `llama.Cache` (index L) or None for a full recompute.
  Returns:
    (B, h, w, Z) guided velocity in `out_dtype`.
  """
  mdl = model.dtype
  rows = prompt_mask.shape[0]
  # The reference builds t in the sampling dtype (bf16) before the sinusoid.
  t = jnp.full((rows,), t_step, jnp.float32).astype(mdl)
  z_in = jnp.concatenate([z, z], axis=0).astype(mdl)
  tokens, t_emb, skip = model.apply({"params": params}, z_in, t, method=janusflow.Model.gen_encode)
  new = jnp.concatenate([t_emb[:, None].astype(tokens.dtype), tokens], axis=1)  # (R, 1 + Q, D)
  length = prompt_mask.shape[1]
  new_mask = jnp.ones(new.shape[:2], bool)

  def run(mod):
    if cache is None:
      out = mod.llm(jnp.concatenate([prompt_embeds.astype(new.dtype), new], axis=1), positions,
                    attn_mask=jnp.concatenate([prompt_mask, new_mask], axis=1))
    else:
      out = mod.llm(new, positions[:, length:], attn_mask=new_mask, cache=cache)
    hidden = out.hidden[:, -tokens.shape[1]:]
    return mod.gen_decode(hidden, skip, t_emb)

  v = model.apply({"params": params}, method=run).astype(out_dtype)
  v_cond, v_uncond = jnp.split(v, 2, axis=0)
  w = jnp.asarray(cfg_weight, out_dtype)
  return w * v_cond - (w - 1) * v_uncond


@functools.partial(jax.jit, static_argnames=("model", "steps", "prefix_cache", "integrate_fp32"))
def sample_latents(model: janusflow.Model, params, prompt_ids, prompt_mask, prompt_offset, z0,
                   cfg_weight, *, steps: int, prefix_cache: bool = True,
                   integrate_fp32: bool = False):
  """The jitted Euler loop (`lax.fori_loop` over steps).

  Args:
    model, params: the JanusFlow model and its parameters.
    prompt_ids / prompt_mask / prompt_offset: the `Prompts` fields, (R, L) / (R, L) / (R,).
    z0: (B, h, w, Z) initial noise. cfg_weight: scalar guidance weight w.
    steps: number of Euler steps N. prefix_cache: compute the prompt's KV once (else recompute
    the whole sequence every step, as the reference does). integrate_fp32: see module doc.
  Returns:
    (z_final (B, h, w, Z), first_velocity (B, h, w, Z)): the latent after N steps and the guided
    velocity of step 0, both in the integration dtype.
  """
  params = llama.split_layers(params)  # once, outside the loops
  check_model(model)
  zdt = jnp.float32 if integrate_fp32 else model.dtype
  rows, length = prompt_ids.shape
  q = model.config.gen_tokens(z0.shape[1])
  if z0.shape[1] != z0.shape[2]:
    raise errors.InputError(f"z0 latent must be square, got {z0.shape}")
  total = length + 1 + q
  positions = jnp.maximum(jnp.arange(total)[None] - prompt_offset[:, None], 0)
  embeds = model.apply({"params": params}, prompt_ids, method=janusflow.Model.embed_text)
  cache = None
  if prefix_cache:
    cache = llama.init_cache(model.config.llm, rows, total, model.dtype)
    cache = model.apply({"params": params}, embeds, positions[:, :length], attn_mask=prompt_mask,
                        cache=cache, method=janusflow.Model.llm).cache
  # dt as the reference materialises it: 1/N in the integration dtype.
  dt = jnp.asarray(1.0 / steps, jnp.float32).astype(zdt)

  def velocity(z, step):
    t_step = step.astype(jnp.float32) / steps * 1000.0
    return _step_velocity(model, params, z, t_step, embeds, prompt_mask, positions, cache,
                          cfg_weight, zdt)

  z = z0.astype(zdt)
  v0 = velocity(z, jnp.zeros((), jnp.int32))
  z = z + dt * v0

  def body(step, z):
    return z + dt * velocity(z, step)

  z = jax.lax.fori_loop(1, steps, body, z)
  return z, v0


@functools.partial(jax.jit, static_argnames=("vae_model",))
def decode_latents(vae_model: vae_lib.Model, vae_params, z: jax.Array) -> jax.Array:
  """(B, h, w, Z) flow latents -> (B, H, W, 3) float32 pixels (unclipped), via z / scale."""
  x = vae_lib.to_vae_latents(vae_model.config, z.astype(jnp.float32)).astype(vae_model.dtype)
  return vae_model.apply({"params": vae_params}, x,
                         method=vae_lib.Model.decode).astype(jnp.float32)


def to_uint8(pixels: jax.Array) -> np.ndarray:
  """[-1, 1] float pixels -> uint8 with the reference's truncation (not rounding)."""
  x = np.clip(np.asarray(pixels, np.float32), -1.0, 1.0)
  return ((x + 1) / 2 * 255).astype(np.uint8)


def generate(model: janusflow.Model, params, vae_model: vae_lib.Model, vae_params,
             prompt_ids_list: Sequence[Sequence[int]], *, pad_id: int, cfg_weight: float = 2.0,
             steps: int = 30, seed: int | None = 0, z0: Any = None,
             latent_size: int | None = None, prefix_cache: bool = True,
             integrate_fp32: bool = False) -> np.ndarray:
  """Generates one image per prompt.

  Args:
    model, params: JanusFlow model (its `dtype` is the network's compute dtype) and params.
    vae_model, vae_params: the `vae.Model` (e.g. SDXL, bf16 as in the reference) and params.
    prompt_ids_list: B token-id lists, each `BOS ... <generation tag>` (the tag is dropped);
      lengths may differ (left padding keeps each prompt's own positions).
    pad_id: the tokenizer's pad id (uncond rows and left padding).
    cfg_weight: guidance weight w (reference default 2). steps: Euler steps (30).
    seed / z0: initial noise from `jax.random.normal(key(seed))`, or an explicit (B, h, w, Z).
    latent_size: latent side (default `model.config.gen_latent_size`, 48 = 384 px for SDXL).
    prefix_cache: cache the prompt once (True) or recompute it every step (the reference).
    integrate_fp32: Euler update in float32 while the network runs in `model.dtype`.
  Returns:
    (B, H, W, 3) uint8 images.
  """
  check_model(model)
  cfg = model.config
  vae_convert.check_latent_channels(vae_model.config, cfg.latent_channels, "the JanusFlow model")
  prompts = prompt_rows(prompt_ids_list, pad_id)
  b = len(prompt_ids_list)
  if z0 is None:
    if seed is None:
      raise errors.InputError("give either seed or z0")
    side = latent_size or cfg.gen_latent_size
    z0 = jax.random.normal(jax.random.key(seed), (b, side, side, cfg.latent_channels))
  z0 = jnp.asarray(z0)
  if z0.shape[0] != b or z0.shape[-1] != cfg.latent_channels:
    raise errors.InputError(f"z0 has shape {z0.shape}, expected ({b}, h, w, {cfg.latent_channels})")
  z, _ = sample_latents(model, params, prompts.ids, prompts.mask, prompts.offset, z0,
                        jnp.float32(cfg_weight), steps=steps, prefix_cache=prefix_cache,
                        integrate_fp32=integrate_fp32)
  return to_uint8(decode_latents(vae_model, vae_params, z))
