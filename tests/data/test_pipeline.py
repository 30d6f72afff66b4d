"""Pipeline: masks per kind, packing isolation, mixture ratios, host sharding, resume, bad data."""

import collections
import io
import json

import grain.python as grain
import numpy as np
from PIL import Image
import pytest

from janus_jax import errors
from janus_jax.data import chat
from janus_jax.data import examples
from janus_jax.data import mixture
from janus_jax.data import packing
from janus_jax.data import pipeline
from janus_jax.data import synthetic

P, S = synthetic.TINY_IMAGE_TOKENS, synthetic.TINY_IMAGE_SIZE
tiny_config = synthetic.tiny_config

NO_SHARD = grain.NoSharding()


def sources(n=24):
  return [synthetic.und_records(n), synthetic.text_records(n), synthetic.gen_records(n, P)]


def build(tok, kind, record, cfg=None, seed=0):
  cfg = cfg or tiny_config()
  return examples.Builder(tok, cfg.example)((kind, record), np.random.default_rng(seed))


def test_understanding_masks(tok):
  rec = {"images": [synthetic.png_bytes(np.random.default_rng(0), 50, 30)],
         "roles": ["user", "assistant", "user", "assistant"],
         "contents": ["<image_placeholder>\nwhat is this?", "a red cat", "and?", "a blue dog"]}
  ex = build(tok, mixture.UND, rec)
  ids, sp = ex["input_ids"], tok.special
  assert ex["images_seq_mask"].sum() == P and (ids[ex["images_seq_mask"]] == sp.image).all()
  assert ex["pixels"].shape == (1, S, S, 3)
  # The loss targets, read back, are exactly the two answers with their EOS, nothing else.
  answer = ex["targets"][ex["text_loss"]]
  assert tok.decode(answer, skip_special_tokens=False) == " a red cat" + "<｜end▁of▁sentence｜>" + \
      " a blue dog<｜end▁of▁sentence｜>"
  np.testing.assert_array_equal(ex["targets"][:-1][ex["text_loss"][:-1]],
                                ids[1:][ex["text_loss"][:-1]])
  assert not ex["image_loss"].any() and not ex["gen_mask"].any()
  assert not ex["text_loss"][ex["images_seq_mask"]].any()


def test_understanding_janusflow_slots(tok):
  rec = {"images": [synthetic.png_bytes(np.random.default_rng(0), 20, 20)],
         "roles": ["user", "assistant"], "contents": ["describe", "a cat"]}  # no tag: prepended
  ex = build(tok, mixture.UND, rec, tiny_config(family="janusflow"))
  assert ex["images_seq_mask"].sum() == P + 1
  assert ex["input_ids"][np.flatnonzero(ex["images_seq_mask"])[0]] == tok.special.boi


def test_text_masks(tok):
  ex = build(tok, mixture.TEXT, {"text": "the cat sits on the mat"})
  ids = ex["input_ids"]
  assert ids[0] == tok.special.bos and ids[-1] == tok.special.eos
  assert ex["text_loss"][:-1].all() and not ex["text_loss"][-1]
  np.testing.assert_array_equal(ex["targets"][:-1], ids[1:])


def test_generation_masks_and_caption_dropout(tok):
  rec = synthetic.gen_records(1, P)[0]
  ex = build(tok, mixture.GEN, rec, tiny_config(caption_dropout=0.0))
  sp = tok.special
  prompt = tok.encode(chat.t2i_prompt("janus_pro", rec["caption"]))
  n = len(prompt)
  np.testing.assert_array_equal(ex["input_ids"][:n], prompt)
  assert len(ex["input_ids"]) == n + P and ex["input_ids"][n - 1] == sp.boi
  np.testing.assert_array_equal(ex["image_codes"][ex["gen_mask"]], rec["codes"])
  assert np.flatnonzero(ex["gen_mask"])[0] == n
  # BOI predicts code 0, code k predicts code k + 1; nothing else carries a loss.
  assert np.flatnonzero(ex["image_loss"]).tolist() == list(range(n - 1, n - 1 + P))
  np.testing.assert_array_equal(ex["targets"][ex["image_loss"]], rec["codes"])
  assert not ex["text_loss"].any() and not ex["images_seq_mask"].any()
  # Dropout: prompt between BOS and BOI becomes pads, same length; codes untouched.
  drop = build(tok, mixture.GEN, rec, tiny_config(caption_dropout=1.0))
  assert drop["input_ids"][0] == sp.bos and drop["input_ids"][n - 1] == sp.boi
  assert (drop["input_ids"][1:n - 1] == sp.pad).all()
  np.testing.assert_array_equal(drop["targets"], ex["targets"])
  rate = np.mean([(build(tok, mixture.GEN, rec, tiny_config(), seed=s)["input_ids"][1] == sp.pad)
                  for s in range(400)])
  assert 0.06 < rate < 0.14  # default 0.1


