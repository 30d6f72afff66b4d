"""JanusFlow text-to-image speed: the compiled JAX sampler vs the reference's eager PyTorch loop.

  python bench/flow_bench.py                  # mid-size random model on CPU (a few minutes)
  python bench/flow_bench.py --size=full --images=5 --steps=30 --jax_only --threads 0   # GPU

On CPU both sides get one thread on one pinned core by default (`--threads`, as
`sample_bench.py`): unpinned, torch's idle threads spin on a loaded machine and inflate the
reference's time.

Both sides run the reference's JanusFlow sampling (`demo/app_janusflow.py`) on the same random
weights: rows [cond; uncond], uncond prompt tokens
after BOS padded and masked, the prompt's last token replaced by t_emb, `t = s/N*1000`,
`v = w v_c - (w - 1) v_u`, `z += v/N`, then the VAE decode. The reference side is the demo's
algorithm as it actually runs: every step re-runs the whole prompt + 1 + Q tokens through
transformers' `LlamaForCausalLM.model` (its prefix cache never takes effect), with a compact
torch ShallowUViT written below under the checkpoint's attribute names and diffusers'
`AutoencoderKL`. The torch state dict is converted to JAX with the real converter tables. The
JAX side is timed with and without the prompt prefix cache (full recompute = the reference's
algorithm, compiled). Everything runs in float32; the first JAX call (compilation) is reported
separately and excluded. A check first confirms both sides produce the same image.

The last line is `speedup_vs_reference=<reference seconds / JAX prefix-cached seconds>`.
"""

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from janus_jax.convert import janusflow as janusflow_table
from janus_jax.convert import rules
from janus_jax.convert import vae as vae_table
from janus_jax.models import janusflow
from janus_jax.models import llama
from janus_jax.models import siglip
from janus_jax.models import uvit
from janus_jax.models import vae
from janus_jax.sampling import image_flow
import sample_bench  # the sibling script: the same thread pinning and CPU description

PAD = 3
SIZES = {
    # LLM width/layers/heads/FFN/vocab, UViT width, latent side, VAE blocks.
    "mid": dict(d=256, layers=4, heads=4, ffn=688, vocab=4096, c=96, latent=32,
                vae_blocks=(32, 64, 64), vae_layers=1, vae_groups=16),
    "full": dict(d=2048, layers=24, heads=16, ffn=5632, vocab=102400, c=768, latent=48,
                 vae_blocks=(128, 256, 512, 512), vae_layers=2, vae_groups=32),
}


# ----------------------------------------------------------------------------- torch reference


