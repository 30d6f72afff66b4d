"""The decode layout: split, stacked and (on the CPU) packed parameters run the model to the
same outputs; what cannot be packed stays whole; a laid-out tree is used as given; `free`
deletes every replaced array; a sharded kernel keeps its sharding when stacked."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janus_jax import sharding
from janus_jax.kernels import cpu
from janus_jax.models import layers
from janus_jax.models import llama
from janus_jax.sampling import decode_layout

CFG = llama.get_config("tiny")  # 4 heads, 4 KV heads
MODEL = llama.Model(CFG)
IDS = jnp.zeros((2, 6), jnp.int32)


def _init():
  return MODEL.init(jax.random.key(1), IDS[:1, :4], method=MODEL.init_all)


@pytest.fixture(scope="module")
def params():
  return nn.unbox(jax.jit(_init)())["params"]


def _run(p, cache: bool):
  """(final hidden states, logits, KV cache or None) of the decoder on a left-padded batch."""
  ids = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 8))
  mask = np.ones((2, 8), bool)
  mask[1, :3] = False
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  emb = MODEL.apply({"params": p}, jnp.asarray(ids), method=MODEL.embed)
  c = llama.init_cache(CFG, 2, 10) if cache else None

  def forward(mod, *args, **kw):
    out = mod(*args, **kw)
    return out.hidden, mod.logits(out.hidden), out.cache

  return jax.jit(lambda q: MODEL.apply(
      {"params": q}, emb, jnp.asarray(pos), attn_mask=jnp.asarray(mask), cache=c,
      method=forward))(p)


@pytest.mark.parametrize("layout", ["cpu_xla", "stacked", pytest.param(
    "panels", marks=pytest.mark.skipif(not cpu.available(), reason="no CPU panel product"))])
def test_laid_out_parameters_give_the_same_outputs(params, layout):
  """The CPU layout without the panel product (layers split only), the accelerators' (q/k/v and
  gate/up stacked) and the CPU's with it (stacked, then packed)."""
  split = llama.split_layers(params)
  if layout == "stacked":
    laid = decode_layout.stack_projections(split)
  else:
    laid = decode_layout.decode_layout(params, panels=layout == "panels")
  layer, old = laid["model"]["layers"][1], split["model"]["layers"][1]
  if layout == "cpu_xla":  # XLA:CPU's products are slower on stacked kernels
    assert layer.keys() == old.keys() and layer["self_attn"].keys() == old["self_attn"].keys()
  else:
    assert sorted(layer["self_attn"]) == ["o_proj", "qkv_proj"]
    assert sorted(layer["mlp"]) == ["down_proj", "gate_up_proj"]
    kind = cpu.Panels if layout == "panels" else jax.Array
    for w in (layer["self_attn"]["qkv_proj"], layer["mlp"]["down_proj"]["kernel"],
              laid["lm_head"]["kernel"]):
      assert isinstance(w, kind)
    qkv = layer["self_attn"]["qkv_proj"]
    qkv = qkv.unpack() if layout == "panels" else qkv
    np.testing.assert_array_equal(qkv[:, 2], old["self_attn"]["v_proj"])
  for cache in (False, True):
    want, got = _run(split, cache), _run(laid, cache)
    # Each product rounds as the kernel that computes it: equal to ~1e-6 on outputs of ~1.
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  assert decode_layout.decode_layout(laid) is laid  # laid out already: used as given


def test_grouped_query_layers_keep_their_kernels_and_dtypes_are_checked():
  gqa = llama.Model(llama.get_config("tiny", num_kv_heads=2))
  p = nn.unbox(gqa.init(jax.random.key(0), IDS[:1, :4], method=gqa.init_all))["params"]
  layer = decode_layout.stack_projections(llama.split_layers(p))["model"]["layers"][0]
  assert "q_proj" in layer["self_attn"] and "gate_up_proj" in layer["mlp"]
  with pytest.raises(TypeError, match="'float33' not understood"):
    decode_layout.decode_layout(p, dtype="float33")


@pytest.mark.skipif(not cpu.available(), reason="no CPU panel product")
def test_what_is_packed_on_the_cpu(params):
  """float32 kernels on one device are packed; for a bfloat16 product, across several
  devices, or traced with several devices (placement unknown) they stay whole."""
  assert isinstance(decode_layout.decode_layout(params)["lm_head"]["kernel"], cpu.Panels)
  bf16 = decode_layout.decode_layout(params, dtype=jnp.bfloat16)
  assert layers.is_array(bf16["lm_head"]["kernel"])
  mesh = sharding.make_mesh((1, 2, 4))
  shardings = sharding.logical_shardings(jax.eval_shape(_init)["params"], mesh,
                                         sharding.DEFAULT_RULES)
  placed = decode_layout.decode_layout(jax.device_put(params, shardings), panels=True)
  assert layers.is_array(placed["model"]["layers"][0]["mlp"]["down_proj"]["kernel"])
  traced = []
  jax.jit(lambda q: traced.append(decode_layout.decode_layout(q)["lm_head"]["kernel"]) or 0)(
      params)
  assert layers.is_array(traced[0])


def test_free_deletes_what_was_replaced_and_stacking_keeps_the_sharding(params):
  copy = jax.tree.map(jnp.copy, params)
  stacked_q = copy["model"]["layers"]["self_attn"]["q_proj"]
  kernel, scale = copy["lm_head"]["kernel"], copy["model"]["norm"]["scale"]
  laid = decode_layout.decode_layout(copy, free=True)
  assert stacked_q.is_deleted() and kernel.is_deleted() and not scale.is_deleted()
  got = laid["lm_head"]["kernel"]
  np.testing.assert_array_equal(np.asarray(got.unpack() if isinstance(got, cpu.Panels) else got),
                                params["lm_head"]["kernel"])

  mesh = sharding.make_mesh((1, 2, 4))  # FSDP on D, tensor on heads / FFN columns
  shardings = sharding.logical_shardings(jax.eval_shape(_init)["params"], mesh,
                                         sharding.DEFAULT_RULES)
  placed = llama.split_layers(jax.device_put(params, shardings))
  q = placed["model"]["layers"][0]["self_attn"]["q_proj"]
  layer = decode_layout.stack_projections(placed, free=True)["model"]["layers"][0]
  assert q.is_deleted()
  assert tuple(layer["self_attn"]["qkv_proj"].sharding.spec) == ("fsdp", None, "tensor", None)
  assert tuple(layer["mlp"]["gate_up_proj"].sharding.spec)[:3] == ("fsdp", None, "tensor")
  bad = decode_layout.stack_projections(llama.split_layers(params))
  bad["model"]["layers"][0]["mlp"]["gate_up_proj"] = layer["mlp"]["gate_up_proj"][:, :, :64]
  with pytest.raises(Exception, match="gate_up_proj"):
    _run(bad, cache=False)
