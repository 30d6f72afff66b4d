"""The CPU decode product (`kernels.cpu`) and the `Panels` layout it reads: equal to XLA's
products for every row count, ragged panel, thread split and einsum form the model uses; a
kernel that cannot be built turns into a logged fallback, never a failed sampler."""

import ctypes
import logging
import os
import platform
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janus_jax.kernels import cpu
from janus_jax.models import layers
from janus_jax.sampling import decode_layout

needs_kernel = pytest.mark.skipif(not cpu.available(),
                                  reason=f"CPU panel product: {cpu.unavailable_reason()}")


def _rand(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


@needs_kernel
@pytest.mark.parametrize("m", list(range(1, 18)) + [64])  # every leftover of 6- and 8-row tiles
def test_panel_matmul_equals_the_product(m):
  c = cpu.panel_columns()
  # Odd depth; 8 panels, the last ragged, dealt out two at a time (chunks of ceil(8 / 4)), so
  # the rows left over after full tiles take the two-panel tile, the ragged one included.
  k, n = 37, 7 * c + 5
  x, w = _rand((m, k), 0), _rand((k, n), 1)
  packed = cpu.Panels.pack(w, 1, c)
  assert packed.data.shape == (8, k, c)
  np.testing.assert_array_equal(np.asarray(packed.unpack()), np.asarray(w))
  got = jax.jit(lambda x, d: cpu.panel_matmul(x, d, n))(x, packed.data)
  want = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  if m == 1:
    for bad, n_bad in ((x, n + c), (x[:, :-1], n), (x[0], n)):
      with pytest.raises(ValueError, match=r"panel_matmul: rows .* and panels \(8, 37, "):
        cpu.panel_matmul(bad, packed.data, n_bad)


@needs_kernel
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 builds")
@pytest.mark.parametrize(("flag", "columns"), [("-mno-avx512f", 16), ("-mno-avx", 8)])
def test_the_narrower_builds(monkeypatch, tmp_path, flag, columns):
  """The builds an AVX2 machine (16-column panels, 6-row tiles, interleaved rows) and an
  SSE-only one (8 columns) get, made here with `flag` beside the native one and called under
  their own FFI targets: equal to the product for every leftover row count."""
  compiler = os.environ.get("CXX") or shutil.which("c++") or "g++"
  monkeypatch.setenv("CXX", f"{compiler} {flag}")
  monkeypatch.setenv("JANUS_JAX_CACHE", str(tmp_path))
  library = ctypes.CDLL(str(cpu._build()))
  assert library.janus_panel_columns() == columns
  target = f"janus_panel_matmul_test_{columns}"
  jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(library.JanusPanelMatmul),
                              platform="cpu")
  k, n = 29, 8 * columns + 3  # 9 panels in chunks of 3: pairs, single panels, odd starts
  w = _rand((k, n), 11)
  data = cpu.Panels.pack(w, 1, columns).data
  for m in list(range(1, 14)) + [40]:
    x = _rand((m, k), m)
    got = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((m, n), jnp.float32))(x, data)
    np.testing.assert_allclose(np.asarray(got),
                               np.asarray(x, np.float64) @ np.asarray(w, np.float64),
                               rtol=1e-5, atol=1e-5, err_msg=f"{m} rows")


@needs_kernel
def test_threads_share_the_panels():
  """A weight large enough to be shared out between XLA's pool threads (8 here: one per test
  CPU device) and a jitted loop calling the product many times give the one-thread answer."""
  k, n, c = 512, 4000, cpu.panel_columns()
  x, w = _rand((8, k), 2), _rand((k, n), 3)
  data = cpu.Panels.pack(w, 1, c).data
  loop = jax.jit(lambda x, d: jax.lax.fori_loop(
      0, 20, lambda i, acc: acc + cpu.panel_matmul(x, d, n), jnp.zeros((8, n))))
  want = 20 * (np.asarray(x, np.float64) @ np.asarray(w, np.float64))
  np.testing.assert_allclose(np.asarray(loop(x, data)), want, rtol=1e-4, atol=1e-3)


