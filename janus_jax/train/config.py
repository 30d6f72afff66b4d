"""The fields every training config has, with the papers' optimiser defaults.

Not a runnable config itself: `train_tiny.py`, `train_janus_pro.py` and `train_janusflow.py`
start from `base()` and change what their recipe changes. Every field can be overridden on the
command line (`--config.optim.lr=3e-4`).

Which model trains (`train.model_config`), first match wins:
  init_from            a `convert_torch.py` output directory: the model config AND the initial
                       weights come from there (its config.json holds the exact sizes).
  model.config_json    a JSON model config: a converted checkpoint's config.json, or
                       `janus_jax.convert.driver.config_to_json(cfg)` of any janus / janusflow /
                       llama Config (a custom small model); fresh random weights.
  model.variant        a named size of model.family ("llm" | "janus" | "janusflow"), see
                       `configs/models.py`.
model.family, when set, must agree with the file's model; model.dtype / param_dtype /
remat_policy apply in every case.

Data (`data.source="pipeline"`, see `janus_jax.data.pipeline.make_train_iterator`): data.und and
data.text name TFDS datasets prepared with `janus_jax.data.builders` under data.data_dir (or
"<name>@<data_dir>"); data.gen is the output directory of `python -m
janus_jax.data.tokenize_images` (relative to data.data_dir, or absolute); data.tokenizer is a
checkpoint directory or tokenizer.json. A kind whose ratio is 0 is not read.
"""

import ml_collections

from janus_jax import sharding


def base(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.mesh = (1, -1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
  c.sharding_rules = sharding.DEFAULT_RULES
  c.init_from = ""  # a convert_torch.py output directory (stage 1 starts from released weights)
  c.model = model
  if "config_json" not in c.model:
    c.model.config_json = ""  # see the module docstring

  c.data = ml_collections.ConfigDict(dict(
      source="pipeline",  # or "synthetic" (random packed batches of the same format)
      batch_size=256,  # global rows (packed sequences) per optimizer step
      seq_len=4096,
      kinds=("und", "text", "gen"),  # synthetic only: one sample of each per row
      fixed=False, gen_tokens=16,  # synthetic only
      # pipeline: TFDS datasets prepared with janus_jax.data.builders under data_dir.
      tokenizer="", data_dir="", und="conversations", text="plain_text", gen="image_codes",
      ratios=(1.0, 1.0, 1.0),  # und : text : gen
      max_images_per_row=4, caption_dropout=0.1, worker_count=0))

  # AdamW as in both papers: betas (0.9, 0.95), no weight decay, clip 1.0, constant after warm-up.
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=0, schedule="warmup_constant", b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.0, grad_clip=1.0, trainable=(), frozen=(), lr_mults=(),
      grad_accum_steps=1))

  c.loss = ml_collections.ConfigDict(dict(
      # JanusFlow: rectified flow, t ~ logit-normal(t_mean, t_std) (or "uniform"), and REPA
      # on the output of LLM layer `repa_layer` (0-based) through a `repa_hidden`-wide MLP.
      rf_weight=1.0, t_sampling="logit_normal", t_mean=0.0, t_std=1.0,
      repa_weight=0.0, repa_layer=6, repa_hidden=2048))
  c.ema_decay = 0.0  # > 0 keeps an EMA copy of the parameters
  c.ckpt = ml_collections.ConfigDict(dict(every=1000, keep=3, use_async=True))
  c.log_every = 10
  return c
