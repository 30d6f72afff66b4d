"""Batched multimodal chat decoding on the fixture's tiny Janus (32 px images, 16 tokens each)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janus_jax.parity import sampling_cases
from janus_jax.sampling import decode_layout
from janus_jax.sampling import samplers
from janus_jax.sampling import text

BOS, EOS, PAD, IMG, BOI, EOI = 1, 2, 3, 4, 5, 6
P = 16


def conversation(words, n_images, seed):
  """Token ids with `n_images` expanded image slots after the first word, and its images."""
  ids = [BOS, words[0]] + [IMG] * n_images + words[1:]
  ids = text.expand_image_tokens(ids, IMG, BOI, EOI, P)
  rs = np.random.RandomState(seed)
  return ids, [rs.uniform(-1, 1, (32, 32, 3)).astype(np.float32) for _ in range(n_images)]


CONVS = [conversation([378, 244, 215], 1, 0),
         conversation([250, 378, 60, 130, 267, 491, 392, 445, 25], 2, 1),
         conversation([100, 101], 0, 2)]


def run(model, params, convs, n=6, eos=-1, segments=4):
  b = text.make_batch(convs, image_id=IMG, pad_id=PAD, tokens_per_image=P,
                      image_shape=(32, 32, 3))
  return text.decode(model, params, b.input_ids, b.attention_mask, b.pixel_values,
                     b.images_seq_mask, b.images_emb_mask, jax.random.key(0), jnp.int32(eos),
                     jnp.int32(PAD), sampler=samplers.Greedy(), max_new_tokens=n,
                     return_logits=True, segments=segments)


def test_expand_and_batch_layout():
  ids, images = CONVS[1]
  assert ids.count(IMG) == 2 * P and ids.count(BOI) == 2 and ids.count(EOI) == 2
  b = text.make_batch(CONVS, image_id=IMG, pad_id=PAD, tokens_per_image=P)
  assert b.pixel_values.shape == (3, 2, 32, 32, 3)
  np.testing.assert_array_equal(b.images_emb_mask[:, :, 0], [[1, 0], [1, 1], [0, 0]])
  assert not b.pixel_values[0, 1].any() and not b.pixel_values[2].any()
  assert b.images_seq_mask.sum(axis=1).tolist() == [P, 2 * P, 0]
  t = b.input_ids.shape[1]
  assert b.attention_mask.sum(axis=1).tolist() == [len(c[0]) for c in CONVS]
  assert (b.input_ids[2, :t - len(CONVS[2][0])] == PAD).all()


def test_fixture_und_greedy(janus_fixture):
  fx, model, params = janus_fixture
  case = fx.cases["und_greedy"]
  out = sampling_cases.und_greedy(model, params, case)
  np.testing.assert_array_equal(out["tokens"], case.outputs["tokens"])
  np.testing.assert_allclose(out["step_logits"], case.outputs["step_logits"], atol=case.atol,
                             rtol=case.rtol)


@pytest.mark.slow
def test_batch_with_one_and_two_images_equals_each_alone(janus_fixture):
  _, model, params = janus_fixture
  tokens, num, logits = run(model, params, CONVS)
  for i, conv in enumerate(CONVS):
    t1, n1, l1 = run(model, params, [conv])
    np.testing.assert_array_equal(tokens[i], t1[0])
    np.testing.assert_allclose(logits[i], l1[0], atol=2e-4, rtol=2e-4)
    assert num[i] == n1[0] == 6
  assert not np.allclose(logits[0], logits[1], atol=1e-2)  # the rows really differ


def test_packed_kernels_give_the_same_tokens(janus_fixture):
  _, model, params = janus_fixture
  want_tokens, _, want_logits = run(model, params, CONVS)  # XLA's products (8 test devices)
  # The CPU default laid out on one device beforehand: panels (`kernels.cpu`), through the
  # chat prefill (more rows than the panel product takes) and the decode steps.
  tokens, _, logits = run(model, decode_layout.decode_layout(params), CONVS)
  np.testing.assert_array_equal(tokens, want_tokens)
  np.testing.assert_allclose(logits, want_logits, atol=2e-5, rtol=2e-5)


@pytest.mark.slow
def test_eos_stops_one_row_while_others_continue(janus_fixture):
  _, model, params = janus_fixture
  free, _, _ = run(model, params, CONVS[1:], n=8)
  free = np.asarray(free)
  # An "EOS" that row 0 first emits at a step k > 0 and row 1 never emits.
  k, eos = next((k, int(t)) for k, t in enumerate(free[0])
                if k > 0 and int(t) not in free[0, :k] and int(t) not in free[1])
  for segments in (1, 4, 8):  # one loop, or stages over a growing cache (one step each at 8)
    tokens, num, _ = run(model, params, CONVS[1:], n=8, eos=eos, segments=segments)
    tokens = np.asarray(tokens)
    np.testing.assert_array_equal(tokens[0, :k + 1], free[0, :k + 1])
    assert (tokens[0, k + 1:] == PAD).all()
    np.testing.assert_array_equal(tokens[1], free[1])
    assert num.tolist() == [k + 1, 8]


def test_generate_detokenizes_and_checks_context(janus_fixture):
  _, model, params = janus_fixture
  b = text.make_batch(CONVS[:1], image_id=IMG, pad_id=PAD, tokens_per_image=P)
  ans = text.generate(model, params, b, max_new_tokens=4, eos_id=EOS, pad_id=PAD,
                      detokenize=lambda ids: " ".join(map(str, ids)))
  assert ans.texts[0] == " ".join(str(t) for t in ans.tokens[0][:ans.num_tokens[0]])
  with pytest.raises(ValueError, match="exceeds the model context"):
    text.generate(model, params, b, max_new_tokens=10_000, eos_id=EOS, pad_id=PAD)
  with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
    run(model, params, CONVS[:1], n=0)  # decode itself, not only generate, names the budget


def test_bad_batches_are_refused():
  ids, images = CONVS[0]
  with pytest.raises(ValueError, match="conversation 0 has 16 image slots but 2 images"):
    text.make_batch([(ids, images * 2)], image_id=IMG, pad_id=PAD, tokens_per_image=P)
  with pytest.raises(ValueError, match="conversation 1 is empty"):
    text.make_batch([(ids, images), ([], [])], image_id=IMG, pad_id=PAD, tokens_per_image=P)
