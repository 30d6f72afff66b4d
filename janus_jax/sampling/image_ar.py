"""Janus / Janus-Pro text-to-image: autoregressive VQ-code sampling with classifier-free guidance.

Letters: B images (= prompts x images per prompt), R = 2B LLM rows (cond/uncond interleaved),
T padded prompt length, D LLM width, V image codebook size, P image tokens per image (576 for
the released 384x384 models, from the VQ grid in the config), H, W pixel height and width.

The reference (`generation_inference.py`) runs 576 eager steps over copies of one prompt. Here a
request shape is one compiled program: the prompts are left-padded into one batch, the prompt is
prefilled into a static KV cache, and the P steps are a `lax.fori_loop`.

Guidance follows the reference exactly:
  * rows are interleaved: row 2b is image b's conditional row, row 2b+1 its unconditional row;
  * an unconditional row is the prompt with every token but the first (BOS) and the last
    (`<begin_of_image>`) replaced by the pad id, and those in-prompt pads are *attended* (the
    reference passes no attention mask);
  * guided logits = uncond + w * (cond - uncond), computed in float32.
Left padding added to batch prompts of different lengths is masked out, and positions count only
real tokens, so every row computes what it would compute alone.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from janus_jax import errors
from janus_jax import sharding
from janus_jax.models import janus
from janus_jax.models import llama
from janus_jax.sampling import decode_layout
from janus_jax.sampling import samplers

REFERENCE_CFG_WEIGHT = 5.0  # the reference's guidance for Janus / Janus-Pro
REFERENCE_TEMPERATURE = 1.0  # and its image-token temperature


def check_setting(value, name: str) -> float:
  """`value` as a float if it can be a guidance weight or a temperature (a number >= 0, not a
  bool); otherwise a ValueError that names it `name` (e.g. "config.json sampling.cfg_weight")."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
    raise errors.InputError(f"{name} must be a number >= 0, got {value!r}")
  return float(value)


def _recommended(meta: dict, key: str, default: float) -> float:
  value = (meta.get("sampling") or {}).get(key, default)
  return check_setting(value, f"config.json sampling.{key}")


def checkpoint_cfg_weight(meta: dict) -> float:
  """The guidance weight a checkpoint's config.json recommends ("sampling": {"cfg_weight": w},
  as the shapes demo records it), else the reference's 5."""
  return _recommended(meta, "cfg_weight", REFERENCE_CFG_WEIGHT)


def checkpoint_temperature(meta: dict) -> float:
  """The image-token temperature a checkpoint's config.json recommends ("sampling":
  {"temperature": t}, as the shapes demo records it), else the reference's 1."""
  return _recommended(meta, "temperature", REFERENCE_TEMPERATURE)


@dataclasses.dataclass(frozen=True)
class PromptBatch:
  """Host-side LLM inputs for a guided batch.

  tokens: (R, T) int32, left-padded with the pad id. mask: (R, T) bool, False on left padding.
  positions: (R, T) int32, 0..L-1 over each row's real tokens (0 on padding).
  guided: whether rows are interleaved cond/uncond pairs (else every row is conditional).
  """

  tokens: np.ndarray
  mask: np.ndarray
  positions: np.ndarray
  guided: bool


def require_model(model, config_type, needs: str, instead: str) -> None:
  """Raises a TypeError unless `model`'s config is a `config_type`, saying what `needs` it and
  what other models use `instead`."""
  cfg = getattr(model, "config", None)
  if not isinstance(cfg, config_type):
    raise TypeError(f"{needs}; got {type(model).__name__} with config {type(cfg).__name__} "
                    f"({instead})")


def check_model(model) -> None:
  """Raises a clear error unless `model` is a Janus / Janus-Pro model (VQ-token generation)."""
  require_model(model, janus.Config, "autoregressive image generation needs a janus.Model",
                "JanusFlow checkpoints generate with janus_jax.sampling.image_flow")


def check_prompts(prompt_ids, max_len: int | None = None) -> None:
  """Raises ValueError naming the prompt that is empty or longer than `max_len` tokens."""
  if not prompt_ids:
    raise errors.InputError("no prompts given")
  for i, ids in enumerate(prompt_ids):
    if len(ids) == 0:
      raise errors.InputError(f"prompt {i} is empty (no tokens)")
    if max_len is not None and len(ids) > max_len:
      raise errors.InputError(f"prompt {i} has {len(ids)} tokens; at most {max_len} fit in the "
                              "context next to the image tokens")