def test_packing_never_crosses_examples(tok):
  it = pipeline.make(sources(), tok, tiny_config(), NO_SHARD)
  for _ in range(3):
    b = next(it)
    seg, pos = b["segment_ids"], b["positions"]
    mask = packing.attention_mask(seg)
    for r in range(seg.shape[0]):
      for s in np.unique(seg[r][seg[r] > 0]):
        idx = np.flatnonzero(seg[r] == s)
        assert (np.diff(idx) == 1).all() and pos[r, idx].tolist() == list(range(len(idx)))
        assert b["input_ids"][r, idx[0]] == tok.special.bos
        # Every query of this segment attends only to keys of this segment.
        assert not mask[r][np.ix_(idx, np.flatnonzero(seg[r] != s))].any()
      pad = seg[r] == 0
      assert not (b["text_loss"][r] | b["image_loss"][r])[pad].any() and (b["kinds"][r][pad] == -1).all()
    # Images land in the row of their slots: slots per row == images per row * P.
    np.testing.assert_array_equal(b["images_seq_mask"].sum(1), b["images_emb_mask"].sum((1, 2)))


def test_independent_turns_pack_as_branches_of_one_prefix(tok):
  """Untagged multi-turn records with `independent_turns`: each QA pair is a branch that sees its
  example's prefix (with the images) and itself, never another branch, at positions that
  continue from the prefix."""
  recs = []
  for r in synthetic.und_records(12, max_images=1):
    contents = [c.split("\n")[-1] for c in r["contents"]]  # drop the explicit image tags
    recs.append(dict(r, roles=r["roles"] * 2, contents=contents * 2))  # 2-4 QA pairs
  cfg = tiny_config(independent_turns=True, ratios=(1.0, 0.0, 0.0))
  b = next(pipeline.make([recs, None, None], tok, cfg, NO_SHARD))
  seg, br, pos = b["segment_ids"], b["branch_ids"], b["positions"]
  mask = packing.attention_mask(seg, br)
  branched = 0
  for r in range(seg.shape[0]):
    for s in np.unique(seg[r][seg[r] > 0]):
      idx = np.flatnonzero(seg[r] == s)
      prefix = idx[br[r, idx] == 0]
      assert b["images_seq_mask"][r, prefix].sum() == P  # the image once, in the prefix
      assert pos[r, prefix].tolist() == list(range(len(prefix)))
      for k in np.unique(br[r, idx])[1:]:
        mine = idx[br[r, idx] == k]
        assert pos[r, mine].tolist() == list(range(len(prefix), len(prefix) + len(mine)))
        assert mask[r][np.ix_(mine, prefix)].all()
        assert not mask[r][np.ix_(mine, idx[(br[r, idx] != k) & (br[r, idx] != 0)])].any()
        assert b["text_loss"][r, mine].any()
        branched += 1
  assert branched >= 4
  # Without the option the same records are one chat each: no branches.
  plain = next(pipeline.make([recs, None, None], tok, tiny_config(ratios=(1.0, 0.0, 0.0)),
                             NO_SHARD))
  assert not plain["branch_ids"].any()


def _example(t, n_images=0, first=1):
  ids = np.arange(first, first + t, dtype=np.int32)
  z = np.zeros(t, bool)
  return {"kind": mixture.TEXT, "input_ids": ids, "targets": ids, "text_loss": ~z,
          "image_loss": z, "images_seq_mask": z, "gen_mask": z,
          "image_codes": np.zeros(t, np.int32), "pixels": np.ones((n_images, S, S, 3), np.float32)}


def test_packing_is_first_fit_over_the_rows():
  b = packing.BatchBuilder(rows=2, seq_len=10, max_images=1, slots_per_image=P, image_size=S,
                           pad_id=0)
  assert b.add(_example(6, first=100))  # row 0: 6 of 10
  assert b.add(_example(6, first=200))  # misses row 0: row 1
  assert b.add(_example(4, first=300))  # back into row 0's gap
  assert b.add(_example(3, 1, first=400))  # row 0 is full: row 1, its image too
  assert not b.add(_example(2, 1, first=500))  # row 1 has room for tokens, not for a 2nd image
  assert b.add(_example(1, first=600))  # no image: row 1's last slot
  assert not b.add(_example(1))  # nothing left anywhere
  out = b.finish()
  np.testing.assert_array_equal(out["input_ids"][0], list(range(100, 106)) + list(range(300, 304)))
  np.testing.assert_array_equal(out["input_ids"][1], list(range(200, 206)) + [400, 401, 402, 600])
  np.testing.assert_array_equal(out["segment_ids"], [[1] * 6 + [2] * 4, [1] * 6 + [2] * 3 + [3]])
  np.testing.assert_array_equal(out["positions"][0], list(range(6)) + list(range(4)))
  np.testing.assert_array_equal(out["images_emb_mask"][:, 0].all(-1), [False, True])
  assert b.examples == 5 and b.tokens == 20
  with pytest.raises(ValueError, match="can never fit"):
    b.add(_example(11))


