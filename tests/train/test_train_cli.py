"""`python train.py` end to end on the real data path, with a custom model config.

Generated raw files -> TFDS datasets (`builders`) -> VQ codes (`tokenize_images` with the custom
model's tiny random VQ) -> `train.py --config.data.source=pipeline --config.model.config_json=...`
as a subprocess: it trains, checkpoints, writes events, and a second run resumes from the saved
step. Both runs share a JAX compilation cache, so the second one mostly skips compiling.
"""

import ast
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from janus_jax.convert import driver
from janus_jax.data import builders
from janus_jax.data import synthetic
from janus_jax.data import tokenize_images
from janus_jax.models import janus
from janus_jax.models import vq
from janus_jax.train import trainer
from tests.train import helpers

GEN_SIZE = 16  # generation images: 16 px / 4 (the small VQ's downsampling) -> 16 codes = P


def small_config() -> janus.Config:
  """The tiny Janus with one LLM layer, one SigLIP layer and a 3-level VQ: a custom model no
  named variant describes."""
  cfg = janus.get_config("tiny")
  small_vq = dataclasses.replace(cfg.vq, base_channels=8, z_channels=8, ch_mult=(1, 1, 1),
                                 num_res_blocks=1, norm_groups=8)
  assert (GEN_SIZE // small_vq.downsample_factor) ** 2 == cfg.vision.num_patches
  return dataclasses.replace(
      cfg, vq=small_vq, vision=dataclasses.replace(cfg.vision, depth=1),
      llm=dataclasses.replace(cfg.llm, num_layers=1))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("train_cli")
  raw = synthetic.write_raw_files(str(root / "raw"), n=6)
  tfds_dir = str(root / "tfds")
  builders.prepare(builders.Conversations, raw["conversations"], tfds_dir)
  builders.prepare(builders.PlainText, raw["text"], tfds_dir)
  builders.prepare(builders.ImageCaptions, raw["folder"], tfds_dir)
  (root / "tok").mkdir()
  (root / "tok" / "tokenizer.json").write_text(synthetic.tokenizer_json())
  cfg = small_config()
  (root / "model.json").write_text(json.dumps(driver.config_to_json(cfg)))
  params = vq.Model(cfg.vq).init(jax.random.key(0), np.zeros((1, GEN_SIZE, GEN_SIZE, 3)),
                                 method=vq.Model.encode)["params"]
  meta = tokenize_images.run(builders.read_captions(tfds_dir),
                             tokenize_images.vq_encoder(cfg.vq, params, GEN_SIZE),
                             str(root / "tfds" / "codes"), batch_size=8, progress=False)
  assert meta["records"] == 6 and meta["bad"] == 0
  return root


def run_train(root: pathlib.Path, workdir: pathlib.Path, steps: int):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
         "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  cmd = [sys.executable, "train.py", "--config", "configs/train_tiny.py:janus",
         f"--workdir={workdir}", "--config.data.source=pipeline",
         f"--config.data.data_dir={root / 'tfds'}", "--config.data.gen=codes",
         f"--config.data.tokenizer={root / 'tok'}",
         f"--config.model.config_json={root / 'model.json'}",
         "--config.data.batch_size=2", "--config.data.seq_len=256", "--config.ckpt.every=2",
         f"--config.total_steps={steps}"]
  proc = subprocess.run(cmd, cwd=helpers.REPO, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stderr


@pytest.mark.slow
def test_train_cli_pipeline_custom_model_and_resume(prepared, tmp_path):
  log = run_train(prepared, tmp_path, steps=2)
  ckpts = tmp_path / "checkpoints"
  assert (ckpts / "2" / "state").is_dir() and (ckpts / "2" / "data").is_dir()
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
  assert "resumed from step" not in log
  # The saved model is the custom one (one stacked LLM layer), not the named "tiny" (two).
  meta = ocp.StandardCheckpointer().metadata(ckpts / "2" / "state").item_metadata.tree
  up = meta["params"]["language_model"]["model"]["layers"]["mlp"]["up_proj"]["kernel"]
  assert up.shape[0] == 1
  # The data state is the grain pipeline's, and every kind was read.
  data_state = json.loads(next((ckpts / "2" / "data").glob("*.json")).read_text())
  assert "loader" in data_state and data_state["stats"]["batches"] == 2
  done = ast.literal_eval(log.rpartition("done: ")[2].splitlines()[0])
  assert done["step"] == 2 and np.isfinite(done["loss"])
  # Generation rows (codes read back from tokenize_images) and the TFDS kinds reached the step.
  assert done["tokens_gen"] > 0 and done["tokens_und"] + done["tokens_text"] > 0, done

  log = run_train(prepared, tmp_path, steps=3)
  assert "resumed from step 2" in log
  assert (ckpts / "3" / "state").is_dir()
  data_state = json.loads(next((ckpts / "3" / "data").glob("*.json")).read_text())
  assert data_state["stats"]["batches"] == 3  # the data position continued, not restarted


def test_model_config_sources(prepared, tmp_path):
  m = helpers.tiny_config("janus").model
  named, family = trainer.model_config(m)
  assert family == "janus" and named == janus.get_config("tiny")
  m.config_json = str(prepared / "model.json")
  custom, family = trainer.model_config(m)
  assert family == "janus" and custom == small_config()
  m.family = "janusflow"
  with pytest.raises(ValueError, match="janusflow.*holds a 'janus' model"):
    trainer.model_config(m)
  (tmp_path / "bad.json").write_text(json.dumps({"vocab_size": 3}))
  m.family, m.config_json = "janus", str(tmp_path / "bad.json")
  with pytest.raises(ValueError, match="bad.json: expected a converted checkpoint"):
    trainer.model_config(m)
