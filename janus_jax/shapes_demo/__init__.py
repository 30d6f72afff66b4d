"""The embedded demo: a small Janus trained from scratch on a procedurally drawn shapes world.

  world/            the world (scenes, captions, questions), its TFDS builder and tokenizer
  vq_training.py    the VQ tokenizer's own training (reconstruction + codebook losses)
  vision_training.py  the understanding encoder's pretraining on per-patch scene labels
  recipe.py         the whole recipe, `python -m janus_jax.shapes_demo --out DIR`
  eval/             ShapesEval, `python -m janus_jax.shapes_demo.eval`

Nothing outside this package depends on it; docs/shapes_demo.md explains the recipe's choices.
"""
