"""LLaMA decoder: transformers LlamaForCausalLM parity (GQA, left padding), cached decoding
through a growing cache equals the full forward, split layer parameters, remat and tap."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
