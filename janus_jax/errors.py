"""The one exception type for bad input.

`InputError` is what the package raises for a problem the user can fix: a missing or damaged
file, a flag or config value out of range, a checkpoint that does not fit the model. Its message
names the bad thing (the file, the key, the tensor) and says what would be accepted. The
command-line tools (`janus_jax.cli.run`) print it as one `error: ...` line and exit with status
1; any other exception is a bug and keeps its traceback.
"""


class InputError(ValueError):
  """Bad input, reported to the user in one line (see the module docstring)."""
