"""ShallowUViT encoder/decoder: building blocks against torch/diffusers, sizes, config checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janus_jax.models import uvit
from janus_jax.parity import janusflow_cases


@pytest.fixture(scope="module")
def loaded(fixtures_dir):
  return janusflow_cases.load(fixtures_dir / "janusflow_tiny")


def test_pixel_shuffle_matches_torch_channel_order():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 4 * 6)).astype(np.float32)  # NHWC, C=6
  want = torch.nn.PixelShuffle(2)(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(uvit.pixel_shuffle(jnp.asarray(x), 2)).transpose(0, 3, 1, 2)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dim", [32, 33])
def test_timestep_features_match_diffusers(dim):
  torch = pytest.importorskip("torch")
  embeddings = pytest.importorskip("diffusers.models.embeddings")
  t = np.array([0.0, 33.25, 968.0], np.float32)
  want = embeddings.Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)(
      torch.from_numpy(t)).numpy()
  got = np.asarray(uvit.timestep_features(jnp.asarray(t), dim))
  np.testing.assert_allclose(got, want, atol=2e-5)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_full_size_parameter_counts():
  """The released JanusFlow UViT's parameter counts (21.61 M encoder / 50.56 M decoder)."""
  enc = uvit.Encoder(uvit.EncoderConfig(input_channels=4, channels=768, cond_dim=2048))
  dec = uvit.Decoder(uvit.DecoderConfig(in_channels=768, out_channels=4, channels=768,
                                        cond_dim=2048, upsamples=1))
  pe = jax.eval_shape(enc.init, jax.random.key(0), jnp.zeros((1, 48, 48, 4)), jnp.zeros((1,)))
  pd = jax.eval_shape(dec.init, jax.random.key(0), jnp.zeros((1, 24, 24, 768)),
                      jnp.zeros((1, 24, 24, 768)), jnp.zeros((1, 2048)))
  assert round(_count(nn.unbox(pe)) / 1e6, 2) == 21.61
  assert round(_count(nn.unbox(pd)) / 1e6, 2) == 50.56
  out = jax.eval_shape(dec.apply, pd, jnp.zeros((1, 24, 24, 768)), jnp.zeros((1, 24, 24, 768)),
                       jnp.zeros((1, 2048)))
  assert out.shape == (1, 48, 48, 4)


def test_config_reads_kernel_and_eps_from_params_and_checks_weights():
  params = dict(input_channels=4, block_out_channels=[32], hidden_size=64, kernel_size=3,
                stride=2, norm_eps=1e-5)
  cfg = uvit.EncoderConfig.from_params(params)
  assert (cfg.kernel_size, cfg.padding, cfg.norm_eps) == (3, 1, 1e-5)  # padding ceil(k - s)
  with pytest.raises(ValueError, match="in_conv.weight"):
    uvit.EncoderConfig.from_params(params, {"vision_gen_enc_model.in_conv.weight": (32, 4, 2, 2)})
  with pytest.raises(ValueError, match="block_out_channels"):
    uvit.EncoderConfig.from_params({**params, "block_out_channels": [32, 64]})
  with pytest.raises(ValueError, match="upsamples"):
    uvit.DecoderConfig.from_params(
        dict(in_channels=32, out_channels=4, block_out_channels=[32], upsamples=2),
        {"vision_gen_dec_model.out_convs.0.unpatch_conv.weight": (16, 64, 1, 1)})


def test_bf16_encoder_runs_close_to_float32(loaded):
  fx, model, params, _, _ = loaded
  case = fx.cases["flow_gen_enc"]
  z = jnp.asarray(case.inputs["z"]).transpose(0, 2, 3, 1)
  enc32 = uvit.Encoder(model.config.encoder)
  enc16 = uvit.Encoder(model.config.encoder, dtype=jnp.bfloat16)
  p = {"params": params["vision_gen_enc_model"]}
  x32, _ = enc32.apply(p, z, case.inputs["t"])
  x16, t16 = enc16.apply(p, z, case.inputs["t"])
  assert x16.dtype == jnp.bfloat16 and t16.dtype == jnp.bfloat16
  rel = float(jnp.linalg.norm(x16.astype(jnp.float32) - x32) / jnp.linalg.norm(x32))
  assert rel < 3e-2, rel
