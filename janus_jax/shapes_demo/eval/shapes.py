"""ShapesEval: GenEval-style generation scores and understanding accuracy on the shapes world.

    python -m janus_jax.shapes_demo.eval --oracle               # renderer + ground truth: ~1.0
    python -m janus_jax.shapes_demo.eval --oracle --degrade     # same, images blurred and noised
    python -m janus_jax.shapes_demo.eval --oracle --through_vq  # same, through a checkpoint's VQ
    python -m janus_jax.shapes_demo.eval --checkpoint DIR       # a converted Janus checkpoint

Every prompt and question comes from the test split of `janus_jax.shapes_demo.world.world`, whose
scenes are held-out compositions (never seen in training; see `world`). Prompts are written by
the training captioner (`text.describe`), so they are in the training grammar.

Generation categories (one image per prompt by default; each image scored by the analyser):
  single_object       "a circle"                          >= 1 circle
  two_objects         "a circle and a square"             >= 1 of each (different shapes)
  counting            "three red squares"                 exactly 3 red squares
  colours             "a red circle"                      >= 1 red circle
  position            "a red circle above a blue square"  both, and the relation holds between
                                                          their centres by > 1/10 image side
  colour_attribution  "a red circle and a blue square"    both (colours differ)
`gen_overall` is the mean of the category accuracies (GenEval's convention); `und_accuracy` is
exact match of normalised answers (`text.normalise_answer`) to one question per test scene.
The report also breaks `und_accuracy` down by question kind (`text.QUESTION_KINDS`), for
diagnosis only.

The model is reached through an adapter with two methods, so anything can be evaluated:
  generate_images(prompts: list[str]) -> uint8 (B, S, S, 3)      (any S; the analyser scales)
  answer(images: uint8 (B, S, S, 3), questions: list[str]) -> list[str]
`OracleAdapter` proves the evaluation end to end without a model; `model_adapter` wires a Janus
checkpoint through `janus_jax.sampling`.
"""

import argparse
import dataclasses
import hashlib
from typing import Callable, Protocol, Sequence

import numpy as np

from janus_jax.shapes_demo.eval import analyser
from janus_jax.shapes_demo.world import text
from janus_jax.shapes_demo.world import world

CATEGORIES = ("single_object", "two_objects", "counting", "colours", "position",
              "colour_attribution")
RELATION_MARGIN = 0.1  # of the image side, between the two centres


@dataclasses.dataclass(frozen=True)
class Need:
  """Objects an image must contain: `shape`, of `colour` unless None; exactly `count` if set."""
  shape: str
  colour: str | None = None
  count: int | None = None


@dataclasses.dataclass(frozen=True)
class GenItem:
  """A generation prompt, what it requires, and the held-out scene it was written from.

  relation: (i, phrase, j) over `needs` when the prompt places needs[i] relative to needs[j].
  """
  category: str
  prompt: str
  needs: tuple[Need, ...]
  scene: world.Scene
  relation: tuple[int, str, int] | None = None


@dataclasses.dataclass(frozen=True)
class UndItem:
  """An understanding question about a held-out scene's rendering."""
  question: str
  answer: str
  scene: world.Scene


class Adapter(Protocol):
  def generate_images(self, prompts: Sequence[str]) -> np.ndarray: ...
  def answer(self, images: np.ndarray, questions: Sequence[str]) -> list[str]: ...


def _matching(dets: Sequence[analyser.Detection], need: Need) -> list[analyser.Detection]:
  return [d for d in dets if d.shape == need.shape and need.colour in (None, d.colour)]


def score(item: GenItem, dets: Sequence[analyser.Detection], image_size: int) -> bool:
  """Whether an image with these detections satisfies the item's prompt."""
  found = [_matching(dets, n) for n in item.needs]
  for need, got in zip(item.needs, found):
    if (len(got) != need.count) if need.count is not None else not got:
      return False
  if item.relation is None:
    return True
  i, phrase, j = item.relation
  margin = RELATION_MARGIN * image_size
  holds = {  # image y grows downwards
      "on the left of": lambda a, b: a.cx < b.cx - margin,
      "on the right of": lambda a, b: a.cx > b.cx + margin,
      "above": lambda a, b: a.cy < b.cy - margin,
      "below": lambda a, b: a.cy > b.cy + margin,
  }[phrase]
  return any(holds(a, b) for a in found[i] for b in found[j] if a is not b)


