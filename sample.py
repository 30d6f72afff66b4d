"""Sample from a Janus / Janus-Pro / JanusFlow checkpoint: text-to-image, or chat about images.

Text-to-image (PNG per image plus grid.png under --out):
  python sample.py --checkpoint=CKPT --prompt="a red fox in snow" --prompt="a lighthouse" \
      --num_images=4 --cfg=5 --temperature=1 --seed=0 --out=samples
  python sample.py --checkpoint=CKPT --prompts_file=prompts.txt      # one prompt per line
Chat (prints the answer; a batch: JSONL lines {"question": ..., "images": [paths]}):
  python sample.py --checkpoint=CKPT --image=photo.jpg --question="What is in the picture?"
  python sample.py --checkpoint=CKPT --chat_file=questions.jsonl

CKPT is a `convert_torch.py` output directory (or an original PyTorch checkpoint directory,
converted in memory); its `tokenizer.json` is looked up there, then in the directory it was
converted from (or give --config.tokenizer). Defaults live in configs/sample.py; any of them can
be overridden with --config.<field>=value. Runs on all local devices: rows are split over the
mesh's batch axes and parameters are placed by the logical sharding rules (janus_jax.sharding).
"""

import dataclasses
import json
import pathlib
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
from PIL import Image
import tqdm

from configs import sample as sample_config
from janus_jax import cli
from janus_jax import errors
from janus_jax import sharding
from janus_jax.data import chat
from janus_jax.data import preprocess
from janus_jax.data import tokenizer as tokenizer_lib
from janus_jax.sampling import image_ar
from janus_jax.sampling import loading
from janus_jax.sampling import samplers
from janus_jax.sampling import text

# The no-argument demo: prompts of the shapes world's caption grammar for the shipped checkpoint.
DEMO_PROMPTS = (
    "a red circle",
    "a blue square on the left of a yellow triangle",
    "two green diamonds",
    "a large purple circle in the top left and a small cyan square in the bottom right",
)


# --------------------------------------------------------------------------- loading


def template_family(name: str, model, cfg, path: pathlib.Path, meta) -> str:
  if cfg.template != "auto":
    if cfg.template not in chat.FAMILIES:
      raise errors.InputError(f"--config.template={cfg.template!r}: expected auto or "
                              f"{chat.FAMILIES}")
    return cfg.template
  if name == "janusflow":
    return "janusflow"
  names = f"{path.resolve()} {meta.get('source', '')}".lower()
  is_pro = "pro" in names or model.config.llm.hidden_size == 4096  # only Pro ships a 7B
  return "janus_pro" if is_pro else "janus"


# --------------------------------------------------------------------------- text-to-image


def read_prompts(req) -> list[str]:
  prompts = list(req.prompts)
  if req.prompts_file:
    f = pathlib.Path(req.prompts_file)
    if not f.is_file():
      raise errors.InputError(f"prompts file {f} does not exist")
    prompts += [line.strip() for line in f.read_text().splitlines() if line.strip()]
  for i, p in enumerate(prompts):
    if not p.strip():
      raise errors.InputError(f"prompt {i} is empty")
  return prompts


def _chunks(items: list, size: int):
  """Fixed-size chunks; the last is padded with its final item (one compiled shape)."""
  for start in range(0, len(items), size):
    chunk = items[start:start + size]
    yield chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)


def save_images(images: np.ndarray, out: pathlib.Path, per_prompt: int, grid: bool):
  out.mkdir(parents=True, exist_ok=True)
  for i, im in enumerate(images):
    Image.fromarray(im).save(out / f"{i // per_prompt:03d}_{i % per_prompt:02d}.png")
  if grid:
    rows = len(images) // per_prompt
    h, w = images.shape[1:3]
    g = images.reshape(rows, per_prompt, h, w, 3).transpose(0, 2, 1, 3, 4)
    Image.fromarray(g.reshape(rows * h, per_prompt * w, 3)).save(out / "grid.png")


