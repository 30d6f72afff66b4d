"""Pure training steps: `train_step(state, batch, rng) -> (state, metrics)` for every family.

Letters: B batch rows, T packed length, n understanding images per row, m generation images per
row (JanusFlow), P image slots per image, Q latent tokens per generation image, D LLM width,
E understanding-encoder width, V text vocab, G image-code vocab, A accumulation steps.

Batch format: `janus_jax.data.pipeline` (its module docstring is the reference), i.e.
  input_ids, targets, segment_ids, positions (B, T) int32; text_loss / image_loss (B, T) bool
  (CE through lm_head / gen_head on `targets`); kinds (B, T) int32 (0 und, 1 text, 2 gen,
  -1 pad); images_seq_mask (B, T), pixel_values (B, n, S, S, 3), images_emb_mask (B, n, P);
  gen_mask, image_codes (B, T) for Janus generation (inputs gen_aligner(gen_embed(code))).
Caption dropout for classifier-free guidance happens in the pipeline (examples.Config).
JanusFlow generation adds (from `SyntheticData`, or from the pipeline, which reads the
latents `tokenize_images --vae` wrote):
  flow_latents     (B, m, H, W, Z) float32  clean VAE latents, already x the VAE scaling factor
  flow_image_mask  (B, m) bool               real generation images
  flow_seq_mask    (B, T) bool               per image, 1 + Q consecutive slots: the time token
                                             (t_emb), then the Q latent tokens (row-major)
  flow_pixels      (B, m, S, S, 3) float32   the same images normalised for the understanding
                                             encoder (REPA targets; optional)

Losses are *sums* divided by normalisers counted on the whole (global, pre-accumulation) batch,
so accumulating A micro-batches gives exactly the gradient of the big batch.
"""

from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from janus_jax.models import janus
from janus_jax.models import layers
from janus_jax.train import optim

KIND_NAMES = {0: "und", 1: "text", 2: "gen"}
REPA = "repa_projector"  # trainer-only parameters (not in released checkpoints)


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds besides the data iterator.

  step: int32 scalar (optimizer updates so far). params: float32 master weights.
  opt_state: optax state (frozen params hold MaskedNodes). ema_params: EMA copy or None.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None


# --- Cross-entropy terms (all families) --------------------------------------------------------


def token_ce(logits, targets):
  """Float32 cross-entropy per token. logits (B, T, V) any dtype, targets (B, T) -> (B, T)."""
  targets = jnp.clip(targets, 0, logits.shape[-1] - 1)
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def _loss_mask(batch):
  mask = batch["text_loss"]
  if "image_loss" in batch:
    mask = mask | batch["image_loss"]
  return mask.astype(jnp.float32)


def normalisers(batch) -> dict:
  """Counts on the full batch that turn loss sums into means (float32 scalars)."""
  mask = _loss_mask(batch)
  out = {"tokens": jnp.sum(mask)}
  for k, name in KIND_NAMES.items():
    out[f"tokens_{name}"] = jnp.sum(mask * (batch["kinds"] == k))
  if "flow_image_mask" in batch:
    out["flow_images"] = jnp.sum(batch["flow_image_mask"].astype(jnp.float32))
  return out


def ce_terms(text_logits, gen_logits, batch) -> dict:
  """Per-kind sums of next-token CE: lm_head where `text_loss`, gen_head where `image_loss`."""
  mask = _loss_mask(batch)
  ce = token_ce(text_logits, batch["targets"])
  if gen_logits is not None:
    ce = jnp.where(batch["image_loss"], token_ce(gen_logits, batch["targets"]), ce)
  out = {"ce": jnp.sum(ce * mask)}
  for k, name in KIND_NAMES.items():
    out[f"ce_{name}"] = jnp.sum(ce * mask * (batch["kinds"] == k))
  return out


def _understanding_embeds(module, batch):
  ids = batch["input_ids"]
  if "pixel_values" in batch:
    return module.prepare_inputs_embeds(ids, batch["pixel_values"], batch["images_seq_mask"],
                                        batch["images_emb_mask"])
  return module.embed_text(ids)


