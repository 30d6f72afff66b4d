"""The training input pipeline: mixture -> grain DataLoader (workers) -> packing -> batches.

    sources (und, text, gen) --Mixture(ratios)--> IndexSampler (shuffle, shard per host, seed)
      --RandomMap(examples.Builder) in worker processes--> per-example dicts or {"bad": reason}
      --main process: skip+count bad, first-fit packing--> fixed-shape batches

Batch format (what `next(iterator)` returns; B = `batch_size` rows on this host, L = `seq_len`,
M = `max_images_per_row`, S = `image_size`, P' = slots per image = P (Janus) or P + 1
(JanusFlow, whose BOI is a slot too)). All numpy:

  input_ids        (B, L)         int32   vocabulary ids; pad id on padding and at code slots
  targets          (B, L)         int32   target of position t (vocab id, or VQ code where
                                          `image_loss`); 0 where no loss applies
  text_loss        (B, L)         bool    CE through lm_head on `targets` here (answers + their EOS
                                          for understanding, all text after BOS for pure text)
  image_loss       (B, L)         bool    CE through gen_head on `targets` here (generation: BOI and
                                          codes 0..P-2)
  images_seq_mask  (B, L)         bool    slots that take understanding image embeddings; the k-th
                                          True slot of a row (row-major) takes embedding k of the
                                          row's valid images (`janus.merge_embeddings` order)
  pixel_values     (B, M, S, S, 3) float32 normalised understanding images, zeros when unused
  images_emb_mask  (B, M, P')     bool    True for every slot of a real image
  gen_mask         (B, L)         bool    positions whose input embedding is
                                          gen_aligner(gen_embed(image_codes)), not the text one
  image_codes      (B, L)         int32   VQ code at `gen_mask` positions, 0 elsewhere
  segment_ids      (B, L)         int32   1, 2, ... per packed example, 0 on padding; attention is
                                          allowed iff same nonzero segment and key <= query
  positions        (B, L)         int32   position within the example (restarts at 0; RoPE input;
                                          a branch continues from its prefix's end)
  branch_ids       (B, L)         int32   0, or k on the k-th independent turn of an understanding
                                          example (`examples.Config.independent_turns`): it sees
                                          its example's branch-0 prefix and itself, no branch j != k
  kinds            (B, L)         int32   0 und, 1 text, 2 gen per position; -1 on padding
JanusFlow runs (family "janusflow"; generation records carry SDXL-VAE latents, m =
`max_flow_images_per_row`, Q = `flow_tokens`) add, and leave gen_mask / image_codes empty:
  flow_seq_mask    (B, L)         bool    per generation image 1 + Q consecutive slots: t_emb, then
                                          the Q latent tokens (row-major)
  flow_image_mask  (B, m)         bool    real generation images
  flow_latents     (B, m, H, W, Z) float32 clean latents (already x the VAE scaling factor)
  flow_pixels      (B, m, S, S, 3) float32 the clean images in [-1, 1] (only if `flow_pixels`)

Resuming: `Iterator.get_state()` is a JSON-serialisable dict; `set_state` on a fresh iterator of the
same pipeline continues with exactly the batches that would have followed.
"""

import collections
import dataclasses
import logging
import os
from typing import Any, Sequence

from absl import flags
import grain.python as grain

from janus_jax.data import examples
from janus_jax.data import mixture
from janus_jax.data import packing
from janus_jax.data import tokenizer as tokenizer_lib


@dataclasses.dataclass(frozen=True)
class Config:
  """Pipeline settings (per host).

  ratios: und : text : gen example ratio (Janus-Pro: 1:0:3, 2:3:5, 5:1:4).
  batch_size: packed rows per host batch.
  shuffle / seed / num_epochs: grain IndexSampler (num_epochs None = repeat forever).
  worker_count / worker_buffer_size: grain worker processes for decoding and tokenization.
  max_bad_fraction: stop with an error when more than this fraction of records was unusable
    (judged once `min_records_for_bad_check` records were read).
  """
  example: examples.Config = examples.Config()
  ratios: tuple[float, float, float] = (5.0, 1.0, 4.0)
  batch_size: int = 8
  shuffle: bool = True
  seed: int = 0
  num_epochs: int | None = None
  worker_count: int = 0
  worker_buffer_size: int = 2
  max_bad_fraction: float = 0.05
  min_records_for_bad_check: int = 200


