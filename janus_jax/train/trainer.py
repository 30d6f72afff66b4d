r"""The trainer: config -> mesh -> model -> optimizer -> state born sharded (or restored) ->
jitted step with explicit shardings and donation -> loop with checkpoints, metrics and clean
preemption. `python train.py` runs `train`; so does each stage of the shapes demo.

Which model (init_from, model.config_json or a named variant) and which data: see the docstring
of `janus_jax.train.config`.
"""

import dataclasses
import functools
import json
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp

from janus_jax import cli
from janus_jax import sharding
from janus_jax.convert import driver
from janus_jax.data import pipeline
from janus_jax.models import janus
from janus_jax.models import janusflow
from janus_jax.models import llama
from janus_jax.train import checkpoint
from janus_jax.train import metrics as metrics_lib
from janus_jax.train import optim
from janus_jax.train import train_steps

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# ----------------------------------------------------------------------------------------------
# Model.
# ----------------------------------------------------------------------------------------------


def model_config(m, init_from: str = ""):
  """The model's config dataclass and family for `config.model` (see `janus_jax.train.config`).

  Precedence: the converted checkpoint `init_from` (its config.json: the exact sizes its weights
  have), then `m.config_json` (a converted checkpoint's config.json or a bare
  `janus_jax.convert.driver.config_to_json` dict, e.g. a custom small model), then the named
  `m.variant` of `m.family`. `m.remat_policy` applies in every case.
  """
  path = f"{init_from}/config.json" if init_from else m.get("config_json", "")
  remat = m.get("remat_policy", "none")
  if path:
    cfg = _config_from_file(path)
    family = getattr(cfg, "family", "llm") if not isinstance(cfg, llama.Config) else "llm"
    if m.get("family") and m.family != family:
      raise ValueError(f"config.model.family={m.family!r} but {path} holds a {family!r} model")
  else:
    family = m.family
    if family == "llm":
      cfg = llama.get_config(m.variant)
    elif family in ("janus", "janusflow"):
      cfg = {"janus": janus, "janusflow": janusflow}[family].get_config(m.variant)
    else:
      raise ValueError(f"unknown config.model.family {family!r}; use llm, janus or janusflow")
  if family == "llm":
    return dataclasses.replace(cfg, remat_policy=remat), family
  return dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, remat_policy=remat)), family


def _config_from_file(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"model config {path}: cannot read it as JSON: {e}") from e
  d = meta.get("config", meta)  # a converted checkpoint's config.json wraps the config
  if not isinstance(d, dict) or "class" not in d or "fields" not in d:
    raise ValueError(f"model config {path}: expected a converted checkpoint's config.json or "
                     "a janus_jax.convert.driver.config_to_json dict ({\"class\", \"fields\"})")
  return driver.config_from_json(d)


def build_model(config):
  """(module, family, init_fn(rng) -> boxed params) for config.model."""
  m = config.model
  cfg, family = model_config(m, config.get("init_from", ""))
  kw = dict(dtype=DTYPES[m.get("dtype", "float32")],
            param_dtype=DTYPES[m.get("param_dtype", "float32")])
  if family == "llm":
    module = llama.Model(cfg, **kw)
    init = lambda rng: module.init(rng, jnp.zeros((1, 4), jnp.int32),  # noqa: E731
                                   method=llama.Model.init_all)["params"]
    return module, family, init
  if family == "janus":
    module = janus.Model(cfg, **kw)
    init = lambda rng: module.init(rng, *janus.init_inputs(cfg),  # noqa: E731
                                   method=janus.Model.init_all)["params"]
    return module, family, init
  module = janusflow.Model(cfg, **kw)
  proj = train_steps.repa_projector(cfg, config, **kw)

  def init(rng):
    r1, r2 = jax.random.split(rng)
    params = module.init(r1, *janusflow.init_inputs(cfg), method=janusflow.Model.init_all)
    tap = jnp.zeros((1, 1, cfg.llm.hidden_size), kw["dtype"])
    return {**params["params"], train_steps.REPA: proj.init(r2, tap)["params"]}
  return module, family, init


