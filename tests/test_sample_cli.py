"""sample.py end to end on the converted tiny fixture checkpoint, and its bad-input errors."""

import io
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from configs import sample as sample_config
from janus_jax import errors
from janus_jax import fixtures
from janus_jax.convert import driver
from janus_jax.data import preprocess
from janus_jax.data import synthetic
from janus_jax.sampling import loading
import sample

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(fixtures_dir, tmp_path_factory) -> pathlib.Path:
  """The fixture's tiny Janus converted by the real converter, plus a tiny tokenizer.json."""
  fx = fixtures.load(fixtures_dir / "janus_tiny")
  out = tmp_path_factory.mktemp("ckpt") / "janus_tiny"
  driver.convert(fx.root, out, extra=fx.extra, progress=False, log=lambda *a: None)
  (out / "tokenizer.json").write_text(synthetic.tokenizer_json())
  return out


def config(ckpt, tmp_path, **t2i):
  cfg = sample_config.get_config()
  cfg.checkpoint = str(ckpt)
  cfg.out = str(tmp_path / "out")
  cfg.chat.max_new_tokens = 4
  cfg.t2i.update(t2i)
  return cfg


def save(path, img: Image.Image, **kw) -> str:
  img.save(path, **kw)
  return str(path)


def rgb(w, h, seed=0):
  return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (h, w, 3), np.uint8))


@pytest.mark.slow
def test_t2i_command_line(ckpt, tmp_path):
  out = tmp_path / "samples"
  r = subprocess.run(
      [sys.executable, "sample.py", f"--checkpoint={ckpt}", "--prompt=a red cat",
       "--prompt=the big blue dog sits on the mat", "--num_images=2", "--seed=3", f"--out={out}",
       "--top_k=50"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "wrote 4 images" in r.stdout
  names = sorted(p.name for p in out.iterdir())
  assert names == ["000_00.png", "000_01.png", "001_00.png", "001_01.png", "grid.png"]
  # The model's own size, without a flag: its 16 image tokens (4 x 4) x the VQ's 16 pixels.
  assert Image.open(out / "000_01.png").size == (64, 64)
  grid = np.asarray(Image.open(out / "grid.png"))
  assert grid.shape == (128, 128, 3)
  np.testing.assert_array_equal(grid[64:, :64], np.asarray(Image.open(out / "001_00.png")))


def test_no_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(loading, "default_checkpoint", lambda: None)  # a build without the demo
  cfg = sample_config.get_config()
  with pytest.raises(errors.InputError, match="no --checkpoint given"):
    sample.run(cfg, sample.Request(prompts=["a cat"]))


@pytest.mark.slow
def test_same_seed_same_images(ckpt, tmp_path):
  cfg = config(ckpt, tmp_path, num_images=2, batch_prompts=2)
  req = sample.Request(prompts=["a red cat", "two dogs"])
  sample.run(cfg, req)
  first = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "out").glob("0*.png"))]
  sample.run(cfg, req)
  again = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "out").glob("0*.png"))]
  assert len(first) == 4
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sharded_load_lays_out_in_place_and_gives_the_same_images(ckpt, tmp_path):
  cfg = config(ckpt, tmp_path, num_images=2)
  req = sample.Request(prompts=["a red cat", "two dogs"])
  images = {}
  for mesh_shape in ((-1, 1, 1), (2, 2, 2)):  # data parallel; data x FSDP x tensor
    cfg.mesh = mesh_shape
    cfg.out = str(tmp_path / f"out{mesh_shape[0]}")
    sample.run(cfg, req)
    images[mesh_shape] = [np.asarray(Image.open(p))
                          for p in sorted(pathlib.Path(cfg.out).glob("0*.png"))]
  for a, b in zip(*images.values()):  # the same codes; sharded sums may move a truncation
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
  # The loaded LLM layers are split, each slice sharded as its stacked parent minus the layer
  # axis, and q/k/v stacked along a new axis (qkv_proj (D, 3, N, H): FSDP on D, tensor on N).
  mesh = sample.sharding.make_mesh((2, 2, 2))
  params = loading.load(ckpt, dtype="float32", mesh=mesh).params
  decoder_layers = params["language_model"]["model"]["layers"]
  assert isinstance(decoder_layers, tuple) and len(decoder_layers) > 1
  qkv = decoder_layers[1]["self_attn"]["qkv_proj"]
  assert tuple(qkv.sharding.spec)[:3] == ("fsdp", None, "tensor"), qkv.sharding.spec


