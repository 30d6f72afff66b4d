"""TFDS builders without TensorFlow: prepare from local files, read back with tfds.data_source."""

import sys

import numpy as np
import pytest

from janus_jax import errors
from janus_jax.data import builders
from janus_jax.data import preprocess
from janus_jax.data import synthetic


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  root = tmp_path_factory.mktemp("raw")
  return synthetic.write_raw_files(str(root), n=5)


def test_caption_folder_and_jsonl(raw, tmp_path):
  for source in (raw["folder"], raw["captions"]):
    data_dir = str(tmp_path / source.rsplit("/", 1)[-1])
    builders.prepare(builders.ImageCaptions, source, data_dir)
    src = builders.read_captions(data_dir)  # goes through tfds.data_source by name
    assert len(src) == 5
    recs = [src[i] for i in range(5)]
    assert all(isinstance(r["caption"], str) and r["caption"] for r in recs)
    sizes = sorted(preprocess.load_image(r["image"]).size for r in recs)
    assert sizes == [(20 + i, 16) for i in range(5)]  # the original encoded files, intact
  assert "tensorflow" not in sys.modules


def test_conversations_and_text(raw, tmp_path):
  builders.prepare(builders.Conversations, raw["conversations"], str(tmp_path / "c"))
  conv = builders.read_conversations(str(tmp_path / "c"))
  r = conv[0]
  assert r["roles"] == ["user", "assistant"] and len(r["images"]) == 1
  assert r["contents"][0].startswith("<image_placeholder>\n")
  builders.prepare(builders.PlainText, raw["text"], str(tmp_path / "t"))
  text = builders.read_text(str(tmp_path / "t"))
  assert len(text) == 5 and all(text[i]["text"] for i in range(5))
  assert "tensorflow" not in sys.modules


def test_missing_files_are_skipped_and_missing_source_is_an_error(raw, tmp_path):
  bad = tmp_path / "caps.jsonl"
  bad.write_text('{"image": "nope.png", "caption": "x"}\n'
                 f'{{"image": "{raw["folder"]}/img0.png", "caption": "y"}}\n')
  builders.prepare(builders.ImageCaptions, str(bad), str(tmp_path / "d"))
  src = builders.read_captions(str(tmp_path / "d"))
  assert len(src) == 1 and src[0]["caption"] == "y"
  with pytest.raises(errors.InputError, match="plain_text: source .*absent.txt does not exist"):
    builders.prepare(builders.PlainText, str(tmp_path / "absent.txt"), str(tmp_path / "e"))
  with pytest.raises(errors.InputError, match="not prepared"):
    builders.read_text(str(tmp_path / "nothing_here"))


def test_labelled_dataset_as_captions():
  class Fake:  # what a prepared classification source returns
    def __len__(self):
      return 2

    def __getitem__(self, i):
      return {"image": np.zeros((4, 4, 3), np.uint8), "label": i}

  src = builders.MapSource(Fake(), builders._LabelCaption(["tench", "great_white_shark"],
                                                          "image", "label"))
  assert src[1]["caption"] == "great white shark"
