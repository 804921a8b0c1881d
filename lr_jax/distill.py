"""The distillation step: LoRA-tune the expert to minimise KL(target || p_theta) at kept steps.

`distill_step(train_state, frozen, batch) -> (train_state, metrics)` is pure (`make_distill_step`
jits it, donating the state). Only the trainable tree (LoRA factors, plus any `full_finetune`
parameters) is differentiated; the frozen base is an argument, never donated, never copied. The loss
of an update is the mean over its supervised steps of KL(v || p_theta), v the stored sparse target;
the LM head and the log-softmax run only at the gathered supervised positions (`[S, D]` hidden ->
`[S, V]` float32 logits), never `[B, T, V]`. Micro-batches (the batch's leading axis) accumulate
gradients of the summed KL in a `lax.scan`; the sum is divided by the update's supervised-step count
once, so any split gives the same update.

Optimizer (the original recipe: transformers' AdamW, linear schedule and gradient clipping):
clip_by_global_norm(`max_grad_norm`, 1.0 by default) then AdamW (b1 0.9, b2 0.999, eps 1e-8, weight
decay 0) with the learning rate decaying linearly from `learning_rate` at update 0 to 0 at
`total_updates`, no warm-up.

Batch layout: see `lr_jax.data.packing`. Sharding: the frozen base as its logical axes say (FSDP under
the 'train' rules), rows over the data axes, LoRA factors and their optimizer moments replicated
(fully trained parameters, if any, keep their logical-axes sharding).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lr_jax.contrastive_math import kl_loss
from lr_jax.sharding import Layout, shard_state

# Batch arrays split over rows (axis 1, after the micro-batch axis); the rest are replicated.
ROW_ARRAYS = ("tokens", "positions", "mask")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """Optimizer and loss settings; `valid_vocab` (tokenizer length) excludes padding embedding rows."""
  total_updates: int
  learning_rate: float = 5e-5
  max_grad_norm: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  valid_vocab: int | None = None

  def __post_init__(self):
    if self.total_updates < 1:
      raise ValueError(f"DistillConfig.total_updates: expected >= 1, got {self.total_updates}")


@flax.struct.dataclass
class TrainState:
  """step: int32 [] updates done; params: the trainable nnx.State; opt_state: optax state of params;
  rng: uint32 [2] raw key data, the root of every dropout key (folded with step and micro-batch)."""
  step: jax.Array
  params: nnx.State
  opt_state: Any
  rng: jax.Array


def lr_schedule(config: DistillConfig) -> optax.Schedule:
  """learning_rate * (1 - update / total_updates), no warm-up (transformers' linear schedule)."""
  return optax.linear_schedule(config.learning_rate, 0.0, config.total_updates)


def make_optimizer(config: DistillConfig) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(config.max_grad_norm),
      optax.adamw(lr_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                  weight_decay=config.weight_decay))


def init_train_state(params: nnx.State, config: DistillConfig, seed: int, layout: Layout | None = None) -> TrainState:
  """Step 0 state for the trainable tree `params` (placed per its logical axes under `layout`).

  The state holds copies, so donating it to `distill_step` leaves the model's own arrays intact.
  """
  @jax.jit
  def build(params):  # every leaf pinned as distill_step pins its outputs: its first call compiles once
    return _keep_layout(TrainState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.copy, params),
                                   opt_state=make_optimizer(config).init(params),
                                   rng=jax.random.key_data(jax.random.key(seed))), layout)

  return build(shard_state(params, layout))


def shard_batch(batch: dict[str, np.ndarray], layout: Layout | None) -> dict[str, jax.Array]:
  """Host batch -> device arrays: rows over the data axes, supervision arrays replicated.

  Every process passes the same global batch (packing is deterministic and cheap); each keeps only
  its addressable shards, so this works unchanged on several hosts.
  """
  if layout is None:
    return {k: jnp.asarray(v) for k, v in batch.items()}
  out = {}
  for k, v in batch.items():
    axes = (None, "batch") if k in ROW_ARRAYS else ()
    sharding = layout.sharding(axes + (None,) * (v.ndim - len(axes)), v.shape)
    out[k] = jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
  return out


