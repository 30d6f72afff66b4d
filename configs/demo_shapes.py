r"""The embedded demo: a small Janus trained end to end on the shapes world (issue 7).

    python -m janus_jax.demo --out /tmp/shapes_demo                  # the shipped checkpoint
    python -m janus_jax.demo --out /tmp/demo_prev --config configs/demo_shapes.py:collapsed
    python -m janus_jax.demo --out /tmp/demo_smoke --config configs/demo_shapes.py:smoke

`arg` "full" (default) is the recipe that produced `assets/shapes_demo/` (128-code VQ with dead
codes restarted by distance and the error off the background weighted up, 6 packed rows per
step, an image's questions trained as independent single-question branches, extra relation
captions); "collapsed" an earlier one (512-code VQ trained without restarts,
whose codebook collapses, 12 rows, multi-turn chats); "restarts" the 512-code VQ with restarts
and 12 rows (better VQ, weaker generation: README); "smoke" runs every stage for a few steps on
a few scenes (CI). Sizes are chosen for a 2-core CPU. "full" draws the world at 48x48: 6x6 = 36
VQ codes (downsampling 8) and 6x6 = 36 understanding patches (patch 8), so a generation example
is about 20 + 36 tokens, and each 16-pixel cell of the world's 3x3 grid is exactly 2x2 tokens
with its object centred on their shared corner (at 64x64 a cell is 2.67 tokens, and an object
falls across the token grid in one of nine ways by its cell). "smoke" is 48x48 too; the
earlier recipes keep 64x64 (8x8 = 64 codes and patches).
Override anything with `--set <field>=value` (e.g. `--set stages.1.steps=100`).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or "full"
  if arg not in ("full", "collapsed", "restarts", "smoke"):
    raise ValueError(f"demo_shapes arg {arg!r}: use full, collapsed, restarts or smoke")
  smoke = arg == "smoke"
  restarts = arg == "restarts"
  collapsed = arg == "collapsed"
  old = restarts or collapsed  # the 512-code VQ and 12-row batches of the earlier runs
  c = ml_collections.ConfigDict()
  c.seed = 0
  # 48 px: cells aligned with the VQ tokens (docstring), as the full recipe and its smoke run;
  # the earlier recipes: 64 px.
  c.image_size = 64 if old else 48
  c.family = "janus_pro"  # chat template (role tokens <|User|> / <|Assistant|>)

  # --- the world and its tokenizer ---
  c.world = ml_collections.ConfigDict(dict(
      # shapes_world TFDS config; its image_size must be c.image_size
      builder_config="tiny48" if smoke else "dense_qa" if old else "dense_qa48",
      num_train=32 if smoke else 20000, num_test=8 if smoke else 500))
  c.tokenizer = ml_collections.ConfigDict(dict(vocab_size=512, num_scenes=200 if smoke else 2000))

  # --- model sizes ---
  c.model = ml_collections.ConfigDict(dict(
      vision_width=128, vision_depth=2, vision_heads=4, patch_size=8,
      hidden=192, intermediate=512, layers=4, heads=6, head_dim=32,
      codebook_size=512 if old else 128, codebook_dim=8, vq_base=16, vq_ch_mult=(1, 2, 4, 4),
      vq_z=64, vq_res_blocks=1, vq_norm_groups=8))
  if smoke:
    c.model.update(dict(vision_width=32, vision_depth=1, vision_heads=2, hidden=32,
                        intermediate=64, layers=1, heads=2, head_dim=16, codebook_size=64,
                        vq_base=8, vq_z=16))

  # --- VQ tokenizer training ---
  # Small batches and dead-code restarts (`vq_training`). Share of 300 held-out scenes the analyser
  # reads exactly after a round trip through the codes: 600 steps x 16 images without restarts
  # 0.40 (95 of 512 codes in use; small squares and diamonds came back as circles); with
  # restarts every 25 steps 0.51; 1200 x 8 with restarts every 50 steps 0.78 (same compute);
  # 1800 x 8 reached 0.92 by step 1350. "restarts" runs 1600 x 8, what fits the hour.
  # "full" has 128 codes, and a dead code restarts on a latent drawn by its distance from the
  # codebook (k-means++; drawn uniformly, most restarts land on background): 1500 x 8 reads
  # 0.97 of 500 test scenes exactly at 34.3 dB (drawn uniformly: 0.86, 33.4 dB), at 64 px; at
  # 48 px the previous shipped run's VQ reads 0.83 at 35.9 dB.
  # "full" also weighs the reconstruction error of the pixels off the background 1 + 2 times
  # (`vq_training.foreground_weights`): the background is ~80% of the pixels and dominated the
  # MSE, and small squares and diamonds came back as circles. Same run at 48 px, weights 1 + 0 /
  # 2 / 4 / 10: 83.2% / 95.8% / 89.4% / 57.0% of the test scenes read exactly; through the
  # VQ alone (each validation prompt's own scene encoded and decoded), ShapesEval's generation
  # categories score 0.877 without the weight and 0.985 with 1 + 2.
  c.vq = ml_collections.ConfigDict(dict(steps=1500, batch_size=8, lr=2e-3, warmup=50,
                                        restart_every=50, foreground_weight=0.0 if old else 2.0))
  if collapsed:
    c.vq.update(dict(steps=600, batch_size=16, restart_every=0))
  if restarts:
    c.vq.steps = 1600
  if smoke:
    c.vq.update(dict(steps=3, batch_size=4, restart_every=1))

  # --- understanding-encoder pretraining (per-patch scene labels; 0 steps: none) ---
  c.encoder = ml_collections.ConfigDict(dict(
      steps=3 if smoke else 300, batch_size=8 if smoke else 64, lr=2e-3, warmup=50))

  # --- the three Janus stages (the LLM, aligners and heads train from scratch) ---
  # Ratios are und : text : gen examples (no pure-text corpus in this world).
  # As in the released recipe (spec 6.2), the pretrained understanding encoder is frozen in
  # stages 1-2 and trains in stage 3; the VQ never trains. With "restarts" stage 3 leans towards
  # understanding (2 : 1), the side that lagged in the "collapsed" run (0.705 against 0.90).
  # "full" halves the rows per step and doubles the steps: on the same tokens the generation
  # loss fell further (stage 2 from one stage-1 export, 600 x 12 rows against 1200 x 6: 2.07 and
  # 1.74 over the last third), and the step time halves with the rows.
  # "full" gives generation most of the examples of stages 2-3 (und:gen 1:4 and 1:2; they were
  # 1:2 and 1:1): an understanding example is an image's prefix and up to 8 question branches,
  # ~3x the tokens of a generation example, so at 1:2 understanding took most of stage 2's
  # compute while scoring 0.97, and the generation loss was still falling at the end. Same run
  # otherwise: ShapesEval generation on 100 validation prompts per category 0.72 -> 0.80 at the
  # best sampling settings, understanding 0.96 -> 0.955. Stage 2 at lr 3e-3 instead: 0.72, 0.915.
  # Stage 2 now at 1:6: stages 2-3 re-run from that run's stage-1 export, 100 validation prompts
  # per category at five sampling settings (guidance 1.5 / 2, temperature 0.4-0.75): generation
  # 0.770-0.803 at 1:4 and 0.813-0.863 at 1:6, understanding 0.955 and 0.943 (400 questions).
  # Relation captions at 0.75 instead of 0.5 (with 1:6): 0.788-0.838, understanding 0.965.
  vq_only = (r"gen_vision_model/.*",)
  both = (r"gen_vision_model/.*", r"vision_model/.*")

  def stage(name, steps, ratios, lr, warmup, frozen):
    return ml_collections.ConfigDict(dict(name=name, steps=steps, ratios=ratios, lr=lr,
                                          warmup=warmup, frozen=frozen))
  if smoke:
    c.stages = [stage("stage1", 2, (1.0, 0.0, 1.0), 1e-3, 1, both),
                stage("stage2", 2, (2.0, 0.0, 3.0), 1e-3, 1, both),
                stage("stage3", 2, (5.0, 0.0, 4.0), 5e-4, 1, vq_only)]
  elif old:
    c.stages = [stage("stage1", 200, (1.0, 0.0, 1.0), 1e-3, 50, both),
                stage("stage2", 2300, (1.0, 0.0, 2.0), 1.5e-3, 100, both),
                stage("stage3", 500, (2.0 if restarts else 1.0, 0.0, 1.0), 4e-4, 20, vq_only)]
  else:  # half the rows per step, twice the steps; at 48 px the VQ, encoder and codes steps
    # take ~5 minutes less than at 64, spent on 300 more stage-2 steps
    c.stages = [stage("stage1", 400, (1.0, 0.0, 1.0), 1e-3, 100, both),
                stage("stage2", 4300, (1.0, 0.0, 6.0), 1.5e-3, 200, both),
                stage("stage3", 900, (1.0, 0.0, 2.0), 4e-4, 40, vq_only)]
  # Recompute each decoder layer in the backward pass instead of storing its activations: on
  # the 2-core CPU the stored activations cost more to write and read back (stacked by the layer
  # scan, then transposed for the weight gradients) than the recomputation. Stage-2 step (12 x
  # 256, three runs each, alternating): "none" 0.84-0.89 s, "full" 0.785-0.794 s.
  c.remat_policy = "full"
  c.batch_size = 4 if smoke else 12 if old else 6  # packed rows per step
  c.seq_len = 256
  c.max_images_per_row = 2  # understanding images per packed row
  # Understanding conversations carry no system prompt: the reference's 30-word one would be
  # ~50 of this tokenizer's tokens per example. Exported into config.json, where sample.py and
  # ShapesEval read it (`chat.checkpoint_system_prompt`).
  c.system_prompt = ""
  c.caption_dropout = 0.1  # classifier-free guidance needs unconditional rows
  # Share of a two-object scene's generation records captioned by a fresh relation caption
  # (`demo.GenSource`). Each image stores 3 captions in distinct styles of 6, so relation
  # captions, the only ones that say where one object is relative to another, were 3.9% of the
  # records (15,000 records of 5,000 train scenes; 23.7% of the scenes admit one); 0.5 makes them
  # ~14%. Stage 3 alone re-run that way from the 48-px run's stage 2, 40 validation prompts per
  # category: overall 0.608 at guidance 2 (position 0.25, attribution 0.50) and 0.546 at 1.5
  # (0.17, 0.35); the shipped stage 3 at 1.5: 0.571 (0.07, 0.38). Suggestive, not conclusive.
  c.relation_captions = 0.0 if old else 0.5
  # An image's question/answer pairs train as independent single-question branches of one shared
  # prefix (`examples.Config.independent_turns`), not as one multi-turn chat: in the chat, a
  # later "is there a red circle?" is answered "yes" every time an earlier question named a red
  # circle (1044 of 1044 such turns in 3000 train records), so the model learns to read the
  # answer off the conversation instead of the image, and ShapesEval asks one question alone.
  # Shipped run: "is there a ..." 0.595 -> 0.973, understanding 0.750 -> 0.855.
  c.independent_turns = not old
  c.log_every = 1 if smoke else 50

  # --- export and evaluation ---
  c.export_dtype = "float32"
  c.eval = ml_collections.ConfigDict(dict(
      run=not smoke, per_category=100, questions=200,
      # Sampling: exported as cfg_weight / temperature, then replaced by the pair of candidates
      # with the best generation accuracy on select_per_category validation prompts per category
      # (`demo.select_sampling`). Guidance above 2 overdraws (counting and single objects fall)
      # and temperature 1 scatters two-object scenes: at 3, or at temperature 1, every earlier
      # checkpoint scored 0.68-0.78. On 50 prompts per category the choice was noise: the
      # 1:6 run picked 1.5 / 0.5 there (0.820, ahead of 2 / 0.75 at 0.807), and on 200 per
      # category 1.5 / 0.5 is among its weakest pairs (0.816; 1.75 / 0.35: 0.847; 2 / 0.25:
      # 0.844). Hence a finer grid around those, scored on 200 prompts per category (~2 min).
      select_per_category=200, cfg_weight=5.0, temperature=1.0,
      cfg_candidates=(1.5, 1.75, 2.0), temperature_candidates=(0.25, 0.35, 0.5)))
  return c
