"""ShapesEval through the real samplers, with a tiny randomly initialised Janus (plumbing only)."""

import dataclasses

import jax
import numpy as np
import pytest

from janus_jax.data import tokenizer as tokenizer_lib
from janus_jax.models import janus
from janus_jax.shapes_demo.eval import model_adapter
from janus_jax.shapes_demo.eval import shapes
from janus_jax.shapes_demo.world import vocab


@pytest.mark.slow  # compiles init, the guided image sampler and the text decoder: minutes on CPU
@pytest.mark.slow
def test_tiny_model_runs_through_shapes_eval(tmp_path):
  tok = tokenizer_lib.load(vocab.train_tokenizer(str(tmp_path), num_scenes=50))
  cfg = janus.get_config("tiny")
  cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, vocab_size=tok.vocab_size))
  model = janus.Model(cfg)
  params = model.init(jax.random.key(0), *janus.init_inputs(cfg),
                      method=janus.Model.init_all)["params"]
  adapter = model_adapter.ModelAdapter(model, params, tok, image_size=64, max_new_tokens=3)

  images = adapter.generate_images(["a red circle", "two blue squares and a green triangle"])
  assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
  answers = adapter.answer(images, ["how many shapes are there?", "what colour is the circle?"])
  assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

  gen, und = shapes.gen_items(1)[:2], shapes.und_items(2)
  results = shapes.evaluate(adapter, gen, und, log=lambda m: None)
  assert 0.0 <= results["gen_overall"] <= 1.0 and 0.0 <= results["und_accuracy"] <= 1.0
