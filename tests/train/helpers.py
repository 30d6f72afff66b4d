"""Shared helpers for the training tests: tiny configs with dotted overrides."""

import pathlib

from configs import train_tiny

REPO = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(family: str, **overrides):
  """configs/train_tiny.py:<family> with dotted overrides, e.g. {"optim.lr": 3e-3}."""
  config = train_tiny.get_config(family)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config
