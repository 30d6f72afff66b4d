r"""Offline image tokenization: a caption dataset -> a dataset of VQ codes (or SDXL-VAE latents).

Generation training never runs the frozen image encoder: images are encoded once here.

  python -m janus_jax.data.tokenize_images --checkpoint /ckpt/janus_pro_1b_converted \
      --data_dir /data/tfds --name image_captions --out /data/codes/cc3m
  python -m janus_jax.data.tokenize_images --checkpoint /ckpt/janus_pro_1b_converted \
      --labelled imagenet2012 --data_dir /data/tfds --out /data/codes/imagenet
  python -m janus_jax.data.tokenize_images --vae /ckpt/sdxl_vae_converted \
      --data_dir /data/tfds --out /data/latents/cc3m          # JanusFlow: SDXL-VAE latents

Images get the generation preprocessing (short side to the model's size, centre crop, [-1, 1]);
batches are jitted and split over all local devices along the batch axis. Output: array_record
shards `<kind>-NNNNN-of-MMMMM.array_record` (each record an .npz with caption, key, and `codes`
(P,) int32 or `latents` (h, w, Z) float32 already x the VAE scaling factor) plus `meta.json`.
A shard file appears only once complete (written to a temp name, then renamed), so rerunning the
same command resumes with the missing shards; with several JAX processes, process i does shards
i, i + n, ... . Undecodable images are skipped, logged and counted in `meta.json`.
"""

import dataclasses
import io
import json
import logging
import os
from typing import Callable, Sequence

from array_record.python import array_record_module
import grain.python as grain
import numpy as np
from PIL import Image

from janus_jax.data import builders
from janus_jax.data import preprocess


def encode_record(caption: str, key: str, **arrays) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, caption=np.asarray(caption), key=np.asarray(key), **arrays)
  return buf.getvalue()


def decode_record(data: bytes) -> dict:
  """One stored record -> {"caption", "key", "codes" | "latents"} (the pipeline's gen record)."""
  with np.load(io.BytesIO(data), allow_pickle=False) as z:
    out = {k: z[k] for k in z.files}
  out["caption"], out["key"] = str(out["caption"]), str(out["key"])
  return out


def read(out_dir: str) -> builders.MapSource:
  """The written dataset as a random-access source of generation records."""
  meta_path = os.path.join(out_dir, "meta.json")
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{meta_path} missing: {out_dir} is not a tokenize_images output")
  with open(meta_path) as f:
    meta = json.load(f)
  files = [os.path.join(out_dir, shard_name(meta["kind"], i, meta["shards"]))
           for i in range(meta["shards"])]
  missing = [p for p in files if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f"{len(missing)} shard(s) not written yet, e.g. {missing[0]}; rerun "
                            "tokenize_images to finish")
  return builders.MapSource(grain.ArrayRecordDataSource(files), decode_record)


def shard_name(kind: str, i: int, n: int) -> str:
  return f"{kind}-{i:05d}-of-{n:05d}.array_record"


@dataclasses.dataclass(frozen=True)
class Encoder:
  """A batched image encoder: `fn(pixels (B,S,S,3) in [-1,1]) -> (B, ...)` numpy, and its name."""
  kind: str  # "codes" or "latents": the record field
  fn: Callable[[np.ndarray], np.ndarray]
  image_size: int


def _sharded_jit(apply, params):
  """jit `apply(params, pixels)` with the batch split over all local devices."""
  import jax  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), ("batch",))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = jax.device_put(params, replicated)
  fn = jax.jit(apply, in_shardings=(replicated, batch))
  n_dev = len(jax.local_devices())

  def run(pixels: np.ndarray) -> np.ndarray:
    b = len(pixels)
    pad = -b % n_dev  # the batch axis must divide over the devices
    if pad:
      pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, 0)])
    return np.asarray(fn(params, pixels))[:b]
  return run


def vq_encoder(config, params, image_size: int = 384) -> Encoder:
  """VQ codes (B, h*w) int32 with `janus_jax.models.vq` (`params` = gen_vision_model subtree)."""
  from janus_jax.models import vq  # pylint: disable=g-import-not-at-top
  model = vq.Model(config)
  apply = lambda p, x: model.apply({"params": p}, x, method=vq.Model.encode)[1]  # noqa: E731
  return Encoder("codes", _sharded_jit(apply, params), image_size)


def vae_encoder(config, params, image_size: int = 384) -> Encoder:
  """SDXL-VAE posterior means x scaling factor (B, h, w, Z) float32 (JanusFlow flow targets)."""
  from janus_jax.models import vae  # pylint: disable=g-import-not-at-top

  model = vae.Model(config)

  def apply(p, x):
    mean, _ = model.apply({"params": p}, x, method=vae.Model.encode)
    return vae.from_vae_latents(config, mean.astype("float32"))
  return Encoder("latents", _sharded_jit(apply, params), image_size)


