"""Model config: JanusFlow-1.3B (sizes inferred in ../shared/spec/ARCHITECTURE.md section 2.7).

  python -c "from configs import janusflow_1_3b; print(janusflow_1_3b.get_config())"
"""

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.family = "janusflow"
  c.variant = "janusflow_1_3b"
  c.dtype = "bfloat16"
  c.param_dtype = "float32"
  c.remat_policy = "none"
  return c
