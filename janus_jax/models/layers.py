"""Primitive layers shared by every Janus component.

Each layer takes `dtype` (compute) and `param_dtype` (storage). Parameters are created through
`nn.with_logical_partitioning`, so every weight carries logical axis names; `janus_jax.sharding`
maps those names to mesh axes. Norm statistics are always computed in float32.

Logical parameter axes used across the package:
  vocab, embed (LLM width), mlp (LLM FFN), heads, kv_heads, head_dim, layers (scan axis),
  vis_embed / vis_mlp (understanding encoder), conv_in / conv_out (conv kernels), norm.
"""

from collections.abc import Mapping
import functools
import logging
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
_log = logging.getLogger(__name__)


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
  also on a kernel stored as column `Blocks` or packed `Panels`."""

  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = param(self, "kernel", self.kernel_init, (x.shape[-1], self.features),
                   self.param_dtype)
    x = x.astype(self.dtype)
    dims = (((x.ndim - 1,), (0,)), ((), ()))
    kernel = kernel.astype(self.dtype)
    if isinstance(kernel, Blocks) and kernel.axis != 1:
      raise ValueError(f"{self.path}/kernel: blocks along axis {kernel.axis}; a dense "
                       "kernel is cut along its output axis 1")
    if isinstance(kernel, Panels):
      y = kernel.product(x)
    else:
      y = blockwise(lambda k: jax.lax.dot_general(x, k, dims), kernel, -1)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


@jax.tree_util.register_pytree_node_class
class Blocks:
  """A weight held as contiguous blocks along one of its output axes (see `block_kernels`).

  `parts` concatenated along `axis` are the weight. Layers that read their kernels through
  `param` and multiply through `einsum` take either form.
  """

  def __init__(self, parts, axis: int):
    self.parts, self.axis = tuple(parts), axis

  def tree_flatten(self):
    return self.parts, self.axis

  @classmethod
  def tree_unflatten(cls, axis, parts):
    return cls(parts, axis)

  @property
  def shape(self) -> tuple[int, ...]:
    shape = list(self.parts[0].shape)
    shape[self.axis] = sum(p.shape[self.axis] for p in self.parts)
    return tuple(shape)

  @property
  def dtype(self):
    return self.parts[0].dtype

  def astype(self, dtype) -> "Blocks":
    return Blocks([p.astype(dtype) for p in self.parts], self.axis)

  def __repr__(self):
    return f"Blocks(shape={self.shape}, axis={self.axis}, parts={len(self.parts)})"


def param(module: nn.Module, name: str, init, shape, dtype):
  """`module.param(name, init, shape, dtype)`, or the `Blocks` / `Panels` stored under `name`
  instead."""
  if module.has_variable("params", name):
    stored = module.get_variable("params", name)
    if isinstance(stored, (Blocks, Panels)):
      if stored.shape != tuple(shape):
        raise ValueError(f"{module.path}/{name}: {type(stored).__name__.lower()} of a "
                         f"{stored.shape} weight where {tuple(shape)} is expected")
      return stored
  return module.param(name, init, shape, dtype)


def einsum(spec: str, x: jax.Array, w, **kw) -> jax.Array:
  """`jnp.einsum(spec, x, w)`; for `Blocks`, one product per block, joined along the output;
  for `Panels`, `Panels.product` between transposes.

  `spec` names every axis explicitly (no ellipsis).
  """
  if isinstance(w, Panels):
    inputs, out = spec.split("->")
    xs, ws = inputs.split(",")
    if kw or len(ws) != len(w.shape):
      raise ValueError(f"einsum {spec!r} on {w!r}: the weight has rank {len(w.shape)}"
                       + (f"; options {sorted(kw)} are not taken on panels" if kw else ""))
    ins, outs = ws[:w.in_rank], ws[w.in_rank:]
    rows = [a for a in xs if a not in ins]
    if sorted(rows + list(outs)) != sorted(out) or sorted(set(xs) - set(rows)) != sorted(ins):
      raise ValueError(f"einsum {spec!r}: a {w!r} weight contracts exactly its first "
                       f"{w.in_rank} axes, which must be the input's only contracted ones")
    x = x.transpose([xs.index(a) for a in rows + list(ins)])
    y = w.product(x)  # axes rows + outs
    return y.transpose([(rows + list(outs)).index(a) for a in out])
  out_axis = None
  if isinstance(w, Blocks):
    inputs, out = spec.split("->")
    out_axis = out.index(inputs.split(",")[1][w.axis])  # the weight's subscripts are explicit
  return blockwise(lambda p: jnp.einsum(spec, x, p, **kw), w, out_axis)


def blockwise(product, w, out_axis):
  """`product(w)`; for `Blocks`, `product` of each block joined along the output's `out_axis`."""
  if not isinstance(w, Blocks):
    return product(w)
  return jnp.concatenate([product(p) for p in w.parts], axis=out_axis)


