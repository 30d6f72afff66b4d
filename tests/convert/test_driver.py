"""The generic converter driver on a small stand-in model family (no Janus modules needed).

The stand-in covers what the real tables use: plain renames, Linear/Conv transposes, scanned
(stacked) layers, a fused parameter filled from several tensors, skipped keys, and a nested
config dataclass with tuples.
"""

import dataclasses
import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.torch import save_file
import torch

import convert_torch
from janus_jax.convert import driver
from janus_jax.convert import rules


@dataclasses.dataclass(frozen=True)
class InnerConfig:
  width: int
  kernel: tuple[int, int] = (3, 3)


@dataclasses.dataclass(frozen=True)
class StandInConfig:
  inner: InnerConfig
  vocab: int
  layers: int


class Layer(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x, _):
    return nn.Dense(self.width, name="fc")(x), None


class StandInModel(nn.Module):
  config: StandInConfig

  @nn.compact
  def __call__(self, ids):
    c = self.config
    x = nn.Embed(c.vocab, c.inner.width, name="embed")(ids)
    x, _ = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True},
                   length=c.layers)(c.inner.width, name="layers")(x, None)
    qkv = nn.Dense(3 * c.inner.width, name="qkv")(x)
    img = nn.Conv(2, c.inner.kernel, name="conv")(qkv.reshape(1, ids.shape[1], 3, -1))
    return img

  def init_all(self):
    return self(jnp.zeros((1, 4), jnp.int32))


class StandIn:
  """A converter family: the interface every `janus_jax.convert.<family>` module exposes."""

  NAME = "standin"
  RULES = [
      rules.Rule(r"tok\.weight", "embed/embedding"),
      rules.Rule(r"blocks\.(\d+)\.fc\.weight", "layers/fc/kernel", "linear", stack=1),
      rules.Rule(r"blocks\.(\d+)\.fc\.bias", "layers/fc/bias", stack=1),
      rules.Rule(r"attn\.q\.weight", "qkv/kernel", "linear", part=(0, 3)),
      rules.Rule(r"attn\.k\.weight", "qkv/kernel", "linear", part=(1, 3)),
      rules.Rule(r"attn\.v\.weight", "qkv/kernel", "linear", part=(2, 3)),
      rules.Rule(r"attn\.q\.bias", "qkv/bias", part=(0, 3)),
      rules.Rule(r"attn\.k\.bias", "qkv/bias", part=(1, 3)),
      rules.Rule(r"attn\.v\.bias", "qkv/bias", part=(2, 3)),
      rules.Rule(r"conv\.weight", "conv/kernel", "conv"),
      rules.Rule(r"conv\.bias", "conv/bias"),
  ]
  SKIP = [r"rotary\.inv_freq"]

  @staticmethod
  def detect(keys):
    return "tok.weight" in keys

  @staticmethod
  def config_from(config_json, shapes, extra=None):
    width = shapes["tok.weight"][1]
    if width != config_json["width"]:
      raise ValueError(f"config.json width {config_json['width']} != tok.weight {width}")
    return StandInConfig(InnerConfig(width, tuple(shapes["conv.weight"][2:])),
                         vocab=shapes["tok.weight"][0], layers=config_json["layers"])

  @staticmethod
  def build_model(config):
    return StandInModel(config)



W, V, L = 8, 16, 3


def state_dict(dtype=torch.float32, seed=0):
  g = torch.Generator().manual_seed(seed)
  r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
  sd = {"tok.weight": r(V, W), "conv.weight": r(2, W, 3, 3), "conv.bias": r(2),
        "rotary.inv_freq": r(4)}
  for i in range(L):
    sd[f"blocks.{i}.fc.weight"] = r(W, W)
    sd[f"blocks.{i}.fc.bias"] = r(W)
  for n in "qkv":
    sd[f"attn.{n}.weight"] = r(W, W)
    sd[f"attn.{n}.bias"] = r(W)
  return sd


