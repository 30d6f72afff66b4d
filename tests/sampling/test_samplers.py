"""Samplers: greedy, temperature, top-k, top-p and their composition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janus_jax.sampling import samplers

LOGITS = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]], jnp.float32))


def draw(sampler, logits, n=4000, seed=0):
  keys = jax.random.split(jax.random.key(seed), n)
  return np.asarray(jax.vmap(lambda k: sampler.get_next_tokens(logits, k))(keys))  # (n, B)


def test_greedy_is_argmax_lowest_on_ties():
  logits = jnp.array([[0.0, 2.0, 2.0, 1.0], [3.0, -1.0, 0.0, 0.0]])
  np.testing.assert_array_equal(samplers.Greedy().get_next_tokens(logits, None), [1, 0])


def test_top_k_filter_keeps_k_best():
  kept = np.asarray(samplers.top_k_filter(LOGITS, 2)) > -1e29
  np.testing.assert_array_equal(kept, [[1, 1, 0, 0], [0, 0, 1, 1]])


@pytest.mark.parametrize("p, want", [(0.7, [1, 1, 0, 0]), (0.79, [1, 1, 0, 0]),
                                     (0.81, [1, 1, 1, 0]), (0.01, [1, 0, 0, 0]),
                                     (1.0, [1, 1, 1, 1])])
def test_top_p_filter_keeps_smallest_nucleus(p, want):
  kept = np.asarray(samplers.top_p_filter(LOGITS, p)) > -1e29
  np.testing.assert_array_equal(kept[0], want)
  np.testing.assert_array_equal(kept[1], want[::-1])


def test_sampling_matches_softmax_frequencies():
  got = draw(samplers.Sampling(), LOGITS)
  freq = np.stack([np.bincount(got[:, b], minlength=4) for b in range(2)]) / len(got)
  np.testing.assert_allclose(freq, np.exp(LOGITS), atol=0.03)


def test_temperature_sharpens():
  got = draw(samplers.Sampling(temperature=0.5), LOGITS)
  want = jax.nn.softmax(LOGITS / 0.5, axis=-1)
  freq = np.bincount(got[:, 0], minlength=4) / len(got)
  np.testing.assert_allclose(freq, want[0], atol=0.03)


def test_top_k_and_top_p_compose():
  # top_k=3 drops the 0.05 token; top_p=0.6 over the renormalised rest keeps the best two.
  s = samplers.Sampling(top_k=3, top_p=0.6)
  got = draw(s, LOGITS)
  assert set(np.unique(got[:, 0])) == {0, 1}
  assert set(np.unique(got[:, 1])) == {2, 3}
  # top_k=1 is greedy whatever the key.
  np.testing.assert_array_equal(draw(samplers.Sampling(top_k=1), LOGITS, n=50),
                                np.tile([0, 3], (50, 1)))


def test_same_key_same_tokens_different_key_differs():
  s = samplers.Sampling()
  a, b, c = (draw(s, LOGITS, n=64, seed=k) for k in (7, 7, 8))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()


def test_make_and_validation():
  assert samplers.make(0.0) == samplers.Greedy()
  assert samplers.make(1.0, top_k=0, top_p=1.0) == samplers.Sampling()
  assert samplers.make(0.7, 50, 0.9) == samplers.Sampling(0.7, 50, 0.9)
  for bad in (dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)):
    with pytest.raises(ValueError):
      samplers.Sampling(**bad)
  with pytest.raises(ValueError, match="temperature"):
    samplers.make(-0.1)


def test_argmax_is_jnp_argmax_with_ties_nans_and_infinities():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 5, (64, 1000)).astype(np.float32)  # many ties
  x[3, [100, 50]] = np.nan  # the first NaN wins, as in jnp.argmax
  x[5] = -np.inf
  x[6, 999] = np.inf
  x = jnp.asarray(x)
  want = jnp.argmax(x, axis=-1)
  np.testing.assert_array_equal(jax.jit(samplers.argmax)(x), want)
  assert samplers.argmax(x).dtype == jnp.int32 and int(want[3]) == 50


def test_sampling_draws_what_jax_random_categorical_draws():
  """The draw is `jax.random.categorical`'s, token for token, for the same key."""
  logits = jax.random.normal(jax.random.key(0), (4, 2048)) * 3
  keys = jax.random.split(jax.random.key(1), 64)
  for s in (samplers.Sampling(), samplers.Sampling(temperature=0.7, top_k=50)):
    got = jax.jit(jax.vmap(lambda k, s=s: s.get_next_tokens(logits, k)))(keys)
    want = jax.vmap(lambda k, s=s: jax.random.categorical(k, s.filter(logits), axis=-1))(keys)
    np.testing.assert_array_equal(got, want)
