"""Mapping table for Janus / Janus-Pro checkpoints in the original DeepSeek layout.

Component tables (`siglip_rules`, `aligner_rules`, `llama_rules`) are written relative to the
component and re-rooted with `rules.prefixed`, so JanusFlow reuses the SigLIP and LLaMA ones.
"""

import jax.numpy as jnp

from janus_jax.convert import rules
from janus_jax.convert import vq as vq_table
from janus_jax.convert.rules import Rule
from janus_jax.models import janus

R = r"(\d+)"


def siglip_rules() -> list[Rule]:
  """timm ViT keys relative to `<tower>.vision_tower.` -> paths relative to `siglip.Model`."""
  return [
      Rule(r"pos_embed", "vision_tower/pos_embed"),
      Rule(r"patch_embed\.proj\.weight", "vision_tower/patch_embed/proj/kernel", "conv"),
      Rule(r"patch_embed\.proj\.bias", "vision_tower/patch_embed/proj/bias"),
      Rule(rf"blocks\.{R}\.(norm1|norm2)\.weight", r"vision_tower/blocks_\1/\2/scale"),
      Rule(rf"blocks\.{R}\.(norm1|norm2)\.bias", r"vision_tower/blocks_\1/\2/bias"),
      Rule(rf"blocks\.{R}\.attn\.(qkv|proj)\.weight", r"vision_tower/blocks_\1/attn/\2/kernel",
           "linear"),
      Rule(rf"blocks\.{R}\.attn\.(qkv|proj)\.bias", r"vision_tower/blocks_\1/attn/\2/bias"),
      Rule(rf"blocks\.{R}\.mlp\.(fc1|fc2)\.weight", r"vision_tower/blocks_\1/mlp/\2/kernel",
           "linear"),
      Rule(rf"blocks\.{R}\.mlp\.(fc1|fc2)\.bias", r"vision_tower/blocks_\1/mlp/\2/bias"),
      Rule(r"norm\.weight", "vision_tower/norm/scale"),
      Rule(r"norm\.bias", "vision_tower/norm/bias"),
  ]


SIGLIP_SKIP = [r"vision_tower\.attn_pool\..*"]


def aligner_rules() -> list[Rule]:
  """`MlpProjector` keys: `layers.N.weight` (mlp_gelu) or `layers.weight` (linear)."""
  return [
      Rule(rf"layers\.{R}\.weight", r"layers_\1/kernel", "linear"),
      Rule(rf"layers\.{R}\.bias", r"layers_\1/bias"),
      Rule(r"layers\.weight", "layers/kernel", "linear"),
      Rule(r"layers\.bias", "layers/bias"),
  ]


def llama_rules() -> list[Rule]:
  """`LlamaForCausalLM` keys -> `llama.Model` paths; per-layer tensors stack on `layers`."""
  layer = rf"model\.layers\.{R}\."
  return [
      Rule(r"model\.embed_tokens\.weight", "model/embed_tokens/embedding"),
      Rule(r"model\.norm\.weight", "model/norm/scale"),
      Rule(r"lm_head\.weight", "lm_head/kernel", "linear"),
      Rule(layer + r"(input_layernorm|post_attention_layernorm)\.weight",
           r"model/layers/\2/scale", stack=1),
      # (N*H, D) -> (D, N*H), regrouped to (D, N, H); o_proj (D, N*H) -> (N*H, D) -> (N, H, D).
      Rule(layer + r"self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight",
           r"model/layers/self_attn/\2", "linear", stack=1),
      Rule(layer + r"mlp\.(gate_proj|up_proj|down_proj)\.weight", r"model/layers/mlp/\2/kernel",
           "linear", stack=1),
  ]


LLAMA_SKIP = [r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"]


def gen_head_rules() -> list[Rule]:
  return [
      Rule(r"(output_mlp_projector|vision_head)\.weight", r"\1/kernel", "linear"),
      Rule(r"(output_mlp_projector|vision_head)\.bias", r"\1/bias"),
  ]


RULES: list[Rule] = (
    rules.prefixed("vision_model.vision_tower.", "vision_model", siglip_rules())
    + rules.prefixed("aligner.", "aligner", aligner_rules())
    + rules.prefixed("gen_vision_model.", "gen_vision_model", vq_table.RULES)
    + rules.prefixed("gen_aligner.", "gen_aligner", aligner_rules())
    + rules.prefixed("gen_head.", "gen_head", gen_head_rules())
    + [Rule(r"gen_embed\.weight", "gen_embed/embedding")]
    + rules.prefixed("language_model.", "language_model", llama_rules())
)

SKIP: list[str] = (
    [r"vision_model\." + s for s in SIGLIP_SKIP]
    + [r"gen_vision_model\." + s for s in vq_table.SKIP]
    + [r"language_model\." + s for s in LLAMA_SKIP]
)


def detect(keys) -> bool:
  """True for an original-layout Janus state dict."""
  keys = set(keys)
  return "gen_embed.weight" in keys and any(k.startswith("gen_vision_model.") for k in keys)


def config_from(config_json: dict, tensor_shapes: dict, extra: dict | None = None,
                **llm_overrides) -> janus.Config:
  """Model config from config.json, with VQ sizes from the weights and widths cross-checked."""
  cfg = janus.Config.from_json(config_json, extra, tensor_shapes, **llm_overrides)
  checks = {
      "language_model.model.embed_tokens.weight": (cfg.llm.vocab_size, cfg.llm.hidden_size),
      "gen_embed.weight": (cfg.image_token_size, cfg.gen_embed_dim),
      "vision_model.vision_tower.pos_embed": (1, cfg.vision.num_patches, cfg.vision.width),
      "gen_head.vision_head.weight": (cfg.image_token_size, cfg.gen_head.image_token_embed),
  }
  bad = [f"{k}: config.json implies {want}, checkpoint has {tuple(tensor_shapes[k])}"
         for k, want in checks.items() if k in tensor_shapes and tuple(tensor_shapes[k]) != want]
  n_layers = len({k.split(".")[3] for k in tensor_shapes
                  if k.startswith("language_model.model.layers.")})
  if n_layers and n_layers != cfg.llm.num_layers:
    bad.append(f"language_config.num_hidden_layers={cfg.llm.num_layers}, checkpoint has "
               f"{n_layers} layers")
  n_blocks = len({k.split(".")[3] for k in tensor_shapes
                  if k.startswith("vision_model.vision_tower.blocks.")})
  if n_blocks and n_blocks != cfg.vision.depth:
    bad.append(f"SigLIP depth {cfg.vision.depth} from model_name, checkpoint has {n_blocks} "
               "blocks")
  if bad:
    raise ValueError("config.json disagrees with the checkpoint tensors:\n  " + "\n  ".join(bad))
  return cfg


def build_model(config: janus.Config, dtype=jnp.float32, param_dtype=jnp.float32) -> janus.Model:
  return janus.Model(config, dtype, param_dtype)
