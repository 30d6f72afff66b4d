"""Declarative torch-key -> Flax-path mapping rules, and a strict in-memory converter.

A table is a list of `Rule`s. A rule's `pattern` is a regex over the full torch key; its `target`
is a '/'-separated Flax path that may use the regex groups (`\\1`), and `transform` names how the
tensor's layout changes. A rule with `stack` set to a group number writes one slice of a
scanned (stacked) parameter: the group's value is the index along the leading `layers` axis.

After the layout transform the tensor is reshaped to the expected Flax shape when only the
grouping of axes differs (e.g. q_proj (N*H, D) -> (D, N, H)); any other mismatch is an error.
Keys matched by `SKIP` patterns are known-unused and are dropped (and reported).

A `fallback` rule offers a key a second target that is used only when the checkpoint has no
tensor of its own for it (e.g. an `lm_head` tied to the input embedding).

A rule with `part=(i, n)` writes block i of n equal blocks of the target along `part_axis`
(of the per-layer target): several checkpoint tensors fill one parameter, e.g. transformers'
separate q/k/v projections filling a fused qkv kernel.

Large checkpoints are converted without holding every tensor at once: `plan` checks a whole
checkpoint from its key names and shapes alone (no tensor data), and `assemble` then builds one
parameter at a time from a tensor reader. `convert_tensors` is both, for an in-memory dict.
"""

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import numpy as np

from janus_jax import errors


def _linear(w):
  return w.T


def _conv(w):  # (O, I, kh, kw) -> (kh, kw, I, O); depthwise (C, 1, k, k) -> (k, k, 1, C)
  return w.transpose(2, 3, 1, 0)


def _conv1x1_linear(w):  # (O, I, 1, 1) -> (I, O)
  return w.reshape(w.shape[0], w.shape[1]).T


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda w: w,
    "linear": _linear,
    "conv": _conv,
    "conv1x1_linear": _conv1x1_linear,
}


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str
  target: str
  transform: str = "none"
  stack: int | None = None  # regex group holding the layer index of a scanned parameter
  part: tuple[int, int] | None = None  # (block index, block count) of a fused target
  part_axis: int = -1  # axis of the (per-layer) target that the blocks split
  # Also offer this key for `target` when no other tensor provides it (tied weights): matched
  # in addition to the key's ordinary rule, and never reported as unexpected.
  fallback: bool = False

  def match(self, key: str):
    """Returns (flax path tuple, layer index or None) if `key` matches, else None."""
    m = re.fullmatch(self.pattern, key)
    if m is None:
      return None
    path = tuple(m.expand(self.target).split("/"))
    return path, (int(m.group(self.stack)) if self.stack is not None else None)


def rename(rules: Iterable[Rule], key: str):
  """The first ordinary (non-fallback) rule matching `key` as (rule, path, layer) or None."""
  for rule in rules:
    hit = None if rule.fallback else rule.match(key)
    if hit is not None:
      return rule, hit[0], hit[1]
  return None


def prefixed(prefix_torch: str, prefix_flax: str, rules: Iterable[Rule]) -> list[Rule]:
  """Re-roots a component's rules under a torch key prefix and a Flax path prefix."""
  out = []
  for r in rules:
    pat = re.escape(prefix_torch) + r.pattern if prefix_torch else r.pattern
    # Groups keep their numbers: the prefix is escaped text, it adds no groups.
    out.append(dataclasses.replace(r, pattern=pat, target=f"{prefix_flax}/{r.target}"
                                   if prefix_flax else r.target))
  return out


def to_layout(rule: Rule, tensor: np.ndarray, expected_shape: tuple[int, ...], key: str):
  """Applies the rule's layout transform, then regroups axes to `expected_shape`."""
  out = TRANSFORMS[rule.transform](np.asarray(tensor))
  if out.shape != tuple(expected_shape):
    if out.size != int(np.prod(expected_shape)):
      raise ValueError(f"{key}: shape {tuple(tensor.shape)} does not fit expected "
                       f"{tuple(expected_shape)} (after '{rule.transform}': {out.shape})")
    out = out.reshape(expected_shape)
  return out


