"""The pixel analyser against rendered ground truth, clean and degraded like a VQ reconstruction."""

import numpy as np
import pytest

from janus_jax.shapes_demo.eval import analyser
from janus_jax.shapes_demo.world import world

NUM_SCENES = 300


def _accuracy(scenes, transform, size: int = 64) -> float:
  ok = [analyser.matches_scene(analyser.analyse(transform(world.render(s, size))), s)
        for s in scenes]
  return float(np.mean(ok))


@pytest.fixture(scope="module")
def scenes():
  return [world.sample_scene(np.random.default_rng([11, i])) for i in range(NUM_SCENES)]


@pytest.mark.parametrize("size", [64, 48])  # the demo's earlier and current resolutions
def test_exact_on_rendered_scenes(scenes, size):
  # colour, shape, size and cell of every object, and nothing else, for >= 99% of scenes.
  assert _accuracy(scenes, lambda img: img, size) >= 0.99


@pytest.mark.parametrize("size", [64, 48])
def test_robust_to_vq_like_degradation(scenes, size):
  rng = np.random.default_rng(0)
  blur = 0.8 * size / 64  # the same blur relative to the image
  assert _accuracy(scenes, lambda img: analyser.degrade(img, rng, blur=blur), size) >= 0.99


def test_robust_with_jittered_positions():
  scenes = [world.sample_scene(np.random.default_rng([12, i]), jitter=1 / 64) for i in range(100)]
  rng = np.random.default_rng(1)
  assert _accuracy(scenes, lambda img: analyser.degrade(img, rng)) >= 0.99


@pytest.mark.parametrize("side", [64, 48])
def test_every_shape_colour_and_size_is_told_apart(side):
  for colour in world.COLOURS:
    for shape in world.SHAPES:
      for size in world.SIZES:
        scene = world.Scene((world.Object(colour, shape, size, 1, 1),))
        (d,) = analyser.analyse(world.render(scene, side))
        assert (d.colour, d.shape, d.size, d.cell) == (colour, shape, size, (1, 1))
        assert d.iou > 0.9


def test_background_and_noise_give_nothing():
  blank = np.full((64, 64, 3), world.BACKGROUND, np.uint8)
  assert analyser.analyse(blank) == []
  noisy = analyser.degrade(blank, np.random.default_rng(0), noise=12.0, shift=12.0)
  assert analyser.analyse(noisy) == []


def test_blobs_no_template_fits_are_unknown():
  img = np.full((64, 64, 3), world.BACKGROUND, np.uint8)
  img[20:30, 5:59] = world.COLOURS["green"]  # a long bar: no shape of the world
  (d,) = analyser.analyse(img)
  assert d.colour == "green" and d.shape == "unknown"


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="square RGB"):
    analyser.analyse(np.zeros((64, 32, 3), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    analyser.analyse(np.zeros((64, 64, 3), np.float32))
