"""Shapes world: determinism, held-out split, renderer, texts, TFDS builder, tokenizer."""

import collections

import numpy as np
import pytest

from janus_jax.shapes_demo import world as shapes
from janus_jax.shapes_demo.world import builder
from janus_jax.shapes_demo.world import text
from janus_jax.shapes_demo.world import vocab
from janus_jax.shapes_demo.world import world


def test_scenes_and_pixels_are_deterministic():
  a = [s.to_json() for s in world.split_scenes("train", 50, seed=3)]
  b = [s.to_json() for s in world.split_scenes("train", 50, seed=3)]
  c = [s.to_json() for s in world.split_scenes("train", 50, seed=4)]
  assert a == b and a != c
  scene = world.Scene.from_json(a[0])
  np.testing.assert_array_equal(shapes.render(scene), shapes.render(scene))
  rng1, rng2 = np.random.default_rng(5), np.random.default_rng(5)
  assert shapes.caption(scene, rng1) == shapes.caption(scene, rng2)
  assert shapes.qa_pairs(scene, rng1) == shapes.qa_pairs(scene, rng2)


def test_heldout_compositions_only_in_test():
  train = list(world.split_scenes("train", 3000))
  val = list(world.split_scenes("validation", 300))
  test = list(world.split_scenes("test", 300))
  assert not any(world.is_heldout(s) for s in train + val)
  assert all(world.is_heldout(s) for s in test)
  train_keys = {world.composition_key(s) for s in train}
  assert not train_keys & {world.composition_key(s) for s in test}
  # Every descriptor is still taught, and the test split has every kind of scene.
  seen = {o.descriptor for s in train for o in s.objects}
  assert len(seen) == len(world.COLOURS) * len(world.SHAPES)
  assert {len(s.objects) for s in test} == {1, 2, 3}


def test_render_puts_palette_colours_in_cells():
  scene = world.Scene((world.Object("red", "square", "large", 0, 0),
                       world.Object("blue", "circle", "small", 2, 2)))
  img = shapes.render(scene, 64)
  assert img.shape == (64, 64, 3) and img.dtype == np.uint8
  assert tuple(img[32, 32]) == world.BACKGROUND  # empty centre cell
  cx, cy = (int(v) for v in scene.objects[0].centre(64))
  assert tuple(img[cy, cx]) == world.COLOURS["red"]
  cx, cy = (int(v) for v in scene.objects[1].centre(64))
  assert tuple(img[cy, cx]) == world.COLOURS["blue"]
  # Large square: about (2 * 0.85 * 9)^2 = 234 pixels of red.
  red = np.all(img == world.COLOURS["red"], axis=-1).sum()
  assert 200 < red < 250


def test_bad_scenes_are_rejected():
  with pytest.raises(ValueError, match="colour 'pink'"):
    world.Object("pink", "circle", "small", 0, 0)
  with pytest.raises(ValueError, match="share a cell"):
    world.Scene((world.Object("red", "circle", "small", 0, 0),
                 world.Object("blue", "circle", "small", 0, 0)))
  with pytest.raises(ValueError, match="outside"):
    world.Object("red", "circle", "small", 3, 0)
  with pytest.raises(ValueError, match="split 'dev'"):
    next(world.split_scenes("dev", 1))


def test_captions_follow_the_scene():
  scene = world.Scene((world.Object("red", "circle", "small", 0, 0),
                       world.Object("red", "circle", "large", 1, 1),
                       world.Object("blue", "square", "large", 2, 2)))
  assert text.describe(scene, "colour") == "two red circles and a blue square"
  assert text.describe(scene, "shape") == "two circles and a square"
  assert text.describe(scene, "size") == "a small red circle, a large red circle and a large blue square"
  assert text.describe(scene, "full").startswith("a small red circle in the top left, ")
  assert "relation" not in text.applicable_styles(scene)
  pair = world.Scene((world.Object("green", "triangle", "small", 1, 0),
                      world.Object("yellow", "diamond", "small", 0, 2)))
  rng = np.random.default_rng(0)
  relations = collections.Counter(text.describe(pair, "relation", rng) for _ in range(40))
  assert set(relations) == {
      "a green triangle on the left of a yellow diamond",
      "a green triangle below a yellow diamond",
      "a yellow diamond on the right of a green triangle",
      "a yellow diamond above a green triangle"}


def test_answers_agree_with_the_scene():
  rng = np.random.default_rng(0)
  for scene in world.split_scenes("validation", 200):
    for q, a in text.all_qa(scene, rng):
      objs = scene.objects
      if q == "how many shapes are there?":
        assert a == text.NUMBERS[len(objs)]
      elif q.startswith("what colour is the "):
        shape = q[len("what colour is the "):-1]
        assert [o.colour for o in objs if o.shape == shape] == [a]
      elif q.startswith("where is the "):
        colour, shape = q[len("where is the "):-1].split()
        (o,) = [o for o in objs if o.descriptor == (colour, shape)]
        assert world.CELL_NAMES[o.cell] == a
      elif q.startswith("is there a "):
        colour, shape = q[len("is there a "):-1].split()
        assert a == ("yes" if (colour, shape) in {o.descriptor for o in objs} else "no")
  assert text.normalise_answer(" Two.") == "two" and text.normalise_answer("3") == "three"
  assert text.normalise_answer("the top left<｜end▁of▁sentence｜>") == "top left end of sentence"


def test_tfds_builder_without_tensorflow(tmp_path):
  b = builder.ShapesWorld(config="tiny", data_dir=str(tmp_path))
  b.download_and_prepare()
  source = b.as_data_source()
  assert {k: len(v) for k, v in source.items()} == {"train": 32, "validation": 8, "test": 8}
  expected = dict(builder.examples("test", 8))
  for i in range(8):
    rec = source["test"][i]
    scene = world.Scene.from_json(rec["scene"])
    assert world.is_heldout(scene)
    np.testing.assert_array_equal(rec["image"], shapes.render(scene))
    assert rec["num_objects"] == len(scene.objects)
    assert len(rec["questions"]) == len(rec["answers"]) >= 1
    # Records are stored under their key; find this one among the generated examples.
    assert any(rec["scene"].decode() == ex["scene"] and
               [c.decode() for c in rec["captions"]] == ex["captions"]
               for ex in expected.values())


def test_tokenizer_has_janus_specials_and_handles_unknown_words(tmp_path):
  from janus_jax.data import tokenizer as tokenizer_lib
  path = vocab.train_tokenizer(str(tmp_path), num_scenes=200)
  tok = tokenizer_lib.load(str(tmp_path))
  assert path.endswith("tokenizer.json")
  for name in vocab.SPECIAL_TOKENS:
    assert tok.token_id(name) is not None
  assert tok.special.bos == tok.token_id("<｜begin▁of▁sentence｜>")
  ids = tok.encode("a red circle on the left of a blue square")
  assert len(ids) == 11  # BOS + one token per word
  assert tok.decode(ids) == "a red circle on the left of a blue square"
  odd = "a zebra-striped hexagon, très grand ✓"
  assert tok.decode(tok.encode(odd)) == odd
  ids = tok.encode("<|User|>: two squares\n\n<|Assistant|>:<begin_of_image>")
  assert tok.token_id("<|User|>") in ids and ids[-1] == tok.special.boi
  with pytest.raises(ValueError, match="vocab_size 100"):
    vocab.train_tokenizer(str(tmp_path / "x"), vocab_size=100)
