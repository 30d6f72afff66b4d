"""Parameters laid out for decoding, once, before a sampler's loops.

A decode step multiplies a few rows by every weight of the model, so how the weights are laid
out decides its speed. `decode_layout` turns trained parameters (any tree that holds a LLaMA
decoder: a Janus or JanusFlow model's, or a bare LLM's) into the layout the samplers run on:

  1. the decoder's scanned layers split into one tree per layer (`llama.split_layers`): decoding
     runs the layers one by one, and slicing a layer out of the stack inside the loop copies
     its weights on every step (XLA does not hoist the slice);
  2. in every split layer, the q/k/v kernels (D, N, H) stacked into one `qkv_proj` (D, 3, N, H)
     and gate/up (D, F) into one `gate_up_proj` (D, 2, F), so each layer runs one product where
     it ran three and two (on an H200 the Janus-Pro-7B step took 4.6% less time); on the CPU
     only where they are then packed: XLA:CPU's products on the stacked kernels took a mid-size
     text-to-image run from 14.7 s to 25.4 s;
  3. on the CPU, every float32 projection kernel packed in `kernels.cpu.Panels` for the CPU
     decode product (which reads a weight at close to the memory's streaming rate, where
     XLA:CPU's few-row products reach a third of it).

Each output is the same dot product as before, up to the rounding of the product that computes
it. The layout is idempotent, and works inside `jit` (the samplers apply it to whatever they
are given) or outside, where `free=True` deletes every replaced array as soon as its
replacement exists, so the weights are never held twice (what `sample.py` does at load).
"""

from collections.abc import Mapping
import functools

import jax
import jax.numpy as jnp

from janus_jax.kernels import cpu
from janus_jax.models import layers
from janus_jax.models import llama

# Projection kernels by parameter name: (rank, leading contracted axes). Dense kernels are
# (in, out); the LLM's attention kernels keep their head axes: q/k/v (D, N, H), o (N, H, D).
_PROJECTIONS = {"kernel": (2, 1), "q_proj": (3, 1), "k_proj": (3, 1), "v_proj": (3, 1),
                "o_proj": (3, 2), "qkv_proj": (4, 1), "gate_up_proj": (3, 1)}


def decode_layout(params, *, dtype=None, panels: bool | None = None, free: bool = False):
  """`params` split, stacked and (on the CPU) packed for decoding; see the module docstring.

  Args:
    params: a parameter tree holding a `llama.Decoder`'s parameters (boxed or not).
    dtype: the dtype the model computes in (None: the kernels' own). The CPU product multiplies
      float32 only: kernels of a model that computes in another dtype stay whole.
    panels: pack kernels for the CPU product. None: when the default backend is the CPU, the
      product builds (`kernels.cpu.available`) and `dtype` is float32. True requires the
      product. Kernels placed across several devices, and traced ones when there are several
      devices, stay whole either way (the FFI call has no partitioning rule).
    free: delete each replaced array once its replacement is computed (outside `jit` only).
  Returns:
    The laid-out tree, which `llama.Decoder` runs as it runs the original. A tree whose
    decoders are already split is taken as laid out and returned as it is: a sampler given
    parameters laid out at load (or laid out with other options) runs them as given.
  """
  dtype = None if dtype is None else jnp.dtype(dtype)  # anything else: a TypeError naming it
  if _laid_out(params):
    return params
  if panels is None:
    panels = (jax.default_backend() == "cpu" and dtype in (None, jnp.float32)
              and cpu.available())
  elif panels and not cpu.available():
    raise RuntimeError("decode_layout(panels=True): the CPU panel product is unavailable: "
                       + cpu.unavailable_reason())
  params = llama.split_layers(params, _freeing_slices if free else None)
  if panels or jax.default_backend() != "cpu":  # XLA:CPU's stacked products are slower
    params = stack_projections(params, free)
  if panels:
    params = _map_projections(params, functools.partial(_pack, free=free))
  return params


def _laid_out(params) -> bool:
  """Whether `params` holds a decoder whose layers are already split."""
  if not isinstance(params, Mapping):
    return False
  if "embed_tokens" in params and isinstance(params.get("layers"), (tuple, list)):
    return True
  return any(_laid_out(v) for v in params.values())


