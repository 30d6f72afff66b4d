"""The sampling tests' model: the reference fixture's tiny random Janus weights (converting them
in memory takes seconds; a jitted random `init` of the tiny model with its VQ takes ~40 s)."""

import flax.linen as nn
import jax
import numpy as np
import pytest
import safetensors.numpy

from janus_jax import fixtures
from janus_jax.convert import janus as janus_table
from janus_jax.convert import rules
from janus_jax.models import janus


@pytest.fixture(scope="session")
def janus_fixture(fixtures_dir):
  """(fixture, model, params): the reference's tiny Janus weights, converted in memory."""
  fx = fixtures.load(fixtures_dir / "janus_tiny")
  tensors = safetensors.numpy.load_file(str(fx.weights))
  cfg = janus_table.config_from(fx.config, {k: v.shape for k, v in tensors.items()}, fx.extra)
  expected = nn.meta.unbox(janus.abstract_params(cfg))
  params, _ = rules.convert_tensors(janus_table.RULES, tensors, expected, janus_table.SKIP)
  return fx, janus.Model(cfg), jax.tree.map(np.asarray, params)
