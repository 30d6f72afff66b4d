"""VQ-16 tokenizer: parity with the reference fixtures, the HF layout, sizes and bad input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from janus_jax import fixtures
from janus_jax.convert import rules
from janus_jax.convert import vq as convert_vq
from janus_jax.models import vq

PREFIX = "gen_vision_model."


def expected_params(model: vq.Model, image_size: int):
  """The parameter tree as ShapeDtypeStructs, without allocating anything."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, model.config.in_channels), jnp.float32)
  init = lambda key, x: model.init(key, x, method=model.init_all)  # noqa: E731
  return nn.unbox(jax.eval_shape(init, jax.random.key(0), x))["params"]


def n_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


@pytest.fixture(scope="module")
def fx(fixtures_dir):
  return fixtures.load(fixtures_dir / "janus_tiny")


@pytest.fixture(scope="module")
def vq_tensors(fx):
  return {k[len(PREFIX):]: v for k, v in safetensors_numpy.load_file(fx.weights).items()
          if k.startswith(PREFIX)}


@pytest.fixture(scope="module")
def tiny(fx, vq_tensors):
  """(model, params) of the fixture tokenizer, converted with the real rules."""
  model = vq.Model(vq.get_config("tiny"))
  params, skipped = rules.convert_tensors(
      convert_vq.RULES, vq_tensors, expected_params(model, fx.extra["vq"]["image_size"]),
      convert_vq.SKIP)
  assert skipped == ["quantize.codebook_used"]
  return model, params


def test_encode_matches_reference(fx, tiny):
  model, params = tiny
  case = fx.cases["vq_encode"]
  pixels = np.transpose(case.inputs["pixels"], (0, 2, 3, 1))
  quant, codes = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))(
      params, pixels)
  assert codes.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(codes), case.outputs["codes"])
  want = case.outputs["quant"]
  print("vq_encode quant max abs err", np.abs(nchw(quant) - want).max())
  np.testing.assert_allclose(nchw(quant), want, atol=case.atol, rtol=case.rtol)


def test_decode_matches_reference(fx, tiny):
  model, params = tiny
  case = fx.cases["vq_decode"]
  decode = jax.jit(lambda p, c: model.apply({"params": p}, c, method=model.decode_code))
  pixels = decode(params, case.inputs["codes"])
  want = case.outputs["pixels"]
  print("vq_decode pixels max abs err", np.abs(nchw(pixels) - want).max())
  np.testing.assert_allclose(nchw(pixels), want, atol=case.atol, rtol=case.rtol)
  # The (B, h, w) form addresses the same row-major grid.
  side = fx.extra["vq"]["image_size"] // model.config.downsample_factor
  grid = case.inputs["codes"].reshape(-1, side, side)
  np.testing.assert_array_equal(np.asarray(decode(params, grid)), np.asarray(pixels))


def test_from_shapes_recovers_tiny(fx, vq_tensors):
  cfg = vq.Config.from_shapes({k: v.shape for k, v in vq_tensors.items()})
  assert cfg == vq.get_config("tiny")
  extra = fx.extra["vq"]
  assert (cfg.base_channels, cfg.ch_mult, cfg.z_channels, cfg.codebook_size,
          cfg.codebook_dim) == (extra["base_channels"], tuple(extra["ch_mult"]),
                                extra["z_channels"], extra["codebook_size"],
                                extra["codebook_dim"])
  shapes = {k: v.shape for k, v in vq_tensors.items() if k != "quantize.embedding.weight"}
  with pytest.raises(ValueError, match="quantize.embedding.weight"):
    vq.Config.from_shapes(shapes)


def test_vq16_parameter_count():
  params = expected_params(vq.Model(vq.get_config("vq16")), 384)
  # Measured on the reference VQ_16() (torch, buffers excluded): 29,298,176 encoder +
  # 42,449,795 decoder + quant convs and codebook = 71,883,403 (29.30M / 42.45M / 71.88M).
  assert n_params(params["encoder"]) == 29_298_176
  assert n_params(params["decoder"]) == 42_449_795
  assert n_params(params) == 71_883_403
  assert params["quantize"]["embedding"].shape == (16384, 8)


