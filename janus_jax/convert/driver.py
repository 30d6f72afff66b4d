"""Generic PyTorch checkpoint -> Orbax converter: reading, family detection, streaming, output.

A checkpoint directory holds `config.json` and the weights: `model.safetensors`,
`pytorch_model.bin`, or shards of either listed in `model.safetensors.index.json` /
`pytorch_model.bin.index.json`. A *family* module in `janus_jax.convert` (`janus`, `janus_hf`,
`janusflow`) supplies the mapping table and the model:

  RULES: list[rules.Rule]        SKIP: list of regexes of known-unused keys
  detect(keys) -> bool           config_from(config_json, tensor_shapes, extra=None) -> Config
  build_model(config) -> the linen module, whose `init_all` method touches every parameter.

Conversion never holds the whole model: the checkpoint is first checked from key names and
shapes alone (`rules.plan`), then parameters are built one at a time and written in chunks of
at most `chunk_bytes`, each chunk its own Orbax checkpoint under `OUT_DIR/params/`, each freed
once saved. `load_converted` restores the chunks (sharded when shardings are given) and merges
them. Output goes to a temporary directory next to OUT_DIR that is renamed at the very end.

`.bin` files are read with `torch.load(weights_only=True)`: a pickle that would construct
anything but tensors and plain containers is refused before it can run code.
"""

import dataclasses
import importlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
import types
import typing
from typing import Any, Iterator

import numpy as np

from janus_jax import errors
from janus_jax.convert import rules

FAMILIES = ("janus", "janus_hf", "janusflow", "vae")  # janus_jax.convert modules, detection order
LAYOUTS = {"janus": "Janus / Janus-Pro, original DeepSeek layout",
           "janus_hf": "Janus / Janus-Pro, transformers (HF) layout",
           "janusflow": "JanusFlow, original DeepSeek layout",
           "vae": "diffusers AutoencoderKL (SDXL VAE)"}
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_DTYPES = ("bfloat16", "float32", "float16")  # choices of --dtype


class CheckpointError(errors.InputError):
  """The checkpoint directory or one of its files cannot be read; names the file."""


# --------------------------------------------------------------------------- reading


def _np_dtype(name: str):
  if name == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


def _torch_to_numpy(t) -> np.ndarray:
  """A CPU torch tensor as numpy without a float32 detour: bf16 is reinterpreted bit for bit."""
  import torch  # pylint: disable=g-import-not-at-top
  t = t.detach()
  if t.dtype == torch.bfloat16:
    return t.contiguous().view(torch.int16).numpy().view(_np_dtype("bfloat16"))
  return t.contiguous().numpy()


def _load_bin(path: pathlib.Path) -> dict:
  """State dict of a `.bin`, memory-mapped when possible, never executing pickled code."""
  import pickle  # pylint: disable=g-import-not-at-top

  import torch  # pylint: disable=g-import-not-at-top
  try:
    try:
      sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
      if "mmap" not in str(e):  # a legacy (non-zip) file cannot be mapped: read it normally
        raise
      sd = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise CheckpointError(
        f"{path}: refused to load, the pickle holds more than tensors (weights_only load "
        f"failed; it could run code): {str(e).splitlines()[0]}") from None
  except Exception as e:  # truncated zip, not a torch file, ...
    raise CheckpointError(f"{path}: cannot read PyTorch checkpoint: "
                          f"{type(e).__name__}: {e}") from None
  if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
    sd = sd["state_dict"]
  if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
    raise CheckpointError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
  return sd


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  shape: tuple[int, ...]
  dtype: str  # numpy dtype name ("bfloat16", "float32", ...)
  file: pathlib.Path


