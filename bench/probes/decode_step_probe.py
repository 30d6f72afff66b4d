"""Per-step time of one cached decode step of the LLM under layout / kernel variants (GPU probe).

  python -m bench.probes.decode_step_probe --variant base           # one variant per process
  python -m bench.probes.decode_step_probe --attention_sweep        # decode attention alone

Variants of the 7B-shaped step (R rows, 30 layers, bf16): `base` is the step as
`llama.Attention` / `llama.Mlp` compute it (separate q/k/v and gate/up products, einsum
attention over the whole cache buffer); `fused` multiplies q/k/v and gate/up as one product
each; `+pallas` replaces the attention by JAX's Pallas decode-attention kernel, which reads only
the valid slots. XLA flags (e.g. cuBLAS instead of Triton GEMMs) come from the environment.
"""

import argparse
import functools
import os
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp

from janus_jax.models import llama

MASK = llama._MASK_VALUE  # the decoder's own masked-logit value  # noqa: SLF001


def shapes(tiny: bool):
  if tiny:
    return dict(rows=4, layers=2, d=64, heads=4, hd=16, ff=128)
  return dict(rows=32, layers=30, d=4096, heads=32, hd=128, ff=11008)


def make_weights(s, fused, dtype, key):
  d, n, h, f = s["d"], s["heads"], s["hd"], s["ff"]
  out = []
  for i in range(s["layers"]):
    ks = jax.random.split(jax.random.fold_in(key, i), 7)
    nrm = lambda k, shape: (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(dtype)  # noqa
    w = dict(o=nrm(ks[3], (n, h, d)), down=nrm(ks[5], (f, d)),
             ln1=jnp.ones((d,), dtype), ln2=jnp.ones((d,), dtype))
    if fused:
      w["qkv"] = nrm(ks[0], (d, 3, n, h))
      w["gu"] = nrm(ks[4], (d, 2, f))
    else:
      w.update(q=nrm(ks[0], (d, n, h)), k=nrm(ks[1], (d, n, h)), v=nrm(ks[2], (d, n, h)),
               gate=nrm(ks[4], (d, f)), up=nrm(ks[6], (d, f)))
    out.append(w)
  return out


def rms(x, w):
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-6)
  return w * x32.astype(x.dtype)


def attend_einsum(q, ck, cv, valid):
  """q (B, 1, N, H), cache (B, N, S, H), valid (B, S) -> (B, 1, N, H)."""
  logits = jnp.einsum("BTNH,BNSH->BNTS", q, ck, preferred_element_type=jnp.float32)
  logits = jnp.where(valid[:, None, None], logits * q.shape[-1] ** -0.5, MASK)
  probs = jax.nn.softmax(logits, -1).astype(q.dtype)
  return jnp.einsum("BNTS,BNSH->BTNH", probs, cv)


def attend_pallas(q, ck, cv, start, length, k_splits, block_k, interpret):
  """q (B, 1, N, H), cache (B, N, S, H), start / length (B,): each row attends over its slots
  start..length-1 only, one (row, head) pair per Pallas query. -> (B, 1, N, H)."""
  from jax.experimental.pallas.ops.gpu import decode_attention as da
  b, _, n, h = q.shape
  s = ck.shape[2]
  o = da.mqa(q.reshape(b * n, 1, h), ck.reshape(b * n, s, h), cv.reshape(b * n, s, h),
             start_idx=jnp.repeat(start, n), kv_seq_len=jnp.repeat(length, n),
             k_splits=k_splits, block_k=block_k, interpret=interpret)
  return o.reshape(b, 1, n, h).astype(q.dtype)  # its final division promotes to float32


