"""Converter benchmark: time and peak resident memory on a Janus-Pro-1B-sized checkpoint.

  python bench/convert_bench.py [--keep] [--tmp DIR] [--dtype bfloat16|float32]

Writes a random checkpoint with the full Janus-Pro-1B key set and shapes in the original
DeepSeek layout (bf16, two safetensors shards + `model.safetensors.index.json`, ~4.2 GB; the
output adds as much again), runs `convert_torch.py` on it in a subprocess and reports the wall
time and the child's peak RSS against the target `1.5 x largest shard + 1 GiB`.

The key list comes from the fixture checkpoint (`../shared/fixtures/janus_tiny`, same
structure, tiny widths), with the layer/block loops extended to the full depth; every shape
comes from `jax.eval_shape` of the full-size model mapped back through the original table, so
the checkpoint is exactly what the converter must accept. The shards are written tensor by
tensor, so the writer itself stays small.
"""

import argparse
import json
import os
import pathlib
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

from janus_jax.convert import driver
from janus_jax.convert import janus as janus_table
from janus_jax.convert import rules
from janus_jax.models import janus

FIXTURE = REPO.parent / "shared" / "fixtures" / "janus_tiny"
GIB = 2 ** 30
_LOOPS = (r"language_model\.model\.layers\.(\d+)\.", r"vision_model\.vision_tower\.blocks\.(\d+)\.")


def _torch_shape(rule, slot_full, slot_tiny, torch_tiny):
  """The torch shape whose layout transform gives `slot_full`, learnt from the tiny pair."""
  if rule.transform == "none":
    return tuple(slot_full) if len(torch_tiny) == len(slot_tiny) else None
  if rule.transform == "conv":
    kh, kw, i, o = slot_full
    return (o, i, kh, kw)
  if rule.transform == "linear":  # (in..., out...) regrouped from torch (out, in)
    for k in range(1, len(slot_tiny)):
      if (int(np.prod(slot_tiny[:k])), int(np.prod(slot_tiny[k:]))) == tuple(torch_tiny[::-1]):
        return (int(np.prod(slot_full[k:])), int(np.prod(slot_full[:k])))
  return None


