"""Two JAX processes on localhost (CPU collectives) train together and agree with one process."""

import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from janus_jax.train import checkpoint
from janus_jax.train import trainer
from tests.train import helpers


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _cmd(workdir, *extra):
  return [sys.executable, str(helpers.REPO / "train.py"),
          "--config", str(helpers.REPO / "configs/train_tiny.py") + ":llm",
          "--workdir", str(workdir), "--config.total_steps=3", "--config.ckpt.every=3",
          "--config.data.kinds=('text','text')", *extra]


def _env(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _loss(output: bytes) -> float:
  m = re.search(rb"done: .*'loss': ([0-9.e+-]+)", output)
  assert m, output.decode()[-3000:]
  return float(m.group(1))


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(tmp_path / "two", f"--coordinator=localhost:{port}", "--num_processes=2",
           f"--process_id={i}"), env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  one = subprocess.run(_cmd(tmp_path / "one"), env=_env(4), capture_output=True, timeout=600)
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o.decode()[-3000:]
  assert one.returncode == 0, (one.stdout + one.stderr).decode()[-3000:]
  loss_one = _loss(one.stdout + one.stderr)
  assert _loss(outs[0]) == _loss(outs[1])
  np.testing.assert_allclose(_loss(outs[0]), loss_one, rtol=1e-5)

  config = helpers.tiny_config("llm", **{"data.kinds": ("text", "text")})
  s = trainer.setup(config)
  abstract = checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings)
  states = []
  for name in ("two", "one"):
    ck = checkpoint.Checkpointer(tmp_path / name / "checkpoints", save_every=1)
    step, state, data = ck.restore(abstract)
    ck.close()
    assert step == 3 and data == {"index": 3}
    states.append(state)
  for a, b in zip(jax.tree_util.tree_leaves(states[0].params),
                  jax.tree_util.tree_leaves(states[1].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
