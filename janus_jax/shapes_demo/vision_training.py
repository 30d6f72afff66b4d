"""Pretraining the embedded demo's understanding encoder on dense scene labels.

The released Janus models start from a pretrained SigLIP encoder and keep it frozen while the
LLM learns to read its features. The shapes demo has no pretrained encoder, and trained only
through the LLM's answer tokens (a few per image) its 2-layer ViT never learned to tell shapes
apart or where they are (ShapesEval "what shape" 0.12, "where" 0.13: chance). So the recipe
gives it a pretraining step of its own, the counterpart of SigLIP's, before the Janus stages:
every patch of an image predicts what the renderer put there.

Letters: B batch, S image side, g = S / patch, P = g * g patches.

Per-patch targets (`patch_labels`), from the scene: the object covering most of the patch (by
anti-aliased coverage, at least `MIN_COVERAGE`), or background, and of that object its colour,
shape, size and grid cell. Class 0 is background in each head. The head is one linear layer on
the encoder's output tokens and is dropped afterwards; only `vision_model` parameters are kept.

    encoder, head = vision_training.train(vision_cfg, images, scenes, steps=600)
    print(vision_training.accuracy(vision_cfg, encoder, head, test_images, test_scenes))
"""

import time
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from janus_jax.data import preprocess
from janus_jax.models import siglip
from janus_jax.shapes_demo.world import world
from janus_jax.train import optim

MIN_COVERAGE = 0.05  # of a patch's area, for the patch to belong to an object
# Head name -> number of classes (background first).
HEADS = {
    "colour": 1 + len(world.COLOURS),
    "shape": 1 + len(world.SHAPES),
    "size": 1 + len(world.SIZES),
    "cell": 1 + world.GRID * world.GRID,
}


def patch_labels(scene: world.Scene, image_size: int, patch: int) -> np.ndarray:
  """int32 (P, len(HEADS)): per patch (row-major, as the encoder's tokens), the class of each
  head; all zeros (background) where no object covers at least `MIN_COVERAGE` of the patch."""
  if image_size % patch:
    raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}")
  g = image_size // patch
  best = np.full((g, g), MIN_COVERAGE, np.float32)
  labels = np.zeros((g, g, len(HEADS)), np.int32)
  colours, shapes, sizes = list(world.COLOURS), list(world.SHAPES), list(world.SIZES)
  for obj in scene.objects:
    cov, rows, cols = world.coverage(obj, image_size)
    full = np.zeros((image_size, image_size), np.float32)
    full[rows, cols] = cov
    frac = full.reshape(g, patch, g, patch).mean(axis=(1, 3))
    take = frac >= best
    best = np.where(take, frac, best)
    labels[take] = (1 + colours.index(obj.colour), 1 + shapes.index(obj.shape),
                    1 + sizes.index(obj.size), 1 + obj.row * world.GRID + obj.col)
  return labels.reshape(g * g, len(HEADS))


def labels_for(scenes: Sequence[world.Scene], image_size: int, patch: int) -> np.ndarray:
  """int32 (N, P, len(HEADS))."""
  return np.stack([patch_labels(s, image_size, patch) for s in scenes])


class Pretrainer(nn.Module):
  """The encoder (`vision_model`, as in `janus.Model`) and a per-patch linear head."""

  config: siglip.Config

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    feats = siglip.Model(self.config, name="vision_model")(pixels)  # (B, P, W)
    return nn.Dense(sum(HEADS.values()), name="head")(feats)  # (B, P, sum classes)


def _split_heads(logits):
  out, start = {}, 0
  for name, n in HEADS.items():
    out[name] = logits[..., start:start + n]
    start += n
  return out


def loss_terms(logits, labels) -> dict:
  """Mean cross-entropy and accuracy of each head over all patches.

  logits (B, P, sum of HEADS' classes), labels int (B, P, len(HEADS)) -> scalars `ce_<head>`,
  `acc_<head>` and their summed `loss`.
  """
  terms = {}
  for k, (name, lg) in enumerate(_split_heads(logits).items()):
    ce = optax.softmax_cross_entropy_with_integer_labels(lg, labels[..., k])
    terms[f"ce_{name}"] = ce.mean()
    terms[f"acc_{name}"] = (lg.argmax(-1) == labels[..., k]).mean()
  terms["loss"] = sum(terms[f"ce_{n}"] for n in HEADS)
  return terms


def pixels(images: np.ndarray) -> np.ndarray:
  """uint8 (B, S, S, 3) -> the understanding path's normalised float32 pixels (at the encoder's
  own resolution no resize or padding applies; see `preprocess.understanding_pixels`)."""
  return preprocess.normalize(images)


def _check(config: siglip.Config, images: np.ndarray, scenes: Sequence[world.Scene]) -> None:
  s = config.image_size
  if images.ndim != 4 or images.dtype != np.uint8 or images.shape[1:] != (s, s, 3):
    raise ValueError(f"images must be uint8 (N, {s}, {s}, 3), got {images.dtype} {images.shape}")
  if len(scenes) != len(images):
    raise ValueError(f"{len(images)} images but {len(scenes)} scenes")


def train(config: siglip.Config, images: np.ndarray, scenes: Sequence[world.Scene], *,
          steps: int, batch_size: int = 64, lr: float = 2e-3, warmup: int = 50, seed: int = 0,
          log: Callable[[str], None] = print, log_every: int = 100) -> tuple[dict, dict]:
  """Trains encoder + head on random batches of `images` (uint8 (N, S, S, 3), S the encoder's
  image size) labelled from `scenes` (one per image); returns their params (`vision_model`,
  `head`)."""
  _check(config, images, scenes)
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  labels = labels_for(scenes, config.image_size, config.patch_size)
  model = Pretrainer(config)
  x0 = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  params = nn.unbox(model.init(jax.random.key(seed), x0)["params"])
  tx = optim.warmup_cosine_adamw(lr, steps, warmup, b2=0.98)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      terms = loss_terms(model.apply({"params": p}, x), y)
      return terms["loss"], terms
    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, terms

  rng = np.random.default_rng([seed, 12])
  start = time.time()
  for i in range(1, steps + 1):
    idx = rng.integers(0, len(images), batch_size)
    params, opt_state, terms = step(params, opt_state, pixels(images[idx]), labels[idx])
    if i % log_every == 0 or i == steps:
      optim.report_step(log, "encoder", i, steps, terms, start, digits=3)
  return params["vision_model"], params["head"]


def accuracy(config: siglip.Config, encoder: dict, head: dict, images: np.ndarray,
             scenes: Sequence[world.Scene], batch_size: int = 128) -> dict[str, float]:
  """Per-head accuracy on `images` (uint8 (N, S, S, 3)) labelled from `scenes`, over object
  patches only (background patches are the easy majority), plus `background`: the fraction of
  background patches predicted as such."""
  _check(config, images, scenes)
  labels = labels_for(scenes, config.image_size, config.patch_size)
  model = Pretrainer(config)
  fn = jax.jit(lambda x: model.apply({"params": {"vision_model": encoder, "head": head}}, x))
  logits = np.concatenate([np.asarray(fn(pixels(images[i:i + batch_size])))
                           for i in range(0, len(images), batch_size)])
  heads = _split_heads(logits)
  on = labels[..., 0] > 0
  out = {}
  for k, (name, lg) in enumerate(heads.items()):
    out[name] = float((lg.argmax(-1) == labels[..., k])[on].mean())
  out["background"] = float((heads["colour"].argmax(-1) == 0)[~on].mean())
  return out