def write_ckpt(root: pathlib.Path, sd, fmt="safetensors", shards=1):
  root.mkdir(parents=True, exist_ok=True)
  (root / "config.json").write_text(json.dumps({"width": W, "layers": L}))
  keys = sorted(sd)
  groups = [keys[i::shards] for i in range(shards)]
  name = "model{}.safetensors" if fmt == "safetensors" else "pytorch_model{}.bin"
  weight_map = {}
  for i, group in enumerate(groups):
    fname = name.format("" if shards == 1 else f"-{i + 1:05d}-of-{shards:05d}")
    part = {k: sd[k].contiguous() for k in group}
    if fmt == "safetensors":
      save_file(part, str(root / fname))
    else:
      torch.save(part, root / fname)
    weight_map.update({k: fname for k in group})
  if shards > 1:
    index = "model.safetensors.index.json" if fmt == "safetensors" else \
        "pytorch_model.bin.index.json"
    (root / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  return root


def expected_params(sd):
  """The stand-in's params computed independently of the rule machinery."""
  f = lambda k: sd[k].float().numpy()  # noqa: E731
  return {
      "embed": {"embedding": f("tok.weight")},
      "layers": {"fc": {"kernel": np.stack([f(f"blocks.{i}.fc.weight").T for i in range(L)]),
                        "bias": np.stack([f(f"blocks.{i}.fc.bias") for i in range(L)])}},
      "qkv": {"kernel": np.concatenate([f(f"attn.{n}.weight").T for n in "qkv"], axis=1),
              "bias": np.concatenate([f(f"attn.{n}.bias") for n in "qkv"])},
      "conv": {"kernel": f("conv.weight").transpose(2, 3, 1, 0), "bias": f("conv.bias")},
  }


def convert(src, out, **kw):
  return driver.convert(src, out, family=StandIn, progress=False, log=lambda *_: None, **kw)


def assert_params_equal(got, want):
  got, want = rules.flatten_shapes(got), rules.flatten_shapes(want)
  assert set(got) == set(want)
  for path in want:
    np.testing.assert_array_equal(np.asarray(got[path], np.float32), want[path],
                                  err_msg="/".join(path))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("shards", [1, 2])
def test_round_trip(tmp_path, fmt, shards):
  sd = state_dict()
  src = write_ckpt(tmp_path / "src", sd, fmt, shards)
  # chunk_bytes=1: every parameter in its own Orbax item, exercising the reassembly.
  s = convert(src, tmp_path / "out", chunk_bytes=1)
  assert s.skipped == ["rotary.inv_freq"]
  assert s.chunks == 7 and s.tensors == len(sd) - 1
  config, params = driver.load_converted(tmp_path / "out")
  assert config == StandInConfig(InnerConfig(W, (3, 3)), V, L)
  assert_params_equal(params, expected_params(sd))
  # The converted params run in the model.
  StandInModel(config).apply({"params": params}, jnp.zeros((1, 4), jnp.int32))


def test_tokenizer_files_travel_with_the_weights(tmp_path):
  src = write_ckpt(tmp_path / "src", state_dict(), "safetensors", 1)
  (src / "tokenizer.json").write_text('{"model": {}}')
  (src / "special_tokens_map.json").write_text("{}")
  convert(src, tmp_path / "out")
  assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"model": {}}'
  assert (tmp_path / "out" / "special_tokens_map.json").is_file()
  assert not (tmp_path / "out" / "tokenizer_config.json").exists()  # absent in the source
  meta = json.loads((tmp_path / "out" / "config.json").read_text())
  assert meta["copied"] == ["tokenizer.json", "special_tokens_map.json"]


def test_sharded_restore(tmp_path):
  convert(write_ckpt(tmp_path / "src", state_dict()), tmp_path / "out")
  mesh = jax.make_mesh((len(jax.devices()),), ("x",))
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  embed_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
  shardings = jax.tree.map(lambda _: sh, expected_params(state_dict()))
  shardings["embed"]["embedding"] = embed_sh
  _, params = driver.load_converted(tmp_path / "out", shardings=shardings, dtype=jnp.bfloat16)
  assert params["embed"]["embedding"].sharding == embed_sh
  assert params["qkv"]["kernel"].dtype == jnp.bfloat16


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_bf16_kept_bit_exact(tmp_path, fmt):
  sd = state_dict(torch.bfloat16)
  src = write_ckpt(tmp_path / "src", sd, fmt)
  convert(src, tmp_path / "bf16")
  _, params = driver.load_converted(tmp_path / "bf16")
  emb = params["embed"]["embedding"]
  assert emb.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(emb).view(np.int16),
                                sd["tok.weight"].view(torch.int16).numpy())
  convert(src, tmp_path / "f32", dtype="float32")
  _, params = driver.load_converted(tmp_path / "f32")
  assert params["layers"]["fc"]["kernel"].dtype == jnp.float32
  assert_params_equal(params, expected_params(sd))


