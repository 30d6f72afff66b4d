"""Training metrics: console progress bar, TensorBoard event files, throughput, MFU, NaN stops.

TensorBoard files are written by the small `EventWriter` below (TFRecord framing + hand-encoded
`Event` / `Summary` protos holding scalars), so runs need neither TensorFlow nor tensorboardX.

MFU counts model FLOPs the PaLM way: 6 x (matmul parameters touched per token) for forward and
backward, plus 12 x layers x width x sequence length for the attention scores and mixing, over the
accelerator's dense bf16 peak.
"""

import math
import os
import socket
import struct
import time
from typing import Any

import jax
import numpy as np
import tqdm


class NonFiniteError(RuntimeError):
  """A loss or norm became NaN / inf; the message names which and at which step."""


def check_finite(metrics: dict, step: int) -> None:
  """Raises `NonFiniteError` naming every non-finite metric (host-side numpy values)."""
  bad = [k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v, np.float64)))]
  if bad:
    details = ", ".join(f"{k}={float(np.asarray(metrics[k]))}" for k in bad)
    raise NonFiniteError(f"non-finite training metric at step {step}: {details}; stopping "
                         "without saving this state (the last good checkpoint is kept)")


# --- TensorBoard event files without TensorFlow ------------------------------------------------


def _crc32c_table():
  poly, table = 0x82F63B78, []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ poly if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  c = 0xFFFFFFFF
  for b in data:
    c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b, n = n & 0x7F, n >> 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field_bytes(field: int, payload: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version=None, scalars=None) -> bytes:
  """Serialises a tensorflow `Event` (wall_time=1, step=2, file_version=3, summary=5)."""
  msg = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
  if file_version is not None:
    msg += _field_bytes(3, file_version.encode())
  if scalars:
    values = b"".join(  # Summary.Value: tag=1, simple_value=2 (float)
        _field_bytes(1, _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) +
                     struct.pack("<f", float(v)))
        for tag, v in scalars.items())
    msg += _field_bytes(5, values)
  return msg


