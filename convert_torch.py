"""Converts a PyTorch Janus / Janus-Pro / JanusFlow checkpoint into an Orbax checkpoint.

  python convert_torch.py CHECKPOINT_DIR OUT_DIR [--dtype bfloat16|float32] [--overwrite]

CHECKPOINT_DIR holds `config.json` and `*.safetensors` or `pytorch_model*.bin` (sharded with an
index json or not), in the original DeepSeek layout or the transformers layout; the layout is
detected from the key names. OUT_DIR receives `config.json` (our model config) and `params/`
(Orbax); restore it with `janus_jax.convert.driver.load_converted(OUT_DIR, shardings)`.
"""

import argparse
import json
import pathlib
import sys

from janus_jax import cli
from janus_jax import errors
from janus_jax.convert import driver


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("checkpoint_dir", type=pathlib.Path)
  p.add_argument("out_dir", type=pathlib.Path)
  p.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default=None,
                 help="parameter dtype of the output (default: keep the checkpoint's)")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
  p.add_argument("--family", choices=driver.FAMILIES, default=None,
                 help="force a layout instead of detecting it from the key names")
  p.add_argument("--extra", type=pathlib.Path, default=None,
                 help="JSON with sizes config.json cannot express (a fixture.json: its 'extra')")
  p.add_argument("--chunk-mib", type=int, default=256,
                 help="output MiB per Orbax item: bounds the memory held at once")
  p.add_argument("--no-progress", action="store_true")
  return p.parse_args(argv)


def read_extra(path: pathlib.Path | None) -> dict | None:
  """The --extra JSON (its "extra" entry when it is a fixture.json), or an InputError."""
  if path is None:
    return None
  try:
    extra = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise errors.InputError(f"--extra {path}: not a readable JSON file ({e})") from None
  if not isinstance(extra, dict):
    raise errors.InputError(f"--extra {path}: expected a JSON object, got a "
                            f"{type(extra).__name__}")
  return extra.get("extra", extra)


@cli.guarded
def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  cli.quiet_logs()
  try:
    s = driver.convert(args.checkpoint_dir, args.out_dir, dtype=args.dtype,
                       overwrite=args.overwrite, family=args.family,
                       extra=read_extra(args.extra), chunk_bytes=args.chunk_mib << 20,
                       progress=not args.no_progress)
  except FileExistsError as e:
    raise errors.InputError(str(e)) from None
  print(f"skipped {len(s.skipped)} known-unused tensors: {', '.join(s.skipped) or '-'}")
  print(f"converted {s.tensors} tensors -> {s.params} parameters ({s.param_count:,} values, "
        f"{s.bytes_written / 2**30:.2f} GiB in {s.chunks} Orbax items) -> {s.out_dir}")
  print(f"time: {s.seconds:.1f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
