"""Janus composite: full-size parameter counts (eval_shape only), config checks, merging."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janus_jax.models import janus


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _llm_params(v, d, f, layers):
  # embeddings + untied head + per layer (q, k, v, o, gate, up, down, two norms) + final norm
  return 2 * v * d + layers * (4 * d * d + 3 * d * f + 2 * d) + d


@pytest.mark.parametrize("variant,d,f,layers,llm_total", [
    ("janus_pro_1b", 2048, 5632, 24, 1.653),
    ("janus_pro_7b", 4096, 11008, 30, 6.910),
])
def test_full_size_parameter_counts(variant, d, f, layers, llm_total):
  params = nn.unbox(janus.abstract_params(janus.get_config(variant)))
  counts = {k: _count(v) for k, v in params.items()}
  llm = _llm_params(102400, d, f, layers)
  assert counts["language_model"] == llm
  assert round(llm / 1e9, 3) == llm_total  # DeepSeek-LLM's size, rounded
  assert round(counts["vision_model"] / 1e6, 2) == 303.69  # SigLIP-L/16 without attn_pool
  assert round(counts["gen_vision_model"] / 1e6, 2) == 71.88  # VQ-16 without codebook_used
  # aligners, gen head and gen_embed, from the reference modules' shapes
  assert counts["aligner"] == 1024 * d + d + d * d + d
  assert counts["gen_aligner"] == 8 * d + d + d * d + d
  assert counts["gen_head"] == d * d + d + d * 16384 + 16384
  assert counts["gen_embed"] == 16384 * 8


def test_inconsistent_config_is_refused():
  cfg = janus.get_config("tiny")
  bad_aligner = janus.aligners.Config(cfg.vision.width, cfg.llm.hidden_size + 1)
  with pytest.raises(ValueError, match="aligner.n_embed"):
    janus.Config(**{**cfg.__dict__, "aligner": bad_aligner})


def test_unknown_variant():
  with pytest.raises(ValueError, match="unknown Janus variant 'janus_9b'"):
    janus.get_config("janus_9b")


def test_merge_embeddings_matches_boolean_assignment():
  rng = np.random.default_rng(0)
  b, t, n, p, d = 3, 12, 2, 3, 4
  text = rng.normal(size=(b, t, d)).astype(np.float32)
  img = rng.normal(size=(b, n, p, d)).astype(np.float32)
  emb_mask = np.zeros((b, n, p), bool)
  emb_mask[0, 0] = True  # one image
  emb_mask[1] = True  # two images
  seq_mask = np.zeros((b, t), bool)  # row 2: text only
  seq_mask[0, 4:7] = True
  seq_mask[1, 1:4] = True
  seq_mask[1, 7:10] = True
  want = text.copy()
  want[seq_mask] = img[emb_mask]  # the reference's semantics
  got = janus.merge_embeddings(jnp.asarray(text), jnp.asarray(img), jnp.asarray(seq_mask),
                               jnp.asarray(emb_mask))
  np.testing.assert_array_equal(np.asarray(got), want)


def test_model_configs_name_buildable_variants():
  from configs import models  # noqa: PLC0415

  for name, fam in models.FAMILIES.items():
    c = models.get_config(name)
    assert c.family == fam
    if fam == "janus":
      janus.get_config(c.variant)  # raises for a name the model code does not know
  with pytest.raises(ValueError, match="unknown model 'janus_9b'"):
    models.get_config("janus_9b")
