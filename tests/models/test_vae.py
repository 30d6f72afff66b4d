"""SDXL-style AutoencoderKL against diffusers at a random small config, loading and errors."""

import json

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from janus_jax import errors
from janus_jax.convert import rules
from janus_jax.convert import vae as vae_table
from janus_jax.models import vae

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SMALL = dict(block_out_channels=[16, 32, 32], layers_per_block=1, latent_channels=4,
             norm_num_groups=8, down_block_types=["DownEncoderBlock2D"] * 3,
             up_block_types=["UpDecoderBlock2D"] * 3, sample_size=16)
OLD_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


@pytest.fixture(scope="module")
def reference():
  """(diffusers model with every weight randomised, its config dict, its state dict)."""
  torch.manual_seed(0)
  ref = diffusers.AutoencoderKL(**SMALL).eval()
  with torch.no_grad():
    for p in ref.parameters():  # norms too, so a scale/bias mix-up cannot hide
      p.add_(0.2 * torch.randn_like(p))
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  return ref, dict(ref.config), sd


def _convert(config_json, sd):
  cfg = vae_table.config_from(config_json, {k: v.shape for k, v in sd.items()})
  params, _ = rules.convert_tensors(vae_table.RULES, sd,
                                    nn.unbox(vae_table.abstract_params(cfg)), vae_table.SKIP)
  return vae.Model(cfg), params


def test_encode_and_decode_match_diffusers(reference):
  ref, config_json, sd = reference
  model, params = _convert(config_json, sd)
  x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
  with torch.no_grad():
    post = ref.encode(torch.from_numpy(x)).latent_dist
    want_img = ref.decode(post.mean).sample.numpy()
  mean, logvar = model.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)),
                             method=vae.Model.encode)
  assert mean.shape == (2, 4, 4, 4)
  np.testing.assert_allclose(np.asarray(mean).transpose(0, 3, 1, 2), post.mean.numpy(),
                             atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(logvar).transpose(0, 3, 1, 2), post.logvar.numpy(),
                             atol=1e-4, rtol=1e-4)
  img = model.apply({"params": params}, mean, method=vae.Model.decode)
  np.testing.assert_allclose(np.asarray(img).transpose(0, 3, 1, 2), want_img, atol=1e-4,
                             rtol=1e-4)


def test_old_attention_names_load_identically(reference):
  _, config_json, sd = reference
  _, params = _convert(config_json, sd)
  old = {}
  for k, v in sd.items():
    for new_name, old_name in OLD_NAMES.items():
      k = k.replace(f"attentions.0.{new_name}.", f"attentions.0.{old_name}.")
    old[k] = v
  assert any(".proj_attn." in k for k in old)
  _, params_old = _convert(config_json, old)
  flat, flat_old = rules.flatten_shapes(params), rules.flatten_shapes(params_old)
  assert flat.keys() == flat_old.keys()
  for path in flat:
    np.testing.assert_array_equal(flat[path], flat_old[path])


def test_folder_with_wrong_latent_channels_is_refused(fixtures_dir):
  with pytest.raises(ValueError, match="latent_channels=4 does not match"):
    vae_table.load(fixtures_dir / "janusflow_tiny" / "vae", latent_channels=16)


def test_config_disagreeing_with_weights_is_refused(reference, tmp_path):
  _, config_json, sd = reference
  with pytest.raises(ValueError, match="latent_channels"):
    vae_table.config_from({**config_json, "latent_channels": 8},
                          {k: v.shape for k, v in sd.items()})
  with pytest.raises(ValueError, match="up_block_types"):
    vae.Config.from_diffusers({**SMALL, "up_block_types": ["AttnUpDecoderBlock2D"] * 3})
  (tmp_path / "config.json").write_text(json.dumps(SMALL))
  with pytest.raises(errors.InputError, match="diffusion_pytorch_model"):
    vae_table.load(tmp_path)


def test_scaling_round_trip():
  cfg = vae.Config(scaling_factor=0.5, shift_factor=0.1)
  z = jnp.arange(4.0)
  np.testing.assert_allclose(vae.from_vae_latents(cfg, vae.to_vae_latents(cfg, z)), z)
