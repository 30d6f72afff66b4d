"""Mapping table for JanusFlow checkpoints in the original DeepSeek layout.

SigLIP and LLaMA keys reuse the Janus component tables re-rooted under JanusFlow's attribute
names; the UViT tables below are relative to `vision_gen_enc_model.` / `vision_gen_dec_model.`.
GRN `weight`/`bias` (1, 1, 1, F) load as (F,) `scale`/`bias` (the converter regroups axes).
"""

import flax.linen as nn
import jax.numpy as jnp

from janus_jax.convert import janus as janus_table
from janus_jax.convert import rules
from janus_jax.models import janusflow

Rule = rules.Rule


def _param(torch_name: str, flax_name: str, kind: str) -> list[Rule]:
  """weight/bias rules for one layer; kind: conv, linear or rmsnorm (no bias)."""
  if kind == "rmsnorm":
    return [Rule(rf"{torch_name}\.weight", f"{flax_name}/scale")]
  transform = {"conv": "conv", "linear": "linear"}[kind]
  return [Rule(rf"{torch_name}\.weight", f"{flax_name}/kernel", transform),
          Rule(rf"{torch_name}\.bias", f"{flax_name}/bias")]


def _mid_block() -> list[Rule]:
  p, f = r"mid_block\.res_blocks\.(?P<i>\d+)", r"mid_block/res_blocks_\g<i>"
  return [
      *_param(rf"{p}\.depthwise", rf"{f}/depthwise", "conv"),
      *_param(rf"{p}\.norm", rf"{f}/norm", "rmsnorm"),
      *_param(rf"{p}\.(?P<l>channelwise_linear_1|channelwise_linear_2|cond_embeds_mapper)",
              rf"{f}/\g<l>", "linear"),
      Rule(rf"{p}\.channelwise_norm\.weight", rf"{f}/channelwise_norm/scale"),
      Rule(rf"{p}\.channelwise_norm\.bias", rf"{f}/channelwise_norm/bias"),
  ]


def uvit_encoder_rules() -> list[Rule]:
  """`ShallowUViTEncoder` keys -> `uvit.Encoder` paths."""
  return [
      *_param(r"time_embed\.(?P<l>linear_1|linear_2)", r"time_embed/\g<l>", "linear"),
      *_param(r"in_conv", "in_conv", "conv"),
      *_mid_block(),
  ]


def uvit_decoder_rules() -> list[Rule]:
  """`ShallowUViTDecoder` keys -> `uvit.Decoder` paths."""
  return [
      *_param(r"input_norm", "input_norm", "rmsnorm"),
      *_mid_block(),
      *_param(r"out_convs\.(?P<i>\d+)\.norm", r"out_convs_\g<i>/norm", "rmsnorm"),
      *_param(r"out_convs\.(?P<i>\d+)\.unpatch_conv", r"out_convs_\g<i>/unpatch_conv", "conv"),
  ]


def _top(torch_name: str, kind: str) -> list[Rule]:
  return _param(torch_name.replace(".", r"\."), torch_name, kind)


RULES: list[Rule] = (
    rules.prefixed("vision_und_enc_model.vision_tower.", "vision_und_enc_model",
                   janus_table.siglip_rules())
    + _top("vision_und_enc_aligner", "linear")
    + [Rule(r"beg_of_und_embed", "beg_of_und_embed")]
    + rules.prefixed("vision_gen_enc_model.", "vision_gen_enc_model", uvit_encoder_rules())
    + _top("vision_gen_enc_aligner", "linear")
    + rules.prefixed("vision_gen_dec_model.", "vision_gen_dec_model", uvit_decoder_rules())
    + _top("vision_gen_dec_aligner_norm", "rmsnorm")
    + _top("vision_gen_dec_aligner", "linear")
    + rules.prefixed("language_model.", "language_model", janus_table.llama_rules())
)

SKIP: list[str] = (
    [r"vision_und_enc_model\." + s for s in janus_table.SIGLIP_SKIP]
    + [r"language_model\." + s for s in janus_table.LLAMA_SKIP]
)


def detect(keys) -> bool:
  """True for an original-layout JanusFlow state dict."""
  keys = set(keys)
  return "beg_of_und_embed" in keys or any(k.startswith("vision_gen_enc_model.") for k in keys)


def config_from(config_json: dict, tensor_shapes: dict, extra: dict | None = None,
                **llm_overrides) -> janusflow.Config:
  """Model config from config.json with UViT sizes checked against the weights, and the widths
  the reference hard-codes (aligners, beg_of_und_embed) cross-checked."""
  cfg = janusflow.Config.from_json(config_json, extra, tensor_shapes, **llm_overrides)
  d = cfg.llm.hidden_size
  checks = {
      "language_model.model.embed_tokens.weight": (cfg.llm.vocab_size, d),
      "beg_of_und_embed": (1, d),
      "vision_und_enc_aligner.weight": (d, cfg.vision.width),
      "vision_gen_enc_aligner.weight": (d, cfg.encoder.channels),
      "vision_gen_dec_aligner.weight": (cfg.decoder.in_channels, d),
      "vision_und_enc_model.vision_tower.pos_embed": (1, cfg.vision.num_patches,
                                                      cfg.vision.width),
  }
  bad = [f"{k}: config.json implies {want}, checkpoint has {tuple(tensor_shapes[k])}"
         for k, want in checks.items() if k in tensor_shapes and tuple(tensor_shapes[k]) != want]
  counts = {
      "language_config.num_hidden_layers": ("language_model.model.layers.", 3,
                                            cfg.llm.num_layers),
      "SigLIP depth": ("vision_und_enc_model.vision_tower.blocks.", 3, cfg.vision.depth),
      "vision_gen_enc layers_in_middle": ("vision_gen_enc_model.mid_block.res_blocks.", 3,
                                          cfg.encoder.layers_in_middle),
      "vision_gen_dec layers_in_middle": ("vision_gen_dec_model.mid_block.res_blocks.", 3,
                                          cfg.decoder.layers_in_middle),
  }
  for what, (prefix, pos, want) in counts.items():
    n = len({k.split(".")[pos] for k in tensor_shapes if k.startswith(prefix)})
    if n and n != want:
      bad.append(f"{what}={want}, checkpoint has {n}")
  if bad:
    raise ValueError("config.json disagrees with the checkpoint tensors:\n  " + "\n  ".join(bad))
  return cfg


def build_model(config: janusflow.Config, dtype=jnp.float32,
                param_dtype=jnp.float32) -> janusflow.Model:
  return janusflow.Model(config, dtype, param_dtype)


def convert(config: janusflow.Config, tensors: dict, param_dtype=jnp.float32):
  """In-memory state dict -> (params, skipped keys); strict (see `rules.convert_tensors`)."""
  expected = nn.unbox(janusflow.abstract_params(config, param_dtype=param_dtype))
  return rules.convert_tensors(RULES, tensors, expected, SKIP)
