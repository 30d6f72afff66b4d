"""The sampling benchmark's transformers model decodes the grid it generates.

`bench/sample_bench.py --hf` times transformers' `generate(generation_mode="image")` plus
`decode_image_tokens`. transformers sizes its VQ grid from the vision tower's patch count, not
from `vq_config.num_patches`, so a bench config that left the tower at its own size generated
576 tokens and then had them refused by the decoder. This builds the bench's config at a small
grid and decodes a full grid of codes with transformers' own VQ model. (A grid of 4 would not
tell: the old 32-pixel tower had 4 x 4 patches.)
"""

import os
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import sample_bench  # noqa: E402


@pytest.mark.parametrize("grid", [4, 24])
def test_hf_config_grid_matches_the_generated_tokens(grid):
  hf = sample_bench.hf_janus_config(sample_bench.bench_config("mid"), grid, grid * grid)
  assert hf.vq_config.num_patches == grid
  assert hf.vision_config.num_image_tokens == grid * grid


def test_hf_vq_decodes_a_full_grid():
  from transformers.models.janus import modeling_janus  # noqa: PLC0415
  grid = 6
  hf = sample_bench.hf_janus_config(sample_bench.bench_config("mid"), grid, grid * grid)
  vq = modeling_janus.JanusVQVAE(hf.vq_config).eval()
  with torch.inference_mode():
    pixels = vq.decode(torch.zeros((2, grid * grid), dtype=torch.long))
  assert pixels.shape == (2, 3, 16 * grid, 16 * grid)


@pytest.mark.parametrize("threads", [-1, 10_000])
def test_limit_cpus_refuses_a_bad_thread_count(threads):
  with pytest.raises(ValueError, match="--threads"):
    sample_bench.limit_cpus(threads)


@pytest.mark.parametrize("argv, flag", [(["--tokens", "500"], "--tokens"),
                                        (["--tokens", "-4"], "--tokens"),
                                        (["--repeats", "0"], "--repeats"),
                                        (["--images", "-2"], "--images"),
                                        (["--check_tokens", "600"], "--check_tokens")])
def test_bad_arguments_are_refused_by_name(argv, flag):
  with pytest.raises(SystemExit, match=flag):
    sample_bench.main(argv)
