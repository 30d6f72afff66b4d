"""Mapping table for Janus / Janus-Pro checkpoints in the transformers (HF) layout.

`JanusForConditionalGeneration` state dicts (e.g. `deepseek-community/Janus-Pro-*`) rename the
original modules (transformers' `modeling_janus.py`): `model.vision_model.*` (SigLIP with q/k/v
split and the position embedding squeezed), `model.aligner.{fc1,hidden_layers.i}`,
`model.vqmodel.*`, `model.generation_{embeddings,aligner,head}.*`, `model.language_model.*` and a top-level
`lm_head.weight` (absent when the config ties it to the input embedding). The model is the
same `janus.Model` as for the original layout: only the table and the config reader differ.

Our SigLIP keeps the original fused qkv kernel (W, 3W) (columns q, k, v), so HF's three
projections fill its three column blocks (`part`).
"""

import re

import jax.numpy as jnp

from janus_jax.convert import janus as janus_table
from janus_jax.convert import rules
from janus_jax.convert import vq as vq_table
from janus_jax.convert.rules import Rule
from janus_jax.models import aligners
from janus_jax.models import gen_head
from janus_jax.models import janus
from janus_jax.models import llama
from janus_jax.models import siglip
from janus_jax.models import vq

R = r"(\d+)"
_MAX_MLP_DEPTH = 16  # aligner hidden layers a table covers (Janus uses depth 2: one)


def _linear(torch_name: str, flax_name: str) -> list[Rule]:
  return [Rule(rf"{torch_name}\.weight", rf"{flax_name}/kernel", "linear"),
          Rule(rf"{torch_name}\.bias", rf"{flax_name}/bias")]


def siglip_rules() -> list[Rule]:
  """HF `JanusVisionModel` keys (relative to `model.vision_model.`) -> `siglip.Model` paths."""
  layer, tower = rf"encoder\.layers\.{R}", "vision_tower"
  qkv = [Rule(rf"{layer}\.self_attn\.{n}_proj\.weight", rf"{tower}/blocks_\1/attn/qkv/kernel",
              "linear", part=(i, 3)) for i, n in enumerate("qkv")]
  qkv += [Rule(rf"{layer}\.self_attn\.{n}_proj\.bias", rf"{tower}/blocks_\1/attn/qkv/bias",
               part=(i, 3)) for i, n in enumerate("qkv")]
  return [
      # (P, W) -> (1, P, W): the regrouping to the expected shape restores the batch axis.
      Rule(r"embeddings\.position_embedding\.weight", f"{tower}/pos_embed"),
      Rule(r"embeddings\.patch_embedding\.weight", f"{tower}/patch_embed/proj/kernel", "conv"),
      Rule(r"embeddings\.patch_embedding\.bias", f"{tower}/patch_embed/proj/bias"),
      Rule(rf"{layer}\.layer_norm([12])\.weight", rf"{tower}/blocks_\1/norm\2/scale"),
      Rule(rf"{layer}\.layer_norm([12])\.bias", rf"{tower}/blocks_\1/norm\2/bias"),
      *qkv,
      *_linear(rf"{layer}\.self_attn\.projection_layer", rf"{tower}/blocks_\1/attn/proj"),
      *_linear(rf"{layer}\.mlp\.(fc1|fc2)", rf"{tower}/blocks_\1/mlp/\2"),
      Rule(r"post_layernorm\.weight", f"{tower}/norm/scale"),
      Rule(r"post_layernorm\.bias", f"{tower}/norm/bias"),
  ]


def aligner_rules() -> list[Rule]:
  """HF `fc1` / `hidden_layers.i` -> original `layers_0` / `layers_{2i+2}` (GELUs in between)."""
  out = _linear(r"fc1", "layers_0")
  for i in range(_MAX_MLP_DEPTH):
    out += _linear(rf"hidden_layers\.{i}", f"layers_{2 * i + 2}")
  return out


