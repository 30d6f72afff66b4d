"""The image-generation head (`vision_head` in the reference): LLM hidden -> VQ code logits.

Letters: B batch, T tokens, D LLM width, E head width, V codebook size.
`output_mlp_projector` Linear(D->E) -> exact GELU -> `vision_head` Linear(E->V).
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
  n_embed: int  # D, the LLM width
  image_token_embed: int  # E
  image_token_size: int  # V, codebook size

  @classmethod
  def from_params(cls, params: dict) -> "Config":
    return cls(params["n_embed"], params["image_token_embed"], params["image_token_size"])


class Model(nn.Module):
  """(B, T, D) final-normed hidden states -> (B, T, V) logits in `dtype`."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: jax.Array) -> jax.Array:
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.dense(c.image_token_embed, ("embed", "mlp"), name="output_mlp_projector",
                     **kw)(hidden)
    return layers.dense(c.image_token_size, ("mlp", "vocab"), name="vision_head",
                        **kw)(layers.gelu(x))