def _llm(module, embeds, batch, **kw):
  seg = batch["segment_ids"]
  return module.llm(embeds, batch["positions"], attn_mask=seg > 0, segment_ids=seg,
                    branch_ids=batch.get("branch_ids"), **kw)


def janus_logits(module, batch):
  """The training forward of Janus / Janus-Pro (bound method of `janus.Model`) on a packed batch:
  text logits (B, L, V) and generation logits (B, L, image codebook), the latter None when the
  batch has no `image_loss`."""
  embeds = _understanding_embeds(module, batch)
  if "image_codes" in batch:
    codes = module.embed_image_codes(batch["image_codes"]).astype(embeds.dtype)
    embeds = jnp.where(batch["gen_mask"][..., None], codes, embeds)
  hidden = _llm(module, embeds, batch).hidden
  gen_logits = module.gen_logits(hidden) if "image_loss" in batch else None
  return module.text_logits(hidden), gen_logits


def janus_terms(module, batch) -> dict:
  """Loss sums for Janus / Janus-Pro (bound method of `janus.Model`)."""
  return ce_terms(*janus_logits(module, batch), batch)


def llm_terms(module, batch) -> dict:
  """Loss sums for text-only training of the bare LLM (bound method of `llama.Model`)."""
  seg = batch["segment_ids"]
  hidden = module(module.embed(batch["input_ids"]), batch["positions"], attn_mask=seg > 0,
                  segment_ids=seg).hidden
  return ce_terms(module.logits(hidden), None, batch)


# --- JanusFlow: rectified flow + REPA ----------------------------------------------------------


class RepaProjector(nn.Module):
  """h_phi of REPA: a 3-layer SiLU MLP from LLM width to the understanding encoder's width."""

  hidden: int
  out: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.silu(layers.dense(self.hidden, ("embed", "mlp"), name="fc1", **kw)(x))
    x = nn.silu(layers.dense(self.hidden, (None, "mlp"), name="fc2", **kw)(x))
    return layers.dense(self.out, ("mlp", "vis_embed"), name="fc3", **kw)(x)


def repa_projector(model_config, config, dtype=jnp.float32, param_dtype=jnp.float32):
  return RepaProjector(int(config.loss.get("repa_hidden", model_config.llm.hidden_size)),
                       model_config.vision.width, dtype, param_dtype)


def sample_t(rng, shape, config) -> jax.Array:
  """Flow times in (0, 1): logit-normal(t_mean, t_std) (default) or uniform."""
  kind = config.loss.get("t_sampling", "logit_normal")
  if kind == "logit_normal":
    n = jax.random.normal(rng, shape)
    return jax.nn.sigmoid(config.loss.get("t_mean", 0.0) + config.loss.get("t_std", 1.0) * n)
  if kind == "uniform":
    return jax.random.uniform(rng, shape, minval=1e-5, maxval=1.0 - 1e-5)
  raise ValueError(f"unknown config.loss.t_sampling {kind!r}; use logit_normal or uniform")


def _slot_positions(seq_mask, count):
  """Indices (B, count) of the first `count` True slots of each row, in order."""
  return jnp.argsort(~seq_mask, axis=1, stable=True)[:, :count]


def janusflow_forward(module, batch, z_t, t, tap_layer):
  """LLM pass with noisy latents in their slots (bound method of `janusflow.Model`).

  Args:
    z_t: (B, m, H, W, Z) noisy latents. t: (B, m) times in [0, 1].
  Returns:
    text logits (B, T, V), velocity (B, m, H, W, Z), tap (B, m, Q, D) or None (tap-layer
    states at the latent slots), encoder features (B, m, P, E) of flow_pixels or None.
  """
  b, m = t.shape
  tokens, t_emb, skip = module.gen_encode(z_t.reshape((b * m,) + z_t.shape[2:]),
                                          (t * 1000.0).reshape(-1))
  q = tokens.shape[1]
  img = jnp.concatenate([t_emb[:, None], tokens], axis=1).reshape(b, m, q + 1, -1)
  emb_mask = jnp.broadcast_to(batch["flow_image_mask"][..., None], (b, m, q + 1))
  embeds = _understanding_embeds(module, batch)
  embeds = janus.merge_embeddings(embeds, img, batch["flow_seq_mask"], emb_mask)
  out = _llm(module, embeds, batch, tap_layer=tap_layer)
  # The states *at* the latent slots (not shifted) drive the velocity, as in sampling.
  slots = _slot_positions(batch["flow_seq_mask"], m * (q + 1)).reshape(b, m, q + 1)[..., 1:]
  take = lambda h: jnp.take_along_axis(  # noqa: E731
      h, slots.reshape(b, m * q)[..., None], axis=1).reshape(b, m, q, h.shape[-1])
  v = module.gen_decode(take(out.hidden).reshape(b * m, q, -1), skip, t_emb)
  feats = None
  if "flow_pixels" in batch:
    px = batch["flow_pixels"]
    feats = module.vision_und_enc_model(px.reshape((b * m,) + px.shape[2:]))
    feats = jax.lax.stop_gradient(feats).reshape(b, m, feats.shape[1], feats.shape[2])
  tap = take(out.tap) if tap_layer is not None else None
  return module.text_logits(out.hidden), v.reshape(z_t.shape), tap, feats


