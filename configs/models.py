"""Model configs by name: janus_1_3b, janus_pro_1b, janus_pro_7b, janusflow_1_3b, tiny.

Sizes live with the model code (`janus.get_config(variant)`, the JanusFlow sizes in
`janusflow`); this config only names the variant and the precision to run it at. A converted
checkpoint carries its own exact config, which takes precedence.

  python -c "from configs import models; print(models.get_config('janus_pro_7b'))"
  python train.py --config configs/train_tiny.py --config.model=...  (training configs embed one)
"""

import ml_collections

FAMILIES = {
    "janus_1_3b": "janus",
    "janus_pro_1b": "janus",
    "janus_pro_7b": "janus",
    "janusflow_1_3b": "janusflow",
    "tiny": "janus",  # the reference fixtures' sizes
}


def get_config(arg: str = "janus_pro_1b") -> ml_collections.ConfigDict:
  if arg not in FAMILIES:
    raise ValueError(f"unknown model {arg!r}; known: {sorted(FAMILIES)}")
  c = ml_collections.ConfigDict()
  c.family = FAMILIES[arg]
  c.variant = arg
  # Compute in bf16 like the reference (float32 for the tiny test model); store float32.
  c.dtype = "float32" if arg == "tiny" else "bfloat16"
  c.param_dtype = "float32"
  c.remat_policy = "none"
  return c
