"""`python -m janus_jax.shapes_demo.eval`: ShapesEval (`shapes.main`; `--help` for the flags)."""

from janus_jax.shapes_demo.eval import shapes

if __name__ == "__main__":
  shapes.main()
