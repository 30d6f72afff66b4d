"""Captions and question/answer pairs for shapes-world scenes.

Captions come in styles; each is a grammar over the scene's objects, listed in reading order:
  shape         "two circles and a square"
  colour        "two red circles and a blue square"        (groups equal (colour, shape))
  size          "a large red circle and a small blue square" (groups equal (size, colour, shape))
  position      "a red circle in the top left and a blue square in the centre"
  full          "a small red circle in the top left and a large blue square in the centre"
  relation      "a red circle on the left of a blue square" (two objects, distinct descriptors)
ShapesEval writes its prompts with these same functions, so an evaluation prompt is always a
sentence of the training grammar, only about a held-out composition.

Questions (answers are one or two lowercase words; counts are number words):
  "how many shapes are there?" / "how many circles are there?" / "how many red shapes are there?"
  "what colour is the circle?" (shape unique)   "what shape is the red object?" (colour unique)
  "where is the red circle?" -> a cell name     "what size is the red circle?" -> small | large
  "is there a red circle?" -> yes | no          "is the red circle above the blue square?"
"""

import re
from typing import Sequence

import numpy as np

from janus_jax.shapes_demo.world import world

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
STYLES = ("shape", "colour", "size", "position", "full", "relation")
# Relation phrase -> predicate on (a, b) cells.
RELATIONS = {
    "on the left of": lambda a, b: a[1] < b[1],
    "on the right of": lambda a, b: a[1] > b[1],
    "above": lambda a, b: a[0] < b[0],
    "below": lambda a, b: a[0] > b[0],
}
CELL_PHRASES = {
    (0, 0): "in the top left", (0, 1): "at the top", (0, 2): "in the top right",
    (1, 0): "on the left", (1, 1): "in the centre", (1, 2): "on the right",
    (2, 0): "in the bottom left", (2, 1): "at the bottom", (2, 2): "in the bottom right",
}


def plural(shape: str) -> str:
  return shape + "s"


def noun_phrase(count: int, words: Sequence[str], shape: str) -> str:
  """"a red circle" / "two red circles" (words are the adjectives before the noun)."""
  head = "a" if count == 1 else NUMBERS[count]
  return " ".join([head, *words, shape if count == 1 else plural(shape)])


def join(phrases: Sequence[str]) -> str:
  """"x", "x and y", "x, y and z"."""
  if len(phrases) == 1:
    return phrases[0]
  return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _grouped(objects: Sequence[world.Object], attrs: Sequence[str]) -> str:
  """Counts objects by their `attrs` (ending in "shape"), in order of first appearance."""
  groups: dict[tuple, int] = {}
  for o in objects:
    key = tuple(getattr(o, a) for a in attrs)
    groups[key] = groups.get(key, 0) + 1
  return join([noun_phrase(n, key[:-1], key[-1]) for key, n in groups.items()])


def applicable_styles(scene: world.Scene) -> tuple[str, ...]:
  objs = scene.objects
  relation = len(objs) == 2 and objs[0].descriptor != objs[1].descriptor
  return tuple(s for s in STYLES if s != "relation" or relation)


def describe(scene: world.Scene, style: str, rng: np.random.Generator | None = None) -> str:
  """One caption of `scene` in `style`; `rng` only picks the relation word and the order."""
  objs = scene.objects
  if style == "shape":
    return _grouped(objs, ("shape",))
  if style == "colour":
    return _grouped(objs, ("colour", "shape"))
  if style == "size":
    return _grouped(objs, ("size", "colour", "shape"))
  if style in ("position", "full"):
    words = (lambda o: (o.colour,)) if style == "position" else (lambda o: (o.size, o.colour))
    return join([f"{noun_phrase(1, words(o), o.shape)} {CELL_PHRASES[o.cell]}" for o in objs])
  if style == "relation":
    if "relation" not in applicable_styles(scene):
      raise ValueError("a relation caption needs exactly two objects with distinct descriptors")
    a, b = objs
    if rng is not None and rng.random() < 0.5:
      a, b = b, a
    true = [r for r, holds in RELATIONS.items() if holds(a.cell, b.cell)]
    rel = true[int(rng.integers(len(true)))] if rng is not None else true[0]
    return relation_prompt(a.descriptor, rel, b.descriptor)
  raise ValueError(f"unknown caption style {style!r}; expected one of {STYLES}")


def relation_prompt(a: tuple[str, str], relation: str, b: tuple[str, str]) -> str:
  if relation not in RELATIONS:
    raise ValueError(f"unknown relation {relation!r}; expected one of {tuple(RELATIONS)}")
  return f"{noun_phrase(1, a[:1], a[1])} {relation} {noun_phrase(1, b[:1], b[1])}"


def caption(scene: world.Scene, rng: np.random.Generator, style: str | None = None) -> str:
  """A caption in `style`, or in a random applicable style when None."""
  if style is None:
    styles = applicable_styles(scene)
    style = styles[int(rng.integers(len(styles)))]
  return describe(scene, style, rng)


def captions(scene: world.Scene, rng: np.random.Generator, num: int = 3) -> list[str]:
  """`num` captions in distinct random styles (fewer if fewer styles apply)."""
  styles = list(applicable_styles(scene))
  picked = rng.permutation(len(styles))[:num]
  return [describe(scene, styles[i], rng) for i in picked]


# ------------------------------------------------------------------ questions and answers


