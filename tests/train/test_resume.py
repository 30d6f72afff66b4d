"""Resume is exact; SIGTERM leaves a restorable checkpoint; a NaN stops the run cleanly."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from janus_jax.train import checkpoint
from janus_jax.train import metrics
from janus_jax.train import train_steps
from janus_jax.train import trainer
from tests.train import helpers


def _restore(config, workdir, step=None):
  s = trainer.setup(config)
  ck = checkpoint.Checkpointer(f"{workdir}/checkpoints", save_every=1)
  out = ck.restore(checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings), step)
  ck.close()
  return out


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
  kw = {"ckpt.every": 3, "data.kinds": ("text", "text"), "optim.warmup_steps": 4}
  config = helpers.tiny_config("llm", total_steps=6, **kw)
  straight = trainer.train(config, str(tmp_path / "a"))
  first = trainer.train(helpers.tiny_config("llm", total_steps=3, **kw), str(tmp_path / "b"))
  assert first["step"] == 3
  resumed = trainer.train(config, str(tmp_path / "b"))  # picks up step 3 and its data position
  assert resumed["step"] == 6
  assert resumed["loss"] == straight["loss"]
  step_a, state_a, data_a = _restore(config, tmp_path / "a", 6)
  step_b, state_b, data_b = _restore(config, tmp_path / "b", 6)
  assert data_a == data_b == {"index": 6}
  for a, b in zip(jax.tree_util.tree_leaves(state_a), jax.tree_util.tree_leaves(state_b)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The TensorBoard files hold the per-step scalars of both halves.
  events = [f for f in os.listdir(tmp_path / "b" / "tb")]
  steps = sorted(s for f in events for s, _ in
                 metrics.read_scalars(str(tmp_path / "b" / "tb" / f))["loss"])
  assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  cmd = [sys.executable, str(helpers.REPO / "train.py"),
         "--config", str(helpers.REPO / "configs/train_tiny.py") + ":llm",
         "--workdir", str(tmp_path), "--config.total_steps=100000", "--config.ckpt.every=100000"]
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
      tb = tmp_path / "tb"
      files = list(tb.glob("events.*")) if tb.exists() else []
      if files and len(metrics.read_scalars(str(files[0])).get("loss", [])) >= 3:
        break
      time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, out.decode()[-3000:]
  assert b"received SIGTERM" in out
  config = helpers.tiny_config("llm")
  step, state, data = _restore(config, tmp_path)  # onto this process's 8-device mesh
  assert 3 <= step < 100000 and data == {"index": step}
  assert int(state.step) == step


class _NanAt:
  """Wraps an iterator and poisons the pixels of batch `at` (1-based step)."""

  def __init__(self, inner, at):
    self.inner, self.at = inner, at

  def __iter__(self):
    return self

  def __next__(self):
    b = next(self.inner)
    if self.inner.index == self.at:
      b = dict(b, pixel_values=np.full_like(b["pixel_values"], np.nan))
    return b

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, s):
    self.inner.set_state(s)


@pytest.mark.slow
def test_nan_batch_stops_with_message_and_keeps_good_checkpoint(tmp_path):
  config = helpers.tiny_config("janus", total_steps=10, **{
      "ckpt.every": 1, "data.kinds": ("und",), "data.seq_len": 32})
  s = trainer.setup(config)
  data = _NanAt(trainer.make_data(config, s.module), at=3)
  with pytest.raises(metrics.NonFiniteError, match=r"step 3: .*loss=nan"):
    trainer.train(config, str(tmp_path), data=data)
  ck = checkpoint.Checkpointer(tmp_path / "checkpoints", save_every=1)
  assert ck.all_steps() == [1, 2]
  ck.close()


def test_synthetic_iterator_state_roundtrip():
  d = train_steps.SyntheticData(batch_size=2, seq_len=16, vocab=50, seed=3)
  next(d)
  state = d.get_state()
  want = next(d)
  d2 = train_steps.SyntheticData(batch_size=2, seq_len=16, vocab=50, seed=3)
  d2.set_state(state)
  got = next(d2)
  for k in want:
    np.testing.assert_array_equal(want[k], got[k])