class _BuildExample(grain.RandomMapTransform):

  def __init__(self, builder: examples.Builder):
    self.builder = builder

  def random_map(self, element, rng):
    return self.builder(element, rng)


def make_loader(sources: Sequence[Any], tok: tokenizer_lib.Tokenizer, cfg: Config,
                shard_options: grain.ShardOptions | None = None) -> grain.DataLoader:
  """The per-example grain DataLoader (before packing).

  Args:
    sources: (und, text, gen) random-access sources of raw records (see `builders`); None for a
      kind with ratio 0.
    shard_options: default `grain.ShardByJaxProcess(drop_remainder=True)`: each JAX process reads a
      disjoint, equal-sized slice of the shuffled index space.
  """
  source = mixture.Mixture(sources, cfg.ratios)
  if cfg.worker_count and not flags.FLAGS.is_parsed():
    # grain's worker processes read absl flags; outside an absl app (tests, notebooks) nobody
    # parsed them, so accept the defaults instead of failing in the first worker.
    flags.FLAGS.mark_as_parsed()
  if shard_options is None:
    shard_options = grain.ShardByJaxProcess(drop_remainder=True)
  sampler = grain.IndexSampler(num_records=len(source), shard_options=shard_options,
                               shuffle=cfg.shuffle, num_epochs=cfg.num_epochs, seed=cfg.seed)
  return grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[_BuildExample(examples.Builder(tok, cfg.example))],
      worker_count=cfg.worker_count, worker_buffer_size=cfg.worker_buffer_size,
      shard_options=shard_options)


class BadDataError(RuntimeError):
  """Too large a fraction of the records was unusable."""


class Iterator:
  """Packed batches from a `make_loader` DataLoader, with counted skipping and resumable state.

  Attributes:
    stats: counters — "records" read, "examples" packed, "bad" and "bad/<reason>".
  """

  def __init__(self, loader: grain.DataLoader, cfg: Config, tok: tokenizer_lib.Tokenizer):
    self.loader, self.cfg, self.tok = loader, cfg, tok
    self._it = iter(loader)
    self._leftover = None  # (loader state before it, example) that did not fit the last batch
    self.stats = collections.Counter()

  def __iter__(self):
    return self

  def _pull(self):
    """Next good example and the loader state just before it; counts and skips bad ones."""
    while True:
      state = self._it.get_state()
      ex = next(self._it)  # StopIteration ends the iterator (finite num_epochs)
      self.stats["records"] += 1
      if "bad" not in ex:
        return state, ex
      self.stats["bad"] += 1
      self.stats["bad/" + ex["bad"]] += 1
      if self.stats["bad/" + ex["bad"]] <= 10:  # the first few of each reason, then counts only
        logging.warning("skipping %s record (%s): %s", mixture.KIND_NAMES[ex["kind"]], ex["bad"],
                        ex.get("detail", ""))
      self._check_bad_fraction()

  def _check_bad_fraction(self):
    n, bad = self.stats["records"], self.stats["bad"]
    if n >= self.cfg.min_records_for_bad_check and bad > self.cfg.max_bad_fraction * n:
      reasons = {k[4:]: v for k, v in self.stats.items() if k.startswith("bad/")}
      raise BadDataError(f"{bad} of {n} records were unusable ({bad / n:.1%} > max_bad_fraction "
                         f"{self.cfg.max_bad_fraction:.1%}); by reason: {reasons}")

  def __next__(self) -> dict:
    e = self.cfg.example
    flow = e.family == "janusflow"
    batch = packing.BatchBuilder(
        self.cfg.batch_size, e.seq_len, e.max_images_per_row, e.slots_per_image, e.image_size,
        self.tok.special.pad, flow_images=e.max_flow_images_per_row if flow else 0,
        latent_shape=e.latent_shape, flow_pixels=e.flow_pixels)
    while True:
      if self._leftover is not None:
        item, self._leftover = self._leftover, None
      else:
        try:
          item = self._pull()
        except StopIteration:
          if batch.empty:
            raise
          return batch.finish()  # the last, partly filled batch of a finite run
      if not batch.add(item[1]):
        self._leftover = item
        break
      self.stats["examples"] += 1
    self.stats["batches"] += 1
    self.stats["tokens"] += batch.tokens
    return batch.finish()

  def get_state(self) -> dict:
    """JSON-serialisable position: loader state before any held-back example, plus counters."""
    loader_state = self._leftover[0] if self._leftover is not None else self._it.get_state()
    return {"loader": loader_state.decode("utf-8"), "stats": dict(self.stats)}

  def set_state(self, state: dict) -> None:
    self._it.set_state(state["loader"].encode("utf-8"))
    self._leftover = None
    self.stats = collections.Counter(state.get("stats", {}))


