r"""Training throughput: tokens/s and MFU of the jitted train step for a config and mesh.

  python bench/train_bench.py --config configs/train_tiny.py:janus --steps 10
  python bench/train_bench.py --config configs/train_janus_pro.py:stage2 \
      --config.data.source=synthetic --config.data.batch_size=8 --config.data.gen_tokens=576 \
      --config.mesh='(1,-1,1)' --steps 20

Feeds synthetic packed batches of the configured shape (data.batch_size x data.seq_len), so the
number measures the step, not the input pipeline. MFU = tokens/s x model FLOPs per token
(6 x matmul parameters + 12 x layers x width x seq_len, vision towers not counted) over the
devices' dense bf16 peak (`janus_jax.train.metrics.PEAK_FLOPS`; CPU peak is a rough guess,
override it with --peak_tflops). The last line is `tokens_per_s=<x> mfu=<y>`.
"""

import sys
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from janus_jax import sharding
from janus_jax.train import metrics
from janus_jax.train import trainer

config_flags.DEFINE_config_file("config", None, "Training config file (configs/train_*.py), "
                                "with --config.a.b=v overrides as in train.py.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after 2 untimed warm-up steps).")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Per-device peak TFLOP/s (default: table).")


def main(argv):
  del argv
  config = flags.FLAGS.config
  config.data.source = "synthetic"
  s = trainer.setup(config)
  data = trainer.make_data(config, s.module)
  batch = sharding.global_batch(next(data), s.mesh)
  step = trainer.make_step(config, s, batch)
  state = s.init_state()
  for i in range(2):  # compile + one warm step
    state, m = step(state, batch, jax.random.key(i))
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for i in range(_STEPS.value):
    state, m = step(state, batch, jax.random.key(i))
  jax.block_until_ready((state, m))
  dt = (time.perf_counter() - t0) / _STEPS.value
  tokens = config.data.batch_size * config.data.seq_len
  fpt = metrics.flops_per_token(s.abstract_state.params, trainer.llm_config(s.module),
                                config.data.seq_len)
  peak = (_PEAK.value * 1e12 if _PEAK.value else metrics.peak_flops()) * jax.device_count()
  tps = tokens / dt
  print(f"device={jax.devices()[0].device_kind} devices={jax.device_count()} "
        f"mesh={dict(s.mesh.shape)} batch={config.data.batch_size}x{config.data.seq_len} "
        f"step_s={dt:.4f} flops_per_token={fpt:.3e} loss={float(m['loss']):.4f}")
  print(f"command: python {' '.join(sys.argv)}")
  print(f"tokens_per_s={tps:.1f} mfu={tps * fpt / peak:.4f}")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
