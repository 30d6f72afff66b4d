"""The sampling benchmark's transformers model decodes the grid it generates.

`bench/sample_bench.py --hf` times transformers' `generate(generation_mode="image")` plus
`decode_image_tokens`. transformers sizes its VQ grid from the vision tower's patch count, not
from `vq_config.num_patches`, so a bench config that left the tower at its own size generated
576 tokens and then had them refused by the decoder. This builds the bench's config at a small
grid and decodes a full grid of codes with transformers' own VQ model. (A grid of 4 would not
tell: the old 32-pixel tower had 4 x 4 patches.)
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bench import sample_bench  # noqa: E402  (after the skips)


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
                                        (["--check_tokens", "600"], "--check_tokens"),
                                        (["--segments", "0"], "--segments")])
def test_bad_arguments_are_refused_by_name(argv, flag):
  with pytest.raises(SystemExit, match=flag):
    sample_bench.main(argv)


def test_decode_traffic_counts_every_step_and_cache_stage():
  """The GPU floor's byte count, checked against a hand sum on the 7B shape (no weights made)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from janus_jax.models import janus  # noqa: PLC0415
  config = sample_bench.bench_config("janus_pro_7b")
  model = janus.Model(config, jnp.bfloat16, jnp.bfloat16)
  params = jax.eval_shape(lambda: sample_bench.init_generation_params(model, 576))
  c = config.llm
  weights, kv = sample_bench.decode_traffic(config, params, jnp.bfloat16, rows=32,
                                            prompt_len=16, num_tokens=576, segments=1)
  layer = 4 * c.hidden_size * c.num_heads * c.head_dim + 3 * c.hidden_size * c.intermediate_size
  d, v, e = c.hidden_size, config.image_token_size, config.gen_embed_dim
  norms = (2 * c.num_layers + 1) * d
  head = (d * d + d) + (d * v + v)  # gen_head: projector then vision head, with biases
  aligner = (e * d + d) + (d * d + d)
  assert weights == 575 * (c.num_layers * layer + norms + head + aligner) * 2
  slot = 32 * c.num_kv_heads * c.head_dim * 2 * c.num_layers * 2
  assert kv == 575 * 591 * slot  # one stage: every step reads the final 591-slot cache
  _, kv8 = sample_bench.decode_traffic(config, params, jnp.bfloat16, 32, 16, 576, segments=8)
  assert 0.5 * kv < kv8 < 0.6 * kv  # stages read about (1 + 1/8) / 2 of it
  assert sample_bench.decode_traffic(config, params, jnp.bfloat16, 32, 16, 1, 8) == (0, 0)
  line = sample_bench.floor_line(weights, kv8, 4.0e12, 3.0)
  assert line.startswith(f"memory floor: 7098 GB weights + {kv8 / 1e9:.0f} GB KV")
  assert f"= {(weights + kv8) / 4e12:.2f}s" in line
