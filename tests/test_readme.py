"""Every command in README.md runs as written, as far as a test can run it without weights.

Each `python ...` command of the README's bash blocks names an entry point that exists and
answers `--help`; every flag it passes is one that entry point defines; every `--config FILE:arg`
loads; every `--config.a.b=value` override names a field of that config (or of the entry point's
default config). The commands themselves run elsewhere: `sample.py` with no arguments in
tests/shapes_demo/test_recipe.py, `train.py` in tests/train, the parity CLI in tests/parity.
"""

import functools
import importlib
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# Entry points whose config flag has a default: the config their `--config.x=...` overrides.
DEFAULT_CONFIGS = {"sample.py": "configs/sample.py",
                   "janus_jax.shapes_demo": "configs/demo_shapes.py"}


def readme_commands() -> list[list[str]]:
  """argv of every `python ...` command in the README's bash blocks (continuations joined)."""
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
    for line in block.replace("\\\n", " ").splitlines():
      for part in line.split("&&"):
        part = part.split(" #")[0].strip()
        if part.startswith(("python ", "python3 ")):
          commands.append(shlex.split(part))
  return commands


def entry_point(argv: list[str]) -> str:
  return argv[2] if argv[1] == "-m" else argv[1]


COMMANDS = [c for c in readme_commands() if entry_point(c) != "pytest"]


@functools.cache
def help_text(entry: str) -> str:
  """The entry point's full help (`--helpfull` for absl programs)."""
  base = [sys.executable, "-m", entry] if not entry.endswith(".py") else [sys.executable, entry]
  out = ""
  for flag in ("--help", "--helpfull"):
    proc = subprocess.run(base + [flag], cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    # argparse exits 0 after its help, absl 1; either way no traceback, and the help itself.
    assert proc.returncode in (0, 1) and "Traceback" not in out, f"{entry} {flag}: {out[-2000:]}"
    assert re.search(r"usage|flags:", out, re.I), f"{entry} {flag}: {out[-2000:]}"
    if "--helpfull" not in out:  # argparse: --help is everything
      break
  return out


def _config(spec: str):
  path, _, arg = spec.partition(":")
  assert (REPO / path).is_file(), f"{path} does not exist"
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  return module.get_config(arg or None)


def _field(config, dotted: str):
  node = config
  for part in re.findall(r"[^.\[\]]+", dotted):
    node = node[int(part)] if part.isdigit() else node[part]
  return node


def test_the_readme_has_the_two_commands_and_is_short():
  text = README.read_text()
  assert 'pip install torch==2.13.0 && pip install -e ".[test]" && python sample.py' in text
  assert "python3 -m pytest tests" in text
  ci = (REPO / ".ci" / "run").read_text()
  assert "python3 -m pytest tests\n" in ci  # CI runs the README's test command
  assert len(text.splitlines()) <= 220
  assert len(COMMANDS) >= 15


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command(argv):
  entry = entry_point(argv)
  text = help_text(entry)
  args = argv[3:] if argv[1] == "-m" else argv[2:]
  config = None
  for i, arg in enumerate(args):
    if arg == "--config" or arg.startswith("--config="):
      config = _config(arg.partition("=")[2] or args[i + 1])
  if config is None and entry in DEFAULT_CONFIGS:
    config = _config(DEFAULT_CONFIGS[entry])
  for arg in args:
    if not arg.startswith("--"):
      continue
    name = arg[2:].partition("=")[0]
    if name.startswith("config."):
      assert config is not None, f"{arg}: {entry} has no config to override"
      _field(config, name[len("config."):])  # KeyError / IndexError if it is not a field
    else:
      assert re.search(rf"--(\[no\])?{re.escape(name)}\b", text), f"{entry} has no --{name}"
