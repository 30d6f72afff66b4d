r"""Trains Janus / Janus-Pro / JanusFlow (or the bare LLM) on any mesh, resumably.

  python train.py --config configs/train_tiny.py:janus --workdir /tmp/janus_tiny
  python train.py --config configs/train_janus_pro.py:stage2 --workdir gs://... \
      --config.init_from=/ckpt/janus_pro_1b_converted --config.mesh='(1,-1,1)'

Which model (init_from, model.config_json or a named variant) and which data: see
`janus_jax/train/config.py`. The trainer itself is `janus_jax.train.trainer.train`.

Multi-host: every process runs the same command; `jax.distributed.initialize` finds the cluster
on TPU / SLURM / GKE, or takes --coordinator, --num_processes and --process_id explicitly (also
how two CPU processes train together on one machine).
"""

import os
import sys

from absl import flags
import jax
from ml_collections import config_flags

from janus_jax import cli
from janus_jax import errors
from janus_jax.train import trainer

config_flags.DEFINE_config_file("config", None, "Training config file (configs/train_*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard events.")
flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process without a "
                    "cluster environment).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator).")

CLUSTER_VARIABLES = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS")


def main(argv):
  if len(argv) > 1:
    raise errors.InputError(f"unexpected arguments {argv[1:]}")
  cli.quiet_logs()
  f = flags.FLAGS
  if f.coordinator:
    jax.distributed.initialize(f.coordinator, f.num_processes, f.process_id)
  elif f.num_processes is None and any(k in os.environ for k in CLUSTER_VARIABLES):
    jax.distributed.initialize()
  result = trainer.train(f.config, f.workdir)
  # Every process ends its log with its result (the metrics are global: the same on each).
  print(f"done: {dict(sorted(result.items()))}", file=sys.stderr, flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