class Checkpoint:
  """The tensors of a checkpoint directory: names, shapes and dtypes up front, data on demand.

  Use `with ckpt.reading() as read:` to read tensors (`read(key) -> np.ndarray`); files are
  opened lazily inside the block and closed (their memory maps released) when it ends.
  """

  def __init__(self, root):
    self.root = pathlib.Path(root)
    if not self.root.is_dir():
      raise CheckpointError(f"{self.root}: checkpoint directory does not exist")
    cfg = self.root / "config.json"
    if not cfg.is_file():
      raise CheckpointError(f"{cfg}: missing (a checkpoint directory needs its config.json)")
    try:
      self.config = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{cfg}: not valid JSON: {e}") from None
    if not isinstance(self.config, dict):
      raise CheckpointError(f"{cfg}: expected a JSON object, got a {type(self.config).__name__}")
    self.files = self._weight_files()
    self.tensors: dict[str, TensorInfo] = {}
    for f in self.files:
      for key, info in self._scan(f).items():
        if key in self.tensors:
          raise CheckpointError(f"{f}: tensor {key!r} also in {self.tensors[key].file.name}")
        self.tensors[key] = info
    self._check_index()

  def _weight_files(self) -> list[pathlib.Path]:
    self.index = None
    for name in INDEX_FILES:
      idx = self.root / name
      if idx.is_file():
        try:
          self.index = json.loads(idx.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
          raise CheckpointError(f"{idx}: not an index with a 'weight_map': {e}") from None
        files = sorted({self.root / f for f in self.index.values()})
        for f in files:
          if not f.is_file():
            raise CheckpointError(f"{f}: listed in {name} but missing")
        return files
    found = sorted(self.root.glob("*.safetensors")) or sorted(self.root.glob("pytorch_model*.bin"))
    if not found:
      raise CheckpointError(
          f"{self.root}: no weights (*.safetensors or pytorch_model*.bin) found; contents: "
          f"{sorted(p.name for p in self.root.iterdir())}")
    return found

  def _check_index(self):
    if self.index is None:
      return
    listed, found = set(self.index), set(self.tensors)
    problems = [f"listed in the index but in no file: {k}" for k in sorted(listed - found)]
    problems += [f"in {self.tensors[k].file.name} but not in the index: {k}"
                 for k in sorted(found - listed)]
    problems += [f"{k}: index says {self.index[k]}, found in {self.tensors[k].file.name}"
                 for k in sorted(listed & found) if self.index[k] != self.tensors[k].file.name]
    if problems:
      raise CheckpointError(f"{self.root}: index does not match the shards:\n  " +
                            "\n  ".join(problems))

  @staticmethod
  def _scan(path: pathlib.Path) -> dict[str, TensorInfo]:
    if path.suffix == ".safetensors":
      import safetensors  # pylint: disable=g-import-not-at-top
      try:
        with safetensors.safe_open(str(path), framework="pt") as f:
          out = {}
          for k in f.keys():
            sl = f.get_slice(k)
            out[k] = TensorInfo(tuple(sl.get_shape()), _ST_DTYPES.get(sl.get_dtype(),
                                                                      sl.get_dtype()), path)
          return out
      except Exception as e:  # safetensors raises its own error type for bad headers
        raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): "
                              f"{e}") from None
    sd = _load_bin(path)
    out = {k: TensorInfo(tuple(v.shape), str(v.dtype).replace("torch.", ""), path)
           for k, v in sd.items()}
    del sd
    return out

  def reading(self):
    return _Reader(self)


_ST_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool"}


class _Reader:
  """Context manager reading tensors; open files are released on exit."""

  def __init__(self, ckpt: Checkpoint):
    self.ckpt = ckpt
    self.open: dict[pathlib.Path, Any] = {}

  def __enter__(self):
    return self.read

  def __exit__(self, *exc):
    for handle in self.open.values():
      if hasattr(handle, "__exit__"):
        handle.__exit__(None, None, None)
    self.open.clear()

  def read(self, key: str) -> np.ndarray:
    info = self.ckpt.tensors[key]
    f = info.file
    if f not in self.open:
      if f.suffix == ".safetensors":
        import safetensors  # pylint: disable=g-import-not-at-top
        handle = safetensors.safe_open(str(f), framework="pt")
        self.open[f] = handle.__enter__()
      else:
        self.open[f] = _load_bin(f)
    h = self.open[f]
    try:
      t = h.get_tensor(key) if f.suffix == ".safetensors" else h[key]
      return _torch_to_numpy(t)
    except Exception as e:
      raise CheckpointError(f"{f}: cannot read tensor {key!r}: {e}") from None


# --------------------------------------------------------------------------- families


def get_family(name: str) -> types.ModuleType:
  return importlib.import_module(f"janus_jax.convert.{name}")


def detect_family(keys) -> tuple[str, types.ModuleType]:
  """The first family in `FAMILIES` whose `detect(keys)` accepts the checkpoint's keys."""
  keys = list(keys)
  tried = []
  for name in FAMILIES:
    try:
      fam = get_family(name)
    except ModuleNotFoundError as e:
      if e.name != f"janus_jax.convert.{name}":
        raise
      tried.append(f"{name} (not available)")
      continue
    if fam.detect(keys):
      return name, fam
    tried.append(name)
  sample = ", ".join(sorted(keys)[:8])
  raise CheckpointError(f"no converter family recognises these keys (tried {tried}); "
                        f"first keys: {sample}")