def run_t2i(name, model, params, tok, template, cfg, mesh, rules_, prompts) -> np.ndarray:
  """Generates cfg.t2i.num_images images per prompt; returns (n_prompts * n, H, W, 3) uint8."""
  t = cfg.t2i
  ids = [[int(x) for x in tok.encode(chat.t2i_prompt(template, p))] for p in prompts]
  rng = jax.random.key(cfg.seed)
  images = []
  if name == "janusflow":
    from janus_jax.convert import vae as vae_convert  # noqa: PLC0415
    from janus_jax.sampling import image_flow  # noqa: PLC0415  (JanusFlow only)
    vae_dir = pathlib.Path(t.vae) if t.vae else pathlib.Path(cfg.checkpoint) / "vae"
    vae_cfg, vae_params = vae_convert.load(vae_dir, latent_channels=model.config.latent_channels)
    vae_model = vae_convert.build_model(vae_cfg, model.dtype, model.dtype)
    latent_size = model.config.gen_latent_size
    if t.image_size is not None:
      if t.image_size % vae_cfg.downsample_factor:
        raise errors.InputError(f"--config.t2i.image_size={t.image_size} is not a multiple of "
                                f"the VAE's downsampling {vae_cfg.downsample_factor}")
      latent_size = t.image_size // vae_cfg.downsample_factor
    rows = [p for p in ids for _ in range(t.num_images)]
    for b, (chunk, real) in enumerate(tqdm.tqdm(list(_chunks(rows, t.batch_prompts)),
                                                desc="batches", unit="batch")):
      with sharding.activate(mesh, rules_):
        imgs = image_flow.generate(model, params, vae_model, vae_params, chunk,
                                   pad_id=tok.special.pad, cfg_weight=t.flow_cfg_weight,
                                   steps=t.flow_steps, seed=cfg.seed + b,
                                   latent_size=latent_size)
      images.append(np.asarray(imgs)[:real])
    return np.concatenate(images)
  sampler = samplers.make(t.temperature, t.top_k, t.top_p)
  num_tokens = image_ar.image_tokens(model, t.image_size)
  for b, (chunk, real) in enumerate(tqdm.tqdm(list(_chunks(ids, t.batch_prompts)),
                                              desc="batches", unit="batch")):
    with sharding.activate(mesh, rules_):
      res = image_ar.generate(model, params, chunk, num_images=t.num_images,
                              cfg_weight=t.cfg_weight, sampler=sampler,
                              rng=jax.random.fold_in(rng, b), pad_id=tok.special.pad,
                              num_tokens=num_tokens, length_multiple=cfg.length_multiple,
                              mesh=mesh)
    images.append(res.images[:real * t.num_images])
  return np.concatenate(images)


# --------------------------------------------------------------------------- chat


def read_conversations(req) -> list[dict]:
  convs = []
  if req.question is not None or req.images:
    convs.append({"question": req.question or "", "images": list(req.images)})
  if req.chat_file:
    f = pathlib.Path(req.chat_file)
    if not f.is_file():
      raise errors.InputError(f"chat file {f} does not exist")
    for n, line in enumerate(f.read_text().splitlines(), 1):
      if not line.strip():
        continue
      try:
        d = json.loads(line)
      except json.JSONDecodeError as e:
        raise errors.InputError(f"{f}:{n}: not JSON: {e}") from None
      if not isinstance(d, dict) or not isinstance(d.get("question"), str):
        raise errors.InputError(f"{f}:{n}: expected an object with a 'question' string")
      images = [str(f.parent / p) for p in d.get("images", [])]
      convs.append({"question": d["question"], "images": images})
  for i, c in enumerate(convs):
    if not c["question"].strip():
      raise errors.InputError(f"conversation {i}: the question is empty (give --question)")
    # Decode (and so validate) every image before the slow model load; convertible modes
    # (CMYK, 16-bit, palette, animated: first frame) become RGB, the rest is refused by name.
    c["images"] = [preprocess.load_image(p) for p in c["images"]]
  return convs