def torch_modules(s, seed):
  """The generation half of JanusFlow in torch, attribute names as in the checkpoint."""
  from diffusers.models import embeddings  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn as tnn  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  rms = transformers.models.llama.modeling_llama.LlamaRMSNorm

  class GRN(tnn.Module):
    def __init__(self, f):
      super().__init__()
      self.weight = tnn.Parameter(torch.zeros(1, 1, 1, f))
      self.bias = tnn.Parameter(torch.zeros(1, 1, 1, f))

    def forward(self, x):
      g = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
      return self.bias + (self.weight * (g / (g.mean(dim=-1, keepdim=True) + 1e-6)) + 1) * x

  class ConvNext(tnn.Module):
    def __init__(self, c, d):
      super().__init__()
      self.depthwise = tnn.Conv2d(c, c, 7, padding=3, groups=c)
      self.norm = rms(c, 1e-6)
      self.channelwise_linear_1 = tnn.Linear(c, 4 * c)
      self.channelwise_norm = GRN(4 * c)
      self.channelwise_linear_2 = tnn.Linear(4 * c, c)
      self.cond_embeds_mapper = tnn.Linear(d, 2 * c)

    def forward(self, x, cond):
      h = self.depthwise(x).permute(0, 2, 3, 1)
      h = self.channelwise_linear_1(self.norm(h))
      h = self.channelwise_linear_2(self.channelwise_norm(tnn.functional.gelu(h)))
      x = h.permute(0, 3, 1, 2) + x
      scale, shift = self.cond_embeds_mapper(tnn.functional.silu(cond)).chunk(2, dim=1)
      return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]

  class Mid(tnn.Module):
    def __init__(self, c, d):
      super().__init__()
      self.res_blocks = tnn.ModuleList([ConvNext(c, d), ConvNext(c, d)])

    def forward(self, x, cond):
      for b in self.res_blocks:
        x = b(x, cond)
      return x

  class Encoder(tnn.Module):
    def __init__(self, c, d):
      super().__init__()
      self.time_proj = embeddings.Timesteps(c, flip_sin_to_cos=True, downscale_freq_shift=0)
      self.time_embed = embeddings.TimestepEmbedding(c, d)
      self.in_conv = tnn.Conv2d(4, c, 2, stride=2)
      self.mid_block = Mid(c, d)

    def forward(self, z, t):
      t_emb = self.time_embed(self.time_proj(t).to(z.dtype))
      return self.mid_block(self.in_conv(z), t_emb), t_emb

  class Unpatch(tnn.Module):
    def __init__(self, c):
      super().__init__()
      self.norm = rms(c, 1e-6)
      self.unpatch_conv = tnn.Conv2d(c, 16, 1)
      self.shuffle = tnn.PixelShuffle(2)

    def forward(self, x):
      x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
      return self.shuffle(self.unpatch_conv(x))

  class Decoder(tnn.Module):
    def __init__(self, c, d):
      super().__init__()
      self.input_norm = rms(c, 1e-6)
      self.mid_block = Mid(2 * c, d)
      self.out_convs = tnn.ModuleList([Unpatch(2 * c)])

    def forward(self, x, skip, t_emb):
      x = self.input_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
      return self.out_convs[0](self.mid_block(torch.cat([x, skip], dim=1), t_emb))

  class Flow(tnn.Module):
    def __init__(self, c, d, llm_config):
      super().__init__()
      self.vision_gen_enc_model = Encoder(c, d)
      self.vision_gen_enc_aligner = tnn.Linear(c, d)
      self.vision_gen_dec_model = Decoder(c, d)
      self.vision_gen_dec_aligner_norm = rms(d, 1e-6)
      self.vision_gen_dec_aligner = tnn.Linear(d, c)
      self.language_model = transformers.LlamaForCausalLM(llm_config)

  torch.manual_seed(seed)
  llm_config = transformers.LlamaConfig(
      vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["ffn"],
      num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
      num_key_value_heads=s["heads"], head_dim=s["d"] // s["heads"], rms_norm_eps=1e-6,
      max_position_embeddings=4096, tie_word_embeddings=False)
  flow = Flow(s["c"], s["d"], llm_config).eval()
  blocks = list(s["vae_blocks"])
  vae_ref = __import__("diffusers").AutoencoderKL(
      block_out_channels=blocks, layers_per_block=s["vae_layers"], latent_channels=4,
      norm_num_groups=s["vae_groups"], down_block_types=["DownEncoderBlock2D"] * len(blocks),
      up_block_types=["UpDecoderBlock2D"] * len(blocks), scaling_factor=0.13025).eval()
  with torch.no_grad():
    for p in list(flow.parameters()) + list(vae_ref.parameters()):
      p.add_(0.05 * torch.randn_like(p))  # norms and GRN away from identity
  return flow, vae_ref, llm_config