def abstract_params(fam, config) -> dict:
  """Nested dict of the model's parameter ShapeDtypeStructs (nothing allocated).

  Uses the family's `abstract_params(config)` when it has one; otherwise runs `init_all` of
  `build_model(config)` under `jax.eval_shape`, with the dummy inputs of the model module's
  `init_inputs(config)` if it defines them.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  if hasattr(fam, "abstract_params"):
    return nn.meta.unbox(fam.abstract_params(config))
  model = fam.build_model(config)
  module = sys.modules[type(model).__module__]
  args = module.init_inputs(config) if hasattr(module, "init_inputs") else ()
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, method=model.init_all))
  return nn.meta.unbox(shapes["params"])


# --------------------------------------------------------------------------- config json


def config_to_json(config) -> dict:
  """A (nested) frozen config dataclass as a JSON-able dict, with its class for reloading."""
  return {"class": f"{type(config).__module__}.{type(config).__qualname__}",
          "fields": dataclasses.asdict(config)}


def _from_fields(cls, fields: dict):
  hints = typing.get_type_hints(cls)
  kw = {}
  for f in dataclasses.fields(cls):
    if f.name not in fields:
      continue
    v, hint = fields[f.name], hints.get(f.name)
    sub = [a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a)]
    if isinstance(v, dict) and sub:
      v = _from_fields(sub[0], v)
    elif isinstance(v, list):
      v = _tuples(v)
    kw[f.name] = v
  return cls(**kw)


def _tuples(v):
  return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def config_from_json(d: dict):
  """The inverse of `config_to_json`."""
  module, _, name = d["class"].rpartition(".")
  return _from_fields(getattr(importlib.import_module(module), name), d["fields"])


# --------------------------------------------------------------------------- conversion


@dataclasses.dataclass
class Summary:
  family: str
  tensors: int  # checkpoint tensors read
  params: int  # parameter arrays written
  param_count: int  # scalars written
  skipped: list[str]
  chunks: int
  bytes_written: int
  seconds: float
  out_dir: pathlib.Path


def _chunks(plan: rules.Plan, ckpt: Checkpoint, chunk_bytes: int, dtype) -> Iterator[list]:
  """Parameter paths grouped so that each group's output is about `chunk_bytes` at most.

  Paths are ordered by the checkpoint file and key of their first tensor, so a chunk reads
  mostly from one region of one shard.
  """
  def order(path):
    first = plan.targets[path][0].key
    return (str(ckpt.tensors[first].file), first)

  group, size = [], 0
  for path in sorted(plan.targets, key=order):
    spec = plan.expected[path]
    itemsize = (dtype or _np_dtype(ckpt.tensors[plan.targets[path][0].key].dtype)).itemsize
    nbytes = int(np.prod(spec.shape)) * itemsize
    if group and size + nbytes > chunk_bytes:
      yield group
      group, size = [], 0
    group.append(path)
    size += nbytes
  if group:
    yield group


def _check_out_dir(out_dir: pathlib.Path, overwrite: bool):
  if out_dir.exists() and not out_dir.is_dir():
    raise FileExistsError(f"{out_dir}: exists and is not a directory")
  if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
    raise FileExistsError(f"{out_dir}: exists and is not empty (pass --overwrite to replace)")


def _commit(tmp: pathlib.Path, out_dir: pathlib.Path):
  """Moves the finished output into place; an old OUT_DIR is removed only after that."""
  old = None
  if out_dir.exists():
    old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.rename(out_dir, old / "x")
  os.rename(tmp, out_dir)
  if old is not None:
    shutil.rmtree(old)


# Files of a released checkpoint that sampling needs besides the weights (tokenizer and
# processor settings); `convert` copies those present next to its output.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "processor_config.json", "preprocessor_config.json")


def model_config(fam, ckpt: Checkpoint, extra: dict | None = None):
  """`fam.config_from` on the checkpoint's config.json and tensor shapes. A config.json it
  cannot read (a missing key, an unknown SigLIP preset, ...) is a CheckpointError naming it."""
  shapes = {k: v.shape for k, v in ckpt.tensors.items()}
  try:
    return fam.config_from(ckpt.config, shapes, extra)
  except errors.InputError:
    raise
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    what = f"no key {e}" if isinstance(e, KeyError) else str(e)
    raise CheckpointError(f"{ckpt.root / 'config.json'}: {what} (give sizes config.json "
                          "cannot express with --extra, a JSON of presets)") from None


def convert(ckpt_dir, out_dir, *, dtype: str | None = None, overwrite: bool = False,
            family: str | types.ModuleType | None = None, extra: dict | None = None,
            chunk_bytes: int = 256 << 20, progress: bool = True, log=print) -> Summary:
  """Converts a PyTorch checkpoint directory into an Orbax checkpoint + `config.json`.

  Args:
    ckpt_dir: directory with config.json and the weights.
    out_dir: where to write; must not exist or be empty unless `overwrite`.
    dtype: "bfloat16" / "float32" / "float16" for every parameter; None keeps the source dtype.
    family: a family name in `FAMILIES` or a family module; None detects it from the keys.
    extra: sizes the config cannot express (a fixture's `extra`), passed to `config_from`.
    chunk_bytes: output bytes per Orbax item; bounds the memory held at once.
  Returns:
    A `Summary`. Raises CheckpointError / rules.ConversionError / FileExistsError before
    anything is written when the input is bad.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top

  start = time.time()
  out_dir = pathlib.Path(out_dir)
  if dtype is not None and dtype not in _DTYPES:
    raise ValueError(f"dtype {dtype!r}: expected one of {sorted(_DTYPES)}")
  out_np_dtype = _np_dtype(dtype) if dtype else None
  _check_out_dir(out_dir, overwrite)  # before the (long) reading, and again before writing

  ckpt = Checkpoint(ckpt_dir)
  if family is None:
    name, fam = detect_family(ckpt.tensors)
  elif isinstance(family, str):
    name, fam = family, get_family(family)
  else:
    name, fam = getattr(family, "NAME", family.__name__.rpartition(".")[2]), family
  log(f"family: {name} [{LAYOUTS.get(name, 'custom')}] ({len(ckpt.tensors)} tensors in "
      f"{len(ckpt.files)} file(s))")
  shapes = {k: v.shape for k, v in ckpt.tensors.items()}
  config = model_config(fam, ckpt, extra)
  expected = abstract_params(fam, config)
  plan = rules.plan(fam.RULES, shapes, expected, fam.SKIP)

  _check_out_dir(out_dir, overwrite)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
  try:
    handler = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    n_tensors = sum(len(p) for p in plan.targets.values())
    bar = tqdm.tqdm(total=n_tensors, unit="tensor", disable=not progress, desc="converting")
    written = count = chunks = 0
    for i, group in enumerate(_chunks(plan, ckpt, chunk_bytes, out_np_dtype)):
      flat = {}
      with ckpt.reading() as read:
        for path in group:
          flat[path] = rules.assemble(path, plan.targets[path], plan.expected[path].shape,
                                      read, out_np_dtype)
          bar.update(len(plan.targets[path]))
      written += sum(a.nbytes for a in flat.values())
      count += sum(a.size for a in flat.values())
      handler.save(tmp / "params" / f"chunk_{i:03d}",
                   args=ocp.args.StandardSave(rules.unflatten(flat)))
      del flat
      chunks = i + 1
    bar.close()
    copied = [f.name for f in (pathlib.Path(ckpt_dir) / n for n in SIDE_FILES) if f.is_file()]
    for n in copied:  # the tokenizer travels with the weights, as in a released checkpoint
      shutil.copy(pathlib.Path(ckpt_dir) / n, tmp / n)
    meta = {"family": name, "config": config_to_json(config),
            "dtype": dtype or "source", "source": str(pathlib.Path(ckpt_dir).resolve()),
            "skipped": sorted(plan.skipped), "chunks": chunks, "copied": copied}
    (tmp / "config.json").write_text(json.dumps(meta, indent=1))
    _commit(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return Summary(name, n_tensors, len(plan.targets), count, sorted(plan.skipped), chunks,
                 written, time.time() - start, out_dir)


def load_converted(out_dir, shardings=None, dtype=None):
  """Restores a converted checkpoint: (model config, params nested dict of jax.Arrays).

  Args:
    out_dir: a directory written by `convert`.
    shardings: None (default device), one `jax.sharding.Sharding` for every parameter, or a
      nested dict matching the params (e.g. from logical axis rules); arrays are restored
      directly into that layout.
    dtype: cast every parameter to this dtype while restoring; None keeps the stored dtype.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  out_dir = pathlib.Path(out_dir).resolve()
  meta_path = out_dir / "config.json"
  if not meta_path.is_file():
    raise CheckpointError(f"{meta_path}: missing; {out_dir} is not a converted checkpoint")
  meta = json.loads(meta_path.read_text())
  config = config_from_json(meta["config"])
  chunk_dirs = sorted((out_dir / "params").glob("chunk_*"))
  if len(chunk_dirs) != meta["chunks"]:
    raise CheckpointError(f"{out_dir / 'params'}: {len(chunk_dirs)} chunks, config.json "
                          f"says {meta['chunks']}")
  flat_shardings = None
  if shardings is not None and not isinstance(shardings, jax.sharding.Sharding):
    flat_shardings = rules.flatten_shapes(shardings)
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  handler = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  params = {}
  for d in chunk_dirs:
    stored = rules.flatten_shapes(handler.metadata(d).item_metadata.tree)
    abstract = {}
    for path, m in stored.items():
      if flat_shardings is not None:
        if path not in flat_shardings:
          raise KeyError(f"shardings has no entry for parameter {'/'.join(path)}")
        sh = flat_shardings[path]
      else:
        sh = shardings or default
      abstract[path] = jax.ShapeDtypeStruct(m.shape, dtype or m.dtype, sharding=sh)
    restored = handler.restore(d, args=ocp.args.StandardRestore(rules.unflatten(abstract)))
    params.update(rules.flatten_shapes(restored))
  return config, rules.unflatten(params)
