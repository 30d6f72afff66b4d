"""Raw records -> training examples of the three kinds, in one common per-example format.

Per-example format (numpy, T = example length, n = its images, S = image size):
  kind             int    0 understanding, 1 pure text, 2 generation (`mixture.UND/TEXT/GEN`)
  input_ids        (T,)   int32  vocabulary ids, BOS first; image slots hold `<image_placeholder>`,
                                 generation code slots hold the pad id (their embedding is replaced)
  targets          (T,)   int32  what position t predicts: next vocabulary id, or next VQ code where
                                 `image_loss`; 0 where no loss applies
  text_loss        (T,)   bool   loss through lm_head: answers (+ their EOS) for understanding,
                                 every token after BOS for pure text, nothing for generation
  image_loss       (T,)   bool   loss through gen_head: BOI and codes 0..P-2 predict codes 0..P-1
  images_seq_mask  (T,)   bool   slots that take understanding image embeddings (P per image;
                                 P + 1 with BOI for JanusFlow)
  gen_mask         (T,)   bool   slots whose input is gen_aligner(gen_embed(image_codes))
  image_codes      (T,)   int32  the VQ code at `gen_mask` slots, 0 elsewhere
  pixels           (n,S,S,3) float32  normalised understanding images
JanusFlow ("janusflow" family) examples also carry
  flow_seq_mask    (T,)   bool   the 1 + Q slots of a generation image: t_emb, then Q latent tokens
  flow_latents     (k,H,W,Z) float32  clean SDXL-VAE latents (x scaling factor), k = 0 or 1
  flow_pixels      (k,S,S,3) float32  the clean image in [-1, 1] (REPA targets; `flow_pixels`)
A record that cannot be used becomes `{"bad": reason}`; the pipeline skips and counts it.

JanusFlow generation sequence: `[BOS][t2i prompt without its tag][t_emb][Q latents]`, no token
loss (the rectified-flow loss lives on the latents); dropout pads every prompt token after BOS, as
the reference's unconditional rows.

Generation sequence (Janus): `[BOS][t2i prompt ... BOI][P codes]` (+ `[EOI]` if `gen_eoi`, never a
loss target: sampling stops after P codes). With probability `caption_dropout` the prompt between
BOS and BOI is replaced by pad ids of the same length, exactly the unconditional row of CFG
sampling.
"""

import dataclasses

import numpy as np
from PIL import Image

from janus_jax.data import chat
from janus_jax.data import mixture
from janus_jax.data import preprocess
from janus_jax.data import tokenizer as tokenizer_lib

USER_NAMES = ("user", "human", "<|user|>")
ASSISTANT_NAMES = ("assistant", "gpt", "<|assistant|>")

# Reasons a record is skipped (keys of the pipeline's counters).
BAD_REASONS = ("bad_image", "empty_caption", "empty_text", "no_assistant_turn", "bad_roles",
               "image_count_mismatch", "bad_codes", "bad_latents", "too_long", "too_many_images")


@dataclasses.dataclass(frozen=True)
class Config:
  """Per-example settings.

  family: "janus_pro" | "janus" | "janusflow" (roles, BOI-as-slot rule).
  seq_len: packed row length L; longer examples are skipped as "too_long".
  max_images_per_row: M, understanding images a packed row can hold.
  image_tokens: P, embeddings per image (576 = (384/16)^2).
  caption_dropout: probability of replacing a generation prompt by pads (CFG training).
  gen_eoi: append `<end_of_image>` after the codes (no loss on it).
  system_prompt: system prompt of understanding conversations ("" for none).
  independent_turns: an understanding record of several (question, answer) pairs without
    explicit image tags becomes one single-question conversation per pair, packed as branches of
    their shared prefix (`_branched`), instead of one multi-turn chat whose later questions can
    be answered from the earlier turns' text rather than from the image.
  """
  family: str = "janus_pro"
  seq_len: int = 4096
  max_images_per_row: int = 4
  image_tokens: int = 576
  image_size: int = 384
  caption_dropout: float = 0.1
  gen_eoi: bool = False
  system_prompt: str = chat.SYSTEM_PROMPT
  independent_turns: bool = False
  # JanusFlow generation: Q latent tokens (576 for 48x48 latents), latent shape, images per row,
  # and whether to ship the clean image for REPA.
  flow_tokens: int = 576
  latent_shape: tuple[int, int, int] = (48, 48, 4)
  max_flow_images_per_row: int = 4
  flow_pixels: bool = False

  @property
  def slots_per_image(self) -> int:
    return self.image_tokens + (self.family == "janusflow")


