r"""Tiny training run on synthetic packed batches: tests, README and CPU benchmarks.

  python train.py --config configs/train_tiny.py:janus --workdir /tmp/janus_tiny
  python train.py --config configs/train_tiny.py:llm --workdir /tmp/llm_tiny --config.total_steps=50

On the real data path instead (TFDS datasets + `tokenize_images` codes under $DATA) and a custom
model config (tests/train/test_train_cli.py does this on generated data):
  python train.py --config configs/train_tiny.py:janus --workdir /tmp/janus_tiny \
      --config.data.source=pipeline --config.data.data_dir=$DATA --config.data.gen=codes \
      --config.data.tokenizer=$TOK --config.model.config_json=small_janus.json

`arg` picks the family (janus | llm | janusflow); everything else is overridable, e.g.
`--config.mesh='(2,2,2)'` with 8 devices or `--config.optim.grad_accum_steps=2`.
"""

import ml_collections

from janus_jax.train import config as train_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  family = arg or "janus"
  if family not in ("janus", "llm", "janusflow"):
    raise ValueError(f"train_tiny arg {family!r}: use janus, llm or janusflow")
  c = train_config.base(ml_collections.ConfigDict(dict(
      family=family, variant="tiny", dtype="float32", param_dtype="float32",
      remat_policy="none")))
  c.total_steps = 20
  c.data.update(source="synthetic", batch_size=8, seq_len=64, gen_tokens=16, kinds={
      "janus": ("und", "text", "gen"), "llm": ("text",), "janusflow": ("und", "flow")}[family])
  c.optim.update(lr=1e-3, warmup_steps=2, frozen={
      "janus": (r"gen_vision_model/.*",), "llm": (),
      "janusflow": (r"vision_und_enc_model/.*",)}[family])
  c.loss.update(repa_weight=0.5, repa_layer=0, repa_hidden=64)
  c.ckpt.update(every=10, keep=3)
  c.log_every = 1
  return c
