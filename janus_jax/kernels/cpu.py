"""A CPU product for decoding: a few float32 rows times a weight packed in panels.

XLA:CPU multiplies the few rows of a decode step by each weight at a third of the rate the
weight streams from memory or less: it repacks the weight on every call. `csrc/panel_matmul.cc`
reads a weight packed once, at load, as `Panels`, at close to the streaming rate
(docs/performance.md). It is compiled on first use with the machine's C++ compiler
(`-march=native`), cached under `~/.cache/janus_jax` (or `$JANUS_JAX_CACHE`), and registered as
an XLA FFI target for the CPU. Where it cannot be built (no compiler, say) `available()` is
False and says why once in the log; decoding then keeps XLA's products on whole kernels.
`JANUS_JAX_CPU_KERNELS=0` turns it off.

`Panels` is a `layers.PackedWeight`: a model layer that reads one as its kernel multiplies by
`Panels.einsum`, which calls the kernel (`janus_jax.sampling.decode_layout` decides what is
packed).
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
import numpy as np

from janus_jax.models import layers

TARGET = "janus_panel_matmul"
SOURCE = pathlib.Path(__file__).parent / "csrc" / "panel_matmul.cc"
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-std=c++17", "-shared", "-fPIC", "-w")

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# The kernel.
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# The packed weight.
# ----------------------------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
class Panels(layers.PackedWeight):
  """A weight packed for `panel_matmul`.

  The weight of `shape` has `in_rank` leading (contracted) axes and output axes after them;
  flattened to (K, N), its columns are stored as `data`, (P, K, C): P contiguous panels of C
  columns, the last zero-padded.
  """

  def __init__(self, data, shape, in_rank: int):
    self.data, self.shape, self.in_rank = data, tuple(shape), in_rank

  def tree_flatten(self):
    return (self.data,), (self.shape, self.in_rank)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(children[0], *aux)

  @property
  def dtype(self):
    return self.data.dtype

  def astype(self, dtype) -> "Panels":
    return self if dtype == self.data.dtype else Panels(self.data.astype(dtype), self.shape,
                                                        self.in_rank)

  def __repr__(self):
    return f"Panels(shape={self.shape}, in_rank={self.in_rank}, data={self.data.shape})"

  @classmethod
  def pack(cls, w, in_rank: int, columns: int | None = None) -> "Panels":
    """`w` packed in panels of `columns` output columns (default: the built kernel's)."""
    return cls(_pack(w, in_rank, columns or panel_columns()), w.shape, in_rank)

  def unpack(self) -> jax.Array:
    """The weight as one array of `shape` again."""
    k, n = self._sizes()
    return self.data.transpose(1, 0, 2).reshape(k, -1)[:, :n].reshape(self.shape)

  def einsum(self, spec: str, x: jax.Array) -> jax.Array:
    """`jnp.einsum(spec, x, weight)` as `product` between transposes. The weight's subscripts
    are explicit and it contracts exactly its first `in_rank` axes, the input's only contracted
    ones."""
    inputs, out = spec.split("->")
    xs, ws = inputs.split(",")
    if len(ws) != len(self.shape):
      raise ValueError(f"einsum {spec!r} on {self!r}: the weight has rank {len(self.shape)}")
    ins, outs = ws[:self.in_rank], ws[self.in_rank:]
    rows = [a for a in xs if a not in ins]
    if sorted(rows + list(outs)) != sorted(out) or sorted(set(xs) - set(rows)) != sorted(ins):
      raise ValueError(f"einsum {spec!r}: a {self!r} weight contracts exactly its first "
                       f"{self.in_rank} axes, which must be the input's only contracted ones")
    x = x.transpose([xs.index(a) for a in rows + list(ins)])
    y = self.product(x)  # axes rows + outs
    return y.transpose([(rows + list(outs)).index(a) for a in out])

  def product(self, x: jax.Array) -> jax.Array:
    """x (..., *shape[:in_rank]) times the weight -> (..., *shape[in_rank:]):
    `panel_matmul` for float32 on the CPU, else an XLA product over the panels (in the dtype x
    and the data promote to). The panel product also serves prefills: one core, 1024 x 4096
    weight, it measured 20.5 ms against XLA's dot's 22.8 ms for 256 rows and within 3% of it
    for 576-1200 rows."""
    k, n = self._sizes()
    if x.shape[x.ndim - self.in_rank:] != self.shape[:self.in_rank]:
      raise ValueError(f"{self!r}: cannot multiply input of shape {x.shape}")
    lead = x.shape[:x.ndim - self.in_rank]
    x = x.reshape(-1, k)
    if not (why := self._no_kernel(x.dtype)):
      y = panel_matmul(x, self.data, n)
    else:
      _warn_once(f"Panels.product: {why}; XLA multiplies over the panels instead (slower)")
      y = jnp.einsum("MK,PKC->MPC", x, self.data).reshape(x.shape[0], -1)[:, :n]
    return y.reshape(lead + self.shape[self.in_rank:])

  def _no_kernel(self, dtype) -> str:
    """Why the CPU product cannot multiply these panels by `dtype` rows ('' if it can)."""
    if not dtype == self.data.dtype == jnp.float32:  # (layers cast the panels to their dtype)
      return (f"{jnp.dtype(dtype).name} rows (the CPU product multiplies float32 only; "
              "decode_layout(..., dtype=) leaves the kernels of other dtypes whole)")
    if jax.default_backend() != "cpu":
      return f"the default backend is {jax.default_backend()}, not the CPU"
    if not available():
      return f"the CPU product is unavailable ({unavailable_reason()})"
    if panel_columns() != self.data.shape[-1]:
      return (f"panels of {self.data.shape[-1]} columns, where this build's CPU product takes "
              f"{panel_columns()}")
    return ""

  def _sizes(self) -> tuple[int, int]:
    return (int(np.prod(self.shape[:self.in_rank])), int(np.prod(self.shape[self.in_rank:])))


def packable(w) -> bool:
  """Whether `w` can be packed for the kernel: a float32 array on one device (the FFI call has
  no partitioning rule; a traced array's placement is unknown, so only with one device)."""
  if not layers.is_array(w) or w.dtype != jnp.float32:
    return False
  if isinstance(w, jax.core.Tracer):
    return jax.device_count() == 1
  sharding = getattr(w, "sharding", None)
  return sharding is None or len(sharding.device_set) == 1


@functools.cache
def _warn_once(message: str) -> None:
  _log.warning(message)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pack(w, in_rank: int, columns: int):
  k, n = int(np.prod(w.shape[:in_rank])), int(np.prod(w.shape[in_rank:]))
  p = -(-n // columns)
  flat = jnp.pad(w.reshape(k, n), ((0, 0), (0, p * columns - n)))
  return flat.reshape(k, p, columns).transpose(1, 0, 2)