def torch_generate(flow, vae_ref, prompt, z0, cfg_weight, steps):
  """The demo's `generate`, in float32, full recompute every step (as the reference runs)."""
  import torch  # pylint: disable=import-outside-toplevel
  b = z0.shape[0]
  with torch.inference_mode():
    tokens = torch.tensor([prompt] * (2 * b))
    tokens[b:, 1:] = PAD
    embeds = flow.language_model.get_input_embeddings()(tokens)[:, :-1]
    z = torch.from_numpy(np.asarray(z0))
    q = (z.shape[-1] // 2) ** 2
    mask = torch.ones((2 * b, embeds.shape[1] + 1 + q), dtype=torch.int64)
    mask[b:, 1:embeds.shape[1]] = 0
    for step in range(steps):
      t = torch.full((2 * b,), step / steps * 1000.0)
      x, t_emb = flow.vision_gen_enc_model(torch.cat([z, z]), t)
      tok = flow.vision_gen_enc_aligner(x.flatten(2).permute(0, 2, 1))
      h = flow.language_model.model(inputs_embeds=torch.cat([embeds, t_emb[:, None], tok], 1),
                                    attention_mask=mask).last_hidden_state[:, -q:]
      h = flow.vision_gen_dec_aligner(flow.vision_gen_dec_aligner_norm(h))
      side = x.shape[-1]
      h = h.reshape(2 * b, side, side, -1).permute(0, 3, 1, 2)
      v_c, v_u = flow.vision_gen_dec_model(h, x, t_emb).chunk(2)
      z = z + (1.0 / steps) * (cfg_weight * v_c - (cfg_weight - 1.0) * v_u)
    img = vae_ref.decode(z / vae_ref.config.scaling_factor).sample
  return image_flow.to_uint8(img.permute(0, 2, 3, 1).numpy())


# ----------------------------------------------------------------------------- JAX side


def jax_config(s, llm_config: llama.Config) -> janusflow.Config:
  d = s["d"]
  return janusflow.Config(
      vision=siglip.Config(image_size=16, patch_size=8, width=32, depth=1, heads=2),
      encoder=uvit.EncoderConfig(input_channels=4, channels=s["c"], cond_dim=d),
      decoder=uvit.DecoderConfig(in_channels=s["c"], out_channels=4, channels=s["c"],
                                 cond_dim=d, upsamples=1),
      llm=llm_config, gen_latent_size=s["latent"])


def jax_models(s, flow, vae_ref, llm_config):
  """The JAX JanusFlow + VAE with the torch weights (converted with the real tables)."""
  cfg = jax_config(s, llama.Config.from_hf(llm_config.to_dict()))
  expected = nn.unbox(janusflow.abstract_params(cfg))
  # The understanding half is not part of generation: zeros, not converted.
  und = ("vision_und_enc_model", "vision_und_enc_aligner", "beg_of_und_embed")
  sd = {k: v.numpy() for k, v in flow.state_dict().items()}
  params, _ = rules.convert_tensors(janusflow_table.RULES, sd,
                                    {k: v for k, v in expected.items() if k not in und})
  params.update(jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                             {k: expected[k] for k in und}))
  vsd = {k: v.numpy() for k, v in vae_ref.state_dict().items()}
  vcfg = vae_table.config_from(dict(vae_ref.config), {k: v.shape for k, v in vsd.items()})
  vparams, _ = rules.convert_tensors(vae_table.RULES, vsd,
                                     nn.unbox(vae_table.abstract_params(vcfg)))
  return janusflow.Model(cfg), params, vae.Model(vcfg), vparams