def prompt_batch(prompt_ids, num_images: int, pad_id: int, guided: bool = True,
                 length_multiple: int = 1) -> PromptBatch:
  """Lays out LLM rows for `num_images` images per prompt (prompt-major order).

  Args:
    prompt_ids: list of token-id lists, each ending in `<begin_of_image>` (BOS first).
    num_images: images per prompt (the reference's `parallel_size`).
    pad_id: the `<｜▁pad▁｜>` id, used both for left padding and for the unconditional rows.
    guided: add an unconditional row after every conditional row.
    length_multiple: pad T up to a multiple of this (fewer distinct shapes to compile; the
      extra left padding is masked, so results do not change).
  """
  check_prompts(prompt_ids)
  if num_images < 1:
    raise errors.InputError(f"num_images must be >= 1, got {num_images}")
  t = -(-max(len(ids) for ids in prompt_ids) // length_multiple) * length_multiple
  copies = 2 if guided else 1
  r = len(prompt_ids) * num_images * copies
  tokens = np.full((r, t), pad_id, np.int32)
  mask = np.zeros((r, t), bool)
  row = 0
  for ids in prompt_ids:
    ids = np.asarray(ids, np.int32)
    for _ in range(num_images):
      for c in range(copies):
        tokens[row, t - len(ids):] = ids
        if c == 1:  # unconditional: keep only BOS and <begin_of_image>
          tokens[row, t - len(ids) + 1:t - 1] = pad_id
        mask[row, t - len(ids):] = True
        row += 1
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  return PromptBatch(tokens, mask, positions, guided)


def put_rows(mesh, *arrays):
  """Splits each array's rows over the mesh's batch axes (data parallel), when they divide."""
  if mesh is None or arrays[0].shape[0] % sharding.batch_divisor(mesh):
    return arrays
  return tuple(jax.device_put(x, sharding.batch_sharding(mesh, x.ndim)) for x in arrays)


def call(model, params, method: str, *args, **kw):
  """`model.apply` of one named method on `params` (the samplers' calls into the model)."""
  return model.apply({"params": params}, *args, method=method, **kw)


def guide(logits: jax.Array, cfg_weight) -> jax.Array:
  """(R, V) interleaved cond/uncond logits -> (R/2, V) float32 uncond + w * (cond - uncond)."""
  logits = logits.astype(jnp.float32).reshape(logits.shape[0] // 2, 2, logits.shape[-1])
  cond, uncond = logits[:, 0], logits[:, 1]
  return uncond + cfg_weight * (cond - uncond)


# XLA:CPU hands float32 dots to YNNPACK by default (jaxlib 0.10). For the decode loops' products
# of a few rows by wide weights its own Eigen dots were faster on the bench host (a whole image
# step 40 -> 31 ms, docs/performance.md), so the decode loops compile without YNN dots.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def decode_jit(**jit_kwargs):
  """`jax.jit(fn, **jit_kwargs)`, compiled with `CPU_COMPILER_OPTIONS` on the CPU backend.

  An XLA that does not take the options (they are experimental) compiles without them, and so
  does a call inside another trace (`jit`, `scan`, `grad`): only a top-level jit takes options.
  """
  def wrap(fn):
    plain = jax.jit(fn, **jit_kwargs)
    tuned = jax.jit(fn, compiler_options=CPU_COMPILER_OPTIONS, **jit_kwargs)
    use_tuned = [True]

    @functools.wraps(fn)
    def call(*args, **kw):
      if (use_tuned[0] and jax.default_backend() == "cpu"
          and not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kw)))):
        try:
          return tuned(*args, **kw)
        except ValueError as e:  # traced through a closure only: not a top-level jit
          if "compiler_options" not in str(e):
            raise
        except jax.errors.JaxRuntimeError as e:
          message = str(e)
          if "compile option" not in message and not any(k in message
                                                         for k in CPU_COMPILER_OPTIONS):
            raise
          use_tuned[0] = False
      return plain(*args, **kw)
    return call
  return wrap


@decode_jit(static_argnames=("model", "sampler", "num_tokens", "guided", "return_logits",
                             "segments"))