@pytest.mark.slow
def test_chat_accepts_convertible_images(ckpt, tmp_path, capsys):
  cmyk = save(tmp_path / "cmyk.jpg", rgb(40, 30).convert("CMYK"))
  grey16 = save(tmp_path / "grey16.png",
                Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16)))
  frames = [rgb(20, 20, s) for s in range(2)]
  anim = tmp_path / "anim.gif"
  frames[0].save(anim, save_all=True, append_images=frames[1:], duration=50)
  plain = save(tmp_path / "plain.png", rgb(50, 20))
  (tmp_path / "chat.jsonl").write_text(
      json.dumps({"question": "what is in this image", "images": ["cmyk.jpg"]}) + "\n" +
      json.dumps({"question": "describe the two", "images": ["grey16.png", "anim.gif"]}) + "\n")
  cfg = config(ckpt, tmp_path)
  assert sample.run(cfg, sample.Request(chat_file=str(tmp_path / "chat.jsonl"))) == 0
  lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
  assert [x["question"] for x in lines] == ["what is in this image", "describe the two"]
  assert all(isinstance(x["answer"], str) for x in lines)
  # Three images in one conversation, given on the command line.
  assert sample.run(cfg, sample.Request(images=[plain, cmyk, grey16], question="compare")) == 0


@pytest.mark.parametrize("kind", ["unreadable", "truncated", "tiny"])
def test_bad_images_are_refused_by_name(ckpt, tmp_path, kind):
  path = tmp_path / f"{kind}.png"
  if kind == "unreadable":
    path.write_bytes(b"this is not an image")
  elif kind == "truncated":
    buf = io.BytesIO()
    rgb(64, 64).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
  else:
    rgb(1, 1).save(path)
  with pytest.raises(preprocess.BadImageError, match=str(path)):
    sample.run(config(ckpt, tmp_path), sample.Request(images=[str(path)], question="what?"))


def test_bad_prompts(ckpt, tmp_path):
  cfg = config(ckpt, tmp_path)
  with pytest.raises(errors.InputError, match="prompt 1 is empty"):
    sample.run(cfg, sample.Request(prompts=["a cat", "   "]))
  with pytest.raises(ValueError, match="prompt 0 has .* tokens; at most 496 fit"):
    sample.run(cfg, sample.Request(prompts=["the red cat " * 200]))
  cfg.t2i.image_size = 384  # 576 image tokens > the tiny model's 512 positions
  with pytest.raises(ValueError, match="576 image tokens per image do not fit"):
    sample.run(cfg, sample.Request(prompts=["a cat"]))
  with pytest.raises(errors.InputError, match="nothing to do"):
    sample.run(cfg, sample.Request())


def test_missing_tokenizer(ckpt, tmp_path):
  bare = tmp_path / "bare"
  shutil.copytree(ckpt, bare, ignore=shutil.ignore_patterns("tokenizer.json"))
  meta = json.loads((bare / "config.json").read_text())
  meta["source"] = str(tmp_path / "nowhere")
  (bare / "config.json").write_text(json.dumps(meta))
  with pytest.raises(errors.InputError, match="missing tokenizer file.*bare/tokenizer.json"):
    sample.run(config(bare, tmp_path), sample.Request(prompts=["a cat"]))


def test_wrong_family_and_not_a_checkpoint(ckpt, tmp_path):
  vae = tmp_path / "vae_ckpt"
  (vae / "params").mkdir(parents=True)
  (vae / "config.json").write_text(json.dumps({"family": "vae", "config": {}}))
  with pytest.raises(errors.InputError, match="holds a 'vae' checkpoint"):
    sample.run(config(vae, tmp_path), sample.Request(prompts=["a cat"]))
  with pytest.raises(errors.InputError, match="has no config.json"):
    sample.run(config(tmp_path, tmp_path), sample.Request(prompts=["a cat"]))
  with pytest.raises(errors.InputError, match="does not exist"):
    sample.run(config(tmp_path / "nope", tmp_path), sample.Request(prompts=["a cat"]))


@pytest.mark.slow
def test_janusflow_checkpoint_generates_through_the_flow_sampler(fixtures_dir, tmp_path):
  fx = fixtures.load(fixtures_dir / "janusflow_tiny")
  ckpt = tmp_path / "janusflow_tiny"
  driver.convert(fx.root, ckpt, extra=fx.extra, progress=False, log=lambda *a: None)
  shutil.copytree(fx.root / "vae", ckpt / "vae")  # the diffusers folder, read as is
  (ckpt / "tokenizer.json").write_text(synthetic.tokenizer_json())
  cfg = sample_config.get_config()
  cfg.checkpoint, cfg.out = str(ckpt), str(tmp_path / "out")
  cfg.t2i.update(image_size=64, num_images=2, flow_steps=2)  # tiny VAE: 8x8 latent
  sample.run(cfg, sample.Request(prompts=["a red cat"]))
  img = np.asarray(Image.open(tmp_path / "out" / "000_01.png"))
  assert img.shape == (64, 64, 3) and img.std() > 0
  cfg.t2i.image_size = 60
  with pytest.raises(errors.InputError, match="not a multiple of the VAE's downsampling 8"):
    sample.run(cfg, sample.Request(prompts=["a red cat"]))
