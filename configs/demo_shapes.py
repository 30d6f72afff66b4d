r"""The embedded demo: a small Janus trained end to end on the shapes world.

    python -m janus_jax.shapes_demo --out /tmp/shapes_demo     # the shipped checkpoint
    python -m janus_jax.shapes_demo --out /tmp/demo_smoke --config configs/demo_shapes.py:smoke
    python -m janus_jax.shapes_demo --out /tmp/shapes_demo --config.vq.steps=100

`arg` "full" (default) is the recipe that produced `assets/shapes_demo/`, sized for a 2-core CPU
(about 25 minutes); "smoke" runs every step of it for a few steps on a few scenes (CI). Override
any field with `--config.<field>=value`, e.g. `--config.stages.1.steps=100`.
What each step does, and the measurements behind the values below: docs/shapes_demo.md.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or "full"
  if arg not in ("full", "smoke"):
    raise ValueError(f"demo_shapes arg {arg!r}: use full or smoke")
  smoke = arg == "smoke"
  c = ml_collections.ConfigDict()
  c.seed = 0
  # 48 px: each 16-pixel cell of the world's 3x3 grid is exactly 2x2 VQ tokens (downsampling 8)
  # and 2x2 encoder patches (patch 8), with its object centred on their shared corner, so the
  # generator learns each shape once rather than once per way it can straddle the token grid.
  c.image_size = 48
  c.family = "janus_pro"  # chat template (role tokens <|User|> / <|Assistant|>)

  # --- the world and its tokenizer ---
  c.world = ml_collections.ConfigDict(dict(
      # shapes_world TFDS config; its image_size must be c.image_size
      builder_config="tiny48" if smoke else "dense_qa48",
      num_train=32 if smoke else 20000, num_test=8 if smoke else 500))
  c.tokenizer = ml_collections.ConfigDict(dict(vocab_size=512, num_scenes=200 if smoke else 2000))

  # --- model sizes ---
  # 128 codes: the LLM models a larger codebook less well, even when every code is in use.
  c.model = ml_collections.ConfigDict(dict(
      vision_width=128, vision_depth=2, vision_heads=4, patch_size=8,
      hidden=192, intermediate=512, layers=4, heads=6, head_dim=32,
      codebook_size=128, codebook_dim=8, vq_base=16, vq_ch_mult=(1, 2, 4, 4),
      vq_z=64, vq_res_blocks=1, vq_norm_groups=8))
  if smoke:
    c.model.update(dict(vision_width=32, vision_depth=1, vision_heads=2, hidden=32,
                        intermediate=64, layers=1, heads=2, head_dim=16, codebook_size=64,
                        vq_base=8, vq_z=16))

  # --- VQ tokenizer training ---
  # Small batches, and every `restart_every` steps the codes no batch chose are restarted on
  # latents drawn by their distance from the codebook (`vq_training.restart_dead_codes`):
  # trained from scratch without restarts the codebook collapses and small shapes come back as
  # circles. `foreground_weight`: the error of the pixels off the flat background counts 1 + 2
  # times, since the background is ~80% of the pixels and otherwise dominates the MSE; more
  # weight leaves the background noisy.
  c.vq = ml_collections.ConfigDict(dict(steps=1500, batch_size=8, lr=2e-3, warmup=50,
                                        restart_every=50, foreground_weight=2.0))
  if smoke:
    c.vq.update(dict(steps=3, batch_size=4, restart_every=1))

  # --- understanding-encoder pretraining (per-patch scene labels; 0 steps: none) ---
  # The counterpart of SigLIP's pretraining: trained only through the LLM's few answer tokens,
  # the encoder never learns what shape an object is or where it sits.
  c.encoder = ml_collections.ConfigDict(dict(
      steps=3 if smoke else 300, batch_size=8 if smoke else 64, lr=2e-3, warmup=50))

  # --- the three Janus stages (the LLM, aligners and heads train from scratch) ---
  # Ratios are und : text : gen examples (no pure-text corpus in this world). As in the released
  # Janus recipe, the pretrained understanding encoder is frozen in stages 1-2 and trains in
  # stage 3; the VQ never trains. Stages 2-3 give generation most of the examples (1:6, 1:2): an
  # understanding example (an image and up to 8 question branches) is ~3x the tokens of a
  # generation example, and understanding learns its part on far fewer of them. The shift has
  # to be in stage 2, where most of the tokens are.
  vq_only = (r"gen_vision_model/.*",)
  both = (r"gen_vision_model/.*", r"vision_model/.*")

  def stage(name, steps, ratios, lr, warmup, frozen):
    return ml_collections.ConfigDict(dict(name=name, steps=steps, ratios=ratios, lr=lr,
                                          warmup=warmup, frozen=frozen))
  if smoke:
    c.stages = [stage("stage1", 2, (1.0, 0.0, 1.0), 1e-3, 1, both),
                stage("stage2", 2, (2.0, 0.0, 3.0), 1e-3, 1, both),
                stage("stage3", 2, (5.0, 0.0, 4.0), 5e-4, 1, vq_only)]
  else:
    c.stages = [stage("stage1", 400, (1.0, 0.0, 1.0), 1e-3, 100, both),
                stage("stage2", 4300, (1.0, 0.0, 6.0), 1.5e-3, 200, both),
                stage("stage3", 900, (1.0, 0.0, 2.0), 4e-4, 40, vq_only)]
  # Recompute each decoder layer in the backward pass instead of storing its activations: on a
  # 2-core CPU writing the stored activations (stacked by the layer scan, then transposed for the
  # weight gradients) and reading them back costs more than the recomputation.
  c.remat_policy = "full"
  # Packed rows per step: on the same tokens, 6 rows and twice the steps lower the generation
  # loss further than 12 rows, at about the same wall time.
  c.batch_size = 4 if smoke else 6
  c.seq_len = 256
  c.max_images_per_row = 2  # understanding images per packed row
  # Understanding conversations carry no system prompt: the reference's 30-word one would be
  # ~50 of this tokenizer's tokens per example. Exported into config.json, where sample.py and
  # ShapesEval read it (`chat.checkpoint_system_prompt`).
  c.system_prompt = ""
  c.caption_dropout = 0.1  # classifier-free guidance needs unconditional rows
  # Share of the generation records of a scene that admits a relation caption ("a red circle
  # above a blue square") whose caption is replaced by a fresh one (`recipe.GenSource`). Relation
  # captions are the only ones that say where one object is relative to another, and among the
  # stored captions (3 styles of 6 per image) they are rare; 0.5 makes them ~14% of the records.
  c.relation_captions = 0.5
  # An image's question/answer pairs train as independent single-question branches of one shared
  # prefix (`examples.Config.independent_turns`), not as one multi-turn chat: in the chat a later
  # question can be answered from the earlier turns' text, so the model learns to read the answer
  # off the conversation instead of the image, and ShapesEval asks one question alone.
  c.independent_turns = True
  c.log_every = 1 if smoke else 50

  # --- export and evaluation ---
  c.export_dtype = "float32"
  c.eval = ml_collections.ConfigDict(dict(
      run=not smoke, per_category=100, questions=200,
      # Sampling: exported as cfg_weight / temperature (the reference's), then replaced by the
      # pair of candidates with the best generation accuracy on select_per_category validation
      # prompts per category (`recipe.select_sampling`). Guidance above 2 overdraws and
      # temperature 1 scatters two-object scenes, so the grid stays at guidance 2 or below and
      # well under temperature 1. The candidates score within a few hundredths of each other,
      # so fewer prompts per category would make the choice noise.
      select_per_category=200, cfg_weight=5.0, temperature=1.0,
      cfg_candidates=(1.5, 1.75, 2.0), temperature_candidates=(0.25, 0.35, 0.5)))
  return c