def stack_projections(params, free: bool = False):
  """`params` with each split decoder layer's q/k/v and gate/up kernels stacked, one each.

  In every decoder whose layers are split (`llama.split_layers`), a layer's `self_attn`
  q/k/v kernels (D, N, H) become one `qkv_proj` (D, 3, N, H) when all three have N heads (every
  Janus model; grouped-query layers keep theirs), and its `mlp` gate/up kernels (D, F) one
  `gate_up_proj` (D, 2, F). The stacking axis is new, so a kernel sharded over heads or FFN
  columns stays sharded the same way. Layers already stacked stay as they are.
  """
  if not isinstance(params, Mapping):
    return params
  out = {k: stack_projections(v, free) for k, v in params.items()}
  layers_ = params.get("layers")
  if "embed_tokens" in params and isinstance(layers_, (tuple, list)):
    out["layers"] = tuple(_stack_layer(layer, free) for layer in layers_)
  return out


def free_replaced(originals, replacement) -> None:
  """Deletes the device arrays in `originals` once `replacement` (a tree made from them) is
  computed, so a layout change never holds the weights twice; does nothing under a trace."""
  if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((originals, replacement))):
    return
  jax.block_until_ready(replacement)
  for w in originals:
    if isinstance(w, jax.Array):
      w.delete()


def _stack_layer(layer, free: bool):
  out = dict(layer)
  attn, mlp = dict(layer["self_attn"]), dict(layer["mlp"])
  qkv = [attn.get(n) for n in ("q_proj", "k_proj", "v_proj")]
  if all(layers.is_array(w) for w in qkv) and qkv[0].shape == qkv[1].shape == qkv[2].shape:
    for n in ("q_proj", "k_proj", "v_proj"):
      del attn[n]
    out["self_attn"] = {**attn, "qkv_proj": _stack(qkv, free)}
  gate_up = [mlp[n]["kernel"] for n in ("gate_proj", "up_proj") if n in mlp]
  if len(gate_up) == 2 and all(layers.is_array(w) for w in gate_up):
    del mlp["gate_proj"], mlp["up_proj"]
    out["mlp"] = {**mlp, "gate_up_proj": _stack(gate_up, free)}
  return out


@functools.lru_cache(maxsize=None)
def _stack_into(sharding: jax.sharding.NamedSharding):
  """A jitted stack along axis 1 with its output placed by `sharding` (one per sharding, so
  every layer of a model reuses one compiled program per kernel shape)."""
  return jax.jit(lambda kernels: jnp.stack(kernels, axis=1), out_shardings=sharding)


def _stack(kernels, free: bool):
  """`kernels` stacked along a new axis 1; placed kernels keep their sharding on every other."""
  sharding = getattr(kernels[0], "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding) and not isinstance(kernels[0],
                                                                         jax.core.Tracer):
    spec = tuple(sharding.spec) + (None,) * (kernels[0].ndim - len(sharding.spec))
    out = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(
        spec[0], None, *spec[1:]))
    stacked = _stack_into(out)(list(kernels))
  else:
    stacked = jnp.stack(kernels, axis=1)
  if free:
    free_replaced(kernels, stacked)
  return stacked


def _map_projections(params, replace):
  """`params` with each projection kernel `w` (an array named in `_PROJECTIONS`, of its rank)
  replaced by `replace(w, contracted axes)`; everything else as it is."""
  if isinstance(params, Mapping):
    out = {}
    for k, v in params.items():
      rank, in_rank = _PROJECTIONS.get(k, (None, None))
      if layers.is_array(v) and v.ndim == rank:
        out[k] = replace(v, in_rank)
      else:
        out[k] = _map_projections(v, replace)
    return out
  if isinstance(params, (tuple, list)):
    return type(params)(_map_projections(v, replace) for v in params)
  return params


def _pack(w, in_rank: int, free: bool):
  if not cpu.packable(w):
    return w
  packed = cpu.Panels.pack(w, in_rank)
  if free:
    free_replaced([w], packed.data)
  return packed


@jax.jit
def _layer_slices(a):
  return tuple(a[i] for i in range(a.shape[0]))


def _freeing_slices(a):
  """A stacked (L, ...) array's L slices; the stack is deleted once they exist."""
  if isinstance(a, jax.core.Tracer) or not isinstance(a, jax.Array):
    return [a[i] for i in range(a.shape[0])]
  slices = _layer_slices(a)
  free_replaced([a], slices)
  return slices

