r"""JanusFlow three-stage training (JanusFlow paper, Table 1).

  python train.py --config configs/train_janusflow.py:stage1 --workdir $WORK/s1 \
      --config.init_from=$CKPT/janusflow_1_3b --config.data.tokenizer=$CKPT/janusflow_1_3b \
      --config.data.data_dir=$DATA

arg: "stage1" | "stage2" | "stage3".

  stage  LR     warm-up  steps  batch  und:gen:text               trains
  1      1e-4   2000     10K    512    50:50:0                    aligners, UViT enc/dec, REPA MLP
  2      1e-4   0        380K   512    14:80:6 (first 10K 30:50:20)  all but SigLIP
  3      2e-5   1000     26K    256    21:70:9                    all
Loss on generation samples: rectified flow + REPA (SigLIP features of the clean image vs an MLP on
an intermediate LLM layer; which layer and weight are not published: `loss.repa_layer`,
`loss.repa_weight`). The SDXL VAE is outside the model: latents come with the data.
"""

import ml_collections

from configs import models
from janus_jax.train import config as train_config

_NEW = (r"vision_und_enc_aligner/.*", r"beg_of_und_embed", r"vision_gen_enc_model/.*",
        r"vision_gen_enc_aligner/.*", r"vision_gen_dec_model/.*", r"vision_gen_dec_aligner/.*",
        r"vision_gen_dec_aligner_norm/.*", r"repa_projector/.*")

# Ratios are und : text : gen, the order of `janus_jax.data.pipeline.Config.ratios`.
STAGES = {
    "stage1": dict(lr=1e-4, warmup=2000, steps=10_000, batch=512, ratios=(50.0, 0.0, 50.0),
                   trainable=_NEW, frozen=()),
    "stage2": dict(lr=1e-4, warmup=0, steps=380_000, batch=512, ratios=(14.0, 6.0, 80.0),
                   trainable=(), frozen=(r"vision_und_enc_model/.*",)),
    "stage3": dict(lr=2e-5, warmup=1000, steps=26_000, batch=256, ratios=(21.0, 9.0, 70.0),
                   trainable=(), frozen=()),
}


def get_config(arg: str = "stage2") -> ml_collections.ConfigDict:
  if arg not in STAGES:
    raise ValueError(f"train_janusflow arg {arg!r}: use stage1, stage2 or stage3")
  s = STAGES[arg]
  c = train_config.base(models.get_config("janusflow_1_3b"))
  c.total_steps = s["steps"]
  c.data.update(batch_size=s["batch"], seq_len=4096, ratios=s["ratios"], kinds=("und", "flow"))
  c.optim.update(lr=s["lr"], warmup_steps=s["warmup"], trainable=s["trainable"],
                 frozen=s["frozen"])
  c.loss.update(repa_weight=0.5, repa_layer=6, repa_hidden=2048)
  return c
