"""Multimodal understanding: batched chat decoding with images (all Janus variants' text path).

Letters: B conversations, T padded prompt length, n max images per conversation, P image tokens
per image, S image side, D LLM width, V text vocabulary, N max new tokens.

The reference calls HF `generate` on one conversation. Here conversations of different lengths
and with different numbers of images share one batch: prompts are left-padded (pads masked out,
positions = cumsum(mask) - 1 as HF derives them from the attention mask), absent images are
zero pixels masked out by `images_emb_mask`, the prompt is prefilled into a static KV cache, and
decoding is one jitted `lax.while_loop` that stops when every row has produced EOS or N tokens.
A finished row keeps running (the batch shape is static) but its outputs are replaced by pad.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from janus_jax import errors
from janus_jax.models import llama
from janus_jax.sampling import decode_layout
from janus_jax.sampling import image_ar
from janus_jax.sampling import samplers


@dataclasses.dataclass(frozen=True)
class ChatBatch:
  """Host-side model inputs for B conversations.

  input_ids: (B, T) int32 left-padded with pad. attention_mask: (B, T) bool.
  pixel_values: (B, n, S, S, 3) float32 normalised, zeros where a conversation has fewer images.
  images_seq_mask: (B, T) bool image-token slots. images_emb_mask: (B, n, P) bool real images.
  """

  input_ids: np.ndarray
  attention_mask: np.ndarray
  pixel_values: np.ndarray
  images_seq_mask: np.ndarray
  images_emb_mask: np.ndarray


def expand_image_tokens(ids, image_id: int, begin_id: int, end_id: int,
                        tokens_per_image: int) -> list[int]:
  """Replaces each single `<image_placeholder>` id by `<begin_of_image>`, P placeholders,
  `<end_of_image>` (the reference processor's insertion)."""
  out = []
  for t in ids:
    if t == image_id:
      out += [begin_id] + [image_id] * tokens_per_image + [end_id]
    else:
      out.append(int(t))
  return out


def make_batch(conversations, *, image_id: int, pad_id: int, tokens_per_image: int,
               image_shape=None, seq_extra_ids=(), length_multiple: int = 1) -> ChatBatch:
  """Left-pads B conversations into one batch.

  Args:
    conversations: list of (ids, images): ids already expanded (`expand_image_tokens`), images
      a list of (S, S, 3) float32 normalised arrays, one per image in order.
    image_id: the `<image_placeholder>` id; its slots take image embeddings.
    pad_id: the `<｜▁pad▁｜>` id.
    tokens_per_image: P.
    image_shape: (S, S, 3) used for zero images when no conversation has one.
    seq_extra_ids: more ids that are image slots (JanusFlow also uses `<begin_of_image>`).
    length_multiple: pad T up to a multiple of this (fewer compiled shapes; pads are masked).
  """
  if not conversations:
    raise errors.InputError("no conversations given")
  for i, (ids, images) in enumerate(conversations):
    if len(ids) == 0:
      raise errors.InputError(f"conversation {i} is empty (no tokens)")
    slots = int(np.isin(np.asarray(ids), (image_id,) + tuple(seq_extra_ids)).sum())
    if slots != len(images) * tokens_per_image:
      raise errors.InputError(f"conversation {i} has {slots} image slots but {len(images)} "
                              f"images of {tokens_per_image} tokens")
  b = len(conversations)
  t = -(-max(len(ids) for ids, _ in conversations) // length_multiple) * length_multiple
  n = max(1, max(len(images) for _, images in conversations))
  shapes = {np.shape(im) for _, images in conversations for im in images}
  if len(shapes) > 1:
    raise errors.InputError(f"images in one batch must share a shape, got {sorted(shapes)}")
  shape = shapes.pop() if shapes else tuple(image_shape or (1, 1, 3))
  input_ids = np.full((b, t), pad_id, np.int32)
  mask = np.zeros((b, t), bool)
  pixels = np.zeros((b, n) + shape, np.float32)
  emb_mask = np.zeros((b, n, tokens_per_image), bool)
  for i, (ids, images) in enumerate(conversations):
    input_ids[i, t - len(ids):] = ids
    mask[i, t - len(ids):] = True
    for j, im in enumerate(images):
      pixels[i, j] = im
      emb_mask[i, j] = True
  seq_mask = np.isin(input_ids, (image_id,) + tuple(seq_extra_ids)) & mask
  return ChatBatch(input_ids, mask, pixels, seq_mask, emb_mask)


@image_ar.decode_jit(static_argnames=("model", "sampler", "max_new_tokens", "return_logits",
                                     "segments"))
def decode(model, params, input_ids, attention_mask, pixel_values, images_seq_mask,
           images_emb_mask, rng, eos_id, pad_id, *, sampler, max_new_tokens: int,
           return_logits: bool = False, segments: int = 4):
  """Prefills the prompts and decodes until every row hit EOS or N tokens.

  Args:
    model: a `janus.Model` (static); params: its parameters.
    input_ids .. images_emb_mask: a `ChatBatch`'s arrays.
    rng: PRNG key; step i draws with `fold_in(rng, i)`.
    eos_id: int scalar stop token (-1: never stop early). pad_id: fills rows after EOS.
    sampler: a `samplers` dataclass (static). max_new_tokens: N (static).
    return_logits: also return each step's logits (B, N, V) float32.
    segments: the steps run as up to this many loops over a growing cache
      (`llama.segment_capacities`).
  Returns:
    tokens (B, N) int32 (pad after EOS), num_tokens (B,) int32 (including EOS), logits or None.
  """
  if max_new_tokens < 1:
    raise errors.InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  params = decode_layout.decode_layout(params, dtype=model.dtype)  # once, before the loops
  b, t = input_ids.shape
  call = functools.partial(image_ar.call, model, params)
  embeds = call("prepare_inputs_embeds", input_ids, pixel_values, images_seq_mask,
                images_emb_mask)
  mask = attention_mask.astype(bool)
  positions = jnp.where(mask, jnp.cumsum(mask, axis=1) - 1, 1).astype(jnp.int32)
  # Step i writes slot t + i; the loop runs in `segments` stages over a growing cache, each
  # while no more than the stage's steps are done and some row has not stopped.
  sizes = llama.segment_capacities(t, t + max_new_tokens, segments)
  cache = llama.init_cache(model.config.llm, b, sizes[0], model.dtype)
  out = call("llm", embeds, positions, attn_mask=mask, cache=cache)
  next_pos = positions[:, -1:] + 1
  vocab = model.config.llm.vocab_size
  ones = jnp.ones((b, 1), bool)

  def body(state):
    i, cache, hidden, tokens, done, logits_out = state
    logits = call("text_logits", hidden)[:, 0].astype(jnp.float32)  # (B, V)
    tok = sampler.get_next_tokens(logits, jax.random.fold_in(rng, i))
    tok = jnp.where(done, pad_id, tok)
    tokens = tokens.at[:, i].set(tok)
    if return_logits:
      logits_out = logits_out.at[:, i].set(logits)
    done = done | (tok == eos_id)
    out = call("llm", call("embed_text", tok[:, None]), next_pos + i, attn_mask=ones,
               cache=cache)
    return i + 1, out.cache, out.hidden, tokens, done, logits_out

  tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
  logits_out = jnp.zeros((b, max_new_tokens, vocab), jnp.float32) if return_logits else None
  state = (jnp.int32(0), out.cache, out.hidden[:, -1:], tokens, jnp.zeros((b,), bool),
           logits_out)
  for size in sizes:
    state = (state[0], llama.grow_cache(state[1], size)) + state[2:]
    state = jax.lax.while_loop(
        lambda s, end=size - t: (s[0] < end) & ~jnp.all(s[4]), body, state)
  tokens, logits_out = state[3], state[5]
  is_eos = tokens == eos_id
  first_eos = jnp.argmax(is_eos, axis=1)
  num = jnp.where(is_eos.any(axis=1), first_eos + 1, max_new_tokens).astype(jnp.int32)
  return tokens, num, logits_out


@dataclasses.dataclass
class Answer:
  """tokens: (B, N) int32; num_tokens: (B,) generated per row (incl. EOS); texts: decoded."""

  tokens: np.ndarray
  num_tokens: np.ndarray
  texts: list[str] | None


def generate(model, params, batch: ChatBatch, *, max_new_tokens: int = 512,
             sampler=samplers.Greedy(), rng=None, eos_id: int, pad_id: int,
             detokenize=None, mesh=None) -> Answer:
  """Answers a batch of conversations.

  Args:
    model, params: a `janus.Model` (or JanusFlow model with the same methods) and parameters.
    batch: from `make_batch`.
    max_new_tokens: N, the per-row budget.
    sampler: `samplers.Greedy()` (the README default) or `samplers.Sampling(...)`.
    rng: PRNG key (default key 0).
    eos_id, pad_id: from the tokenizer, by name.
    detokenize: optional `list[int] -> str`; applied to each row's tokens before EOS.
    mesh: when given, rows are split over its batch axes (see `image_ar.generate`).
  """
  context = model.config.llm.max_position_embeddings
  longest = int(batch.attention_mask.sum(axis=1).max())
  if longest + max_new_tokens > context:
    raise errors.InputError(f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} "
                            f"exceeds the model context of {context} tokens")
  rng = jax.random.key(0) if rng is None else rng
  arrays = image_ar.put_rows(mesh, batch.input_ids, batch.attention_mask, batch.pixel_values,
                             batch.images_seq_mask, batch.images_emb_mask)
  tokens, num, _ = decode(model, params, *arrays, rng,
                          jnp.int32(eos_id), jnp.int32(pad_id), sampler=sampler,
                          max_new_tokens=max_new_tokens)
  tokens, num = np.asarray(tokens), np.asarray(num)
  texts = None
  if detokenize is not None:
    texts = [detokenize([int(x) for x in row[:k] if x != eos_id]) for row, k in zip(tokens, num)]
  return Answer(tokens, num, texts)
