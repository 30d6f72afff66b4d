"""Sampling defaults for `sample.py` (text-to-image and multimodal chat).

Text-to-image, 4 images for each of two prompts, reference guidance (w = 5, temperature 1):
  python sample.py --checkpoint=CKPT --prompt="a red fox in snow" --prompt="a lighthouse" \
      --num_images=4 --seed=0 --out=samples
Chat about an image (greedy, as the reference README):
  python sample.py --checkpoint=CKPT --image=photo.jpg --question="What is shown here?"
Any field can be overridden with `--config.<field>=value`, e.g. `--config.t2i.batch_prompts=2`
or `--config.mesh=1,1,-1` (tensor-parallel parameters for a model one device cannot hold).
"""

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.checkpoint = ""  # a convert_torch.py output dir (or an original PyTorch checkpoint dir)
  c.extra = ""  # original checkpoints only: JSON of sizes config.json cannot express (fixtures)
  c.tokenizer = ""  # tokenizer.json; default: the checkpoint dir, then its conversion source
  # "auto": bfloat16 (as the reference runs) on accelerators, float32 on CPU.
  c.dtype = "auto"
  # Chat template roles: "auto" (JanusFlow checkpoints -> "janusflow"; Janus: "janus_pro" when
  # the checkpoint or its source path names Pro or the LLM is the 7B, else "janus"), or one of
  # "janus_pro", "janus", "janusflow".
  c.template = "auto"
  c.seed = 0
  c.out = "samples"
  # (data, fsdp, tensor) mesh over all devices; -1 takes the rest. Pure data parallelism by
  # default: decoding reads every weight each step, so replicated weights are fastest when they
  # fit; use 1,1,-1 to shard a large model's weights (tensor parallel) instead.
  c.mesh = (-1, 1, 1)
  c.sharding_rules = None  # None: janus_jax.sharding.DEFAULT_RULES
  c.length_multiple = 16  # prompt lengths are padded up to this (fewer shapes to compile)

  c.t2i = ml_collections.ConfigDict()
  c.t2i.num_images = 4  # per prompt (the reference's parallel_size)
  # Janus/Janus-Pro guidance. None: the checkpoint's own recommendation (config.json
  # "sampling": {"cfg_weight": w}, as the shapes demo writes) or else the reference's 5.0.
  # JanusFlow uses flow_cfg_weight.
  c.t2i.cfg_weight = ml_collections.FieldReference(None, field_type=float)
  # 0 = greedy. None: the checkpoint's recommendation (config.json "sampling": {"temperature":
  # t}, chosen with the guidance weight by the shapes demo) or else the reference's 1.0.
  c.t2i.temperature = ml_collections.FieldReference(None, field_type=float)
  c.t2i.top_k = 0  # 0 = off
  c.t2i.top_p = 1.0  # 1 = off
  # Pixels. None: the model's own (Janus: its image-token grid times the VQ's downsampling;
  # JanusFlow: its latent size times the VAE's), 384 for every released model.
  c.t2i.image_size = ml_collections.FieldReference(None, field_type=int)
  c.t2i.batch_prompts = 4  # prompts per compiled batch (rows = 2 x prompts x num_images)
  c.t2i.grid = True  # also write grid.png
  c.t2i.flow_cfg_weight = 2.0  # JanusFlow (README / demo default)
  c.t2i.flow_steps = 30
  c.t2i.vae = ""  # JanusFlow: diffusers SDXL-VAE folder; default <checkpoint>/vae

  c.chat = ml_collections.ConfigDict()
  c.chat.max_new_tokens = 512
  c.chat.temperature = 0.0  # README: greedy; the demos use 0.1 with top_p 0.95
  c.chat.top_k = 0
  c.chat.top_p = 1.0
  c.chat.batch_size = 8  # conversations per compiled batch
  return c
