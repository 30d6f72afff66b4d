"""Backend-specific products, reached by the models through one seam.

The model files (`janus_jax.models`) define the architecture on plain arrays. Every weight
product there goes through `layers.einsum`, and every projection kernel is read through
`layers.kernel`: a kernel stored as a `layers.PackedWeight` (an object that knows its own
product) is multiplied by that product instead of `jnp.einsum`, the way quantisation
libraries hand a layer their own `dot_general`. This package holds those products:

  cpu   a float32 product for decoding on the CPU (a few rows times a weight packed in panels),
        an XLA FFI kernel compiled from `csrc/panel_matmul.cc` on first use.

Which weights get packed for which backend is decided in one place,
`janus_jax.sampling.decode_layout`.
"""
