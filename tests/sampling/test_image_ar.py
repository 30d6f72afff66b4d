"""Guided text-to-image sampling on the fixture's tiny Janus (16 image tokens, 64x64 pixels)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janus_jax.data import chat
from janus_jax.data import examples
from janus_jax.data import mixture
from janus_jax.data import packing
from janus_jax.data import synthetic
from janus_jax.kernels import cpu
from janus_jax.parity import sampling_cases
from janus_jax.sampling import decode_layout
from janus_jax.sampling import image_ar
from janus_jax.sampling import samplers
from janus_jax.sampling import text
from janus_jax.train import train_steps

PAD = 3
P = 16  # image tokens of the tiny VQ at 64 px
PROMPTS = [[1, 15, 126, 466, 241, 427, 340, 5], [1, 20, 5], [1, 300, 301, 302, 5]]


def test_prompt_batch_layout():
  b = image_ar.prompt_batch([[1, 7, 8, 5], [1, 9, 5]], num_images=2, pad_id=PAD)
  assert b.tokens.shape == (8, 4)
  np.testing.assert_array_equal(b.tokens[0], [1, 7, 8, 5])  # cond
  np.testing.assert_array_equal(b.tokens[1], [1, PAD, PAD, 5])  # uncond: BOS and BOI kept
  np.testing.assert_array_equal(b.tokens[2:4], b.tokens[0:2])  # second image of prompt 0
  np.testing.assert_array_equal(b.tokens[4], [PAD, 1, 9, 5])  # left padding
  np.testing.assert_array_equal(b.tokens[5], [PAD, 1, PAD, 5])
  np.testing.assert_array_equal(b.mask[1], [1, 1, 1, 1])  # in-prompt pads are attended
  np.testing.assert_array_equal(b.mask[5], [0, 1, 1, 1])  # left padding is not
  np.testing.assert_array_equal(b.positions[4], [0, 0, 1, 2])


def test_fixture_t2i_greedy(janus_fixture):
  fx, model, params = janus_fixture
  case = fx.cases["t2i_greedy"]
  out = sampling_cases.t2i_greedy(model, params, case)
  np.testing.assert_array_equal(out["tokens"], case.outputs["tokens"])
  for k in ("step_logits", "pixels"):
    np.testing.assert_allclose(out[k], case.outputs[k], atol=case.atol, rtol=case.rtol)


@pytest.mark.slow
def test_batch_of_different_prompts_equals_each_alone(janus_fixture):
  _, model, params = janus_fixture
  codes, logits = image_ar.guided_logits(model, params, PROMPTS, num_images=2, cfg_weight=5.0,
                                         pad_id=PAD, num_tokens=P)
  assert codes.shape == (6, P)
  for i, ids in enumerate(PROMPTS):
    alone_codes, alone_logits = image_ar.guided_logits(model, params, [ids], num_images=1,
                                                       cfg_weight=5.0, pad_id=PAD, num_tokens=P)
    for k in (2 * i, 2 * i + 1):
      np.testing.assert_array_equal(codes[k], alone_codes[0])
      np.testing.assert_allclose(logits[k], alone_logits[0], atol=2e-4, rtol=2e-4)
  assert len({tuple(c) for c in codes}) == 3  # the prompts really give different images


def test_decoding_in_segments_or_on_packed_kernels_equals_one_loop(janus_fixture):
  _, model, params = janus_fixture
  b = image_ar.prompt_batch(PROMPTS, num_images=1, pad_id=PAD)
  run = lambda p=params, **kw: image_ar.sample_codes(  # noqa: E731
      model, p, b.tokens, b.mask, b.positions, jax.random.key(3), jnp.float32(5.0),
      sampler=samplers.Sampling(temperature=1.0, top_k=50), num_tokens=P, return_logits=True,
      **kw)
  # Inside the sampler's jit, with the tests' 8 devices, kernels stay XLA's (not packed).
  want_codes, want_logits = run(segments=1)
  # Five stages over a growing cache; the CPU default laid out beforehand on one device, as
  # sample.py does: kernels packed for the CPU decode product (`kernels.cpu`).
  packed = decode_layout.decode_layout(params)
  assert isinstance(packed["gen_head"]["vision_head"]["kernel"], cpu.Panels) or not (
      cpu.available())
  for kw in (dict(segments=5), dict(p=packed, segments=1)):
    codes, logits = run(**kw)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_allclose(logits, want_logits, atol=2e-5, rtol=2e-5)


def test_samplers_lay_out_kernels_for_the_dtype_the_model_computes_in(janus_fixture,
                                                                     monkeypatch):
  # A float32 checkpoint run in bfloat16 must not be packed for the float32-only CPU product.
  _, model, params = janus_fixture
  model16 = model.clone(dtype=jnp.bfloat16)
  asked = []

  class Laid(Exception):
    pass

  def record(p, *args, dtype=None, **kw):
    asked.append(dtype)
    raise Laid

  monkeypatch.setattr(decode_layout, "decode_layout", record)
  b = image_ar.prompt_batch(PROMPTS, num_images=1, pad_id=PAD)
  with pytest.raises(Laid):
    image_ar.sample_codes(model16, params, b.tokens, b.mask, b.positions, jax.random.key(0),
                          jnp.float32(5.0), sampler=samplers.Greedy(), num_tokens=P)
  ids = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(Laid):  # fails at the layout, before any other argument is read
    text.decode(model16, params, ids, ids, None, None, None, jax.random.key(0), 2, PAD,
                sampler=samplers.Greedy(), max_new_tokens=2)
  assert asked == [jnp.bfloat16, jnp.bfloat16]


def test_decode_jit_compiles_without_options_this_xla_lacks(monkeypatch):
  monkeypatch.setattr(image_ar, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": ""})
  double = image_ar.decode_jit()(lambda x: 2 * x)
  np.testing.assert_array_equal(double(jnp.arange(3)), [0, 2, 4])


@pytest.mark.parametrize("options", [{"xla_cpu_experimental_ynn_fusion_type": "no_such_type"},
                                     image_ar.CPU_COMPILER_OPTIONS])
def test_decode_jit_runs_nested_and_on_options_xla_refuses(monkeypatch, options):
  monkeypatch.setattr(image_ar, "CPU_COMPILER_OPTIONS", options)
  double = image_ar.decode_jit()(lambda x: 2 * x)
  np.testing.assert_array_equal(double(jnp.arange(3)), [0, 2, 4])
  x = jnp.arange(3)
  np.testing.assert_array_equal(jax.jit(lambda y: double(y) + 1)(x), [1, 3, 5])  # tracer arg
  np.testing.assert_array_equal(jax.jit(lambda: double(x))(), [0, 2, 4])  # closure: no tracer


def test_cpu_compiler_options_are_known_to_this_xla():
  # If a jaxlib drops them, decode_jit silently compiles without them: this says so.
  jax.jit(lambda x: x @ x, compiler_options=image_ar.CPU_COMPILER_OPTIONS).lower(
      jnp.ones((4, 4))).compile()


@pytest.mark.slow
def test_cfg_weight_one_equals_conditional_branch(janus_fixture):
  _, model, params = janus_fixture
  guided = image_ar.generate(model, params, PROMPTS, cfg_weight=1.0, sampler=samplers.Greedy(),
                             rng=jax.random.key(0), pad_id=PAD, num_tokens=P, decode=False)
  cond = image_ar.generate(model, params, PROMPTS, cfg_weight=None, sampler=samplers.Greedy(),
                           rng=jax.random.key(0), pad_id=PAD, num_tokens=P, decode=False)
  np.testing.assert_array_equal(guided.codes, cond.codes)
  w5 = image_ar.generate(model, params, PROMPTS, cfg_weight=5.0, sampler=samplers.Greedy(),
                         rng=jax.random.key(0), pad_id=PAD, num_tokens=P, decode=False)
  assert (w5.codes != cond.codes).any()  # guidance does something at w != 1


@pytest.mark.slow
def test_seed_reproduces_and_changes(janus_fixture):
  _, model, params = janus_fixture
  kw = dict(num_images=2, cfg_weight=5.0, sampler=samplers.Sampling(top_k=50, top_p=0.95),
            pad_id=PAD, num_tokens=P)
  a = image_ar.generate(model, params, PROMPTS[:2], rng=jax.random.key(1), **kw)
  b = image_ar.generate(model, params, PROMPTS[:2], rng=jax.random.key(1), **kw)
  c = image_ar.generate(model, params, PROMPTS[:2], rng=jax.random.key(2), **kw)
  np.testing.assert_array_equal(a.codes, b.codes)
  np.testing.assert_array_equal(a.images, b.images)
  assert (a.codes != c.codes).any()
  assert (a.codes[0] != a.codes[1]).any()  # the images of one prompt differ from each other
  assert a.images.shape == (4, 64, 64, 3) and a.images.dtype == np.uint8


@pytest.mark.slow
def test_sampler_logits_equal_the_training_paths_on_its_codes(janus_fixture):
  """What training fits is what sampling draws from: prompts of the training grammar, built into
  generation examples and packed three to a row by the training pipeline, give through the
  training forward (`train_steps.janus_logits`, what `janus_terms` takes its loss from) the
  sampler's per-step logits on the codes it drew."""
  _, model, params = janus_fixture
  tok = synthetic.tiny_tokenizer()
  und_size = model.config.vision.image_size  # the (unused) understanding image slots' side
  cfg = synthetic.tiny_config(image_tokens=P, image_size=und_size, caption_dropout=0.0)
  captions = ["a red circle", "two blue squares and a green triangle", "a square"]
  ids = [[int(x) for x in tok.encode(chat.t2i_prompt("janus_pro", c))] for c in captions]
  pb = image_ar.prompt_batch(ids, 1, tok.special.pad, guided=False)
  codes, logits = image_ar.sample_codes(
      model, params, pb.tokens, pb.mask, pb.positions, jax.random.key(0), 1.0,
      sampler=samplers.Greedy(), num_tokens=P, guided=False, return_logits=True)
  builder = examples.Builder(tok, cfg.example)
  rows = packing.BatchBuilder(rows=1, seq_len=128, max_images=1, slots_per_image=P,
                              image_size=und_size, pad_id=tok.special.pad)
  for c, code in zip(captions, np.asarray(codes)):
    assert rows.add(builder((mixture.GEN, {"caption": c, "codes": code}),
                            np.random.default_rng(0)))
  batch = jax.tree.map(jnp.asarray, rows.finish())
  assert int(batch["segment_ids"].max()) == 3
  _, gen_logits = model.apply({"params": params}, batch, method=train_steps.janus_logits)
  train_logits = gen_logits[0]
  at = np.flatnonzero(np.asarray(batch["image_loss"][0]))
  np.testing.assert_array_equal(np.asarray(batch["targets"][0])[at], np.asarray(codes).ravel())
  np.testing.assert_allclose(np.asarray(train_logits)[at].reshape(logits.shape), logits,
                             atol=2e-4, rtol=2e-4)


