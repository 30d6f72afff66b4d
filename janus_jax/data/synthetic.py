"""Small generated tokenizer and datasets, for the data tests and `bench/data_bench.py`.

The tokenizer is a byte-level BPE (the same model family as the DeepSeek tokenizer, so offsets
behave alike: a word token carries its leading space) trained on a few sentences, with every Janus
special token registered as an added token.
"""

import io
import json
import os

import numpy as np
from PIL import Image
import tokenizers

from janus_jax.data import chat
from janus_jax.data import tokenizer as tokenizer_lib

SPECIALS = (tokenizer_lib.BOS, tokenizer_lib.EOS, tokenizer_lib.PAD, tokenizer_lib.IMAGE,
            tokenizer_lib.BOI, tokenizer_lib.EOI, tokenizer_lib.BOG)
WORDS = ("the a cat dog sits on mat red blue green image photo of picture shows what is in this "
         "describe detail color sky tree house car person runs jumps big small bright dark and "
         "answer question yes no there are two three").split()
CORPUS = [chat.SYSTEM_PROMPT, "<|User|>: <|Assistant|>: User: Assistant:"] + [
    " ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]


def tokenizer_json() -> str:
  """Serialized `tokenizer.json` text of the tiny byte-level BPE."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=400, special_tokens=list(SPECIALS),
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  return tok.to_str()


def tiny_tokenizer() -> tokenizer_lib.Tokenizer:
  return tokenizer_lib.Tokenizer(tokenizers.Tokenizer.from_str(tokenizer_json()), "<synthetic>")


def sentence(rng: np.random.Generator, lo: int = 3, hi: int = 12) -> str:
  return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi))))


def png_bytes(rng: np.random.Generator, w: int, h: int, mode: str = "RGB") -> bytes:
  arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).convert(mode).save(buf, format="PNG")
  return buf.getvalue()


def und_records(n: int, seed: int = 0, max_images: int = 2, size: tuple[int, int] = (40, 30)):
  """Understanding conversations: 1-2 turns, 1..max_images images."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    k = int(rng.integers(1, max_images + 1))
    turns = int(rng.integers(1, 3))
    roles, contents = [], []
    for t in range(turns):
      q = sentence(rng) + "?"
      if t == 0:
        q = "\n".join([tokenizer_lib.IMAGE] * k + [q])
      roles += ["user", "assistant"]
      contents += [q, sentence(rng)]
    out.append({"images": [png_bytes(rng, *size) for _ in range(k)], "roles": roles,
                "contents": contents})
  return out


def text_records(n: int, seed: int = 1):
  rng = np.random.default_rng(seed)
  return [{"text": sentence(rng, 5, 40)} for _ in range(n)]


def gen_records(n: int, image_tokens: int, seed: int = 2, codebook: int = 64):
  rng = np.random.default_rng(seed)
  return [{"caption": sentence(rng), "codes": rng.integers(0, codebook, image_tokens,
                                                           dtype=np.int32)} for _ in range(n)]


def write_raw_files(root: str, n: int = 6, seed: int = 0) -> dict:
  """Writes an image-caption folder and JSONL files (conversations, captions, text) under root."""
  rng = np.random.default_rng(seed)
  folder = os.path.join(root, "captions")
  os.makedirs(folder, exist_ok=True)
  for i in range(n):
    with open(os.path.join(folder, f"img{i}.png"), "wb") as f:
      f.write(png_bytes(rng, 20 + i, 16))
    with open(os.path.join(folder, f"img{i}.txt"), "w") as f:
      f.write(sentence(rng))
  conv = os.path.join(root, "conversations.jsonl")
  with open(conv, "w") as f:
    for i in range(n):
      f.write(json.dumps({"images": [f"captions/img{i}.png"], "messages": [
          {"role": "user", "content": "<image_placeholder>\n" + sentence(rng)},
          {"role": "assistant", "content": sentence(rng)}]}) + "\n")
  text = os.path.join(root, "text.jsonl")
  with open(text, "w") as f:
    for _ in range(n):
      f.write(json.dumps({"text": sentence(rng)}) + "\n")
  caps = os.path.join(root, "captions.jsonl")
  with open(caps, "w") as f:
    for i in range(n):
      f.write(json.dumps({"image": f"captions/img{i}.png", "caption": sentence(rng)}) + "\n")
  return {"folder": folder, "conversations": conv, "text": text, "captions": caps}


TINY_IMAGE_TOKENS = 16
TINY_IMAGE_SIZE = 32


def tiny_config(family: str = "janus_pro", **kw):
  """A small pipeline config (16 image tokens, 32 px images, rows of 256); kw override fields
  of `pipeline.Config` or of its `examples.Config`."""
  from janus_jax.data import examples  # pylint: disable=import-outside-toplevel
  from janus_jax.data import pipeline  # (pipeline imports nothing from here; kept local anyway)
  ex = dict(family=family, seq_len=256, image_tokens=TINY_IMAGE_TOKENS,
            image_size=TINY_IMAGE_SIZE, max_images_per_row=4)
  for k in list(kw):
    if k in examples.Config.__dataclass_fields__:
      ex[k] = kw.pop(k)
  kw.setdefault("batch_size", 4)
  kw.setdefault("ratios", (2.0, 1.0, 2.0))
  return pipeline.Config(example=examples.Config(**ex), **kw)