def llm_config(module):
  return module.config if not hasattr(module.config, "llm") else module.config.llm


# ----------------------------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------------------------


def make_data(config, module):
  """This process's iterator of local batches (a dict of numpy arrays per step)."""
  d = config.data
  rows = sharding.local_rows(d.batch_size)
  if d.source == "synthetic":
    mc = module.config
    janus_sizes = {}
    if hasattr(mc, "vision"):
      janus_sizes = dict(image_size=mc.vision.image_size, und_tokens=mc.image_tokens,
                         gen_tokens=d.get("gen_tokens", 16),
                         code_vocab=getattr(mc, "image_token_size", 0))
    if getattr(mc, "family", "") == "janusflow":
      side = mc.gen_latent_size
      janus_sizes.update(gen_tokens=mc.gen_tokens(side),
                         latent_shape=(side, side, mc.latent_channels))
    return train_steps.SyntheticData(
        batch_size=d.batch_size, seq_len=d.seq_len, vocab=llm_config(module).vocab_size,
        kinds=tuple(d.kinds), seed=config.seed, fixed=d.get("fixed", False), rows=rows,
        **janus_sizes)
  if d.source == "pipeline":
    return _pipeline(config, module.config)
  raise ValueError(f"unknown config.data.source {d.source!r}; use synthetic or pipeline")


def _pipeline(config, model_cfg):
  """The grain pipeline of `janus_jax.data` (`pipeline.make_train_iterator`) over `config.data`."""
  d = config.data.to_dict()
  d.setdefault("seed", config.seed)
  return pipeline.make_train_iterator(_Fields(d), model_cfg)


class _Fields(dict):
  """A dict read by attribute too (what `make_train_iterator` expects of `data`)."""
  __getattr__ = dict.__getitem__


# ----------------------------------------------------------------------------------------------
# State, born sharded.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
  """Everything `train` builds before the loop (tests reuse it)."""
  mesh: jax.sharding.Mesh
  rules: tuple
  module: nn.Module
  family: str
  tx: object
  labels: object
  schedule: object
  abstract_state: object
  state_shardings: object
  init_state: object  # jitted () -> TrainState, born sharded


def setup(config, devices=None) -> Setup:
  """Mesh, model, optimizer and the sharded abstract state; `devices` defaults to all."""
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = sharding.rules_from_config(config.get("sharding_rules"))
  module, family, init_params = build_model(config)

  with sharding.activate(mesh, rules):
    boxed = jax.eval_shape(init_params, jax.random.key(0))
  params_sh = sharding.logical_shardings(boxed, mesh, rules)
  abstract_params = nn.unbox(boxed)
  tx, labels, sched = optim.make(config.optim, abstract_params)
  use_ema = bool(config.get("ema_decay", 0.0))

  def init(rng):
    params = nn.unbox(init_params(rng))
    return train_steps.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
        ema_params=params if use_ema else None)

  abstract_state = jax.eval_shape(init, jax.random.key(0))
  state_sh = train_steps.TrainState(
      step=sharding.replicated(mesh), params=params_sh,
      opt_state=sharding.like_params(abstract_state.opt_state, params_sh, mesh),
      ema_params=params_sh if use_ema else None)
  rng = jax.random.key(config.seed)
  jit_init = jax.jit(init, out_shardings=state_sh)

  def init_state():
    with sharding.activate(mesh, rules):
      state = jit_init(rng)
    if config.get("init_from"):
      loaded = checkpoint.load_converted_params(config.init_from, abstract_params, params_sh)
      state = state.replace(params={**state.params, **loaded})
      if use_ema:
        state = state.replace(ema_params=state.params)
    return state

  return Setup(mesh, rules, module, family, tx, labels, sched, abstract_state, state_sh,
               init_state)


