"""The optimizer: one optax chain built from the config, big_vision `optax.make` style.

Which parameters train, and at what learning rate, is decided by regex lists over parameter paths
(`language_model/model/layers/mlp/up_proj/kernel`):

  config.trainable   regexes; a parameter trains if any matches (default: everything).
  config.frozen      regexes; matching parameters never train (wins over `trainable`).
  config.lr_mults    [(regex, multiplier), ...]; the first match scales that parameter's LR.

Frozen parameters get `optax.set_to_zero()` and, because every stateful transform sits inside
`optax.multi_transform`, their slots in the Adam moments are `optax.MaskedNode()`: they hold no
optimizer memory at all (stage 1 of Janus freezes the whole LLM). Their gradients are never used,
so XLA drops the weight-gradient computations too.

The chain is: zero frozen grads -> clip by global norm (trainable grads only) -> per-group
AdamW with the group's scaled schedule. Gradient accumulation is done in `train_steps` (explicit,
so a "step" is always one optimizer update); parameter EMA is `ema_update` below.
"""

import math
import re
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

FROZEN = "frozen"


def path_str(path) -> str:
  """'a/b/c' from a jax tree path of dict keys."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _compile(patterns, what):
  out = []
  for p in patterns or ():
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise ValueError(f"bad regex {p!r} in config.{what}: {e}") from e
  return out


def param_labels(params, config) -> Any:
  """A tree like `params` of group labels: 'frozen' or 'lr_x<mult>'.

  Raises if a regex of `trainable`, `frozen` or `lr_mults` matches no parameter (a typo would
  otherwise silently train, or freeze, the wrong thing).
  """
  trainable = _compile(config.get("trainable"), "trainable")
  frozen = _compile(config.get("frozen"), "frozen")
  mults = [(re.compile(p), float(m)) for p, m in (config.get("lr_mults") or ())]
  used = set()

  def label(path, _):
    name = path_str(path)
    hit = lambda regs: [r for r in regs if r.fullmatch(name)]  # noqa: E731
    t, f = hit(trainable), hit(frozen)
    used.update(r.pattern for r in t + f)
    if f or (trainable and not t):
      return FROZEN
    for r, m in mults:
      if r.fullmatch(name):
        used.add(r.pattern)
        return f"lr_x{m:g}"
    return "lr_x1"

  labels = jax.tree_util.tree_map_with_path(label, params)
  unused = [r.pattern for r in trainable + frozen + [r for r, _ in mults] if r.pattern not in used]
  if unused:
    raise ValueError(f"optimizer regexes match no parameter: {unused}; e.g. a path is "
                     f"{path_str(jax.tree_util.tree_flatten_with_path(params)[0][0][0])!r}")
  return labels


def trainable_mask(labels) -> Any:
  """True where a parameter trains."""
  return jax.tree_util.tree_map(lambda l: l != FROZEN, labels)


def schedule(config) -> Callable[[jax.Array], jax.Array]:
  """Linear warm-up from 0 then constant (the papers' schedule), or cosine decay after warm-up."""
  lr, warm = float(config.lr), int(config.get("warmup_steps", 0))
  kind = config.get("schedule", "warmup_constant")
  if kind == "warmup_constant":
    if warm == 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm])
  if kind == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warm, 1), int(config.total_steps))
  raise ValueError(f"unknown config.schedule {kind!r}; use warmup_constant or warmup_cosine")


def make(config, params) -> tuple[optax.GradientTransformation, Any, Callable]:
  """Builds the optimizer for `params` (a tree of arrays or ShapeDtypeStructs).

  Args:
    config: the `config.optim` ConfigDict: lr, warmup_steps, schedule, b1, b2, eps,
      weight_decay, grad_clip, trainable, frozen, lr_mults.
  Returns:
    (tx, labels, sched): the transformation, the per-parameter group labels, the base schedule.
  """
  labels = param_labels(params, config)
  sched = schedule(config)
  groups = sorted({l for l in jax.tree_util.tree_leaves(labels) if l != FROZEN})

  def adamw(mult):
    return optax.chain(
        optax.scale_by_adam(b1=config.get("b1", 0.9), b2=config.get("b2", 0.95),
                            eps=config.get("eps", 1e-8)),
        optax.add_decayed_weights(config.get("weight_decay", 0.0)),
        optax.scale_by_learning_rate(lambda step: sched(step) * mult))

  gate = {FROZEN: optax.set_to_zero(), "train": optax.identity()}
  gate_labels = jax.tree_util.tree_map(lambda l: FROZEN if l == FROZEN else "train", labels)
  per_group = {g: adamw(float(g[len("lr_x"):])) for g in groups}
  per_group[FROZEN] = optax.set_to_zero()
  parts = [optax.multi_transform(gate, gate_labels)]
  if config.get("grad_clip"):
    parts.append(optax.clip_by_global_norm(float(config.grad_clip)))
  parts.append(optax.multi_transform(per_group, labels))
  return optax.chain(*parts), labels, sched


def warmup_cosine_adamw(lr: float, steps: int, warmup: int, b2: float = 0.95
                        ) -> optax.GradientTransformation:
  """The standalone trainers' optimizer (VQ tokenizer, encoder pretraining): clip the global norm
  to 1, AdamW without decay, LR warming up linearly for `warmup` steps (at most half the run)
  then decaying on a cosine to 10% at `steps`."""
  warm = max(1, min(warmup, steps // 2))
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(steps, warm + 1),
                                             end_value=0.1 * lr)
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(sched, b1=0.9, b2=b2, weight_decay=0.0))


def report_step(log: Callable[[str], None], what: str, i: int, steps: int, terms: dict,
                start: float, digits: int = 4) -> None:
  """The standalone trainers' log line `<what> step i/steps: k=v ... (Ns)`; raises
  FloatingPointError naming the step when the loss is not finite."""
  t = {k: float(v) for k, v in terms.items()}
  if not math.isfinite(t["loss"]):
    raise FloatingPointError(f"{what} loss is not finite at step {i}: {t}")
  log(f"{what} step {i}/{steps}: " + " ".join(f"{k}={v:.{digits}f}" for k, v in t.items())
      + f" ({time.time() - start:.0f}s)")


def ema_update(ema, params, decay: float):
  """ema <- decay * ema + (1 - decay) * params, in the EMA's (float32) dtype."""
  return jax.tree_util.tree_map(
      lambda e, p: (decay * e + (1.0 - decay) * p.astype(e.dtype)).astype(e.dtype), ema, params)


def tree_norm(tree) -> jax.Array:
  """Global L2 norm of a pytree, accumulated in float32 (MaskedNodes and Nones count as empty)."""
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype")]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def count_state_entries(opt_state) -> int:
  """Number of array elements held by the optimizer state (tests: frozen params hold none)."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(opt_state) if hasattr(x, "size"))


def frozen_paths(labels) -> list[str]:
  return [path_str(p) for p, l in jax.tree_util.tree_flatten_with_path(labels)[0] if l == FROZEN]

