"""Pure training steps: `train_step(state, batch, rng) -> (state, metrics)` for every family.

Letters: B batch rows, T packed length, n understanding images per row, m generation images per
row, P image tokens per image, V text vocab, G image-code vocab, A accumulation steps.

Batch format (numpy or jax arrays; what `janus_jax.data` pipelines yield, and what
`synthetic.py`-style test batches imitate). Several samples are packed per row:

  input_ids     (B, T) int32  text token ids (image slots hold the placeholder id).
  positions     (B, T) int32  RoPE positions, restarting at 0 in every segment.
  segment_ids   (B, T) int32  1, 2, ... per packed sample; 0 = padding (never attended, no loss).
  targets       (B, T) int32  what the prediction *at* t must be: the next text id, or for
                              generation samples the next image code (the hidden state at
                              <begin_of_image> predicts code 0, at code k predicts code k+1).
  loss_mask     (B, T) float  1 where the prediction at t is trained (answers of understanding
                              samples, every text token, the P codes of generation samples).
  kind          (B, T) int32  sample kind of each token: 0 pad, 1 understanding, 2 text, 3 gen.
  cfg_mask      (B, T) bool   caption tokens that classifier-free-guidance dropout may replace by
                              the pad id (optional; BOS and <begin_of_image> are never in it).
 Janus generation (optional):
  image_codes   (B, T) int32  the VQ code at generation image positions.
  gen_mask      (B, T) bool   positions whose input is `embed_image_codes(code)`.
 Understanding images (optional, Janus and JanusFlow):
  pixel_values  (B, n, S, S, 3) float32 normalised; images_seq_mask (B, T) bool;
  images_emb_mask (B, n, P) bool.
 JanusFlow generation (see `janusflow_loss`):
  latents (B, m, h, w, c) VAE latents (already times the VAE scaling factor),
  latent_mask (B, m) bool, gen_seq_mask (B, T) bool (the 1 + P slots per image: t_emb then
  the latent tokens), clean_pixels (B, m, S, S, 3) normalised for the understanding encoder.

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

from janus_jax import optim

KIND_NAMES = {1: "und", 2: "text", 3: "gen"}
GEN = 3


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


def drop_captions(input_ids, segment_ids, cfg_mask, rng, prob: float, pad_id: int):
  """Classifier-free-guidance dropout: replaces a whole sample's caption by pad with prob `prob`.

  Args:
    input_ids, segment_ids: (B, T) int. cfg_mask: (B, T) bool.
  Returns:
    (B, T) ids.
  """
  b, t = input_ids.shape
  drop_segment = jax.random.uniform(rng, (b, t + 1)) < prob  # one draw per (row, segment id)
  drop = jnp.take_along_axis(drop_segment, segment_ids, axis=1) & cfg_mask.astype(bool)
  return jnp.where(drop, pad_id, input_ids)


def token_ce(logits, targets):
  """Float32 cross-entropy per token. logits (B, T, V) any dtype, targets (B, T) -> (B, T)."""
  targets = jnp.clip(targets, 0, logits.shape[-1] - 1)
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def normalisers(batch) -> dict:
  """Counts on the full batch that turn loss sums into means (float32 scalars)."""
  mask = batch["loss_mask"].astype(jnp.float32)
  out = {"tokens": jnp.sum(mask)}
  for k, name in KIND_NAMES.items():
    out[f"tokens_{name}"] = jnp.sum(mask * (batch["kind"] == k))
  if "latent_mask" in batch:
    out["latents"] = jnp.sum(batch["latent_mask"].astype(jnp.float32))
  return out


def ce_terms(text_logits, gen_logits, batch) -> dict:
  """Per-kind sums of the next-token CE: text/understanding through lm_head, gen via gen_head."""
  mask = batch["loss_mask"].astype(jnp.float32)
  ce = token_ce(text_logits, batch["targets"])
  if gen_logits is not None:
    ce = jnp.where(batch["kind"] == GEN, token_ce(gen_logits, batch["targets"]), ce)
  out = {"ce": jnp.sum(ce * mask)}
  for k, name in KIND_NAMES.items():
    out[f"ce_{name}"] = jnp.sum(ce * mask * (batch["kind"] == k))
  return out


def _janus_hidden(module, batch):
  """Input embeddings (text, understanding images, image codes) -> final hidden (B, T, D)."""
  ids = batch["input_ids"]
  if "pixel_values" in batch:
    embeds = module.prepare_inputs_embeds(ids, batch["pixel_values"], batch["images_seq_mask"],
                                          batch["images_emb_mask"])
  else:
    embeds = module.embed_text(ids)
  if "image_codes" in batch:
    codes = module.embed_image_codes(batch["image_codes"]).astype(embeds.dtype)
    embeds = jnp.where(batch["gen_mask"][..., None], codes, embeds)
  seg = batch["segment_ids"]
  return module.llm(embeds, batch["positions"], attn_mask=seg > 0, segment_ids=seg).hidden


def janus_terms(module, batch, rng, config) -> dict:
  """Loss sums for Janus / Janus-Pro (call through `model.apply(..., method=janus_terms)`)."""
  del rng
  hidden = _janus_hidden(module, batch)
  gen_logits = module.gen_logits(hidden) if "image_codes" in batch else None
  return ce_terms(module.text_logits(hidden), gen_logits, batch)


def llm_terms(module, batch, rng, config) -> dict:
  """Loss sums for text-only training of the bare LLM (`llama.Model`)."""
  del rng, config
  seg = batch["segment_ids"]
  hidden = module(module.embed(batch["input_ids"]), batch["positions"], attn_mask=seg > 0,
                  segment_ids=seg).hidden
  return ce_terms(module.logits(hidden), None, batch)


def combine(terms: dict, norms: dict, config) -> jax.Array:
  """Scalar loss from summed terms: token-mean CE (+ weighted flow and REPA means)."""
  loss = terms["ce"] / jnp.maximum(norms["tokens"], 1.0)
  if "rf" in terms:
    n = jnp.maximum(norms["latents"], 1.0)
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
    terms_fn: (params, batch, rng) -> dict of loss sums (a bound `model.apply`).
    tx: from `optim.make`. trainable: bool tree like params (for the grad norm metric).
    config: the run config (uses config.loss, config.optim.grad_accum_steps, config.ema_decay).
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
    zero_terms = jax.eval_shape(lambda: loss_fn(state.params, _first(batch, a), rng)[1])
    init = jax.tree_util.tree_map(
        lambda x: jnp.zeros(x.shape, jnp.float32),
        (jax.ShapeDtypeStruct((), jnp.float32), zero_terms, state.params))
    (loss, terms, grads), _ = jax.lax.scan(body, init, (_split_micro(batch, a), jnp.arange(a)))

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    ema = optim.ema_update(ema, params, float(config.ema_decay))

  keep = lambda tree: jax.tree_util.tree_map(  # noqa: E731
      lambda x, m: x if m else jnp.zeros((), x.dtype), tree, trainable)
  metrics = {"loss": loss,
             "grad_norm": optim.tree_norm(keep(grads)),
             "param_norm": optim.tree_norm(params),
             "update_norm": optim.tree_norm(keep(updates))}
  for name in KIND_NAMES.values():
    metrics[f"loss_{name}"] = terms[f"ce_{name}"] / jnp.maximum(norms[f"tokens_{name}"], 1.0)
    metrics[f"tokens_{name}"] = norms[f"tokens_{name}"]
  if "rf" in terms:
    metrics["loss_rf"] = terms["rf"] / jnp.maximum(norms["latents"], 1.0)
    metrics["loss_repa"] = terms["repa"] / jnp.maximum(norms["latents"], 1.0)
  metrics["real_tokens"] = jnp.sum((batch["segment_ids"] > 0).astype(jnp.float32))
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
  return new, metrics


def _first(batch, a):
  """The first micro-batch's shapes (for eval_shape)."""
  return jax.tree_util.tree_map(lambda x: x[: x.shape[0] // a], batch)


def bind_terms(model: nn.Module, family: str, config, extra_apply=None) -> Callable:
  """(params, batch, rng) -> loss sums, for `family` in {llm, janus, janusflow}."""
  if family == "janusflow":
    from janus_jax import flow_loss  # pylint: disable=g-import-not-at-top
    return flow_loss.bind(model, config)
  fn = {"llm": llm_terms, "janus": janus_terms}.get(family)
  if fn is None:
    raise ValueError(f"unknown model family {family!r}; use llm, janus or janusflow")
  pad_id = int(config.model.get("pad_id", 0))
  drop = float(config.loss.get("cfg_drop_prob", 0.0))

  def terms(params, batch, rng):
    if drop > 0 and "cfg_mask" in batch:
      batch = dict(batch, input_ids=drop_captions(
          batch["input_ids"], batch["segment_ids"], batch["cfg_mask"], rng, drop, pad_id))
    return model.apply({"params": params}, batch, rng, config, method=fn)
  return terms


# ---------------------------------------------------------------------------------------------
# Synthetic batches: the format above, by example (tests, benchmarks and the tiny config).
# ---------------------------------------------------------------------------------------------


class SyntheticData:
  """A deterministic, resumable iterator of packed random batches.

  Batch i depends only on (seed, i), so the iterator state is just {"index": i}; with
  `fixed=True` every batch is batch 0 (overfitting tests). Each process gets its own rows of the
  global batch (`sharding.local_rows`), so any process count sees the same global data.

  Special ids are the tiny vocabularies' (bos 1, pad 3, image 4, boi 5); text ids are drawn from
  [10, vocab).
  """

  BOS, PAD, IMAGE, BOI = 1, 3, 4, 5

  def __init__(self, *, batch_size: int, seq_len: int, vocab: int, kinds: Sequence[str] = ("text",),
               seed: int = 0, fixed: bool = False, image_size: int = 0, und_tokens: int = 0,
               gen_tokens: int = 0, code_vocab: int = 0, rows: slice | None = None):
    self.b, self.t, self.vocab, self.kinds = batch_size, seq_len, vocab, tuple(kinds)
    self.seed, self.fixed, self.index = seed, fixed, 0
    self.image_size, self.und_tokens = image_size, und_tokens
    self.gen_tokens, self.code_vocab = gen_tokens, code_vocab
    self.rows = rows or slice(0, batch_size)
    unknown = set(self.kinds) - set(KIND_NAMES.values())
    if unknown:
      raise ValueError(f"unknown sample kinds {sorted(unknown)}; use und, text, gen")

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
    t = self.t
    z = lambda dt=np.int32: np.zeros((t,), dt)  # noqa: E731
    r = dict(input_ids=np.full((t,), self.PAD, np.int32), positions=z(), segment_ids=z(),
             targets=z(), loss_mask=z(np.float32), kind=z(), cfg_mask=z(bool))
    if "gen" in self.kinds:
      r.update(image_codes=z(), gen_mask=z(bool))
    if "und" in self.kinds:
      r.update(images_seq_mask=z(bool),
               pixel_values=rng.standard_normal(
                   (1, self.image_size, self.image_size, 3)).astype(np.float32),
               images_emb_mask=np.zeros((1, self.und_tokens), bool))
    text = lambda n: list(rng.integers(10, self.vocab, n))  # noqa: E731
    at = 0
    for seg, kind in enumerate(self.kinds, start=1):
      codes = None
      if kind == "und":
        q, ans = text(2), text(5)
        toks = [self.BOS] + q + [self.IMAGE] * self.und_tokens + ans
        first_loss = len(toks) - len(ans) - 1  # predictions of the answer tokens
      elif kind == "text":
        toks, first_loss = [self.BOS] + text(11), 0
      else:
        cap = text(3)
        codes = list(rng.integers(0, self.code_vocab, self.gen_tokens))
        toks = [self.BOS] + cap + [self.BOI] + [self.PAD] * self.gen_tokens
        first_loss = len(cap) + 1  # the <begin_of_image> position predicts code 0
      n = len(toks)
      if at + n > t:
        raise ValueError(f"seq_len {t} too short to pack kinds {self.kinds}")
      sl = slice(at, at + n)
      r["input_ids"][sl] = toks
      r["positions"][sl] = np.arange(n)
      r["segment_ids"][sl] = seg
      r["kind"][sl] = {v: k for k, v in KIND_NAMES.items()}[kind]
      nxt = toks[1:] if codes is None else toks[1:first_loss + 1] + codes
      r["targets"][at:at + n - 1] = nxt[: n - 1]
      r["loss_mask"][at + first_loss:at + n - 1] = 1.0
      if kind == "und":
        r["images_seq_mask"][at + 3:at + 3 + self.und_tokens] = True
        r["images_emb_mask"][0] = True
      if codes is not None:
        img = slice(at + first_loss + 1, at + n)
        r["image_codes"][img], r["gen_mask"][img] = codes, True
        r["cfg_mask"][at + 1:at + first_loss] = True
      at += n
    return r
