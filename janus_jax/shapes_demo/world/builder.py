"""TFDS builder `shapes_world`: the shapes world as array_record files, readable without TensorFlow.

    python -m janus_jax.shapes_demo.world.builder --data_dir ~/tensorflow_datasets [--config tiny]

then `tfds.data_source("shapes_world", data_dir=...)` or `builder.as_data_source()` gives random
access per split (grain reads it). Records:
  image        uint8 (S, S, 3) Tensor, zlib-compressed (no tfds Image feature: that needs TF)
  captions     Sequence(Text): captions in distinct styles (`text.STYLES`)
  questions    Sequence(Text), answers Sequence(Text): aligned question/answer pairs
  scene        Text: the scene as JSON (`world.Scene.from_json`), the ground truth
  num_objects  int32
Text features come back as bytes. The scenes of a split are `world.split_scenes(split, n, seed)`:
test holds only held-out compositions (see `world`), so ShapesEval can rebuild them without files.
"""

import argparse
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from janus_jax.data import builders
from janus_jax.shapes_demo.world import text
from janus_jax.shapes_demo.world import world


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """Split sizes, image side, seed and how many captions / QA pairs each record carries."""
  image_size: int = 64
  num_train: int = 20000
  num_validation: int = 500
  num_test: int = 500
  seed: int = 0
  num_captions: int = 3
  num_qa: int = 4
  jitter: float = 0.0


class ShapesWorld(builders.ArrayRecordBuilder):
  """Procedurally generated shapes images with captions and question/answer pairs."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      ShapesConfig(name="default", description="64x64, 20000 train / 500 validation / 500 test"),
      ShapesConfig(name="dense_qa", num_qa=8,
                   description="as default, with up to 8 QA pairs per image"),
      ShapesConfig(name="dense_qa48", num_qa=8, image_size=48,
                   description="as dense_qa at 48x48, where each 16-pixel grid cell is 2x2 tokens "
                               "of an 8x downsampling VQ (the demo recipe)"),
      ShapesConfig(name="tiny", description="for tests", num_train=32, num_validation=8,
                   num_test=8),
      ShapesConfig(name="tiny48", description="tiny at 48x48 (the demo's smoke run)",
                   image_size=48, num_train=32, num_validation=8, num_test=8),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "questions": tfds.features.Sequence(tfds.features.Text()),
            "answers": tfds.features.Sequence(tfds.features.Text()),
            "scene": tfds.features.Text(),
            "num_objects": tfds.features.Tensor(shape=(), dtype=np.int32),
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    sizes = {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split: str, num: int):
    cfg = self.builder_config
    yield from examples(split, num, cfg.seed, image_size=cfg.image_size, jitter=cfg.jitter,
                        num_captions=cfg.num_captions, num_qa=cfg.num_qa)


def examples(split: str, num: int, seed: int = 0, *, image_size: int = 64, jitter: float = 0.0,
             num_captions: int = 3, num_qa: int = 4):
  """Yields (key, record) for the first `num` scenes of `split` (the builder's records)."""
  for i, scene in enumerate(world.split_scenes(split, num, seed, jitter=jitter)):
    # Texts get their own stream per record, so one record never shifts another's texts.
    rng = np.random.default_rng([seed, world.SPLITS.index(split), i, 1])
    qa = text.qa_pairs(scene, rng, num_qa)
    yield i, {
        "image": world.render(scene, image_size),
        "captions": text.captions(scene, rng, num_captions),
        "questions": [q for q, _ in qa],
        "answers": [a for _, a in qa],
        "scene": scene.to_json(),
        "num_objects": np.int32(len(scene.objects)),
    }


def prepare(data_dir: str, config: str = "default") -> ShapesWorld:
  """Generates the dataset into `data_dir` (a no-op when already there) and returns its builder."""
  builder = ShapesWorld(config=config, data_dir=data_dir)
  builder.download_and_prepare()
  return builder


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description="Generate the shapes_world TFDS dataset.")
  p.add_argument("--data_dir", required=True, help="TFDS data directory to write into")
  p.add_argument("--config", default="default",
                 choices=[c.name for c in ShapesWorld.BUILDER_CONFIGS])
  args = p.parse_args(argv)
  builder = prepare(args.data_dir, args.config)
  for split, info in builder.info.splits.items():
    print(f"{split}: {info.num_examples} examples")
  print(f"written to {builder.data_dir}")


if __name__ == "__main__":
  main()
