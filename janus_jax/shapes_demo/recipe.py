r"""The embedded demo recipe: a small Janus trained end to end on the shapes world.

    python -m janus_jax.shapes_demo --out /tmp/shapes_demo [--config configs/demo_shapes.py:smoke]

docs/shapes_demo.md explains every choice of the recipe (`configs/demo_shapes.py`).

One command, in order (each step prints what it did and how long it took):
  1. world      the `shapes_world` TFDS dataset (train / test splits, `shapes_demo.world`)
  2. tokenizer  a byte-level BPE `tokenizer.json` with the Janus special tokens
  3. vq         a small VQ-16 tokenizer trained on the train images; PSNR on the test split and
                the fraction of reconstructed test scenes the analyser reads exactly
  4. codes      every train image tokenized once with the frozen VQ (offline codes)
  4b. encoder   the SigLIP-style understanding encoder pretrained on per-patch scene labels
                (`vision_training`, the counterpart of SigLIP's own pretraining);
                frozen in stages 1-2, trained in stage 3 (the VQ stays frozen throughout)
  5. stages     three Janus stages, each a run of the trainer (`trainer.train`) on batches from
                `janus_jax.data.pipeline` (understanding = QA about an image, one branch per
                question with `independent_turns`, else one multi-turn chat;
                generation = caption -> its VQ codes, with caption dropout for guidance); each
                stage's weights are exported to OUT/stages/<name> and start the next
  6. export     `OUT/checkpoint`: config.json + params/chunk_000 (the converter's layout, read by
                `janus_jax.convert.driver.load_converted`, sample.py and ShapesEval) + tokenizer
  7. eval       the guidance weight and temperature chosen on the validation split (written
                into config.json),
                then ShapesEval on the test split; the table goes to OUT/eval.txt

Each Janus stage is one call of `janus_jax.train.trainer.train` (the loop `python train.py`
runs: sharded jitted `train_steps.train_step`, `optim.make`, Orbax checkpoints under
OUT/train/<stage>, TensorBoard under OUT/train/<stage>/tb) with a config built from
`janus_jax.train.config.base` (`stage_config`): the model and weights come from the previous stage's export (`init_from`, as a
converted release would), the batches from the in-memory shapes sources below.
"""

import dataclasses
import itertools
import json
import pathlib
import shutil
import time

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from janus_jax import errors
from janus_jax.data import examples
from janus_jax.data import pipeline
from janus_jax.data import tokenizer as tokenizer_lib
from janus_jax.models import aligners
from janus_jax.models import gen_head
from janus_jax.models import janus
from janus_jax.models import llama
from janus_jax.models import siglip
from janus_jax.models import vq
from janus_jax.shapes_demo import vision_training
from janus_jax.shapes_demo import vq_training
from janus_jax.shapes_demo.eval import analyser
from janus_jax.shapes_demo.world import builder as shapes_builder
from janus_jax.shapes_demo.world import text as shapes_text
from janus_jax.shapes_demo.world import vocab
from janus_jax.shapes_demo.world import world as shapes_world
from janus_jax.train import config as train_config
from janus_jax.train import trainer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def log(msg: str) -> None:
  print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# 1. The world.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Split:
  """One split held in memory: images uint8 (N, S, S, 3), per-record captions, QA pairs and the
  scene each image renders."""
  images: np.ndarray
  captions: list[list[str]]
  qa: list[list[tuple[str, str]]]
  scenes: list[shapes_world.Scene]


