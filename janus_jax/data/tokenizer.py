"""Text tokenizer: a checkpoint's own `tokenizer.json`, read with the `tokenizers` library.

The released Janus checkpoints ship a HF "fast" tokenizer file (DeepSeek-LLM byte-level BPE). We
load that file directly so the runtime needs no `transformers`. Special tokens are looked up by
their text in the file, never by hard-coded id: ids differ between the real vocabulary (bos 100000)
and the tiny test vocabularies (bos 1).

`encode` prepends BOS exactly once, like the reference `LlamaTokenizerFast.encode`; special-token
strings inside the text (`<image_placeholder>`, `<｜end▁of▁sentence｜>`, ...) become single ids
because they are registered as added tokens in `tokenizer.json`.
"""

import dataclasses
import os
from typing import Sequence

import numpy as np
import tokenizers

from janus_jax import errors

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE = "<image_placeholder>"
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
BOG = "<｜begin▁of▁generation｜>"  # JanusFlow's generation tag (README); optional

# Tokens every Janus tokenizer must define; BOG only matters for JanusFlow prompts.
REQUIRED = {"bos": BOS, "eos": EOS, "pad": PAD, "image": IMAGE, "boi": BOI, "eoi": EOI}


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """Ids of the special tokens in one vocabulary (`bog` is None when absent)."""
  bos: int
  eos: int
  pad: int
  image: int
  boi: int
  eoi: int
  bog: int | None


class Tokenizer:
  """Thin wrapper over `tokenizers.Tokenizer` with Janus's special tokens resolved by name.

  Picklable (grain worker processes receive a copy): it pickles as the serialized JSON string.
  """

  def __init__(self, tok: tokenizers.Tokenizer, source: str = "<in memory>"):
    self._tok = tok
    self.source = source
    vocab = tok.get_vocab(with_added_tokens=True)
    missing = [text for text in REQUIRED.values() if text not in vocab]
    if missing:
      raise errors.InputError(f"tokenizer {source} lacks required special token(s) {missing}")
    self.special = SpecialIds(
        **{name: int(vocab[text]) for name, text in REQUIRED.items()}, bog=vocab.get(BOG))
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_file(cls, path: str) -> "Tokenizer":
    """Loads `path` (a `tokenizer.json`, or a checkpoint directory holding one)."""
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
      raise errors.InputError(f"tokenizer file not found: {path} (expected a HF tokenizer.json)")
    try:
      tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises bare Exception subclasses on malformed JSON
      raise errors.InputError(f"could not parse tokenizer file {path}: {e}") from e
    return cls(tok, source=path)

  def __getstate__(self):
    return {"json": self._tok.to_str(), "source": self.source}

  def __setstate__(self, state):
    self.__init__(tokenizers.Tokenizer.from_str(state["json"]), state["source"])

  def token_id(self, text: str) -> int:
    """Id of one token given by its text; a clear error if the vocabulary lacks it."""
    idx = self._tok.token_to_id(text)
    if idx is None:
      raise KeyError(f"token {text!r} is not in the vocabulary of {self.source}")
    return int(idx)

  def encode(self, text: str, add_bos: bool = True) -> np.ndarray:
    """Token ids (int32) of `text`, with BOS first when `add_bos` (the reference default)."""
    ids, _ = self.encode_with_offsets(text, add_bos=add_bos)
    return ids

  def encode_with_offsets(self, text: str, add_bos: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Ids and (start, end) character offsets per token, BOS given the empty span (0, 0).

    Offsets let callers mark which tokens came from which part of a formatted prompt (the
    answers of a conversation) without re-tokenizing pieces, which could merge differently.
    """
    enc = self._tok.encode(text, add_special_tokens=False)
    ids = np.asarray(enc.ids, np.int32)
    offsets = np.asarray(enc.offsets, np.int32).reshape(-1, 2)
    if add_bos:
      ids = np.concatenate([np.asarray([self.special.bos], np.int32), ids])
      offsets = np.concatenate([np.zeros((1, 2), np.int32), offsets])
    return ids, offsets

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def load(path: str) -> Tokenizer:
  """Loads the tokenizer of a checkpoint directory or a `tokenizer.json` path."""
  return Tokenizer.from_file(path)