def sample_codes(model, params, tokens, mask, positions, rng, cfg_weight, *, sampler,
                 num_tokens: int, guided: bool = True, return_logits: bool = False,
                 segments: int = 8):
  """Prefills the prompts and samples `num_tokens` image codes per image.

  Args:
    model: a `janus.Model` (static). params: its parameters.
    tokens, mask, positions: (R, T) from `prompt_batch`.
    rng: PRNG key; step i draws with `fold_in(rng, i)`.
    cfg_weight: float scalar (traced: changing it does not recompile).
    sampler: a `samplers` dataclass (static).
    num_tokens: P, image tokens per image.
    guided: rows are cond/uncond pairs (else plain conditional sampling, B = R).
    return_logits: also return the per-step (guided) logits.
    segments: the steps run as this many loops over a growing cache
      (`llama.segment_capacities`): more read less of the cache per step and compile longer.
  Returns:
    codes (B, P) int32 and, with `return_logits`, logits (B, P, V) float32 (else None).
  """
  if num_tokens < 1 or segments < 1:
    raise errors.InputError(f"num_tokens and segments must be >= 1, got {num_tokens} and "
                            f"{segments}")
  params = decode_layout.decode_layout(params, dtype=model.dtype)  # once, before the loops
  r, t = tokens.shape
  b = r // 2 if guided else r
  # P - 1 LLM steps after the prefill; the code drawn last is never fed back (as the reference).
  # Step i writes slot t + i.
  sizes = llama.segment_capacities(t, t + num_tokens - 1, segments) if num_tokens > 1 else [t]
  cache = llama.init_cache(model.config.llm, r, sizes[0], model.dtype)
  out = call(model, params, "llm", call(model, params, "embed_text", tokens), positions,
              attn_mask=mask, cache=cache)
  next_pos = positions[:, -1:] + 1  # (R, 1): where each row's first image token goes
  ones = jnp.ones((r, 1), bool)

  def pick(i, hidden, codes, logits_out):
    logits = call(model, params, "gen_logits", hidden)[:, 0]  # (R, 1, D) -> (R, V)
    logits = guide(logits, cfg_weight) if guided else logits.astype(jnp.float32)
    code = sampler.get_next_tokens(logits, jax.random.fold_in(rng, i))  # (B,)
    codes = codes.at[:, i].set(code)
    if return_logits:
      logits_out = logits_out.at[:, i].set(logits)
    return code, codes, logits_out

  def step(i, carry):
    cache, hidden, codes, logits_out = carry
    code, codes, logits_out = pick(i, hidden, codes, logits_out)
    row_codes = jnp.repeat(code, 2) if guided else code  # both rows of a pair get the code
    embeds = call(model, params, "embed_image_codes", row_codes[:, None])
    out = call(model, params, "llm", embeds, next_pos + i, attn_mask=ones, cache=cache)
    return out.cache, out.hidden, codes, logits_out

  codes = jnp.zeros((b, num_tokens), jnp.int32)
  logits_out = None
  if return_logits:
    logits_out = jnp.zeros((b, num_tokens, model.config.image_token_size), jnp.float32)
  carry = (out.cache, out.hidden[:, -1:], codes, logits_out)
  done = 0
  for size in sizes:
    cache = llama.grow_cache(carry[0], size)
    carry = jax.lax.fori_loop(done, size - t, step, (cache,) + carry[1:])
    done = size - t
  _, hidden, codes, logits_out = carry
  _, codes, logits_out = pick(num_tokens - 1, hidden, codes, logits_out)
  return codes, logits_out


def to_uint8(pixels: jax.Array) -> jax.Array:
  """Pixels ~[-1, 1] -> uint8 as the reference: clip((x + 1) / 2 * 255, 0, 255), truncated."""
  x = jnp.clip((pixels.astype(jnp.float32) + 1) / 2 * 255, 0, 255)
  return jnp.floor(x).astype(jnp.uint8)  # floor == truncation on [0, 255]


@functools.partial(jax.jit, static_argnames=("model",))
def decode_images(model, params, codes):
  """(B, P) codes -> (B, H, W, 3) uint8 images through the VQ decoder."""
  return to_uint8(call(model, params, "decode_codes", codes))


