r"""Janus-Pro three-stage training (Janus-Pro report, Table 2), for the 1B or 7B model.

  python train.py --config configs/train_janus_pro.py:stage1 --workdir $WORK/s1 \
      --config.init_from=$CKPT/janus_pro_1b --config.data.tokenizer=$CKPT/janus_pro_1b \
      --config.data.data_dir=$DATA
  python train.py --config configs/train_janus_pro.py:stage2,7b --workdir $WORK/s2 ...

arg: "stage1" | "stage2" | "stage3", optionally ",1b" (default) or ",7b".

  stage  LR      warm-up  steps (1B/7B)   batch  und:text:gen  trains
  1      1e-3    600      20K / 20K       256    1:0:3         adaptors, gen embedding, gen head
  2      1e-4    5000     360K (270K)     512    2:3:5         all but SigLIP and the VQ
  3      4e-5    0        80K / 40K       128    5:1:4         all but the VQ
AdamW (0.9, 0.95), no weight decay, clip 1.0, constant LR after warm-up, packed 4096-token rows.
"""

import ml_collections

from configs import models
from janus_jax.train import config as train_config

# Stage 1 trains only the newly attached parts; the VQ tokenizer is frozen in every stage.
STAGES = {
    "stage1": dict(lr=1e-3, warmup=600, steps={"1b": 20_000, "7b": 20_000}, batch=256,
                   ratios=(1.0, 0.0, 3.0),
                   trainable=(r"aligner/.*", r"gen_aligner/.*", r"gen_embed/.*", r"gen_head/.*"),
                   frozen=()),
    "stage2": dict(lr=1e-4, warmup=5000, steps={"1b": 270_000, "7b": 270_000}, batch=512,
                   ratios=(2.0, 3.0, 5.0), trainable=(),
                   frozen=(r"vision_model/.*", r"gen_vision_model/.*")),
    "stage3": dict(lr=4e-5, warmup=0, steps={"1b": 80_000, "7b": 40_000}, batch=128,
                   ratios=(5.0, 1.0, 4.0), trainable=(), frozen=(r"gen_vision_model/.*",)),
}


def get_config(arg: str = "stage2") -> ml_collections.ConfigDict:
  stage, _, size = arg.partition(",")
  size = size or "1b"
  if stage not in STAGES or size not in ("1b", "7b"):
    raise ValueError(f"train_janus_pro arg {arg!r}: use stage1|stage2|stage3[,1b|,7b]")
  s = STAGES[stage]
  model = models.get_config(f"janus_pro_{size}")
  model.remat_policy = "dots_no_batch" if size == "7b" else "none"
  c = train_config.base(model)
  c.total_steps = s["steps"][size]
  c.data.update(batch_size=s["batch"], seq_len=4096, ratios=s["ratios"])
  c.optim.update(lr=s["lr"], warmup_steps=s["warmup"], trainable=s["trainable"],
                 frozen=s["frozen"])
  return c
