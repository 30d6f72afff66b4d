"""Model config: the reference fixtures' tiny Janus (used by tests and quick smoke runs).

  python -c "from configs import tiny; print(tiny.get_config())"
"""

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.family = "janus"
  c.variant = "tiny"
  c.dtype = "float32"
  c.param_dtype = "float32"
  c.remat_policy = "none"
  return c
