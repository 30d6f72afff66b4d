"""Image loading and preprocessing for understanding and generation (host side, numpy + PIL).

Understanding (reference `VLMImageProcessor`, reproduced exactly so pixels match bit for bit):
  1. resize so the long side is `image_size`: each side `max(int(side / long * size), min_size)`
     (int() truncates), with PIL bicubic (torchvision's resize of a PIL image is PIL's resize);
  2. paste onto a `size x size` canvas filled with `int(m * 255)` per mean channel, at the floor
     offset (the odd pixel of padding goes right/bottom);
  3. `x = float32(float64(u8) * (1/255))`, then `(x - mean) / std` in float32 (HF's rescale and
     normalize order and precisions).
Generation (Janus-Pro report): short side to `size` (PIL bicubic), centre or random crop of the
long side, pixels mapped to [-1, 1] (the VQ encoder's input range).

All outputs are HWC float32 (NHWC once batched). Loading refuses undecodable, truncated and
degenerate images with `BadImageError` naming the file, so the pipeline can skip and count them.
"""

import dataclasses
import io
import os

import numpy as np
from PIL import Image

from janus_jax import errors

# The inception constants every released Janus preprocessor_config.json uses.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
MIN_SIDE = 2  # a 1-pixel-wide image carries no content; reject rather than stretch it


class BadImageError(errors.InputError):
  """An image that cannot be used; the message names the file and the reason."""


def load_image(src, name: str | None = None) -> Image.Image:
  """Decodes an image from a path or encoded bytes into an 8-bit RGB PIL image.

  CMYK, palette, grey, LA/RGBA (alpha dropped, as the reference's `.convert("RGB")`), 16-bit
  grey (scaled to 8 bit instead of clipped) and animated images (first frame) are accepted.

  Raises:
    BadImageError: unreadable, truncated, or smaller than 2 pixels on a side.
  """
  if name is None:
    name = src if isinstance(src, (str, os.PathLike)) else "<bytes>"
  try:
    fp = src if isinstance(src, (str, os.PathLike)) else io.BytesIO(bytes(src))
    with Image.open(fp) as img:
      img.seek(0)  # animated formats: the first frame
      img.load()  # decode now: a truncated file raises here, not later in a worker
      img = _to_rgb(img)
  except BadImageError:
    raise
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise BadImageError(f"cannot decode image {name}: {e}") from e
  if min(img.size) < MIN_SIDE:
    raise BadImageError(f"image {name} is degenerate: size {img.size[0]}x{img.size[1]}")
  return img


def _to_rgb(img: Image.Image) -> Image.Image:
  if img.mode in ("I;16", "I;16B", "I;16L", "I"):
    # 16-bit grey: PIL's convert("RGB") would clip everything above 255 to white.
    arr = np.asarray(img).astype(np.float64)
    arr = np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "L").convert("RGB")
  if img.mode == "F":
    arr = np.clip(np.round(np.asarray(img)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "L").convert("RGB")
  return img.convert("RGB")


@dataclasses.dataclass(frozen=True)
class UnderstandingConfig:
  image_size: int = 384
  min_size: int = 14
  mean: tuple[float, float, float] = MEAN
  std: tuple[float, float, float] = STD

  @property
  def background(self) -> tuple[int, ...]:
    return tuple(int(m * 255) for m in self.mean)


def resize_and_pad(img: Image.Image, cfg: UnderstandingConfig = UnderstandingConfig()
                   ) -> np.ndarray:
  """Steps 1-2 of the understanding preprocessing: (size, size, 3) uint8."""
  w, h = img.size
  long = max(w, h)
  new_h = max(int(h / long * cfg.image_size), cfg.min_size)
  new_w = max(int(w / long * cfg.image_size), cfg.min_size)
  img = img.resize((new_w, new_h), Image.BICUBIC)
  # The reference pads to a square of the *resized* long side; that side is image_size unless
  # min_size kicked in on both sides (only for images under min_size / image_size scale).
  side = max(new_w, new_h)
  canvas = Image.new("RGB", (side, side), cfg.background)
  canvas.paste(img, ((side - new_w) // 2, (side - new_h) // 2))
  return np.asarray(canvas, dtype=np.uint8)


def normalize(u8: np.ndarray, mean=MEAN, std=STD) -> np.ndarray:
  """uint8 HWC -> float32 with HF's rescale (float64 multiply) then float32 normalisation."""
  x = (u8.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def understanding_pixels(img: Image.Image, cfg: UnderstandingConfig = UnderstandingConfig()
                         ) -> np.ndarray:
  """Reference understanding preprocessing: (size, size, 3) float32, normalised."""
  return normalize(resize_and_pad(img, cfg), cfg.mean, cfg.std)


def generation_pixels(img: Image.Image, size: int = 384, rng: np.random.Generator | None = None
                      ) -> np.ndarray:
  """Short side to `size` (PIL bicubic), crop to square, map to [-1, 1]: (size, size, 3) f32.

  Centre crop when `rng` is None, otherwise a uniformly random crop offset along the long side.
  """
  w, h = img.size
  scale = size / min(w, h)
  # round(), and never below `size`, so the crop always fits.
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  if (new_w, new_h) != (w, h):
    img = img.resize((new_w, new_h), Image.BICUBIC)
  if rng is None:
    left, top = (new_w - size) // 2, (new_h - size) // 2
  else:
    left, top = int(rng.integers(0, new_w - size + 1)), int(rng.integers(0, new_h - size + 1))
  arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32)
  return arr / 127.5 - 1.0