def test_mixture_hits_ratios():
  mix = mixture.Mixture([range(1000), range(50), range(300)], (5, 1, 4))
  assert mix.counts == (5, 1, 4) and len(mix) == 2000  # und needs the most periods: 1000 / 5
  kinds = np.asarray([mix.locate(i)[0] for i in range(len(mix))])
  assert np.bincount(kinds).tolist() == [1000, 200, 800]
  # A shuffled window (what the sampler produces) is within sampling error of the ratios.
  sampler = grain.IndexSampler(len(mix), NO_SHARD, shuffle=True, num_epochs=1, seed=3)
  window = np.asarray([mix.locate(sampler[i].record_key)[0] for i in range(1000)])
  frac = np.bincount(window, minlength=3) / 1000
  sd = np.sqrt(np.asarray([.5, .1, .4]) * np.asarray([.5, .9, .6]) / 1000)
  assert (np.abs(frac - [.5, .1, .4]) < 4 * sd).all()
  assert mixture.integer_counts((0.14, 0.8, 0.06)) == (7, 40, 3)
  with pytest.raises(ValueError, match="source is empty"):
    mixture.Mixture([range(3), None, range(3)], (1, 1, 1))


def _keys(tok, shard):
  cfg = tiny_config(num_epochs=1, shuffle=True)
  loader = pipeline.make_loader([synthetic.und_records(0) or None, synthetic.text_records(40),
                                 synthetic.gen_records(40, P)], tok,
                                pipeline.Config(**{**cfg.__dict__, "ratios": (0, 1, 1)}), shard)
  out = []
  for ex in loader:
    out.append(tuple(ex["input_ids"].tolist()) + tuple(ex["image_codes"].tolist()))
  return out


def test_two_hosts_see_disjoint_data(tok):
  a = _keys(tok, grain.ShardOptions(0, 2, drop_remainder=True))
  b = _keys(tok, grain.ShardOptions(1, 2, drop_remainder=True))
  assert len(a) == len(b) == 40 and not set(a) & set(b)
  assert len(set(a) | set(b)) == 80  # together: the whole epoch, each record once


@pytest.mark.parametrize("workers", [0, 1])
def test_restore_continues_with_exactly_the_next_batches(tok, workers):
  cfg = tiny_config(worker_count=workers)
  it = pipeline.make(sources(), tok, cfg, NO_SHARD)
  for _ in range(2):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # must survive a JSON round trip
  expected = [next(it) for _ in range(3)]
  fresh = pipeline.make(sources(), tok, cfg, NO_SHARD)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert fresh.stats["batches"] == it.stats["batches"]