def janusflow_terms_fn(model, config) -> Callable:
  """(params, batch, rng) -> loss sums: understanding/text CE, rectified flow, REPA."""
  use_repa = float(config.loss.get("repa_weight", 0.0)) > 0
  layer = int(config.loss.get("repa_layer", 0)) if use_repa else None
  proj = repa_projector(model.config, config, model.dtype, model.param_dtype)

  def terms(params, batch, rng):
    x = batch["flow_latents"].astype(jnp.float32)
    mask = batch["flow_image_mask"].astype(jnp.float32)
    r_t, r_z = jax.random.split(rng)
    t = sample_t(r_t, x.shape[:2], config)
    z0 = jax.random.normal(r_z, x.shape)
    tt = t[..., None, None, None]
    z_t = tt * x + (1.0 - tt) * z0
    model_params = {k: v for k, v in params.items() if k != REPA}
    logits, v, tap, feats = model.apply({"params": model_params}, batch, z_t, t, layer,
                                        method=janusflow_forward)
    out = ce_terms(logits, None, batch)
    mse = jnp.mean(jnp.square(v.astype(jnp.float32) - (x - z0)), axis=(2, 3, 4))  # (B, m)
    out["rf"] = jnp.sum(mse * mask)
    out["repa"] = jnp.zeros((), jnp.float32)
    if use_repa:
      if feats is None:
        raise ValueError("repa_weight > 0 needs flow_pixels in the batch")
      if feats.shape[2] != tap.shape[2]:
        raise ValueError(f"REPA needs as many latent tokens ({tap.shape[2]}) as encoder "
                         f"patches ({feats.shape[2]})")
      h = proj.apply({"params": params[REPA]}, tap).astype(jnp.float32)
      cos = jnp.sum(_unit(h) * _unit(feats.astype(jnp.float32)), axis=-1)  # (B, m, Q)
      out["repa"] = -jnp.sum(jnp.mean(cos, axis=-1) * mask)
    return out
  return terms


def _unit(x):
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), 1e-12))


# --- The step ----------------------------------------------------------------------------------


def bind_terms(model: nn.Module, family: str, config) -> Callable:
  """(params, batch, rng) -> loss sums, for `family` in {llm, janus, janusflow}."""
  if family == "janusflow":
    return janusflow_terms_fn(model, config)
  fn = {"llm": llm_terms, "janus": janus_terms}.get(family)
  if fn is None:
    raise ValueError(f"unknown model family {family!r}; use llm, janus or janusflow")
  return lambda params, batch, rng: model.apply({"params": params}, batch, method=fn)


def combine(terms: dict, norms: dict, config) -> jax.Array:
  """Scalar loss: token-mean CE, plus weighted per-image means of the flow and REPA losses."""
  loss = terms["ce"] / jnp.maximum(norms["tokens"], 1.0)
  if "rf" in terms:
    n = jnp.maximum(norms["flow_images"], 1.0)
    loss += config.loss.get("rf_weight", 1.0) * terms["rf"] / n
    loss += config.loss.get("repa_weight", 0.0) * terms["repa"] / n
  return loss