def make_step(config, s: Setup, batch_example: dict):
  """The jitted train step with explicit in/out shardings; the state is donated."""
  terms_fn = train_steps.bind_terms(s.module, s.family, config)
  step = functools.partial(train_steps.train_step, terms_fn=terms_fn, tx=s.tx,
                           trainable=optim.trainable_mask(s.labels), config=config)
  batch_sh = sharding.batch_shardings(batch_example, s.mesh)
  rep = sharding.replicated(s.mesh)
  jitted = jax.jit(step, in_shardings=(s.state_shardings, batch_sh, rep),
                   out_shardings=(s.state_shardings, rep), donate_argnums=(0,))

  def run(state, batch, rng):
    with sharding.activate(s.mesh, s.rules):
      return jitted(state, batch, rng)
  return run


def host_metrics(m: dict) -> dict:
  """Replicated device scalars -> host floats (works when arrays span several processes)."""
  return {k: float(v.addressable_data(0)) for k, v in m.items()}


# ----------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------


def train(config, workdir: str, data=None, return_params: bool = False, devices=None) -> dict:
  """Trains until config.total_steps or a stop signal. Returns the last host metrics + status.

  `data` replaces the configured iterator (it needs get_state / set_state for checkpoints).
  `return_params`: also return the final parameters (under "params"), for a caller that runs
  stages back to back (the shapes demo, `janus_jax.shapes_demo.recipe`). `devices`: the mesh's
  devices (default all).
  """
  s = setup(config, devices)
  if config.data.batch_size % sharding.batch_divisor(s.mesh):
    raise ValueError(f"data.batch_size={config.data.batch_size} must be a multiple of the "
                     f"batch mesh axes' size {sharding.batch_divisor(s.mesh)}")
  data = data if data is not None else make_data(config, s.module)
  ckpt = checkpoint.Checkpointer(f"{workdir}/checkpoints", save_every=config.ckpt.every,
                                 keep=config.ckpt.keep,
                                 use_async=config.ckpt.get("use_async", True))

  # --- Restore or initialise ---
  restored = ckpt.restore(checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings))
  if restored is not None:
    start, state, data_state = restored
    checkpoint.set_iterator_state(data, data_state)
    cli.say(f"resumed from step {start} of {workdir}")
  else:
    start, state = 0, s.init_state()

  first = next(data)
  step_fn = make_step(config, s, first)
  base_rng = jax.random.key(config.seed + 1)
  tokens = config.data.batch_size * config.data.seq_len
  reporter = metrics_lib.Reporter(
      f"{workdir}/tb", total_steps=config.total_steps, start_step=start, tokens_per_step=tokens,
      flops_per_token=metrics_lib.flops_per_token(
          s.abstract_state.params, llm_config(s.module), config.data.seq_len),
      every=config.get("log_every", 1))

  # --- Train ---
  # `finally`: even when a non-finite metric stops the run, in-flight async saves of earlier
  # (good) steps complete before the error propagates.
  out, batch, stopped, step = {}, first, False, start
  try:
    with checkpoint.PreemptionGuard() as guard:
      pending = None
      for step in range(start + 1, config.total_steps + 1):
        if batch is None:
          batch = next(data)
        gbatch = sharding.global_batch(batch, s.mesh)
        batch = None
        state, m = step_fn(state, gbatch, jax.random.fold_in(base_rng, step))
        if pending is not None:  # the previous step's metrics, read while this step runs
          out = _report(reporter, s, *pending)
        pending = (step, m)
        stop = guard.should_stop()
        if stop or step == config.total_steps or ckpt.should_save(step):
          out = _report(reporter, s, *pending)  # never save a state whose loss is not finite
          pending = None
          ckpt.save(step, state, checkpoint.iterator_state(data))
        if stop:
          stopped = True
          break
      if pending is not None:
        out = _report(reporter, s, *pending)
  finally:
    ckpt.close()
    reporter.close()
  out.update(step=step, stopped=stopped)
  if return_params:
    out["params"] = state.params
  return out


def _report(reporter, s, step, m):
  hm = host_metrics(m)
  metrics_lib.check_finite(hm, step)
  return reporter.step(step, hm, float(s.schedule(step - 1)))