@jax.tree_util.register_pytree_node_class
class Panels:
  """A weight packed for the CPU decode product (`cpu_kernels.panel_matmul`; see
  `panel_kernels`).

  The weight of `shape` has `in_rank` leading (contracted) axes and output axes after them;
  flattened to (K, N), its columns are stored as `data`, (P, K, C): P contiguous panels of C
  columns, the last zero-padded.
  """

  def __init__(self, data, shape, in_rank: int):
    self.data, self.shape, self.in_rank = data, tuple(shape), in_rank

  def tree_flatten(self):
    return (self.data,), (self.shape, self.in_rank)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(children[0], *aux)

  @property
  def dtype(self):
    return self.data.dtype

  def astype(self, dtype) -> "Panels":
    return self if dtype == self.data.dtype else Panels(self.data.astype(dtype), self.shape,
                                                        self.in_rank)

  def __repr__(self):
    return f"Panels(shape={self.shape}, in_rank={self.in_rank}, data={self.data.shape})"

  @classmethod
  def pack(cls, w, in_rank: int, columns: int) -> "Panels":
    """`w` packed in panels of `columns` output columns."""
    return cls(_pack(w, in_rank, columns), w.shape, in_rank)

  def unpack(self) -> jax.Array:
    """The weight as one array of `shape` again."""
    k, n = self._sizes()
    return self.data.transpose(1, 0, 2).reshape(k, -1)[:, :n].reshape(self.shape)

  def _no_kernel(self, dtype) -> str:
    """Why the CPU product cannot multiply these panels by `dtype` rows ('' if it can)."""
    from janus_jax.models import cpu_kernels  # noqa: PLC0415
    if not dtype == self.data.dtype == jnp.float32:  # (Dense casts the panels to its dtype)
      return (f"{jnp.dtype(dtype).name} rows (the CPU product multiplies float32 only; "
              "llama.decode_layout(..., dtype=) leaves the kernels for other dtypes in blocks)")
    if jax.default_backend() != "cpu":
      return f"the default backend is {jax.default_backend()}, not the CPU"
    if not cpu_kernels.available():
      return f"the CPU product is unavailable ({cpu_kernels.unavailable_reason()})"
    if cpu_kernels.panel_columns() != self.data.shape[-1]:
      return (f"panels of {self.data.shape[-1]} columns, where this build's CPU product takes "
              f"{cpu_kernels.panel_columns()}")
    return ""

  def _sizes(self) -> tuple[int, int]:
    return (int(np.prod(self.shape[:self.in_rank])), int(np.prod(self.shape[self.in_rank:])))

  def product(self, x: jax.Array) -> jax.Array:
    """x (..., *shape[:in_rank]) times the weight -> (..., *shape[in_rank:]):
    `cpu_kernels.panel_matmul` for float32 on the CPU, else an XLA product over the panels (in
    the dtype x and the data promote to). The panel product also serves prefills: one core,
    1024 x 4096 weight, it measured 20.5 ms against XLA's dot's 22.8 ms for 256 rows and
    within 3% of it for 576-1200 rows; the XLA product over panels is slower than both."""
    from janus_jax.models import cpu_kernels  # noqa: PLC0415  (builds the kernel on first use)
    k, n = self._sizes()
    if x.shape[x.ndim - self.in_rank:] != self.shape[:self.in_rank]:
      raise ValueError(f"{self!r}: cannot multiply input of shape {x.shape}")
    lead = x.shape[:x.ndim - self.in_rank]
    x = x.reshape(-1, k)
    if not (why := self._no_kernel(x.dtype)):
      y = cpu_kernels.panel_matmul(x, self.data, n)
    else:
      _warn_once(f"Panels.product: {why}; XLA multiplies over the panels instead, slower than "
                 "over column blocks")
      y = jnp.einsum("MK,PKC->MPC", x, self.data).reshape(x.shape[0], -1)[:, :n]
    return y.reshape(lead + self.shape[self.in_rank:])