def _split_micro(batch, a: int):
  """(B, ...) -> (A, B/A, ...): row i goes to micro-batch i % A, which keeps every micro-batch
  spread over all data shards (no resharding)."""
  def one(x):
    if x.shape[0] % a:
      raise ValueError(f"batch of {x.shape[0]} rows not divisible by grad_accum_steps={a}")
    return jnp.moveaxis(x.reshape((x.shape[0] // a, a) + x.shape[1:]), 1, 0)
  return jax.tree_util.tree_map(one, batch)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, terms_fn: Callable,
               tx: optax.GradientTransformation, trainable, config):
  """One optimizer update on `batch` (pure; jit it with shardings and donate `state`).

  Args:
    terms_fn: from `bind_terms`. tx: from `optim.make`. trainable: bool tree like params.
    config: the run config (config.loss, config.optim.grad_accum_steps, config.ema_decay).
  Returns:
    (new state, metrics dict of float32 scalars).
  """
  norms = normalisers(batch)
  a = int(config.optim.get("grad_accum_steps", 1))

  def loss_fn(params, micro, r):
    terms = terms_fn(params, micro, r)
    return combine(terms, norms, config), terms

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if a == 1:
    (loss, terms), grads = grad_fn(state.params, batch, rng)
  else:
    def body(carry, xs):
      micro, i = xs
      (l, t), g = grad_fn(state.params, micro, jax.random.fold_in(rng, i))
      return jax.tree_util.tree_map(jnp.add, carry, (l, t, g)), None
    micros = _split_micro(batch, a)
    shapes = jax.eval_shape(grad_fn, state.params, jax.tree_util.tree_map(lambda x: x[0], micros),
                            rng)
    init = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, jnp.float32),
                                  (shapes[0][0], shapes[0][1], shapes[1]))
    (loss, terms, grads), _ = jax.lax.scan(body, init, (micros, jnp.arange(a)))

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    ema = optim.ema_update(ema, params, float(config.ema_decay))

  keep = lambda tree: [x for x, m in zip(jax.tree_util.tree_leaves(tree),  # noqa: E731
                                         jax.tree_util.tree_leaves(trainable)) if m]
  metrics = {"loss": loss,
             "grad_norm": optim.tree_norm(keep(grads)),
             "param_norm": optim.tree_norm(params),
             "update_norm": optim.tree_norm(keep(updates))}
  for name in KIND_NAMES.values():
    metrics[f"loss_{name}"] = terms[f"ce_{name}"] / jnp.maximum(norms[f"tokens_{name}"], 1.0)
    metrics[f"tokens_{name}"] = norms[f"tokens_{name}"]
  if "rf" in terms:
    metrics["loss_rf"] = terms["rf"] / jnp.maximum(norms["flow_images"], 1.0)
    metrics["loss_repa"] = terms["repa"] / jnp.maximum(norms["flow_images"], 1.0)
  metrics["real_tokens"] = jnp.sum((batch["segment_ids"] > 0).astype(jnp.float32))
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
  return new, metrics


# --- Synthetic batches: the format above, by example (tests, benchmarks, the tiny config) -----


