"""Reads a reference fixture directory: config.json, fixture.json and cases.npz.

A case value is either a plain value or `{array, shape, dtype}` naming an array in cases.npz.
Arrays keep the fixture's layout (PyTorch: NCHW images).
"""

import dataclasses
import json
import pathlib

import numpy as np

from janus_jax import errors


@dataclasses.dataclass
class Case:
  name: str
  doc: str
  inputs: dict
  outputs: dict
  atol: float | None
  rtol: float | None


@dataclasses.dataclass
class Fixture:
  root: pathlib.Path
  config: dict  # config.json
  extra: dict  # fixture.json "extra"
  cases: dict[str, Case]

  @property
  def weights(self) -> pathlib.Path:
    return self.root / "model.safetensors"


def _resolve(value, arrays, where):
  if isinstance(value, dict) and "array" in value:
    name = value["array"]
    if name not in arrays:
      raise errors.InputError(f"{where}: array {name!r} is not in cases.npz")
    arr = arrays[name]
    if list(arr.shape) != list(value.get("shape", arr.shape)):
      raise errors.InputError(f"{where}: array {name!r} has shape {arr.shape}, fixture.json says "
                              f"{value['shape']}")
    return arr
  return value


def load(root) -> Fixture:
  """Loads a fixture directory; raises an `errors.InputError` naming what is missing."""
  root = pathlib.Path(root)
  for f in ("config.json", "fixture.json", "cases.npz"):
    if not (root / f).is_file():
      raise errors.InputError(f"fixture directory {root} has no {f}")
  config = json.loads((root / "config.json").read_text())
  spec = json.loads((root / "fixture.json").read_text())
  with np.load(root / "cases.npz") as npz:
    arrays = {k: npz[k] for k in npz.files}
  cases = {}
  for name, c in spec.get("cases", {}).items():
    resolve = lambda d, kind: {  # noqa: E731
        k: _resolve(v, arrays, f"{name}.{kind}.{k}") for k, v in d.items()}
    cases[name] = Case(name, c.get("doc", ""), resolve(c.get("inputs", {}), "inputs"),
                       resolve(c.get("outputs", {}), "outputs"), c.get("atol"), c.get("rtol"))
  return Fixture(root, config, spec.get("extra", {}), cases)
