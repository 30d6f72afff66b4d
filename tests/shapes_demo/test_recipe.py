"""The embedded demo: the recipe's smoke run, its command line, and sample.py on the shipped
checkpoint."""

import json
import pathlib
import re
import subprocess
import sys

from absl import flags
import jax
import numpy as np
import optax
from PIL import Image
import pytest

from configs import demo_shapes
from configs import sample as sample_config
from janus_jax.convert import driver
from janus_jax.data import preprocess
from janus_jax.models import janus
from janus_jax.models import vq
from janus_jax.sampling import image_ar
from janus_jax.sampling import loading
from janus_jax.shapes_demo import recipe as demo
from janus_jax.shapes_demo import vq_training
from janus_jax.shapes_demo.eval import model_adapter
from janus_jax.shapes_demo.world import builder as shapes_builder
from janus_jax.shapes_demo.world import text as shapes_text
from janus_jax.shapes_demo.world import world
import sample

REPO = pathlib.Path(__file__).resolve().parents[2]
ASSET = REPO / "assets" / "shapes_demo"


@pytest.mark.slow
def test_smoke_recipe_exports_a_loadable_checkpoint(tmp_path):
  """Every step of `python -m janus_jax.shapes_demo` for a few steps on the tiny world."""
  c = demo_shapes.get_config("smoke")
  c.vq.steps = 2
  for stage in c.stages:
    stage.steps = 2
  summary = demo.run(c, tmp_path / "run")
  ckpt = tmp_path / "run" / "checkpoint"
  assert np.isfinite(summary["vq_psnr_test"]) and np.isfinite(summary["final_metrics"]["loss"])
  assert 0.0 <= summary["vq_readable_test"] <= 1.0
  assert summary["final_metrics"]["tokens_und"] > 0 and summary["final_metrics"]["tokens_gen"] > 0
  meta = json.loads((ckpt / "config.json").read_text())
  assert meta["family"] == "janus" and meta["image_size"] == 48
  # Trained without a system prompt and with chosen sampling settings: both travel with it.
  assert meta["system_prompt"] == c.system_prompt == ""
  assert meta["sampling"] == {"cfg_weight": c.eval.cfg_weight, "temperature": c.eval.temperature}
  config, params = driver.load_converted(ckpt)
  assert isinstance(config, janus.Config)
  assert config.image_tokens == 36 and config.vq.downsample_factor == 8  # 6x6 at 48 px
  assert set(params) == {"vision_model", "aligner", "gen_vision_model", "gen_aligner", "gen_head",
                         "gen_embed", "language_model"}
  assert (ckpt / "tokenizer.json").is_file()
  # The pretrained understanding encoder went in, stayed frozen through stages 1-2 and trained
  # in stage 3 (as in the released recipe); the VQ never trained.
  assert set(summary["encoder_patch_accuracy_test"]) == {"colour", "shape", "size", "cell",
                                                         "background"}
  stage = {n: driver.load_converted(tmp_path / "run" / "stages" / n)[1]
           for n in ("init", "stage2", "stage3")}
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(  # noqa: E731
      jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
  assert same(stage["init"]["vision_model"], stage["stage2"]["vision_model"])
  assert not same(stage["init"]["vision_model"], stage["stage3"]["vision_model"])
  assert same(stage["init"]["gen_vision_model"], stage["stage3"]["gen_vision_model"])
  assert not same(stage["init"]["language_model"], stage["stage2"]["language_model"])
  # The exported folder drives the real samplers through the ShapesEval adapter.
  adapter = model_adapter.load(str(ckpt), temperature=0)
  assert adapter.system_prompt == "" and adapter.cfg_weight == c.eval.cfg_weight
  assert adapter.temperature == 0  # given; else the checkpoint's (below)
  assert adapter.image_size == 48  # from config.json
  images = adapter.generate_images(["a red circle"])
  assert images.shape == (1, 48, 48, 3) and images.dtype == np.uint8
  answers = adapter.answer(world.render_batch([world.sample_scene(np.random.default_rng(0))]),
                           ["how many shapes are there?"])
  assert len(answers) == 1 and isinstance(answers[0], str)
  # Step 7's choice of guidance and temperature (validation split) lands in config.json for
  # sample.py and ShapesEval.
  c.eval.select_per_category, c.eval.cfg_candidates = 1, (1.0, 2.0)
  c.eval.temperature_candidates = (0.5, 1.0)
  chosen = demo.select_sampling(ckpt, c)
  meta = json.loads((ckpt / "config.json").read_text())
  assert meta["sampling"] == chosen
  assert chosen["cfg_weight"] in (1.0, 2.0) and chosen["temperature"] in (0.5, 1.0)
  assert len(meta["sampling_selection"]["gen_overall"]) == 4
  reloaded = model_adapter.load(str(ckpt))
  assert (reloaded.cfg_weight, reloaded.temperature) == (chosen["cfg_weight"],
                                                          chosen["temperature"])
  c.eval.temperature_candidates = ()
  with pytest.raises(ValueError, match="temperature_candidates"):
    demo.select_sampling(ckpt, c)


def test_sampling_selection_refuses_bad_settings_before_scoring(tmp_path):
  # No checkpoint at tmp_path: each refusal must come before anything is loaded or scored.
  c = demo_shapes.get_config("smoke")
  c.eval.select_per_category = 0
  with pytest.raises(ValueError, match="select_per_category"):
    demo.select_sampling(tmp_path, c)
  c.eval.select_per_category = 1
  c.eval.cfg_candidates = (1.5, -1.0)
  with pytest.raises(ValueError, match=r"eval.cfg_candidates must be a number >= 0, got -1.0"):
    demo.select_sampling(tmp_path, c)
  c.eval.cfg_candidates, c.eval.temperature_candidates = (1.5,), ("hot",)
  with pytest.raises(ValueError, match="eval.temperature_candidates"):
    demo.select_sampling(tmp_path, c)


def _demo_cli(*args):
  return subprocess.run([sys.executable, "-m", "janus_jax.shapes_demo", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_command_line_config_and_overrides(tmp_path):
  """The recipe's command line reads configs/demo_shapes.py and its --config.<field>
  overrides (list entries included), refusing unknown fields, before anything runs."""
  proc = _demo_cli(f"--out={tmp_path}", "--config.stages[1].steps=7", "--config.vq.lr=0.5",
                   f"--evaluate={tmp_path / 'none'}")
  assert proc.returncode != 0 and "no config.json; not an exported checkpoint" in proc.stderr
  proc = _demo_cli(f"--out={tmp_path}", "--config.vq.no_such_field=1")
  assert proc.returncode != 0 and "no_such_field" in proc.stderr
  assert not list(tmp_path.iterdir())


def test_world_and_recipe_must_agree_on_the_image_size(tmp_path):
  """The full recipe draws its world at 48 px (cells aligned with the VQ tokens); a world config
  of another size is refused by name instead of training a VQ on the wrong images."""
  c = demo_shapes.get_config()
  assert c.image_size == 48 and c.world.builder_config == "dense_qa48"
  cfg = demo.model_config(c, c.tokenizer.vocab_size)
  assert cfg.image_tokens == 36 and cfg.vq.downsample_factor == 8
  with pytest.raises(ValueError, match="'tiny' draws 64 px .* image_size is 48"):
    demo.load_world(tmp_path / "tfds", "tiny", {"test": 2}, image_size=48)
  assert demo.load_world(tmp_path / "tfds", "tiny", {"test": 2}, 64)["test"].images.shape == (
      2, 64, 64, 3)


def _split(n: int, image_size: int = 48) -> demo.Split:
  recs = [r for _, r in shapes_builder.examples("train", n, image_size=image_size, num_qa=2)]
  return demo.Split(images=np.stack([r["image"] for r in recs]),
                    captions=[r["captions"] for r in recs],
                    qa=[list(zip(r["questions"], r["answers"])) for r in recs],
                    scenes=[world.Scene.from_json(r["scene"]) for r in recs])


_RELATION = re.compile(  # a relation caption: "a red circle above a blue square"
    r"an? (\w+) (\w+) (" + "|".join(shapes_text.RELATIONS) + r") an? (\w+) (\w+)")


def test_gen_source_relation_captions_replace_a_share_of_two_object_records():
  """`relation_share` re-captions that share of the records of scenes that admit a relation
  caption, with a relation that holds in the scene; other scenes and the codes are untouched."""
  split = _split(60)
  codes = np.arange(60 * 36, dtype=np.int32).reshape(60, 36)
  plain = demo.GenSource(split, codes)
  assert [plain[i]["caption"] for i in range(len(plain))] == [
      c for caps in split.captions for c in caps]
  applies = ["relation" in shapes_text.applicable_styles(s) for s in split.scenes]
  assert 5 < sum(applies) < 60
  for share in (1.0, 0.5):
    gen = demo.GenSource(split, codes, relation_share=share, seed=3)
    replaced = 0
    for i in range(len(gen)):
      img, k = divmod(i, gen.per)
      rec = gen[i]
      np.testing.assert_array_equal(rec["codes"], codes[img])
      again = demo.GenSource(split, codes, relation_share=share, seed=3)[i]  # a pure function
      assert again["caption"] == rec["caption"]
      if not applies[img]:
        assert rec["caption"] == split.captions[img][k]
        continue
      m = _RELATION.fullmatch(rec["caption"])
      if m is None:
        assert share < 1.0 and rec["caption"] == split.captions[img][k]
        continue
      replaced += rec["caption"] != split.captions[img][k]
      c1, s1, rel, c2, s2 = m.groups()
      cells = {o.descriptor: o.cell for o in split.scenes[img].objects}
      assert shapes_text.RELATIONS[rel](cells[(c1, s1)], cells[(c2, s2)]), rec["caption"]
    n = sum(applies) * gen.per
    if share == 1.0:
      assert replaced >= 0.8 * n  # a fresh relation caption may equal the stored one
    else:
      assert 0.3 * n < replaced < 0.7 * n
  with pytest.raises(ValueError, match="relation_share must be in"):
    demo.GenSource(split, codes, relation_share=1.5)


def test_demo_cli_refuses_two_single_step_modes(tmp_path):
  proc = _demo_cli(f"--out={tmp_path}", f"--evaluate={ASSET}", f"--continue_from={ASSET}")
  assert proc.returncode != 0 and "--evaluate and --continue_from" in proc.stderr
  assert not list(tmp_path.iterdir())  # refused before anything is written


@pytest.mark.slow
def test_vq_training_reduces_the_reconstruction_error():
  cfg = vq.Config(codebook_size=32, codebook_dim=4, z_channels=8, base_channels=8,
                  ch_mult=(1, 2), num_res_blocks=1, norm_groups=4)
  images = world.render_batch(list(world.split_scenes("train", 8)), 32)
  before = vq_training.psnr(cfg, vq_training.init(cfg, 32), images)
  params = vq_training.train(cfg, images, steps=30, batch_size=8, lr=3e-3, warmup=2,
                             log=lambda m: None)
  assert vq_training.psnr(cfg, params, images) > before + 3.0
  codes = vq_training.encode(cfg, params, images)
  assert codes.shape == (8, 16 * 16) and codes.dtype == np.int32 and codes.max() < 32


def test_foreground_weights_weigh_the_pixels_off_the_background():
  scenes = list(world.split_scenes("train", 4))
  images = world.render_batch(scenes, 48)
  w = np.asarray(vq_training.foreground_weights(vq_training.to_unit(images), world.BACKGROUND,
                                                2.0))
  assert w.shape == (4, 48, 48, 1)
  off = np.abs(images.astype(int) - np.array(world.BACKGROUND)).sum(-1) >= 4
  np.testing.assert_array_equal(w[..., 0], np.where(off, 3.0, 1.0))
  assert 0.03 < off.mean() < 0.5  # shapes, with their anti-aliased edges, not the background


@pytest.mark.slow
def test_weighted_reconstruction_is_the_weighted_mean_squared_error():
  cfg = vq.Config(codebook_size=16, codebook_dim=4, z_channels=8, base_channels=8,
                  ch_mult=(1, 2), num_res_blocks=1, norm_groups=4)
  model = vq.Model(cfg)
  params = vq_training.init(cfg, 32)
  pixels = vq_training.to_unit(world.render_batch(list(world.split_scenes("train", 2)), 32))
  weights = vq_training.foreground_weights(pixels, world.BACKGROUND, 2.0)
  apply = lambda *a: model.apply({"params": params}, *a, method=vq.Model.loss_and_codes)
  _, (plain, _, _) = apply(pixels)
  _, (ones, _, _) = apply(pixels, np.ones((2, 32, 32, 1), np.float32))
  _, (weighted, _, _) = apply(pixels, weights)
  decoded = model.apply({"params": params}, pixels, method=lambda m, x: m.decode(m.encode(x)[0]))
  err = np.square(np.asarray(decoded, np.float32) - np.asarray(pixels))
  np.testing.assert_allclose(float(plain["reconstruction"]), err.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(ones["reconstruction"]), err.mean(), rtol=1e-5)
  np.testing.assert_allclose(float(weighted["reconstruction"]),
                             (err * np.asarray(weights)).mean(), rtol=1e-5)
  assert float(weighted["reconstruction"]) > float(plain["reconstruction"])
  with pytest.raises(ValueError, match="background colour"):
    vq_training.make_step(cfg, optax.adam(1e-3), foreground_weight=2.0)
  with pytest.raises(ValueError, match="foreground_weight must be >= 0"):
    vq_training.make_step(cfg, optax.adam(1e-3), foreground_weight=-1.0,
                          background=world.BACKGROUND)


def test_vq_readable_and_psnr_of_take_reconstructions_made_once():
  scenes = list(world.split_scenes("test", 10))
  images = world.render_batch(scenes)
  assert demo.vq_readable(images, scenes) >= 0.9  # the analyser reads clean renders
  assert demo.vq_readable(np.full_like(images, 235), scenes) == 0.0  # blank: nothing read
  noisy = np.clip(images.astype(int) + 8, 0, 255).astype(np.uint8)
  assert vq_training.psnr_of(noisy, images) < vq_training.psnr_of(images, images)
  with pytest.raises(ValueError, match="10 reconstructions but 9 scenes"):
    demo.vq_readable(images, scenes[:9])
  with pytest.raises(ValueError, match="differ in shape"):
    vq_training.psnr_of(images[:9], images)


def test_dead_code_restart_moves_only_the_dead_rows_onto_latents():
  cfg = vq.Config(codebook_size=16, codebook_dim=4, z_channels=8, base_channels=8,
                  ch_mult=(1, 2), num_res_blocks=1, norm_groups=4)
  params = vq_training.init(cfg, 32)
  before = np.asarray(params["quantize"]["embedding"])
  latents = np.asarray([[3.0, 0, 0, 0], [0, 0, -2.0, 0]], np.float32)
  out = vq_training.restart_dead_codes(params, np.array([1, 5]), latents,
                                       np.random.default_rng(0))
  after = np.asarray(out["quantize"]["embedding"])
  np.testing.assert_array_equal(np.asarray(params["quantize"]["embedding"]), before)  # unchanged
  keep = np.setdiff1d(np.arange(16), [1, 5])
  np.testing.assert_array_equal(after[keep], before[keep])
  for row in after[[1, 5]]:  # within the 1% noise of one of the normalised latents
    assert min(np.abs(row - t).max() for t in ([1, 0, 0, 0], [0, 0, -1, 0])) < 0.05


def test_dead_codes_restart_on_the_latents_the_codebook_represents_worst():
  """k-means++ seeding: latents a live code already matches are never drawn, so a batch that is
  mostly background does not pull the restarts onto the background."""
  cfg = vq.Config(codebook_size=4, codebook_dim=2, z_channels=8, base_channels=8,
                  ch_mult=(1, 2), num_res_blocks=1, norm_groups=4)
  params = vq_training.init(cfg, 32)
  emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]], np.float32)
  params = {**params, "quantize": {**params["quantize"], "embedding": emb}}
  background = np.tile([[2.0, 0.0]], (999, 1))  # code 0 exactly, after normalisation
  latents = np.concatenate([background, [[-1.0, 0.0]]]).astype(np.float32)
  out = vq_training.restart_dead_codes(params, np.array([2, 3]), latents,
                                       np.random.default_rng(0))
  after = np.asarray(out["quantize"]["embedding"])
  np.testing.assert_array_equal(after[:2], emb[:2])
  for row in after[2:]:
    assert np.abs(row - [-1.0, 0.0]).max() < 0.05, after


