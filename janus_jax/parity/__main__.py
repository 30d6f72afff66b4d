"""`python -m janus_jax.parity FIXTURE_DIR`: see `janus_jax.parity`."""

import sys

from janus_jax import parity


def main(argv):
  if len(argv) != 2:
    print("usage: python -m janus_jax.parity FIXTURE_DIR", file=sys.stderr)
    return 2
  results = parity.run(argv[1])
  for r in results:
    print(f"{r.case}: {'PASS' if r.passed else 'FAIL'} {r.detail}")
  passed = sum(r.passed for r in results)
  print(f"{passed} passed, {len(results) - passed} failed")
  return 0 if passed == len(results) and results else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv))