def _text(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


def load_world(data_dir: pathlib.Path, config_name: str, limits: dict,
               image_size: int | None = None) -> dict[str, Split]:
  """Prepares `shapes_world` under `data_dir` (no-op if there) and reads the `limits` splits;
  ValueError when the config draws other than `image_size` px images (None: any)."""
  b = shapes_builder.prepare(str(data_dir), config_name)
  if image_size is not None and b.builder_config.image_size != image_size:
    raise ValueError(f"shapes_world config {config_name!r} draws {b.builder_config.image_size} px "
                     f"images but the recipe's image_size is {image_size}")
  out = {}
  for split, limit in limits.items():
    src = b.as_data_source(split=split)
    n = min(len(src), limit)
    recs = [src[i] for i in range(n)]
    out[split] = Split(
        images=np.stack([np.asarray(r["image"], np.uint8) for r in recs]),
        captions=[[_text(c) for c in r["captions"]] for r in recs],
        qa=[list(zip(map(_text, r["questions"]), map(_text, r["answers"]))) for r in recs],
        scenes=[shapes_world.Scene.from_json(_text(r["scene"])) for r in recs])
  return out


class UndSource:
  """Understanding records: record i is a multi-turn chat of all QA pairs of image i.

  Turn order rotates with the record, so every question kind also appears as the first turn
  (the single-question layout of inference). With `examples.Config.independent_turns` the
  pairs train as separate single-question branches instead, and the order does not matter.
  """

  def __init__(self, split: Split):
    self.split = split

  def __len__(self) -> int:
    return len(self.split.qa)

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    qa = self.split.qa[i]
    k = i % len(qa)
    qa = qa[k:] + qa[:k]
    roles = ["user", "assistant"] * len(qa)
    contents = [t for pair in qa for t in pair]
    return {"roles": roles, "contents": contents, "images": [self.split.images[i]]}


class GenSource:
  """Generation records: record i is caption i % C of image i // C with its VQ codes.

  relation_share: for an image a relation caption applies to (two objects of different
  descriptors, `text.applicable_styles`), the share of its records whose caption is replaced by
  a relation caption ("a red circle above a blue square") drawn afresh from the scene; the draw
  is a pure function of (seed, i). In the stored captions, three distinct styles out of six,
  about 4% of all records are relation captions, the only ones that teach relative position.
  """

  def __init__(self, split: Split, codes: np.ndarray, relation_share: float = 0.0, seed: int = 0):
    if not 0.0 <= relation_share <= 1.0:
      raise ValueError(f"relation_share must be in [0, 1], got {relation_share}")
    self.split, self.codes = split, codes
    self.per = len(split.captions[0])
    self.relation_share, self.seed = relation_share, seed

  def __len__(self) -> int:
    return len(self.split.captions) * self.per

  def __getitem__(self, i: int) -> dict:
    img, k = divmod(int(i), self.per)
    caps = self.split.captions[img]
    caption = caps[k % len(caps)]
    if self.relation_share:
      scene = self.split.scenes[img]
      if "relation" in shapes_text.applicable_styles(scene):
        rng = np.random.default_rng([self.seed, int(i), 5])
        if rng.random() < self.relation_share:
          caption = shapes_text.describe(scene, "relation", rng)
    return {"caption": caption, "codes": self.codes[img]}


# ----------------------------------------------------------------------------------------------
# 2-3. Model config and VQ.
# ----------------------------------------------------------------------------------------------


def vq_config(c) -> vq.Config:
  m = c.model
  return vq.Config(codebook_size=m.codebook_size, codebook_dim=m.codebook_dim,
                   z_channels=m.vq_z, base_channels=m.vq_base, ch_mult=tuple(m.vq_ch_mult),
                   num_res_blocks=m.vq_res_blocks, norm_groups=m.vq_norm_groups)


def vq_readable(recon: np.ndarray, scenes: list[shapes_world.Scene]) -> float:
  """Fraction of `scenes` that ShapesEval's analyser reads exactly (every object's colour, shape,
  size and cell) from their VQ reconstructions `recon` (uint8 (N, S, S, 3), one per scene): the
  ceiling the tokenizer puts on generation accuracy."""
  if len(recon) != len(scenes):
    raise ValueError(f"{len(recon)} reconstructions but {len(scenes)} scenes")
  return float(np.mean([analyser.matches_scene(analyser.analyse(r), s)
                        for r, s in zip(recon, scenes)]))


def model_config(c, vocab_size: int) -> janus.Config:
  """The demo Janus: SigLIP-style encoder at S px / patch 8, LLaMA decoder, the VQ above."""
  m = c.model
  d = m.hidden
  vq_cfg = vq_config(c)
  vision = siglip.Config(image_size=c.image_size, patch_size=m.patch_size, width=m.vision_width,
                         depth=m.vision_depth, heads=m.vision_heads)
  llm = llama.Config(vocab_size=vocab_size, hidden_size=d, intermediate_size=m.intermediate,
                     num_layers=m.layers, num_heads=m.heads, num_kv_heads=m.heads,
                     head_dim=m.head_dim, max_position_embeddings=1024)
  cfg = janus.Config(
      vision=vision, aligner=aligners.Config(vision.width, d, "mlp_gelu", 2), vq=vq_cfg,
      gen_aligner=aligners.Config(vq_cfg.codebook_dim, d, "mlp_gelu", 2),
      gen_head=gen_head.Config(d, d, vq_cfg.codebook_size), llm=llm,
      image_token_size=vq_cfg.codebook_size, gen_embed_dim=vq_cfg.codebook_dim)
  grid = (c.image_size // vq_cfg.downsample_factor) ** 2
  if grid != cfg.image_tokens:
    raise ValueError(f"{grid} VQ codes per image but {cfg.image_tokens} understanding patches: "
                     "the pipeline uses one image-token count for both")
  return cfg


# ----------------------------------------------------------------------------------------------
# 5. The Janus stages.
# ----------------------------------------------------------------------------------------------


def stage_config(c, stage, init_from: pathlib.Path, index: int) -> ml_collections.ConfigDict:
  """The trainer's config for one stage: `janus_jax.train.config.base()` with the stage's
  schedule, the model and weights of `init_from` (an exported checkpoint), one device."""
  r = train_config.base(ml_collections.ConfigDict(dict(
      family="janus", dtype="float32", param_dtype="float32",
      remat_policy=c.get("remat_policy", "none"))))
  r.seed = c.seed + 100 + index
  r.total_steps = stage.steps
  r.mesh = (1, 1, 1)
  r.init_from = str(init_from)
  r.data.update(source="demo", batch_size=c.batch_size, seq_len=c.seq_len)
  r.optim.update(lr=stage.lr, warmup_steps=stage.warmup, schedule="warmup_cosine",
                 total_steps=stage.steps, frozen=tuple(stage.frozen))
  r.ckpt.update(every=stage.steps, keep=1, use_async=False)  # the stage's last state only
  r.log_every = c.log_every
  return r


def make_batches(c, stage, tok, model_cfg: janus.Config, und: UndSource, gen: GenSource,
                 seed: int) -> pipeline.Iterator:
  ex = examples.Config(family=c.family, seq_len=c.seq_len,
                       max_images_per_row=c.max_images_per_row,
                       image_tokens=model_cfg.image_tokens, image_size=c.image_size,
                       caption_dropout=c.caption_dropout, system_prompt=c.system_prompt,
                       independent_turns=c.independent_turns)
  cfg = pipeline.Config(example=ex, ratios=tuple(stage.ratios), batch_size=c.batch_size,
                        seed=seed)
  sources = [und if stage.ratios[0] else None, None, gen if stage.ratios[2] else None]
  return pipeline.make(sources, tok, cfg, shard_options=_no_sharding())


def _no_sharding():
  import grain.python as grain  # pylint: disable=g-import-not-at-top
  return grain.NoSharding()


def run_stage(c, stage, init_from: pathlib.Path, batches, workdir: pathlib.Path, index: int):
  """One stage through the trainer (`janus_jax.train.trainer.train`: its sharded jitted step,
  checkpoints in `workdir`, TensorBoard in workdir/tb): every unfrozen parameter trains for
  `stage.steps` steps from the exported checkpoint `init_from`. Returns (params, last
  metrics)."""
  start = time.time()
  out = trainer.train(stage_config(c, stage, init_from, index), str(workdir), data=batches,
                    return_params=True, devices=jax.devices()[:1])  # a 3.7M model: one device
  params = out.pop("params")
  log(f"{stage.name}: {out['step']} steps in {time.time() - start:.0f}s, last loss="
      f"{out['loss']:.4f} (und {out['loss_und']:.4f}, gen {out['loss_gen']:.4f})")
  return params, out


# ----------------------------------------------------------------------------------------------
# 6. Export in the converter's layout.
# ----------------------------------------------------------------------------------------------


def export(out_dir: pathlib.Path, cfg: janus.Config, params, tokenizer_dir: pathlib.Path,
           dtype: str = "float32", extra: dict | None = None) -> int:
  """Writes a converted-checkpoint directory (+ tokenizer files); returns its size in bytes."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from janus_jax.convert import driver  # pylint: disable=g-import-not-at-top
  np_dtype = {"float32": np.float32, "bfloat16": jnp.bfloat16}[dtype]
  if out_dir.exists():
    shutil.rmtree(out_dir)
  out_dir.mkdir(parents=True)
  host = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(np_dtype), nn.unbox(params))
  ocp.Checkpointer(ocp.StandardCheckpointHandler()).save(
      (out_dir / "params" / "chunk_000").absolute(), args=ocp.args.StandardSave(host))
  # "source" names how it was made; sample.py reads "pro" in it as the Janus-Pro chat template.
  meta = {"family": "janus", "config": driver.config_to_json(cfg), "dtype": dtype,
          "source": "janus_jax.shapes_demo (shapes world, janus_pro chat template)", "skipped": [],
          "chunks": 1, **(extra or {})}
  (out_dir / "config.json").write_text(json.dumps(meta, indent=1))
  for name in TOKENIZER_FILES:
    shutil.copy(tokenizer_dir / name, out_dir / name)
  return sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------
# The recipe.
# ----------------------------------------------------------------------------------------------


def _scalars(m: dict) -> dict:
  return {k: round(float(v), 4) for k, v in m.items() if isinstance(v, (int, float))}


def _fresh_train_dir(out: pathlib.Path) -> None:
  """Refuses an OUT whose OUT/train holds an earlier run's stages (train.py would resume them)."""
  train_dir = out / "train"
  if train_dir.exists() and any(train_dir.iterdir()):
    raise FileExistsError(f"{train_dir} holds an earlier run's stages; use another --out "
                          "(nothing there is overwritten)")


def train_stages(c, cfg: janus.Config, tok, und: UndSource, gen: GenSource, init: pathlib.Path,
                 out: pathlib.Path, tokenizer_dir: pathlib.Path, meta: dict, offset: int,
                 done=None):
  """Runs `c.stages` back to back, each a train.py run (OUT/train/<name>) initialised from the
  previous stage's export (OUT/stages/<name>; the first from `init`). `offset` shifts the data
  and step seeds (continuations draw other batches). Returns (params, last stage's metrics)."""
  if not c.stages:
    raise ValueError("the config has no stages to train")
  train_dir, prev, m = out / "train", init, {}
  for i, stage in enumerate(c.stages, start=offset):
    t = time.time()
    batches = make_batches(c, stage, tok, cfg, und, gen, c.seed + i)
    params, m = run_stage(c, stage, prev, batches, train_dir / stage.name, i)
    prev = out / "stages" / stage.name
    export(prev, cfg, params, tokenizer_dir, "float32", meta)
    if done is not None:
      done(stage.name, t)
  return params, m


def run(c, out: pathlib.Path) -> dict:
  """Runs the whole recipe into `out`; returns the summary also written to out/summary.json."""
  _fresh_train_dir(out)
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  times, summary = {}, {}

  def done(name, since):
    times[name] = round(time.time() - since, 1)
    log(f"{name} done in {times[name]:.0f}s")

  t = time.time()
  world = load_world(out / "tfds", c.world.builder_config,
                     {"train": c.world.num_train, "test": c.world.num_test}, c.image_size)
  done("world", t)

  t = time.time()
  tok_dir = out / "tokenizer"
  vocab.train_tokenizer(str(tok_dir), c.tokenizer.vocab_size, c.tokenizer.num_scenes, c.seed)
  tok = tokenizer_lib.load(str(tok_dir))
  done("tokenizer", t)

  t = time.time()
  vcfg = vq_config(c)
  vq_params = vq_training.train(vcfg, world["train"].images, steps=c.vq.steps,
                                batch_size=c.vq.batch_size, lr=c.vq.lr, warmup=c.vq.warmup,
                                restart_every=c.vq.restart_every,
                                foreground_weight=c.vq.foreground_weight,
                                background=shapes_world.BACKGROUND, seed=c.seed, log=log,
                                log_every=max(1, c.vq.steps // 10))
  recon = vq_training.reconstruct(vcfg, vq_params, world["test"].images)
  summary["vq_psnr_test"] = round(vq_training.psnr_of(recon, world["test"].images), 2)
  summary["vq_readable_test"] = round(vq_readable(recon, world["test"].scenes), 4)
  log(f"VQ reconstruction PSNR on the test split: {summary['vq_psnr_test']:.2f} dB; the analyser "
      f"reads {summary['vq_readable_test']:.1%} of the reconstructed test scenes exactly")
  done("vq", t)

  t = time.time()
  codes = vq_training.encode(vcfg, vq_params, world["train"].images)
  used = len(np.unique(codes))
  log(f"tokenized {len(codes)} train images: {codes.shape[1]} codes each, {used} of "
      f"{vcfg.codebook_size} codebook entries used")
  done("codes", t)

  cfg = model_config(c, max(tok.vocab_size, c.tokenizer.vocab_size))
  t = time.time()
  encoder = None
  if c.encoder.steps:
    encoder, head = vision_training.train(
        cfg.vision, world["train"].images, world["train"].scenes, steps=c.encoder.steps,
        batch_size=c.encoder.batch_size, lr=c.encoder.lr, warmup=c.encoder.warmup, seed=c.seed,
        log=log, log_every=max(1, c.encoder.steps // 4))
    acc = vision_training.accuracy(cfg.vision, encoder, head, world["test"].images,
                                   world["test"].scenes)
    summary["encoder_patch_accuracy_test"] = {k: round(v, 4) for k, v in acc.items()}
    log("encoder per-patch accuracy on the test split: "
        + " ".join(f"{k}={v:.4f}" for k, v in acc.items()))
  done("encoder", t)

  model = janus.Model(cfg)
  params = nn.unbox(model.init(jax.random.key(c.seed), *janus.init_inputs(cfg),
                               method=janus.Model.init_all)["params"])
  params = {**params, "gen_vision_model": vq_params}
  if encoder is not None:
    params["vision_model"] = encoder
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  log(f"model: {n_params / 1e6:.2f}M parameters")
  und = UndSource(world["train"])
  gen = GenSource(world["train"], codes, c.relation_captions, c.seed)
  meta = {"recipe": "python -m janus_jax.shapes_demo", "image_size": c.image_size,
          "system_prompt": c.system_prompt,
          "sampling": _configured_sampling(c),
          "vq_psnr_test": summary["vq_psnr_test"]}
  init = out / "stages" / "init"
  export(init, cfg, params, tok_dir, "float32", meta)
  params, last = train_stages(c, cfg, tok, und, gen, init, out, tok_dir, meta, 0, done)
  summary["final_metrics"] = _scalars(last)

  t = time.time()
  ckpt = out / "checkpoint"
  size = export(ckpt, cfg, params, tok_dir, c.export_dtype, meta)
  summary["checkpoint_bytes"] = size
  log(f"exported {ckpt} ({size / 2**20:.1f} MiB, {n_params / 1e6:.2f}M parameters)")
  done("export", t)
  summary["train_seconds"] = round(time.time() - t0, 1)

  if c.eval.run:
    t = time.time()
    summary["sampling"] = select_sampling(ckpt, c)
    summary["shapes_eval"] = evaluate(ckpt, c, out / "eval.txt")
    done("eval", t)
  summary["times"] = times
  summary["total_seconds"] = round(time.time() - t0, 1)
  (out / "summary.json").write_text(json.dumps(summary, indent=1))
  log(f"summary: {json.dumps(summary)}")
  return summary


def continue_training(c, init: pathlib.Path, out: pathlib.Path) -> dict:
  """More Janus stages (`c.stages`) from an exported checkpoint `init` (e.g. `OUT/checkpoint` of
  `run`), reusing its tokenizer and frozen VQ; exports to OUT/checkpoint and evaluates."""
  from janus_jax.convert import driver  # pylint: disable=g-import-not-at-top
  _fresh_train_dir(out)
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  cfg, params = driver.load_converted(init)
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
  tok = tokenizer_lib.load(str(init))
  world = load_world(out / "tfds", c.world.builder_config, {"train": c.world.num_train},
                     c.image_size)
  needs_codes = any(s.ratios[2] for s in c.stages)
  codes = (vq_training.encode(cfg.vq, params["gen_vision_model"], world["train"].images)
           if needs_codes else np.zeros((len(world["train"].images), cfg.image_tokens), np.int32))
  und = UndSource(world["train"])
  gen = GenSource(world["train"], codes, c.relation_captions, c.seed)
  meta = json.loads((init / "config.json").read_text())
  extra = {k: v for k, v in meta.items() if k not in ("family", "config", "dtype", "source",
                                                       "skipped", "chunks")}
  extra["continued_from"] = str(init)
  extra["system_prompt"] = c.system_prompt
  extra["sampling"] = _configured_sampling(c)
  params, last = train_stages(c, cfg, tok, und, gen, init, out, init, extra, 10)
  ckpt = out / "checkpoint"
  summary = {"checkpoint_bytes": export(ckpt, cfg, params, init, c.export_dtype, extra),
             "final_metrics": _scalars(last),
             "train_seconds": round(time.time() - t0, 1)}
  if c.eval.run:
    summary["sampling"] = select_sampling(ckpt, c)
    summary["shapes_eval"] = evaluate(ckpt, c, out / "eval.txt")
  (out / "summary.json").write_text(json.dumps(summary, indent=1))
  log(f"summary: {json.dumps(summary)}")
  return summary


def _configured_sampling(c) -> dict:
  """The "sampling" entry an exported checkpoint carries until `select_sampling` replaces it."""
  return {"cfg_weight": c.eval.cfg_weight, "temperature": c.eval.temperature}


def select_sampling(ckpt: pathlib.Path, c) -> dict:
  """Picks the guidance weight and image-token temperature (every pair of
  `c.eval.cfg_candidates` x `c.eval.temperature_candidates`) by ShapesEval generation accuracy on
  `c.eval.select_per_category` prompts per category of the validation split (training
  compositions, never the held-out test ones), and records them in the checkpoint's config.json
  ("sampling"), where sample.py and ShapesEval read them. Returns {"cfg_weight", "temperature"}."""
  from janus_jax.sampling import image_ar  # pylint: disable=g-import-not-at-top
  from janus_jax.shapes_demo.eval import model_adapter  # pylint: disable=g-import-not-at-top
  from janus_jax.shapes_demo.eval import shapes  # pylint: disable=g-import-not-at-top
  e = c.eval
  # Refused before any scoring: a bad value would otherwise cost the whole grid, or be written
  # into config.json where loading the checkpoint then refuses it.
  if e.select_per_category < 1:
    raise ValueError(f"eval.select_per_category must be >= 1, got {e.select_per_category}")
  candidates = {}
  for name in ("cfg_candidates", "temperature_candidates"):
    if not e[name]:
      raise ValueError(f"eval.{name} is empty: no sampling setting to choose from")
    candidates[name] = [image_ar.check_setting(v, f"eval.{name}") for v in e[name]]
  items = shapes.gen_items(e.select_per_category, c.seed, split="validation")
  loaded = model_adapter.load(str(ckpt))  # read once; each candidate gets a fresh adapter (seed)
  scores = {}
  for w, t in itertools.product(candidates["cfg_candidates"], candidates["temperature_candidates"]):
    adapter = model_adapter.ModelAdapter(
        loaded.model, loaded.params, loaded.tok, cfg_weight=w, temperature=t,
        seed=c.seed, image_size=c.image_size, system_prompt=loaded.system_prompt)
    scores[w, t] = shapes.evaluate(adapter, items, [], c.image_size,
                                   log=lambda m: None)["gen_overall"]
    log(f"guidance {w}, temperature {t}: validation gen_overall={scores[w, t]:.3f}")
  ref_w, ref_t = image_ar.REFERENCE_CFG_WEIGHT, image_ar.REFERENCE_TEMPERATURE
  # ties: nearer the reference's settings
  w, t = max(scores, key=lambda k: (scores[k], -abs(k[0] - ref_w), -abs(k[1] - ref_t)))
  meta_path = ckpt / "config.json"
  meta = json.loads(meta_path.read_text())
  meta["sampling"] = {"cfg_weight": w, "temperature": t}
  meta["sampling_selection"] = {
      "split": "validation", "per_category": e.select_per_category,
      "gen_overall": {f"cfg_weight={k[0]} temperature={k[1]}": v for k, v in scores.items()}}
  meta.pop("guidance_selection", None)  # what a checkpoint of an earlier recipe recorded
  meta_path.write_text(json.dumps(meta, indent=1))
  log(f"chose guidance {w}, temperature {t} (written to {meta_path})")
  return meta["sampling"]


def evaluate(ckpt: pathlib.Path, c, report_path: pathlib.Path) -> dict:
  """ShapesEval on an exported checkpoint at its recorded guidance weight and temperature
  (`select_sampling`); writes the printed table to `report_path`."""
  from janus_jax.shapes_demo.eval import model_adapter  # pylint: disable=g-import-not-at-top
  from janus_jax.shapes_demo.eval import shapes  # pylint: disable=g-import-not-at-top
  e = c.eval
  adapter = model_adapter.load(str(ckpt), seed=c.seed, image_size=c.image_size)
  log(f"ShapesEval (test split) at guidance {adapter.cfg_weight}, temperature "
      f"{adapter.temperature}")
  results = shapes.evaluate(adapter, shapes.gen_items(e.per_category, c.seed),
                            shapes.und_items(e.questions, c.seed), c.image_size, log=log)
  table = shapes.report(results)
  report_path.write_text(table + "\n")
  print(table, flush=True)
  return {k: round(v, 4) for k, v in results.items()}


def default_config_path() -> pathlib.Path:
  """configs/demo_shapes.py of the checkout this package runs from."""
  return pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo_shapes.py"


def main(argv) -> None:
  if len(argv) > 1:
    raise errors.InputError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if f.evaluate and f.continue_from:
    raise errors.InputError("--evaluate and --continue_from are separate runs; give one")
  c, out = f.config, pathlib.Path(f.out)
  for flag in ("evaluate", "continue_from"):
    ckpt = f[flag].value
    if ckpt and not (pathlib.Path(ckpt) / "config.json").is_file():
      raise errors.InputError(f"--{flag} {ckpt}: no config.json; not an exported checkpoint")
  if f.evaluate:
    out.mkdir(parents=True, exist_ok=True)
    select_sampling(pathlib.Path(f.evaluate), c)
    evaluate(pathlib.Path(f.evaluate), c, out / "eval.txt")
  elif f.continue_from:
    continue_training(c, pathlib.Path(f.continue_from), out)
  else:
    run(c, out)


def define_flags(flag_values=flags.FLAGS) -> None:
  """The command line (defined only when run as a program, so importing this module is free)."""
  config_flags.DEFINE_config_file(
      "config", str(default_config_path()),
      "config file[:arg] (default configs/demo_shapes.py, the shipped recipe); override fields "
      "with --config.<field>=value, e.g. --config.vq.steps=100 or --config.stages[1].steps=50",
      lock_config=True, flag_values=flag_values)
  flags.DEFINE_string("out", None, "output directory (world, tokenizer, stages, checkpoint)",
                      flag_values=flag_values)
  flags.DEFINE_string("continue_from", None, "run only the config's Janus stages, starting "
                      "from this exported checkpoint", flag_values=flag_values)
  flags.DEFINE_string("evaluate", None, "run only step 7 on this exported checkpoint: choose its "
                      "sampling settings on the validation split, then ShapesEval on test "
                      "(report in --out)", flag_values=flag_values)
  flags.mark_flag_as_required("out", flag_values=flag_values)
