r"""TFDS dataset builders (no TensorFlow) and readers producing the pipeline's raw records.

  python -m janus_jax.data.builders conversations /data/raw/chat.jsonl --data_dir /data/tfds
  python -m janus_jax.data.builders text /data/raw/docs.jsonl --data_dir /data/tfds
  python -m janus_jax.data.builders captions /data/raw/images --data_dir /data/tfds

TensorFlow is not a dependency: builders write `array_record` files and use only features whose
numpy path works without TF (TFDS's `Image` feature encodes with TF, so images are stored as their
original encoded bytes in a scalar object Tensor and decoded with PIL by the pipeline, which also
lets it skip and count corrupt files instead of failing the preparation).

Builders (prepare once, then read with `tfds.data_source`):
  ImageCaptions  folder of images with same-stem `.txt` captions, or JSONL {"image", "caption"}
  Conversations  JSONL {"images": [path, ...], "messages": [{"role", "content"}, ...]}
  PlainText      JSONL {"text"} or .txt (one document per non-empty line)
Relative image paths in JSONL resolve against the JSONL's folder. Missing files are logged and
skipped at preparation (a wrong path is not a data point); content is not judged here.

Raw records handed to the pipeline (after `read_*`):
  und:  {"images": [bytes | uint8 HWC], "roles": [str], "contents": [str],
         "image_paths": [str] (optional, names bad images in logs)}
  text: {"text": str}
  gen:  {"caption": str, "codes": int32 (P,)}            (codes dataset, see tokenize_images)
  image-caption (input of tokenize_images): {"image": bytes | uint8 HWC, "caption": str,
                                             "key": str (optional)}
"""

import argparse
import inspect
import json
import logging
import os
import sys
from typing import Any, Callable

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from janus_jax import cli
from janus_jax import errors

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_BYTES = dict(shape=(), dtype=np.object_)


def _read_jsonl(path: str):
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          yield n, json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{n}: not valid JSON: {e}") from e


