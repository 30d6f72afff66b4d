"""Loading a checkpoint for sampling: the one loader of `sample.py` and ShapesEval.

A checkpoint directory is either a `convert_torch.py` output (`config.json` with our model
config + `params/`, Orbax) or an original PyTorch checkpoint (DeepSeek or transformers layout,
converted in memory). `load` places the parameters on a mesh by the logical sharding rules and
lays them out for decoding (`decode_layout`), freeing each original array as soon as its
replacement exists, so no device ever holds the weights twice.
"""

import dataclasses
import json
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from janus_jax import errors
from janus_jax import sharding
from janus_jax.convert import driver
from janus_jax.convert import rules
from janus_jax.data import tokenizer as tokenizer_lib
from janus_jax.models import janus
from janus_jax.models import janusflow
from janus_jax.sampling import decode_layout

FAMILIES = {"janus": janus, "janus_hf": janus, "janusflow": janusflow}
# The embedded demo checkpoint (docs/shapes_demo.md), next to the package in a checkout.
DEMO_CHECKPOINT = pathlib.Path(__file__).resolve().parents[2] / "assets" / "shapes_demo"


def default_checkpoint() -> str | None:
  """The shapes-world demo checkpoint shipped in assets/shapes_demo, if present."""
  return str(DEMO_CHECKPOINT) if (DEMO_CHECKPOINT / "config.json").is_file() else None


def compute_dtype(name: str):
  """"auto": bfloat16 (as the reference runs) on accelerators, float32 on the CPU."""
  if name == "auto":
    return jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32
  return jnp.dtype(name)


@dataclasses.dataclass
class Loaded:
  """family: "janus", "janus_hf" or "janusflow". meta: the directory's config.json."""

  family: str
  model: nn.Module
  params: Any
  meta: dict


def read_meta(path: pathlib.Path) -> dict:
  """A checkpoint directory's config.json, or an InputError naming what is wrong with it."""
  meta_path = path / "config.json"
  if not path.is_dir():
    raise errors.InputError(f"checkpoint directory {path} does not exist")
  if not meta_path.is_file():
    raise errors.InputError(f"{path} has no config.json: not a checkpoint directory")
  try:
    meta = json.loads(meta_path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise errors.InputError(f"{meta_path}: not readable as JSON ({e})") from None
  if not isinstance(meta, dict):
    raise errors.InputError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
  return meta


def load(path, *, dtype="auto", mesh=None, rules_=None, extra: dict | None = None,
         families=tuple(FAMILIES)) -> Loaded:
  """Loads a checkpoint directory for sampling.

  Args:
    path: a `convert_torch.py` output directory or an original PyTorch checkpoint directory.
    dtype: compute and parameter dtype ("auto", "float32", "bfloat16", ...).
    mesh: where the parameters go (default: the first device alone).
    rules_: logical axis rules (default `sharding.DEFAULT_RULES`).
    extra: original checkpoints only: sizes config.json cannot express (a fixture's "extra").
    families: the families the caller can use; another is an InputError.
  """
  path = pathlib.Path(path)
  dtype = compute_dtype(dtype)
  mesh = mesh if mesh is not None else sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  rules_ = sharding.rules_from_config(rules_)
  meta = read_meta(path)
  converted = "family" in meta and (path / "params").is_dir()
  if converted:
    name = meta["family"]
  else:  # an original PyTorch checkpoint: detect its layout from the tensor names
    ckpt = driver.Checkpoint(path)
    name, fam = driver.detect_family(ckpt.tensors)
  if name not in families:
    raise errors.InputError(f"{path} holds a {name!r} checkpoint; this needs one of "
                            f"{sorted(families)}")
  module = FAMILIES[name]
  if converted:
    try:
      config = driver.config_from_json(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
      raise errors.InputError(f"{path / 'config.json'}: not a model config this version reads "
                              f"({type(e).__name__}: {e})") from None
  else:
    config = driver.model_config(fam, ckpt, (extra or {}).get("extra", extra))
  if not isinstance(config, module.Config):
    raise errors.InputError(f"{path}: config is a {type(config).__name__}, expected a {name} "
                            "config")
  model = module.Model(config, dtype, dtype)
  boxed = module.abstract_params(config, dtype, dtype)
  shardings = sharding.logical_shardings(boxed, mesh, rules_)
  if converted:
    _, params = driver.load_converted(path, shardings, dtype=dtype)
  else:
    params = _convert_in_memory(ckpt, fam, config, shardings, dtype)
  params = decode_layout.decode_layout(params, dtype=dtype, free=True)
  return Loaded(name, model, params, meta)


def _convert_in_memory(ckpt, fam, config, shardings, dtype):
  expected = driver.abstract_params(fam, config)
  plan = rules.plan(fam.RULES, {k: v.shape for k, v in ckpt.tensors.items()}, expected, fam.SKIP)
  flat_sh = rules.flatten_shapes(shardings)
  flat = {}
  with ckpt.reading() as read:
    for p, pieces in plan.targets.items():
      arr = rules.assemble(p, pieces, plan.expected[p].shape, read, None)
      flat[p] = jax.device_put(np.asarray(arr).astype(jnp.dtype(dtype)), flat_sh[p])
  return rules.unflatten(flat)


def load_tokenizer(path, meta: dict, explicit: str = "") -> tokenizer_lib.Tokenizer:
  """`explicit` if given, else the checkpoint's tokenizer.json, else its conversion source's."""
  path = pathlib.Path(path)
  candidates = [pathlib.Path(explicit)] if explicit else []
  candidates.append(path / "tokenizer.json")
  if meta.get("source"):
    candidates.append(pathlib.Path(meta["source"]) / "tokenizer.json")
  for c in candidates:
    if c.is_file():
      return tokenizer_lib.load(str(c))
  raise errors.InputError("missing tokenizer file: looked for " + ", ".join(map(str, candidates))
                          + "; pass --config.tokenizer=PATH/tokenizer.json")