def _gen_item(category: str, scene: world.Scene, rng: np.random.Generator) -> GenItem | None:
  """The item of `category` written from `scene`, or None when the scene cannot make one."""
  objs = scene.objects
  n = len(objs)
  if category in ("single_object", "colours"):
    if n != 1:
      return None
    (o,) = objs
    colour = o.colour if category == "colours" else None
    return GenItem(category, text.describe(scene, "colour" if colour else "shape"),
                   (Need(o.shape, colour),), scene)
  if category == "counting":
    if n < 2 or len({o.descriptor for o in objs}) != 1:
      return None
    return GenItem(category, text.describe(scene, "colour"),
                   (Need(objs[0].shape, objs[0].colour, n),), scene)
  if n != 2:
    return None
  a, b = objs
  if category == "two_objects":
    if a.shape == b.shape:
      return None
    return GenItem(category, text.describe(scene, "shape"), (Need(a.shape), Need(b.shape)), scene)
  if category == "colour_attribution":
    if a.colour == b.colour:
      return None
    return GenItem(category, text.describe(scene, "colour"),
                   (Need(a.shape, a.colour), Need(b.shape, b.colour)), scene)
  if category == "position":
    if a.descriptor == b.descriptor:
      return None
    if rng.random() < 0.5:
      a, b = b, a
    true = [r for r, fn in text.RELATIONS.items() if fn(a.cell, b.cell)]
    rel = true[int(rng.integers(len(true)))]
    return GenItem(category, text.relation_prompt(a.descriptor, rel, b.descriptor),
                   (Need(a.shape, a.colour), Need(b.shape, b.colour)), scene, (0, rel, 1))
  raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")


def gen_items(per_category: int = 20, seed: int = 0, split: str = "test") -> list[GenItem]:
  """`per_category` items per category, each from a distinct scene of `split`: "test" (held-out
  compositions: the score) or "validation" (training compositions, other scenes: for choosing
  sampling settings without looking at the test split)."""
  if per_category < 0:
    raise ValueError(f"per_category must be >= 0, got {per_category}")
  rng = np.random.default_rng([seed, 7])
  items = {c: [] for c in CATEGORIES}
  for scene in world.split_scenes(split, 100 * per_category * len(CATEGORIES), seed):
    open_cats = [c for c in CATEGORIES if len(items[c]) < per_category]
    if not open_cats:
      break
    for c in rng.permutation(open_cats):  # one category per scene: scenes are not reused
      item = _gen_item(str(c), scene, rng)
      if item is not None:
        items[str(c)].append(item)
        break
  return [it for c in CATEGORIES for it in items[c]]


def und_items(num: int = 200, seed: int = 0, split: str = "test") -> list[UndItem]:
  """One question per scene of `split` (held-out test scenes by default), its kind at random."""
  if num < 0:
    raise ValueError(f"num must be >= 0, got {num}")
  rng = np.random.default_rng([seed, 8])
  out = []
  for scene in world.split_scenes(split, num, seed + 1):  # other scenes than generation's
    qa = text.all_qa(scene, rng)
    q, a = qa[int(rng.integers(len(qa)))]
    out.append(UndItem(q, a, scene))
  return out