def random_jax(s, size, dtype):
  """Random parameters initialised on the device, without the reference (for GPU timing)."""
  if size == "full":
    cfg = janusflow.get_config("janusflow_1_3b")
    vcfg = vae.get_config("sdxl")
  else:
    cfg = jax_config(s, llama.Config(
        vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["ffn"],
        num_layers=s["layers"], num_heads=s["heads"], num_kv_heads=s["heads"],
        head_dim=s["d"] // s["heads"]))
    vcfg = vae.Config(block_out_channels=s["vae_blocks"], layers_per_block=s["vae_layers"],
                      norm_groups=s["vae_groups"])
  model = janusflow.Model(cfg, dtype=dtype, param_dtype=dtype)
  params = jax.jit(lambda: nn.unbox(model.init(
      jax.random.key(0), *janusflow.init_inputs(cfg), method=janusflow.Model.init_all))[
          "params"])()
  vmodel = vae.Model(vcfg, dtype=dtype, param_dtype=dtype)
  vparams = jax.jit(lambda: nn.unbox(vmodel.init(jax.random.key(1),
                                                 jnp.zeros((1, 8, 8, 3))))["params"])()
  return model, params, vmodel, vparams


def timed(fn, repeats):
  """(min seconds over `repeats` calls, last result)."""
  best, out = float("inf"), None
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - start)
  return best, out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--size", choices=sorted(SIZES), default="mid")
  ap.add_argument("--images", type=int, default=2)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--prompt_len", type=int, default=48)
  ap.add_argument("--cfg_weight", type=float, default=2.0)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--jax_only", action="store_true", help="skip the torch reference")
  ap.add_argument("--bf16", action="store_true", help="JAX network in bf16 (fp32 integration)")
  ap.add_argument("--threads", type=int, default=1,
                  help="threads for both XLA and torch on CPU, the process pinned to that many "
                       "cores (0: their defaults, unpinned; pass 0 on a GPU)")
  args = ap.parse_args()
  cpus = sample_bench.limit_cpus(args.threads)  # before jax initialises its CPU backend
  s = SIZES[args.size]
  print(f"command: python bench/flow_bench.py {' '.join(sys.argv[1:])}")
  print(f"devices: {jax.devices()}; size={args.size} {s}; images={args.images} "
        f"steps={args.steps} prompt_len={args.prompt_len}; threads={args.threads} cpus={cpus}")
  if jax.default_backend() == "cpu":
    print(f"cpu: {sample_bench.cpu_description()}")
  rng = np.random.default_rng(0)
  prompt = [1] + rng.integers(10, min(s["vocab"], 1000), args.prompt_len - 1).tolist()
  z0_nchw = rng.standard_normal((args.images, 4, s["latent"], s["latent"])).astype(np.float32)
  z0 = jnp.asarray(z0_nchw.transpose(0, 2, 3, 1))

  ref_s = None
  if args.jax_only:
    dtype = jnp.bfloat16 if args.bf16 else jnp.float32
    model, params, vmodel, vparams = random_jax(s, args.size, dtype)
  else:
    import torch  # pylint: disable=import-outside-toplevel
    if args.threads and jax.default_backend() == "cpu":
      torch.set_num_threads(args.threads)
    flow, vae_ref, llm_config = torch_modules(s, seed=0)
    model, params, vmodel, vparams = jax_models(s, flow, vae_ref, llm_config)
    if args.bf16:
      model = janusflow.Model(model.config, dtype=jnp.bfloat16)
    ref_s, ref_img = timed(lambda: torch_generate(flow, vae_ref, prompt, z0_nchw,
                                                  args.cfg_weight, args.steps), args.repeats)
    print(f"reference (torch eager, full recompute): {ref_s:.2f} s")

  results = {}
  for cached in (False, True):
    def run():
      img = image_flow.generate(model, params, vmodel, vparams, [prompt] * args.images,
                                pad_id=PAD, cfg_weight=args.cfg_weight, steps=args.steps,
                                z0=z0, prefix_cache=cached, integrate_fp32=args.bf16)
      return np.asarray(img)
    compile_s, img = timed(run, 1)
    run_s, img = timed(run, args.repeats)
    name = "jax prefix-cached" if cached else "jax full recompute"
    line = f"{name}: {run_s:.3f} s (first call incl. compile {compile_s:.1f} s)"
    if ref_s is not None:
      diff = np.abs(img.astype(int) - ref_img.astype(int))
      line += f"; image vs reference: max |diff| {diff.max()} of 255, mean {diff.mean():.3f}"
    print(line)
    results[cached] = run_s
  print(f"prefix cache speedup over JAX full recompute: {results[False] / results[True]:.2f}x")
  per_image = results[True] / args.images
  print(f"jax prefix-cached: {per_image:.3f} s/image, {args.images} images x {args.steps} steps "
        f"in {results[True]:.3f} s")
  if ref_s is not None:
    print(f"speedup_vs_reference={ref_s / results[True]:.2f}")


if __name__ == "__main__":
  main()