@pytest.mark.slow
def test_dead_code_restarts_keep_more_of_the_codebook_in_use():
  cfg = vq.Config(codebook_size=64, codebook_dim=4, z_channels=8, base_channels=8,
                  ch_mult=(1, 2), num_res_blocks=1, norm_groups=4)
  images = world.render_batch(list(world.split_scenes("train", 16)), 32)
  used = {}
  for every in (0, 5):
    params = vq_training.train(cfg, images, steps=30, batch_size=8, lr=3e-3, warmup=2,
                               restart_every=every, log=lambda m: None)
    used[every] = len(np.unique(vq_training.encode(cfg, params, images)))
  assert used[5] > used[0], used
  with pytest.raises(ValueError, match="restart_every"):
    vq_training.train(cfg, images, steps=3, restart_every=-1)


# --------------------------------------------------------------------------- shipped checkpoint


def test_shipped_checkpoint_is_the_default_and_small():
  assert loading.default_checkpoint() == str(ASSET)
  size = sum(p.stat().st_size for p in ASSET.rglob("*") if p.is_file())
  assert size <= 25 * 2**20, f"{ASSET} is {size / 2**20:.1f} MiB > 25 MiB"
  meta = json.loads((ASSET / "config.json").read_text())
  recipe = demo_shapes.get_config()
  assert meta["image_size"] == recipe.image_size and (ASSET / "tokenizer.json").is_file()


