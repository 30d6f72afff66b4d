"""Janus fixture cases computed by the JAX port (module-level parity; sampling cases live in
`sampling_cases`). Each function maps (model, params, case) to the case's outputs in the
fixture's layout (NCHW images); an output may be `(array, where)` to compare only where `where`.
"""

import jax.numpy as jnp
import numpy as np


def _nhwc(x):
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


def siglip(model, params, case):
  px = _nhwc(case.inputs["pixel_values"])
  feats = model.apply({"params": params}, px,
                      method=lambda m, x: m.vision_model(x))
  return {"features": np.asarray(feats)}


def aligner(model, params, case):
  out = model.apply({"params": params}, jnp.asarray(case.inputs["features"]),
                    method=lambda m, x: m.aligner(x))
  return {"embeds": np.asarray(out)}


def und_logits(model, params, case):
  i = case.inputs
  px = np.asarray(i["pixel_values"]).transpose(0, 1, 3, 4, 2)  # (B, n, 3, S, S) -> NHWC

  def fwd(m, ids, px, seq_mask, emb_mask, attn, pos):
    e = m.prepare_inputs_embeds(ids, px, seq_mask, emb_mask)
    return m.text_logits(m.llm(e, pos, attn_mask=attn).hidden)

  logits = model.apply({"params": params}, jnp.asarray(i["input_ids"]), jnp.asarray(px),
                       jnp.asarray(i["images_seq_mask"]), jnp.asarray(i["images_emb_mask"]),
                       jnp.asarray(i["attention_mask"]), jnp.asarray(i["position_ids"]),
                       method=fwd)
  where = np.broadcast_to(np.asarray(i["attention_mask"], bool)[..., None], logits.shape)
  return {"logits": (np.asarray(logits), where)}


def vq_encode(model, params, case):
  quant, codes = model.apply({"params": params}, _nhwc(case.inputs["pixels"]),
                             method=lambda m, x: m.gen_vision_model.encode(x))
  return {"codes": np.asarray(codes), "quant": _nchw(quant)}


def vq_decode(model, params, case):
  px = model.apply({"params": params}, jnp.asarray(case.inputs["codes"]),
                   method=lambda m, c: m.decode_codes(c))
  return {"pixels": _nchw(px)}


def gen_head(model, params, case):
  out = model.apply({"params": params}, jnp.asarray(case.inputs["hidden"]),
                    method=lambda m, h: m.gen_logits(h))
  return {"logits": np.asarray(out)}


def gen_embed(model, params, case):
  out = model.apply({"params": params}, jnp.asarray(case.inputs["codes"]),
                    method=lambda m, c: m.embed_image_codes(c))
  return {"embeds": np.asarray(out)}


CASES = {f.__name__: f for f in (siglip, aligner, und_logits, vq_encode, vq_decode, gen_head,
                                  gen_embed)}
