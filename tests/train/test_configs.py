"""Stage recipes: every regex matches real parameter paths of the full-size models (shapes only,
via jax.eval_shape) and each stage freezes what its paper says."""

import importlib

import flax.linen as nn
import jax
import pytest

from janus_jax import sharding
from janus_jax.train import optim
from janus_jax.train import trainer
from tests.train import helpers


def _frozen_tops(config):
  _, _, init = trainer.build_model(config)
  params = nn.unbox(jax.eval_shape(init, jax.random.key(0)))
  _, labels, _ = optim.make(config.optim, params)  # raises on a regex that matches nothing
  frozen = set(optim.frozen_paths(labels))
  tops = {}
  for p, _ in jax.tree_util.tree_flatten_with_path(labels)[0]:
    path = optim.path_str(p)
    top = path.split("/")[0]
    tops.setdefault(top, set()).add(path in frozen)
  return {t: (True if v == {True} else False if v == {False} else "mixed") for t, v in tops.items()}


def _recipe(name, arg):
  return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.parametrize("arg,frozen,trained", [
    ("stage1", {"language_model", "vision_model", "gen_vision_model"},
     {"aligner", "gen_aligner", "gen_embed", "gen_head"}),
    ("stage2", {"vision_model", "gen_vision_model"}, {"language_model", "gen_head", "aligner"}),
    ("stage3", {"gen_vision_model"}, {"vision_model", "language_model"}),
])
def test_janus_pro_stages(arg, frozen, trained):
  tops = _frozen_tops(_recipe("train_janus_pro", arg))
  assert {t for t, f in tops.items() if f is True} == frozen
  assert all(tops[t] is False for t in trained)


@pytest.mark.parametrize("arg,frozen", [
    ("stage1", {"language_model", "vision_und_enc_model"}),
    ("stage2", {"vision_und_enc_model"}),
    ("stage3", set()),
])
def test_janusflow_stages(arg, frozen):
  config = _recipe("train_janusflow", arg)
  tops = _frozen_tops(config)
  assert {t for t, f in tops.items() if f is True} == frozen
  assert tops["repa_projector"] is False and tops["vision_gen_dec_model"] is False
  assert config.optim.b1 == 0.9 and config.optim.b2 == 0.95 and config.optim.weight_decay == 0


@pytest.mark.slow
def test_full_size_stage2_step_traces():
  """The Janus-Pro-1B stage-2 step on a packed 4096-token row (576 image codes) type-checks."""
  config = _recipe("train_janus_pro", "stage2")
  config.data.update(source="synthetic", batch_size=1, seq_len=4096, gen_tokens=576)
  s = trainer.setup(config, jax.devices()[:1])
  batch = next(trainer.make_data(config, s.module))
  step = trainer.train_steps.train_step
  terms = trainer.train_steps.bind_terms(s.module, s.family, config)
  abstract_batch = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  with sharding.activate(s.mesh, s.rules):
    state, m = jax.eval_shape(
        lambda st, b, r: step(st, b, r, terms_fn=terms, tx=s.tx,
                              trainable=optim.trainable_mask(s.labels), config=config),
        s.abstract_state, abstract_batch, jax.random.key(0))
  assert m["loss"].shape == () and "loss_gen" in m
  assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(s.abstract_state)
