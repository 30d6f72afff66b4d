"""The floor under one CPU decode step of `sample_bench.py`: its weight GEMMs and nothing else.

  python -m bench.probes.decode_floor          # "mid" config, 8 and 4 rows, one thread

A decode step of the sampler multiplies every LLM layer's weights (q/k/v/o, gate/up, down) and
the generation head by a few rows (2 per image with guidance). This times exactly those
matrix products, with the bench config's shapes, in a jitted `fori_loop` like the sampler's (the
kernels packed for the CPU panel product, `kernels.cpu`, as the sampler packs them; `--xla`
keeps them whole for XLA's own products, and `--xla --ynn` adds XLA's default YNNPACK dots),
and the time numpy takes to stream the same bytes once.
Whatever the sampler spends above the GEMM time goes to attention over the cache, norms, RoPE,
the embedding and the sampling itself.
"""

import argparse
import os
import sys
import time

import numpy as np


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--rows", default="8,4", help="LLM rows per step (8 = 4 images with CFG)")
  ap.add_argument("--steps", type=int, default=64, help="decode steps per timed call")
  ap.add_argument("--threads", type=int, default=1,
                  help="XLA CPU threads and pinned cores (as sample_bench)")
  ap.add_argument("--repeats", type=int, default=3, help="timed calls (best counts)")
  ap.add_argument("--xla", action="store_true",
                  help="XLA's products on whole kernels instead of the CPU panel product (the "
                       "default, as the sampler's)")
  ap.add_argument("--ynn", action="store_true",
                  help="compile with XLA's default YNNPACK dots (the sampler turns them off)")
  args = ap.parse_args(argv)
  rows = [int(r) for r in args.rows.split(",")]
  for name, value in (("--steps", args.steps), ("--repeats", args.repeats), ("--rows", min(rows))):
    if value < 1:
      raise SystemExit(f"error: {name} must be >= 1, got {value}")
  from bench import sample_bench  # noqa: PLC0415
  cpus = sample_bench.limit_cpus(args.threads)  # before jax initialises its CPU backend
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from janus_jax.kernels import cpu  # noqa: PLC0415
  from janus_jax.models import layers  # noqa: PLC0415
  from janus_jax.sampling import image_ar  # noqa: PLC0415

  c = sample_bench.bench_config("mid")
  d, f, num_layers = c.llm.hidden_size, c.llm.intermediate_size, c.llm.num_layers
  attn = c.llm.num_heads * c.llm.head_dim
  kv = c.llm.num_kv_heads * c.llm.head_dim
  e, v = c.gen_head.image_token_embed, c.gen_head.image_token_size
  key = iter(jax.random.split(jax.random.key(0), 64))
  # Per-layer matrices, as the sampler holds them after `llama.split_layers`: a scan over
  # stacked weights would copy each layer's slice out of the stack every step.
  shapes = {"qkv": (d, attn + 2 * kv), "o": (attn, d), "gate_up": (d, 2 * f), "down": (f, d)}
  init = lambda s: jax.random.normal(next(key), s, jnp.float32) * s[0] ** -0.5  # noqa: E731
  w = {"layers": [{k: init(s) for k, s in shapes.items()} for _ in range(num_layers)],
       "head0": init((d, e)), "head1": init((e, v))}
  nbytes = sum(x.size * 4 for x in jax.tree.leaves(w))
  # ... and, as the sampler lays them out on CPU, packed in panels.
  panels = not args.xla
  if panels and not cpu.available():
    print(f"CPU panel product unavailable ({cpu.unavailable_reason()}): XLA's products")
    panels = False
  if panels:
    w = jax.tree.map(lambda a: cpu.Panels.pack(a, 1), w)
  mm = lambda x, k: layers.einsum("MD,DN->MN", x, k)  # noqa: E731

  def step(w, x):
    for lw in w["layers"]:
      x = x + mm(mm(x, lw["qkv"])[:, :attn], lw["o"])
      g = mm(x, lw["gate_up"])
      x = x + mm(jax.nn.silu(g[:, :f]) * g[:, f:], lw["down"])
    logits = mm(jax.nn.gelu(mm(x, w["head0"])), w["head1"])
    # Every logit feeds the next step, so no block of the head is dead code.
    return x + 1e-3 * logits.reshape(x.shape[0], -1, d).sum(1)

  loop = lambda w, x: jax.lax.fori_loop(0, args.steps, lambda i, x: step(w, x), x)  # noqa: E731
  run = jax.jit(loop) if args.ynn else image_ar.decode_jit()(loop)
  host = np.ones(nbytes // 4, np.float32)
  best = min(_timed(host.sum) for _ in range(args.repeats))
  print(f"config=mid weights={nbytes / 1e6:.0f} MB threads={args.threads} cpus={cpus} "
        f"layout={'panels' if panels else 'whole kernels'} ynn_dots={args.ynn}")
  print(f"numpy streams the weight bytes once: {best * 1e3:.2f} ms "
        f"({nbytes / best / 1e9:.1f} GB/s)")
  for n in rows:
    x = jnp.ones((n, d), jnp.float32)
    jax.block_until_ready(run(w, x))
    best = min(_timed(lambda: jax.block_until_ready(run(w, x))) for _ in range(args.repeats))
    print(f"rows={n}: weight GEMMs only {best / args.steps * 1e3:.2f} ms per decode step")


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


if __name__ == "__main__":
  main()