def make_loss_and_grads(graphdef: nnx.GraphDef, config: DistillConfig) -> Callable:
  """`loss_and_grads(params, frozen, batch, key) -> (loss, grads, supervised_steps)` (not jitted).

  loss: float32 [] mean KL over the batch's supervised steps; grads: d loss / d params (float32,
  params' tree); key: a typed PRNG key for dropout (folded with the micro-batch index).
  """

  def micro_kl_sum(params, frozen, micro, key):
    # copy=True: fresh Variables at this trace level, so dropout may advance its RNG counters here.
    model = nnx.merge(graphdef, params, frozen, copy=True)
    model = nnx.view(model, deterministic=False, raise_if_not_found=False)
    nnx.reseed(model, dropout=key)
    hidden, _ = model(micro["tokens"], micro["positions"], micro["mask"])
    picked = hidden[micro["sup_row"], micro["sup_pos"]]  # [S, D]
    logits = model.logits(picked, config.valid_vocab)  # [S, V] float32
    valid_vocab = config.valid_vocab or logits.shape[-1]
    kl = kl_loss(micro["target_ids"], micro["target_weights"], logits, valid_vocab)
    return jnp.sum(jnp.where(micro["sup_mask"], kl, 0.0))

  grad_fn = jax.value_and_grad(micro_kl_sum)

  def loss_and_grads(params, frozen, batch, key):
    def accumulate(carry, xs):
      micro, index = xs
      kl_sum, grads = grad_fn(params, frozen, micro, jax.random.fold_in(key, index))
      total, acc = carry
      return (total + kl_sum, jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    num_micro = batch["tokens"].shape[0]
    (kl_total, grads), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros),
                                        (batch, jnp.arange(num_micro)))
    n = jnp.sum(batch["sup_mask"]).astype(jnp.float32)
    denom = jnp.maximum(n, 1.0)
    return kl_total / denom, jax.tree.map(lambda g: g / denom, grads), n

  return loss_and_grads


def _keep_layout(tree: Any, layout: Layout | None) -> Any:
  """Pins every leaf to its logical-axes sharding (bare arrays: replicated), so the partitioner
  cannot hand back the trainable state in some other layout."""
  if layout is None:
    return tree

  def pin(x):
    if isinstance(x, nnx.Variable):
      axes = getattr(x, "logical_axes", None) or (None,) * x.ndim
      return x.replace(layout.constrain(x[...], axes))
    return layout.constrain(x, (None,) * jnp.ndim(x))

  return jax.tree.map(pin, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def distill_step(state: TrainState, frozen: nnx.State, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef,
                 config: DistillConfig, layout: Layout | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One LoRA update (pure; jit it with `make_distill_step`, or inside your own jitted function).

  state: `TrainState` of the trainable tree; frozen: the frozen base (from `lora.split_trainable`);
  batch: packed arrays (`lr_jax.data.packing`). The model's `remat` flag (set when it was built)
  decides rematerialisation; `layout` is the one the model was built with, and the new trainable and
  optimizer states keep the layout of `init_train_state(..., layout)`.
  Returns the new state and float32 scalar metrics: loss (mean KL over supervised steps),
  grad_norm (before clipping), lr (used for this update), supervised_steps, tokens (forward tokens,
  padding excluded).
  """
  optimizer = make_optimizer(config)
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  loss, grads, n = make_loss_and_grads(graphdef, config)(state.params, frozen, batch, key)
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss,
      "grad_norm": optax.global_norm(grads),
      "lr": jnp.asarray(lr_schedule(config)(state.step), jnp.float32),
      "supervised_steps": n,
      "tokens": jnp.sum(batch["mask"]).astype(jnp.float32),
  }
  return _keep_layout(state.replace(step=state.step + 1, params=params, opt_state=opt_state), layout), metrics


def make_distill_step(graphdef: nnx.GraphDef, config: DistillConfig, layout: Layout | None = None) -> Callable:
  """Jitted `step(state, frozen, batch) -> (state, metrics)` of `distill_step`; `state` is donated."""
  return jax.jit(functools.partial(distill_step, graphdef=graphdef, config=config, layout=layout),
                 donate_argnums=(0,))