def llama_rules() -> list[Rule]:
  """`model.language_model.*` -> `language_model/model/*`; `lm_head` is top level in HF."""
  decoder = [r for r in janus_table.llama_rules() if r.target.startswith("model/")]
  for r in decoder:
    assert r.pattern.startswith(r"model\."), r.pattern
  return (rules.prefixed("model.language_", "language_model", decoder)
          + [Rule(r"lm_head\.weight", "language_model/lm_head/kernel", "linear"),
             # A tied config saves no lm_head: the input embedding is the output matrix.
             Rule(r"model\.language_model\.embed_tokens\.weight",
                  "language_model/lm_head/kernel", "linear", fallback=True)])


RULES: list[Rule] = (
    rules.prefixed("model.vision_model.", "vision_model", siglip_rules())
    + rules.prefixed("model.aligner.", "aligner", aligner_rules())
    + rules.prefixed("model.vqmodel.", "gen_vision_model", vq_table.HF_RULES)
    + rules.prefixed("model.generation_aligner.", "gen_aligner", aligner_rules())
    + _linear(r"model\.generation_head\.proj_out", "gen_head/output_mlp_projector")
    + _linear(r"model\.generation_head\.vision_head", "gen_head/vision_head")
    + [Rule(r"model\.generation_embeddings\.weight", "gen_embed/embedding")]
    + llama_rules()
)

SKIP: list[str] = (
    [r"model\.vqmodel\." + s for s in vq_table.SKIP]
    + [r"model\.language_model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"]
)


def detect(keys) -> bool:
  """True for a transformers `JanusForConditionalGeneration` state dict."""
  keys = set(keys)
  return "model.generation_embeddings.weight" in keys and any(
      k.startswith("model.vqmodel.") for k in keys)


def _sub(shapes: dict, prefix: str) -> dict:
  return {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}


def _count(shapes: dict, pattern: str) -> int:
  return len({m.group(1) for k in shapes if (m := re.fullmatch(pattern, k))})


