"""Shared fixtures of the data tests: the tiny byte-level BPE tokenizer and small configs."""

import pytest

from janus_jax.data import examples
from janus_jax.data import pipeline
from janus_jax.data import synthetic

P = 16  # image tokens per image in the tiny configs
S = 32  # image size


@pytest.fixture(scope="session")
def tok():
  return synthetic.tiny_tokenizer()


def tiny_config(family="janus_pro", **kw) -> pipeline.Config:
  ex = dict(family=family, seq_len=256, image_tokens=P, image_size=S, max_images_per_row=4)
  for k in list(kw):
    if k in examples.Config.__dataclass_fields__:
      ex[k] = kw.pop(k)
  kw.setdefault("batch_size", 4)
  kw.setdefault("ratios", (2.0, 1.0, 2.0))
  return pipeline.Config(example=examples.Config(**ex), **kw)
