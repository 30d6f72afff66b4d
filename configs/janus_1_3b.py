"""Model config: janus-1-3b (sizes as released; see ../shared/spec/ARCHITECTURE.md section 1).

Used by `sample.py` / `train.py` when no converted checkpoint supplies its own config:
  python -c "from configs import janus_1_3b; print(janus_1_3b.get_config())"
"""

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.family = "janus"
  c.variant = "janus_1_3b"
  c.dtype = "bfloat16"  # compute
  c.param_dtype = "float32"  # storage (master weights when training)
  c.remat_policy = "none"
  return c
