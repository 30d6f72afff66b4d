"""The "deepseek" conversation template, text-to-image prompts and image-token insertion.

Template (reference `janus/utils/conversation.py`, sep style DeepSeek): an optional system
prompt followed by "\\n\\n", then for message i `role + ": " + content` closed by "\\n\\n" after
user turns (even i) and by the EOS text after assistant turns (odd i); an empty message renders as
`role + ":"` (the generation prompt). Every content is stripped and so is the whole prompt.
Roles are written verbatim: `<|User|>`/`<|Assistant|>` for Janus-Pro, `User`/`Assistant` for
Janus-1.3B and JanusFlow.

Image-token insertion: every `<image_placeholder>` id of the tokenized prompt becomes
`<begin_of_image>` + P x `<image_placeholder>` + `<end_of_image>`. The embedding slots are the
P placeholder ids (Janus) or BOI plus the P placeholders (JanusFlow, whose understanding encoder
prepends a learned begin-of-understanding embedding: P + 1 slots per image).
"""

import dataclasses
from typing import Sequence

import numpy as np

from janus_jax import errors
from janus_jax.data import tokenizer as tokenizer_lib

SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language.")
SEP = "\n\n"
SEP2 = tokenizer_lib.EOS

FAMILIES = ("janus_pro", "janus", "janusflow")


@dataclasses.dataclass(frozen=True)
class Roles:
  user: str
  assistant: str


def roles(family: str) -> Roles:
  """Role strings of a model family ("janus_pro", "janus" = Janus-1.3B, "janusflow")."""
  if family == "janus_pro":
    return Roles("<|User|>", "<|Assistant|>")
  if family in ("janus", "janusflow"):
    return Roles("User", "Assistant")
  raise errors.InputError(f"unknown model family {family!r}; expected one of {FAMILIES}")


@dataclasses.dataclass(frozen=True)
class Formatted:
  """A formatted prompt and the character spans [start, end) of the answers (EOS included)."""
  text: str
  answer_spans: tuple[tuple[int, int], ...]


def format_conversation(messages: Sequence[tuple[str, str]], system: str = SYSTEM_PROMPT
                        ) -> Formatted:
  """Renders (role, content) pairs with the deepseek template; odd-indexed turns are answers.

  An answer span covers its content and the closing EOS text, the tokens a model must learn to
  produce. The final strip() only removes leading/trailing whitespace that no span covers (a
  system prompt never starts with a space after strip, contents are stripped already), so spans
  are shifted by the leading strip only.
  """
  out = system + SEP if system else ""
  spans = []
  for i, (role, content) in enumerate(messages):
    content = content.strip()
    if not content:
      out += role + ":"
      continue
    out += role + ": "
    start = len(out)
    out += content + (SEP if i % 2 == 0 else SEP2)
    if i % 2 == 1:
      spans.append((start, len(out)))
  lead = len(out) - len(out.lstrip())
  text = out.strip()
  return Formatted(text, tuple((s - lead, min(e - lead, len(text))) for s, e in spans))


def understanding_prompt(family: str, question: str, n_images: int = 1,
                         system: str = SYSTEM_PROMPT) -> str:
  """Inference prompt for understanding: image placeholder(s) then the question, after `system`
  (the reference's default system prompt; a model trained with another says so in its
  checkpoint's config.json, see `checkpoint_system_prompt`)."""
  r = roles(family)
  user = "\n".join([tokenizer_lib.IMAGE] * n_images + [question])
  return format_conversation([(r.user, user), (r.assistant, "")], system=system).text


def checkpoint_system_prompt(meta: dict) -> str:
  """The understanding system prompt a checkpoint was trained with: its config.json's
  "system_prompt" when present (the shapes demo trains with none), else the reference's."""
  value = meta.get("system_prompt", SYSTEM_PROMPT)
  if not isinstance(value, str):
    raise errors.InputError(f"config.json system_prompt must be a string, got {value!r}")
  return value


def t2i_prompt(family: str, caption: str, tag: str | None = None) -> str:
  """Text-to-image prompt: template with an empty system prompt, then the image tag.

  Janus / Janus-Pro append `<begin_of_image>`; JanusFlow's reference appends a tag that its
  sampler drops again (README `<｜begin▁of▁generation｜>`, demo `<begin_of_image>`).
  """
  r = roles(family)
  body = format_conversation([(r.user, caption), (r.assistant, "")], system="").text
  return body + (tag if tag is not None else tokenizer_lib.BOI)


@dataclasses.dataclass(frozen=True)
class Tokens:
  """A tokenized prompt with image slots expanded (all arrays (T,)).

  input_ids: int32 ids, BOS first. images_seq_mask: True where an image embedding goes.
  answer_mask: True on tokens inside an answer span (conversations; False elsewhere).
  n_images: number of image placeholders expanded.
  """
  input_ids: np.ndarray
  images_seq_mask: np.ndarray
  answer_mask: np.ndarray
  n_images: int


def tokenize(tok: tokenizer_lib.Tokenizer, formatted: Formatted | str, image_tokens: int = 576,
             family: str = "janus_pro") -> Tokens:
  """Tokenizes a formatted prompt and expands each image placeholder into its P slots.

  Args:
    tok: the checkpoint tokenizer.
    formatted: output of `format_conversation`, or a raw prompt string (no answers).
    image_tokens: P, image embeddings per image (576 for 384px / patch 16).
    family: "janusflow" marks BOI as an image slot too (P + 1 slots per image).
  """
  if isinstance(formatted, str):
    formatted = Formatted(formatted, ())
  ids, offsets = tok.encode_with_offsets(formatted.text)
  answer = np.zeros(ids.shape, bool)
  for start, end in formatted.answer_spans:
    # Overlap, not containment: a byte-level BPE token " The" starts at the space before the span.
    answer |= (offsets[:, 1] > start) & (offsets[:, 0] < end)
  answer[0] = False  # BOS has the empty span (0, 0)
  sp = tok.special
  is_image = ids == sp.image
  n_images = int(is_image.sum())
  if n_images == 0:
    return Tokens(ids, np.zeros(ids.shape, bool), answer, 0)
  block = np.concatenate([[sp.boi], np.full(image_tokens, sp.image), [sp.eoi]]).astype(np.int32)
  slot = np.concatenate([[family == "janusflow"], np.ones(image_tokens, bool), [False]])
  pieces_ids, pieces_slot, pieces_ans = [], [], []
  start = 0
  for p in np.flatnonzero(is_image):
    pieces_ids += [ids[start:p], block]
    pieces_slot += [np.zeros(p - start, bool), slot]
    pieces_ans += [answer[start:p], np.zeros(block.shape, bool)]
    start = p + 1
  pieces_ids.append(ids[start:])
  pieces_slot.append(np.zeros(len(ids) - start, bool))
  pieces_ans.append(answer[start:])
  return Tokens(np.concatenate(pieces_ids).astype(np.int32), np.concatenate(pieces_slot),
                np.concatenate(pieces_ans), n_images)
