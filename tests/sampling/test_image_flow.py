"""JanusFlow rectified-flow sampling: prefix cache == full recompute, batching, output, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janus_jax.models import janusflow
from janus_jax.models import vae
from janus_jax.parity import janusflow_cases
from janus_jax.sampling import image_flow

PROMPTS = [[1, 40, 41, 42, 43, 44, 7], [1, 50, 51, 7]]
# Two steps: t = 0 and 500 are exact in bf16, so bf16 runs differ from float32 only by rounding
# inside the network (non-representable t like 333.3 move to 334, as in the reference).
STEPS = 2


@pytest.fixture(scope="module")
def loaded(fixtures_dir):
  fx, model, params, vae_model, vae_params = janusflow_cases.load(
      fixtures_dir / "janusflow_tiny")
  return fx, model, params, vae_model, vae_params


def _sample(model, params, prompts, z0, *, prefix_cache, steps=STEPS, cfg=3.0, **kw):
  rows = image_flow.prompt_rows(prompts, 3)
  return image_flow.sample_latents(model, params, rows.ids, rows.mask, rows.offset, z0,
                                   jnp.float32(cfg), steps=steps, prefix_cache=prefix_cache,
                                   **kw)


def test_prompt_rows_layout():
  rows = image_flow.prompt_rows([[1, 9, 8, 7], [1, 5, 7]], pad_id=3)
  np.testing.assert_array_equal(rows.ids, [[1, 9, 8], [3, 1, 5], [1, 3, 3], [3, 1, 3]])
  np.testing.assert_array_equal(rows.mask, [[1, 1, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0]])
  np.testing.assert_array_equal(rows.offset, [0, 1, 0, 1])


@pytest.fixture(scope="module")
def batch_run(loaded):
  """(z0, z_final, first velocity) for PROMPTS in one batch, prefix cache on."""
  _, model, params, _, _ = loaded
  z0 = jax.random.normal(jax.random.key(1), (len(PROMPTS), 8, 8, 4))
  return (z0, *_sample(model, params, PROMPTS, z0, prefix_cache=True))


def test_prefix_cache_equals_full_recompute(loaded, batch_run):
  _, model, params, _, _ = loaded
  z0, z_cached, v_cached = batch_run
  z_full, v_full = _sample(model, params, PROMPTS, z0, prefix_cache=False)
  assert float(jnp.max(jnp.abs(z_full - z0))) > 1e-2  # the sampler did move z
  np.testing.assert_allclose(v_cached, v_full, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(z_cached, z_full, atol=2e-5, rtol=2e-5)


def test_batched_prompts_equal_each_prompt_alone(loaded, batch_run):
  """Left padding and per-row positions make a mixed batch equal to separate runs."""
  _, model, params, _, _ = loaded
  z0, z_batch, _ = batch_run
  for i, prompt in enumerate(PROMPTS):
    z_one, _ = _sample(model, params, [prompt], z0[i:i + 1], prefix_cache=True)
    np.testing.assert_allclose(z_batch[i:i + 1], z_one, atol=2e-5, rtol=2e-5)


def test_generate_returns_truncated_uint8_images(loaded):
  _, model, params, vae_model, vae_params = loaded
  imgs = image_flow.generate(model, params, vae_model, vae_params, PROMPTS[:2], pad_id=3,
                             cfg_weight=2.0, steps=2, seed=0, latent_size=8)
  assert imgs.dtype == np.uint8 and imgs.shape == (2, 64, 64, 3)
  again = image_flow.generate(model, params, vae_model, vae_params, PROMPTS[:2], pad_id=3,
                              cfg_weight=2.0, steps=2, seed=0, latent_size=8)
  np.testing.assert_array_equal(imgs, again)
  np.testing.assert_array_equal(image_flow.to_uint8(np.array([-2.0, -1.0, 0.0, 0.999, 1.0])),
                                [0, 0, 127, 254, 255])


def test_bf16_network_with_float32_integration(loaded):
  _, model, params, _, _ = loaded
  model16 = janusflow.Model(model.config, dtype=jnp.bfloat16)
  z0 = jax.random.normal(jax.random.key(3), (1, 8, 8, 4))
  z32, _ = _sample(model, params, PROMPTS[:1], z0, prefix_cache=True)
  z16, _ = _sample(model16, params, PROMPTS[:1], z0, prefix_cache=True, integrate_fp32=True)
  assert z16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(z16 - z32) / jnp.linalg.norm(z32))
  assert rel < 2e-2, rel


def test_vae_with_other_latent_channels_is_refused(loaded):
  _, model, params, vae_model, vae_params = loaded
  other = vae.Model(vae.Config(**{**vae_model.config.__dict__, "latent_channels": 16}))
  with pytest.raises(ValueError, match="latent_channels=16 does not match"):
    image_flow.generate(model, params, other, vae_params, PROMPTS[:1], pad_id=3, steps=1)


def test_janus_model_is_refused(loaded, janus_fixture):
  _, janus_model, janus_params = janus_fixture
  _, _, _, vae_model, vae_params = loaded
  with pytest.raises(TypeError, match="janusflow.Model.*image_ar"):
    image_flow.generate(janus_model, janus_params, vae_model, vae_params, PROMPTS[:1],
                        pad_id=3, steps=1)


def test_bad_prompts_and_noise_are_refused(loaded):
  _, model, params, vae_model, vae_params = loaded
  with pytest.raises(ValueError, match="fewer than 2 tokens"):
    image_flow.generate(model, params, vae_model, vae_params, [[1]], pad_id=3, steps=1)
  with pytest.raises(ValueError, match="z0 has shape"):
    image_flow.generate(model, params, vae_model, vae_params, PROMPTS[:2], pad_id=3, steps=1,
                        z0=np.zeros((1, 8, 8, 4), np.float32))
