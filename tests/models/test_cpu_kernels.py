"""The CPU decode product (`cpu_kernels`) and the `Panels` layout it reads: equal to XLA's
products for every row count, ragged panel, thread split and einsum form the model uses; the
decode layout packs on one device and falls back to column blocks where it cannot; a kernel
that cannot be built turns into a logged fallback, never a failed sampler."""

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

from janus_jax import sharding
from janus_jax.models import cpu_kernels
from janus_jax.models import layers
from janus_jax.models import llama

needs_kernel = pytest.mark.skipif(not cpu_kernels.available(),
                                  reason=f"CPU panel product: {cpu_kernels.unavailable_reason()}")


def _rand(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


@needs_kernel
@pytest.mark.parametrize("m", list(range(1, 18)) + [64])  # every leftover of 6- and 8-row tiles
def test_panel_matmul_equals_the_product(m):
  c = cpu_kernels.panel_columns()
  # Odd depth; 8 panels, the last ragged, dealt out two at a time (chunks of ceil(8 / 4)), so
  # the rows left over after full tiles take the two-panel tile, the ragged one included.
  k, n = 37, 7 * c + 5
  x, w = _rand((m, k), 0), _rand((k, n), 1)
  packed = layers.Panels.pack(w, 1, c)
  assert packed.data.shape == (8, k, c)
  np.testing.assert_array_equal(np.asarray(packed.unpack()), np.asarray(w))
  got = jax.jit(lambda x, d: cpu_kernels.panel_matmul(x, d, n))(x, packed.data)
  want = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  if m == 1:
    for bad, n_bad in ((x, n + c), (x[:, :-1], n), (x[0], n)):
      with pytest.raises(ValueError, match=r"panel_matmul: rows .* and panels \(8, 37, "):
        cpu_kernels.panel_matmul(bad, packed.data, n_bad)


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
  library = ctypes.CDLL(str(cpu_kernels._build()))
  assert library.janus_panel_columns() == columns
  target = f"janus_panel_matmul_test_{columns}"
  jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(library.JanusPanelMatmul),
                              platform="cpu")
  k, n = 29, 8 * columns + 3  # 9 panels in chunks of 3: pairs, single panels, odd starts
  w = _rand((k, n), 11)
  data = layers.Panels.pack(w, 1, columns).data
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
  k, n, c = 512, 4000, cpu_kernels.panel_columns()
  x, w = _rand((8, k), 2), _rand((k, n), 3)
  data = layers.Panels.pack(w, 1, c).data
  loop = jax.jit(lambda x, d: jax.lax.fori_loop(
      0, 20, lambda i, acc: acc + cpu_kernels.panel_matmul(x, d, n), jnp.zeros((8, n))))
  want = 20 * (np.asarray(x, np.float64) @ np.asarray(w, np.float64))
  np.testing.assert_allclose(np.asarray(loop(x, data)), want, rtol=1e-4, atol=1e-3)


@needs_kernel
def test_einsum_and_dense_on_panels(caplog):
  """The model's three product forms (dense, q/k/v with head axes, o over two contracted
  axes), a transposed output, a prefill's many rows, and bfloat16 (the XLA product)."""
  c = cpu_kernels.panel_columns()
  x, wq, wo = _rand((2, 3, 16), 4), _rand((16, 4, 5), 5), _rand((4, 5, 16), 6)
  for spec, xin, w, rank in (("BTD,DNH->BTNH", x, wq, 1), ("BTD,DNH->NBTH", x, wq, 1),
                             ("BTNH,NHD->BTD", _rand((2, 3, 4, 5), 7), wo, 2)):
    got = layers.einsum(spec, xin, layers.Panels.pack(w, rank, c))
    np.testing.assert_allclose(np.asarray(got), np.asarray(jnp.einsum(spec, xin, w)),
                               rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="contracts exactly its first 1 axes"):
    layers.einsum("BTN,DNH->BTDH", _rand((2, 3, 4), 8), layers.Panels.pack(wq, 1, c))
  with pytest.raises(ValueError, match="the weight has rank 3; options"):
    layers.einsum("BTD,DNH->BTNH", x, layers.Panels.pack(wq, 1, c), precision="highest")
  with pytest.raises(ValueError, match="the weight has rank 3$"):
    layers.einsum("BTD,DN->BTN", x, layers.Panels.pack(wq, 1, c))

  dense = layers.dense(70, use_bias=True)
  many = _rand((2, 150, 16), 9)
  params = dense.init(jax.random.key(0), many)["params"]
  packed = layers.panel_kernels(nn.unbox(params), c)
  assert isinstance(packed["kernel"], layers.Panels)
  for rows in (many[:, :5], many):
    np.testing.assert_allclose(np.asarray(dense.apply({"params": packed}, rows)),
                               np.asarray(dense.apply({"params": params}, rows)),
                               rtol=1e-5, atol=1e-5)
  bf16 = layers.dense(70, dtype=jnp.bfloat16)
  layers._warn_once.cache_clear()  # noqa: SLF001  (said once per process otherwise)
  with caplog.at_level(logging.WARNING, logger=layers.__name__):
    got = bf16.apply({"params": packed}, many[:, :5])
    bf16.apply({"params": packed}, many[:, :5])
  said = [r.message for r in caplog.records if r.message.startswith("Panels.product")]
  assert len(said) == 1 and "bfloat16 rows (the CPU product multiplies float32 only" in said[0]
  np.testing.assert_allclose(np.asarray(got, np.float32),
                             np.asarray(bf16.apply({"params": params}, many[:, :5]), np.float32),
                             rtol=2e-2, atol=2e-2)
  with pytest.raises(ValueError, match=r"kernel: panels of a \(16, 70\) weight where"):
    layers.dense(71).apply({"params": packed}, many)