class OracleAdapter:
  """Draws each prompt's source scene with the renderer and answers from the scene's truth.

  degrade: blur and noise each generated image like a VQ reconstruction (`analyser.degrade`).
  transform: applied to the generated images (uint8 (B, S, S, 3) -> same), e.g. a round trip
    through a checkpoint's VQ (`model_adapter.vq_round_trip`): the score a generator that drew
    every prompt's scene exactly would get through that tokenizer, the ceiling it sets.
  """

  def __init__(self, items: Sequence[GenItem], scenes: Sequence[world.Scene] = (),
               image_size: int = 64, degrade: bool = False, seed: int = 0,
               transform: Callable[[np.ndarray], np.ndarray] | None = None):
    self._by_prompt = {it.prompt: it.scene for it in items}
    self._by_image = {self._key(world.render(s, image_size)): s for s in scenes}
    self._size = image_size
    self._degrade = degrade
    self._transform = transform
    self._rng = np.random.default_rng(seed)

  @staticmethod
  def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()

  def generate_images(self, prompts: Sequence[str]) -> np.ndarray:
    images = world.render_batch([self._by_prompt[p] for p in prompts], self._size)
    if self._degrade:
      images = np.stack([analyser.degrade(im, self._rng) for im in images])
    if self._transform is not None:
      images = np.asarray(self._transform(images))
    return images

  def answer(self, images: np.ndarray, questions: Sequence[str]) -> list[str]:
    return [text.answer(self._by_image[self._key(im)].objects, q)
            for im, q in zip(images, questions)]