def test_bad_input_is_named(tiny):
  model, params = tiny
  with pytest.raises(ValueError, match="not divisible by the VQ downsample factor 16"):
    model.apply({"params": params}, jnp.zeros((1, 40, 40, 3)), method=model.encode)
  with pytest.raises(ValueError, match=r"NHWC"):
    model.apply({"params": params}, jnp.zeros((1, 3, 64, 64)), method=model.encode)
  with pytest.raises(ValueError, match="not a square grid"):
    model.apply({"params": params}, jnp.zeros((1, 15), jnp.int32), method=model.decode_code)


def test_loss_terms_and_gradients():
  # A two-level tokenizer keeps the backward compile short; the terms do not depend on depth.
  model = vq.Model(vq.Config(codebook_size=16, codebook_dim=4, z_channels=32, base_channels=32,
                             ch_mult=(1, 2), num_res_blocks=1))
  pixels = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3), minval=-1, maxval=1)
  # Random numpy weights: compiling the Flax initialisers would take longer than the test.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32),
                        expected_params(model, 8))
  loss = lambda p: model.apply({"params": p}, pixels, method=model.loss)  # noqa: E731
  (total, terms), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  assert set(terms) == {"reconstruction", "codebook", "commitment"}
  assert float(terms["codebook"]) > 0
  np.testing.assert_allclose(terms["commitment"], 0.25 * terms["codebook"], rtol=1e-6)
  np.testing.assert_allclose(total, sum(terms.values()), rtol=1e-6)
  # Straight-through: the reconstruction reaches the encoder; the codebook term the codebook.
  assert float(jnp.abs(grads["encoder"]["conv_in"]["kernel"]).max()) > 0
  assert float(jnp.abs(grads["quantize"]["embedding"]).max()) > 0
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


def test_hf_layout_matches_transformers():
  """transformers' JanusVQVAE, random tiny weights, through HF_RULES: decoder and encoder agree.

  (HF's own quantizer skips the l2 normalisation, so its codes are not compared.)
  """
  torch = pytest.importorskip("torch")
  modeling_janus = pytest.importorskip("transformers.models.janus.modeling_janus")
  configuration_janus = pytest.importorskip("transformers.models.janus.configuration_janus")
  cfg = vq.get_config("tiny")
  side, image = 4, 64
  hf_cfg = configuration_janus.JanusVQVAEConfig(
      embed_dim=cfg.codebook_dim, num_embeddings=cfg.codebook_size,
      latent_channels=cfg.z_channels, base_channels=cfg.base_channels,
      channel_multiplier=list(cfg.ch_mult), num_res_blocks=cfg.num_res_blocks, num_patches=side)
  torch.manual_seed(0)
  hf = modeling_janus.JanusVQVAE(hf_cfg).eval()
  with torch.no_grad():  # non-trivial norms, so a swapped scale/bias or norm cannot hide
    for name, p in hf.named_parameters():
      if ".norm" in name:
        p.add_(0.3 * torch.randn_like(p))
  tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
  assert vq.Config.from_shapes({k: v.shape for k, v in tensors.items()}) == cfg
  model = vq.Model(cfg)
  params, _ = rules.convert_tensors(convert_vq.HF_RULES, tensors, expected_params(model, image),
                                    convert_vq.SKIP)
  rng = np.random.default_rng(0)
  codes = rng.integers(0, cfg.codebook_size, (1, side * side))
  pixels = rng.uniform(-1, 1, (1, image, image, 3)).astype(np.float32)
  with torch.no_grad():
    want_dec = hf.decode(torch.from_numpy(codes)).numpy()
    want_enc = hf.encoder(torch.from_numpy(nchw(pixels))).numpy()
  got_dec = jax.jit(lambda p, c: model.apply({"params": p}, c, method=model.decode_code))(
      params, codes)
  got_enc = jax.jit(lambda p, x: model.apply({"params": p}, x, method=lambda m, x: m.encoder(x)))(
      params, pixels)
  print("HF decode max abs err", np.abs(nchw(got_dec) - want_dec).max())
  np.testing.assert_allclose(nchw(got_dec), want_dec, atol=2e-4, rtol=2e-4)
  np.testing.assert_allclose(nchw(got_enc), want_enc, atol=2e-4, rtol=2e-4)
