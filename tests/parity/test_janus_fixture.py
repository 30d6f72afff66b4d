"""Module-level parity of the Janus port with the reference fixture `janus_tiny`."""

import flax.linen as nn
import pytest
import safetensors.numpy

from janus_jax import fixtures
from janus_jax import parity
from janus_jax.convert import janus as janus_table
from janus_jax.convert import rules
from janus_jax.models import janus
from janus_jax.parity import janus_cases


@pytest.fixture(scope="module")
def loaded(fixtures_dir):
  fx = fixtures.load(fixtures_dir / "janus_tiny")
  tensors = safetensors.numpy.load_file(fx.weights)
  cfg = janus_table.config_from(fx.config, {k: v.shape for k, v in tensors.items()}, fx.extra)
  params, _ = rules.convert_tensors(janus_table.RULES, tensors,
                                    nn.unbox(janus.abstract_params(cfg)), janus_table.SKIP)
  return fx, janus.Model(cfg), params


@pytest.mark.parametrize("name", sorted(janus_cases.CASES))
def test_case(loaded, name):
  fx, model, params = loaded
  case = fx.cases[name]
  outs = janus_cases.CASES[name](model, params, case)
  for key, want in case.outputs.items():
    ok, detail = parity.compare(key, outs[key], want, case.atol, case.rtol)
    assert ok, f"{name}: {detail}"
