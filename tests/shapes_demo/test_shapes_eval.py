"""ShapesEval end to end with the oracle, plus its scoring rules on hand-made detections."""

import re

import numpy as np
import pytest

from janus_jax.shapes_demo.eval import analyser
from janus_jax.shapes_demo.eval import shapes
from janus_jax.shapes_demo.world import text
from janus_jax.shapes_demo.world import world


@pytest.fixture(scope="module")
def items():
  return shapes.gen_items(per_category=6), shapes.und_items(num=60)


def test_items_are_heldout_and_in_the_training_grammar(items):
  gen, und = items
  assert [it.category for it in gen] == [c for c in shapes.CATEGORIES for _ in range(6)]
  assert all(world.is_heldout(it.scene) for it in gen)
  assert all(world.is_heldout(u.scene) for u in und)
  for it in gen:
    if it.category == "position":
      assert re.fullmatch(r"a \w+ \w+ (on the left of|on the right of|above|below) a \w+ \w+",
                          it.prompt)
    else:
      styles = text.applicable_styles(it.scene)
      assert it.prompt in [text.describe(it.scene, s) for s in styles if s != "relation"]


def test_validation_items_are_training_compositions():
  """--split validation (for choosing sampling settings) never touches a held-out composition."""
  gen, und = shapes.gen_items(3, split="validation"), shapes.und_items(20, split="validation")
  assert [it.category for it in gen] == [c for c in shapes.CATEGORIES for _ in range(3)]
  assert not any(world.is_heldout(it.scene) for it in gen)
  assert not any(world.is_heldout(u.scene) for u in und)
  test_prompts = {it.prompt for it in shapes.gen_items(3)}
  assert test_prompts != {it.prompt for it in gen}


def test_oracle_scores_one(items):
  gen, und = items
  adapter = shapes.OracleAdapter(gen, [u.scene for u in und])
  results = shapes.evaluate(adapter, gen, und, log=lambda m: None)
  assert results["gen_overall"] == 1.0 and results["und_accuracy"] == 1.0
  assert all(results[c] == 1.0 for c in shapes.CATEGORIES)


def test_oracle_survives_vq_like_degradation(items):
  gen, und = items
  adapter = shapes.OracleAdapter(gen, [u.scene for u in und], degrade=True)
  assert shapes.evaluate(adapter, gen, und, log=lambda m: None)["gen_overall"] >= 0.95


class _Blank:
  """A model that draws nothing and always says "no"."""

  def generate_images(self, prompts):
    return np.full((len(prompts), 64, 64, 3), world.BACKGROUND, np.uint8)

  def answer(self, images, questions):
    return ["No."] * len(questions)


def test_a_useless_model_scores_low(items):
  gen, und = items
  results = shapes.evaluate(_Blank(), gen, und, log=lambda m: None)
  assert results["gen_overall"] == 0.0
  expected = np.mean([u.answer == "no" for u in und])
  assert results["und_accuracy"] == pytest.approx(expected) and expected < 0.5