def flatten_shapes(tree, prefix=()) -> dict[tuple[str, ...], tuple]:
  """{path tuple: leaf} for a nested dict of arrays / ShapeDtypeStructs."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten_shapes(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def unflatten(flat: Mapping[tuple[str, ...], object]) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = v
  return tree


class ConversionError(errors.InputError):
  """A checkpoint does not match the model: lists every offending key."""


@dataclasses.dataclass(frozen=True)
class Piece:
  """One checkpoint tensor's contribution to a parameter."""

  key: str
  rule: Rule
  layer: int | None  # index along the leading (scanned) axis, or None
  shape: tuple[int, ...]  # its slot in the target: the target shape without layer / part axes


@dataclasses.dataclass
class Plan:
  """Which checkpoint tensors make each parameter; `skipped` are the known-unused keys."""

  targets: dict[tuple[str, ...], list[Piece]]
  expected: dict[tuple[str, ...], object]  # path -> ShapeDtypeStruct-like (shape, dtype)
  skipped: list[str]


def _slot_shape(rule: Rule, layer, spec_shape) -> tuple[int, ...]:
  shape = list(spec_shape[1:] if layer is not None else spec_shape)
  if rule.part is not None:
    n = rule.part[1]
    if shape[rule.part_axis] % n:
      raise ValueError(f"axis {rule.part_axis} of {tuple(spec_shape)} does not split in {n}")
    shape[rule.part_axis] //= n
  return tuple(shape)


