"""Packed rows: the CE of two samples packed in one row equals each sample alone (attention never
crosses segments, positions restart per segment)."""

import jax
import numpy as np

from janus_jax import train_steps
from janus_jax.models import llama


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
