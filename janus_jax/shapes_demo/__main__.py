"""`python -m janus_jax.shapes_demo --out DIR`: the shapes demo recipe (`recipe`)."""

from absl import flags

from janus_jax import cli
from janus_jax.shapes_demo import recipe


def define_flags() -> None:
  recipe.define_flags()
  flags.adopt_module_key_flags(recipe)  # --help lists them


if __name__ == "__main__":
  cli.run(recipe.main, define_flags)