def make(sources: Sequence[Any], tok: tokenizer_lib.Tokenizer, cfg: Config,
         shard_options: grain.ShardOptions | None = None) -> Iterator:
  """The pipeline: `next(make(...))` is a packed batch (format in the module docstring)."""
  return Iterator(make_loader(sources, tok, cfg, shard_options), cfg, tok)


def _spec_source(spec: str, kind: int, default_dir: str = ""):
  """A dataset spec of `config.data` -> raw-record source (None for "")."""
  from janus_jax.data import builders  # pylint: disable=g-import-not-at-top
  from janus_jax.data import tokenize_images  # pylint: disable=g-import-not-at-top
  if not spec:
    return None
  if kind == mixture.GEN:
    return tokenize_images.read(os.path.join(default_dir, spec))  # an absolute spec wins
  name, _, data_dir = spec.partition("@")
  read = builders.read_conversations if kind == mixture.UND else builders.read_text
  return read(data_dir or default_dir or None, name)


def make_train_iterator(data, model_config) -> Iterator:
  """The trainer's entry point (`train.py` with `config.data.source != "synthetic"`).

  `data` (an ml_collections ConfigDict or any attribute/`get` holder) fields:
    tokenizer: checkpoint dir or tokenizer.json path.
    und / text / gen: dataset specs, "" for none: und and text are "<tfds name>@<data_dir>" of a
      prepared `builders.Conversations` / `builders.PlainText`; gen is a `tokenize_images` output
      directory (VQ codes for Janus, VAE latents for JanusFlow).
    data_dir (optional): the TFDS data_dir of und / text specs without "@<data_dir>", and the
      folder a relative gen directory is under.
    ratios (und, text, gen); batch_size (global rows, split evenly over JAX processes); seq_len;
    optional: family ("janus_pro"), max_images_per_row (4), max_flow_images_per_row (4),
      caption_dropout (0.1), independent_turns (False), seed (0), worker_count (0),
      max_bad_fraction (0.05), flow_pixels.
  Image sizes come from `model_config` (vision.image_size, image_tokens; JanusFlow
  gen_latent_size, latent_channels, gen_tokens).
  """
  import jax  # pylint: disable=g-import-not-at-top
  get = data.get
  is_flow = getattr(model_config, "family", "") == "janusflow"
  family = get("family", "janusflow" if is_flow else "janus_pro")
  ex = dict(family=family, seq_len=data.seq_len, image_size=model_config.vision.image_size,
            image_tokens=model_config.image_tokens - (1 if is_flow else 0),
            max_images_per_row=get("max_images_per_row", 4),
            caption_dropout=get("caption_dropout", 0.1),
            independent_turns=get("independent_turns", False))
  if is_flow:
    side = model_config.gen_latent_size
    ex.update(flow_tokens=model_config.gen_tokens(side),
              latent_shape=(side, side, model_config.latent_channels),
              max_flow_images_per_row=get("max_flow_images_per_row", 4),
              flow_pixels=get("flow_pixels", False))
  if data.batch_size % jax.process_count():
    raise ValueError(f"data.batch_size {data.batch_size} is not divisible by the "
                     f"{jax.process_count()} JAX processes")
  cfg = Config(example=examples.Config(**ex), ratios=tuple(get("ratios", (5.0, 1.0, 4.0))),
               batch_size=data.batch_size // jax.process_count(), seed=get("seed", 0),
               worker_count=get("worker_count", 0),
               max_bad_fraction=get("max_bad_fraction", 0.05))
  tok = tokenizer_lib.load(data.tokenizer)
  # A kind with ratio 0 is not read at all (its spec may name a dataset that was never prepared).
  sources = [_spec_source(get(k, ""), i, get("data_dir", "") or "") if cfg.ratios[i] else None
             for i, k in enumerate(mixture.KIND_NAMES)]
  return make(sources, tok, cfg)