@needs_kernel
def test_einsum_and_dense_on_panels(caplog):
  """The model's three product forms (dense, q/k/v with head axes, o over two contracted
  axes), a transposed output, a prefill's many rows, and bfloat16 (the XLA product)."""
  x, wq, wo = _rand((2, 3, 16), 4), _rand((16, 4, 5), 5), _rand((4, 5, 16), 6)
  for spec, xin, w, rank in (("BTD,DNH->BTNH", x, wq, 1), ("BTD,DNH->NBTH", x, wq, 1),
                             ("BTNH,NHD->BTD", _rand((2, 3, 4, 5), 7), wo, 2)):
    got = layers.einsum(spec, xin, cpu.Panels.pack(w, rank))
    np.testing.assert_allclose(np.asarray(got), np.asarray(jnp.einsum(spec, xin, w)),
                               rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="contracts exactly its first 1 axes"):
    layers.einsum("BTN,DNH->BTDH", _rand((2, 3, 4), 8), cpu.Panels.pack(wq, 1))
  with pytest.raises(ValueError, match="the weight has rank 3$"):
    layers.einsum("BTD,DN->BTN", x, cpu.Panels.pack(wq, 1))

  dense = layers.dense(70, use_bias=True)
  many = _rand((2, 150, 16), 9)
  params = nn.unbox(dense.init(jax.random.key(0), many)["params"])
  packed = {**params, "kernel": cpu.Panels.pack(params["kernel"], 1)}
  for rows in (many[:, :5], many):
    np.testing.assert_allclose(np.asarray(dense.apply({"params": packed}, rows)),
                               np.asarray(dense.apply({"params": params}, rows)),
                               rtol=1e-5, atol=1e-5)
  bf16 = layers.dense(70, dtype=jnp.bfloat16)
  cpu._warn_once.cache_clear()  # noqa: SLF001  (said once per process otherwise)
  with caplog.at_level(logging.WARNING, logger=cpu.__name__):
    got = bf16.apply({"params": packed}, many[:, :5])
    bf16.apply({"params": packed}, many[:, :5])
  said = [r.message for r in caplog.records if r.message.startswith("Panels.product")]
  assert len(said) == 1 and "bfloat16 rows (the CPU product multiplies float32 only" in said[0]
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             np.asarray(bf16.apply({"params": params}, many[:, :5]), np.float32),
                             rtol=2e-2, atol=2e-2)
  with pytest.raises(ValueError, match=r"kernel: a packed \(16, 70\) weight where"):
    layers.dense(71).apply({"params": packed}, many)


def test_a_kernel_that_cannot_be_built_falls_back(monkeypatch, tmp_path):
  """No compiler, a failing compiler and the off switch each leave `available()` False with
  the reason; the decode layout then keeps whole kernels, and `panels=True` names the reason."""
  p = {"lm_head": {"kernel": _rand((16, 40), 10)}}
  was = cpu.available()
  try:
    monkeypatch.setenv("JANUS_JAX_CACHE", str(tmp_path))
    for env, reason in ((("CXX", "/bin/false"),), "/bin/false failed on"), \
                       ((("JANUS_JAX_CPU_KERNELS", "0"),), "turned off"):
      for name, value in env:
        monkeypatch.setenv(name, value)
      cpu._load.cache_clear()
      assert not cpu.available() and reason in cpu.unavailable_reason()
      with pytest.raises(RuntimeError, match="unavailable: .*" + reason):
        cpu.panel_columns()
      with pytest.raises(RuntimeError, match="panels=True.*" + reason):
        decode_layout.decode_layout(p, panels=True)
      assert layers.is_array(decode_layout.decode_layout(p)["lm_head"]["kernel"])
      for name, _ in env:
        monkeypatch.delenv(name)
    assert list(tmp_path.iterdir()) == []  # a failed build leaves nothing behind
  finally:
    monkeypatch.undo()
    cpu._load.cache_clear()
  assert cpu.available() == was  # from the cache; registering again is harmless
