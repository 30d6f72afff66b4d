"""Fast unit tests of the trainer's parts: optimizer groups, event files, NaN stops, checkpoints."""

import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from janus_jax import sharding
from janus_jax.train import checkpoint
from janus_jax.train import metrics
from janus_jax.train import optim

PARAMS = {"vision_model": {"w": jnp.ones((4, 4))},
          "language_model": {"a": {"kernel": jnp.ones((4, 8))}, "b": {"scale": jnp.ones((8,))}},
          "gen_head": {"kernel": jnp.ones((8, 2))}}


def _opt(**kw):
  base = dict(lr=1e-2, warmup_steps=0, trainable=(), frozen=(), lr_mults=(), grad_clip=1.0)
  return ml_collections.ConfigDict({**base, **kw})


def test_frozen_params_have_no_optimizer_state():
  tx, labels, _ = optim.make(_opt(frozen=(r"vision_model/.*", r"language_model/.*")), PARAMS)
  assert optim.frozen_paths(labels) == [
      "language_model/a/kernel", "language_model/b/scale", "vision_model/w"]
  state = tx.init(PARAMS)
  held = [optim.path_str(p) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
          if np.ndim(x) > 0]
  # Adam keeps mu and nu for gen_head/kernel only; the rest are scalar step counters.
  assert len(held) == 2 and all(p.endswith("gen_head/kernel") for p in held), held
  assert optim.count_state_entries(state) == 2 * 16 + sum(
      1 for x in jax.tree_util.tree_leaves(state) if np.ndim(x) == 0)
  grads = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
  updates, _ = tx.update(grads, state, PARAMS)
  new = optax.apply_updates(PARAMS, updates)
  assert np.array_equal(new["vision_model"]["w"], PARAMS["vision_model"]["w"])
  assert not np.array_equal(new["gen_head"]["kernel"], PARAMS["gen_head"]["kernel"])


def test_trainable_list_and_lr_multipliers():
  tx, labels, _ = optim.make(
      _opt(trainable=(r"gen_head/.*", r"language_model/a/.*"),
           lr_mults=((r"language_model/.*", 0.1),)), PARAMS)
  assert labels["vision_model"]["w"] == optim.FROZEN
  assert labels["language_model"]["a"]["kernel"] == "lr_x0.1"
  assert labels["gen_head"]["kernel"] == "lr_x1"
  grads = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
  updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
  # First Adam step moves each weight by ~lr * mult.
  np.testing.assert_allclose(updates["gen_head"]["kernel"], -1e-2, rtol=1e-3)
  np.testing.assert_allclose(updates["language_model"]["a"]["kernel"], -1e-3, rtol=1e-3)


def test_regex_that_matches_nothing_is_an_error():
  with pytest.raises(ValueError, match="match no parameter.*languag_model"):
    optim.make(_opt(frozen=(r"languag_model/.*",)), PARAMS)


def test_warmup_then_constant():
  sched = optim.schedule(_opt(lr=1.0, warmup_steps=4))
  np.testing.assert_allclose([sched(i) for i in (0, 2, 4, 100)], [0.0, 0.5, 1.0, 1.0])


def test_event_file_roundtrip(tmp_path):
  w = metrics.EventWriter(str(tmp_path))
  w.scalars(3, {"loss": 1.5, "lr": 1e-3})
  w.scalars(4, {"loss": 1.25})
  w.close()
  got = metrics.read_scalars(w.path)
  assert got["loss"] == [(3, 1.5), (4, 1.25)]
  np.testing.assert_allclose(got["lr"][0][1], 1e-3, rtol=1e-6)
  assert metrics.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_non_finite_metric_is_named():
  with pytest.raises(metrics.NonFiniteError, match=r"step 7: grad_norm=nan"):
    metrics.check_finite({"loss": 1.0, "grad_norm": float("nan")}, 7)


def test_mesh_fill_and_divisibility_fallback():
  mesh = sharding.make_mesh((2, -1, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="needs 12 devices"):
    sharding.make_mesh((3, 2, 2))
  spec = sharding._fit_spec(jax.sharding.PartitionSpec("fsdp", "tensor"), (3, 4), mesh)
  assert spec == jax.sharding.PartitionSpec(None, "tensor")


class _Iter:
  def __init__(self):
    self.i = 0

  def get_state(self):
    return {"i": self.i}

  def set_state(self, s):
    self.i = s["i"]


def test_damaged_latest_checkpoint_falls_back(tmp_path, caplog):
  ck = checkpoint.Checkpointer(tmp_path, save_every=1, keep=5)
  mesh = sharding.make_mesh((1, -1, 1))
  sh = sharding.batch_sharding(mesh, 2)
  for step in (1, 2):
    state = {"w": jax.device_put(jnp.full((8, 2), float(step)), sh)}
    it = _Iter()
    it.i = step * 10
    ck.save(step, state, checkpoint.iterator_state(it))
  ck.wait()
  # Damage step 2: truncate every array file of its state item.
  for f in (tmp_path / "2" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "d" in f.parent.name:
      f.write_bytes(b"garbage")
  abstract = {"w": jax.ShapeDtypeStruct((8, 2), jnp.float32, sharding=sh)}
  ck2 = checkpoint.Checkpointer(tmp_path, save_every=1, keep=5)
  with caplog.at_level(logging.WARNING):
    step, state, data = ck2.restore(abstract)
  assert step == 1 and data == {"i": 10}
  np.testing.assert_array_equal(state["w"], 1.0)
  assert "unreadable" in caplog.text and "falling back to step 1" in caplog.text
  ck.close()
  ck2.close()


def test_ema_update_keeps_float32_and_moves_toward_params():
  ema = {"w": jnp.zeros((3,), jnp.float32)}
  params = {"w": jnp.ones((3,), jnp.bfloat16)}
  out = optim.ema_update(ema, params, 0.9)
  assert out["w"].dtype == jnp.float32
  np.testing.assert_allclose(out["w"], 0.1)


def test_reporter_throughput_survives_back_to_back_reports(monkeypatch):
  # One step per second, except that step 10 is reported right after step 9, as train.py
  # does on a synchronous backend at the last step: the mean over the logged window holds.
  clock = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 9.001])
  monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
  r = metrics.Reporter(None, total_steps=10, start_step=0, tokens_per_step=100,
                       flops_per_token=1.0, every=5)
  out = [r.step(i, {"loss": 1.0}, 0.1) for i in range(1, 11)]
  r.close()
  assert "step_time_s" not in out[0]
  assert out[4]["step_time_s"] == pytest.approx(1.0)  # steps 2-5 since the first report
  assert out[9]["step_time_s"] == pytest.approx(4.001 / 5)  # since step 5, not since step 9
  assert out[9]["tokens_per_s"] == pytest.approx(100 / (4.001 / 5))