@needs_kernel
def test_decode_layout_packs_on_one_device_and_cuts_across_several():
  cfg = llama.get_config("tiny")
  m = llama.Model(cfg)
  ids = jnp.zeros((2, 6), jnp.int32)
  init = lambda: m.init(jax.random.key(1), ids, method=m.init_all)  # noqa: E731
  p = nn.unbox(jax.jit(init)())["params"]
  laid = llama.decode_layout(p)  # the CPU default: panels
  layer = laid["model"]["layers"][0]
  assert isinstance(layer["self_attn"]["o_proj"], layers.Panels)
  assert isinstance(layer["mlp"]["down_proj"]["kernel"], layers.Panels)
  assert llama.decode_layout(laid)["lm_head"]["kernel"] is laid["lm_head"]["kernel"]
  blocked = llama.decode_layout(p, block_columns=24)  # block columns asked for: blocks
  assert isinstance(blocked["lm_head"]["kernel"], layers.Blocks)
  # float32 kernels for a bfloat16 product: blocks (the CPU product multiplies float32 only)
  assert not isinstance(llama.decode_layout(p, dtype=jnp.bfloat16)["lm_head"]["kernel"],
                        layers.Panels)
  assert isinstance(llama.decode_layout(p, dtype=jnp.float32)["lm_head"]["kernel"],
                    layers.Panels)
  with pytest.raises(TypeError, match="'float33' not understood"):
    llama.decode_layout(p, dtype="float33")

  emb = m.apply({"params": p}, ids, method=m.embed)
  pos = jnp.broadcast_to(jnp.arange(6), (2, 6))
  run = jax.jit(lambda params: m.apply(  # noqa: E731
      {"params": params}, emb, pos, cache=llama.init_cache(cfg, 2, 8),
      method=lambda mod, *a, **k: mod.logits(mod(*a, **k).hidden)))
  np.testing.assert_allclose(np.asarray(run(laid)), np.asarray(run(llama.split_layers(p))),
                             atol=1e-5)

  mesh = sharding.make_mesh((1, 2, 4))
  shardings = sharding.logical_shardings(jax.eval_shape(init)["params"], mesh,
                                         sharding.DEFAULT_RULES)
  placed = llama.decode_layout(jax.device_put(p, shardings), block_columns=24, panels=True)
  assert isinstance(placed["model"]["layers"][0]["mlp"]["down_proj"]["kernel"], layers.Blocks)
  traced = []  # inside jit, with 8 devices, the placement is unknown: not packed
  jax.jit(lambda q: traced.append(llama.decode_layout(q)["lm_head"]["kernel"]) or 0)(p)
  assert not isinstance(traced[0], layers.Panels)

  with pytest.raises(ValueError, match="panel columns must be >= 1, got 0"):
    layers.panel_kernels(p, 0)
  copy = jax.tree.map(jnp.copy, llama.split_layers(p))
  kernel = copy["lm_head"]["kernel"]
  freed = layers.panel_kernels(copy, cpu_kernels.panel_columns(), free=True)
  assert kernel.is_deleted()
  np.testing.assert_array_equal(np.asarray(freed["lm_head"]["kernel"].unpack()),
                                p["lm_head"]["kernel"])


def test_a_kernel_that_cannot_be_built_falls_back(monkeypatch, tmp_path):
  """No compiler, a failing compiler and the off switch each leave `available()` False with
  the reason; the decode layout then cuts column blocks, and `panels=True` names the reason."""
  p = {"lm_head": {"kernel": _rand((16, 40), 10)}}
  was = cpu_kernels.available()
  try:
    monkeypatch.setenv("JANUS_JAX_CACHE", str(tmp_path))
    for env, reason in ((("CXX", "/bin/false"),), "/bin/false failed on"), \
                       ((("JANUS_JAX_CPU_KERNELS", "0"),), "turned off"):
      for name, value in env:
        monkeypatch.setenv(name, value)
      cpu_kernels._load.cache_clear()
      assert not cpu_kernels.available() and reason in cpu_kernels.unavailable_reason()
      with pytest.raises(RuntimeError, match="unavailable: .*" + reason):
        cpu_kernels.panel_columns()
      with pytest.raises(RuntimeError, match="panels=True.*" + reason):
        llama.decode_layout(p, panels=True)
      assert isinstance(llama.decode_layout(p, block_columns=None)["lm_head"]["kernel"],
                        (layers.Blocks, np.ndarray, jax.Array))
      for name, _ in env:
        monkeypatch.delenv(name)
    assert list(tmp_path.iterdir()) == []  # a failed build leaves nothing behind
  finally:
    monkeypatch.undo()
    cpu_kernels._load.cache_clear()
  assert cpu_kernels.available() == was  # from the cache; registering again is harmless