def all_qa(scene: world.Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
  """Every question kind that applies to `scene`, with its answer (`rng` picks the subjects)."""
  objs = scene.objects
  colours, shapes = list(world.COLOURS), list(world.SHAPES)
  o = objs[int(rng.integers(len(objs)))]
  # Count questions mostly about what is there: "zero" should not dominate the answers.
  shape = o.shape if rng.random() < 0.7 else shapes[int(rng.integers(len(shapes)))]
  colour = o.colour if rng.random() < 0.7 else colours[int(rng.integers(len(colours)))]
  qs = ["how many shapes are there?", f"how many {plural(shape)} are there?",
        f"how many {colour} shapes are there?"]
  n_desc = sum(x.descriptor == o.descriptor for x in objs)
  if sum(x.shape == o.shape for x in objs) == 1:
    qs.append(f"what colour is the {o.shape}?")
  if sum(x.colour == o.colour for x in objs) == 1:
    qs.append(f"what shape is the {o.colour} object?")
  if n_desc == 1:
    qs += [f"where is the {o.colour} {o.shape}?", f"what size is the {o.colour} {o.shape}?"]
  # Existence: half the time about a descriptor the scene has, else a random one.
  c, s = (o.descriptor if rng.random() < 0.5 else
          (colours[int(rng.integers(len(colours)))], shapes[int(rng.integers(len(shapes)))]))
  qs.append(f"is there a {c} {s}?")
  unique = [x for x in objs if sum(y.descriptor == x.descriptor for y in objs) == 1]
  if len(unique) >= 2:
    i, j = rng.permutation(len(unique))[:2]
    a, b = unique[i], unique[j]
    rel = list(RELATIONS)[int(rng.integers(len(RELATIONS)))]
    qs.append(f"is the {a.colour} {a.shape} {rel} the {b.colour} {b.shape}?")
  return [(q, answer(objs, q)) for q in qs]


_QUESTIONS = (  # (kind, pattern, answer(objects, *groups)); the first match wins
    ("count_shapes", r"how many shapes are there\?", lambda objs: _number(len(objs))),
    ("count_of_shape", r"how many (\w+)s are there\?",
     lambda objs, s: _number(sum(o.shape == s for o in objs))),
    ("count_of_colour", r"how many (\w+) shapes are there\?",
     lambda objs, c: _number(sum(o.colour == c for o in objs))),
    ("colour_of", r"what colour is the (\w+)\?",
     lambda objs, s: _only([o.colour for o in objs if o.shape == s])),
    ("shape_of", r"what shape is the (\w+) object\?",
     lambda objs, c: _only([o.shape for o in objs if o.colour == c])),
    ("where", r"where is the (\w+) (\w+)\?",
     lambda objs, c, s: _only([world.CELL_NAMES[o.cell] for o in objs if o.descriptor == (c, s)])),
    ("size_of", r"what size is the (\w+) (\w+)\?",
     lambda objs, c, s: _only([o.size for o in objs if o.descriptor == (c, s)])),
    ("exists", r"is there an? (\w+) (\w+)\?",
     lambda objs, c, s: "yes" if any(o.descriptor == (c, s) for o in objs) else "no"),
    ("relation", r"is the (\w+) (\w+) (" + "|".join(RELATIONS) + r") the (\w+) (\w+)\?",
     lambda objs, c1, s1, rel, c2, s2: _relation(objs, (c1, s1), rel, (c2, s2))),
)

QUESTION_KINDS = tuple(k for k, _, _ in _QUESTIONS)


def _number(n: int) -> str:
  return NUMBERS[n] if n < len(NUMBERS) else str(n)


def _only(values: list[str]) -> str:
  """The answer when exactly one object fits the question, else "unknown" (ambiguous/absent)."""
  return values[0] if len(values) == 1 else "unknown"


def _relation(objs, a, rel, b) -> str:
  oa = [o for o in objs if o.descriptor == a]
  ob = [o for o in objs if o.descriptor == b]
  if len(oa) != 1 or len(ob) != 1:
    return "unknown"
  return "yes" if RELATIONS[rel](oa[0].cell, ob[0].cell) else "no"


def answer(objects: Sequence, question: str) -> str:
  """The answer to a question of this world's grammar about `objects`.

  `objects` need `colour`, `shape`, `size` and `cell` (scene objects, or the analyser's
  detections of an image). Raises ValueError for a question outside the grammar.
  """
  _, fn, groups = _parse(question)
  return fn(list(objects), *groups)


def question_kind(question: str) -> str:
  """The kind of a question of this world's grammar (`QUESTION_KINDS`); ValueError otherwise."""
  return _parse(question)[0]


def _parse(question: str):
  """(kind, answer function, regex groups) of the first pattern the question matches."""
  q = " ".join(question.lower().split())
  for kind, pattern, fn in _QUESTIONS:
    m = re.fullmatch(pattern, q)
    if m:
      return kind, fn, m.groups()
  raise ValueError(f"question {question!r} is not in the shapes-world question grammar")


def qa_pairs(scene: world.Scene, rng: np.random.Generator, num: int | None = 4
             ) -> list[tuple[str, str]]:
  """Up to `num` (question, answer) pairs of distinct kinds (all kinds when None)."""
  qa = all_qa(scene, rng)
  if num is None or num >= len(qa):
    return qa
  return [qa[i] for i in sorted(rng.permutation(len(qa))[:num])]


def normalise_answer(text: str) -> str:
  """Lowercase words without punctuation, articles or a trailing EOS; digits as number words."""
  words = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text.lower()).split()
  words = [NUMBERS[int(w)] if w.isdigit() and int(w) < len(NUMBERS) else w for w in words]
  return " ".join(w for w in words if w not in ("a", "an", "the"))