def layer(x, w, ck, cv, index, pos, valid, start, attn):
  h = rms(x, w["ln1"])
  if "qkv" in w:
    qkv = jnp.einsum("BTD,DCNH->CBTNH", h, w["qkv"])
    q, k, v = qkv[0], qkv[1], qkv[2]
  else:
    q, k, v = (jnp.einsum("BTD,DNH->BTNH", h, w[n]) for n in "qkv")
  q, k = llama.rope(q, pos, 10000.0), llama.rope(k, pos, 10000.0)
  ck = jax.lax.dynamic_update_slice_in_dim(ck, k.transpose(0, 2, 1, 3), index, 2)
  cv = jax.lax.dynamic_update_slice_in_dim(cv, v.transpose(0, 2, 1, 3), index, 2)
  o = attn(q, ck, cv, valid, start, index + 1)
  x = x + jnp.einsum("BTNH,NHD->BTD", o, w["o"])
  h = rms(x, w["ln2"])
  if "gu" in w:
    gu = jnp.einsum("BTD,DCF->CBTF", h, w["gu"])
    g, u = gu[0], gu[1]
  else:
    g, u = h @ w["gate"], h @ w["up"]
  return x + (jax.nn.silu(g) * u) @ w["down"], ck, cv


def steps_fn(attn, n_steps):
  @functools.partial(jax.jit, donate_argnums=(2, 3))
  def run(weights, x, cks, cvs, index0, valid, start):
    def body(i, carry):
      x, cks, cvs, valid = carry
      index = index0 + i
      valid = jax.lax.dynamic_update_slice_in_dim(valid, jnp.ones((x.shape[0], 1), bool),
                                                  index, 1)
      pos = jnp.broadcast_to(index - start, (x.shape[0],))[:, None]
      nk, nv = [], []
      for li, w in enumerate(weights):
        x, k, v = layer(x, w, cks[li], cvs[li], index, pos, valid, start, attn)
        nk.append(k)
        nv.append(v)
      x = x / (1 + jnp.abs(x).max())  # keep values bounded over many steps
      return x, tuple(nk), tuple(nv), valid
    return jax.lax.fori_loop(0, n_steps, body, (x, cks, cvs, valid))
  return run


