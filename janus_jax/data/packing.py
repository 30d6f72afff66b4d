"""Packing examples into fixed-shape rows with segment ids and per-segment positions.

Greedy and sequential: examples fill row 0 in arrival order until the next one does not fit
(tokens or image capacity), then row 1, ...; the example that fits in no remaining row is handed
back to the caller and opens the next batch. Because the leftover is always the *next* example
of the stream, the pipeline's resumable state is just "the loader position before the leftover"
(see `pipeline.Iterator.get_state`); a first-fit packer would need to checkpoint its buffer.

Attention isolation is the consumer's job, with what we provide: `segment_ids` (1, 2, ... per
example, 0 on padding) give the block-diagonal causal mask `seg[q] == seg[k] != 0 and k <= q`, and
`positions` restart at 0 in every segment, so no token ever sees another example.
"""

import numpy as np

# Keys copied token-wise from an example into its row slice.
_TOKEN_KEYS = ("input_ids", "targets", "text_loss", "image_loss", "images_seq_mask", "gen_mask",
               "image_codes")


class BatchBuilder:
  """Accumulates examples into a (rows, seq_len) batch.

  Args:
    rows: B, rows per batch.
    seq_len: L, tokens per row.
    max_images: M, understanding images per row.
    slots_per_image: embedding slots per image (P, or P + 1 for JanusFlow).
    image_size: S.
    pad_id: id written into padding positions.
    flow_images: m, JanusFlow generation images per row (0: no flow fields in the batch).
    latent_shape: (H, W, Z) of a flow latent. flow_pixels: also pack the clean images.
  """

  def __init__(self, rows: int, seq_len: int, max_images: int, slots_per_image: int,
               image_size: int, pad_id: int, flow_images: int = 0,
               latent_shape: tuple[int, ...] = (), flow_pixels: bool = False):
    self.rows, self.seq_len, self.max_images = rows, seq_len, max_images
    self.flow_images = flow_images
    b, l = rows, seq_len
    self.batch = {
        "input_ids": np.full((b, l), pad_id, np.int32),
        "targets": np.zeros((b, l), np.int32),
        "text_loss": np.zeros((b, l), bool),
        "image_loss": np.zeros((b, l), bool),
        "images_seq_mask": np.zeros((b, l), bool),
        "gen_mask": np.zeros((b, l), bool),
        "image_codes": np.zeros((b, l), np.int32),
        "segment_ids": np.zeros((b, l), np.int32),
        "positions": np.zeros((b, l), np.int32),
        "kinds": np.full((b, l), -1, np.int32),
        "pixel_values": np.zeros((b, max_images, image_size, image_size, 3), np.float32),
        "images_emb_mask": np.zeros((b, max_images, slots_per_image), bool),
    }
    self.token_keys = _TOKEN_KEYS
    if flow_images:
      self.token_keys += ("flow_seq_mask",)
      self.batch["flow_seq_mask"] = np.zeros((b, l), bool)
      self.batch["flow_image_mask"] = np.zeros((b, flow_images), bool)
      self.batch["flow_latents"] = np.zeros((b, flow_images) + tuple(latent_shape), np.float32)
      if flow_pixels:
        self.batch["flow_pixels"] = np.zeros((b, flow_images, image_size, image_size, 3),
                                             np.float32)
    self.row = 0
    self.fill = 0  # tokens used in the current row
    self.images = 0  # images used in the current row
    self.flows = 0  # flow (generation) images used in the current row
    self.segments = 0  # segments in the current row
    self.examples = 0
    self.tokens = 0

  def _fits(self, t: int, n: int, f: int) -> bool:
    return (self.fill + t <= self.seq_len and self.images + n <= self.max_images
            and self.flows + f <= self.flow_images)

  def add(self, ex: dict) -> bool:
    """Places `ex`; False (nothing changed) when it fits in no remaining row of this batch."""
    t, n = len(ex["input_ids"]), len(ex["pixels"])
    f = len(ex["flow_latents"]) if self.flow_images else 0
    if t > self.seq_len or n > self.max_images or f > self.flow_images:
      raise ValueError(f"example of {t} tokens / {n} images / {f} flow images can never fit a "
                       f"row of {self.seq_len} / {self.max_images} / {self.flow_images}")
    if not self._fits(t, n, f):
      if self.row + 1 >= self.rows:
        return False
      self.row, self.fill, self.images, self.flows, self.segments = self.row + 1, 0, 0, 0, 0
    r, s = self.row, slice(self.fill, self.fill + t)
    for k in self.token_keys:
      self.batch[k][r, s] = ex[k]
    self.segments += 1
    self.batch["segment_ids"][r, s] = self.segments
    self.batch["positions"][r, s] = np.arange(t, dtype=np.int32)
    self.batch["kinds"][r, s] = ex["kind"]
    if n:
      self.batch["pixel_values"][r, self.images:self.images + n] = ex["pixels"]
      self.batch["images_emb_mask"][r, self.images:self.images + n] = True
    if f:
      self.batch["flow_image_mask"][r, self.flows:self.flows + f] = True
      self.batch["flow_latents"][r, self.flows:self.flows + f] = ex["flow_latents"]
      if "flow_pixels" in self.batch:
        self.batch["flow_pixels"][r, self.flows:self.flows + f] = ex["flow_pixels"]
    self.fill += t
    self.images += n
    self.flows += f
    self.examples += 1
    self.tokens += t
    return True

  @property
  def empty(self) -> bool:
    return self.examples == 0

  def finish(self) -> dict:
    return self.batch


def attention_mask(segment_ids: np.ndarray) -> np.ndarray:
  """(B, L, L) bool causal block-diagonal mask implied by `segment_ids` (tests, reference use)."""
  seg = np.asarray(segment_ids)
  same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0)
  causal = np.tril(np.ones(seg.shape[-1:] * 2, bool))
  return same & causal[None]