@functools.cache
def _warn_once(message: str) -> None:
  _log.warning(message)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pack(w, in_rank: int, columns: int):
  k, n = int(np.prod(w.shape[:in_rank])), int(np.prod(w.shape[in_rank:]))
  p = -(-n // columns)
  flat = jnp.pad(w.reshape(k, n), ((0, 0), (0, p * columns - n)))
  return flat.reshape(k, p, columns).transpose(1, 0, 2)


# Projection kernels by parameter name: (rank, the output axis to cut). Dense kernels are
# (in, out); the LLM's attention kernels keep their head axes: q/k/v (D, N, H), o (N, H, D).
_CUT_AXIS = {"kernel": (2, 1), "q_proj": (3, 1), "k_proj": (3, 1), "v_proj": (3, 1),
             "o_proj": (3, 2)}


def block_kernels(params, columns: int, free: bool = False):
  """`params` with every projection kernel wider than `columns` cut into column `Blocks`.

  For decoding on CPU. There a product of a few rows by a wide row-major (in, out) matrix runs
  far below memory bandwidth (the kernel packs panels whose rows lie a whole width apart); the
  same weights as contiguous blocks of ~`columns` output columns, one product each, stream much
  faster (bench/README.md, session 15). Blocks keep whole heads (q/k/v/o). Kernels of another
  rank (convolutions, scanned stacks: `llama.split_layers` first) stay as they are, as does
  everything when `columns` is 0. Each output column is the same dot product as before (equal up
  to the rounding of the kernel XLA picks for each block). `free` deletes each original array
  once cut (outside `jit`: the weights are never held twice).
  """
  if columns < 0:
    raise ValueError(f"block columns must be >= 0 (0: whole kernels), got {columns}")
  if columns == 0:
    return params
  return _map_projections(params, lambda w, rank, axis: _cut(w, rank, axis, columns, free))


def _map_projections(params, replace):
  """`params` with each projection kernel `w` (a whole array named in `_CUT_AXIS`) replaced by
  `replace(w, rank, output axis)`; everything else as it is."""
  if isinstance(params, Mapping):
    return {k: (replace(v, *_CUT_AXIS[k]) if k in _CUT_AXIS and is_array(v)
                else _map_projections(v, replace)) for k, v in params.items()}
  if isinstance(params, (tuple, list)):
    return type(params)(_map_projections(v, replace) for v in params)
  return params


def panel_kernels(params, columns: int, free: bool = False):
  """`params` with every float32 projection kernel (as `block_kernels` picks them) packed in
  `Panels` of `columns` output columns, for the CPU decode product (`cpu_kernels`).

  Kernels placed across several devices stay whole (the FFI call has no partitioning rule), as
  do traced kernels when there are several devices (their placement is unknown), other dtypes
  and kernels already packed or cut. `free` deletes each original array once
  packed (outside `jit`).
  """
  if columns < 1:
    raise ValueError(f"panel columns must be >= 1, got {columns}")

  def pack(w, rank: int, axis: int):
    if not _packable(w, rank):
      return w
    packed = Panels.pack(w, axis, columns)
    if free:
      free_replaced([w], packed.data)
    return packed

  return _map_projections(params, pack)


def _packable(w, rank: int) -> bool:
  if w.ndim != rank or w.dtype != jnp.float32:
    return False
  if isinstance(w, jax.core.Tracer):  # placement unknown: pack only where there is one device
    return jax.device_count() == 1
  sharding = getattr(w, "sharding", None)
  return sharding is None or len(sharding.device_set) == 1


def is_array(x) -> bool:
  """A whole array (device or NumPy), not a `Blocks` or a nested tree."""
  return isinstance(x, (jax.Array, np.ndarray))


def free_replaced(originals, replacement) -> None:
  """Deletes the device arrays in `originals` once `replacement` (a tree made from them) is
  computed, so a layout change never holds the weights twice; does nothing under a trace."""
  if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((originals, replacement))):
    return
  jax.block_until_ready(replacement)
  for w in originals:
    if isinstance(w, jax.Array):
      w.delete()


def _cut(w, rank: int, axis: int, columns: int, free: bool):
  if w.ndim != rank:
    return w
  unit = int(np.prod(w.shape[axis + 1:]))  # columns per index along `axis` (a head's width)
  n = min(w.shape[axis], -(-w.shape[axis] * unit // columns))
  if n <= 1:
    return w
  base, extra = divmod(w.shape[axis], n)
  bounds = np.cumsum([0] + [base + (i < extra) for i in range(n)])
  parts = [jax.lax.slice_in_dim(w, int(a), int(b), axis=axis) for a, b in zip(bounds, bounds[1:])]
  if free:
    free_replaced([w], parts)
  return Blocks(parts, axis)


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
