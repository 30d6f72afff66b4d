"""Offline VQ tokenization: codes equal the model's, resumable shards, bad images counted."""

import os

import grain.python as grain
import jax
import numpy as np
import pytest

from janus_jax.data import pipeline
from janus_jax.data import preprocess
from janus_jax.data import synthetic
from janus_jax.data import tokenize_images
from janus_jax.models import vq

SIZE = 8  # 4x4 = 16 codes with the micro VQ's 2x downsampling
# Micro sizes: compiling even the fixtures' tiny VQ takes most of a minute on a busy CPU.
VQ = vq.Config(codebook_size=32, codebook_dim=4, z_channels=8, base_channels=8, ch_mult=(1, 2),
               num_res_blocks=1, norm_groups=4)


@pytest.fixture(scope="module")
def tiny_vq():
  model = vq.Model(VQ)
  x = np.zeros((1, SIZE, SIZE, 3), np.float32)
  init = jax.jit(lambda k: model.init(k, x, method=vq.Model.encode))
  params = init(jax.random.key(0))["params"]
  return model, params, tokenize_images.vq_encoder(VQ, params, image_size=SIZE)


def caption_source(n, bad=()):
  rng = np.random.default_rng(0)
  recs = []
  for i in range(n):
    img = synthetic.png_bytes(rng, 40 + i, 36)
    recs.append({"image": b"broken" if i in bad else img, "caption": f"cat {i}", "key": f"k{i}"})
  return recs


def test_codes_match_model_and_resume(tmp_path, tiny_vq):
  model, params, enc = tiny_vq
  src = caption_source(7, bad={3})
  out = str(tmp_path / "codes")
  meta = tokenize_images.run(src, enc, out, batch_size=4, shard_size=3, progress=False)
  assert meta["shards"] == 3 and meta["bad"] == 1
  ds = tokenize_images.read(out)
  assert len(ds) == 6
  got = {ds[i]["key"]: ds[i] for i in range(len(ds))}
  assert "k3" not in got
  for i in (0, 6):
    img = preprocess.load_image(src[i]["image"])
    px = preprocess.generation_pixels(img, SIZE)[None]
    _, codes = model.apply({"params": params}, px, method=vq.Model.encode)
    np.testing.assert_array_equal(got[f"k{i}"]["codes"], np.asarray(codes)[0])
    assert got[f"k{i}"]["caption"] == f"cat {i}" and got[f"k{i}"]["codes"].shape == (16,)
  # Resume: delete one shard, rerun; only it is rewritten and the content is identical.
  files = sorted(f for f in os.listdir(out) if f.endswith(".array_record"))
  victim = os.path.join(out, files[1])
  before = {f: os.path.getmtime(os.path.join(out, f)) for f in files}
  old = [ds[i]["codes"] for i in range(len(ds))]
  os.remove(victim)
  tokenize_images.run(src, enc, out, batch_size=4, shard_size=3, progress=False)
  after = {f: os.path.getmtime(os.path.join(out, f)) for f in files}
  assert [f for f in files if before[f] != after[f]] == [files[1]]
  ds2 = tokenize_images.read(out)
  for i in range(len(ds2)):
    np.testing.assert_array_equal(ds2[i]["codes"], old[i])


def test_codes_dataset_feeds_the_pipeline(tmp_path, tiny_vq):
  out = str(tmp_path / "codes")
  tokenize_images.run(caption_source(6), tiny_vq[2], out, progress=False)
  tok = synthetic.tiny_tokenizer()
  pcfg = synthetic.tiny_config(image_tokens=16, ratios=(0, 0, 1), num_epochs=1, shuffle=False,
                               caption_dropout=0.0)
  it = pipeline.make([None, None, tokenize_images.read(out)], tok, pcfg, grain.NoSharding())
  b = next(it)
  assert it.stats["examples"] == 6 and b["gen_mask"].sum() == 96 and b["image_loss"].sum() == 96


@pytest.mark.slow
def test_vae_latents_are_scaled_means(tmp_path):
  from janus_jax.models import vae
  cfg = vae.Config(block_out_channels=(8, 16), layers_per_block=1, norm_groups=4)
  model = vae.Model(cfg)
  x = np.zeros((1, SIZE, SIZE, 3), np.float32)
  params = jax.jit(lambda k: model.init(k, x))(jax.random.key(1))["params"]
  out = str(tmp_path / "lat")
  src = caption_source(2)
  tokenize_images.run(src, tokenize_images.vae_encoder(cfg, params, SIZE), out, progress=False)
  rec = tokenize_images.read(out)[0]
  px = preprocess.generation_pixels(preprocess.load_image(src[0]["image"]), SIZE)[None]
  mean, _ = model.apply({"params": params}, px, method=vae.Model.encode)
  np.testing.assert_allclose(rec["latents"], np.asarray(mean)[0] * cfg.scaling_factor, rtol=1e-5,
                             atol=1e-6)
