"""`python -m janus_jax.parity FIXTURE_DIR`: every case of a reference fixture, one line each."""

import argparse
import sys

from janus_jax import cli
from janus_jax import parity


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
      prog="python -m janus_jax.parity",
      description="Runs every case of a reference fixture (outputs of the original DeepSeek "
                  "PyTorch code) through janus-jax and compares at the fixture's tolerances.")
  ap.add_argument("fixture_dir", help="a fixture directory, e.g. ../shared/fixtures/janus_tiny")
  args = ap.parse_args(argv)
  results = parity.run(args.fixture_dir)
  for r in results:
    print(f"{r.case}: {'PASS' if r.passed else 'FAIL'} {r.detail}")
  passed = sum(r.passed for r in results)
  print(f"{passed} passed, {len(results) - passed} failed")
  return 0 if passed == len(results) and results else 1


if __name__ == "__main__":
  sys.exit(cli.guarded(main)())