def test_sample_without_arguments_draws_the_demo_prompts(tmp_path):
  out = tmp_path / "samples"
  r = subprocess.run([sys.executable, "sample.py", f"--out={out}"], cwd=REPO,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  n = len(sample.DEMO_PROMPTS) * sample_config.get_config().t2i.num_images
  assert f"wrote {n} images" in r.stdout
  grid = np.asarray(Image.open(out / "grid.png").convert("RGB")).astype(np.float32)
  per = sample_config.get_config().t2i.num_images
  s = json.loads((ASSET / "config.json").read_text())["image_size"]  # the checkpoint's side
  rows = len(sample.DEMO_PROMPTS)
  assert grid.shape == (rows * s, per * s, 3)
  assert grid.std() > 10.0, "the grid is (nearly) constant"
  # Not just background: coloured (high-chroma) shape pixels in every image.
  for tile in grid.reshape(rows, s, per, s, 3).transpose(0, 2, 1, 3, 4).reshape(-1, s, s, 3):
    chroma = tile.max(-1) - tile.min(-1)
    assert (chroma > 80).mean() > 0.01


def test_checkpoint_recommends_its_sampling_settings():
  """sample.py's --cfg and --temperature defaults: the checkpoint's config.json
  sampling.cfg_weight / sampling.temperature, else the reference's 5 / 1."""
  defaults = sample_config.get_config().t2i
  assert defaults.cfg_weight is None and defaults.temperature is None
  assert image_ar.checkpoint_cfg_weight({}) == 5.0
  assert image_ar.checkpoint_temperature({"sampling": {"cfg_weight": 2.5}}) == 1.0
  assert image_ar.checkpoint_cfg_weight({"sampling": {"cfg_weight": 2.5}}) == 2.5
  assert image_ar.checkpoint_temperature({"sampling": {"temperature": 0.8}}) == 0.8
  with pytest.raises(ValueError, match="cfg_weight"):
    image_ar.checkpoint_cfg_weight({"sampling": {"cfg_weight": "high"}})
  with pytest.raises(ValueError, match="sampling.temperature"):
    image_ar.checkpoint_temperature({"sampling": {"temperature": -1}})
  meta = json.loads((ASSET / "config.json").read_text())
  assert image_ar.checkpoint_cfg_weight(meta) == meta["sampling"]["cfg_weight"]
  assert image_ar.checkpoint_temperature(meta) == meta["sampling"].get("temperature", 1.0)


def _demo_config(tmp_path, **chat):
  cfg = sample_config.get_config()
  cfg.out = str(tmp_path / "out")
  cfg.t2i.num_images = 1
  cfg.chat.max_new_tokens = 4
  cfg.chat.update(chat)
  return cfg


@pytest.mark.slow
def test_unknown_words_still_draw_and_questions_get_answers(tmp_path, capsys):
  cfg = _demo_config(tmp_path)
  # "zorblax" and the emoji are outside the world's vocabulary: byte-level BPE still encodes them.
  assert sample.run(cfg, sample.Request(prompts=["a zorblax red circle \N{GRINNING FACE}"])) == 0
  side = json.loads((ASSET / "config.json").read_text())["image_size"]
  assert Image.open(tmp_path / "out" / "000_00.png").size == (side, side)
  scene = world.Scene((world.Object("red", "circle", "large", 1, 1),))
  path = tmp_path / "scene.png"
  Image.fromarray(world.render(scene)).save(path)
  capsys.readouterr()
  assert sample.run(cfg, sample.Request(images=[str(path)],
                                        question="how many shapes are there?")) == 0
  answer = capsys.readouterr().out.strip().splitlines()[-1]
  assert answer.strip(), "empty answer"


def test_missing_image_and_directory_are_clear_errors(tmp_path):
  cfg = _demo_config(tmp_path)
  missing = tmp_path / "no_such.png"
  with pytest.raises(preprocess.BadImageError, match=f"{missing}.*No such file"):
    sample.run(cfg, sample.Request(images=[str(missing)], question="what colour is it?"))
  with pytest.raises(preprocess.BadImageError, match=f"{tmp_path}.*[Ii]s a directory"):
    sample.run(cfg, sample.Request(images=[str(tmp_path)], question="what colour is it?"))
  for bad in (missing, tmp_path):
    r = subprocess.run([sys.executable, "sample.py", f"--image={bad}", "--question=what?"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and str(bad) in r.stderr and "Traceback" not in r.stderr