class SyntheticData:
  """A deterministic, resumable iterator of packed random batches in the pipeline's format.

  Batch i depends only on (seed, i), so the iterator state is {"index": i}; with `fixed=True`
  every batch is batch 0 (overfitting tests). `rows` selects this process's rows of the global
  batch, so any process count sees the same global data. Special ids are the tiny vocabularies'
  (bos 1, pad 3, image 4, boi 5); text ids are drawn from [10, vocab).

  kinds: any of "und", "text", "gen" (Janus codes) and "flow" (JanusFlow latents), one packed
  sample of each per row, in that order.
  """

  BOS, PAD, IMAGE, BOI = 1, 3, 4, 5

  def __init__(self, *, batch_size: int, seq_len: int, vocab: int, kinds: Sequence[str] = ("text",),
               seed: int = 0, fixed: bool = False, image_size: int = 0, und_tokens: int = 0,
               gen_tokens: int = 0, code_vocab: int = 0, latent_shape=(),
               rows: slice | None = None):
    self.b, self.t, self.vocab, self.kinds = batch_size, seq_len, vocab, tuple(kinds)
    self.seed, self.fixed, self.index = seed, fixed, 0
    self.image_size, self.und_tokens = image_size, und_tokens
    self.gen_tokens, self.code_vocab, self.latent_shape = gen_tokens, code_vocab, latent_shape
    self.rows = rows or slice(0, batch_size)
    unknown = set(self.kinds) - {"und", "text", "gen", "flow"}
    if unknown:
      raise ValueError(f"unknown sample kinds {sorted(unknown)}; use und, text, gen, flow")

  def get_state(self) -> dict:
    return {"index": self.index}

  def set_state(self, state: dict):
    self.index = int(state["index"])

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    i = 0 if self.fixed else self.index
    self.index += 1
    return {k: v[self.rows] for k, v in self.batch(i).items()}

  def batch(self, i: int) -> dict:
    """The global batch number i (numpy)."""
    rng = np.random.default_rng((self.seed, i))
    rows = [self._row(rng) for _ in range(self.b)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  def _row(self, rng) -> dict:
    t, s = self.t, self.image_size
    z = lambda dt=np.int32: np.zeros((t,), dt)  # noqa: E731
    r = dict(input_ids=np.full((t,), self.PAD, np.int32), positions=z(), segment_ids=z(),
             targets=z(), text_loss=z(bool), kinds=np.full((t,), -1, np.int32))
    if "gen" in self.kinds:
      r.update(image_loss=z(bool), image_codes=z(), gen_mask=z(bool))
    if "und" in self.kinds:
      r.update(images_seq_mask=z(bool),
               pixel_values=rng.standard_normal((1, s, s, 3)).astype(np.float32),
               images_emb_mask=np.ones((1, self.und_tokens), bool))
    if "flow" in self.kinds:
      q = self.gen_tokens
      r.update(flow_seq_mask=z(bool), flow_image_mask=np.ones((1,), bool),
               flow_latents=rng.standard_normal((1,) + tuple(self.latent_shape)).astype(
                   np.float32),
               flow_pixels=rng.standard_normal((1, s, s, 3)).astype(np.float32))
    text = lambda n: list(rng.integers(10, self.vocab, n))  # noqa: E731
    at = 0
    for seg, kind in enumerate(self.kinds, start=1):
      codes, slots = None, None
      if kind == "und":
        q_toks, ans = text(2), text(5)
        toks = [self.BOS] + q_toks + [self.IMAGE] * self.und_tokens + ans
        first_loss, slots = len(toks) - len(ans) - 1, (3, 3 + self.und_tokens)
      elif kind == "text":
        toks, first_loss = [self.BOS] + text(11), 0
      elif kind == "gen":
        cap = text(3)
        codes = list(rng.integers(0, self.code_vocab, self.gen_tokens))
        toks = [self.BOS] + cap + [self.BOI] + [self.PAD] * self.gen_tokens
        first_loss = len(cap) + 1  # <begin_of_image> predicts code 0
      else:  # flow: [BOS caption][t_emb][Q latent tokens], no token loss
        toks = [self.BOS] + text(3) + [self.PAD] * (1 + self.gen_tokens)
        first_loss, slots = len(toks), (4, len(toks))
      n = len(toks)
      if at + n > t:
        raise ValueError(f"seq_len {t} too short to pack kinds {self.kinds}")
      r["input_ids"][at:at + n] = toks
      r["positions"][at:at + n] = np.arange(n)
      r["segment_ids"][at:at + n] = seg
      r["kinds"][at:at + n] = {"und": 0, "text": 1, "gen": 2, "flow": 2}[kind]
      nxt = toks[1:] if codes is None else toks[1:first_loss + 1] + codes
      r["targets"][at:at + n - 1] = nxt[: n - 1]
      r["image_loss" if codes is not None else "text_loss"][at + first_loss:at + n - 1] = True
      if kind == "und":
        r["images_seq_mask"][at + slots[0]:at + slots[1]] = True
      if kind == "flow":
        r["flow_seq_mask"][at + slots[0]:at + slots[1]] = True
      if codes is not None:
        img = slice(at + first_loss + 1, at + n)
        r["image_codes"][img], r["gen_mask"][img] = codes, True
      at += n
    return r