def run(source, encoder: Encoder, out_dir: str, *, batch_size: int = 32, shard_size: int = 1024,
        process_index: int = 0, process_count: int = 1, progress: bool = True) -> dict:
  """Encodes every record of `source` ({"image", "caption", "key"?}) into `out_dir`.

  Returns the meta dict (also written to meta.json): kind, shards, records, bad, image_size.
  """
  os.makedirs(out_dir, exist_ok=True)
  n = len(source)
  shards = max(1, -(-n // shard_size))
  meta = {"kind": encoder.kind, "shards": shards, "records": n, "image_size": encoder.image_size,
          "shard_size": shard_size}
  meta_path = os.path.join(out_dir, "meta.json")
  if os.path.isfile(meta_path):
    with open(meta_path) as f:
      old = json.load(f)
    if {k: old.get(k) for k in meta} != meta:
      raise ValueError(f"{out_dir} holds a different tokenization {old}; not resuming into it")
  with open(meta_path, "w") as f:
    json.dump(meta, f)
  todo = [i for i in range(process_index, shards, process_count)
          if not os.path.isfile(os.path.join(out_dir, shard_name(encoder.kind, i, shards)))]
  bar = None
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=sum(min(shard_size, n - i * shard_size) for i in todo),
                    desc=f"tokenize -> {out_dir}", unit="img")
  bad = 0
  for i in todo:
    bad += _write_shard(source, encoder, out_dir, i, shards, range(i * shard_size,
                                                                  min(n, (i + 1) * shard_size)),
                        batch_size, bar)
  if bar is not None:
    bar.close()
  bad_path = os.path.join(out_dir, f"bad-{process_index}.json")
  prev = {"bad": 0}
  if os.path.isfile(bad_path):
    with open(bad_path) as f:
      prev = json.load(f)
  with open(bad_path, "w") as f:
    json.dump({"bad": prev["bad"] + bad}, f)
  return {**meta, "bad": prev["bad"] + bad}


def _write_shard(source, encoder: Encoder, out_dir: str, shard: int, shards: int,
                 indices: Sequence[int], batch_size: int, bar) -> int:
  final = os.path.join(out_dir, shard_name(encoder.kind, shard, shards))
  tmp = final + ".tmp"
  writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
  bad = 0
  pending = []  # (caption, key, pixels)

  def flush():
    if not pending:
      return
    out = encoder.fn(np.stack([p for _, _, p in pending]))
    for (caption, key, _), value in zip(pending, out):
      writer.write(encode_record(caption, key, **{encoder.kind: value}))
    pending.clear()

  for idx in indices:
    rec = source[idx]
    key = str(rec.get("key") or idx)
    try:
      if isinstance(rec["image"], np.ndarray):  # decoded by a TFDS Image feature
        img = Image.fromarray(rec["image"].astype(np.uint8)).convert("RGB")
      else:
        img = preprocess.load_image(rec["image"], name=key)
      pending.append((rec["caption"], key, preprocess.generation_pixels(img, encoder.image_size)))
    except preprocess.BadImageError as e:
      bad += 1
      logging.warning("tokenize_images: skipping record %d: %s", idx, e)
    if len(pending) == batch_size:
      flush()
    if bar is not None:
      bar.update(1)
  flush()
  writer.close()
  os.replace(tmp, final)
  return bad


def _load_encoder(args) -> Encoder:
  from janus_jax.convert import driver  # pylint: disable=g-import-not-at-top
  path = args.vae or args.checkpoint
  config, params = driver.load_converted(path)
  if args.vae:
    return vae_encoder(config, params, args.image_size)
  if not hasattr(config, "vq"):
    raise ValueError(f"{path} is not a converted Janus checkpoint (no VQ tokenizer); "
                     "JanusFlow needs --vae")
  return vq_encoder(config.vq, params["gen_vision_model"], args.image_size)


def main(argv=None):
  import argparse  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--checkpoint", help="converted Janus checkpoint (VQ codes)")
  ap.add_argument("--vae", help="converted SDXL VAE (JanusFlow latents) instead of VQ codes")
  ap.add_argument("--data_dir", help="TFDS data_dir of the prepared input dataset")
  ap.add_argument("--name", default="image_captions", help="prepared image-caption dataset")
  ap.add_argument("--labelled", help="a classification dataset instead (class name = caption)")
  ap.add_argument("--split", default="train")
  ap.add_argument("--out", required=True)
  ap.add_argument("--image_size", type=int, default=384)
  ap.add_argument("--batch_size", type=int, default=32)
  ap.add_argument("--shard_size", type=int, default=1024)
  args = ap.parse_args(argv)
  if not (args.checkpoint or args.vae):
    ap.error("give --checkpoint (VQ codes) or --vae (latents)")
  import jax  # pylint: disable=g-import-not-at-top
  if args.labelled:
    source = builders.read_labelled_as_captions(args.labelled, args.data_dir, args.split)
  else:
    source = builders.read_captions(args.data_dir, args.name, args.split)
  meta = run(source, _load_encoder(args), args.out, batch_size=args.batch_size,
             shard_size=args.shard_size, process_index=jax.process_index(),
             process_count=jax.process_count())
  print(json.dumps(meta))


if __name__ == "__main__":
  main()