def image_tokens(model, image_size: int | None = None) -> int:
  """P, image tokens per `image_size`-pixel square image: its VQ grid (24 x 24 = 576 at 384).

  None: the model's own, as many as an understanding image has (`config.image_tokens`: 576
  for the released models, 36 for the 48-pixel demo), the count it was trained to draw.
  """
  if image_size is None:
    return model.config.image_tokens
  f = model.config.vq.downsample_factor
  if image_size % f:
    raise errors.InputError(f"image_size {image_size} is not a multiple of the VQ "
                            f"downsampling {f}")
  return (image_size // f) ** 2


def image_size(model) -> int:
  """The side in pixels of the images the model draws by default (`image_tokens(model)`)."""
  grid = math.isqrt(model.config.image_tokens)
  if grid * grid != model.config.image_tokens:
    raise errors.InputError(f"the model's {model.config.image_tokens} image tokens are not a "
                            "square grid: give the image size")
  return grid * model.config.vq.downsample_factor


@dataclasses.dataclass
class Result:
  """codes: (B, P) int32; images: (B, H, W, 3) uint8 or None; B = prompts x num_images."""

  codes: np.ndarray
  images: np.ndarray | None


def generate(model, params, prompt_ids, *, num_images: int = 1, cfg_weight: float | None = 5.0,
             sampler=samplers.Sampling(), rng, pad_id: int, num_tokens: int | None = None,
             decode: bool = True, length_multiple: int = 1, mesh=None) -> Result:
  """Text-to-image for a batch of (possibly different) prompts.

  Args:
    model, params: a `janus.Model` and its parameters.
    prompt_ids: list of B_p token-id lists (chat-formatted prompt + `<begin_of_image>`).
    num_images: images per prompt; outputs are prompt-major (prompt 0's images first).
    cfg_weight: guidance weight w (reference default 5); None turns guidance off (no
      unconditional rows, half the compute).
    sampler: `samplers.Greedy()` / `samplers.Sampling(...)`.
    rng: PRNG key; the same key, prompts and settings give the same images.
    pad_id: the pad token id (look it up by name in the tokenizer).
    num_tokens: image tokens per image (default: the VQ grid of the config).
    decode: also run the VQ decoder.
    length_multiple: pad prompt lengths up to a multiple of this (fewer compiled shapes).
    mesh: when given, the LLM rows are split over its batch axes (call inside
      `sharding.activate(mesh, rules)` with params placed by the same rules).
  Returns:
    `Result` with codes (B_p * num_images, P) and uint8 images (B_p * num_images, H, W, 3).
  """
  check_model(model)
  num_tokens = num_tokens or image_tokens(model)
  context = model.config.llm.max_position_embeddings
  if num_tokens >= context:
    raise errors.InputError(f"{num_tokens} image tokens per image do not fit in the model context "
                            f"of {context} tokens (image size too large for this model?)")
  check_prompts(prompt_ids, max_len=context - num_tokens)
  batch = prompt_batch(prompt_ids, num_images, pad_id, guided=cfg_weight is not None,
                       length_multiple=length_multiple)
  tokens, mask, positions = put_rows(mesh, batch.tokens, batch.mask, batch.positions)
  codes, _ = sample_codes(model, params, tokens, mask, positions, rng,
                          jnp.float32(cfg_weight if cfg_weight is not None else 1.0),
                          sampler=sampler, num_tokens=num_tokens, guided=batch.guided)
  images = decode_images(model, params, codes) if decode else None
  return Result(np.asarray(codes), None if images is None else np.asarray(images))


def guided_logits(model, params, prompt_ids, *, num_images: int, cfg_weight: float,
                  pad_id: int, num_tokens: int | None = None):
  """Greedy guided decoding that also returns the per-step guided logits (parity checks).

  Returns codes (B, P) int32 and logits (B, P, V) float32; logits[:, i] chose codes[:, i].
  """
  num_tokens = num_tokens or image_tokens(model)
  batch = prompt_batch(prompt_ids, num_images, pad_id, guided=True)
  codes, logits = sample_codes(model, params, batch.tokens, batch.mask, batch.positions,
                               jax.random.key(0), jnp.float32(cfg_weight),
                               sampler=samplers.Greedy(), num_tokens=num_tokens, guided=True,
                               return_logits=True)
  return np.asarray(codes), np.asarray(logits)