def _error(tmp_path, sd, match):
  src = write_ckpt(tmp_path / "src", sd)
  with pytest.raises(rules.ConversionError) as e:
    convert(src, tmp_path / "out")
  assert not (tmp_path / "out").exists()
  for m in match:
    assert m in str(e.value)
  return str(e.value)


def test_missing_tensor(tmp_path):
  sd = state_dict()
  del sd["blocks.1.fc.weight"], sd["attn.k.bias"], sd["conv.bias"]
  msg = _error(tmp_path, sd, ["3 missing", "layers/fc/kernel (3, 8, 8): no tensor for "
                              "(layer, part) [(1, None)]", "conv/bias (2,)",
                              "qkv/bias (24,): no tensor for (layer, part) [(None, 1)]"])
  assert "unexpected" not in msg.split("\n", 1)[1]


def test_extra_tensor(tmp_path):
  sd = state_dict()
  sd["head.weight"] = torch.zeros(4, 2)
  sd["blocks.3.fc.bias"] = torch.zeros(W)
  _error(tmp_path, sd, ["2 unexpected", "head.weight (4, 2)",
                        "blocks.3.fc.bias: layer 3 outside 0..2 of layers/fc/bias (3, 8)"])


def test_wrong_shape(tmp_path):
  sd = state_dict()
  sd["conv.weight"] = torch.zeros(2, W, 3, 3)  # fine
  sd["blocks.0.fc.weight"] = torch.zeros(W, W + 1)
  sd["attn.v.bias"] = torch.zeros(W - 1)
  _error(tmp_path, sd, ["2 mis-shaped", "blocks.0.fc.weight: shape (8, 9) does not fit "
                        "expected (8, 8) of layers/fc/kernel (3, 8, 8)",
                        "attn.v.bias: shape (7,) does not fit expected (8,) of qkv/bias (24,)"])


def test_config_mismatch_is_reported(tmp_path):
  src = write_ckpt(tmp_path / "src", state_dict())
  (src / "config.json").write_text(json.dumps({"width": W + 2, "layers": L}))
  with pytest.raises(ValueError, match="width 10 != tok.weight 8"):
    convert(src, tmp_path / "out")


