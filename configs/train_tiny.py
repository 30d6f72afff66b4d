r"""Tiny training run on synthetic packed batches: tests, README and CPU benchmarks.

  python train.py --config configs/train_tiny.py:janus --workdir /tmp/janus_tiny
  python train.py --config configs/train_tiny.py:llm --workdir /tmp/llm_tiny --config.total_steps=50

`arg` picks the family (janus | llm | janusflow); everything else is overridable, e.g.
`--config.mesh='(2,2,2)'` with 8 devices or `--config.optim.grad_accum_steps=2`.
"""

import ml_collections

from janus_jax import sharding


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  family = arg or "janus"
  if family not in ("janus", "llm", "janusflow"):
    raise ValueError(f"train_tiny arg {family!r}: use janus, llm or janusflow")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 20
  c.mesh = (1, -1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
  c.sharding_rules = sharding.DEFAULT_RULES
  c.init_from = ""  # a convert_torch.py output directory

  c.model = ml_collections.ConfigDict(dict(
      family=family, variant="tiny", dtype="float32", param_dtype="float32",
      remat_policy="none", pad_id=3))

  kinds = {"janus": ("und", "text", "gen"), "llm": ("text",), "janusflow": ("und", "flow")}[family]
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic", batch_size=8, seq_len=64, kinds=kinds, fixed=False, gen_tokens=16))

  frozen = {"janus": (r"gen_vision_model/.*",), "llm": (),
            "janusflow": (r"vision_und_enc_model/.*",)}[family]
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=2, schedule="warmup_constant", b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.0, grad_clip=1.0, trainable=(), frozen=frozen, lr_mults=(),
      grad_accum_steps=1))

  c.loss = ml_collections.ConfigDict(dict(
      cfg_drop_prob=0.1, rf_weight=1.0, repa_weight=0.5, repa_layer=0, repa_hidden=64,
      t_sampling="logit_normal", t_mean=0.0, t_std=1.0))
  c.ema_decay = 0.0
  c.ckpt = ml_collections.ConfigDict(dict(every=10, keep=3, use_async=True))
  c.log_every = 1
  return c
