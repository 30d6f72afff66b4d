"""A CPU matrix product for decoding: a few float32 rows times a weight packed in panels.

XLA:CPU runs the products of a decode step (a handful of rows against every weight of the
model) at a third of the rate the weights stream from memory or less; `csrc/panel_matmul.cc`
reads each weight once per call, from a layout packed at load (`layers.Panels`), at close to
that rate (bench/README.md). It is compiled on first use with the machine's C++ compiler
(`-march=native`), cached under `~/.cache/janus_jax` (or `$JANUS_JAX_CACHE`), and registered as
an XLA FFI target for the CPU. Where it cannot be built (no compiler, say) `available()` is
False, says why once in the log, and the samplers keep XLA's products on column blocks.
`JANUS_JAX_CPU_KERNELS=0` turns it off.
"""

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib

TARGET = "janus_panel_matmul"
SOURCE = pathlib.Path(__file__).parent / "csrc" / "panel_matmul.cc"
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-std=c++17", "-shared", "-fPIC", "-w")

_log = logging.getLogger(__name__)


class _Kernel:
  def __init__(self, columns: int | None = None, reason: str = ""):
    self.columns, self.reason = columns, reason


def available() -> bool:
  """Whether the panel product is built and registered (builds it on the first call)."""
  return _load().columns is not None


def unavailable_reason() -> str:
  """Why `available()` is False ('' when it is True)."""
  return _load().reason


def panel_columns() -> int:
  """Output columns per panel of the built kernel (32 with AVX-512, 16 with AVX, else 8)."""
  kernel = _load()
  if kernel.columns is None:
    raise RuntimeError(f"the CPU panel product is unavailable: {kernel.reason}")
  return kernel.columns


def panel_matmul(x: jax.Array, panels: jax.Array, n: int) -> jax.Array:
  """(M, K) float32 rows times a (K, n) weight held as (P, K, panel_columns()) panels."""
  if x.dtype != jnp.float32 or panels.dtype != jnp.float32:
    raise TypeError(f"panel_matmul takes float32, got {x.dtype} rows and {panels.dtype} panels")
  c = panel_columns()  # also registers the target before the call is traced
  if (x.ndim != 2 or panels.ndim != 3 or panels.shape[1:] != (x.shape[1], c)
      or not (panels.shape[0] - 1) * c < n <= panels.shape[0] * c):
    raise ValueError(f"panel_matmul: rows {x.shape} and panels {panels.shape} for {n} output "
                     f"columns; expected (M, K) rows, (P, K, {c}) panels and "
                     f"(P - 1) * {c} < columns <= P * {c}")
  return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32))(x, panels)


@functools.lru_cache(maxsize=None)
def _load() -> _Kernel:
  if os.environ.get("JANUS_JAX_CPU_KERNELS", "1") == "0":
    return _Kernel(reason="turned off by JANUS_JAX_CPU_KERNELS=0")
  try:
    path = _build()
    try:
      library = ctypes.CDLL(str(path))
    except OSError:  # a cached library that does not load (truncated, say): build it again
      path.unlink(missing_ok=True)
      library = ctypes.CDLL(str(_build()))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.JanusPanelMatmul),
                                platform="cpu")
    return _Kernel(columns=int(library.janus_panel_columns()))
  except Exception as e:  # noqa: BLE001  (whatever went wrong, decoding falls back to XLA)
    _log.warning("CPU panel product unavailable, decoding uses XLA's products: %s", e)
    return _Kernel(reason=f"{type(e).__name__}: {e}")


def _build() -> pathlib.Path:
  """The compiled kernel for this source, compiler, jaxlib and CPU: cached, else built."""
  compiler = shlex.split(os.environ.get("CXX", "")) or [shutil.which("c++") or shutil.which("g++")]
  if not compiler[0]:
    raise RuntimeError("no C++ compiler found (set CXX or install g++)")
  include = jax.ffi.include_dir()
  source = SOURCE.read_bytes()
  key = hashlib.sha256(b"\0".join([source, " ".join(compiler).encode(), " ".join(FLAGS).encode(),
                                   jaxlib.__version__.encode(), _cpu_signature()]))
  cache = pathlib.Path(os.environ.get("JANUS_JAX_CACHE")
                       or pathlib.Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "janus_jax")
  cache = cache.expanduser()
  target = cache / f"panel_matmul-{key.hexdigest()[:16]}.so"
  if target.exists():
    return target
  cache.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
  os.close(fd)
  try:
    done = subprocess.run([*compiler, *FLAGS, "-I", include, str(SOURCE), "-o", tmp],
                          capture_output=True, text=True, errors="replace", timeout=300,
                          check=False)
    if done.returncode != 0:
      raise RuntimeError(f"{' '.join(compiler)} failed on {SOURCE}: "
                         f"{done.stderr.strip()[-2000:]}")
    os.chmod(tmp, 0o755)  # mkstemp's 0600 would keep a shared cache from other users
    os.replace(tmp, target)  # atomic: a concurrent build never loads half a file
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return target


def _cpu_signature() -> bytes:
  """The CPU's model and instruction-set flags: a cache shared between machines never hands
  one a kernel compiled for another's `-march=native`."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
    return "".join(sorted(set(lines))).encode()
  except OSError:
    return f"{platform.machine()} {platform.processor()}".encode()
