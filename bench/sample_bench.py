"""Text-to-image sampling speed: the compiled JAX sampler vs the reference's eager PyTorch loop.

  python bench/sample_bench.py                      # mid-size config on CPU (a few minutes)
  python bench/sample_bench.py --config=janus_pro_7b --images=16 --threads 0   # on a GPU

Both sides run the same algorithm (`generation_inference.py`'s: interleaved cond/uncond rows,
w = 5, temperature 1, 576 image tokens, VQ decode) on the same random weights: the JAX parameters
are copied into a transformers `LlamaModel` plus torch gen-head / gen-embed / gen-aligner MLPs
written here, and the reference loop (`generation_inference.py`'s algorithm: one eager forward
per token with the HF KV cache, `multinomial` sampling) runs on them. A greedy run of both
first checks that they pick the same codes. End-to-end adds the VQ decode (transformers'
`JanusVQVAE` on the torch side, same architecture, its own random weights). With `--hf`, also
times transformers' `JanusForConditionalGeneration.generate(generation_mode="image")`.

Prints image tokens/s (tokens of all images, not of the doubled rows) and images/s, and as its
last line `speedup_vs_reference=<JAX token throughput / reference token throughput>`.
"""

import argparse
import contextlib
import os
import re
import sys
import time

# Both sides share one GPU: JAX takes memory as it needs it rather than 75% up front, which
# would leave torch a quarter for two 14 GB 7B models and their caches. Read when JAX starts
# its backends, so set before that.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from janus_jax.models import aligners
from janus_jax.models import gen_head
from janus_jax.models import janus
from janus_jax.models import llama
from janus_jax.models import siglip
from janus_jax.models import vq
from janus_jax.sampling import decode_layout
from janus_jax.sampling import image_ar
from janus_jax.sampling import samplers

PAD = 3


def bench_config(name: str) -> janus.Config:
  """"mid": a ~60M-parameter LLM with the real 576-token grid and codebook (CPU default)."""
  if name == "janus_pro_7b":
    return janus.get_config("janus_pro_7b")
  if name != "mid":
    raise ValueError(f"unknown bench config {name!r}: mid or janus_pro_7b")
  d = 512
  llm = llama.Config(vocab_size=32000, hidden_size=d, intermediate_size=1408, num_layers=8,
                     num_heads=8, num_kv_heads=8, head_dim=64, max_position_embeddings=2048)
  vq_cfg = vq.get_config("vq16", base_channels=32, z_channels=64)
  vision = siglip.Config(image_size=32, patch_size=8, width=64, depth=1, heads=4)  # unused
  return janus.Config(vision=vision, aligner=aligners.Config(64, d), vq=vq_cfg,
                      gen_aligner=aligners.Config(vq_cfg.codebook_dim, d),
                      gen_head=gen_head.Config(d, d, vq_cfg.codebook_size), llm=llm,
                      image_token_size=vq_cfg.codebook_size, gen_embed_dim=vq_cfg.codebook_dim)


def init_generation_params(model: janus.Model, num_tokens: int):
  """Random parameters of every module text-to-image uses (the vision tower is skipped)."""
  def touch(m, codes):
    pos = jnp.broadcast_to(jnp.arange(codes.shape[1]), codes.shape)
    h = m.llm(m.embed_image_codes(codes) + m.embed_text(codes), pos).hidden
    return m.gen_logits(h), m.decode_codes(jnp.zeros((1, num_tokens), jnp.int32))
  init = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                                    method=touch))
  return nn.meta.unbox(init()["params"])


# --------------------------------------------------------------------------- torch reference


@contextlib.contextmanager
def _default_dtype(torch, dtype):
  old = torch.get_default_dtype()
  torch.set_default_dtype(dtype)
  try:
    yield
  finally:
    torch.set_default_dtype(old)


