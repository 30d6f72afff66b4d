"""Second, independent reference: transformers' `JanusForConditionalGeneration`.

A random tiny HF Janus is saved with `save_pretrained` (sharded, HF layout), converted by the
real converter (layout detection, `janus_hf` table, Orbax output, `load_converted`), and the JAX
model must reproduce the torch model's vision features, multimodal LLM logits, generation
head, generation embeddings and VQ decode at float32. VQ *encode* is not compared: HF's
quantizer skips the l2 normalisation of the original (`vq_model.py`'s `VectorQuantizer`).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from janus_jax.convert import driver  # noqa: E402
from janus_jax.models import janus  # noqa: E402

ATOL, RTOL = 1e-4, 1e-4
IMAGE_TOKEN = 5
VQ_SIDE = 64  # pixels; the VQ downsamples by 16 -> 4x4 = 16 codes


def _hf_model(tie: bool):
  vision = transformers.JanusVisionConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
      projection_dim=64, depth=2)
  vq = transformers.JanusVQVAEConfig(
      embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
      channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=2, projection_dim=64,
      image_token_embed_dim=64, num_patches=VQ_SIDE // 16, num_hidden_layers=2)
  text = transformers.LlamaConfig(
      vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6)
  cfg = transformers.JanusConfig(vision_config=vision.to_dict(), vq_config=vq.to_dict(),
                                 text_config=text.to_dict(), image_token_id=IMAGE_TOKEN,
                                 tie_word_embeddings=tie)
  torch.manual_seed(0)
  model = transformers.JanusForConditionalGeneration._from_config(
      cfg, attn_implementation="eager").eval()
  # HF init leaves biases at 0 and norms at 1, which would hide mapping mistakes: perturb all.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.normal_(0.0, 0.05)
      elif p.ndim == 1:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        p.add_(0.02 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def pair(request, tmp_path_factory):
  tie = request.param
  model = _hf_model(tie)
  src = tmp_path_factory.mktemp("hf")
  model.save_pretrained(src, max_shard_size="1MB")  # several shards + index json
  assert (src / "model.safetensors.index.json").is_file()
  out = tmp_path_factory.mktemp("converted") / "out"
  summary = driver.convert(src, out, progress=False, log=lambda *_: None)
  assert summary.family == "janus_hf"
  config, params = driver.load_converted(out)
  return model, config, {"params": params}


def _close(got, want, what):
  np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), atol=ATOL, rtol=RTOL,
                             err_msg=what)


def test_vision_features(pair):
  model, config, params = pair
  pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    out = model.model.get_image_features(pixels)
  nhwc = jnp.asarray(pixels.permute(0, 2, 3, 1).numpy())
  jm = janus.Model(config)
  _close(jm.apply(params, nhwc, method=lambda m, x: m.vision_model(x)),
         out.last_hidden_state, "vision tower")
  _close(jm.apply(params, nhwc, method=janus.Model.encode_images), out.pooler_output, "aligner")


def test_multimodal_logits(pair):
  model, config, params = pair
  p = config.vision.num_patches
  g = torch.Generator().manual_seed(2)
  ids = torch.randint(8, 128, (2, 2 * p + 6), generator=g)
  ids[0, 2:2 + p] = IMAGE_TOKEN  # row 0: one image; row 1: two images
  ids[1, 1:1 + p] = IMAGE_TOKEN
  ids[1, 3 + p:3 + 2 * p] = IMAGE_TOKEN
  pixels = torch.randn(3, 3, 32, 32, generator=g)
  with torch.no_grad():
    want = model(input_ids=ids, pixel_values=pixels).logits

  pv = np.zeros((2, 2, 32, 32, 3), np.float32)
  nhwc = pixels.permute(0, 2, 3, 1).numpy()
  pv[0, 0], pv[1, 0], pv[1, 1] = nhwc[0], nhwc[1], nhwc[2]
  emb_mask = np.ones((2, 2, p), bool)
  emb_mask[0, 1] = False

  def run(m, ids, pv, seq_mask, emb_mask):
    embeds = m.prepare_inputs_embeds(ids, pv, seq_mask, emb_mask)
    pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    return m.text_logits(m.llm(embeds, pos).hidden)

  ids_np = ids.numpy()
  got = janus.Model(config).apply(params, jnp.asarray(ids_np), jnp.asarray(pv),
                                  jnp.asarray(ids_np == IMAGE_TOKEN), jnp.asarray(emb_mask),
                                  method=run)
  _close(got, want, "LLM logits")


def test_generation_head_and_embeddings(pair):
  model, config, params = pair
  g = torch.Generator().manual_seed(3)
  hidden = torch.randn(2, 5, config.llm.hidden_size, generator=g)
  codes = torch.randint(0, config.image_token_size, (2, 5), generator=g)
  jm = janus.Model(config)
  with torch.no_grad():
    _close(jm.apply(params, jnp.asarray(hidden.numpy()), method=janus.Model.gen_logits),
           model.model.generation_head(hidden), "generation head")
    _close(jm.apply(params, jnp.asarray(codes.numpy()), method=janus.Model.embed_image_codes),
           model.prepare_embeddings_for_image_generation(codes), "generation embeddings")


def test_vq_decode(pair):
  model, config, params = pair
  codes = torch.randint(0, config.image_token_size, (2, (VQ_SIDE // 16) ** 2),
                        generator=torch.Generator().manual_seed(4))
  with torch.no_grad():
    want = model.decode_image_tokens(codes)  # (B, H, W, 3)
  got = janus.Model(config).apply(params, jnp.asarray(codes.numpy()),
                                  method=janus.Model.decode_codes)
  assert got.shape == (2, VQ_SIDE, VQ_SIDE, 3)
  _close(got, want, "VQ decode")
