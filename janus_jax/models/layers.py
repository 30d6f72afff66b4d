"""Primitive layers shared by every Janus component.

Each layer takes `dtype` (compute) and `param_dtype` (storage). Parameters are created through
`nn.with_logical_partitioning`, so every weight carries logical axis names; `janus_jax.sharding`
maps those names to mesh axes. Norm statistics are always computed in float32.

Logical parameter axes used across the package:
  vocab, embed (LLM width), mlp (LLM FFN), heads, kv_heads, head_dim, layers (scan axis),
  vis_embed / vis_mlp (understanding encoder), conv_in / conv_out (conv kernels), norm.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as `torch.nn.GELU()`; flax's default is the tanh approximation."""
  return jax.nn.gelu(x, approximate=False)


def dense(features, axes=(None, None), *, use_bias=True, dtype=jnp.float32,
          param_dtype=jnp.float32, name=None, kernel_init=nn.initializers.lecun_normal()):
  """A plain dense layer (params `kernel`, `bias` directly under `name`) with logical axes."""
  return Dense(
      features,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(kernel_init, tuple(axes)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, tuple(axes)[-1:]),
      name=name,
  )


class Dense(nn.Module):
  """`nn.Dense`'s computation (inputs, kernel and bias cast to `dtype`, then x @ kernel + bias),
  with the kernel read by `kernel` and multiplied by `einsum`."""

  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = kernel(self, "kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
    lead = "ABCEFGHIJLMOPQRSUVWXYZ"[:x.ndim - 1]
    y = einsum(f"{lead}D,DK->{lead}K", x.astype(self.dtype), w.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class PackedWeight:
  """A weight stored in a backend's own layout and multiplied by that backend's own product.

  The seam between the architecture and backend-specific products (`janus_jax.kernels`):
  the model files multiply every weight through `einsum` and read every projection kernel
  through `kernel`, so a parameter tree whose kernels were replaced by packed weights (by
  `janus_jax.sampling.decode_layout`) runs the same model on the backend's product, as a
  quantisation library hands a layer its own `dot_general`. Subclasses are pytrees with the
  weight's logical `shape` and `dtype`, `astype(dtype)` and `einsum(spec, x)`, equal to
  `jnp.einsum(spec, x, weight)`.
  """

  shape: tuple[int, ...]

  @property
  def dtype(self):
    raise NotImplementedError

  def astype(self, dtype) -> "PackedWeight":
    raise NotImplementedError

  def einsum(self, spec: str, x: jax.Array) -> jax.Array:
    raise NotImplementedError


def kernel(module: nn.Module, name: str, init, shape, dtype):
  """`module.param(name, init, shape, dtype)`, or the `PackedWeight` stored under `name` (its
  logical shape checked against `shape`)."""
  if module.has_variable("params", name):
    stored = module.get_variable("params", name)
    if isinstance(stored, PackedWeight):
      if tuple(stored.shape) != tuple(shape):
        raise ValueError(f"{module.path}/{name}: a packed {stored.shape} weight where "
                         f"{tuple(shape)} is expected")
      return stored
  return module.param(name, init, shape, dtype)


def einsum(spec: str, x: jax.Array, w) -> jax.Array:
  """`jnp.einsum(spec, x, w)` for a weight `w`, or `w.einsum(spec, x)` when it is a
  `PackedWeight`. `spec` names every axis explicitly (no ellipsis)."""
  if isinstance(w, PackedWeight):
    return w.einsum(spec, x)
  return jnp.einsum(spec, x, w)


def is_array(x) -> bool:
  """A whole array (device or NumPy), not a `PackedWeight` or a nested tree."""
  return isinstance(x, (jax.Array, np.ndarray))


def conv(features, kernel_size: Sequence[int], *, strides=1, padding="SAME", groups=1,
         use_bias=True, dtype=jnp.float32, param_dtype=jnp.float32, name=None):
  """`nn.Conv` on NHWC with logical axes (None, None, conv_in, conv_out).

  `padding` follows flax: "SAME", "VALID" or explicit ((top, bottom), (left, right)).
  """
  if isinstance(strides, int):
    strides = (strides, strides)
  return nn.Conv(
      features,
      tuple(kernel_size),
      strides=strides,
      padding=padding,
      feature_group_count=groups,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
      name=name,
  )


class RMSNorm(nn.Module):
  """HF `LlamaRMSNorm`: float32 statistics, cast back to the input dtype, then times `scale`.

  The cast happens *before* the weight multiply, as in the reference; the product is computed in
  `dtype`.
  """

  eps: float = 1e-6
  axis_name: str | None = "norm"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
        (x.shape[-1],), self.param_dtype)
    in_dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * x32.astype(in_dtype).astype(self.dtype)


def layer_norm(*, eps=1e-6, dtype=jnp.float32, param_dtype=jnp.float32, axis_name="norm",
               name=None):
  """LayerNorm with float32 statistics and logically partitioned scale/bias."""
  return nn.LayerNorm(
      epsilon=eps,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis_name,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,)),
      name=name,
  )


def group_norm(*, groups=32, eps=1e-6, dtype=jnp.float32, param_dtype=jnp.float32, name=None):
  """GroupNorm over NHWC with torch's contiguous channel grouping and float32 statistics."""
  return nn.GroupNorm(
      num_groups=groups,
      epsilon=eps,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
      name=name,
  )