def config_from(config_json: dict, tensor_shapes: dict, extra: dict | None = None,
                **llm_overrides) -> janus.Config:
  """`janus.Config` from a `JanusConfig` config.json; sizes come from the tensor shapes and
  every one that config.json also states must agree."""
  del extra  # HF configs are complete
  missing = [k for k in ("vision_config", "vq_config", "text_config") if k not in config_json]
  if missing:
    raise ValueError(f"not a transformers JanusConfig config.json: no {missing} "
                     f"(found {sorted(config_json)})")
  vc, qc, tc = config_json["vision_config"], config_json["vq_config"], config_json["text_config"]
  s = {k: tuple(v) for k, v in tensor_shapes.items()}

  def shape(key):
    if key not in s:
      raise ValueError(f"checkpoint has no {key!r}; cannot derive the model sizes")
    return s[key]

  bad = []

  def agree(what, from_config, from_shapes):
    if from_config is not None and from_config != from_shapes:
      bad.append(f"{what}: config.json says {from_config}, the tensors say {from_shapes}")
    return from_shapes

  for what, want in (("vision_config.hidden_act", "gelu"), ("vq_config.hidden_act", "gelu"),
                     ("vision_config.use_qk_norm", False)):
    sect, field = what.split(".")
    got = config_json[sect].get(field, want)
    if got != want:
      bad.append(f"{what}={got!r}: only {want!r} (as in the released models) is supported")

  v = "model.vision_model."
  width, _, patch, _ = shape(v + "embeddings.patch_embedding.weight")
  n_pos = shape(v + "embeddings.position_embedding.weight")[0]
  grid = int(round(n_pos ** 0.5))
  if grid * grid != n_pos:
    bad.append(f"position_embedding has {n_pos} rows: not a square grid")
  mlp_dim = shape(v + "encoder.layers.0.mlp.fc1.weight")[0]
  heads = vc.get("num_attention_heads", 16)
  vision = siglip.Config(
      image_size=agree("vision_config.image_size", vc.get("image_size"), grid * patch),
      patch_size=agree("vision_config.patch_size", vc.get("patch_size"), patch),
      width=agree("vision_config.hidden_size", vc.get("hidden_size"), width),
      depth=agree("vision_config.num_hidden_layers", vc.get("num_hidden_layers"),
                  _count(s, r"model\.vision_model\.encoder\.layers\.(\d+)\..*")),
      heads=heads,
      mlp_ratio=agree("vision_config.mlp_ratio", vc.get("mlp_ratio"), mlp_dim / width),
      eps=vc.get("layer_norm_eps", 1e-6))
  if width % heads:
    bad.append(f"vision width {width} is not divisible by num_attention_heads {heads}")

  d = shape("model.language_model.embed_tokens.weight")[1]
  aligner = aligners.Config(
      shape("model.aligner.fc1.weight")[1], shape("model.aligner.fc1.weight")[0], "mlp_gelu",
      agree("vision_config.depth", vc.get("depth"),
            1 + _count(s, r"model\.aligner\.hidden_layers\.(\d+)\.weight")))
  agree("vision_config.projection_dim", vc.get("projection_dim"), aligner.n_embed)
  gen_aligner = aligners.Config(
      shape("model.generation_aligner.fc1.weight")[1],
      shape("model.generation_aligner.fc1.weight")[0], "mlp_gelu",
      agree("vq_config.num_hidden_layers", qc.get("num_hidden_layers"),
            1 + _count(s, r"model\.generation_aligner\.hidden_layers\.(\d+)\.weight")))
  agree("vq_config.projection_dim", qc.get("projection_dim"), gen_aligner.n_embed)
  e, d_in = shape("model.generation_head.proj_out.weight")
  codes = shape("model.generation_head.vision_head.weight")[0]
  head = gen_head.Config(
      agree("vq_config.image_token_embed_dim", qc.get("image_token_embed_dim"), d_in), e, codes)

  vq_cfg = vq.Config.from_shapes(_sub(s, "model.vqmodel."))
  agree("vq_config.num_embeddings", qc.get("num_embeddings"), vq_cfg.codebook_size)
  agree("vq_config.embed_dim", qc.get("embed_dim"), vq_cfg.codebook_dim)
  agree("vq_config.latent_channels", qc.get("latent_channels"), vq_cfg.z_channels)
  agree("vq_config.base_channels", qc.get("base_channels"), vq_cfg.base_channels)
  agree("vq_config.channel_multiplier", list(qc.get("channel_multiplier", vq_cfg.ch_mult)),
        list(vq_cfg.ch_mult))

  llm = llama.Config.from_hf(tc, **llm_overrides)
  agree("text_config.hidden_size", llm.hidden_size, d)
  agree("text_config.vocab_size", llm.vocab_size,
        shape("model.language_model.embed_tokens.weight")[0])
  agree("text_config.num_hidden_layers", llm.num_layers,
        _count(s, r"model\.language_model\.layers\.(\d+)\..*"))
  if "lm_head.weight" not in s and not config_json.get("tie_word_embeddings", False):
    bad.append("lm_head.weight is missing and config.json does not tie word embeddings")
  gen_embed = shape("model.generation_embeddings.weight")
  if bad:
    raise ValueError("config.json disagrees with the checkpoint tensors:\n  " + "\n  ".join(bad))
  return janus.Config(vision=vision, aligner=aligner, vq=vq_cfg, gen_aligner=gen_aligner,
                      gen_head=head, llm=llm, image_token_size=gen_embed[0],
                      gen_embed_dim=gen_embed[1])


def build_model(config: janus.Config, dtype=jnp.float32, param_dtype=jnp.float32) -> janus.Model:
  return janus.Model(config, dtype, param_dtype)
