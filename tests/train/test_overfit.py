"""A tiny model overfits one fixed batch: Janus understanding, text and generation (per-kind
losses of one mixed batch) and JanusFlow (rectified flow + REPA + understanding)."""

import jax
import numpy as np
import pytest

from janus_jax import sharding
from janus_jax.train import trainer
from tests.train import helpers


def _fit(config, steps, fixed_rng=False):
  s = trainer.setup(config, jax.devices()[:1])
  batch = next(trainer.make_data(config, s.module))
  step = trainer.make_step(config, s, batch)
  state = s.init_state()
  gbatch = sharding.global_batch(batch, s.mesh)
  history = []
  for i in range(steps):
    state, m = step(state, gbatch, jax.random.key(0 if fixed_rng else i))
    history.append({k: float(v) for k, v in m.items()})
  return history


@pytest.mark.slow
def test_janus_overfits_each_kind():
  config = helpers.tiny_config("janus", mesh=(1, 1, 1), **{
      "data.batch_size": 2, "data.fixed": True, "optim.lr": 3e-3, "optim.warmup_steps": 0,
      "optim.frozen": ()})
  h = _fit(config, 40)
  for kind in ("und", "text", "gen"):
    first, last = h[0][f"loss_{kind}"], h[-1][f"loss_{kind}"]
    assert h[0][f"tokens_{kind}"] > 0
    assert last < first / 8, (kind, first, last)


@pytest.mark.slow
def test_janusflow_overfits():
  config = helpers.tiny_config("janusflow", mesh=(1, 1, 1), **{
      "data.batch_size": 2, "data.fixed": True, "optim.lr": 3e-3, "optim.warmup_steps": 0})
  # One noise draw (fixed rng): the flow loss becomes a fixed regression to memorise.
  h = _fit(config, 40, fixed_rng=True)
  assert h[-1]["loss_rf"] < h[0]["loss_rf"] / 5, (h[0]["loss_rf"], h[-1]["loss_rf"])
  assert h[-1]["loss_und"] < h[0]["loss_und"] / 5
  assert h[-1]["loss_repa"] < h[0]["loss_repa"] - 0.3  # cosine similarity rises
