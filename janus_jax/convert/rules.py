"""Declarative torch-key -> Flax-path mapping rules, and a strict in-memory converter.

A table is a list of `Rule`s. A rule's `pattern` is a regex over the full torch key; its `target`
is a '/'-separated Flax path that may use the regex groups (`\\1`), and `transform` names how the
tensor's layout changes. A rule with `stack` set to a group number writes one slice of a
scanned (stacked) parameter: the group's value is the index along the leading `layers` axis.

After the layout transform the tensor is reshaped to the expected Flax shape when only the
grouping of axes differs (e.g. q_proj (N*H, D) -> (D, N, H)); any other mismatch is an error.
Keys matched by `SKIP` patterns are known-unused and are dropped (and reported).
"""

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import numpy as np


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

  def match(self, key: str):
    """Returns (flax path tuple, layer index or None) if `key` matches, else None."""
    m = re.fullmatch(self.pattern, key)
    if m is None:
      return None
    path = tuple(m.expand(self.target).split("/"))
    return path, (int(m.group(self.stack)) if self.stack is not None else None)


def rename(rules: Iterable[Rule], key: str):
  """The first rule matching `key` as (rule, path, layer) or None."""
  for rule in rules:
    hit = rule.match(key)
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


class ConversionError(ValueError):
  """A checkpoint does not match the model: lists every offending key."""


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
  rules = list(rules)
  want = flatten_shapes(expected)
  got: dict[tuple[str, ...], np.ndarray] = {}
  filled: dict[tuple[str, ...], set] = {}
  unexpected, misshaped, skipped = [], [], []
  for key, tensor in tensors.items():
    if any(re.fullmatch(s, key) for s in skip):
      skipped.append(key)
      continue
    hit = rename(rules, key)
    if hit is None or hit[1] not in want:
      unexpected.append(f"{key} {tuple(np.shape(tensor))}" + (
          "" if hit is None else f" (-> {'/'.join(hit[1])}, not a model parameter)"))
      continue
    rule, path, layer = hit
    spec = want[path]
    shape = tuple(spec.shape[1:]) if layer is not None else tuple(spec.shape)
    try:
      arr = to_layout(rule, tensor, shape, key).astype(spec.dtype)
    except ValueError as e:
      misshaped.append(str(e))
      continue
    if layer is None:
      got[path] = arr
    else:
      if not 0 <= layer < spec.shape[0]:
        unexpected.append(f"{key}: layer {layer} outside 0..{spec.shape[0] - 1}")
        continue
      buf = got.setdefault(path, np.zeros(spec.shape, spec.dtype))
      buf[layer] = arr
      filled.setdefault(path, set()).add(layer)
  missing = []
  for path, spec in want.items():
    if path not in got:
      missing.append(f"{'/'.join(path)} {tuple(spec.shape)}")
    elif path in filled and len(filled[path]) != spec.shape[0]:
      lost = sorted(set(range(spec.shape[0])) - filled[path])
      missing.append(f"{'/'.join(path)} layers {lost}")
  if unexpected or missing or misshaped:
    lines = [f"checkpoint does not match the model ({len(unexpected)} unexpected, "
             f"{len(missing)} missing, {len(misshaped)} mis-shaped):"]
    lines += [f"  unexpected: {u}" for u in unexpected]
    lines += [f"  missing: {m}" for m in missing]
    lines += [f"  mis-shaped: {m}" for m in misshaped]
    raise ConversionError("\n".join(lines))
  return unflatten(got), skipped
