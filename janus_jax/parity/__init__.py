"""Parity of the JAX port against a reference fixture directory.

`python -m janus_jax.parity FIXTURE_DIR` converts the fixture's `model.safetensors` with the real
converter, runs every case of `fixture.json` through the JAX model and prints one line per case
(max abs / max rel error, PASS/FAIL against the case's atol/rtol), then `N passed, M failed`.
Integer outputs must match exactly. A case without an implementation is a FAIL, never a skip.
All sizes come from `config.json` and the fixture's `extra`.
"""

import dataclasses
import importlib
import tempfile
import traceback

import numpy as np

from janus_jax import fixtures


@dataclasses.dataclass
class Result:
  case: str
  passed: bool
  detail: str


def compare(name: str, got, want, atol, rtol) -> tuple[bool, str]:
  """Compares one output; `got` may be `(array, where)` to compare only where `where`."""
  where = None
  if isinstance(got, tuple):
    got, where = got
  got, want = np.asarray(got), np.asarray(want)
  if got.shape != want.shape:
    return False, f"{name}: shape {got.shape} != expected {want.shape}"
  if where is None:
    where = np.ones(want.shape, bool)
  if not np.issubdtype(want.dtype, np.floating) and want.dtype != bool:
    wrong = int(np.sum((got != want) & where))
    return wrong == 0, f"{name}: {wrong} of {int(where.sum())} differ"
  if atol is None or rtol is None:
    return False, f"{name}: fixture gives no atol/rtol for a float output"
  g, w = got.astype(np.float64)[where], want.astype(np.float64)[where]
  err = np.abs(g - w)
  max_abs = float(err.max()) if err.size else 0.0
  max_rel = float((err / np.maximum(np.abs(w), 1e-12)).max()) if err.size else 0.0
  ok = bool(np.all(err <= atol + rtol * np.abs(w))) and bool(np.all(np.isfinite(g)))
  return ok, f"{name}: max_abs={max_abs:.3g} max_rel={max_rel:.3g}"


def family(config: dict) -> str:
  if "vision_gen_enc_config" in config:
    return "janusflow"
  if "gen_vision_config" in config:
    return "janus"
  raise ValueError(f"config.json is neither Janus nor JanusFlow (keys: {sorted(config)})")


def _case_table(fam: str) -> dict:
  """Case name -> function, from the modules that implement this family's cases."""
  mods = {"janus": ["janus_cases", "sampling_cases"], "janusflow": ["janusflow_cases"]}[fam]
  table = {}
  for m in mods:
    try:
      table.update(importlib.import_module(f"janus_jax.parity.{m}").CASES)
    except ModuleNotFoundError as e:
      if e.name != f"janus_jax.parity.{m}":
        raise
  return table


def load_model(fx: fixtures.Fixture, workdir: str, fam: str) -> tuple:
  """Converts the fixture's checkpoint (and JanusFlow's `vae/` folder) with the real converter.

  Returns the leading arguments of the family's case functions: (model, params) for Janus,
  (model, params, vae_model, vae_params) for JanusFlow.
  """
  from janus_jax.convert import driver  # noqa: PLC0415  (heavy; only the CLI needs it)
  out = f"{workdir}/model"
  driver.convert(fx.root, out, extra=fx.extra, progress=False, log=lambda *_: None)
  config, params = driver.load_converted(out)
  loaded = (driver.get_family(fam).build_model(config), params)
  if fam == "janusflow":
    vae_out = f"{workdir}/vae"
    driver.convert(fx.root / "vae", vae_out, family="vae", progress=False, log=lambda *_: None)
    vae_config, vae_params = driver.load_converted(vae_out)
    loaded += (driver.get_family("vae").build_model(vae_config), vae_params)
  return loaded


def run(root) -> list[Result]:
  fx = fixtures.load(root)
  fam = family(fx.config)
  table = _case_table(fam)
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    loaded = load_model(fx, tmp, fam)
    for name, case in fx.cases.items():
      fn = table.get(name)
      if fn is None:
        results.append(Result(name, False, "not implemented by the JAX port"))
        continue
      try:
        outs = fn(*loaded, case)
        checks = [compare(k, outs.get(k), v, case.atol, case.rtol) if k in outs else
                  (False, f"{k}: not produced") for k, v in case.outputs.items()]
        results.append(Result(name, all(ok for ok, _ in checks),
                              "; ".join(d for _, d in checks)))
      except Exception as e:  # a crashing case is a FAIL with its reason, not an abort
        traceback.print_exc()
        results.append(Result(name, False, f"error: {type(e).__name__}: {e}"))
  return results