def _det(colour, shape, cx, cy):
  return analyser.Detection(colour, shape, "small", cx, cy, 100.0, 0.1, 0.95,
                            int(cy // (64 / 3)), int(cx // (64 / 3)))


def test_scoring_rules():
  scene = world.Scene((world.Object("red", "circle", "small", 0, 0),))
  count2 = shapes.GenItem("counting", "two red circles", (shapes.Need("circle", "red", 2),), scene)
  two = [_det("red", "circle", 10, 10), _det("red", "circle", 50, 10)]
  assert shapes.score(count2, two, 64)
  assert not shapes.score(count2, two + [_det("red", "circle", 50, 50)], 64)  # exactly two
  assert not shapes.score(count2, [two[0], _det("blue", "circle", 50, 10)], 64)
  left = shapes.GenItem("position", "a red circle on the left of a blue square",
                        (shapes.Need("circle", "red"), shapes.Need("square", "blue")), scene,
                        (0, "on the left of", 1))
  assert shapes.score(left, [_det("red", "circle", 10, 30), _det("blue", "square", 50, 10)], 64)
  assert not shapes.score(left, [_det("red", "circle", 50, 30), _det("blue", "square", 10, 10)],
                          64)
  # Centres closer than the margin (6.4 px at 64) do not count as "left of".
  assert not shapes.score(left, [_det("red", "circle", 30, 10), _det("blue", "square", 34, 50)],
                          64)
  with pytest.raises(ValueError, match="generate_images returned"):
    shapes.evaluate(type("Bad", (), {"generate_images": lambda self, p: np.zeros((1, 8, 8, 3))})(),
                    shapes.gen_items(1)[:2], [], log=lambda m: None)


def test_answers_from_pixels_equal_answers_from_truth():
  rng = np.random.default_rng(0)
  for scene in world.split_scenes("test", 100):
    dets = analyser.analyse(world.render(scene))
    for q, a in text.all_qa(scene, rng):
      assert text.answer(dets, q) == a, (q, scene)
  with pytest.raises(ValueError, match="not in the shapes-world question grammar"):
    text.answer(scene.objects, "why is the sky blue?")


def test_command_line_oracle(capsys):
  shapes.main(["--oracle", "--per_category", "2", "--questions", "10"])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last == "gen_overall=1.0000 und_accuracy=1.0000"


def test_oracle_transform_is_applied_to_the_generated_images(items):
  gen, _ = items
  blank = lambda images: np.full_like(images, 235)  # a tokenizer that loses every shape
  adapter = shapes.OracleAdapter(gen, transform=blank)
  assert shapes.evaluate(adapter, gen, [], log=lambda m: None)["gen_overall"] == 0.0


@pytest.mark.slow
def test_command_line_oracle_through_the_shipped_vq(capsys):
  """The ceiling the shipped checkpoint's tokenizer sets: the prompts' own scenes, encoded and
  decoded by its VQ at its image size, scored by the analyser."""
  shapes.main(["--oracle", "--through_vq", "--per_category", "3", "--questions", "4"])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  gen = float(re.fullmatch(r"gen_overall=([\d.]+) und_accuracy=1\.0000", last).group(1))
  assert 0.6 <= gen <= 1.0  # measured at 100 per category: 0.952
  with pytest.raises(SystemExit):
    shapes.main(["--through_vq"])
  assert "add --oracle" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    shapes.main(["--oracle", "--through_vq", "--image_size", "64"])
  assert "trained at 48" in capsys.readouterr().err


def test_command_line_names_a_bad_checkpoint(tmp_path, capsys):
  with pytest.raises(SystemExit):
    shapes.main(["--checkpoint", str(tmp_path / "missing")])
  assert f"cannot load checkpoint {tmp_path / 'missing'}: " in capsys.readouterr().err
  (tmp_path / "empty").mkdir()
  with pytest.raises(SystemExit):
    shapes.main(["--checkpoint", str(tmp_path / "empty")])
  assert "has no config.json" in capsys.readouterr().err


def test_understanding_is_broken_down_by_question_kind():
  und = shapes.und_items(60, 0)
  adapter = shapes.OracleAdapter([], [u.scene for u in und])
  results = shapes.evaluate(adapter, [], und, log=lambda m: None)
  kinds = {text.question_kind(u.question) for u in und}
  assert kinds <= set(text.QUESTION_KINDS) and len(kinds) >= 5
  assert sum(results[f"und_{k}_n"] for k in kinds) == 60
  assert all(results[f"und_{k}"] == 1.0 for k in kinds)  # the oracle answers from the truth
  report = shapes.report(results).splitlines()
  assert report[-1].startswith("gen_overall=") and any("questions)" in l for l in report)
  with pytest.raises(ValueError, match="not in the shapes-world question grammar"):
    text.question_kind("why is the sky blue?")


def test_negative_prompt_counts_are_refused(capsys):
  assert shapes.gen_items(0) == []  # understanding only
  with pytest.raises(ValueError, match="per_category must be >= 0, got -1"):
    shapes.gen_items(-1)
  with pytest.raises(ValueError, match="num must be >= 0, got -1"):
    shapes.und_items(-1)
  with pytest.raises(SystemExit):
    shapes.main(["--oracle", "--questions", "-2"])
  assert "--questions must be >= 0, got -2" in capsys.readouterr().err
