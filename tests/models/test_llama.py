"""LLaMA decoder: transformers LlamaForCausalLM parity (GQA, left padding), cached decoding
through a growing cache equals the full forward, split layer parameters, kernels in column
blocks, remat and tap."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janus_jax import sharding
from janus_jax.models import layers
from janus_jax.models import llama

CFG = llama.get_config("tiny", num_kv_heads=2)  # GQA: 2 query heads per KV head


@pytest.fixture(scope="module")
def model_params():
  m = llama.Model(CFG)
  ids = jnp.zeros((1, 4), jnp.int32)
  params = nn.unbox(jax.jit(lambda: m.init(jax.random.key(0), ids, method=m.init_all))())
  return m, params["params"]


def _inputs(b=2, t=20, pad=3):
  ids = np.random.default_rng(0).integers(0, CFG.vocab_size, (b, t))
  mask = np.ones((b, t), int)
  mask[1, :pad] = 0  # left padding, as batched prompts are
  pos = np.cumsum(mask, 1) - 1
  pos[mask == 0] = 1  # HF generate's convention for pads
  return ids, mask, pos


def test_matches_transformers_llama(model_params):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  m, p = model_params
  cfg = transformers.LlamaConfig(**{k: v for k, v in CFG.to_hf().items() if k != "model_type"})
  cfg._attn_implementation = "eager"
  hf = transformers.LlamaForCausalLM(cfg).eval()
  t = lambda x: torch.tensor(np.asarray(x, np.float32))  # noqa: E731
  lp = p["model"]["layers"]
  sd = {"model.embed_tokens.weight": t(p["model"]["embed_tokens"]["embedding"]),
        "lm_head.weight": t(p["lm_head"]["kernel"]).T,
        "model.norm.weight": t(p["model"]["norm"]["scale"])}
  for i in range(CFG.num_layers):
    pre = f"model.layers.{i}."
    sd[pre + "input_layernorm.weight"] = t(lp["input_layernorm"]["scale"][i])
    sd[pre + "post_attention_layernorm.weight"] = t(lp["post_attention_layernorm"]["scale"][i])
    for name in ("q_proj", "k_proj", "v_proj"):
      w = np.asarray(lp["self_attn"][name][i])
      sd[pre + f"self_attn.{name}.weight"] = t(w.reshape(w.shape[0], -1)).T
    w = np.asarray(lp["self_attn"]["o_proj"][i])
    sd[pre + "self_attn.o_proj.weight"] = t(w.reshape(-1, w.shape[-1])).T
    for name in ("gate_proj", "up_proj", "down_proj"):
      sd[pre + f"mlp.{name}.weight"] = t(lp["mlp"][name]["kernel"][i]).T
  hf.load_state_dict(sd, strict=False)
  ids, mask, pos = _inputs()
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
              position_ids=torch.tensor(pos)).logits.numpy()

  def fwd(mod, ids, mask, pos):
    return mod.logits(mod(mod.embed(ids), pos, attn_mask=mask).hidden)

  got = np.asarray(m.apply({"params": p}, ids, mask, pos, method=fwd))
  np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=1e-4, rtol=1e-4)


def test_cached_decoding_through_a_growing_cache_equals_full_forward(model_params):
  m, p = model_params
  ids, mask, pos = _inputs(t=20)
  emb = m.apply({"params": p}, jnp.asarray(ids), method=m.embed)
  full = m.apply({"params": p}, emb, jnp.asarray(pos), attn_mask=jnp.asarray(mask), tap_layer=0)
  step = jax.jit(lambda e, ps, mk, c: m.apply({"params": p}, e, ps, attn_mask=mk, cache=c,
                                              tap_layer=0))
  sizes = llama.segment_capacities(3, 20, 4)
  assert sizes == [8, 12, 16, 20]
  out = step(emb[:, :3], pos[:, :3], mask[:, :3], llama.init_cache(CFG, 2, sizes[0]))
  hidden, tap = [out.hidden], [out.tap]  # a 3-token prefill, then 1 by 1 through 4 sizes
  for s in range(3, 20):
    cache = llama.grow_cache(out.cache, next(z for z in sizes if z > s))
    out = step(emb[:, s:s + 1], pos[:, s:s + 1], mask[:, s:s + 1], cache)
    hidden.append(out.hidden)
    tap.append(out.tap)
  assert int(out.cache.index) == 20 and out.cache.capacity == 20
  for got, want in ((hidden, full.hidden), (tap, full.tap)):
    got = np.asarray(jnp.concatenate(got, axis=1))
    np.testing.assert_allclose(got[mask == 1], np.asarray(want)[mask == 1], atol=2e-5, rtol=2e-5)


def test_cache_sizes_and_bad_requests():
  assert llama.segment_capacities(0, 10, 1) == [10]
  assert llama.segment_capacities(5, 8, 8) == [6, 7, 8]  # never more sizes than slots
  assert llama.segment_capacities(64, 639, 8)[-1] == 639
  cache = llama.grow_cache(llama.init_cache(CFG, 2, 4), 6)
  assert cache.capacity == 6 and cache.k[0].shape == (2, CFG.num_kv_heads, 6, CFG.head_dim)
  assert len(cache.k) == CFG.num_layers and not np.asarray(cache.valid).any()
  with pytest.raises(ValueError, match="shrink"):
    llama.grow_cache(cache, 5)
  with pytest.raises(ValueError, match="start < capacity"):
    llama.segment_capacities(10, 10, 2)
  with pytest.raises(ValueError, match="segments"):
    llama.segment_capacities(0, 10, 0)


def test_split_layer_params_give_the_same_outputs(model_params):
  m, p = model_params
  split = llama.split_layers({"llm": p})["llm"]
  assert len(split["model"]["layers"]) == CFG.num_layers
  assert llama.split_layers(split)["model"]["layers"] is split["model"]["layers"]  # idempotent
  np.testing.assert_array_equal(split["model"]["layers"][1]["mlp"]["gate_proj"]["kernel"],
                                p["model"]["layers"]["mlp"]["gate_proj"]["kernel"][1])
  ids, mask, pos = _inputs(t=8)
  emb = m.apply({"params": p}, jnp.asarray(ids), method=m.embed)
  for cache in (None, llama.init_cache(CFG, 2, 10)):
    run = lambda params, c=cache: m.apply({"params": params}, emb, jnp.asarray(pos),  # noqa: E731
                                          attn_mask=jnp.asarray(mask), cache=c, tap_layer=1)
    want, got = run(p), run(split)
    for a, b in ((got.hidden, want.hidden), (got.tap, want.tap)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6)
    if cache is not None:
      for a, b in zip(got.cache.k + got.cache.v, want.cache.k + want.cache.v):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6)


def test_remat_and_tap(model_params):
  _, p = model_params
  ids, _, pos = _inputs()
  for policy in ("full", "dots"):
    m = llama.Model(llama.get_config("tiny", num_kv_heads=2, remat_policy=policy))
    emb = m.apply({"params": p}, jnp.asarray(ids), method=m.embed)
    out = m.apply({"params": p}, emb, jnp.asarray(pos), tap_layer=0)
    ref = llama.Model(CFG).apply({"params": p}, emb, jnp.asarray(pos), tap_layer=0)
    np.testing.assert_allclose(np.asarray(out.hidden), np.asarray(ref.hidden), atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.tap), np.asarray(ref.tap), atol=1e-6)
  assert not np.allclose(np.asarray(ref.tap), np.asarray(ref.hidden))  # a real intermediate


def test_unsupported_configs_are_refused():
  with pytest.raises(ValueError, match="rope_scaling"):
    llama.Config.from_hf({**CFG.to_hf(), "rope_scaling": {"type": "linear", "factor": 2}})
  with pytest.raises(ValueError, match="unknown LLaMA variant"):
    llama.get_config("llama_70b")


def test_kernels_in_column_blocks_give_the_same_outputs(model_params):
  m, p = model_params
  split = llama.split_layers(p)
  laid = llama.decode_layout(p, block_columns=24, fuse=False)  # 24 of 64: whole heads a block
  attn, mlp = laid["model"]["layers"][0]["self_attn"], laid["model"]["layers"][0]["mlp"]
  assert [len(attn[n].parts) for n in ("q_proj", "k_proj", "o_proj")] == [3, 2, 3]
  assert [b.shape[1] for b in attn["q_proj"].parts] == [2, 1, 1]
  assert attn["q_proj"].shape == split["model"]["layers"][0]["self_attn"]["q_proj"].shape
  assert len(mlp["gate_proj"]["kernel"].parts) == 6 and len(laid["lm_head"]["kernel"].parts) == 22
  again = llama.decode_layout(laid, block_columns=24, fuse=False)  # idempotent
  assert again["lm_head"]["kernel"] is laid["lm_head"]["kernel"]
  whole = llama.decode_layout(p, block_columns=0, fuse=False)
  assert whole["lm_head"]["kernel"] is p["lm_head"]["kernel"]
  with pytest.raises(ValueError, match="block columns must be >= 0"):
    llama.decode_layout(p, block_columns=-1, fuse=False)
  ids, mask, pos = _inputs(t=8)
  emb = m.apply({"params": p}, jnp.asarray(ids), method=m.embed)
  for cache in (None, llama.init_cache(CFG, 2, 10)):
    run = jax.jit(lambda params, c=cache: m.apply(  # noqa: E731
        {"params": params}, emb, jnp.asarray(pos), attn_mask=jnp.asarray(mask), cache=c,
        method=lambda mod, *a, **k: (mod(*a, **k), mod.logits(mod(*a, **k).hidden))))
    (want, want_logits), (got, got_logits) = run(split), run(laid)
    # Each block's product rounds as the kernel XLA picks for its width: on an AVX-512 host
    # the hidden states (~1 in size) differ by up to 2.3e-6, on an AVX2 one by under 1e-6.
    np.testing.assert_allclose(np.asarray(got_logits), np.asarray(want_logits), atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.hidden), np.asarray(want.hidden), atol=1e-5)
    if cache is not None:
      for a, b in zip(got.cache.k + got.cache.v, want.cache.k + want.cache.v):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_kernel_blocks_of_the_wrong_shape_are_refused_and_free_deletes(model_params):
  m, p = model_params
  laid = llama.decode_layout(p, block_columns=24, fuse=False)
  layer = laid["model"]["layers"][0]["self_attn"]
  layer["q_proj"] = layers.Blocks(layer["q_proj"].parts[:2], axis=1)  # a head short
  emb = jnp.zeros((1, 3, CFG.hidden_size))
  with pytest.raises(ValueError, match=r"q_proj: blocks of a \(64, 3, 16\) weight"):
    m.apply({"params": laid}, emb, jnp.zeros((1, 3), jnp.int32))
  copy = jax.tree.map(jnp.copy, llama.split_layers(p))
  kernel, scale = copy["lm_head"]["kernel"], copy["model"]["norm"]["scale"]
  freed = layers.block_kernels(copy, 24, free=True)
  assert kernel.is_deleted() and not scale.is_deleted()
  np.testing.assert_array_equal(np.concatenate(freed["lm_head"]["kernel"].parts, axis=1),
                                p["lm_head"]["kernel"])


def test_fused_projections_give_the_same_outputs(model_params):
  """q/k/v and gate/up stacked (the GPU decode layout): one product each, the same outputs;
  grouped-query attention keeps its kernels; idempotent; `free` deletes the originals; a
  sharded kernel keeps its sharding on the old axes."""
  cfg = llama.get_config("tiny")  # 4 heads, 4 KV heads
  m = llama.Model(cfg)
  ids4 = jnp.zeros((1, 4), jnp.int32)
  init = lambda: m.init(jax.random.key(1), ids4, method=m.init_all)  # noqa: E731
  p = nn.unbox(jax.jit(init)())["params"]
  split = llama.split_layers(p)
  fused = llama.decode_layout(p, block_columns=0, fuse=True)
  layer, old = fused["model"]["layers"][1], split["model"]["layers"][1]
  assert sorted(layer["self_attn"]) == ["o_proj", "qkv_proj"]
  assert sorted(layer["mlp"]) == ["down_proj", "gate_up_proj"]
  np.testing.assert_array_equal(layer["self_attn"]["qkv_proj"][:, 2], old["self_attn"]["v_proj"])
  np.testing.assert_array_equal(layer["mlp"]["gate_up_proj"][:, 0],
                                old["mlp"]["gate_proj"]["kernel"])
  again = llama.decode_layout(fused, block_columns=0, fuse=True)
  assert again["model"]["layers"][1]["self_attn"]["qkv_proj"] is layer["self_attn"]["qkv_proj"]
  unfused = llama.decode_layout(p, block_columns=0, fuse=False)["model"]["layers"][0]
  assert "q_proj" in unfused["self_attn"] and "gate_proj" in unfused["mlp"]
  gqa = llama.decode_layout(model_params[1], block_columns=0, fuse=True)["model"]["layers"][0]
  assert "q_proj" in gqa["self_attn"] and "gate_up_proj" in gqa["mlp"]

  ids, mask, pos = _inputs(t=8)
  emb = m.apply({"params": p}, jnp.asarray(ids), method=m.embed)
  for cache in (None, llama.init_cache(cfg, 2, 10)):
    run = jax.jit(lambda params, c=cache: m.apply(  # noqa: E731
        {"params": params}, emb, jnp.asarray(pos), attn_mask=jnp.asarray(mask), cache=c))
    want, got = run(split), run(fused)
    np.testing.assert_allclose(np.asarray(got.hidden), np.asarray(want.hidden), atol=1e-5)
    if cache is not None:
      for a, b in zip(got.cache.k + got.cache.v, want.cache.k + want.cache.v):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)

  mesh = sharding.make_mesh((1, 2, 4))  # FSDP on D, tensor on heads / FFN columns
  shardings = sharding.logical_shardings(jax.eval_shape(init)["params"], mesh,
                                         sharding.DEFAULT_RULES)
  placed = llama.split_layers(jax.device_put(p, shardings))
  q = placed["model"]["layers"][0]["self_attn"]["q_proj"]
  laid = llama.decode_layout(placed, block_columns=0, fuse=True, free=True)
  layer = laid["model"]["layers"][0]
  assert q.is_deleted()
  assert tuple(layer["self_attn"]["qkv_proj"].sharding.spec) == ("fsdp", None, "tensor", None)
  assert tuple(layer["mlp"]["gate_up_proj"].sharding.spec)[:3] == ("fsdp", None, "tensor")
  np.testing.assert_array_equal(np.asarray(layer["self_attn"]["qkv_proj"]),
                                np.asarray(fused["model"]["layers"][0]["self_attn"]["qkv_proj"]))
  bad = jax.tree.map(lambda a: a, fused)
  bad["model"]["layers"][0]["mlp"]["gate_up_proj"] = layer["mlp"]["gate_up_proj"][:, :, :64]
  with pytest.raises(Exception, match="gate_up_proj"):
    m.apply({"params": bad}, emb, jnp.asarray(pos))