def chat_inputs(conv, tok, template, model, system: str = chat.SYSTEM_PROMPT):
  """(expanded ids, normalised images) of one conversation; `system`: the checkpoint's system
  prompt (`chat.checkpoint_system_prompt`)."""
  pre = preprocess.UnderstandingConfig(image_size=model.config.vision.image_size)
  images = [preprocess.understanding_pixels(im, pre) for im in conv["images"]]
  question = conv["question"]
  if tokenizer_lib.IMAGE in question:  # the user placed the images in the text
    r = chat.roles(template)
    prompt = chat.format_conversation([(r.user, question), (r.assistant, "")],
                                      system=system).text
  else:
    prompt = chat.understanding_prompt(template, question, len(images), system=system)
  toks = chat.tokenize(tok, prompt, image_tokens=model.config.image_tokens, family=template)
  if toks.n_images != len(images):
    raise errors.InputError(f"question has {toks.n_images} image placeholders but {len(images)} "
                            "images")
  return [int(x) for x in toks.input_ids], images


def run_chat(name, model, params, tok, template, cfg, mesh, rules_, convs,
             system: str = chat.SYSTEM_PROMPT) -> list[str]:
  c = cfg.chat
  sp = tok.special
  inputs = [chat_inputs(conv, tok, template, model, system) for conv in convs]
  s = model.config.vision.image_size
  sampler = samplers.make(c.temperature, c.top_k, c.top_p)
  extra = (sp.boi,) if name == "janusflow" else ()
  answers = []
  for b, (chunk, real) in enumerate(tqdm.tqdm(list(_chunks(inputs, c.batch_size)),
                                              desc="batches", unit="batch")):
    batch = text.make_batch(chunk, image_id=sp.image, pad_id=sp.pad,
                            tokens_per_image=model.config.image_tokens, image_shape=(s, s, 3),
                            seq_extra_ids=extra, length_multiple=cfg.length_multiple)
    with sharding.activate(mesh, rules_):
      ans = text.generate(model, params, batch, max_new_tokens=c.max_new_tokens, sampler=sampler,
                          rng=jax.random.fold_in(jax.random.key(cfg.seed), b), eos_id=sp.eos,
                          pad_id=sp.pad, detokenize=tok.decode, mesh=mesh)
    answers += ans.texts[:real]
  return answers


# --------------------------------------------------------------------------- main


def define_flags():
  """Command-line flags (defined only when run as a script, so importing this file is free)."""
  config_flags.DEFINE_config_dict("config", sample_config.get_config())
  flags.DEFINE_string("checkpoint", None, "converted checkpoint directory")
  flags.DEFINE_multi_string("prompt", [], "text-to-image prompt (repeatable)")
  flags.DEFINE_string("prompts_file", None, "text file, one prompt per line")
  flags.DEFINE_integer("num_images", None, "images per prompt")
  flags.DEFINE_float("cfg", None, "classifier-free guidance weight")
  flags.DEFINE_float("temperature", None, "sampling temperature (0 = greedy)")
  flags.DEFINE_integer("top_k", None, "top-k filter (0 = off)")
  flags.DEFINE_float("top_p", None, "top-p (nucleus) filter (1 = off)")
  flags.DEFINE_integer("seed", None, "random seed")
  flags.DEFINE_string("out", None, "output directory for images")
  flags.DEFINE_multi_string("image", [], "image for a chat question (repeatable)")
  flags.DEFINE_string("question", None, "chat question about --image")
  flags.DEFINE_string("chat_file", None, "JSONL of {question, images} to answer")
  flags.DEFINE_integer("max_new_tokens", None, "chat answer budget")


def apply_flags(cfg, f):
  """Command-line flags `f` (absl FLAGS) override the config."""
  for field in ("checkpoint", "seed", "out"):
    if f[field].value is not None:
      cfg[field] = f[field].value
  for flag, field in (("num_images", "num_images"), ("cfg", "cfg_weight"), ("top_k", "top_k"),
                      ("top_p", "top_p"), ("temperature", "temperature")):
    if f[flag].value is not None:
      cfg.t2i[field] = f[flag].value
      if field in ("top_k", "top_p", "temperature"):
        cfg.chat[field] = f[flag].value
  if f.cfg is not None:
    cfg.t2i.flow_cfg_weight = f.cfg
  if f.max_new_tokens is not None:
    cfg.chat.max_new_tokens = f.max_new_tokens
  return cfg