def torch_reference(config: janus.Config, params, dtype, device):
  """transformers LlamaModel + torch MLPs holding the JAX weights; returns a `generate` fn."""
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415

  c = config.llm
  tdtype = {jnp.float32: torch.float32, jnp.bfloat16: torch.bfloat16}[dtype]

  def t(x):  # jax array -> torch tensor on `device` (zero-copy on GPU via dlpack)
    if device == "cpu":
      return torch.from_numpy(np.asarray(jnp.asarray(x, jnp.float32))).to(tdtype)
    return torch.from_dlpack(jnp.asarray(x, dtype)).to(device)

  fields = {k: v for k, v in c.to_hf().items() if k != "model_type"}
  hf_cfg = transformers.LlamaConfig(**fields, attn_implementation="sdpa")
  with torch.device(device), _default_dtype(torch, tdtype):  # no float32 copy of a 7B
    lm = transformers.LlamaModel(hf_cfg).eval()
  p = params["language_model"]["model"]
  n, h, d = c.num_heads, c.head_dim, c.hidden_size
  with torch.no_grad():
    lm.embed_tokens.weight.copy_(t(p["embed_tokens"]["embedding"]))
    lm.norm.weight.copy_(t(p["norm"]["scale"]))
    lp = p["layers"]
    for i, layer in enumerate(lm.layers):
      a = lp["self_attn"]
      layer.self_attn.q_proj.weight.copy_(t(a["q_proj"][i].reshape(d, -1).T))
      layer.self_attn.k_proj.weight.copy_(t(a["k_proj"][i].reshape(d, -1).T))
      layer.self_attn.v_proj.weight.copy_(t(a["v_proj"][i].reshape(d, -1).T))
      layer.self_attn.o_proj.weight.copy_(t(a["o_proj"][i].reshape(n * h, d).T))
      for name in ("gate_proj", "up_proj", "down_proj"):
        getattr(layer.mlp, name).weight.copy_(t(lp["mlp"][name]["kernel"][i].T))
      layer.input_layernorm.weight.copy_(t(lp["input_layernorm"]["scale"][i]))
      layer.post_attention_layernorm.weight.copy_(t(lp["post_attention_layernorm"]["scale"][i]))

  def mlp(dense0, dense1):
    seq = torch.nn.Sequential(torch.nn.Linear(*dense0["kernel"].shape), torch.nn.GELU(),
                              torch.nn.Linear(*dense1["kernel"].shape)).to(device, tdtype)
    with torch.no_grad():
      for mod, dp in ((seq[0], dense0), (seq[2], dense1)):
        mod.weight.copy_(t(dp["kernel"].T))
        mod.bias.copy_(t(dp["bias"]))
    return seq.eval()

  head = mlp(params["gen_head"]["output_mlp_projector"], params["gen_head"]["vision_head"])
  aligner = mlp(params["gen_aligner"]["layers_0"], params["gen_aligner"]["layers_2"])
  embed = torch.nn.Embedding(config.image_token_size, config.gen_embed_dim).to(device, tdtype)
  with torch.no_grad():
    embed.weight.copy_(t(params["gen_embed"]["embedding"]))

  @torch.inference_mode()
  def generate(prompt_ids, num_images, cfg_weight, num_tokens, greedy=False, seed=0):
    """The reference loop, verbatim in algorithm: (num_images, num_tokens) codes."""
    torch.manual_seed(seed)
    ids = torch.tensor(prompt_ids, device=device)
    tokens = ids.repeat(2 * num_images, 1)
    tokens[1::2, 1:-1] = PAD
    embeds = lm.embed_tokens(tokens)
    codes = torch.zeros((num_images, num_tokens), dtype=torch.long, device=device)
    past = None
    for i in range(num_tokens):
      out = lm(inputs_embeds=embeds, use_cache=True, past_key_values=past)
      past = out.past_key_values
      logits = head(out.last_hidden_state[:, -1, :])
      logits = logits[1::2] + cfg_weight * (logits[0::2] - logits[1::2])
      if greedy:
        nxt = torch.argmax(logits, dim=-1)
      else:
        nxt = torch.multinomial(torch.softmax(logits.float(), dim=-1), 1)[:, 0]
      codes[:, i] = nxt
      embeds = aligner(embed(nxt.repeat_interleave(2)))[:, None, :]
    return codes

  return generate


