"""Pretraining of the demo's understanding encoder on per-patch scene labels."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janus_jax.models import siglip
from janus_jax.shapes_demo import vision_training
from janus_jax.shapes_demo.world import world

CFG = siglip.Config(image_size=32, patch_size=8, width=32, depth=1, heads=2)


def _scene(*objs):
  return world.Scene(tuple(world.Object(*o) for o in objs))


def test_patch_labels_follow_the_renderer_in_token_order():
  # A large red circle in the centre cell and a small blue square in the top-right one.
  scene = _scene(("red", "circle", "large", 1, 1), ("blue", "square", "small", 0, 2))
  labels = vision_training.patch_labels(scene, 64, 8).reshape(8, 8, -1)
  colour, shape, size, cell = (labels[..., k] for k in range(4))
  red, blue = 1 + list(world.COLOURS).index("red"), 1 + list(world.COLOURS).index("blue")
  # The circle's centre is (32, 32): the four patches around it are red circle, cell 1*3+1.
  for r, c in [(3, 3), (3, 4), (4, 3), (4, 4)]:
    assert (colour[r, c], shape[r, c], cell[r, c]) == (red, 1 + world.SHAPES.index("circle"), 5)
    assert size[r, c] == 1 + list(world.SIZES).index("large")
  # The square sits at x ~ 53, y ~ 11: patch row 1, column 6 (row-major, as the ViT's tokens).
  assert (colour[1, 6], cell[1, 6]) == (blue, 3)
  assert shape[1, 6] == 1 + world.SHAPES.index("square")
  # Corners and the bottom rows are background in every head.
  assert not labels[7].any() and not labels[0, 0].any()
  # Every labelled patch is covered by its object: the analyser-independent count of patches.
  assert 4 <= (colour == red).sum() <= 16 and 1 <= (colour == blue).sum() <= 4


def test_patch_labels_reject_a_patch_that_does_not_tile_the_image():
  with pytest.raises(ValueError, match="multiple of the patch size"):
    vision_training.patch_labels(_scene(("red", "circle", "large", 1, 1)), 64, 7)


@pytest.mark.slow
def test_pretraining_learns_and_returns_a_drop_in_encoder():
  scenes = list(world.split_scenes("train", 64))
  images = world.render_batch(scenes, 32)
  enc0, head0 = vision_training.train(CFG, images, scenes, steps=1, lr=1e-9, warmup=1,
                                      log=lambda m: None)
  before = vision_training.accuracy(CFG, enc0, head0, images, scenes)
  enc, head = vision_training.train(CFG, images, scenes, steps=150, batch_size=32, lr=5e-3,
                                    warmup=5, log=lambda m: None)
  after = vision_training.accuracy(CFG, enc, head, images, scenes)
  # A 1-layer, 32-wide encoder after 150 steps: colour and cell are learned, shape is on its way.
  assert after["colour"] > 0.9 and after["cell"] > 0.6, (before, after)
  assert after["shape"] > before["shape"] + 0.15, (before, after)
  # The tree of `siglip.Model` (janus.Model's `vision_model`), so the demo swaps it in.
  x = jnp.zeros((1, 32, 32, 3))
  ref = nn.unbox(jax.eval_shape(lambda: siglip.Model(CFG).init(jax.random.key(0), x)))
  shape = lambda t: jax.tree_util.tree_map(lambda a: a.shape, t)  # noqa: E731
  assert shape(enc) == shape(ref["params"])


def test_pretraining_names_bad_input():
  scenes = list(world.split_scenes("train", 4))
  images = world.render_batch(scenes, 32)
  with pytest.raises(ValueError, match="4 images but 3 scenes"):
    vision_training.train(CFG, images, scenes[:3], steps=1)
  with pytest.raises(ValueError, match="uint8"):
    vision_training.train(CFG, images.astype(np.float32), scenes, steps=1)
  with pytest.raises(ValueError, match=r"uint8 \(N, 32, 32, 3\)"):
    vision_training.train(CFG, images[..., :2], scenes, steps=1)
  with pytest.raises(ValueError, match="4 images but 3 scenes"):
    vision_training.accuracy(CFG, {}, {}, images, scenes[:3])
