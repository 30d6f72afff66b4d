"""Fixture cases for the samplers: greedy chat decoding and guided text-to-image.

`CASES[name](model, params, case)` runs our code on a fixture case's inputs (fixture layout:
NCHW pixels, int64 ids) and returns its outputs in the fixture's layout and names, for the
parity CLI (`python -m janus_jax.parity DIR`) to compare: tokens exactly, logits and pixels
within the case's tolerances.
"""

import jax
import jax.numpy as jnp
import numpy as np

from janus_jax.sampling import image_ar
from janus_jax.sampling import samplers
from janus_jax.sampling import text


def und_greedy(model, params, case) -> dict:
  """Greedy decoding of `max_new_tokens` from a left-padded image+text prompt, no EOS stop."""
  x = case.inputs
  n = int(x["max_new_tokens"])
  tokens, _, logits = text.decode(
      model, params, jnp.asarray(x["input_ids"], jnp.int32), jnp.asarray(x["attention_mask"]),
      jnp.asarray(np.transpose(x["pixel_values"], (0, 1, 3, 4, 2))),
      jnp.asarray(x["images_seq_mask"]), jnp.asarray(x["images_emb_mask"]), jax.random.key(0),
      jnp.int32(-1), jnp.int32(0), sampler=samplers.Greedy(), max_new_tokens=n,
      return_logits=True)
  return {"tokens": np.asarray(tokens).astype(np.int64), "step_logits": np.asarray(logits)}


def t2i_greedy(model, params, case) -> dict:
  """Guided text-to-image with argmax per step, then the VQ decode (unclipped pixels)."""
  x = case.inputs
  ids = [int(t) for t in np.asarray(x["prompt_ids"]).reshape(-1)]
  codes, logits = image_ar.guided_logits(
      model, params, [ids], num_images=int(x["parallel_size"]), cfg_weight=float(x["cfg_weight"]),
      pad_id=int(x["pad_id"]), num_tokens=int(x["image_tokens"]))
  pixels = model.apply({"params": params}, jnp.asarray(codes), method="decode_codes")
  return {"tokens": codes.astype(np.int64), "step_logits": logits,
          "pixels": np.transpose(np.asarray(pixels, np.float32), (0, 3, 1, 2))}


CASES = {"und_greedy": und_greedy, "t2i_greedy": t2i_greedy}
