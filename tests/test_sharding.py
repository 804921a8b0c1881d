"""Mesh construction, the logical-axis rules, and a sharded model against a single device.

Runs on the 8 fake CPU devices set up by conftest.py (mesh data=2, fsdp=2, tensor=2).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from lr_jax.models import KVCache, from_pretrained, positions_from_mask
from lr_jax.sharding import MESH_AXES, Layout, host_local_to_global, make_mesh, shard_state, state_shardings
from tests.helpers import make_tiny_hf, random_ids

VOCAB = 512


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (conftest sets --xla_force_host_platform_device_count=8)")
  return make_mesh((2, 2, 2))


def test_mesh_axes_are_named_and_auto(mesh):
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.axis_types) == (AxisType.Auto,) * 3
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_make_mesh_fills_one_minus_one_and_refuses_bad_shapes(mesh):
  assert dict(make_mesh((-1, 1, 2)).shape) == {"data": 4, "fsdp": 1, "tensor": 2}
  assert make_mesh().shape["data"] == 8
  with pytest.raises(ValueError, match=r"mesh shape \(3, -1, 1\) does not divide 8 devices"):
    make_mesh((3, -1, 1))
  with pytest.raises(ValueError, match="more than one -1"):
    make_mesh((-1, -1, 2))
  with pytest.raises(ValueError, match=r"needs 4 devices, 8 available"):
    make_mesh((2, 2, 1))
  with pytest.raises(ValueError, match="3 entries"):
    make_mesh((8,))


@pytest.mark.parametrize("rules, axes, shape, spec", [
    ("train", ("embed", "heads", "head_dim"), (64, 4, 16), P("fsdp", "tensor", None)),  # q_proj kernel
    ("sample", ("embed", "heads", "head_dim"), (64, 4, 16), P(None, "tensor", None)),
    ("train", ("heads", "head_dim", "embed"), (4, 16, 64), P("tensor", None, "fsdp")),  # o_proj kernel
    ("train", ("vocab", "embed"), (512, 64), P("tensor", "fsdp")),
    ("sample", ("vocab", "embed"), (512, 64), P("tensor", None)),
    ("train", ("batch", "length", "act_embed"), (4, 10, 64), P(("data", "fsdp"), None, None)),
    ("train", ("batch", "act_kv_heads", "cache_length", None), (4, 2, 9, 16), P(("data", "fsdp"), "tensor", None, None)),
    # a dim the mesh axes do not divide is replicated, not an error: 3 kv heads over tensor=2
    ("train", ("embed", "kv_heads", "head_dim"), (64, 3, 16), P("fsdp", None, None)),
    # ... and a dim that only a prefix of its rule's axes divides is split over that prefix
    ("train", ("batch", "length"), (6, 10), P("data", None)),
    ("train", ("batch", "length"), (3, 10), P(None, None)),
])
def test_rules_give_the_stated_specs(mesh, rules, axes, shape, spec):
  assert Layout.create(mesh, rules).spec(axes, shape) == spec


def test_size_one_mesh_axes_are_dropped_from_specs():
  layout = Layout.create(make_mesh((1, 1, 8)), "train")
  assert layout.spec(("embed", "heads", "head_dim"), (64, 8, 16)) == P(None, "tensor", None)
  assert layout.spec(("batch", "length"), (4, 10)) == P(None, None)
  assert layout.sharding(("batch", "length"), (4, 10)).spec == P()  # as jit hands it back


def test_a_jax_make_mesh_is_taken_as_auto_and_other_axis_names_are_refused_in_one_line():
  explicit = jax.make_mesh((2, 2, 2), MESH_AXES)  # Explicit axes by default
  layout = Layout.create(explicit, "train")
  assert tuple(layout.mesh.axis_types) == (AxisType.Auto,) * 3 and layout.mesh.devices.tolist() == explicit.devices.tolist()
  x = jax.jit(lambda a: layout.constrain(a * 2, ("batch", "act_embed")))(jnp.ones((4, 8)))
  assert x.sharding.spec == P(("data", "fsdp"))
  with pytest.raises(ValueError, match=r"the mesh has axes \('data', 'tensor'\), lacking 'fsdp'; expected") as e:
    Layout.create(jax.make_mesh((4, 2), ("data", "tensor")))
  assert "\n" not in str(e.value)


def test_rules_refuse_one_mesh_axis_twice_and_unknown_names(mesh):
  layout = Layout.create(mesh, "train")
  with pytest.raises(ValueError, match=r"map mesh axis \['tensor'\] twice"):
    layout.spec(("heads", "mlp"), (4, 8))
  with pytest.raises(KeyError, match="logical axis 'nope' has no rule"):
    layout.spec(("nope",))
  assert Layout.create(mesh, "train") == layout and hash(layout)  # static attribute of the model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return make_tiny_hf(tmp_path_factory.mktemp("mesh"), "qwen2", vocab_size=VOCAB, tokenizer=False)


EXPECTED_PARAM_SPECS = {
    "train": {
        ("embed",): P("tensor", "fsdp"),
        ("lm_head",): P("tensor", "fsdp"),
        ("layers", 0, "attn", "q_proj", "kernel"): P("fsdp", "tensor"),
        ("layers", 0, "attn", "q_proj", "bias"): P("tensor"),
        ("layers", 1, "attn", "k_proj", "kernel"): P("fsdp", "tensor"),
        ("layers", 0, "attn", "o_proj", "kernel"): P("tensor", None, "fsdp"),
        ("layers", 1, "mlp", "gate_proj", "kernel"): P("fsdp", "tensor"),
        ("layers", 1, "mlp", "down_proj", "kernel"): P("tensor", "fsdp"),
        ("layers", 0, "input_norm", "scale"): P(),
    },
    "sample": {
        ("embed",): P("tensor"),
        ("layers", 0, "attn", "q_proj", "kernel"): P(None, "tensor"),
        ("layers", 0, "attn", "o_proj", "kernel"): P("tensor"),
        ("layers", 1, "mlp", "down_proj", "kernel"): P("tensor"),
    },
}


def param_specs(state):
  flat = jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return {tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path): v for path, v in flat}


@pytest.mark.parametrize("rules", ["train", "sample"])
def test_loaded_parameters_carry_the_rule_specs(mesh, tiny_dir, rules):
  model = from_pretrained(tiny_dir, dtype=jnp.float32, layout=Layout.create(mesh, rules)).model
  leaves = param_specs(nnx.state(model))
  for path, spec in EXPECTED_PARAM_SPECS[rules].items():
    sharding = leaves[path].get_value().sharding
    assert sharding.mesh == mesh and sharding.spec == spec, path


def test_shard_state_places_a_single_device_state_per_rules(mesh, tiny_dir):
  layout = Layout.create(mesh, "train")
  state = nnx.state(from_pretrained(tiny_dir, dtype=jnp.float32).model)
  shardings = param_specs(state_shardings(state, layout))
  placed = param_specs(shard_state(state, layout))
  for path, spec in EXPECTED_PARAM_SPECS["train"].items():
    assert shardings[path].get_value().spec == spec, path
    assert placed[path].get_value().sharding.spec == spec, path
  assert shard_state(state, None) is state


def forward_logits(model, ids, mask, layout):
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, ids, mask):
    m = nnx.merge(graphdef, state)
    hidden, _ = m(ids, positions_from_mask(mask), mask)
    return m.logits(hidden)

  if layout is not None:
    ids, mask = host_local_to_global((ids, mask), layout)
  return run(state, jnp.asarray(ids), jnp.asarray(mask))


def test_mesh_forward_equals_single_device(mesh, tiny_dir):
  ids = random_ids(4, 12, VOCAB)
  mask = np.arange(12)[None] >= np.array([[0], [5], [2], [9]])
  with jax.default_matmul_precision("highest"):
    single = forward_logits(from_pretrained(tiny_dir, dtype=jnp.float32).model, ids, mask, None)
    layout = Layout.create(mesh, "train")
    sharded = forward_logits(from_pretrained(tiny_dir, dtype=jnp.float32, layout=layout).model, ids, mask, layout)
  assert sharded.sharding.spec[0] == ("data", "fsdp")
  err = np.max(np.abs(np.asarray(sharded) - np.asarray(single))[mask])
  assert err <= 1e-5, f"max abs diff {err:.3g} (max |logit| {np.max(np.abs(single)):.3g})"


def test_mesh_kv_cache_decode_equals_single_device(mesh, tiny_dir):
  """Sampling layout: sharded cache, prefill + 2 one-token steps, same logits as one device."""
  prompt = random_ids(4, 8, VOCAB, seed=1)
  mask = np.arange(8)[None] >= np.array([[0], [3], [1], [6]])
  steps = random_ids(4, 2, VOCAB, seed=2)

  def decode(layout):
    model = from_pretrained(tiny_dir, dtype=jnp.float32, layout=layout).model
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, tokens, positions, mask, cache):
      m = nnx.merge(graphdef, state)
      hidden, cache = m(tokens, positions, mask, cache)
      return m.logits(hidden[:, -1]), cache

    tokens, m = (prompt, mask) if layout is None else host_local_to_global((prompt, mask), layout)
    cache = KVCache.zeros(model.config, 4, 10, jnp.float32, layout)
    positions = positions_from_mask(jnp.asarray(m))
    out = []
    logits, cache = step(state, jnp.asarray(tokens), positions, jnp.asarray(m), cache)
    out.append(logits)
    for i in range(2):
      logits, cache = step(state, jnp.asarray(steps[:, i:i + 1]), positions[:, -1:] + 1 + i, jnp.ones((4, 1), bool),
                           cache)
      out.append(logits)
    return np.stack([np.asarray(o) for o in out]), cache

  with jax.default_matmul_precision("highest"):
    single, _ = decode(None)
    sharded, cache = decode(Layout.create(mesh, "sample"))
  assert cache.k[0].sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), "tensor", None, None)), 4)
  err = np.max(np.abs(sharded - single))
  assert err <= 1e-5, f"max abs diff {err:.3g} (max |logit| {np.max(np.abs(single)):.3g})"


def test_a_batch_layout_off_the_models_mesh_is_refused_in_one_line(mesh, tiny_dir):
  import lr_jax
  from lr_jax.lockstep import contrastive_decode
  model = from_pretrained(tiny_dir, dtype=jnp.float32, layout=Layout.create(mesh, "sample")).model
  other = Layout.create(make_mesh((8, 1, 1)), "sample")
  with pytest.raises(ValueError, match=r"generate: layout's mesh \{'data': 8, 'fsdp': 1, 'tensor': 1\} is not the one"):
    lr_jax.generate(model, [[1, 2]], max_new_tokens=2, layout=other)
  with pytest.raises(ValueError, match="contrastive_decode: layout's mesh"):
    contrastive_decode(nnx.split(model), nnx.split(model), [[1, 2]], max_new_tokens=2, layout=other)


def test_host_local_to_global_splits_the_batch(mesh):
  layout = Layout.create(mesh, "train")
  x = host_local_to_global(np.arange(8 * 3).reshape(8, 3), layout)
  assert x.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"))), 2) and len(x.addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(x), np.arange(24).reshape(8, 3))


@pytest.mark.parametrize("env, starts", [
    ({"SLURM_NTASKS": "4"}, False),  # a lone python in a 4-task sbatch script: no step, one process
    ({"SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4"}, True),  # srun: four processes
    ({"SLURM_STEP_NUM_TASKS": "1"}, False), ({"LR_JAX_DISTRIBUTED": "1"}, True)])
def test_jax_distributed_starts_only_where_several_processes_run(monkeypatch, env, starts):
  from lr_jax import sharding
  for name in ("SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "LR_JAX_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS",
               "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_PLATFORMS"):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(k))
  sharding.maybe_initialize_distributed()
  assert bool(calls) == starts