class EventWriter:
  """Appends scalar summaries to `<logdir>/events.out.tfevents.<time>.<host>`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._f = open(self.path, "ab")
    self._write(_event(time.time(), 0, file_version="brain.Event:2"))

  def _write(self, data: bytes):
    header = struct.pack("<Q", len(data))
    self._f.write(header + struct.pack("<I", _masked_crc(header)) + data +
                  struct.pack("<I", _masked_crc(data)))

  def scalars(self, step: int, values: dict):
    self._write(_event(time.time(), int(step), scalars=values))
    self._f.flush()

  def close(self):
    self._f.close()


def read_scalars(path: str) -> dict:
  """{tag: [(step, value), ...]} from an event file (checks every CRC; for tests and tools)."""
  out, data = {}, open(path, "rb").read()
  pos = 0
  while pos < len(data):
    (n,) = struct.unpack_from("<Q", data, pos)
    if struct.unpack_from("<I", data, pos + 8)[0] != _masked_crc(data[pos:pos + 8]):
      raise ValueError(f"{path}: bad length CRC at byte {pos}")
    rec = data[pos + 12:pos + 12 + n]
    if struct.unpack_from("<I", data, pos + 12 + n)[0] != _masked_crc(rec):
      raise ValueError(f"{path}: bad data CRC at byte {pos}")
    pos += 16 + n
    fields = _parse(rec)
    step = fields.get(2, [0])[0]
    for summary in fields.get(5, []):
      for value in _parse(summary).get(1, []):
        v = _parse(value)
        out.setdefault(v[1][0].decode(), []).append((step, v[2][0]))
  return out


def _parse(buf: bytes) -> dict:
  """Minimal protobuf wire parser: {field: [values]} (varint, fixed64/32, bytes)."""
  out, pos = {}, 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      val, pos = _read_varint(buf, pos)
    elif wire == 1:
      val, pos = struct.unpack_from("<d", buf, pos)[0], pos + 8
    elif wire == 5:
      val, pos = struct.unpack_from("<f", buf, pos)[0], pos + 4
    elif wire == 2:
      n, pos = _read_varint(buf, pos)
      val, pos = buf[pos:pos + n], pos + n
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")
    out.setdefault(field, []).append(val)
  return out


def _read_varint(buf, pos):
  shift = result = 0
  while True:
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    shift += 7
    if not b & 0x80:
      return result, pos


# --- FLOPs and MFU -----------------------------------------------------------------------------

# Dense bf16 peak FLOP/s per device, by `device_kind` substring (first match wins).
PEAK_FLOPS = (
    ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
    ("TPU v5p", 459e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v4", 275e12),
    ("TPU v6", 918e12),
    ("cpu", 1e11),  # a rough per-process guess; CPU MFU is only indicative
)


def peak_flops(device=None) -> float:
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "") or device.platform
  for name, flops in PEAK_FLOPS:
    if name.lower() in kind.lower() or name == device.platform:
      return flops
  return math.nan


def matmul_params(params) -> int:
  """Parameters used as matmul weights per token: every >= 2-D array except lookup tables
  (`embedding`) and convolutions / vision towers, which run per image, not per token."""
  n = 0
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    per_image = ("vision_model", "gen_vision_model", "vision_und_enc", "vision_gen_")
    if len(x.shape) >= 2 and "embedding" not in name and not name.startswith(per_image):
      n += int(np.prod(x.shape))
  return n


def flops_per_token(params, llm_config, seq_len: int) -> float:
  """Training FLOPs per token: 6 N + 12 L D T (PaLM appendix B)."""
  c = llm_config
  attn = 12 * c.num_layers * c.num_heads * c.head_dim * seq_len
  return 6.0 * matmul_params(params) + attn


# --- Reporting ---------------------------------------------------------------------------------


class Reporter:
  """Progress bar + TensorBoard scalars + tokens/s + MFU, on process 0 only."""

  def __init__(self, logdir: str | None, *, total_steps: int, start_step: int,
               tokens_per_step: int, flops_per_token: float, every: int = 1):
    self.main = jax.process_index() == 0
    self.every = max(int(every), 1)
    self.tokens_per_step, self.fpt = tokens_per_step, flops_per_token
    self.peak = peak_flops() * jax.device_count()
    self.writer = EventWriter(logdir) if (self.main and logdir) else None
    self.bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not self.main,
                         dynamic_ncols=True)
    self._t, self._step = None, start_step
    self.last: dict[str, Any] = {}

  def step(self, step: int, metrics: dict, lr: float) -> dict:
    """Records host metrics of `step`; returns them with throughput added.

    Throughput is the mean since the last logged step (a multiple of `every`), not since the
    previous call: where a backend runs steps synchronously (CPU), train.py reads a step's
    metrics only after the next one ran, and at a checkpoint or the last step two reports
    come back to back, so a per-call interval would be near zero there and double after.
    """
    now = time.perf_counter()
    out = {k: float(np.asarray(v)) for k, v in metrics.items()}
    out["lr"] = float(lr)
    if self._t is not None and step > self._step:
      dt = (now - self._t) / (step - self._step)
      out["tokens_per_s"] = self.tokens_per_step / dt
      out["mfu"] = out["tokens_per_s"] * self.fpt / self.peak
      out["step_time_s"] = dt
    if self._t is None or step % self.every == 0:
      self._t, self._step = now, step
    self.last = out
    self.bar.update(step - self.bar.n)
    if step % self.every == 0:
      if self.writer:
        self.writer.scalars(step, out)
      self.bar.set_postfix({k: f"{out[k]:.4g}" for k in ("loss", "grad_norm", "tokens_per_s")
                            if k in out}, refresh=False)
    return out

  def close(self):
    self.bar.close()
    if self.writer:
      self.writer.close()
