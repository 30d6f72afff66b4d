"""Tokenizer wrapper, deepseek chat template, image-token insertion."""

import json

import numpy as np
import pytest
import tokenizers

from janus_jax import errors
from janus_jax.data import chat
from janus_jax.data import synthetic
from janus_jax.data import tokenizer as tokenizer_lib

SYS = chat.SYSTEM_PROMPT


def test_special_ids_by_name_and_bos(tok):
  vocab = json.loads(synthetic.tokenizer_json())["model"]["vocab"]
  sp = tok.special
  assert (sp.bos, sp.eos, sp.pad, sp.image, sp.boi, sp.eoi, sp.bog) == tuple(
      vocab[t] for t in synthetic.SPECIALS)
  ids = tok.encode("the cat <image_placeholder> dog")
  assert ids[0] == sp.bos and (ids == sp.bos).sum() == 1
  assert (ids == sp.image).sum() == 1  # a special token is one id inside text
  assert tok.encode("the cat", add_bos=False)[0] != sp.bos


def test_decode_skips_special_tokens(tok):
  ids = tok.encode("the red cat" + tokenizer_lib.EOS)
  assert tok.decode(ids) == "the red cat"
  assert tok.decode(ids, skip_special_tokens=False) == tokenizer_lib.BOS + "the red cat" + \
      tokenizer_lib.EOS


def test_missing_file_and_missing_special_token(tmp_path):
  with pytest.raises(errors.InputError, match="tokenizer.json"):
    tokenizer_lib.Tokenizer.from_file(str(tmp_path))
  bare = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, "[UNK]"))
  bare.add_special_tokens([tokenizer_lib.BOS, tokenizer_lib.EOS])
  path = tmp_path / "tokenizer.json"
  bare.save(str(path))
  with pytest.raises(ValueError, match="image_placeholder"):
    tokenizer_lib.Tokenizer.from_file(str(tmp_path))


def test_loaded_from_file_matches(tok, tmp_path):
  (tmp_path / "tokenizer.json").write_text(synthetic.tokenizer_json())
  other = tokenizer_lib.load(str(tmp_path))
  np.testing.assert_array_equal(other.encode("a cat sits"), tok.encode("a cat sits"))


def test_exact_prompt_strings():
  assert chat.understanding_prompt("janus_pro", "What is this?") == (
      SYS + "\n\n<|User|>: <image_placeholder>\nWhat is this?\n\n<|Assistant|>:")
  assert chat.understanding_prompt("janusflow", "Q") == (
      SYS + "\n\nUser: <image_placeholder>\nQ\n\nAssistant:")
  assert chat.t2i_prompt("janus_pro", " a cat ") == "<|User|>: a cat\n\n<|Assistant|>:<begin_of_image>"
  assert chat.t2i_prompt("janus", "a cat") == "User: a cat\n\nAssistant:<begin_of_image>"
  assert chat.t2i_prompt("janusflow", "a cat", tokenizer_lib.BOG) == (
      "User: a cat\n\nAssistant:" + tokenizer_lib.BOG)
  with pytest.raises(ValueError, match="family"):
    chat.roles("llava")


def test_system_prompt_comes_from_the_checkpoint():
  assert chat.understanding_prompt("janus_pro", "Q", system="") == (
      "<|User|>: <image_placeholder>\nQ\n\n<|Assistant|>:")
  assert chat.checkpoint_system_prompt({}) == SYS  # released checkpoints: the reference's
  assert chat.checkpoint_system_prompt({"system_prompt": ""}) == ""
  with pytest.raises(ValueError, match="system_prompt"):
    chat.checkpoint_system_prompt({"system_prompt": 3})


def test_multi_turn_and_answer_spans():
  f = chat.format_conversation(
      [("<|User|>", " q1 "), ("<|Assistant|>", "a1\n"), ("<|User|>", "q2"), ("<|Assistant|>", "a2")],
      system="")
  assert f.text == ("<|User|>: q1\n\n<|Assistant|>: a1<｜end▁of▁sentence｜>"
                    "<|User|>: q2\n\n<|Assistant|>: a2<｜end▁of▁sentence｜>")
  assert [f.text[s:e] for s, e in f.answer_spans] == ["a1" + tokenizer_lib.EOS,
                                                     "a2" + tokenizer_lib.EOS]
  g = chat.format_conversation([("User", "q"), ("Assistant", "a")])
  assert g.text.startswith(SYS + "\n\nUser: q\n\nAssistant: a")
  assert g.text[slice(*g.answer_spans[0])] == "a" + tokenizer_lib.EOS


@pytest.mark.parametrize("family,slots", [("janus_pro", 5), ("janusflow", 6)])
def test_image_insertion_and_seq_mask(tok, family, slots):
  sp = tok.special
  text = chat.format_conversation(
      [("User", "<image_placeholder> and <image_placeholder>\nsame?"), ("Assistant", "yes")]).text
  t = chat.tokenize(tok, text, image_tokens=5, family=family)
  assert t.n_images == 2
  boi = np.flatnonzero(t.input_ids == sp.boi)
  eoi = np.flatnonzero(t.input_ids == sp.eoi)
  assert len(boi) == len(eoi) == 2 and list(eoi - boi) == [6, 6]
  for b in boi:
    assert (t.input_ids[b + 1:b + 6] == sp.image).all()
  assert t.images_seq_mask.sum() == 2 * slots
  assert t.images_seq_mask[boi].all() == (family == "janusflow")
  assert not t.images_seq_mask[eoi].any()
  # Only the image placeholder ids changed: removing the blocks gives back the plain encoding.
  plain = tok.encode(text)
  keep = np.ones(len(t.input_ids), bool)
  for b in boi:
    keep[b + 1:b + 7] = False
  np.testing.assert_array_equal(np.where(t.input_ids[keep] == sp.boi, sp.image, t.input_ids[keep]),
                                plain)
