"""Training a small VQ-16 image tokenizer from scratch (the embedded demo's `gen_vision_model`).

Letters: B batch, S image side, P = (S / F)^2 codes per image.

The objective is the model's own `vq.Model.loss`: pixel MSE + codebook + commitment terms
(LlamaGen's perceptual and adversarial terms are left out: the shapes world is flat colours on a
flat background, where MSE alone already reconstructs sharp edges). Images arrive as uint8
(B, S, S, 3) and are mapped to [-1, 1], the range `vq.Model` encodes and decodes.

    params = vq_training.train(vq_cfg, images, steps=1500, batch_size=32, lr=1e-3)
    print(vq_training.psnr(vq_cfg, params, test_images))
"""

import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from janus_jax import optim
from janus_jax.models import vq


def to_unit(images: np.ndarray) -> np.ndarray:
  """uint8 (B, S, S, 3) -> float32 in [-1, 1]."""
  return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(pixels) -> np.ndarray:
  """(B, S, S, 3) pixels of about [-1, 1] -> uint8, clipped (how generated images are saved)."""
  return np.asarray(jnp.clip(jnp.round((jnp.asarray(pixels) + 1.0) * 127.5), 0, 255)
                    ).astype(np.uint8)


def init(config: vq.Config, image_size: int, seed: int = 0) -> dict:
  model = vq.Model(config)
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  # Unboxed: the logical-axis metadata would otherwise be saved as {"value": ...} dicts.
  return nn.unbox(model.init(jax.random.key(seed), x, method=vq.Model.init_all)["params"])


def make_step(config: vq.Config, tx: optax.GradientTransformation) -> Callable:
  """Jitted (params, opt_state, pixels (B, S, S, 3) in [-1, 1]) -> (params, opt_state, terms)."""
  model = vq.Model(config)

  def loss_fn(params, pixels):
    return model.apply({"params": params}, pixels, method=vq.Model.loss)

  @jax.jit
  def step(params, opt_state, pixels):
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, pixels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss, **terms}
  return step


def train(config: vq.Config, images: np.ndarray, *, steps: int, batch_size: int = 32,
          lr: float = 1e-3, warmup: int = 100, seed: int = 0, params: dict | None = None,
          log: Callable[[str], None] = print, log_every: int = 100) -> dict:
  """Trains the tokenizer on random batches of `images` (uint8 (N, S, S, 3)); returns params.

  The learning rate warms up linearly, then follows a cosine decay to 10% over `steps`.
  """
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 (N, S, S, 3), got {images.dtype} {images.shape}")
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  params = params if params is not None else init(config, images.shape[1], seed)
  tx = optim.warmup_cosine_adamw(lr, steps, warmup)
  opt_state = tx.init(params)
  step = make_step(config, tx)
  rng = np.random.default_rng([seed, 11])
  start = time.time()
  for i in range(1, steps + 1):
    batch = images[rng.integers(0, len(images), batch_size)]
    params, opt_state, terms = step(params, opt_state, to_unit(batch))
    if i % log_every == 0 or i == steps:
      optim.report_step(log, "vq", i, steps, terms, start)
  return params


def _batched(fn, images: np.ndarray, batch_size: int) -> np.ndarray:
  return np.concatenate([np.asarray(fn(to_unit(images[i:i + batch_size])))
                         for i in range(0, len(images), batch_size)])


def encode(config: vq.Config, params: dict, images: np.ndarray, batch_size: int = 64
           ) -> np.ndarray:
  """uint8 (N, S, S, 3) -> int32 codes (N, P)."""
  model = vq.Model(config)
  fn = jax.jit(lambda x: model.apply({"params": params}, x, method=vq.Model.encode)[1])
  return _batched(fn, images, batch_size).astype(np.int32)


def reconstruct(config: vq.Config, params: dict, images: np.ndarray, batch_size: int = 64
                ) -> np.ndarray:
  """uint8 (N, S, S, 3) -> uint8 reconstructions through the codebook (encode, then decode)."""
  model = vq.Model(config)

  def fn(x):
    codes = model.apply({"params": params}, x, method=vq.Model.encode)[1]
    return model.apply({"params": params}, codes, method=vq.Model.decode_code)
  return to_uint8(_batched(jax.jit(fn), images, batch_size))


def psnr(config: vq.Config, params: dict, images: np.ndarray) -> float:
  """Mean over images of the per-image PSNR (dB, peak 255) of the uint8 reconstructions."""
  recon = reconstruct(config, params, images).astype(np.float64)
  mse = np.mean(np.square(recon - images.astype(np.float64)), axis=(1, 2, 3))
  return float(np.mean(10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))
