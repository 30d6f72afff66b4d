"""Packed rows: the CE of two samples packed in one row equals each sample alone (attention never
crosses segments, positions restart per segment)."""

import jax
import numpy as np
import pytest

from janus_jax.data import examples
from janus_jax.data import mixture
from janus_jax.data import packing
from janus_jax.data import synthetic
from janus_jax.models import janus
from janus_jax.models import llama
from janus_jax.train import train_steps


@pytest.mark.slow
def test_packed_equals_separate():
  model = llama.Model(llama.get_config("tiny"))
  params = model.init(jax.random.key(0), np.zeros((1, 4), np.int32),
                      method=llama.Model.init_all)["params"]
  terms = train_steps.bind_terms(model, "llm", None)
  data = train_steps.SyntheticData(batch_size=1, seq_len=32, vocab=512, kinds=("text", "text"))
  packed = data.batch(0)
  seg = packed["segment_ids"][0]
  total = terms(params, packed, None)["ce"]
  alone = 0.0
  for s in (1, 2):
    keep = seg == s
    one = {k: v[:, keep] if v.ndim == 2 else v for k, v in packed.items()}
    one["segment_ids"] = np.ones_like(one["segment_ids"])
    alone += terms(params, one, None)["ce"]
  np.testing.assert_allclose(total, alone, rtol=1e-5)
  # Without segment ids the second sample would see the first: the loss must change.
  leaky = dict(packed, segment_ids=(packed["segment_ids"] > 0).astype(np.int32))
  assert abs(float(terms(params, leaky, None)["ce"]) - float(total)) > 1e-3


def _janus_row(model, params, exs, pad_id):
  """Packs `exs` into one row and returns (batch, text logits (L, V))."""
  bb = packing.BatchBuilder(rows=1, seq_len=256, max_images=4, slots_per_image=16, image_size=32,
                            pad_id=pad_id)
  for ex in exs:
    assert bb.add(ex)
  batch = bb.finish()
  logits, _ = model.apply({"params": params}, batch, method=train_steps.janus_logits)
  return batch, np.asarray(logits[0])


@pytest.mark.slow
def test_independent_turns_equal_single_question_conversations():
  """An image's QA pairs as branches of one shared prefix: every branch token gets the ids,
  targets, loss mask and logits it has in its own single-question conversation."""
  tok = synthetic.tiny_tokenizer()
  cfg = janus.get_config("tiny")
  model = janus.Model(cfg)
  params = model.init(jax.random.key(0), *janus.init_inputs(cfg),
                      method=janus.Model.init_all)["params"]
  image = synthetic.png_bytes(np.random.default_rng(0), 40, 30)
  # Questions 1 and 3 are equal: their common prefix runs into the answer, which must stay out.
  qa = [("what colour is it?", "red"), ("how many are there?", "two"),
        ("what colour is it?", "a red one")]

  def build(pairs, independent):
    ex_cfg = examples.Config(seq_len=256, image_tokens=16, image_size=32,
                             independent_turns=independent, system_prompt="")
    record = {"images": [image], "roles": ["user", "assistant"] * len(pairs),
              "contents": [t for pair in pairs for t in pair]}
    return examples.Builder(tok, ex_cfg)((mixture.UND, record), np.random.default_rng(0))

  pad = tok.special.pad
  for pairs in (qa, qa[::2]):
    branched = build(pairs, True)
    assert branched["images_seq_mask"].sum() == 16  # the image once, in the prefix
    batch, logits = _janus_row(model, params, [branched], pad)
    singles = [build([p], False) for p in pairs]
    n0 = int((batch["branch_ids"][0] == 0).sum() - (batch["segment_ids"][0] == 0).sum())
    for k, single in enumerate(singles, 1):
      one, one_logits = _janus_row(model, params, [single], pad)
      t = len(single["input_ids"])
      at = np.flatnonzero(batch["branch_ids"][0] == k)
      mine = np.concatenate([np.arange(n0), at])
      assert len(mine) == t
      np.testing.assert_array_equal(batch["input_ids"][0, mine], one["input_ids"][0, :t])
      np.testing.assert_array_equal(batch["positions"][0, mine], np.arange(t))
      np.testing.assert_array_equal(batch["text_loss"][0, at], one["text_loss"][0, n0:t])
      np.testing.assert_array_equal(batch["targets"][0, at], one["targets"][0, n0:t])
      np.testing.assert_allclose(logits[mine], one_logits[:t], atol=1e-5)
    # Every answer token is trained once, in its own branch.
    assert batch["text_loss"].sum() == sum(s["text_loss"].sum() for s in singles)
  # The mask is what keeps the branches apart: without it the logits of branch 2 change.
  leaky = dict(batch, branch_ids=np.zeros_like(batch["branch_ids"]))
  leaky_logits = np.asarray(model.apply({"params": params}, leaky,
                                        method=train_steps.janus_logits)[0][0])
  at = np.flatnonzero(batch["branch_ids"][0] == 2)
  assert np.abs(leaky_logits[at] - logits[at]).max() > 1e-3