def test_uint8_conversion_truncates_like_reference():
  x = np.array([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0, 254.9 / 255 * 2 - 1], np.float32)
  want = np.zeros(x.shape, np.uint8)
  want[:] = np.clip((x + 1) / 2 * 255, 0, 255)  # the reference: uint8 assignment truncates
  np.testing.assert_array_equal(np.asarray(image_ar.to_uint8(jnp.asarray(x))), want)
  assert want[-1] == 254


def test_bad_prompts_are_refused(janus_fixture):
  _, model, params = janus_fixture
  kw = dict(sampler=samplers.Greedy(), rng=jax.random.key(0), pad_id=PAD, num_tokens=P)
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    image_ar.generate(model, params, [[1, 5], []], **kw)
  context = model.config.llm.max_position_embeddings
  with pytest.raises(ValueError, match=f"prompt 0 has {context} tokens"):
    image_ar.generate(model, params, [[1] * context], **kw)
  with pytest.raises(ValueError, match="num_images"):
    image_ar.generate(model, params, [[1, 5]], num_images=0, **kw)
  b = image_ar.prompt_batch([[1, 5]], num_images=1, pad_id=PAD)
  for n, segments in ((0, 8), (1, 0)):  # one token used to ignore the stage count
    with pytest.raises(ValueError, match="num_tokens and segments must be >= 1"):
      image_ar.sample_codes(model, params, b.tokens, b.mask, b.positions, jax.random.key(0),
                            jnp.float32(5.0), sampler=samplers.Greedy(), num_tokens=n,
                            segments=segments)


def test_janusflow_model_is_refused():
  from janus_jax.models import janusflow  # noqa: PLC0415

  class FakeFlow:  # only the config's type matters to the check, nothing is run
    config = object.__new__(janusflow.Config)

  with pytest.raises(TypeError, match="JanusFlow checkpoints generate with .*image_flow"):
    image_ar.generate(FakeFlow(), {}, [[1, 5]], rng=jax.random.key(0), pad_id=PAD)
