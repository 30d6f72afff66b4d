"""Shared fixture of the data tests: the tiny byte-level BPE tokenizer."""

import pytest

from janus_jax.data import synthetic


@pytest.fixture(scope="session")
def tok():
  return synthetic.tiny_tokenizer()
