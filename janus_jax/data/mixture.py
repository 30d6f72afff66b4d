"""A random-access mixture of the three example kinds at fixed ratios.

The training recipes mix understanding : pure text : generation examples at fixed ratios (Janus-Pro
stage 3 is 5:1:4). `Mixture` is one random-access source over the kinds: the index space is cut
into periods (5 + 1 + 4 = 10 records for 5:1:4) whose slots are laid out by smooth weighted
round-robin, so every period holds the exact counts. Being random access it composes with grain's
`IndexSampler` (global shuffle, per-host sharding, checkpointable position) unchanged: a shuffled
window of the index space is a sample without replacement from a population with exact ratios.

Its length covers the source that needs the most periods once; smaller sources wrap around
(oversampled, as the ratio demands). Kinds with ratio 0 take no slots and may lack a source.
"""

import fractions
from typing import Any, Sequence

import numpy as np

UND, TEXT, GEN = 0, 1, 2
KIND_NAMES = ("und", "text", "gen")


def integer_counts(ratios: Sequence[float], max_period: int = 1000) -> tuple[int, ...]:
  """Smallest integer counts with the given ratios (5:1:4 -> (5, 1, 4); .5:.5:0 -> (1, 1, 0))."""
  if len(ratios) != len(KIND_NAMES) or any(r < 0 for r in ratios) or not any(ratios):
    raise ValueError(f"ratios must be 3 non-negative numbers (und, text, gen), not all 0: {ratios}")
  fr = [fractions.Fraction(r).limit_denominator(max_period) for r in ratios]
  denom = np.lcm.reduce([f.denominator for f in fr])
  counts = [int(f * int(denom)) for f in fr]
  g = np.gcd.reduce([c for c in counts if c])
  counts = tuple(int(c // g) for c in counts)
  if sum(counts) > max_period:
    raise ValueError(f"ratios {ratios} need a period of {sum(counts)} > {max_period} records")
  return counts


def period_layout(counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """(kind, rank) per slot of one period, kinds spread evenly (smooth weighted round-robin)."""
  total = sum(counts)
  current = np.zeros(len(counts), np.int64)
  seen = np.zeros(len(counts), np.int64)
  kinds, ranks = [], []
  for _ in range(total):
    current += np.asarray(counts)
    k = int(np.argmax(current))
    current[k] -= total
    kinds.append(k)
    ranks.append(int(seen[k]))
    seen[k] += 1
  return np.asarray(kinds, np.int32), np.asarray(ranks, np.int64)


class Mixture:
  """Random-access source: `mixture[i] -> (kind, record)`.

  Args:
    sources: per kind (und, text, gen) a random-access source (`len`, `__getitem__`) or None.
    ratios: und : text : gen weights; a kind with a positive weight needs a non-empty source.
  """

  def __init__(self, sources: Sequence[Any], ratios: Sequence[float]):
    self.counts = integer_counts(ratios)
    for k, (src, c) in enumerate(zip(sources, self.counts)):
      if c and (src is None or len(src) == 0):
        raise ValueError(f"ratio for {KIND_NAMES[k]!r} is {ratios[k]} but its source is empty")
    self.sources = tuple(sources)
    self.period = sum(self.counts)
    self.kinds, self.ranks = period_layout(self.counts)
    # Periods needed for every source to be seen once; ceil so the biggest is fully covered.
    self.periods = max(-(-len(s) // c) for s, c in zip(self.sources, self.counts) if c)

  def __len__(self) -> int:
    return self.periods * self.period

  def locate(self, index: int) -> tuple[int, int]:
    """(kind, index inside that kind's source) of mixture record `index`."""
    block, slot = divmod(int(index), self.period)
    kind = int(self.kinds[slot])
    sub = block * self.counts[kind] + int(self.ranks[slot])
    return kind, sub % len(self.sources[kind])

  def __getitem__(self, index: int) -> tuple[int, Any]:
    kind, sub = self.locate(index)
    return kind, self.sources[kind][sub]

  def __repr__(self) -> str:
    # grain stores the source's repr in the iterator state and checks it on restore.
    lens = [None if s is None else len(s) for s in self.sources]
    return f"Mixture(counts={self.counts}, lengths={lens})"