def corrupt_sources():
  rng = np.random.default_rng(0)
  good = synthetic.und_records(30)  # sizes 34 / 34 / 34 at ratio 1:1:1: each record read once
  png = synthetic.png_bytes(rng, 40, 30)
  buf = io.BytesIO()
  Image.new("RGB", (1, 1)).save(buf, format="PNG")
  und = good + [
      {"images": [png[:len(png) // 2]], "roles": ["user", "assistant"], "contents": ["q", "a"]},
      {"images": [buf.getvalue()], "roles": ["user", "assistant"], "contents": ["q", "a"]},
      {"images": [], "roles": ["user"], "contents": ["only a question"]},
      {"images": [], "roles": ["user", "assistant"], "contents": ["q", "   "]},
  ]
  gen = synthetic.gen_records(33, P) + [{"caption": "  ", "codes": np.zeros(P, np.int32)}]
  text = synthetic.text_records(33) + [{"text": " ".join(["cat"] * 400)}]  # > seq_len 256
  return [und, text, gen]


def test_bad_data_is_skipped_and_counted(tok, caplog):
  cfg = tiny_config(num_epochs=1, shuffle=False, max_bad_fraction=0.5, ratios=(1, 1, 1))
  it = pipeline.make(corrupt_sources(), tok, cfg, NO_SHARD)
  batches = list(it)
  stats = it.stats
  reasons = {k: v for k, v in stats.items() if k.startswith("bad/")}
  assert reasons == {"bad/bad_image": 2, "bad/no_assistant_turn": 2, "bad/empty_caption": 1,
                     "bad/too_long": 1}
  assert stats["bad"] == 6 and stats["records"] == 102 and stats["examples"] == 96
  assert sum(int(b["segment_ids"].max(1).sum()) for b in batches) == stats["examples"]
  assert "skipping" in caplog.text


def test_bad_fraction_limit_raises(tok):
  cfg = tiny_config(num_epochs=1, shuffle=False, max_bad_fraction=0.01, ratios=(1, 1, 1),
                    min_records_for_bad_check=10)
  it = pipeline.make(corrupt_sources(), tok, cfg, NO_SHARD)
  with pytest.raises(pipeline.BadDataError, match="max_bad_fraction"):
    list(it)


def flow_sources(n=12, latent=(4, 4, 4)):
  rng = np.random.default_rng(5)
  gen = [{"caption": synthetic.sentence(rng), "image": synthetic.png_bytes(rng, 40, 36),
          "latents": rng.standard_normal(latent).astype(np.float32)} for _ in range(n)]
  return [synthetic.und_records(n), synthetic.text_records(n), gen]


def test_janusflow_flow_examples_and_packing(tok):
  cfg = tiny_config(family="janusflow", flow_tokens=4, latent_shape=(4, 4, 4), flow_pixels=True,
                    max_flow_images_per_row=2, caption_dropout=0.0, ratios=(1, 1, 2))
  srcs = flow_sources()
  ex = examples.Builder(tok, cfg.example)((mixture.GEN, srcs[2][0]), np.random.default_rng(0))
  prompt = tok.encode(chat.t2i_prompt("janusflow", srcs[2][0]["caption"]))[:-1]  # tag dropped
  n = len(prompt)
  np.testing.assert_array_equal(ex["input_ids"][:n], prompt)
  assert np.flatnonzero(ex["flow_seq_mask"]).tolist() == list(range(n, n + 5))  # t_emb + Q
  assert not (ex["text_loss"] | ex["image_loss"]).any()
  b = next(pipeline.make(srcs, tok, cfg, NO_SHARD))
  assert b["flow_latents"].shape == (4, 2, 4, 4, 4) and b["flow_pixels"].shape == (4, 2, S, S, 3)
  np.testing.assert_array_equal(b["flow_seq_mask"].sum(1), 5 * b["flow_image_mask"].sum(1))
  assert b["flow_image_mask"].sum() > 0
  # und slots include BOI in JanusFlow: P + 1 per image.
  np.testing.assert_array_equal(b["images_seq_mask"].sum(1),
                                (P + 1) * b["images_emb_mask"][..., 0].sum(1))


def test_make_train_iterator_from_prepared_datasets(tok, tmp_path):
  import ml_collections

  from janus_jax.data import builders
  from janus_jax.data import tokenize_images
  raw = synthetic.write_raw_files(str(tmp_path / "raw"), n=6)
  builders.prepare(builders.Conversations, raw["conversations"], str(tmp_path / "tfds"))
  builders.prepare(builders.PlainText, raw["text"], str(tmp_path / "tfds"))
  (tmp_path / "tokenizer.json").write_text(synthetic.tokenizer_json())
  enc = tokenize_images.Encoder("codes", lambda px: np.zeros((len(px), P), np.int32), 16)
  captions = [{"image": synthetic.png_bytes(np.random.default_rng(i), 20, 20), "caption": "a cat"}
              for i in range(6)]
  tokenize_images.run(captions, enc, str(tmp_path / "tfds" / "codes"), progress=False)
  data = ml_collections.ConfigDict(dict(
      tokenizer=str(tmp_path), und=f"conversations@{tmp_path / 'tfds'}",
      text=f"plain_text@{tmp_path / 'tfds'}", gen=str(tmp_path / "tfds" / "codes"),
      ratios=(1, 1, 1), batch_size=2, seq_len=256))

  class Vision:
    image_size = S

  class Model:  # the fields make_train_iterator reads from a janus.Config
    vision, image_tokens = Vision, P

  it = pipeline.make_train_iterator(data, Model)
  b = next(it)
  assert b["input_ids"].shape == (2, 256) and set(np.unique(b["kinds"])) >= {0, 1}
  assert it.stats["bad"] == 0
  # Names resolve against data_dir (train.py's config.data); a kind with ratio 0 is never read.
  data.update(data_dir=str(tmp_path / "tfds"), und="conversations", text="never_prepared",
              gen="codes", ratios=(1, 0, 1))
  it = pipeline.make_train_iterator(data, Model)
  assert set(np.unique([next(it)["kinds"] for _ in range(3)])) == {-1, 0, 2}
  data.update(ratios=(1, 1, 1))
  with pytest.raises(errors.InputError, match="never_prepared"):
    pipeline.make_train_iterator(data, Model)
