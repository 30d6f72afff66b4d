r"""Input pipeline throughput: examples/s and packed tokens/s with 0, 1 and 2 grain workers.

  python bench/data_bench.py                      # tiny sizes (32 px images, 16 tokens/image)
  python bench/data_bench.py --full --batches 4   # real sizes (384 px, 576 tokens/image, L 4096)

Data: generated in memory (`janus_jax.data.synthetic`): understanding conversations with 1-2 PNG
images, pure text, generation captions with precomputed codes, mixed 5:1:4 (Janus-Pro stage 3).
Tokens counted are real (non-padding) packed tokens. The last line is `tokens_per_s=<x>` for the
best worker count.
"""

import argparse
import time

import grain.python as grain

from janus_jax.data import examples
from janus_jax.data import pipeline
from janus_jax.data import synthetic


def run(cfg: pipeline.Config, srcs, tok, batches: int, warmup: int = 2) -> tuple[float, float]:
  it = pipeline.make(srcs, tok, cfg, grain.NoSharding())
  for _ in range(warmup):  # worker start-up and first decodes are not steady state
    next(it)
  ex0, tok0 = it.stats["examples"], it.stats["tokens"]
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - start
  return (it.stats["examples"] - ex0) / dt, (it.stats["tokens"] - tok0) / dt


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--full", action="store_true", help="real image size and sequence length")
  ap.add_argument("--batches", type=int, default=20)
  ap.add_argument("--workers", default="0,1,2")
  ap.add_argument("--records", type=int, default=200)
  args = ap.parse_args()
  if args.full:
    ex = examples.Config(seq_len=4096, image_tokens=576, image_size=384, max_images_per_row=6)
    size, batch = (640, 480), 2
  else:
    ex = examples.Config(seq_len=256, image_tokens=16, image_size=32, max_images_per_row=4)
    size, batch = (48, 40), 8
  tok = synthetic.tiny_tokenizer()
  n = args.records
  srcs = [synthetic.und_records(n, size=size), synthetic.text_records(n),
          synthetic.gen_records(n, ex.image_tokens)]
  best = 0.0
  print(f"seq_len={ex.seq_len} image={ex.image_size}px tokens/image={ex.image_tokens} "
        f"rows={batch} ratios=5:1:4 batches={args.batches}")
  for w in [int(x) for x in args.workers.split(",")]:
    cfg = pipeline.Config(example=ex, batch_size=batch, ratios=(5, 1, 4), worker_count=w,
                          worker_buffer_size=4)
    eps, tps = run(cfg, srcs, tok, args.batches)
    print(f"workers={w}: examples_per_s={eps:.1f} tokens_per_s={tps:.0f}")
    best = max(best, tps)
  print(f"command: python bench/data_bench.py{' --full' if args.full else ''} "
        f"--batches {args.batches} --workers {args.workers}")
  print(f"tokens_per_s={best:.0f}")


if __name__ == "__main__":
  main()
