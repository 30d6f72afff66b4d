"""Parity of the JanusFlow port with the reference fixture `janusflow_tiny` (every case)."""

import pytest

from janus_jax import parity
from janus_jax.parity import janusflow_cases


@pytest.fixture(scope="module")
def loaded(fixtures_dir):
  return janusflow_cases.load(fixtures_dir / "janusflow_tiny")


def test_every_fixture_case_has_an_implementation(loaded):
  assert set(loaded[0].cases) == set(janusflow_cases.CASES)


@pytest.mark.parametrize("name", sorted(janusflow_cases.CASES))
def test_case(loaded, name):
  fx, *objs = loaded
  case = fx.cases[name]
  outs = janusflow_cases.CASES[name](*objs, case)
  for key, want in case.outputs.items():
    ok, detail = parity.compare(key, outs[key], want, case.atol, case.rtol)
    assert ok, f"{name}: {detail}"