def torch_vq_decoder(config: janus.Config, grid: int, dtype, device):
  """transformers' JanusVQVAE (the reference VQ-16 architecture) with random weights."""
  import torch  # noqa: PLC0415
  from transformers.models.janus import modeling_janus  # noqa: PLC0415
  v = config.vq
  cfg = modeling_janus.JanusVQVAEConfig(
      embed_dim=v.codebook_dim, num_embeddings=v.codebook_size, latent_channels=v.z_channels,
      base_channels=v.base_channels, channel_multiplier=list(v.ch_mult),
      num_res_blocks=v.num_res_blocks, num_patches=grid,
      projection_dim=config.llm.hidden_size, image_token_embed_dim=config.llm.hidden_size)
  tdtype = {jnp.float32: torch.float32, jnp.bfloat16: torch.bfloat16}[dtype]
  with torch.device(device):
    model = modeling_janus.JanusVQVAE(cfg).to(tdtype).eval()

  @torch.inference_mode()
  def decode(codes):
    x = model.decode(codes).float().permute(0, 2, 3, 1).cpu().numpy()
    out = np.zeros(x.shape, np.uint8)
    out[...] = np.clip((x + 1) / 2 * 255, 0, 255)
    return out
  return decode


# --------------------------------------------------------------------------- timing


def timed(fn, repeats: int):
  """Best wall time of `repeats` calls (after the caller's warm-up)."""
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def decode_traffic(config: janus.Config, params, cache_dtype, rows: int, prompt_len: int,
                   num_tokens: int, segments: int) -> tuple[int, int]:
  """Bytes one `sample_codes` run must read from memory at least: (weights, KV cache).

  Each of the P - 1 decode steps reads every decoder-layer, final-norm, generation-head and
  generation-aligner weight once (embedding tables are gathered, a few rows a step), and the
  whole K and V buffers (`cache_dtype`, the model's compute dtype) of its cache stage
  (`llama.segment_capacities`) for all `rows`.
  """
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
  decoder = params["language_model"]["model"]
  per_step = nbytes((decoder["layers"], decoder["norm"], params["gen_head"],
                     params["gen_aligner"]))
  c = config.llm
  # K and V of one slot, all layers
  slot = rows * c.num_kv_heads * c.head_dim * 2 * c.num_layers * jnp.dtype(cache_dtype).itemsize
  steps, done, kv = num_tokens - 1, 0, 0
  if steps:  # one token: the prefill alone, no decode step (as in `sample_codes`)
    for size in llama.segment_capacities(prompt_len, prompt_len + steps, segments):
      kv += (size - prompt_len - done) * size * slot
      done = size - prompt_len
  return steps * per_step, kv


def floor_line(weights: int, kv: int, bandwidth: float, jax_s: float) -> str:
  """The memory-bound time of a run's `decode_traffic` at `bandwidth` bytes/s, vs JAX's."""
  floor = (weights + kv) / bandwidth
  return (f"memory floor: {weights / 1e9:.0f} GB weights + {kv / 1e9:.0f} GB KV per run at the "
          f"measured copy bandwidth {bandwidth / 1e12:.2f} TB/s = {floor:.2f}s "
          f"(jax tokens at {jax_s / floor:.2f}x the floor)")


def copy_bandwidth(repeats: int = 20) -> float:
  """Bytes per second of a device-to-device elementwise pass (2 GiB read + 2 GiB written).

  Mean of `repeats` back-to-back passes, each writing over its input (donated), after two
  warm-ups: single timed passes measured well below the chip's rate.
  """
  negate = jax.jit(jnp.negative, donate_argnums=0)
  x = negate(negate(jnp.ones((1 << 30,), jnp.bfloat16))).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    x = negate(x)
  x.block_until_ready()
  return 2 * x.nbytes * repeats / (time.perf_counter() - start)


def profile_summary(trace_dir: str, top: int = 12) -> list[str]:
  """Time per event name on each device line of the `jax.profiler` trace in `trace_dir`.

  Op names are summed without their numeric suffixes. Device planes only ("/device:GPU:0"
  streams and XLA op lines); where there are none (the CPU backend), the host plane's lines other
  than Python's. Returns printable lines, largest first.
  """
  import glob  # noqa: PLC0415

  from jax._src.lib import _profile_data  # noqa: PLC0415  (no public reader of xplane.pb)
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
  if not paths:
    return [f"profile: no xplane.pb under {trace_dir}"]
  planes = list(_profile_data.ProfileData.from_file(paths[-1]).planes)
  chosen = [pl for pl in planes if pl.name.startswith("/device:")] or [
      pl for pl in planes if pl.name.startswith("/host:")]
  out = []
  for plane in chosen:
    for line in plane.lines:
      if "python" in line.name.lower():
        continue
      totals, events = {}, 0
      for ev in line.events:  # one name per op kind: "dot.4419", "fusion_12" -> "dot", "fusion"
        name = re.sub(r"([._]\d+)+$", "", ev.name)
        totals[name] = totals.get(name, 0) + ev.duration_ns
        events += 1
      if not totals:
        continue
      out.append(f"profile {plane.name} / {line.name}: {sum(totals.values()) / 1e6:.1f} ms, "
                 f"{events} events")
      for name, ns in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {ns / 1e6:10.1f} ms  {name[:100]}")
  return out


