"""JanusFlow fixture cases computed by the JAX port.

Each function maps (model, params, vae_model, vae_params, case) to the case's outputs in the
fixture's layout (NCHW images and latents); an output may be `(array, where)` to compare only
where `where`. Sizes come from the case inputs and the converted configs, never constants.
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from janus_jax import fixtures
from janus_jax.convert import janusflow as janusflow_table
from janus_jax.convert import rules
from janus_jax.convert import vae as vae_table
from janus_jax.models import janusflow
from janus_jax.models import vae
from janus_jax.parity import janus_cases
from janus_jax.sampling import image_flow


def load(root):
  """Converts a JanusFlow fixture in memory (small fixtures only).

  Returns:
    (fixture, model, params, vae_model, vae_params); the VAE comes from `root/vae` and must
    match the model's latent channels.
  """
  from safetensors import numpy as st  # pylint: disable=import-outside-toplevel
  fx = fixtures.load(root)
  tensors = st.load_file(str(fx.weights))
  cfg = janusflow_table.config_from(fx.config, {k: v.shape for k, v in tensors.items()},
                                    fx.extra)
  params, _ = rules.convert_tensors(janusflow_table.RULES, tensors,
                                    nn.unbox(janusflow.abstract_params(cfg)),
                                    janusflow_table.SKIP)
  vae_cfg, vae_params = vae_table.load(fx.root / "vae", latent_channels=cfg.latent_channels)
  return fx, janusflow.Model(cfg), params, vae.Model(vae_cfg), vae_params


def _nhwc(x):
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


def und_logits(model, params, vae_model, vae_params, case):
  """Understanding logits where the attention mask is 1: the Janus case, since JanusFlow has the
  same `prepare_inputs_embeds` / `llm` / `text_logits` methods (its slots are P + 1 wide)."""
  del vae_model, vae_params
  return janus_cases.und_logits(model, params, case)


def flow_gen_enc(model, params, vae_model, vae_params, case):
  del vae_model, vae_params
  _, t_emb, skip = model.apply({"params": params}, _nhwc(case.inputs["z"]),
                               jnp.asarray(case.inputs["t"]),
                               method=janusflow.Model.gen_encode)
  return {"z_emb": _nchw(skip), "t_emb": np.asarray(t_emb)}


def flow_gen_dec(model, params, vae_model, vae_params, case):
  """The UViT decoder alone (the fixture feeds its grid input directly, no aligner)."""
  del vae_model, vae_params
  i = case.inputs
  v = model.apply({"params": params}, _nhwc(i["x"]), _nhwc(i["skip"]), jnp.asarray(i["t_emb"]),
                  method=lambda m, x, s, t: m.vision_gen_dec_model(x, s, t))
  return {"velocity": _nchw(v)}


def flow_sample(model, params, vae_model, vae_params, case):
  """Guided Euler sampling with the prompt prefix cached, then VAE decode (float pixels)."""
  i = case.inputs
  z0 = _nhwc(i["z0"])
  prompts = image_flow.prompt_rows([np.asarray(i["prompt_ids"])] * z0.shape[0],
                                    int(i["pad_id"]))
  z, v0 = image_flow.sample_latents(model, params, prompts.ids, prompts.mask, prompts.offset, z0,
                                    jnp.float32(i["cfg_weight"]), steps=int(i["steps"]),
                                    prefix_cache=True)
  image = image_flow.decode_latents(vae_model, vae_params, z)
  return {"first_velocity": _nchw(v0), "z_final": _nchw(z), "image": _nchw(image)}


def vae_decode(model, params, vae_model, vae_params, case):
  """The VAE decoder on latents already divided by the scaling factor."""
  del model, params
  x = vae_model.apply({"params": vae_params}, _nhwc(case.inputs["latents"]),
                      method=lambda m, z: m.decode(z))
  return {"image": _nchw(x)}


CASES = {
    "und_logits": und_logits,
    "flow_gen_enc": flow_gen_enc,
    "flow_gen_dec": flow_gen_dec,
    "flow_sample": flow_sample,
    "vae_decode": vae_decode,
}
