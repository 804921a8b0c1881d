"""LoRA adapters for `Transformer` projections: parameters, apply, merge and the PEFT key mapping.

A LoRA on a projection with kernel `[*in, *out]` holds A `[*in, r]` (PEFT's default init:
kaiming-uniform with a=sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))) and B `[r, *out]` (zeros),
and adds `(alpha / r) * dropout(x) @ A @ B` to the frozen projection, as PEFT's `lora.Linear` does.
A and B are `LoRAParam`s, a Variable type of their own, so `nnx.split(model, LoRAParam, ...)`
separates the trainable tree from the frozen base. They are float32 whatever the base dtype, and
replicated on the mesh (rank-r factors are small next to the FSDP-sharded base).

In PEFT's layout a Linear weight is `[out, in]`: A is `lora_A.weight [r, in]`, B `lora_B.weight
[out, r]`, with multi-axis `in`/`out` (heads x head_dim) flattened in row-major order, exactly as
`hf_io` flattens the base kernels.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lr_jax.models.transformer import Transformer

# Our module name -> (the DecoderLayer attribute that holds it, its HF/PEFT module path).
TARGETS = {
    "q_proj": ("attn", "self_attn.q_proj"), "k_proj": ("attn", "self_attn.k_proj"),
    "v_proj": ("attn", "self_attn.v_proj"), "o_proj": ("attn", "self_attn.o_proj"),
    "gate_proj": ("mlp", "mlp.gate_proj"), "up_proj": ("mlp", "mlp.up_proj"), "down_proj": ("mlp", "mlp.down_proj"),
}


class LoRAParam(nnx.Param):
  """A trainable LoRA factor (A or B); a distinct type so that filters can select the adapter."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Which projections get adapters, and their shape.

  targets: module names from `TARGETS`; rank r; alpha (the delta is scaled by alpha / r); dropout
  on the adapter's input during training; full_finetune: substrings of parameter paths
  ('layers/0/attn/q_proj/kernel', 'embed', ...) whose base parameters are trained fully as well.
  """
  targets: tuple[str, ...] = ("q_proj", "v_proj")
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.05
  full_finetune: tuple[str, ...] = ()

  def __post_init__(self):
    unknown = [t for t in self.targets if t not in TARGETS]
    if unknown or not self.targets:
      raise ValueError(f"LoRAConfig.targets: {list(self.targets)} must be a non-empty subset of {list(TARGETS)}")
    if self.rank < 1:
      raise ValueError(f"LoRAConfig.rank: expected >= 1, got {self.rank}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LoRAConfig.dropout: expected a rate in [0, 1), got {self.dropout}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


class LoRA(nnx.Module):
  """The low-rank delta for one projection: x `[..., *in]` -> `[..., *out]` in float32."""

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], *, rank: int, alpha: float,
               dropout: float, rngs: nnx.Rngs):
    bound = 1.0 / math.sqrt(math.prod(in_shape))
    a = jax.random.uniform(rngs.params(), (*in_shape, rank), jnp.float32, -bound, bound)
    self.a = LoRAParam(a, logical_axes=(None,) * len(in_shape) + ("lora_rank",))
    self.b = LoRAParam(jnp.zeros((rank, *out_shape), jnp.float32),
                       logical_axes=("lora_rank",) + (None,) * len(out_shape))
    self.scale = alpha / rank
    # Evaluation mode by default, so sampling and export never drop anything; training flips it.
    # The stream is tagged 'dropout' even when `rngs` only has a default stream, so that
    # `nnx.reseed(model, dropout=key)` reaches it.
    stream = nnx.RngStream(rngs["dropout"](), tag="dropout")
    self.dropout = nnx.Dropout(dropout, deterministic=True, rngs=stream)

  def __call__(self, x: jax.Array) -> jax.Array:
    a, b = self.a[...], self.b[...]
    n_in = a.ndim - 1
    x = self.dropout(x.astype(a.dtype))
    h = jax.lax.dot_general(x, a, ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
    return jnp.tensordot(h, b, axes=1) * self.scale


def _target_projs(model: Transformer, targets: Sequence[str]):
  """(layer index, target name, Proj) for every targeted projection."""
  for i, layer in enumerate(model.layers):
    for name in targets:
      yield i, name, getattr(getattr(layer, TARGETS[name][0]), name)


def apply_lora(model: Transformer, config: LoRAConfig, *, rngs: nnx.Rngs) -> None:
  """Sets `proj.lora` on every targeted projection of `model` (in place).

  `rngs` supplies the 'params' stream for A and the 'dropout' stream (or 'default') for dropout.
  """
  for i, name, proj in _target_projs(model, config.targets):
    if proj.lora is not None:
      raise ValueError(f"layers.{i}.{name}: already has a LoRA adapter")
    kernel = proj.kernel[...]
    # `Proj.lora` starts as None, a static attribute; nnx.data makes the adapter part of the state.
    proj.lora = nnx.data(LoRA(kernel.shape[:proj.in_ndim], kernel.shape[proj.in_ndim:], rank=config.rank,
                              alpha=config.alpha, dropout=config.dropout, rngs=rngs))


def adapter_scale(model: Transformer) -> float:
  """The alpha / r shared by every adapter of `model`."""
  scales = {m.scale for _, m in nnx.iter_graph(model) if isinstance(m, LoRA)}
  if len(scales) != 1:
    raise ValueError(f"model has adapters with scales {sorted(scales)}; expected exactly one scale "
                     "(call apply_lora once)")
  return scales.pop()


def path_str(path: Sequence) -> str:
  """'layers/0/attn/q_proj/kernel' for a state path."""
  return "/".join(str(p) for p in path)


def trainable_filter(config: LoRAConfig):
  """nnx filter of the trained Variables: LoRA factors and the `full_finetune` parameters."""
  subs = config.full_finetune

  def fully_trained(path, x):
    return isinstance(x, nnx.Param) and any(s in path_str(path) for s in subs)

  return nnx.Any(LoRAParam, fully_trained)


def split_trainable(model: Transformer, config: LoRAConfig) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """`(graphdef, trainable, frozen)`: `nnx.merge(graphdef, trainable, frozen)` rebuilds the model.

  trainable: LoRA factors plus any `full_finetune` parameters; frozen: everything else (the base
  weights and the dropout RNG streams).
  """
  graphdef, trainable, frozen = nnx.split(model, trainable_filter(config), ...)
  paths = [path_str(p) for p, _ in nnx.to_flat_state(trainable)]
  unmatched = [s for s in config.full_finetune if not any(s in p for p in paths)]
  if unmatched:
    raise ValueError(f"LoRAConfig.full_finetune: {unmatched} match no parameter path (e.g. 'embed', "
                     f"'layers/0/mlp')")
  if not any(p.endswith("lora/a") for p in paths):
    raise ValueError("model has no LoRA adapters: call apply_lora first")
  return graphdef, trainable, frozen


def merge_lora(state: nnx.State, scale: float) -> nnx.State:
  """The base state with every adapter folded in: kernel += scale * A @ B (in float32, cast back).

  `state` is a whole model state (or one holding at least the adapters and their kernels); the
  result has no LoRA entries.
  """
  flat = dict(nnx.to_flat_state(state))
  out = []
  for path, var in flat.items():
    if "lora" in path:
      continue
    a_path = path[:-1] + ("lora", "a")
    if path[-1] == "kernel" and a_path in flat:
      a = flat[a_path][...]
      b = flat[path[:-1] + ("lora", "b")][...]
      kernel = var[...]
      delta = jnp.matmul(a.reshape(-1, a.shape[-1]).astype(jnp.float32), b.reshape(b.shape[0], -1).astype(jnp.float32),
                         precision=jax.lax.Precision.HIGHEST)
      var = var.replace((kernel.astype(jnp.float32) + scale * delta.reshape(kernel.shape)).astype(kernel.dtype))
    out.append((path, var))
  return nnx.from_flat_state(out)


def peft_key(layer: int, target: str, factor: str) -> str:
  """PEFT's saved name of one factor ('A' or 'B'):
  base_model.model.model.layers.{layer}.self_attn.q_proj.lora_A.weight and the like."""
  return f"base_model.model.model.layers.{layer}.{TARGETS[target][1]}.lora_{factor}.weight"


def _lora_leaves(state: nnx.State):
  """(layer, target, 'A'|'B', Variable) for every LoRA factor in `state`."""
  for path, var in nnx.to_flat_state(state):
    if len(path) == 6 and path[0] == "layers" and path[4] == "lora":
      yield path[1], path[3], path[5].upper(), var


def adapter_shapes(state: nnx.State) -> tuple[set[str], set[int]]:
  """The targets that have adapters in `state`, and their ranks (A is `[in..., r]`)."""
  leaves = [(target, var) for _, target, factor, var in _lora_leaves(state) if factor == "A"]
  return {target for target, _ in leaves}, {var.shape[-1] for _, var in leaves}


def to_peft_tensors(state: nnx.State) -> dict[str, np.ndarray]:
  """PEFT-named float32 host arrays of the adapters in `state`: A as `[r, in]`, B as `[out, r]`."""
  out = {}
  for layer, target, factor, var in _lora_leaves(state):
    x = np.asarray(jax.device_get(var[...]), np.float32)
    x = x.reshape(-1, x.shape[-1]).T if factor == "A" else x.reshape(x.shape[0], -1).T
    out[peft_key(layer, target, factor)] = np.ascontiguousarray(x)
  return out


def from_peft_tensors(state: nnx.State, tensors: dict[str, np.ndarray], source: str) -> nnx.State:
  """`state` with its LoRA factors replaced by PEFT-named `tensors` (shapes checked; names must match 1:1)."""
  used = set()

  def fill(path, var):
    if len(path) != 6 or path[4] != "lora":
      return var
    key = peft_key(path[1], path[3], path[5].upper())
    if key not in tensors:
      raise ValueError(f"{source}: missing tensor {key}")
    used.add(key)
    shape = var.shape
    x = np.asarray(tensors[key], np.float32)
    want = (shape[-1], math.prod(shape[:-1])) if path[5] == "a" else (math.prod(shape[1:]), shape[0])
    if x.shape != want:
      raise ValueError(f"{source}: tensor {key} has shape {x.shape}, the model expects {want}")
    x = x.T.reshape(shape)
    return var.replace(jnp.asarray(x, var.dtype))

  new = nnx.map_state(fill, state)
  extra = sorted(k for k in tensors if k not in used)
  if extra:
    more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
    raise ValueError(f"{source}: unexpected tensor {extra[0]}{more} that the model's LoRA targets do not hold")
  return new