def check_args(args):
  """Refuses arguments the bench cannot run, naming the flag (before anything is built)."""
  if args.tokens < 1 or int(round(args.tokens ** 0.5)) ** 2 != args.tokens:
    raise SystemExit(f"error: --tokens must be a square number of image tokens (576 = 24 x 24), "
                     f"got {args.tokens}")
  for name, value, low in (("--repeats", args.repeats, 1), ("--images", args.images, 0),
                           ("--check_tokens", args.check_tokens, 0),
                           ("--segments", args.segments, 1)):
    if value < low:
      raise SystemExit(f"error: {name} must be >= {low}, got {value}")
  if args.check_tokens > args.tokens:
    raise SystemExit(f"error: --check_tokens {args.check_tokens} exceeds --tokens {args.tokens}")


def limit_cpus(threads: int) -> str:
  """Pins the process to its first `threads` usable cores (XLA and torch then share them).

  Call before the first use of the XLA CPU backend. The thread flags alone do not hold XLA to
  one core: at --threads 1 it still used about 1.7 cores of CPU time per wall second here
  (helper threads), while torch.set_num_threads(1) keeps torch on one, so unpinned "one thread
  each" favours JAX. Pinning makes both sides share the same cores. Returns the cores as text.
  """
  if threads < 0:
    raise ValueError(f"--threads must be >= 0, got {threads}")
  if not threads:
    return "all"
  # XLA has no intra-op thread-count flag (a bare `intra_op_parallelism_threads=N` token, as
  # this once passed, is silently ignored): the affinity below holds it to `threads` cores, and
  # its thread pool is sized from them. Only at one thread are the dots kept off that pool.
  if threads == 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false")
  usable = sorted(os.sched_getaffinity(0))
  if threads > len(usable):
    raise ValueError(f"--threads {threads}: only {len(usable)} usable cores")
  os.sched_setaffinity(0, usable[:threads])
  return ",".join(map(str, usable[:threads]))


