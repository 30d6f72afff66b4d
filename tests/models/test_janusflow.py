"""JanusFlow composite: config plumbing, full-size shapes, conversion strictness."""

import flax.linen as nn
import jax
import numpy as np
import pytest
import safetensors.numpy

from janus_jax import fixtures
from janus_jax.convert import janus as janus_table
from janus_jax.convert import janusflow as janusflow_table
from janus_jax.convert import rules
from janus_jax.models import janus
from janus_jax.models import janusflow


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
  fx = fixtures.load(fixtures_dir / "janusflow_tiny")
  return fx, safetensors.numpy.load_file(str(fx.weights))


def test_config_from_fixture_uses_config_and_weights(fixture):
  fx, tensors = fixture
  cfg = janusflow_table.config_from(fx.config, {k: v.shape for k, v in tensors.items()},
                                    fx.extra)
  assert cfg.llm.hidden_size == 64 and cfg.vision.width == 64 and cfg.vision.num_patches == 16
  assert cfg.encoder.channels == 32 and cfg.encoder.kernel_size == 2
  assert cfg.decoder.mid_channels == 64 and cfg.latent_channels == 4
  assert cfg.image_tokens == 17 and cfg.gen_tokens(8) == 16


def test_config_disagreeing_with_weights_is_refused(fixture):
  fx, tensors = fixture
  shapes = {k: v.shape for k, v in tensors.items()}
  bad = dict(fx.config)
  bad["vision_gen_dec_config"] = {**bad["vision_gen_dec_config"],
                                  "params": {**bad["vision_gen_dec_config"]["params"],
                                             "in_channels": 48}}
  with pytest.raises(ValueError, match="in_channels"):
    janusflow_table.config_from(bad, shapes, fx.extra)


def test_janus_and_janusflow_configs_are_not_interchangeable(fixtures_dir, fixture):
  fx, _ = fixture
  janus_fx = fixtures.load(fixtures_dir / "janus_tiny")
  with pytest.raises(ValueError, match="not a JanusFlow config.json.*Janus / Janus-Pro"):
    janusflow.Config.from_json(janus_fx.config, janus_fx.extra)
  with pytest.raises(ValueError, match="not a Janus config.json"):
    janus.Config.from_json(fx.config, fx.extra)


def test_detect_tells_the_families_apart(fixtures_dir, fixture):
  _, tensors = fixture
  janus_keys = safetensors.numpy.load_file(str(fixtures_dir / "janus_tiny" / "model.safetensors"))
  assert janusflow_table.detect(tensors) and not janus_table.detect(tensors)
  assert janus_table.detect(janus_keys) and not janusflow_table.detect(janus_keys)


def test_conversion_is_strict(fixture):
  fx, tensors = fixture
  cfg = janusflow_table.config_from(fx.config, {k: v.shape for k, v in tensors.items()},
                                    fx.extra)
  params, skipped = janusflow_table.convert(cfg, tensors)
  assert all(".attn_pool." in k for k in skipped) and skipped
  assert params["vision_gen_enc_model"]["mid_block"]["res_blocks_1"]["channelwise_norm"][
      "scale"].shape == (128,)
  broken = dict(tensors)
  del broken["vision_gen_dec_model.out_convs.0.norm.weight"]
  broken["vision_gen_dec_model.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(rules.ConversionError) as e:
    janusflow_table.convert(cfg, broken)
  assert "vision_gen_dec_model/out_convs_0/norm/scale" in str(e.value)
  assert "vision_gen_dec_model.extra.weight" in str(e.value)


def test_full_size_shapes():
  cfg = janusflow.get_config("janusflow_1_3b")
  p = nn.unbox(janusflow.abstract_params(cfg))
  assert p["beg_of_und_embed"].shape == (1, 2048)
  assert p["vision_und_enc_aligner"]["kernel"].shape == (1024, 2048)
  assert p["vision_gen_enc_aligner"]["kernel"].shape == (768, 2048)
  assert p["vision_gen_dec_aligner"]["kernel"].shape == (2048, 768)
  assert p["vision_gen_dec_model"]["out_convs_0"]["unpatch_conv"]["kernel"].shape == (
      1, 1, 1536, 16)
  assert cfg.image_tokens == 577 and cfg.gen_tokens(cfg.gen_latent_size) == 576
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(p))
  assert 1.9e9 < total < 2.1e9, total  # 1.65 B LLM + 0.30 B SigLIP + 72 M UViT + aligners