def _read_bytes(path: str) -> bytes | None:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    logging.warning("skipping record: cannot read %s: %s", path, e)
    return None


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of this project's builders: array_record output, readable without TensorFlow."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS's own lookup imports the `importlib_resources` backport (needed only on Python < 3.9
    # and so not installed); the plain file path is what that lookup returns for a local module.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)


class _LocalBuilder(ArrayRecordBuilder):
  """Base: `source` is a local file or folder."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, source: str | None = None, **kwargs):
    self._source = source
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager
    if not self._source or not os.path.exists(self._source):
      raise FileNotFoundError(f"{self.name}: source not found: {self._source!r}")
    return {"train": self._generate_examples(self._source)}


class ImageCaptions(_LocalBuilder):
  """Image-caption pairs (generation data before VQ tokenization; captioning data)."""

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(**_BYTES),
        "caption": tfds.features.Text(),
        "key": tfds.features.Text(),
    }))

  def _generate_examples(self, source):
    if os.path.isdir(source):
      for name in sorted(os.listdir(source)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTS:
          continue
        txt = os.path.join(source, stem + ".txt")
        if not os.path.isfile(txt):
          logging.warning("skipping %s: no caption file %s", name, txt)
          continue
        data = _read_bytes(os.path.join(source, name))
        if data is not None:
          with open(txt, encoding="utf-8") as f:
            yield name, {"image": data, "caption": f.read().strip(), "key": name}
      return
    root = os.path.dirname(os.path.abspath(source))
    for n, rec in _read_jsonl(source):
      data = _read_bytes(os.path.join(root, rec["image"]))
      if data is not None:
        yield f"{n}", {"image": data, "caption": rec.get("caption", ""), "key": rec["image"]}


class Conversations(_LocalBuilder):
  """Image conversations: multi-turn, zero or more images per conversation."""

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "images": tfds.features.Sequence(tfds.features.Tensor(**_BYTES)),
        "roles": tfds.features.Sequence(tfds.features.Text()),
        "contents": tfds.features.Sequence(tfds.features.Text()),
        "image_paths": tfds.features.Sequence(tfds.features.Text()),
    }))

  def _generate_examples(self, source):
    root = os.path.dirname(os.path.abspath(source))
    for n, rec in _read_jsonl(source):
      paths = list(rec.get("images", []))
      images = [_read_bytes(os.path.join(root, p)) for p in paths]
      if any(im is None for im in images):
        continue
      messages = rec.get("messages") or rec.get("conversations") or []
      yield f"{n}", {"images": images,
                     "roles": [m["role"] for m in messages],
                     "contents": [m["content"] for m in messages],
                     "image_paths": paths}


class PlainText(_LocalBuilder):
  """Pure text documents."""

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _generate_examples(self, source):
    if source.endswith(".jsonl"):
      for n, rec in _read_jsonl(source):
        yield f"{n}", {"text": rec["text"]}
      return
    with open(source, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if line.strip():
          yield f"{n}", {"text": line.rstrip("\n")}


def prepare(builder_cls, source: str, data_dir: str) -> None:
  """Prepares `source` into `data_dir/<builder name>/1.0.0` (a no-op once done)."""
  if not os.path.exists(source):
    raise errors.InputError(f"{builder_cls.name}: source {source} does not exist")
  builder_cls(source=source, data_dir=data_dir).download_and_prepare()



# ---------------------------------------------------------------------------------------------
# Readers: random-access sources yielding the pipeline's raw records.
# ---------------------------------------------------------------------------------------------


class MapSource:
  """Random-access view applying a picklable `fn` to each record of `source`."""

  def __init__(self, source, fn: Callable[[Any], Any]):
    self.source, self.fn = source, fn

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int):
    return self.fn(self.source[index])

  def __repr__(self) -> str:
    return f"MapSource({self.source!r}, {getattr(self.fn, '__name__', self.fn)!r})"


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def data_source(name: str, data_dir: str | None = None, split: str = "train"):
  """`tfds.data_source` of a prepared dataset, with an error naming what is missing."""
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types (AssertionError, DatasetNotFoundError, ...)
    raise errors.InputError(
        f"TFDS dataset {name!r} split {split!r} is not prepared under data_dir={data_dir!r}: "
        f"{type(e).__name__}: {e}") from e


def caption_record(r) -> dict:
  return {"image": r["image"], "caption": _text(r["caption"]), "key": _text(r["key"])}


def conversation_record(r) -> dict:
  return {"images": list(r["images"]), "roles": [_text(x) for x in r["roles"]],
          "contents": [_text(x) for x in r["contents"]],
          "image_paths": [_text(x) for x in r["image_paths"]]}


def text_record(r) -> dict:
  return {"text": _text(r["text"])}


def read_captions(data_dir: str, name: str = "image_captions", split: str = "train"):
  return MapSource(data_source(name, data_dir, split), caption_record)


def read_conversations(data_dir: str, name: str = "conversations", split: str = "train"):
  return MapSource(data_source(name, data_dir, split), conversation_record)


def read_text(data_dir: str, name: str = "plain_text", split: str = "train"):
  return MapSource(data_source(name, data_dir, split), text_record)


class _LabelCaption:
  """Class-label datasets (imagenet2012) as image-caption pairs: the class name is the prompt."""

  def __init__(self, names, image_key: str, label_key: str):
    self.names, self.image_key, self.label_key = list(names), image_key, label_key

  def __call__(self, r) -> dict:
    name = self.names[int(r[self.label_key])]
    return {"image": r[self.image_key], "caption": name.replace("_", " ")}


def read_labelled_as_captions(name: str, data_dir: str | None = None, split: str = "train",
                              image_key: str = "image", label_key: str = "label"):
  """Any prepared classification dataset as image-caption pairs (stage-1 ImageNet prompts)."""
  src = data_source(name, data_dir, split)
  names = tfds.builder(name, data_dir=data_dir).info.features[label_key].names
  return MapSource(src, _LabelCaption(names, image_key, label_key))


# The command line's kinds -> builders (the datasets the trainer's config.data names).
KINDS = {"conversations": Conversations, "text": PlainText, "captions": ImageCaptions}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
      description="Prepares local data as a TFDS dataset (array_record, no TensorFlow) under "
                  "--data_dir, where the trainer (config.data.und / text) and tokenize_images "
                  "(captions) read it.")
  ap.add_argument("kind", choices=sorted(KINDS),
                  help="conversations: JSONL {images, messages}; text: JSONL {text} or .txt; "
                       "captions: a folder of images with same-stem .txt captions, or JSONL "
                       "{image, caption}")
  ap.add_argument("source", help="the JSONL / text file or image folder")
  ap.add_argument("--data_dir", required=True, help="TFDS data directory to write into")
  args = ap.parse_args(argv)
  cli.quiet_logs()
  builder = KINDS[args.kind]
  prepare(builder, args.source, args.data_dir)
  print(f"prepared {builder.name} from {args.source} under {args.data_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(cli.guarded(main)())