def layout_shape(rule: Rule, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape `rule`'s transform gives a tensor of `shape`, computed without any data."""
  dummy = np.broadcast_to(np.zeros((), np.float32), tuple(shape))  # zero strides: no memory
  return TRANSFORMS[rule.transform](dummy).shape


def plan(rules: Iterable[Rule], shapes: Mapping[str, tuple], expected: dict,
         skip: Iterable[str] = ()) -> Plan:
  """Strictly matches a checkpoint's key names and shapes against the expected parameters.

  Args:
    rules: the family's table. shapes: torch key -> tensor shape.
    expected: nested dict of ShapeDtypeStructs (e.g. `jax.eval_shape` of `init`, unboxed).
    skip: regexes of known-unused keys.
  Returns:
    A `Plan` covering every expected parameter.
  Raises:
    ConversionError naming every unexpected, missing and mis-shaped key, with shapes.
  """
  rules = list(rules)
  want = flatten_shapes(expected)
  targets: dict[tuple[str, ...], list[Piece]] = {}
  slots: dict[tuple[str, ...], set] = {}
  unexpected, misshaped, skipped = [], [], []
  for key, shape in shapes.items():
    shape = tuple(shape)
    if any(re.fullmatch(s, key) for s in skip):
      skipped.append(key)
      continue
    hit = rename(rules, key)
    if hit is None or hit[1] not in want:
      unexpected.append(f"{key} {shape}" + (
          "" if hit is None else f" (-> {'/'.join(hit[1])}, not a model parameter)"))
      continue
    rule, path, layer = hit
    spec = want[path]
    if layer is not None and not 0 <= layer < spec.shape[0]:
      unexpected.append(f"{key}: layer {layer} outside 0..{spec.shape[0] - 1} of "
                        f"{'/'.join(path)} {tuple(spec.shape)}")
      continue
    try:
      slot_shape = _slot_shape(rule, layer, spec.shape)
      out = layout_shape(rule, shape)
    except (ValueError, IndexError) as e:
      misshaped.append(f"{key}: {e}")
      continue
    if int(np.prod(out)) != int(np.prod(slot_shape)):
      misshaped.append(f"{key}: shape {shape} does not fit expected {slot_shape} of "
                       f"{'/'.join(path)} {tuple(spec.shape)} (after '{rule.transform}': {out})")
      continue
    slot = (layer, rule.part[0] if rule.part else None)
    if slot in slots.setdefault(path, set()):
      unexpected.append(f"{key}: a second tensor for {'/'.join(path)} slot {slot}")
      continue
    slots[path].add(slot)
    targets.setdefault(path, []).append(Piece(key, rule, layer, slot_shape))
  for rule in (r for r in rules if r.fallback):
    for key, shape in shapes.items():
      hit = rule.match(key)
      if hit is None or hit[0] not in want or hit[0] in targets:
        continue
      spec = want[hit[0]]
      if int(np.prod(layout_shape(rule, tuple(shape)))) != int(np.prod(spec.shape)):
        misshaped.append(f"{key}: shape {tuple(shape)} does not fit expected "
                         f"{tuple(spec.shape)} of {'/'.join(hit[0])} (as a tied weight)")
        continue
      targets[hit[0]] = [Piece(key, rule, None, tuple(spec.shape))]
      slots[hit[0]] = {(None, None)}
  missing = []
  for path, spec in want.items():
    if path not in targets:
      missing.append(f"{'/'.join(path)} {tuple(spec.shape)}")
      continue
    rule = targets[path][0].rule
    layers = range(spec.shape[0]) if targets[path][0].layer is not None else [None]
    parts = range(rule.part[1]) if rule.part else [None]
    lost = sorted({(l, p) for l in layers for p in parts} - slots[path],
                  key=lambda s: tuple(-1 if v is None else v for v in s))
    if lost:
      missing.append(f"{'/'.join(path)} {tuple(spec.shape)}: no tensor for "
                     f"(layer, part) {lost}")
  if unexpected or missing or misshaped:
    lines = [f"checkpoint does not match the model ({len(unexpected)} unexpected, "
             f"{len(missing)} missing, {len(misshaped)} mis-shaped):"]
    lines += [f"  unexpected: {u}" for u in unexpected]
    lines += [f"  missing: {m}" for m in missing]
    lines += [f"  mis-shaped: {m}" for m in misshaped]
    raise ConversionError("\n".join(lines))
  return Plan(targets, want, skipped)


def assemble(path, pieces: list[Piece], spec_shape, read: Callable[[str], np.ndarray],
             dtype=None) -> np.ndarray:
  """Builds one parameter from its pieces, reading one checkpoint tensor at a time.

  Args:
    path: the parameter's path (for messages). pieces: `Plan.targets[path]`.
    spec_shape: the parameter's full shape. read: torch key -> array.
    dtype: output dtype; None keeps the first tensor's dtype.
  Returns:
    The parameter as a numpy array of `spec_shape`.
  """
  single = len(pieces) == 1 and pieces[0].layer is None and pieces[0].rule.part is None
  out = None
  for piece in pieces:
    src = read(piece.key)
    if dtype is None:
      dtype = src.dtype
    arr = to_layout(piece.rule, src, piece.shape, piece.key)
    del src
    if single:
      return np.ascontiguousarray(arr, dtype=dtype)
    if out is None:
      out = np.empty(tuple(spec_shape), dtype)
    view = out if piece.layer is None else out[piece.layer]
    if piece.rule.part is not None:
      i, n = piece.rule.part
      size = view.shape[piece.rule.part_axis] // n
      view = np.moveaxis(view, piece.rule.part_axis, 0)[i * size:(i + 1) * size]
      arr = np.moveaxis(arr, piece.rule.part_axis, 0)
    view[...] = arr
  return out


def convert_tensors(rules: Iterable[Rule], tensors: Mapping[str, np.ndarray], expected: dict,
                    skip: Iterable[str] = ()):
  """Strictly maps a whole in-memory state dict onto the expected Flax parameter tree.

  Args:
    rules: the family's table. tensors: torch key -> array (any float dtype).
    expected: nested dict of ShapeDtypeStructs (e.g. `jax.eval_shape` of `init`, unboxed).
    skip: regexes of known-unused keys.
  Returns:
    (params nested dict of numpy arrays in the expected dtypes, list of skipped keys).
  Raises:
    ConversionError naming every unexpected, missing and mis-shaped key.
  """
  p = plan(rules, {k: np.shape(v) for k, v in tensors.items()}, expected, skip)
  params = {path: assemble(path, pieces, p.expected[path].shape,
                           lambda k: np.asarray(tensors[k]), p.expected[path].dtype)
            for path, pieces in p.targets.items()}
  return unflatten(params), p.skipped