def evaluate(adapter: Adapter, gen: Sequence[GenItem], und: Sequence[UndItem],
             image_size: int = 64, batch_size: int = 16, images_per_prompt: int = 1,
             log=print) -> dict[str, float]:
  """Runs both halves; returns per-category accuracies, `gen_overall` and `und_accuracy`."""
  correct = {c: [] for c in CATEGORIES}
  for start in range(0, len(gen), batch_size):
    chunk = gen[start:start + batch_size]
    prompts = [it.prompt for it in chunk for _ in range(images_per_prompt)]
    images = np.asarray(adapter.generate_images(prompts))
    if images.shape[0] != len(prompts) or images.dtype != np.uint8:
      raise ValueError(f"generate_images returned {images.shape} {images.dtype} for "
                       f"{len(prompts)} prompts; expected uint8 (B, S, S, 3)")
    for k, image in enumerate(images):
      item = chunk[k // images_per_prompt]
      correct[item.category].append(score(item, analyser.analyse(image), image.shape[0]))
    log(f"generation: {min(start + batch_size, len(gen))}/{len(gen)} prompts")
  results = {c: float(np.mean(v)) for c, v in correct.items() if v}
  scored = [results[c] for c in CATEGORIES if c in results]
  results["gen_overall"] = float(np.mean(scored)) if scored else float("nan")
  hits = []
  for start in range(0, len(und), batch_size):
    chunk = und[start:start + batch_size]
    images = world.render_batch([u.scene for u in chunk], image_size)
    preds = adapter.answer(images, [u.question for u in chunk])
    hits += [text.normalise_answer(p) == text.normalise_answer(u.answer)
             for p, u in zip(preds, chunk)]
  results["und_accuracy"] = float(np.mean(hits)) if hits else float("nan")
  kinds = [text.question_kind(u.question) for u in und]
  for kind in text.QUESTION_KINDS:  # a breakdown for diagnosis; und_accuracy is the score
    got = [h for h, k in zip(hits, kinds) if k == kind]
    if got:
      results[f"und_{kind}"] = float(np.mean(got))
      results[f"und_{kind}_n"] = len(got)
  return results


def report(results: dict[str, float]) -> str:
  """Per-category table, then the last line `gen_overall=<x> und_accuracy=<y>`."""
  lines = [f"{c:<20s} {results[c]:.3f}" for c in CATEGORIES if c in results]
  lines.append(f"{'generation overall':<20s} {results['gen_overall']:.3f}")
  lines.append(f"{'understanding':<20s} {results['und_accuracy']:.3f}")
  lines += [f"  {kind:<18s} {results[f'und_{kind}']:.3f} ({results[f'und_{kind}_n']} questions)"
            for kind in text.QUESTION_KINDS if f"und_{kind}" in results]
  lines.append(f"gen_overall={results['gen_overall']:.4f} "
               f"und_accuracy={results['und_accuracy']:.4f}")
  return "\n".join(lines)


def _load_checkpoint(p: argparse.ArgumentParser, args, load):
  """(path, `load(path, model_adapter)`) for --checkpoint, the shipped checkpoint by default;
  exits with a usage error that names the checkpoint when there is none or it does not load."""
  # jax and the model only when a checkpoint is asked for
  from janus_jax.sampling import loading  # pylint: disable=g-import-not-at-top
  from janus_jax.shapes_demo.eval import model_adapter  # pylint: disable=g-import-not-at-top
  ckpt = args.checkpoint or loading.default_checkpoint()
  if ckpt is None:
    p.error("no --checkpoint given and this checkout has no assets/shapes_demo"
            + ("" if args.oracle else "; try --oracle"))
  try:
    return ckpt, load(ckpt, model_adapter)
  except (FileNotFoundError, ValueError) as e:
    p.error(f"cannot load checkpoint {ckpt}: {e}")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", help="checkpoint directory (converted Janus layout)")
  p.add_argument("--oracle", action="store_true", help="renderer + ground truth as the model")
  p.add_argument("--degrade", action="store_true", help="oracle: blur/noise generated images")
  p.add_argument("--through_vq", action="store_true",
                 help="oracle: pass the drawn scenes through the VQ of --checkpoint (default: the "
                      "shipped one), encode then decode: the generation score that tokenizer "
                      "allows a perfect generator")
  p.add_argument("--per_category", type=int, default=100,
                 help="prompts per generation category (the standard error of the overall score "
                      "is about 0.04 at 20, 0.02 at 100)")
  p.add_argument("--questions", type=int, default=200)
  p.add_argument("--images_per_prompt", type=int, default=1)
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--image_size", type=int, default=None,
                 help="side of the rendered question images; default: the checkpoint's image "
                      "size (its generated images' side), 64 for --oracle")
  p.add_argument("--cfg_weight", type=float, default=None,
                 help="guidance weight; default: the checkpoint's config.json sampling.cfg_weight "
                      "(chosen on the validation split), else the reference's 5.0")
  p.add_argument("--temperature", type=float, default=None,
                 help="image-token temperature (0: greedy); default: the checkpoint's config.json "
                      "sampling.temperature (chosen with the weight), else the reference's 1.0")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--split", default="test", choices=("test", "validation"),
                 help="test: held-out compositions (the score); validation: training "
                      "compositions, for choosing sampling settings")
  args = p.parse_args(argv)
  for flag in ("per_category", "questions"):
    if getattr(args, flag) < 0:
      p.error(f"--{flag} must be >= 0, got {getattr(args, flag)}")
  gen = gen_items(args.per_category, args.seed, args.split)
  und = und_items(args.questions, args.seed, args.split)
  if args.through_vq and not args.oracle:
    p.error("--through_vq is an oracle mode: add --oracle")
  if args.oracle:
    transform = None
    if args.through_vq:
      ckpt, (transform, vq_size) = _load_checkpoint(
          p, args, lambda path, model_adapter: model_adapter.vq_round_trip(path))
      if args.image_size not in (None, vq_size):
        p.error(f"--image_size {args.image_size}: the VQ of {ckpt} was trained at {vq_size}")
      args.image_size = vq_size
    args.image_size = args.image_size or 64
    adapter = OracleAdapter(gen, [u.scene for u in und], args.image_size, args.degrade, args.seed,
                            transform)
  else:
    def load(path, model_adapter):
      own = model_adapter.FROM_CHECKPOINT
      return model_adapter.load(
          path, cfg_weight=own if args.cfg_weight is None else args.cfg_weight,
          temperature=own if args.temperature is None else args.temperature, seed=args.seed)
    _, adapter = _load_checkpoint(p, args, load)
    args.image_size = args.image_size or adapter.image_size
  results = evaluate(adapter, gen, und, args.image_size, args.batch_size, args.images_per_prompt,
                     log=lambda m: print(m, flush=True))
  print(report(results))


if __name__ == "__main__":
  main()
