"""`python -m janus_jax.parity`: every fixture case passes through the real converter, and the
runner really fails on a wrong output or an unimplemented case."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,count", [("janus_tiny", 9), ("janusflow_tiny", 5)])
@pytest.mark.slow
def test_cli_passes_every_case(fixtures_dir, name, count):
  proc = subprocess.run([sys.executable, "-m", "janus_jax.parity", str(fixtures_dir / name)],
                        cwd=REPO, capture_output=True, text=True, timeout=900)
  lines = proc.stdout.strip().splitlines()
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert lines[-1] == f"{count} passed, 0 failed"
  assert sum(": PASS " in line for line in lines) == count


@pytest.mark.slow
def test_cli_reports_wrong_and_missing_cases(fixtures_dir, tmp_path):
  src = fixtures_dir / "janus_tiny"
  for f in ("config.json", "model.safetensors"):
    (tmp_path / f).symlink_to(src / f)
  spec = json.loads((src / "fixture.json").read_text())
  spec["cases"] = {k: spec["cases"][k] for k in ("gen_head", "gen_embed")}
  spec["cases"]["mystery"] = {"doc": "no implementation", "inputs": {}, "outputs": {}}
  (tmp_path / "fixture.json").write_text(json.dumps(spec))
  with np.load(src / "cases.npz") as npz:
    arrays = {k: npz[k] for k in npz.files}
  arrays["gen_head/logits"] = arrays["gen_head/logits"] + 1e-3  # 10x the case's atol
  np.savez(tmp_path / "cases.npz", **arrays)
  proc = subprocess.run([sys.executable, "-m", "janus_jax.parity", str(tmp_path)], cwd=REPO,
                        capture_output=True, text=True, timeout=900)
  out = proc.stdout.strip().splitlines()
  assert proc.returncode == 1
  assert out[-1] == "1 passed, 2 failed"
  assert any(line.startswith("gen_head: FAIL") for line in out)
  assert any(line.startswith("gen_embed: PASS") for line in out)
  assert "mystery: FAIL not implemented by the JAX port" in out
