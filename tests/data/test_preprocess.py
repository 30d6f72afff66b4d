"""Image loading and preprocessing: pixel parity with the reference processor, robust loading."""

import io

import numpy as np
from PIL import Image
import pytest

from janus_jax.data import preprocess

SIZES = [(384, 384), (640, 480), (480, 640), (1000, 10), (7, 900), (383, 385), (50, 37),
         (1, 200), (500, 501), (211, 97)]  # (width, height)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def reference_pixels(img, image_size=384, min_size=14, mean=(0.5,) * 3, std=(0.5,) * 3):
  """The reference VLMImageProcessor steps, re-expressed with PIL (= torchvision on PIL) + HF."""
  from transformers.image_transforms import normalize  # test-only dependency
  from transformers.image_transforms import rescale  # test-only dependency
  from transformers.image_utils import ChannelDimension
  width, height = img.size
  max_size = max(width, height)
  size = [max(int(height / max_size * image_size), min_size),
          max(int(width / max_size * image_size), min_size)]
  img = img.resize((size[1], size[0]), Image.BICUBIC)
  bg = tuple(int(x * 255) for x in mean)
  w, h = img.size
  if w != h:
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), bg)
    canvas.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    img = canvas
  x = np.transpose(np.asarray(img), (2, 0, 1))
  x = rescale(x, 1 / 255, input_data_format=ChannelDimension.FIRST)
  x = normalize(x, mean=mean, std=std, input_data_format=ChannelDimension.FIRST)
  return np.transpose(x, (1, 2, 0))


def random_image(w, h, seed=0):
  rng = np.random.default_rng(seed + w * 7 + h)
  # Smooth gradients plus noise: bicubic overshoot and clipping both get exercised.
  yy, xx = np.mgrid[0:h, 0:w]
  base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256], -1)
  arr = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
  return Image.fromarray(arr)


@pytest.mark.parametrize("w,h", SIZES)
def test_understanding_pixel_parity(w, h):
  img = random_image(w, h)
  ours = preprocess.understanding_pixels(img)
  ref = reference_pixels(img)
  assert ours.shape == (384, 384, 3) and ours.dtype == np.float32
  np.testing.assert_array_equal(ours, ref)


def test_parity_with_clip_constants_and_background():
  img = random_image(300, 120)
  cfg = preprocess.UnderstandingConfig(mean=CLIP_MEAN, std=CLIP_STD)
  assert cfg.background == (122, 116, 104)
  np.testing.assert_array_equal(preprocess.understanding_pixels(img, cfg),
                                reference_pixels(img, mean=CLIP_MEAN, std=CLIP_STD))


def test_padding_layout():
  u8 = preprocess.resize_and_pad(Image.new("RGB", (384, 381), (255, 0, 0)))
  # 3 rows of padding: floor offset 1 on top, 2 at the bottom; background int(0.5 * 255) = 127.
  assert (u8[0] == 127).all() and (u8[-2:] == 127).all() and (u8[1:382, :, 0] == 255).all()


def test_generation_pixels_centre_and_random_crop():
  img = random_image(600, 400)
  x = preprocess.generation_pixels(img, size=384)
  assert x.shape == (384, 384, 3) and x.min() >= -1 and x.max() <= 1
  ref = np.asarray(img.resize((576, 384), Image.BICUBIC), np.float32)[:, 96:480] / 127.5 - 1
  np.testing.assert_allclose(x, ref, atol=1e-6)
  crops = {preprocess.generation_pixels(img, 384, np.random.default_rng(s))[0, 0, 0]
           for s in range(6)}
  assert len(crops) > 1  # the offset really varies


def _encode(img, fmt, **kw):
  buf = io.BytesIO()
  img.save(buf, format=fmt, **kw)
  return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("CMYK", "JPEG"), ("P", "PNG"), ("LA", "PNG"), ("L", "PNG"),
                                      ("RGBA", "PNG"), ("I;16", "PNG")])
def test_load_converts_modes_to_rgb(mode, fmt):
  img = random_image(30, 20)
  if mode == "I;16":
    src = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
  else:
    src = img.convert(mode)
  out = preprocess.load_image(_encode(src, fmt), name="x")
  assert out.mode == "RGB" and out.size == (30, 20)
  if mode == "I;16":  # 16-bit grey is rescaled, not clipped to white
    np.testing.assert_array_equal(np.asarray(out)[..., 0], np.asarray(img.convert("L")))


def test_load_animated_takes_first_frame():
  frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 0, 255)]]
  data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
  out = np.asarray(preprocess.load_image(data))
  assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_load_rejects_bad_images(tmp_path):
  good = _encode(random_image(40, 30), "PNG")
  path = tmp_path / "cut.png"
  path.write_bytes(good[: len(good) // 2])
  with pytest.raises(preprocess.BadImageError, match="cut.png"):
    preprocess.load_image(str(path))
  with pytest.raises(preprocess.BadImageError, match="junk"):
    preprocess.load_image(b"not an image at all", name="junk")
  with pytest.raises(preprocess.BadImageError, match="degenerate"):
    preprocess.load_image(_encode(Image.new("RGB", (1, 1)), "PNG"), name="dot")
  with pytest.raises(preprocess.BadImageError, match="missing.png"):
    preprocess.load_image(str(tmp_path / "missing.png"))
