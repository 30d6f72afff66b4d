"""Device mesh, logical-to-mesh axis rules and multi-host helpers for training.

Models only ever name *logical* axes (see `janus_jax.models.layers`); this file is the one place
where those names meet the physical mesh axes:

  data    pure data parallelism (parameters replicated),
  fsdp    data parallelism with parameters and optimizer state sharded over it (ZeRO-3),
  tensor  Megatron-style tensor parallelism over heads / FFN / vocab.

The mapping lives in the config (`config.sharding.rules`), maxtext style, so a run can move a
logical axis to another mesh axis without touching model code. A dimension whose size the chosen
mesh axes do not divide is replicated instead of failing (tiny test models have 4-channel convs).
"""

import contextlib
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension of every input is split over both

# Logical name -> mesh axis (or tuple of mesh axes, or None for replicated).
DEFAULT_RULES = (
    # Activations.
    ("act_batch", BATCH_AXES),
    ("act_len", None),
    ("act_emb", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    # LLM parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    # Vision towers and convolutions.
    ("vis_embed", "fsdp"),
    ("vis_mlp", "tensor"),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("norm", None),
)


def make_mesh(shape: Sequence[int], devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh; one entry of `shape` may be -1 to take the remaining devices.

  Args:
    shape: three sizes, e.g. (1, -1, 1) for pure FSDP over every device.
    devices: defaults to `jax.devices()` (all processes).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = [int(s) for s in shape]
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh shape {shape}: {len(devices)} devices not divisible by {known}")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices, have {len(devices)}")
  if len(devices) > 1 and devices[0].platform != "cpu":
    dev_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
  else:
    dev_array = np.asarray(devices).reshape(shape)
  return jax.sharding.Mesh(dev_array, MESH_AXES)


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh, rules):
  """Mesh + logical rules in scope while tracing, so `nn.with_logical_constraint` binds."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def rules_from_config(rules) -> tuple:
  """Normalises config rules (lists from ml_collections) to flax's tuple-of-pairs form."""
  if rules is None:
    return DEFAULT_RULES
  out = []
  for name, axes in rules:
    if isinstance(axes, list):
      axes = tuple(axes)
    if axes is not None and not isinstance(axes, (str, tuple)):
      raise ValueError(f"logical axis rule {name!r}: bad mesh axes {axes!r}")
    for a in (axes,) if isinstance(axes, str) else (axes or ()):
      if a not in MESH_AXES:
        raise ValueError(f"logical axis rule {name!r} names unknown mesh axis {a!r}")
    out.append((name, axes))
  return tuple(out)


def _fit_spec(spec: jax.sharding.PartitionSpec, shape, mesh) -> jax.sharding.PartitionSpec:
  """Drops mesh axes that do not divide their dimension (that dimension is then replicated)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    fitted.append(axes if names and dim % size == 0 else None)
  return jax.sharding.PartitionSpec(*fitted)


def logical_shardings(boxed_tree, mesh: jax.sharding.Mesh, rules) -> Any:
  """NamedShardings for a tree of (possibly) `nn.Partitioned` leaves, e.g. `jax.eval_shape(init)`.

  Leaves without logical names (optimizer counters, plain arrays) are replicated.
  """
  specs = nn.get_partition_spec(boxed_tree)  # logical names, per leaf
  mesh_specs = nn.logical_to_mesh(specs, rules)
  shapes = jax.tree_util.tree_map(lambda x: x.shape, nn.unbox(boxed_tree))
  shapes_leaves, treedef = jax.tree_util.tree_flatten(shapes,
                                                      is_leaf=lambda x: isinstance(x, tuple))
  spec_leaves = treedef.flatten_up_to(mesh_specs)
  out = [jax.sharding.NamedSharding(mesh, _fit_spec(s, shape, mesh))
         for s, shape in zip(spec_leaves, shapes_leaves)]
  return jax.tree_util.tree_unflatten(treedef, out)


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 1) -> jax.sharding.NamedSharding:
  """Leading (batch) dimension over (data, fsdp), the rest replicated."""
  return jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def batch_shardings(batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """A `batch_sharding` per array of a batch dict (any leaf with a leading batch dimension)."""
  return jax.tree_util.tree_map(lambda x: batch_sharding(mesh, np.ndim(x)), batch)


def batch_divisor(mesh: jax.sharding.Mesh) -> int:
  """The global batch must be a multiple of this (the size of the batch mesh axes)."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def global_batch(local_batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """Assembles the global batch from this process's rows (multi-host data loading).

  Every process passes its own `(B / process_count, ...)` numpy rows; the result is a dict of
  global `(B, ...)` jax.Arrays sharded along the batch axes. On one process this is a device_put.
  """
  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)
  return jax.tree_util.tree_map(one, local_batch)


def local_rows(global_size: int) -> slice:
  """The rows of a global batch this process feeds (contiguous blocks in process order)."""
  n = jax.process_count()
  if global_size % n:
    raise ValueError(f"global batch {global_size} not divisible by {n} processes")
  per = global_size // n
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def like_params(tree, params_shardings, mesh: jax.sharding.Mesh) -> Any:
  """Shardings for a tree holding copies of parameters (optimizer moments, EMA).

  A leaf whose trailing dict-key path and shape equal a parameter's gets that parameter's
  sharding; everything else (step counters, scalars) is replicated. Matching by path rather
  than by tree structure copes with `optax.multi_transform`'s masked sub-states.
  """
  flat = {}
  for path, s in jax.tree_util.tree_flatten_with_path(params_shardings)[0]:
    flat[tuple(getattr(k, "key", k) for k in path)] = s

  def pick(path, leaf):
    keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
    for i in range(len(keys)):
      s = flat.get(keys[i:])
      if s is not None and len(s.spec) <= len(leaf.shape):
        return s
    return replicated(mesh)
  return jax.tree_util.tree_map_with_path(pick, tree)
