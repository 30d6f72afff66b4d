"""The shapes world's own text tokenizer: a small byte-level BPE saved as a HF `tokenizer.json`.

    python -m janus_jax.shapes_demo.world.vocab OUT_DIR_OR_FILE [--vocab_size 512]

The file has the layout a released Janus checkpoint ships (byte-level pre-tokenizer and decoder,
BPE model, special tokens as `added_tokens` with `special: true`), so `janus_jax.data.tokenizer`
loads it like the real one. The Janus special tokens are registered by their real names and take
ids 0..8; code must look them up by text, never by id. Byte-level BPE has no unknown token: any
text, unseen words and non-ASCII included, falls back to byte tokens.

The corpus is every caption style and question kind over training-split scenes, plus the chat
template's own words (system prompt, role names), so prompts and answers are a few tokens each.
"""

import argparse
import json
import os

import numpy as np
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import processors
from tokenizers import trainers

from janus_jax.shapes_demo.world import text
from janus_jax.shapes_demo.world import world

# The Janus special tokens, spelled as the released tokenizers spell them.
SPECIAL_TOKENS = (
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜▁pad▁｜>",
    "<image_placeholder>",
    "<begin_of_image>",
    "<end_of_image>",
    "<｜begin▁of▁generation｜>",
    "<|User|>",
    "<|Assistant|>",
)


def corpus(num_scenes: int = 2000, seed: int = 0):
  """Yields training texts: captions in every style and all QA of `num_scenes` train scenes."""
  from janus_jax.data import chat  # the template's words belong in the vocabulary too
  yield chat.SYSTEM_PROMPT
  rng = np.random.default_rng([seed, 99])
  for i, scene in enumerate(world.split_scenes("train", num_scenes, seed)):
    if i < 20:  # whole formatted prompts, for the template's separators
      family = chat.FAMILIES[i % len(chat.FAMILIES)]
      yield chat.t2i_prompt(family, text.caption(scene, rng))
      q, a = text.all_qa(scene, rng)[0]
      yield chat.understanding_prompt(family, q) + f" {a}{chat.SEP2}"
    for style in text.applicable_styles(scene):
      yield text.describe(scene, style, rng)
    for q, a in text.all_qa(scene, rng):
      yield f"{q} {a}"


def build(vocab_size: int = 512, num_scenes: int = 2000, seed: int = 0) -> tokenizers.Tokenizer:
  """Trains the byte-level BPE in memory."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  # Like the released files: plain `encode` adds BOS (janus_jax.data.tokenizer adds it itself).
  tok.post_processor = processors.TemplateProcessing(
      single=f"{SPECIAL_TOKENS[0]} $A", pair=f"{SPECIAL_TOKENS[0]} $A $B",
      special_tokens=[(SPECIAL_TOKENS[0], 0)])
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(corpus(num_scenes, seed), trainer=trainer)
  return tok


def train_tokenizer(out_path: str, vocab_size: int = 512, num_scenes: int = 2000, seed: int = 0
                    ) -> str:
  """Trains and writes `tokenizer.json` (plus `tokenizer_config.json` and
  `special_tokens_map.json` beside it); `out_path` is a directory or a .json file path.
  Returns the tokenizer.json path."""
  if os.path.isdir(out_path) or not out_path.endswith(".json"):
    os.makedirs(out_path, exist_ok=True)
    out_path = os.path.join(out_path, "tokenizer.json")
  if vocab_size < 256 + len(SPECIAL_TOKENS):
    raise ValueError(f"vocab_size {vocab_size} cannot hold the 256 byte tokens and "
                     f"{len(SPECIAL_TOKENS)} special tokens")
  tok = build(vocab_size, num_scenes, seed)
  if tok.token_to_id(SPECIAL_TOKENS[0]) != 0:
    raise AssertionError("BPE trainer did not put BOS first; the post-processor assumes id 0")
  tok.save(out_path)
  _write_hf_configs(os.path.dirname(out_path))
  return out_path


def _write_hf_configs(directory: str) -> None:
  """The two small files next to a released `tokenizer.json`, for `transformers` users."""
  bos, eos, pad = SPECIAL_TOKENS[:3]
  files = {
      "special_tokens_map.json": {
          "bos_token": bos, "eos_token": eos, "pad_token": pad,
          "additional_special_tokens": list(SPECIAL_TOKENS[3:])},
      "tokenizer_config.json": {
          "tokenizer_class": "LlamaTokenizerFast", "bos_token": bos, "eos_token": eos,
          "pad_token": pad, "add_bos_token": True, "add_eos_token": False,
          "model_max_length": 1024, "clean_up_tokenization_spaces": False},
  }
  for name, content in files.items():
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
      json.dump(content, f, ensure_ascii=False, indent=2)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description="Train the shapes-world tokenizer.json.")
  p.add_argument("out", help="output directory or .json file")
  p.add_argument("--vocab_size", type=int, default=512)
  p.add_argument("--num_scenes", type=int, default=2000)
  args = p.parse_args(argv)
  path = train_tokenizer(args.out, args.vocab_size, args.num_scenes)
  print(f"wrote {path} ({tokenizers.Tokenizer.from_file(path).get_vocab_size()} tokens)")


if __name__ == "__main__":
  main()
