"""The GPU decode-step probe (bench/probes/decode_step_probe.py) computes what it claims to time.

Its Pallas variant must attend over exactly the valid slots (from each row's left-padding start
to the current slot) as the einsum attention does with its mask; run here in Pallas's
interpreter. Each variant's timing loop runs at tiny shapes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("jax.experimental.pallas.ops.gpu.decode_attention")
from bench.probes import decode_step_probe as probe  # noqa: E402  (after the skip)


def test_pallas_attention_reads_the_valid_slots_as_the_masked_einsum():
  rows, heads, cap, dim = 3, 2, 64, 16
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(k1, (rows, 1, heads, dim))
  ck = jax.random.normal(k2, (rows, heads, cap, dim))
  cv = jax.random.normal(k3, (rows, heads, cap, dim))
  start = jnp.array([0, 3, 5], jnp.int32)
  length = jnp.full((rows,), 40, jnp.int32)  # slots 0..39 written
  slots = jnp.arange(cap)[None]
  valid = (slots >= start[:, None]) & (slots < length[:, None])
  want = probe.attend_einsum(q, ck, cv, valid)
  got = probe.attend_pallas(q, ck, cv, start, length, k_splits=4, block_k=16, interpret=True)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  other = probe.attend_einsum(q, ck, cv, slots < length[:, None])  # padding not masked
  assert not np.allclose(np.asarray(other), np.asarray(want), atol=1e-3)


@pytest.mark.parametrize("variant", ["base", "fused+pallas"])
def test_variants_run(variant, capsys):
  probe.main(["--tiny", "--dtype", "float32", "--variant", variant, "--capacity", "64",
              "--index", "30", "--steps", "2", "--k_splits", "4", "--block_k", "16"])
  assert f"variant={variant} layers=2" in capsys.readouterr().out


def test_an_unknown_variant_is_refused_by_name(capsys):
  with pytest.raises(SystemExit):
    probe.main(["--tiny", "--variant", "fsued"])
  assert "--variant" in capsys.readouterr().err


@pytest.mark.parametrize("flags, named", [
    (["--index", "60", "--steps", "8"], "--capacity"),  # writes past the 64-slot cache
    (["--steps", "0"], "--steps"),
    (["--layers", "-1"], "--layers"),
])
def test_steps_outside_the_cache_and_bad_counts_are_refused_by_name(flags, named, capsys):
  with pytest.raises(SystemExit):
    probe.main(["--tiny", "--capacity", "64", *flags])
  assert named in capsys.readouterr().err