def timeit(fn, repeats):
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return best


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--variant", default="base",
                 choices=("base", "fused", "base+pallas", "fused+pallas"))
  p.add_argument("--capacity", type=int, default=344, help="cache slots (einsum reads all)")
  p.add_argument("--index", type=int, default=308, help="slot of the first timed step")
  p.add_argument("--steps", type=int, default=16)
  p.add_argument("--k_splits", type=int, default=8)
  p.add_argument("--block_k", type=int, default=64)
  p.add_argument("--attention_sweep", action="store_true")
  p.add_argument("--tiny", action="store_true", help="small shapes, Pallas interpreted (CPU)")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--layers", type=int, default=0, help="decoder layers (0: the shape's)")
  args = p.parse_args(argv)
  for name, value, low in (("--steps", args.steps, 1), ("--index", args.index, 0),
                           ("--capacity", args.capacity, 1), ("--layers", args.layers, 0),
                           ("--k_splits", args.k_splits, 1), ("--block_k", args.block_k, 1)):
    if value < low:
      p.error(f"{name} must be >= {low}, got {value}")
  # A write past the cache would be clamped onto its last slot, timing a different step; the
  # sweep attends up to slot --index.
  last = args.index if args.attention_sweep else args.index + args.steps - 1
  if last >= args.capacity:
    reach = "" if args.attention_sweep else f" with --steps {args.steps}"
    p.error(f"--index {args.index}{reach} reaches slot {last}, past --capacity {args.capacity}")
  s = shapes(args.tiny)
  s["layers"] = args.layers or s["layers"]
  dtype = jnp.dtype(args.dtype)
  r, n, h = s["rows"], s["heads"], s["hd"]
  key = jax.random.key(0)
  start = jnp.arange(r, dtype=jnp.int32) % 7  # left padding: rows start at different slots
  interp = args.tiny

  if args.attention_sweep:
    return sweep(args, s, dtype, start, interp)

  fused, pallas = "fused" in args.variant, "pallas" in args.variant
  cap = args.capacity
  if pallas:
    attn = lambda q, ck, cv, valid, st, ln: attend_pallas(  # noqa: E731
        q, ck, cv, st, jnp.broadcast_to(ln, st.shape), args.k_splits, args.block_k, interp)
  else:
    attn = lambda q, ck, cv, valid, st, ln: attend_einsum(q, ck, cv, valid)  # noqa: E731
  t0 = time.perf_counter()
  weights = jax.block_until_ready(make_weights(s, fused, dtype, key))
  print(f"phase weights {time.perf_counter() - t0:.1f}s", flush=True)
  cache = lambda: tuple(jnp.zeros((r, n, cap, h), dtype) for _ in range(s["layers"]))  # noqa
  valid = jnp.arange(cap)[None] < args.index
  valid &= jnp.arange(cap)[None] >= start[:, None]
  x = jax.random.normal(key, (r, 1, s["d"]), dtype)
  run = steps_fn(attn, args.steps)
  t0 = time.perf_counter()
  jax.block_until_ready(run(weights, x, cache(), cache(), jnp.int32(args.index), valid, start))
  compile_s = time.perf_counter() - t0
  print(f"phase first call {compile_s:.1f}s", flush=True)
  best = float("inf")
  for _ in range(3):
    ck, cv = cache(), cache()
    jax.block_until_ready((ck, cv))
    t = time.perf_counter()
    jax.block_until_ready(run(weights, x, ck, cv, jnp.int32(args.index), valid, start))
    best = min(best, time.perf_counter() - t)
  per = best / args.steps
  print(f"variant={args.variant} layers={s['layers']} capacity={cap} index={args.index} flags="
        f"{os.environ.get('XLA_FLAGS', '')!r} step_ms={per * 1e3:.3f} x575={per * 575:.2f}s "
        f"(first call {compile_s:.1f}s)", flush=True)


def sweep(args, s, dtype, start, interp):
  """Attention of one layer: einsum over capacity C vs Pallas over the valid slots."""
  r, n, h = s["rows"], s["heads"], s["hd"]
  key = jax.random.key(1)
  q = jax.random.normal(key, (r, 1, n, h), dtype)
  idx = args.index
  for cap in (args.capacity, 640):
    ck = jax.random.normal(jax.random.fold_in(key, 1), (r, n, cap, h), dtype)
    cv = jax.random.normal(jax.random.fold_in(key, 2), (r, n, cap, h), dtype)
    valid = (jnp.arange(cap)[None] <= idx) & (jnp.arange(cap)[None] >= start[:, None])
    ref = jax.jit(attend_einsum)
    want = ref(q, ck, cv, valid)
    t = timeit(lambda: ref(q, ck, cv, valid), 20)
    gb = 2 * r * n * cap * h * 2 / 1e9
    print(f"einsum cap={cap}: {t * 1e6:.1f} us ({gb / t / 1e3:.2f} TB/s over the buffer)",
          flush=True)
    length = jnp.full((r,), idx + 1, jnp.int32)
    for ks, bk in ((4, 128), (5, 128), (8, 64), (10, 64), (16, 32), (20, 32), (40, 16)):
      if cap % ks or (cap // ks) % bk and (cap // ks) > bk:
        continue
      f = jax.jit(functools.partial(attend_pallas, k_splits=ks, block_k=bk, interpret=interp))
      try:
        got = f(q, ck, cv, start, length)
        err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32))))
        t = timeit(lambda: f(q, ck, cv, start, length), 20)
      except Exception as e:  # noqa: BLE001  (a probe: report and go on)
        print(f"  pallas cap={cap} k_splits={ks} block_k={bk}: failed {type(e).__name__}: "
              f"{str(e)[:200]}", flush=True)
        continue
      read = 2 * r * n * (idx + 1 - float(start.mean())) * h * 2 / 1e9
      print(f"  pallas cap={cap} k_splits={ks} block_k={bk}: {t * 1e6:.1f} us "
            f"({read / t / 1e3:.2f} TB/s over the valid slots), max |diff| {err:.3g}",
            flush=True)


if __name__ == "__main__":
  main()
