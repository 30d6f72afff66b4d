"""Mapping table for diffusers `AutoencoderKL` folders (`janus_jax.models.vae`).

A diffusers VAE folder holds `config.json` and `diffusion_pytorch_model.safetensors` (or `.bin`).
Keys such as `decoder.up_blocks.0.resnets.1.conv1.weight` map to
`decoder/up_blocks_0/resnets_1/conv1/kernel`. The mid-block attention exists under two names:
current `to_q/to_k/to_v/to_out.0` and older `query/key/value/proj_attn`; both load into
`to_q/to_k/to_v/to_out_0`. Old files may store those projections as 1x1 convs (C, C, 1, 1); the
`linear` transform's reversed axes plus the regrouping to (C, C) handle both layouts.
"""

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from janus_jax import errors
from janus_jax.convert import rules
from janus_jax.models import vae

Rule = rules.Rule

_SIDE = r"(?P<side>encoder|decoder)"
_BLOCK = rf"{_SIDE}\.(?P<blk>down_blocks|up_blocks)\.(?P<i>\d+)"
_ATTN_NAMES = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", r"to_out\.0": "to_out_0",
               "query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out_0"}


def _param(torch_name: str, flax_name: str, kind: str) -> list[Rule]:
  """weight/bias rules for one layer; kind: conv, linear or norm."""
  weight = {"conv": ("kernel", "conv"), "linear": ("kernel", "linear"), "norm": ("scale", "none")}
  leaf, transform = weight[kind]
  return [Rule(rf"{torch_name}\.weight", f"{flax_name}/{leaf}", transform),
          Rule(rf"{torch_name}\.bias", f"{flax_name}/bias")]


def _resnets(torch_prefix: str, flax_prefix: str) -> list[Rule]:
  p, f = rf"{torch_prefix}\.resnets\.(?P<j>\d+)", rf"{flax_prefix}/resnets_\g<j>"
  return [*_param(rf"{p}\.(?P<n>norm1|norm2)", rf"{f}/\g<n>", "norm"),
          *_param(rf"{p}\.(?P<c>conv1|conv2|conv_shortcut)", rf"{f}/\g<c>", "conv")]


RULES: list[Rule] = [
    *_param(rf"{_SIDE}\.(?P<c>conv_in|conv_out)", r"\g<side>/\g<c>", "conv"),
    *_param(rf"{_SIDE}\.conv_norm_out", r"\g<side>/conv_norm_out", "norm"),
    *_resnets(_BLOCK, r"\g<side>/\g<blk>_\g<i>"),
    *_param(rf"{_BLOCK}\.(?P<s>downsamplers|upsamplers)\.0\.conv",
            r"\g<side>/\g<blk>_\g<i>/\g<s>_0/conv", "conv"),
    *_resnets(rf"{_SIDE}\.mid_block", r"\g<side>/mid_block"),
    *_param(rf"{_SIDE}\.mid_block\.attentions\.0\.group_norm",
            r"\g<side>/mid_block/attentions_0/group_norm", "norm"),
    *[r for torch_name, flax_name in _ATTN_NAMES.items()
      for r in _param(rf"{_SIDE}\.mid_block\.attentions\.0\.{torch_name}",
                      rf"\g<side>/mid_block/attentions_0/{flax_name}", "linear")],
    *_param(r"(?P<c>quant_conv|post_quant_conv)", r"\g<c>", "conv"),
]

SKIP: list[str] = []


def detect(keys) -> bool:
  """True for a diffusers AutoencoderKL state dict."""
  keys = set(keys)
  return "decoder.conv_in.weight" in keys and any(k.startswith("decoder.up_blocks.")
                                                  for k in keys)


def config_from(config_json: dict, tensor_shapes: dict, extra: dict | None = None) -> vae.Config:
  """Config from the folder's config.json, cross-checked against the tensor shapes."""
  del extra
  cfg = vae.Config.from_diffusers(config_json)
  checks = [  # (key, axis, expected size, what config.json says)
      ("decoder.conv_in.weight", 1, cfg.latent_channels, "latent_channels"),
      ("decoder.conv_in.weight", 0, cfg.block_out_channels[-1], "block_out_channels[-1]"),
      ("encoder.conv_in.weight", 0, cfg.block_out_channels[0], "block_out_channels[0]"),
      ("encoder.conv_out.weight", 0, 2 * cfg.latent_channels, "2 x latent_channels"),
  ]
  bad = [f"{key} {tuple(tensor_shapes[key])}: config.json {what}={want}"
         for key, axis, want, what in checks
         if key in tensor_shapes and tuple(tensor_shapes[key])[axis] != want]
  if bad:
    raise errors.InputError("VAE config.json disagrees with its weights:\n  " + "\n  ".join(bad))
  return cfg


def build_model(config: vae.Config, dtype=jnp.float32, param_dtype=jnp.float32) -> vae.Model:
  return vae.Model(config, dtype, param_dtype)


def abstract_params(config: vae.Config, dtype=jnp.float32, param_dtype=jnp.float32):
  """Boxed parameter ShapeDtypeStructs of the whole VAE, without allocating."""
  model = build_model(config, dtype, param_dtype)
  s = config.downscale
  return jax.eval_shape(lambda: model.init(jax.random.key(0),
                                           jnp.zeros((1, s, s, config.in_channels))))["params"]


def check_latent_channels(config: vae.Config, latent_channels: int, where: str = "the model"):
  """Raises if the VAE's latent channels differ from what the flow model generates."""
  if config.latent_channels != latent_channels:
    raise errors.InputError(f"VAE latent_channels={config.latent_channels} does not match "
                            f"{where}'s latent channels {latent_channels}: this VAE folder does "
                            "not belong to this checkpoint")


def read_folder(folder) -> tuple[dict, dict]:
  """(config.json dict, {key: numpy array}) of a diffusers VAE folder."""
  folder = pathlib.Path(folder)
  cfg_path = folder / "config.json"
  if not cfg_path.is_file():
    raise errors.InputError(f"{folder} is not a diffusers VAE folder: no config.json")
  config_json = json.loads(cfg_path.read_text())
  st = folder / "diffusion_pytorch_model.safetensors"
  if st.is_file():
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    return config_json, load_file(str(st))
  bin_path = folder / "diffusion_pytorch_model.bin"
  if bin_path.is_file():
    import torch  # pylint: disable=import-outside-toplevel
    sd = torch.load(str(bin_path), map_location="cpu", weights_only=True)
    return config_json, {k: v.float().numpy() for k, v in sd.items()}
  raise errors.InputError(f"{folder} has no diffusion_pytorch_model.safetensors or .bin")


def load(folder, *, latent_channels: int | None = None, param_dtype=jnp.float32):
  """Loads a diffusers VAE folder.

  Args:
    folder: the folder (config.json + weights).
    latent_channels: when given, the flow model's latent channels; a mismatch is an error.
    param_dtype: storage dtype of the returned params.
  Returns:
    (vae.Config, params nested dict of numpy arrays).
  """
  config_json, tensors = read_folder(folder)
  cfg = config_from(config_json, {k: np.shape(v) for k, v in tensors.items()})
  if latent_channels is not None:
    check_latent_channels(cfg, latent_channels, "the JanusFlow checkpoint")
  expected = nn.unbox(abstract_params(cfg, param_dtype=param_dtype))
  params, _ = rules.convert_tensors(RULES, tensors, expected, SKIP)
  return cfg, params