def cpu_description() -> str:
  """The host CPU's model name and widest vector extension: CPU results depend on both."""
  try:
    with open("/proc/cpuinfo") as f:
      info = f.read()
  except OSError:
    return "unknown"
  model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                if ln.startswith("model name")), "unknown")
  flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                    if ln.startswith("flags")), []))
  vector = next((f for f in ("avx512f", "avx2", "avx") if f in flags), "none")
  return f"{model} ({vector})"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", default="auto", help="mid | janus_pro_7b (auto: by backend)")
  ap.add_argument("--images", type=int, default=0, help="parallel_size (0: 16 GPU, 4 CPU)")
  ap.add_argument("--tokens", type=int, default=576, help="image tokens per image")
  ap.add_argument("--dtype", default="auto", help="float32 | bfloat16 (auto: by backend)")
  ap.add_argument("--repeats", type=int, default=2, help="timed runs per side (best counts)")
  ap.add_argument("--threads", type=int, default=1,
                  help="threads for both XLA and torch on CPU, and the process is pinned to "
                       "that many cores (0: their defaults, unpinned; pass 0 on a GPU, where "
                       "the pinning would only slow compilation). One by default: on a shared "
                       "machine oversubscribed torch threads spin and distort the comparison")
  ap.add_argument("--check_tokens", type=int, default=32,
                  help="greedy codes compared between JAX and the reference (0: skip)")
  ap.add_argument("--segments", type=int, default=8,
                  help="the sampler's cache-growth stages (image_ar.sample_codes)")
  ap.add_argument("--profile", default="",
                  help="trace one more JAX sampling run into this folder and print the time "
                       "per op on the device")
  ap.add_argument("--hf", action="store_true",
                  help="also time transformers JanusForConditionalGeneration.generate")
  args = ap.parse_args(argv)
  check_args(args)
  cpus = limit_cpus(args.threads)
  on_gpu = jax.default_backend() == "gpu"
  if args.config == "auto":
    args.config = "janus_pro_7b" if on_gpu else "mid"
  if args.dtype == "auto":
    args.dtype = "bfloat16" if on_gpu else "float32"
  args.images = args.images or (16 if on_gpu else 4)

  import torch  # noqa: PLC0415
  device = "cuda" if on_gpu else "cpu"
  if args.threads and not on_gpu:
    torch.set_num_threads(args.threads)
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
  config = bench_config(args.config)
  grid = int(round(args.tokens ** 0.5))
  model = janus.Model(config, dtype, dtype)
  t0 = time.perf_counter()
  params = init_generation_params(model, args.tokens)
  params = jax.tree.map(lambda x: x.astype(dtype), params)
  print(f"config={args.config} dtype={args.dtype} images={args.images} tokens={args.tokens} "
        f"backend={jax.default_backend()} torch_threads={torch.get_num_threads()} "
        f"cpus={cpus} init={time.perf_counter() - t0:.1f}s", flush=True)
  if not on_gpu:
    print(f"cpu: {cpu_description()}", flush=True)
  prompt = [1] + list(range(10, 10 + 14)) + [5]  # BOS, 14 text tokens, <begin_of_image>
  n, p = args.images, args.tokens
  reference = torch_reference(config, params, dtype, device)
  # Lay the weights out for decoding once, as sample.py does at load (the sampler would lay out
  # a copy): layers split, q/k/v and gate/up stacked and, on CPU, kernels packed for the CPU
  # decode product (`decode_layout`).
  params = decode_layout.decode_layout(params, dtype=dtype)

  # Correctness first: both pick the same greedy codes.
  if args.check_tokens:
    ref_codes = reference([prompt], n, 5.0, args.check_tokens, greedy=True).cpu().numpy()
    jax_codes, _ = image_ar.sample_codes(
        model, params, *_rows(prompt, n), jax.random.key(0), jnp.float32(5.0),
        sampler=samplers.Greedy(), num_tokens=args.check_tokens, segments=args.segments)
    same = int((np.asarray(jax_codes) == ref_codes).all(axis=0).sum())
    print(f"greedy check: {same}/{args.check_tokens} steps pick identical codes", flush=True)

  # JAX: compile once, then time.
  sampler = samplers.Sampling()
  rows = _rows(prompt, n)

  def jax_codes(seed=0):
    codes, _ = image_ar.sample_codes(model, params, *rows, jax.random.key(seed),
                                     jnp.float32(5.0), sampler=sampler, num_tokens=p,
                                     segments=args.segments)
    return codes.block_until_ready()

  def jax_images():
    return image_ar.decode_images(model, params, jax_codes()).block_until_ready()

  t0 = time.perf_counter()
  jax_images()
  compile_s = time.perf_counter() - t0
  # Warm-up. On GPU a full run: the first pass over all cache lengths ran 2.6x slower than the
  # next on an H200 (48.7 s against 18.9 s with the VQ decode), which a best of one would count.
  reference([prompt], n, 5.0, p if on_gpu else 2)
  decode = torch_vq_decoder(config, grid, dtype, device)
  sync = torch.cuda.synchronize if on_gpu else (lambda: None)

  def ref_codes():
    c = reference([prompt], n, 5.0, p)
    sync()
    return c

  # Interleaved, best of `repeats` each: load from other processes hits both sides alike.
  times = {k: [] for k in ("jax_tok", "jax_e2e", "ref_tok", "ref_e2e")}
  for _ in range(args.repeats):
    times["jax_tok"].append(timed(jax_codes, 1))
    times["ref_tok"].append(timed(ref_codes, 1))
    times["jax_e2e"].append(timed(jax_images, 1))
    times["ref_e2e"].append(timed(lambda: decode(ref_codes()), 1))
  jax_tok_s, jax_e2e_s, ref_tok_s, ref_e2e_s = (
      min(times[k]) for k in ("jax_tok", "jax_e2e", "ref_tok", "ref_e2e"))

  def line(name, tok_s, e2e_s):
    print(f"{name:<28} tokens: {tok_s:7.2f}s {n * p / tok_s:9.1f} image-tok/s   "
          f"end-to-end: {e2e_s:7.2f}s {n / e2e_s:7.3f} images/s", flush=True)

  print(f"jax compile (first call, codes + decode): {compile_s:.1f}s")
  line("jax (fori_loop, jit)", jax_tok_s, jax_e2e_s)
  line("reference loop (torch)", ref_tok_s, ref_e2e_s)
  if args.profile:
    with jax.profiler.trace(args.profile):
      jax_codes()
    try:
      print("\n".join(profile_summary(args.profile)), flush=True)
    except Exception as e:  # noqa: BLE001  (a private reader: keep the lines below)
      print(f"profile: could not read the trace in {args.profile}: {type(e).__name__}: {e}")
  if on_gpu:
    traffic = decode_traffic(config, params, dtype, 2 * n, len(prompt), p, args.segments)
    print(floor_line(*traffic, copy_bandwidth(), jax_tok_s), flush=True)
  if args.hf:
    try:
      hf_s = time_hf_generate(config, grid, n, p, dtype, device, prompt, args.repeats)
    except Exception as e:  # noqa: BLE001  (another transformers version: keep the lines below)
      print(f"{'transformers Janus generate':<28} failed: {type(e).__name__}: {e}", flush=True)
    else:
      print(f"{'transformers Janus generate':<28} tokens+decode: {hf_s:7.2f}s "
            f"{n / hf_s:7.3f} images/s   (jax end-to-end speedup {hf_s / jax_e2e_s:.2f}x)")
  print(f"end_to_end_speedup={ref_e2e_s / jax_e2e_s:.2f}")
  print(f"speedup_vs_reference={ref_tok_s / jax_tok_s:.2f}")


