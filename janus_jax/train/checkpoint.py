"""Checkpoints: Orbax `CheckpointManager` around the train state and the data iterator state.

A checkpoint step directory holds two items:
  state/  the `TrainState` pytree (sharded arrays, written asynchronously by every process),
  data/   one JSON file per process with that process's data-iterator state (grain iterators and
          `train_steps.SyntheticData` both expose `get_state()` / `set_state()`).

Restoring takes an *abstract* state (ShapeDtypeStructs carrying the target shardings), so a run
can resume on a different mesh or process count: Orbax reads each shard straight onto its device.
If the newest checkpoint cannot be read (a half-written or damaged directory) the previous one is
used, with a warning. The trainer only calls `save` after checking the step's metrics are finite,
so a NaN never replaces a good checkpoint.

`PreemptionGuard` turns SIGTERM / SIGINT into a flag the training loop polls: the loop then
saves, waits for the async write and exits cleanly.
"""

import dataclasses
import json
import logging
import signal
from typing import Any

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from janus_jax.train import optim

log = logging.getLogger(__name__)


# --- The data iterator item --------------------------------------------------------------------


def iterator_state(iterator) -> Any:
  """A JSON-able snapshot of an iterator's state (grain DataLoader iterators return bytes)."""
  state = iterator.get_state()
  if isinstance(state, bytes):
    return {"__bytes__": state.decode()}
  return state


def set_iterator_state(iterator, state) -> None:
  if isinstance(state, dict) and "__bytes__" in state:
    state = state["__bytes__"].encode()
  iterator.set_state(state)


class DataStateHandler(ocp.CheckpointHandler):
  """Writes one JSON file per process (each host has its own shard of the input pipeline)."""

  def _file(self, directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

  def save(self, directory: epath.Path, args: "DataSave"):
    directory.mkdir(parents=True, exist_ok=True)
    self._file(directory).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: "DataRestore" = None):
    path = self._file(directory)
    if path.exists():
      return json.loads(path.read_text())
    # Written by another process count: usable only if every process saved the same state
    # (e.g. iterators that derive their rows from a global position).
    states = [json.loads(f.read_text()) for f in sorted(directory.glob("process_*-of-*.json"))]
    if states and all(st == states[0] for st in states):
      return states[0]
    raise FileNotFoundError(f"no data-iterator state for this process at {path}, and the "
                            f"{len(states)} saved per-process states differ (the checkpoint was "
                            "written with a different process count)")

  def metadata(self, directory):
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  pass


# --- The manager -------------------------------------------------------------------------------


class Checkpointer:
  """Async saves every `save_every` steps, keeps the newest `keep`."""

  def __init__(self, directory, *, save_every: int, keep: int = 3, use_async: bool = True):
    self.directory = epath.Path(directory)
    self.every = max(int(save_every), 1)
    # The save decision is ours (`should_save`): Orbax's default also saves the very first step.
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=use_async),
        item_names=("state", "data"))

  def should_save(self, step: int) -> bool:
    return step % self.every == 0

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_state) -> bool:
    """Starts an async save of `state` and the data-iterator state at `step`."""
    if int(step) in self.manager.all_steps():
      return False
    return self.manager.save(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=DataSave(data_state)),
        force=True)

  def restore(self, abstract_state, step: int | None = None):
    """The newest readable checkpoint (or `step`), placed per `abstract_state`'s shardings.

    Args:
      abstract_state: tree of `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`.
      step: a specific step; None means the newest one that reads back.
    Returns:
      (step, state, data_state), or None when the directory has no checkpoint.
    """
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    for i, s in enumerate(steps):
      try:
        out = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=DataRestore()))
      except Exception as e:  # pylint: disable=broad-except
        if step is not None:
          raise
        later = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "none left"
        log.warning("checkpoint step %d in %s is unreadable (%s: %s); %s", s, self.directory,
                    type(e).__name__, str(e)[:300], later)
        continue
      return s, out["state"], out["data"]
    return None

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs that carry the target shardings (what `restore` needs)."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings)


# --- Initialising from a converted (PyTorch) checkpoint ---------------------------------------


def load_params(path, shardings=None):
  """Parameters written by `convert_torch.py`, placed per `shardings` (a nested dict, or None).

  Returns:
    (model config, params nested dict) as `janus_jax.convert.driver.load_converted` does.
  """
  from janus_jax.convert import driver  # pylint: disable=g-import-not-at-top
  return driver.load_converted(path, shardings=shardings)


def load_converted_params(path, params_abstract, shardings):
  """Model parameters from a `convert_torch.py` output, merged strictly into the train params.

  Trainer-only parameters absent from released checkpoints (the REPA projector) keep their
  fresh initialisation; every other parameter must be present with the right shape.

  Args:
    path: the converter's output directory.
    params_abstract: ShapeDtypeStruct tree of the train params. shardings: its NamedShardings.
  Returns:
    (loaded: dict of top-level keys found, to be merged into the freshly initialised params).
  """
  model_keys = [k for k in params_abstract if k != "repa_projector"]
  _, loaded = load_params(path, shardings={k: shardings[k] for k in model_keys})
  problems = []
  flat_want = {optim.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(
      {k: params_abstract[k] for k in model_keys})[0]}
  flat_got = {optim.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(loaded)[0]}
  for k in sorted(set(flat_want) - set(flat_got)):
    problems.append(f"missing {k}")
  for k in sorted(set(flat_got) - set(flat_want)):
    problems.append(f"unexpected {k}")
  for k in sorted(set(flat_want) & set(flat_got)):
    if tuple(flat_want[k].shape) != tuple(np.shape(flat_got[k])):
      problems.append(f"shape {k}: checkpoint {np.shape(flat_got[k])} vs model "
                      f"{flat_want[k].shape}")
  if problems:
    raise ValueError(f"converted checkpoint {path} does not fit the model:\n  " +
                     "\n  ".join(problems[:50]))
  return {k: jax.tree_util.tree_map(lambda x, w: x.astype(w.dtype), loaded[k],
                                    params_abstract[k]) for k in model_keys}


# --- Preemption --------------------------------------------------------------------------------


class PreemptionGuard:
  """Context manager: SIGTERM / SIGINT set `.requested` instead of killing the process.

  In multi-process runs `should_stop()` agrees across processes (any one signalled stops all),
  so every host reaches the final save together.
  """

  def __init__(self):
    self.requested = False
    self._old = {}

  def _handler(self, signum, frame):
    del frame
    log.warning("received %s: will save a checkpoint and stop after this step",
                signal.Signals(signum).name)
    self.requested = True

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handler)
    return self

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    return False

  def should_stop(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
    return bool(np.any(flags))
