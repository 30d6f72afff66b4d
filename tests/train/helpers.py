"""Shared helpers for the training tests: the repo-root `train` module and tiny configs."""

import importlib
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def train_module():
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  return importlib.import_module("train")


def tiny_config(family: str, **overrides):
  """configs/train_tiny.py:<family> with dotted overrides, e.g. {"optim.lr": 3e-3}."""
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  config = importlib.import_module("configs.train_tiny").get_config(family)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config