def _rows(prompt, n):
  b = image_ar.prompt_batch([prompt], n, PAD)
  return b.tokens, b.mask, b.positions


def hf_janus_config(config: janus.Config, grid: int, num_tokens: int):
  """transformers' `JanusConfig` for `config`'s generation path, with a `grid` x `grid` VQ grid."""
  from transformers.models.janus import configuration_janus as cj  # noqa: PLC0415
  vq_cfg, c = config.vq, config.llm
  return cj.JanusConfig(
      text_config={**{k: v for k, v in c.to_hf().items() if k != "model_type"},
                   "pad_token_id": PAD, "bos_token_id": 1, "eos_token_id": 2},
      # transformers sizes the VQ token grid from the vision tower (image_size // patch_size),
      # so the (unused) tower gets one patch per image token.
      vision_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=128, image_size=8 * grid, patch_size=8,
                         projection_dim=c.hidden_size, num_image_tokens=num_tokens),
      vq_config=dict(embed_dim=vq_cfg.codebook_dim, num_embeddings=vq_cfg.codebook_size,
                     latent_channels=vq_cfg.z_channels, base_channels=vq_cfg.base_channels,
                     channel_multiplier=list(vq_cfg.ch_mult),
                     num_res_blocks=vq_cfg.num_res_blocks,
                     num_patches=grid, projection_dim=c.hidden_size,
                     image_token_embed_dim=c.hidden_size),
      image_token_id=4)


def time_hf_generate(config, grid, n, p, dtype, device, prompt, repeats=1):
  """transformers `JanusForConditionalGeneration.generate(generation_mode="image")`, same sizes.

  Best wall time of `repeats` calls (no separate warm-up).
  """
  import torch  # noqa: PLC0415
  from transformers.models.janus import modeling_janus  # noqa: PLC0415
  hf = hf_janus_config(config, grid, p)
  tdtype = {jnp.float32: torch.float32, jnp.bfloat16: torch.bfloat16}[dtype]
  with torch.device(device), _default_dtype(torch, tdtype):
    m = modeling_janus.JanusForConditionalGeneration(hf).eval()
  ids = torch.tensor([prompt], device=device)
  kw = dict(generation_mode="image", do_sample=True, guidance_scale=5.0, max_new_tokens=p,
            pad_token_id=PAD, num_return_sequences=n)
  # transformers reads the image-start token from the generation config, not from generate()'s
  # keyword arguments (which it rejects as unused model kwargs).
  m.generation_config.generation_kwargs = {"boi_token_id": prompt[-1]}
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  @torch.inference_mode()
  def run():
    out = m.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    m.decode_image_tokens(out)
    sync()

  return timed(run, repeats)  # best of `repeats`: the first also warms up


if __name__ == "__main__":
  main()