@dataclasses.dataclass
class Request:
  """What to do, from the command line: prompts and/or conversations."""

  prompts: list = dataclasses.field(default_factory=list)
  prompts_file: str | None = None
  images: list = dataclasses.field(default_factory=list)
  question: str | None = None
  chat_file: str | None = None


def _read_json(path: str, what: str):
  try:
    return json.loads(pathlib.Path(path).read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise errors.InputError(f"{what}={path}: not a readable JSON file ({e})") from None


def run(cfg, req: Request) -> int:
  """Loads the checkpoint and serves the request; bad input raises (see `main`)."""
  prompts, convs = read_prompts(req), read_conversations(req)
  if not prompts and not convs and not cfg.checkpoint and loading.default_checkpoint():
    prompts = list(DEMO_PROMPTS)  # `python sample.py` alone: draw the demo prompts
  if not prompts and not convs:
    raise errors.InputError("nothing to do: give --prompt/--prompts_file (text-to-image) or "
                            "--image with --question / --chat_file (chat)")
  if cfg.t2i.num_images < 1:
    raise errors.InputError(f"--num_images must be >= 1, got {cfg.t2i.num_images}")
  path = cfg.checkpoint or loading.default_checkpoint()
  if not path:
    raise errors.InputError("no --checkpoint given and this checkout embeds no default checkpoint; "
                            "pass --checkpoint=DIR (a convert_torch.py output directory)")
  path = pathlib.Path(path)
  mesh = sharding.make_mesh(tuple(cfg.mesh))
  rules_ = sharding.rules_from_config(cfg.sharding_rules)
  start = time.time()
  extra = _read_json(cfg.extra, "--config.extra") if cfg.extra else None
  loaded = loading.load(path, dtype=cfg.dtype, mesh=mesh, rules_=rules_, extra=extra)
  name, model, params, meta = loaded.family, loaded.model, loaded.params, loaded.meta
  tok = loading.load_tokenizer(path, meta, cfg.tokenizer)
  if cfg.t2i.image_size is None and meta.get("image_size"):  # the size it was trained at
    cfg.t2i.image_size = int(meta["image_size"])
  if tok.vocab_size > model.config.llm.vocab_size:
    raise errors.InputError(f"tokenizer {tok.source} has {tok.vocab_size} tokens but the model's "
                            f"vocabulary has {model.config.llm.vocab_size}: wrong tokenizer?")
  template = template_family(name, model, cfg, path, meta)
  if cfg.t2i.cfg_weight is None:
    cfg.t2i.cfg_weight = image_ar.checkpoint_cfg_weight(meta)
  if cfg.t2i.temperature is None:
    cfg.t2i.temperature = image_ar.checkpoint_temperature(meta)
  print(f"loaded {name} checkpoint {path} ({template} template, {len(jax.devices())} "
        f"device(s), {time.time() - start:.1f}s)", file=sys.stderr)
  if prompts:
    start = time.time()
    images = run_t2i(name, model, params, tok, template, cfg, mesh, rules_, prompts)
    save_images(images, pathlib.Path(cfg.out), cfg.t2i.num_images, cfg.t2i.grid)
    print(f"wrote {len(images)} images to {cfg.out} ({time.time() - start:.1f}s)")
  if convs:
    answers = run_chat(name, model, params, tok, template, cfg, mesh, rules_, convs,
                       chat.checkpoint_system_prompt(meta))
    for conv, answer in zip(convs, answers):
      if req.chat_file:
        print(json.dumps({"question": conv["question"], "answer": answer}))
      else:
        print(answer)
  return 0


def main(argv):
  if len(argv) > 1:
    raise errors.InputError(f"unexpected arguments {argv[1:]} (use --prompt=...)")
  cli.quiet_logs()
  f = flags.FLAGS
  cfg = apply_flags(f.config, f)
  req = Request(list(f.prompt), f.prompts_file, list(f.image), f.question, f.chat_file)
  return run(cfg, req)


if __name__ == "__main__":
  cli.run(main, define_flags)
