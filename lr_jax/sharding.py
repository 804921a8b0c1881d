"""The one logical-axis rules table, mesh construction and sharding helpers.

Parameters and activations carry logical axis names ('embed', 'heads', 'batch', ...). A `Layout`
(a mesh plus a rules table) turns names into `PartitionSpec`s over the mesh axes
('data', 'fsdp', 'tensor'). Training and sampling use two rule sets over the same code.
Also here: starting `jax.distributed`, and the multi-host helpers that assemble host-local batches
into global arrays and bring results (and shape decisions) back to every host.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or tuple of mesh axes, or None for replicated).
TRAIN_RULES: dict[str, Any] = {
    # parameters: fully sharded over fsdp, tensor-parallel over tensor
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "lora_rank": None,
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    "cache_length": None,
}

# Sampling decodes one token at a time: fully sharded weights would be all-gathered every step,
# so weights are only tensor-parallel (replicated over data/fsdp) and the batch takes data+fsdp.
SAMPLE_RULES: dict[str, Any] = {**TRAIN_RULES, "embed": None}

RULE_SETS = {"train": TRAIN_RULES, "sample": SAMPLE_RULES}


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axes; one -1 in `shape` takes the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != 3:
    raise ValueError(f"mesh shape must have 3 entries (data, fsdp, tensor), got {tuple(shape)}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {tuple(shape)} has more than one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh shape {tuple(shape)} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, {len(devices)} available")
  # Explicit axes are jax.make_mesh's default now; our specs are hints to the partitioner.
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


@dataclasses.dataclass(frozen=True)
class Layout:
  """A mesh and a rules table. Hashable, so a model can hold it as a static attribute."""
  mesh: Mesh
  rules: tuple[tuple[str, Any], ...]

  @classmethod
  def create(cls, mesh: Mesh, rules: dict[str, Any] | str = "train") -> "Layout":
    """`mesh` must name the axes 'data', 'fsdp' and 'tensor' (`make_mesh` builds one); Explicit axes
    (`jax.make_mesh`'s default) are taken as Auto, since the rules' specs are partitioner hints."""
    missing = [a for a in MESH_AXES if a not in mesh.shape]
    if missing:
      raise ValueError(f"Layout: the mesh has axes {tuple(mesh.axis_names)}, lacking {', '.join(map(repr, missing))}; "
                       f"expected {MESH_AXES} (lr_jax.sharding.make_mesh builds one)")
    if any(t != AxisType.Auto for t in mesh.axis_types):
      mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    table = RULE_SETS[rules] if isinstance(rules, str) else rules
    return cls(mesh, tuple(sorted(table.items())))

  def spec(self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None) -> PartitionSpec:
    """PartitionSpec for `logical_axes`: a dim is split over the longest prefix of its rule's mesh axes
    whose product divides it (none: replicated).

    Refuses to map two logical axes of one array onto the same mesh axis.
    """
    table = dict(self.rules)
    used: set[str] = set()
    out = []
    for i, name in enumerate(logical_axes):
      if name is None:
        out.append(None)
        continue
      if name not in table:
        raise KeyError(f"logical axis {name!r} has no rule; known: {', '.join(sorted(table))}")
      target = table[name]
      axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
      axes = tuple(a for a in axes if self.mesh.shape[a] > 1)
      if shape is not None:
        fits = [n for n in range(len(axes), -1, -1) if shape[i] % math.prod(self.mesh.shape[a] for a in axes[:n]) == 0]
        if fits[0] < len(axes):
          logging.debug("axis %s (dim %d) not divisible by mesh %s: split over %s", name, shape[i], axes, axes[:fits[0]])
        axes = axes[:fits[0]]
      clash = used.intersection(axes)
      if clash:
        raise ValueError(f"logical axes {tuple(logical_axes)} map mesh axis {sorted(clash)} twice")
      used.update(axes)
      out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)

  def sharding(self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
    """The NamedSharding of `spec`, trailing unsplit dims left out as jit hands shardings back (P(),
    not P(None, None)): an array placed with it and one a jitted step returns hit the same cache entry."""
    spec = list(self.spec(logical_axes, shape))
    while spec and spec[-1] is None:
      spec.pop()
    return NamedSharding(self.mesh, PartitionSpec(*spec))

  def constrain(self, x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names (on every backend, CPU included)."""
    return jax.lax.with_sharding_constraint(x, self.sharding(logical_axes, x.shape))

  @property
  def data_size(self) -> int:
    """How many ways the batch is split."""
    return self.mesh.shape["data"] * self.mesh.shape["fsdp"]


def check_batch_layout(layout: Layout | None, *model_layouts: Layout | None, where: str) -> None:
  """Refuses, in one line, a batch layout whose mesh is not the one the models' weights live on."""
  for own in model_layouts:
    if layout is not None and own is not None and layout.mesh != own.mesh:
      raise ValueError(f"{where}: layout's mesh {dict(layout.mesh.shape)} is not the one the model's weights are "
                       f"on ({dict(own.mesh.shape)}); pass a layout over the model's mesh, or none")


def constrain(layout: Layout | None, x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """`layout.constrain`, or the identity without a layout (single device)."""
  return x if layout is None else layout.constrain(x, logical_axes)


def state_shardings(state: Any, layout: Layout) -> Any:
  """NamedSharding per leaf of an nnx State whose Variables carry `logical_axes` metadata."""
  def one(v):
    axes = getattr(v, "logical_axes", None)
    shape = v.shape if hasattr(v, "shape") else np.shape(v.get_value())
    if axes is None:
      axes = (None,) * len(shape)
    return v.replace(layout.sharding(axes, shape))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_state(state: Any, layout: Layout | None) -> Any:
  """Places every leaf of `state` per its logical axes (a no-op without a layout)."""
  if layout is None:
    return state
  return jax.device_put(state, state_shardings(state, layout))


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize` when a multi-process run is configured.

  Configured by JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (launch/gpu_multihost.sh),
  or LR_JAX_DISTRIBUTED=1 (launch/tpu_vm.sh) or an srun step of several tasks, where jax reads the
  cluster's environment (SLURM_STEP_NUM_TASKS: a lone `python` in a multi-task sbatch script, which
  has SLURM_NTASKS but no step, runs as one process instead of waiting for the others).
  """
  coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
  num_processes = int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
  process_id = int(os.environ["JAX_PROCESS_ID"]) if os.environ.get("JAX_PROCESS_ID") else None
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
    # CPU-only runs (tests, CPU clusters) need a collectives backend across processes.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator and num_processes and num_processes > 1:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  elif os.environ.get("LR_JAX_DISTRIBUTED") == "1" or os.environ.get("SLURM_STEP_NUM_TASKS", "1") != "1":
    jax.distributed.initialize()  # the cluster (TPU VM slice, SLURM) describes itself


def host_local_to_global(batch: Any, layout: Layout) -> Any:
  """Assembles per-process numpy batches (split along axis 0) into global jax.Arrays."""

  def one(x):
    x = np.asarray(x)
    sharding = layout.sharding((("batch",) + (None,) * (x.ndim - 1))[:x.ndim])
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  return jax.tree.map(one, batch)


def fetch_global(x: jax.Array) -> np.ndarray:
  """The whole (global) array on this host, as a writable copy."""
  if jax.process_count() == 1:
    return np.array(jax.device_get(x))
  return np.array(multihost_utils.process_allgather(x, tiled=True))


def first_local_row(x: jax.Array) -> int:
  """Global index of this host's first row of a batch-sharded array."""
  if jax.process_count() == 1:
    return 0
  slices = x.sharding.addressable_devices_indices_map(x.shape).values()
  return min(s[0].start or 0 for s in slices)


def sum_over_hosts(*values: int) -> tuple[int, ...]:
  """Elementwise sum of the integers `values` over all hosts (e.g. counts of each host's shard)."""
  return tuple(int(v) for v in _per_host(values).sum(axis=0))


def agree_max(*values: int) -> tuple[int, ...]:
  """Elementwise maximum of `values` over all hosts (shapes must agree before compiling)."""
  return tuple(int(v) for v in _per_host(values).max(axis=0))


def _per_host(values: tuple[int, ...]) -> np.ndarray:
  """`[hosts, len(values)]`: every host's integers."""
  if jax.process_count() == 1:
    return np.asarray(values, np.int64).reshape(1, -1)
  gathered = multihost_utils.process_allgather(np.asarray(values, np.int64))
  return np.asarray(gathered).reshape(-1, len(values))
