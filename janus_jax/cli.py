"""What the command-line tools (`train.py`, `sample.py`, `convert_torch.py`, the demo) share.

  run(main, define_flags)  an absl program: flags defined and parsed, a bad flag or a
                 `--config.<field>` override of a field the config does not have as one
                 `error:` line, then `guarded(main)`.
  guarded(main)  runs a tool's main: an anticipated failure (`errors.InputError`, or an
                 `OSError` of the file system, such as a full disk or a missing permission) is
                 printed as one `error: ...` line and the tool exits with status 1; any other
                 exception is a bug and keeps its traceback.
  quiet_logs()   library INFO logs (Orbax, absl) off unless `--verbosity` was given: a tool
                 prints its own progress bar and results.
  say(message)   a line for the user on stderr, from process 0 only.
"""

import functools
import logging
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
import jax

from janus_jax import errors


def run(main, define_flags=None) -> None:
  """`app.run(guarded(main))`, flags from `define_flags()` (ml_collections parses the
  `--config.<field>` overrides of a config flag with a default when it is defined)."""
  try:
    if define_flags is not None:
      define_flags()
  except (AttributeError, KeyError) as e:
    sys.exit(_bad_override(e, sys.argv))
  app.run(guarded(main), flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; any failure is one `error:` line and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(fail(f"{e} (--helpfull lists every flag)") + 1)
  except (AttributeError, KeyError) as e:  # ml_collections: an override of no field
    sys.exit(_bad_override(e, argv))


def _bad_override(e: Exception, argv: list[str]) -> int:
  name = str(e).strip("'\"")
  given = [a for a in argv[1:] if a.startswith("--config.") and name.split("'")[0] in a]
  return fail(f"{' '.join(given) or '--config.<field>'}: the config has no field {name!r}") + 1


def guarded(main):
  """`main` (argv -> exit status) with anticipated failures turned into one `error:` line."""

  @functools.wraps(main)
  def run(*args, **kw):
    try:
      return main(*args, **kw) or 0
    except errors.InputError as e:
      return fail(str(e))
    except OSError as e:
      if e.errno is None:  # not a failure of the system call itself: a bug
        raise
      where = f"{e.filename}: " if e.filename else ""
      return fail(f"{where}{e.strerror or e}")
  return run


def fail(message: str) -> int:
  """Prints `error: message` on stderr; returns the exit status 1."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  return 1


def quiet_logs() -> None:
  """Only warnings and errors from libraries, unless `--verbosity` (absl) was given."""
  explicit = "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present
  if not explicit:
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)


def say(message: str) -> None:
  """One line for the user on stderr (process 0 only, so a multi-host run says it once)."""
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)