class Bad(Exception):
  """Internal: the record is unusable for `reason`."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail = reason, detail


def _example(kind, ids, targets, text_loss, image_loss=None, seq_mask=None, gen_mask=None,
             codes=None, pixels=None, image_size=384) -> dict:
  t = len(ids)
  z = lambda dt: np.zeros((t,), dt)  # noqa: E731
  return {
      "kind": kind,
      "input_ids": ids.astype(np.int32),
      "targets": targets.astype(np.int32),
      "text_loss": text_loss,
      "image_loss": z(bool) if image_loss is None else image_loss,
      "images_seq_mask": z(bool) if seq_mask is None else seq_mask,
      "gen_mask": z(bool) if gen_mask is None else gen_mask,
      "image_codes": z(np.int32) if codes is None else codes.astype(np.int32),
      "pixels": (np.zeros((0, image_size, image_size, 3), np.float32)
                 if pixels is None else pixels),
  }


def _shift(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Next-token targets and the loss mask moved onto the predicting position."""
  targets = np.zeros_like(ids)
  loss = np.zeros(ids.shape, bool)
  targets[:-1] = ids[1:]
  loss[:-1] = mask[1:]
  return np.where(loss, targets, 0), loss


class Builder:
  """Turns (kind, raw record) into an example dict; picklable for grain workers."""

  def __init__(self, tok: tokenizer_lib.Tokenizer, cfg: Config):
    self.tok, self.cfg = tok, cfg
    self.roles = chat.roles(cfg.family)
    self.und_cfg = preprocess.UnderstandingConfig(image_size=cfg.image_size)

  def __call__(self, item, rng: np.random.Generator) -> dict:
    kind, record = item
    try:
      gen = self.flow if self.cfg.family == "janusflow" else self.generation
      ex = (self.understanding, self.text, gen)[kind](record, rng)
    except Bad as e:
      return {"bad": e.reason, "detail": e.detail, "kind": kind}
    if self.cfg.family == "janusflow":
      self._add_flow_defaults(ex)
    if len(ex["input_ids"]) > self.cfg.seq_len:
      return {"bad": "too_long", "kind": kind,
              "detail": f"{len(ex['input_ids'])} tokens > seq_len {self.cfg.seq_len}"}
    return ex

  def _add_flow_defaults(self, ex: dict) -> None:
    """Non-flow examples of a JanusFlow run carry empty flow fields (uniform packing)."""
    cfg = self.cfg
    ex.setdefault("flow_seq_mask", np.zeros(len(ex["input_ids"]), bool))
    ex.setdefault("flow_latents", np.zeros((0,) + tuple(cfg.latent_shape), np.float32))
    if cfg.flow_pixels:
      ex.setdefault("flow_pixels", np.zeros((0, cfg.image_size, cfg.image_size, 3), np.float32))

  # -- understanding ----------------------------------------------------------------------------

  def _image(self, src, name: str) -> np.ndarray:
    try:
      if isinstance(src, np.ndarray):
        img = Image.fromarray(src.astype(np.uint8)).convert("RGB")
      else:
        img = preprocess.load_image(src, name=name)
    except preprocess.BadImageError as e:
      raise Bad("bad_image", str(e)) from e
    return preprocess.understanding_pixels(img, self.und_cfg)

  def understanding(self, record: dict, rng) -> dict:
    del rng
    system = self.cfg.system_prompt
    messages = []
    for role, content in zip(record["roles"], record["contents"]):
      r = role.strip().lower()
      if r == "system":
        system = content.strip()
      elif r in USER_NAMES or r in ASSISTANT_NAMES:
        want = USER_NAMES if len(messages) % 2 == 0 else ASSISTANT_NAMES
        if r not in want:
          raise Bad("bad_roles", f"turn {len(messages)} is {role!r}")
        messages.append([self.roles.user if r in USER_NAMES else self.roles.assistant, content])
      else:
        raise Bad("bad_roles", f"unknown role {role!r}")
    if not any(c.strip() for _, c in messages[1::2]):
      raise Bad("no_assistant_turn", f"{len(messages)} turns")
    images = list(record.get("images", []))
    n_tags = sum(c.count(tokenizer_lib.IMAGE) for _, c in messages)
    branched = self.cfg.independent_turns and n_tags == 0 and len(messages) > 2
    if n_tags == 0 and images:
      # Data without explicit tags: images go first in the first user turn (reference layout;
      # with independent turns, in every question's: `_branched`).
      if not branched:
        messages[0][1] = "\n".join([tokenizer_lib.IMAGE] * len(images) + [messages[0][1].strip()])
    elif n_tags != len(images):
      raise Bad("image_count_mismatch", f"{n_tags} placeholders, {len(images)} images")
    if len(images) > self.cfg.max_images_per_row:
      raise Bad("too_many_images", f"{len(images)} > {self.cfg.max_images_per_row}")
    names = list(record.get("image_paths") or [f"<conversation image {i}>"
                                                for i in range(len(images))])
    pixels = np.stack([self._image(s, n) for s, n in zip(images, names)]) if images else None
    if branched:
      return self._branched(messages, system, len(images), pixels)
    toks, targets, loss = self._conversation(messages, system)
    return _example(mixture.UND, toks.input_ids, targets, loss, seq_mask=toks.images_seq_mask,
                    pixels=pixels, image_size=self.cfg.image_size)

  def _conversation(self, messages, system: str) -> tuple[chat.Tokens, np.ndarray, np.ndarray]:
    """(role, content) turns -> their tokens, next-token targets (T,) and answer loss (T,)."""
    formatted = chat.format_conversation([tuple(m) for m in messages], system=system)
    toks = chat.tokenize(self.tok, formatted, self.cfg.image_tokens, self.cfg.family)
    return (toks, *_shift(toks.input_ids, toks.answer_mask))

  def _branched(self, messages, system: str, n_images: int, pixels) -> dict:
    """One example of the single-question conversations of `messages`' (user, assistant) pairs.

    Each pair k becomes its own conversation, images first in the user turn (the inference
    layout), and the conversations are laid out as their longest common token prefix (branch 0:
    BOS, system prompt, role, image slots...) followed by each one's remaining tokens (branch k).
    With `branch_ids` and `positions` (prefix length + offset) the packed row attends exactly as
    if every conversation were its own example: branch k sees the prefix and itself only.
    """
    convs = []
    for k in range(0, len(messages) - 1, 2):
      (user, question), (assistant, answer) = messages[k], messages[k + 1]
      user_text = "\n".join([tokenizer_lib.IMAGE] * n_images + [question.strip()])
      convs.append(self._conversation([(user, user_text), (assistant, answer)], system))
    ids0 = convs[0][0].input_ids
    n0 = min(len(t.input_ids) for t, _, _ in convs) - 1  # every branch keeps >= 1 token
    for toks, _, loss in convs:
      same = np.flatnonzero(toks.input_ids[:n0] != ids0[:n0])
      n0 = min(n0, same[0] if same.size else n0, int(np.argmax(loss)) if loss.any() else n0)
    # Position n0 - 1 predicts a different token in every branch; it is never an answer token.
    prefix_targets = convs[0][1][:n0].copy()
    prefix_targets[n0 - 1] = 0
    pieces = [(ids0[:n0], np.arange(n0), np.zeros(n0, np.int32), prefix_targets,
               np.zeros(n0, bool), convs[0][0].images_seq_mask[:n0])]
    for k, (toks, targets, loss) in enumerate(convs, 1):
      t = len(toks.input_ids)
      pieces.append((toks.input_ids[n0:], np.arange(n0, t), np.full(t - n0, k, np.int32),
                     targets[n0:], loss[n0:], toks.images_seq_mask[n0:]))
    ids, positions, branches, targets, loss, seq_mask = map(np.concatenate, zip(*pieces))
    if seq_mask[n0:].any():
      raise AssertionError("image slots outside the shared prefix")  # images come first
    ex = _example(mixture.UND, ids, targets, loss, seq_mask=seq_mask, pixels=pixels,
                  image_size=self.cfg.image_size)
    ex["positions"] = positions.astype(np.int32)
    ex["branch_ids"] = branches
    return ex

  # -- pure text --------------------------------------------------------------------------------

  def text(self, record: dict, rng) -> dict:
    del rng
    text = record["text"].strip()
    if not text:
      raise Bad("empty_text")
    ids = np.concatenate([self.tok.encode(text), [self.tok.special.eos]]).astype(np.int32)
    mask = np.ones(ids.shape, bool)
    mask[0] = False  # BOS is never predicted
    targets, loss = _shift(ids, mask)
    return _example(mixture.TEXT, ids, targets, loss, image_size=self.cfg.image_size)

  # -- generation -------------------------------------------------------------------------------

  def generation(self, record: dict, rng: np.random.Generator) -> dict:
    caption = record["caption"].strip()
    if not caption:
      raise Bad("empty_caption")
    codes = np.asarray(record["codes"]).reshape(-1)
    p = self.cfg.image_tokens
    if codes.shape != (p,) or not np.issubdtype(codes.dtype, np.integer) or codes.min() < 0:
      raise Bad("bad_codes", f"codes {codes.shape} {codes.dtype}, expected ({p},) integers")
    sp = self.tok.special
    prompt = self.tok.encode(chat.t2i_prompt(self.cfg.family, caption))
    if prompt[-1] != sp.boi:
      raise Bad("empty_caption", "prompt does not end with <begin_of_image>")
    if self.cfg.caption_dropout and rng.random() < self.cfg.caption_dropout:
      prompt = prompt.copy()
      prompt[1:-1] = sp.pad  # keep BOS and BOI, as the unconditional CFG row
    n = len(prompt)
    tail = [sp.eoi] if self.cfg.gen_eoi else []
    ids = np.concatenate([prompt, np.full(p, sp.pad), tail]).astype(np.int32)
    t = len(ids)
    gen_mask = np.zeros(t, bool)
    gen_mask[n:n + p] = True
    image_codes = np.zeros(t, np.int32)
    image_codes[n:n + p] = codes
    image_loss = np.zeros(t, bool)
    image_loss[n - 1:n - 1 + p] = True  # BOI predicts code 0, code k predicts code k+1
    targets = np.zeros(t, np.int32)
    targets[n - 1:n - 1 + p] = codes
    return _example(mixture.GEN, ids, targets, np.zeros(t, bool), image_loss=image_loss,
                    gen_mask=gen_mask, codes=image_codes, image_size=self.cfg.image_size)

  def flow(self, record: dict, rng: np.random.Generator) -> dict:
    """JanusFlow generation example: prompt, then t_emb + Q latent slots, no token loss."""
    cfg = self.cfg
    caption = record["caption"].strip()
    if not caption:
      raise Bad("empty_caption")
    latents = np.asarray(record["latents"], np.float32)
    if latents.shape != tuple(cfg.latent_shape) or not np.isfinite(latents).all():
      raise Bad("bad_latents", f"latents {latents.shape}, expected {tuple(cfg.latent_shape)}")
    sp = self.tok.special
    prompt = self.tok.encode(chat.t2i_prompt("janusflow", caption))[:-1]  # the tag is dropped
    if cfg.caption_dropout and rng.random() < cfg.caption_dropout:
      prompt = prompt.copy()
      prompt[1:] = sp.pad
    n, q = len(prompt), cfg.flow_tokens
    ids = np.concatenate([prompt, np.full(1 + q, sp.pad)]).astype(np.int32)
    ex = _example(mixture.GEN, ids, np.zeros(len(ids), np.int32), np.zeros(len(ids), bool),
                  image_size=cfg.image_size)
    ex["flow_seq_mask"] = np.arange(len(ids)) >= n
    ex["flow_latents"] = latents[None]
    if cfg.flow_pixels:
      if "image" not in record:
        raise Bad("bad_image", "flow_pixels needs the record's image")
      try:
        img = preprocess.load_image(record["image"], name=record.get("key"))
      except preprocess.BadImageError as e:
        raise Bad("bad_image", str(e)) from e
      ex["flow_pixels"] = preprocess.generation_pixels(img, cfg.image_size)[None]
    return ex
