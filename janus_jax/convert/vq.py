"""Mapping tables for the VQ-16 tokenizer (`janus_jax.models.vq`), keys relative to the VQ model.

`RULES` reads the original DeepSeek layout (`gen_vision_model.` prefix in a Janus checkpoint),
`HF_RULES` the transformers layout (`model.vqmodel.` prefix), which renames `conv_blocks` to
`down` / `up`, `res` to `block` and `mid.0/1/2` to `mid.block_1/attn_1/block_2`; level indices
are the same in both (decoder level 0 is the lowest resolution). Compose with
`rules.prefixed("gen_vision_model.", "gen_vision_model", vq.RULES)`.

Every conv, 1x1 included, is a Flax conv: one `conv` transform for all kernels.
"""

from janus_jax.convert import rules

Rule = rules.Rule

# Layer names inside ResnetBlocks and AttnBlocks.
_NORMS = r"norm1|norm2|norm"
_CONVS = r"conv1|conv2|nin_shortcut|q|k|v|proj_out"


def _leaves(torch_prefix: str, flax_prefix: str) -> list[Rule]:
  """Rules for the norms and convs directly under one block (regex prefix -> Flax prefix).

  The prefixes use named groups only, so the leaf name is always the group `leaf`.
  """
  p, f = torch_prefix, flax_prefix
  return [
      Rule(rf"{p}\.(?P<leaf>{_NORMS})\.weight", rf"{f}/\g<leaf>/scale"),
      Rule(rf"{p}\.(?P<leaf>{_NORMS})\.bias", rf"{f}/\g<leaf>/bias"),
      Rule(rf"{p}\.(?P<leaf>{_CONVS})\.weight", rf"{f}/\g<leaf>/kernel", "conv"),
      Rule(rf"{p}\.(?P<leaf>{_CONVS})\.bias", rf"{f}/\g<leaf>/bias"),
  ]


def _conv(torch_name: str, flax_name: str) -> list[Rule]:
  return [Rule(rf"{torch_name}\.weight", rf"{flax_name}/kernel", "conv"),
          Rule(rf"{torch_name}\.bias", rf"{flax_name}/bias")]


def _norm(torch_name: str, flax_name: str) -> list[Rule]:
  return [Rule(rf"{torch_name}\.weight", rf"{flax_name}/scale"),
          Rule(rf"{torch_name}\.bias", rf"{flax_name}/bias")]


def _common() -> list[Rule]:
  """Keys spelled the same in both layouts."""
  return [
      *_conv(r"(?P<side>encoder|decoder)\.(?P<c>conv_in|conv_out)", r"\g<side>/\g<c>"),
      *_norm(r"(?P<side>encoder|decoder)\.norm_out", r"\g<side>/norm_out"),
      *_conv(r"(?P<c>quant_conv|post_quant_conv)", r"\g<c>"),
      Rule(r"quantize\.embedding\.weight", "quantize/embedding"),
  ]


RULES: list[Rule] = [
    *_leaves(r"(?P<side>encoder|decoder)\.conv_blocks\.(?P<i>\d+)\.(?P<kind>res|attn)\.(?P<j>\d+)",
             r"\g<side>/conv_blocks_\g<i>/\g<kind>_\g<j>"),
    *_leaves(r"(?P<side>encoder|decoder)\.mid\.(?P<j>\d+)", r"\g<side>/mid_\g<j>"),
    *_conv(r"encoder\.conv_blocks\.(?P<i>\d+)\.downsample\.conv",
           r"encoder/conv_blocks_\g<i>/downsample/conv"),
    *_conv(r"decoder\.conv_blocks\.(?P<i>\d+)\.upsample\.conv",
           r"decoder/conv_blocks_\g<i>/upsample/conv"),
    *_common(),
]

HF_RULES: list[Rule] = [
    *_leaves(r"encoder\.down\.(?P<i>\d+)\.block\.(?P<j>\d+)",
             r"encoder/conv_blocks_\g<i>/res_\g<j>"),
    *_leaves(r"decoder\.up\.(?P<i>\d+)\.block\.(?P<j>\d+)",
             r"decoder/conv_blocks_\g<i>/res_\g<j>"),
    *_leaves(r"encoder\.down\.(?P<i>\d+)\.attn\.(?P<j>\d+)",
             r"encoder/conv_blocks_\g<i>/attn_\g<j>"),
    *_leaves(r"decoder\.up\.(?P<i>\d+)\.attn\.(?P<j>\d+)",
             r"decoder/conv_blocks_\g<i>/attn_\g<j>"),
    *_leaves(r"(?P<side>encoder|decoder)\.mid\.block_1", r"\g<side>/mid_0"),
    *_leaves(r"(?P<side>encoder|decoder)\.mid\.attn_1", r"\g<side>/mid_1"),
    *_leaves(r"(?P<side>encoder|decoder)\.mid\.block_2", r"\g<side>/mid_2"),
    *_conv(r"encoder\.down\.(?P<i>\d+)\.downsample\.conv",
           r"encoder/conv_blocks_\g<i>/downsample/conv"),
    *_conv(r"decoder\.up\.(?P<i>\d+)\.upsample\.conv", r"decoder/conv_blocks_\g<i>/upsample/conv"),
    *_common(),
]

# Known-unused tensors: the usage-statistics buffer of the original quantizer.
SKIP: list[str] = [r"quantize\.codebook_used"]
