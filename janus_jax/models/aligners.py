"""The MLP projectors between towers and the LLM (`MlpProjector` in the reference).

Letters: B batch, T tokens, I input width, D output width.

`mlp_gelu` of depth d is Linear(I->D) followed by d-1 [GELU, Linear(D->D)]; the checkpoint indexes
the Sequential, so the Linears are `layers_0`, `layers_2`, ... (GELUs hold no weights). `linear` is
one Linear named `layers`; `identity` has no parameters.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from janus_jax.models import layers

Dtype = Any
TYPES = ("identity", "linear", "mlp_gelu")


@dataclasses.dataclass(frozen=True)
class Config:
  input_dim: int
  n_embed: int
  projector_type: str = "mlp_gelu"
  depth: int = 2

  def __post_init__(self):
    if self.projector_type not in TYPES:
      raise ValueError(f"projector_type {self.projector_type!r} is not supported; use one of "
                       f"{TYPES}")
    if self.projector_type == "mlp_gelu" and self.depth < 1:
      raise ValueError(f"mlp_gelu depth must be >= 1, got {self.depth}")

  @classmethod
  def from_params(cls, params: dict) -> "Config":
    """From an `aligner_config.params` / `gen_aligner_config.params` dict."""
    return cls(input_dim=params["input_dim"], n_embed=params["n_embed"],
               projector_type=params.get("projector_type", "mlp_gelu"),
               depth=params.get("depth", 1))


class Model(nn.Module):
  """(B, T, I) -> (B, T, D)."""

  config: Config
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axes: tuple[str | None, str | None] = (None, "embed")

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if c.projector_type == "identity":
      return x.astype(self.dtype)
    if c.projector_type == "linear":
      return layers.dense(c.n_embed, self.axes, name="layers", **kw)(x)
    x = layers.dense(c.n_embed, self.axes, name="layers_0", **kw)(x)
    for i in range(1, c.depth):
      x = layers.dense(c.n_embed, ("mlp", "embed"), name=f"layers_{2 * i}", **kw)(
          layers.gelu(x))
    return x
