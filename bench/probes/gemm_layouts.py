"""Weight layouts for the CPU decode step's layer GEMMs, and torch's time for the same products.

  python -m bench.probes.gemm_layouts    # "mid" LLM layers (8 x width 512, FFN 1408), 8 rows

`decode_floor.py` times the GEMMs with q/k/v and gate/up already fused; the sampler keeps the
checkpoint's separate matrices. This times the layer products (no generation head) four ways in
a jitted `fori_loop`, one thread: separate matrices as the sampler stores them (`x @ W`, W of
shape (in, out)), the same with W stored transposed (out, in) as torch does, q/k/v and gate/up
concatenated into one matrix each, and that transposed; then torch's `F.linear` on the
separate (out, in) matrices, eager, the way the reference's loop runs them.
"""

import argparse
import os
import sys
import time

import numpy as np


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--rows", type=int, default=8, help="LLM rows per step (8 = 4 images, CFG)")
  ap.add_argument("--steps", type=int, default=64, help="decode steps per timed call")
  args = ap.parse_args(argv)
  from bench import sample_bench  # noqa: PLC0415
  sample_bench.limit_cpus(1)  # one XLA thread on one pinned core, as torch below
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  d, f, layers = 512, 1408, 8
  keys = iter(jax.random.split(jax.random.key(0), 8))
  sep = {k: jax.random.normal(next(keys), (layers,) + s, jnp.float32) * 0.02
         for k, s in dict(q=(d, d), k=(d, d), v=(d, d), o=(d, d), gate=(d, f), up=(d, f),
                          down=(f, d)).items()}
  fused = {"qkv": jnp.concatenate([sep["q"], sep["k"], sep["v"]], -1), "o": sep["o"],
           "gate_up": jnp.concatenate([sep["gate"], sep["up"]], -1), "down": sep["down"]}
  t = lambda w: {k: jnp.swapaxes(v, 1, 2) for k, v in w.items()}  # noqa: E731

  def mm(transposed):
    return (lambda x, w: jnp.einsum("bi,oi->bo", x, w)) if transposed else (lambda x, w: x @ w)

  def separate_step(w, x, transposed):
    p = mm(transposed)

    def layer(x, lw):
      x = x + p(p(x, lw["q"]) + p(x, lw["k"]) + p(x, lw["v"]), lw["o"])
      return x + p(jax.nn.silu(p(x, lw["gate"])) * p(x, lw["up"]), lw["down"]), None
    return jax.lax.scan(layer, x, w)[0]

  def fused_step(w, x, transposed):
    p = mm(transposed)

    def layer(x, lw):
      qkv = p(x, lw["qkv"])
      x = x + p(qkv[:, :d] + qkv[:, d:2 * d] + qkv[:, 2 * d:], lw["o"])
      g = p(x, lw["gate_up"])
      return x + p(jax.nn.silu(g[:, :f]) * g[:, f:], lw["down"]), None
    return jax.lax.scan(layer, x, w)[0]

  x = jnp.ones((args.rows, d), jnp.float32)
  print(f"layers={layers} width={d} ffn={f} rows={args.rows} threads=1 (best of 3)")
  for name, fn, w, tr in (("separate (in, out), as the sampler", separate_step, sep, False),
                          ("separate (out, in)", separate_step, t(sep), True),
                          ("fused qkv / gate_up (in, out)", fused_step, fused, False),
                          ("fused qkv / gate_up (out, in)", fused_step, t(fused), True)):
    run = jax.jit(lambda w, x, fn=fn, tr=tr: jax.lax.fori_loop(
        0, args.steps, lambda i, x: fn(w, x, tr) * 0.5, x))
    jax.block_until_ready(run(w, x))
    best = min(_timed(lambda: jax.block_until_ready(run(w, x))) for _ in range(3))
    print(f"{name:40s} {best / args.steps * 1e3:6.2f} ms per step")

  try:
    import torch  # noqa: PLC0415
  except ImportError:
    print("torch not installed: no reference figure")
    return
  torch.set_num_threads(1)
  tw = {k: torch.tensor(np.asarray(v)) for k, v in t(sep).items()}
  lin = torch.nn.functional.linear

  def torch_step(x):
    for i in range(layers):
      x = x + lin(lin(x, tw["q"][i]) + lin(x, tw["k"][i]) + lin(x, tw["v"][i]), tw["o"][i])
      x = x + lin(torch.nn.functional.silu(lin(x, tw["gate"][i])) * lin(x, tw["up"][i]),
                  tw["down"][i])
    return x * 0.5

  with torch.no_grad():
    tx = torch.ones(args.rows, d)
    best = min(_timed(lambda: [torch_step(tx) for _ in range(args.steps)]) for _ in range(3))
  print(f"{'torch F.linear, separate (out, in)':40s} {best / args.steps * 1e3:6.2f} ms per step")


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


if __name__ == "__main__":
  main()