def janus_pro_1b_tensors() -> dict[str, tuple[int, ...]]:
  """Original-layout key -> shape of a full Janus-Pro-1B checkpoint (unused tensors included)."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  with safe_open(str(FIXTURE / "model.safetensors"), "np") as f:
    tiny_shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
  tiny_cfg = janus_table.config_from(json.loads((FIXTURE / "config.json").read_text()),
                                     tiny_shapes,
                                     json.loads((FIXTURE / "fixture.json").read_text())["extra"])
  full_cfg = janus.get_config("janus_pro_1b")
  tiny = rules.flatten_shapes(driver.abstract_params(janus_table, tiny_cfg))
  full = rules.flatten_shapes(driver.abstract_params(janus_table, full_cfg))
  depth = {_LOOPS[0]: full_cfg.llm.num_layers, _LOOPS[1]: full_cfg.vision.depth}
  scale = full_cfg.vision.width // tiny_cfg.vision.width
  out = {}
  for key, shape in tiny_shapes.items():
    loop = next((p for p in _LOOPS if re.match(p, key)), None)
    if loop is not None and re.match(loop, key).group(1) != "0":
      continue  # layer 0 stands for every layer
    names = [key] if loop is None else [
        re.sub(loop, lambda m, i=i: m.group(0).replace(f".{m.group(1)}.", f".{i}."), key, 1)
        for i in range(depth[loop])]
    hit = rules.rename(janus_table.RULES, key)
    if hit is None:  # known-unused: the SigLIP attention pool scales with the width
      full_shape = shape if "codebook_used" in key else tuple(
          d * scale if d > 1 else d for d in shape)
    else:
      rule, path, layer = hit
      drop = 1 if layer is not None else 0
      full_shape = _torch_shape(rule, full[path].shape[drop:], tiny[path].shape[drop:], shape)
      if full_shape is None:
        raise ValueError(f"cannot size {key} {shape} -> {'/'.join(path)}")
    out.update({n: full_shape for n in names})
  return out


def write_safetensors(path: pathlib.Path, shapes: dict, rng) -> int:
  """Streams random bf16 tensors into a safetensors file without holding them all."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  header, offset = {}, 0
  for k, s in shapes.items():
    n = int(np.prod(s)) * 2
    header[k] = {"dtype": "BF16", "shape": list(s), "data_offsets": [offset, offset + n]}
    offset += n
  blob = json.dumps(header).encode()
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob)
    for k, s in shapes.items():
      size = int(np.prod(s))
      for start in range(0, size, 1 << 26):  # 64M values at a time
        chunk = rng.standard_normal(min(1 << 26, size - start), np.float32) * 0.02
        f.write(chunk.astype(ml_dtypes.bfloat16).tobytes())
  return path.stat().st_size


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--tmp", type=pathlib.Path, default=None, help="parent of the temp dir")
  p.add_argument("--dtype", default=None, help="passed to convert_torch.py --dtype")
  p.add_argument("--keep", action="store_true", help="keep the temp files")
  args = p.parse_args()

  shapes = janus_pro_1b_tensors()
  total = sum(int(np.prod(s)) for s in shapes.values())
  print(f"Janus-Pro-1B original layout: {len(shapes)} tensors, {total / 1e9:.3f} B values")
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="convert_bench-", dir=args.tmp))
  try:
    src = tmp / "ckpt"
    src.mkdir()
    shutil.copy(FIXTURE / "config.json", src / "config.json")
    cfg = json.loads((src / "config.json").read_text())
    full = janus.get_config("janus_pro_1b")
    cfg["vision_config"]["params"].update(model_name="siglip_large_patch16_384", image_size=384)
    for name, c in (("aligner_config", full.aligner), ("gen_aligner_config", full.gen_aligner)):
      cfg[name]["params"].update(input_dim=c.input_dim, n_embed=c.n_embed)
    cfg["gen_head_config"]["params"].update(
        n_embed=full.gen_head.n_embed, image_token_embed=full.gen_head.image_token_embed,
        image_token_size=full.gen_head.image_token_size)
    cfg["gen_vision_config"]["params"].update(image_token_size=full.image_token_size,
                                              n_embed=full.gen_embed_dim)
    cfg["language_config"] = full.llm.to_hf()
    (src / "config.json").write_text(json.dumps(cfg, indent=1))

    keys = sorted(shapes)  # alphabetical: the LLM layers straddle the two shards
    sizes = np.cumsum([int(np.prod(shapes[k])) for k in keys])
    cut = int(np.searchsorted(sizes, sizes[-1] / 2)) + 1
    rng = np.random.default_rng(0)
    t0 = time.time()
    weight_map, shard_bytes = {}, []
    for i, group in enumerate((keys[:cut], keys[cut:])):
      name = f"model-{i + 1:05d}-of-00002.safetensors"
      shard_bytes.append(write_safetensors(src / name, {k: shapes[k] for k in group}, rng))
      weight_map.update({k: name for k in group})
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": sum(shard_bytes)}, "weight_map": weight_map}))
    print(f"wrote {sum(shard_bytes) / GIB:.2f} GiB in 2 shards "
          f"({', '.join(f'{b / GIB:.2f}' for b in shard_bytes)} GiB) in {time.time() - t0:.0f}s")

    cmd = [sys.executable, str(REPO / "convert_torch.py"), str(src), str(tmp / "out"),
           "--no-progress"] + (["--dtype", args.dtype] if args.dtype else [])
    print("command:", " ".join(cmd))
    t0 = time.time()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.time() - t0
    print(proc.stdout.strip())
    if proc.returncode:
      print(proc.stderr[-4000:], file=sys.stderr)
      raise SystemExit(f"conversion failed with status {proc.returncode}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB  # KiB on Linux
    largest, ckpt = max(shard_bytes) / GIB, sum(shard_bytes) / GIB
    target = 1.5 * largest + 1
    out_bytes = sum(f.stat().st_size for f in (tmp / "out").rglob("*") if f.is_file())
    print(f"checkpoint {ckpt:.2f} GiB, largest shard {largest:.2f} GiB, output "
          f"{out_bytes / GIB:.2f} GiB; peak RSS {peak:.2f} GiB = {peak / ckpt:.2f}x checkpoint "
          f"= {peak / largest:.2f}x largest shard; target {target:.2f} GiB: "
          f"{'MET' if peak < target else 'MISSED'}; {ckpt / wall * 1024:.0f} MiB/s")
    print(f"peak_rss_gib={peak:.2f} largest_shard_gib={largest:.2f} target_gib={target:.2f} "
          f"time_s={wall:.1f}")
  finally:
    if args.keep:
      print(f"kept {tmp}")
    else:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
