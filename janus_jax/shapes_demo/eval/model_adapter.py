"""ShapesEval adapter for a Janus model: prompts -> images and (image, question) -> answer.

Wires `shapes_demo.eval.shapes` to the samplers (`janus_jax.sampling.image_ar` for text-to-image
with classifier-free guidance, `janus_jax.sampling.text` for answers) and the chat template of
`janus_jax.data.chat`. Images for questions arrive as uint8 renders at the world's size and are
resized/normalised to the model's understanding resolution by `janus_jax.data.preprocess`.
"""

from typing import Callable, Sequence

import jax
import numpy as np
from PIL import Image

from janus_jax.data import chat
from janus_jax.data import preprocess
from janus_jax.data import tokenizer as tokenizer_lib
from janus_jax.models import janus
from janus_jax.sampling import image_ar
from janus_jax.sampling import loading
from janus_jax.sampling import samplers
from janus_jax.sampling import text as text_sampling
from janus_jax.shapes_demo import vq_training


class ModelAdapter:
  """Evaluates one Janus model (params already loaded) with its tokenizer.

  family: chat template ("janus_pro" uses `<|User|>`/`<|Assistant|>` role tokens).
  cfg_weight: guidance weight (None: no guidance). temperature: image-token sampling (0 greedy).
  max_new_tokens: answers are one or two words, so a few tokens suffice.
  system_prompt: of understanding prompts; `load` takes the checkpoint's (see
    `chat.checkpoint_system_prompt`).
  image_size: side of generated images (None: the model's own, `image_ar.image_size`; `load`
    takes the checkpoint's config.json "image_size" when it has one); sets the number of image
    tokens drawn.
  """

  def __init__(self, model: janus.Model, params, tok: tokenizer_lib.Tokenizer, *,
               family: str = "janus_pro", cfg_weight: float | None = 5.0,
               temperature: float = 1.0, max_new_tokens: int = 8, image_size: int | None = None,
               seed: int = 0, system_prompt: str = chat.SYSTEM_PROMPT):
    self.model, self.params, self.tok = model, params, tok
    self.family = family
    self.system_prompt = system_prompt
    self.cfg_weight = cfg_weight
    self.temperature = temperature
    self.sampler = samplers.make(temperature)  # 0: greedy
    self.max_new_tokens = max_new_tokens
    self.image_size = image_size or image_ar.image_size(model)
    self.num_tokens = image_ar.image_tokens(model, self.image_size)
    self._rng = jax.random.key(seed)
    self._calls = 0

  def _next_rng(self):
    self._calls += 1
    return jax.random.fold_in(self._rng, self._calls)

  def generate_images(self, prompts: Sequence[str]) -> np.ndarray:
    ids = [[int(x) for x in self.tok.encode(chat.t2i_prompt(self.family, p))] for p in prompts]
    res = image_ar.generate(self.model, self.params, ids, num_images=1,
                            cfg_weight=self.cfg_weight, sampler=self.sampler,
                            rng=self._next_rng(), pad_id=self.tok.special.pad,
                            num_tokens=self.num_tokens)
    return np.asarray(res.images)

  def answer(self, images: np.ndarray, questions: Sequence[str]) -> list[str]:
    cfg = self.model.config
    pre = preprocess.UnderstandingConfig(image_size=cfg.vision.image_size)
    convs = []
    for image, question in zip(images, questions):
      toks = chat.tokenize(self.tok, chat.understanding_prompt(self.family, question,
                                                                 system=self.system_prompt),
                           image_tokens=cfg.image_tokens, family=self.family)
      pixels = preprocess.understanding_pixels(Image.fromarray(np.asarray(image)), pre)
      convs.append(([int(x) for x in toks.input_ids], [pixels]))
    sp = self.tok.special
    batch = text_sampling.make_batch(convs, image_id=sp.image, pad_id=sp.pad,
                                     tokens_per_image=cfg.image_tokens)
    ans = text_sampling.generate(self.model, self.params, batch,
                                 max_new_tokens=self.max_new_tokens, sampler=samplers.Greedy(),
                                 rng=self._next_rng(), eos_id=sp.eos, pad_id=sp.pad,
                                 detokenize=self.tok.decode)
    return list(ans.texts)


FROM_CHECKPOINT = "checkpoint"  # `load(cfg_weight=..., temperature=...)`: the checkpoint's own


def vq_round_trip(path: str) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
  """(images uint8 (B, S, S, 3) -> their reconstructions through the VQ of the checkpoint at
  `path`, S): S is the checkpoint's image size (config.json "image_size"; else 384)."""
  loaded = _load_janus(path)
  vq_params = loaded.params["gen_vision_model"]
  return (lambda images: vq_training.reconstruct(loaded.model.config.vq, vq_params,
                                                 np.asarray(images)),
          int(loaded.meta.get("image_size") or 384))


def _load_janus(path: str) -> loading.Loaded:
  """A Janus checkpoint as `sample.py` loads it (float32, laid out for decoding)."""
  return loading.load(path, dtype="float32", families=("janus", "janus_hf"))


def load(path: str, **kw) -> ModelAdapter:
  """An adapter for a converted checkpoint directory (`config.json` + `params/`, as written by
  `convert_torch.py`) holding a Janus model and its `tokenizer.json`. The system prompt and,
  unless given (or given as `FROM_CHECKPOINT`), the guidance weight and image-token temperature
  come from its config.json, and so does `image_size` unless given; other keywords go to
  `ModelAdapter`."""
  loaded = _load_janus(path)
  meta = loaded.meta
  kw.setdefault("system_prompt", chat.checkpoint_system_prompt(meta))
  if meta.get("image_size"):  # a checkpoint trained at one size (the demo's) says so
    kw.setdefault("image_size", int(meta["image_size"]))
  if kw.get("cfg_weight", FROM_CHECKPOINT) == FROM_CHECKPOINT:
    kw["cfg_weight"] = image_ar.checkpoint_cfg_weight(meta)
  if kw.get("temperature", FROM_CHECKPOINT) == FROM_CHECKPOINT:
    kw["temperature"] = image_ar.checkpoint_temperature(meta)
  return ModelAdapter(loaded.model, loaded.params, loading.load_tokenizer(path, meta), **kw)