def test_truncated_safetensors(tmp_path):
  src = write_ckpt(tmp_path / "src", state_dict(), shards=2)
  shard = sorted(src.glob("*.safetensors"))[1]
  shard.write_bytes(shard.read_bytes()[:-40])
  with pytest.raises(driver.CheckpointError, match=str(shard.name) + r".*truncated"):
    convert(src, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_truncated_bin(tmp_path):
  src = write_ckpt(tmp_path / "src", state_dict(), fmt="bin")
  f = src / "pytorch_model.bin"
  f.write_bytes(f.read_bytes()[:-100])
  with pytest.raises(driver.CheckpointError, match="pytorch_model.bin: cannot read"):
    convert(src, tmp_path / "out")


def test_empty_dir_and_missing_files(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(driver.CheckpointError, match=r"empty/config\.json: missing"):
    convert(empty, tmp_path / "out")
  (empty / "config.json").write_text("{}")
  with pytest.raises(driver.CheckpointError, match="no weights"):
    convert(empty, tmp_path / "out")
  with pytest.raises(driver.CheckpointError, match="does not exist"):
    convert(tmp_path / "nope", tmp_path / "out")


def test_index_mismatch(tmp_path):
  src = write_ckpt(tmp_path / "src", state_dict(), shards=2)
  idx = json.loads((src / "model.safetensors.index.json").read_text())
  idx["weight_map"]["ghost.weight"] = next(iter(idx["weight_map"].values()))
  (src / "model.safetensors.index.json").write_text(json.dumps(idx))
  with pytest.raises(driver.CheckpointError, match="in no file: ghost.weight"):
    convert(src, tmp_path / "out")


class _Payload:
  """Unpickling this calls open(marker, "w"): code execution leaves a file behind."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (open, (self.marker, "w"))


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_bin_refused(tmp_path, legacy):
  src = write_ckpt(tmp_path / "src", state_dict(), fmt="bin")
  marker = tmp_path / "pwned"
  evil = {"tok.weight": torch.zeros(V, W), "x": _Payload(marker)}
  f = src / "pytorch_model.bin"
  torch.save(evil, f, _use_new_zipfile_serialization=not legacy)
  assert not marker.exists()
  with pytest.raises(driver.CheckpointError, match="refused to load"):
    convert(src, tmp_path / "out")
  assert not marker.exists(), "the checkpoint ran code"
  # The payload is real: an unrestricted load does run it.
  torch.load(f, weights_only=False)
  assert marker.exists()


def test_out_dir_never_half_written(tmp_path, monkeypatch):
  src = write_ckpt(tmp_path / "src", state_dict())
  calls = []
  real = rules.assemble

  def failing(*a, **kw):
    calls.append(1)
    if len(calls) == 5:
      raise RuntimeError("disk on fire")
    return real(*a, **kw)

  monkeypatch.setattr(rules, "assemble", failing)
  with pytest.raises(RuntimeError, match="disk on fire"):
    convert(src, tmp_path / "out", chunk_bytes=1)  # several chunks were saved before failing
  assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
  monkeypatch.setattr(rules, "assemble", real)

  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="--overwrite"):
    convert(src, tmp_path / "out")
  assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
  convert(src, tmp_path / "out", overwrite=True)
  assert not (tmp_path / "out" / "keep.txt").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
  assert_params_equal(driver.load_converted(tmp_path / "out")[1], expected_params(state_dict()))


def test_cli(tmp_path, monkeypatch, capsys):
  src = write_ckpt(tmp_path / "src", state_dict(torch.bfloat16), shards=2)
  monkeypatch.setattr(driver, "FAMILIES", ("standin",))
  monkeypatch.setitem(sys.modules, "janus_jax.convert.standin", StandIn)
  assert convert_torch.main([str(src), str(tmp_path / "out"), "--no-progress"]) == 0
  out = capsys.readouterr().out
  assert "family: standin [custom] (16 tensors in 2 file(s))" in out
  assert "skipped 1 known-unused tensors: rotary.inv_freq" in out
  assert "converted 15 tensors -> 7 parameters" in out
  assert driver.load_converted(tmp_path / "out")[1]["conv"]["bias"].dtype == jnp.bfloat16
  # A second run refuses to overwrite, with a one-line error and exit status 1.
  assert convert_torch.main([str(src), str(tmp_path / "out"), "--no-progress"]) == 1
  assert "exists and is not empty" in capsys.readouterr().err
  assert convert_torch.main([str(tmp_path / "out"), str(tmp_path / "o2")]) == 1
  assert "no weights" in capsys.readouterr().err


def test_unknown_layout(tmp_path, monkeypatch):
  monkeypatch.setattr(driver, "FAMILIES", ("standin",))
  monkeypatch.setitem(sys.modules, "janus_jax.convert.standin", StandIn)
  with pytest.raises(driver.CheckpointError, match="no converter family recognises"):
    driver.detect_family(["foo.weight"])


def test_janus_fixture_through_cli(tmp_path, fixtures_dir, capsys):
  """The real original-layout family: CLI conversion equals the in-memory strict merge."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  from janus_jax.convert import janus as janus_table  # pylint: disable=g-import-not-at-top
  root = fixtures_dir / "janus_tiny"
  assert convert_torch.main([str(root), str(tmp_path / "out"), "--no-progress", "--extra",
                             str(root / "fixture.json"), "--chunk-mib", "1"]) == 0
  out = capsys.readouterr().out
  assert "family: janus [Janus / Janus-Pro, original DeepSeek layout] (420 tensors" in out
  assert "skipped 14 known-unused tensors: gen_vision_model.quantize.codebook_used," in out
  config, params = driver.load_converted(tmp_path / "out")
  fixture_cfg = json.loads((root / "config.json").read_text())
  extra = json.loads((root / "fixture.json").read_text())["extra"]
  tensors = load_file(str(root / "model.safetensors"))
  shapes = {k: v.shape for k, v in tensors.items()}
  assert config == janus_table.config_from(fixture_cfg, shapes, extra)
  want, _ = rules.convert_tensors(janus_table.RULES, tensors,
                                  driver.abstract_params(janus_table, config), janus_table.SKIP)
  assert_params_equal(params, want)
