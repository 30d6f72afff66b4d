"""Training starts from a convert_torch.py output: the state's parameters are the checkpoint's."""

import json

import jax
import numpy as np
import pytest

from janus_jax.convert import driver
from janus_jax.train import trainer
from tests.train import helpers


@pytest.mark.slow
def test_init_from_converted_fixture(tmp_path, fixtures_dir):
  src = fixtures_dir / "janus_tiny"
  extra = json.loads((src / "fixture.json").read_text())["extra"]
  out = tmp_path / "converted"
  driver.convert(src, out, extra=extra, progress=False, log=lambda *a: None)
  _, want = driver.load_converted(out)
  config = helpers.tiny_config("janus", mesh=(2, 2, 2), init_from=str(out))
  s = trainer.setup(config)
  state = s.init_state()
  got = jax.device_get(state.params)
  flat_want = jax.tree_util.tree_leaves_with_path(want)
  assert len(flat_want) == len(jax.tree_util.tree_leaves(got))
  for (path, w), g in zip(flat_want, jax.tree_util.tree_leaves(got)):
    np.testing.assert_array_equal(np.asarray(w), g, err_msg=str(path))
  # Born sharded on the (2, 2, 2) mesh like a fresh init.
  kernel = state.params["language_model"]["model"]["layers"]["mlp"]["up_proj"]["kernel"]
  assert kernel.sharding.spec == s.state_shardings.params["language_model"]["model"][
      "layers"]["mlp"]["up_proj"]["kernel"].spec
