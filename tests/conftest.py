"""Test setup: 8 fake CPU devices for sharding tests (must precede any jax import), and the
repository root importable (the entry points `train.py`, `sample.py`, `convert_torch.py`, the
`configs/` and `bench/` scripts live there, beside the installed package)."""

import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  if not FIXTURES.is_dir():
    pytest.fail(f"reference fixtures not found at {FIXTURES} (expected ../shared/fixtures)")
  return FIXTURES
