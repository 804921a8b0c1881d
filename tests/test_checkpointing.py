"""Checkpoints: a real SIGKILL then restart reproduces the uninterrupted loss sequence exactly; a
checkpoint restores onto another mesh; a corrupt latest step is set aside for the previous one.

Run as a script (`python tests/test_checkpointing.py WORKDIR MODEL_DIR LOG PAUSE`), this file is the
tiny training loop that the kill test starts, kills and restarts.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

if __name__ == "__main__":  # the child process: same platform and device count as the tests
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lr_jax.checkpointing import Checkpointer
from lr_jax.errors import SettingsChanged
from lr_jax.data.packing import PackedUpdates, PackingConfig
from lr_jax.distill import DistillConfig, init_train_state, make_distill_step, shard_batch
from lr_jax.models import from_pretrained
from lr_jax.models.lora import LoRAConfig, apply_lora, split_trainable
from lr_jax.sharding import Layout, make_mesh
from tests.data.test_packing import make_records
from tests.helpers import REPO_ROOT, make_tiny_hf

VOCAB = 128
SAVE_EVERY = 2


def train(workdir: str, model_dir: str, log_path: str, pause: float = 0.0) -> None:
  """Trains a LoRA over 12 packed updates, resuming from `workdir`'s checkpoints; appends
  'update loss.hex()' lines to `log_path` (fsynced), sleeping `pause` seconds after each update."""
  lora = LoRAConfig(rank=4, alpha=8.0, dropout=0.1)
  model = from_pretrained(model_dir, dtype=jnp.float32).model
  apply_lora(model, lora, rngs=nnx.Rngs(0))
  graphdef, params, frozen = split_trainable(model, lora)
  packing = PackingConfig(steps_per_update=4, row_multiple=4, length_multiple=32)
  packed = PackedUpdates(make_records([5, 3, 6, 4, 2, 7, 5, 3, 6, 4, 2, 1], seed=2, vocab=VOCAB), packing)
  config = DistillConfig(total_updates=len(packed), learning_rate=1e-2)
  step = make_distill_step(graphdef, config)
  state = init_train_state(params, config, seed=0)
  ckpt = Checkpointer(workdir, save_every=SAVE_EVERY, keep=2)
  start = 0
  restored = ckpt.restore(state)
  if restored is not None:
    state, meta = restored
    start = meta["update"]
    assert int(state.step) == start and meta["packing"]["steps_per_update"] == 4
  with open(log_path, "a") as log:
    for u in range(start, len(packed)):
      state, metrics = step(state, frozen, shard_batch(packed.batch(u), None))
      log.write(f"{u} {float(metrics['loss']).hex()}\n")
      log.flush()
      os.fsync(log.fileno())
      ckpt.save(u + 1, state, {"update": u + 1, "packing": {"steps_per_update": packing.steps_per_update}})
      time.sleep(pause)
  ckpt.wait()
  ckpt.close()


def read_log(path: str) -> list[tuple[int, str]]:
  with open(path) as f:
    lines = f.read().split("\n")
  return [(int(u), loss) for u, loss in (line.split() for line in lines[:-1])]  # drop a torn last line


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return make_tiny_hf(tmp_path_factory.mktemp("base"), "qwen2", vocab_size=VOCAB, hidden_size=32,
                      intermediate_size=64, tokenizer=False)


def start_child(workdir, model_dir, log, pause):
  return subprocess.Popen([sys.executable, os.path.abspath(__file__), str(workdir), model_dir, str(log), str(pause)],
                          cwd=REPO_ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkill_then_restart_reproduces_the_uninterrupted_loss_sequence(model_dir, tmp_path):
  train(str(tmp_path / "ref"), model_dir, str(tmp_path / "ref.log"))
  reference = dict(read_log(str(tmp_path / "ref.log")))
  assert sorted(reference) == list(range(12))

  log = tmp_path / "run.log"
  child = start_child(tmp_path / "run", model_dir, log, pause=0.3)
  deadline = time.time() + 240
  while child.poll() is None and time.time() < deadline:
    if log.exists() and len(read_log(str(log))) >= 2 * SAVE_EVERY + 1:
      break
    time.sleep(0.05)
  assert child.poll() is None, f"the child ended before the kill: {child.stdout.read().decode()[-2000:]}"
  os.kill(child.pid, signal.SIGKILL)
  child.wait()
  child.stdout.close()
  killed_at = len(read_log(str(log)))
  assert killed_at < 12

  rerun = start_child(tmp_path / "run", model_dir, log, pause=0.0)
  out, _ = rerun.communicate(timeout=240)
  assert rerun.returncode == 0, out.decode()[-2000:]
  entries = read_log(str(log))
  resumed_from = entries[killed_at][0]
  assert 0 < resumed_from <= killed_at and resumed_from % SAVE_EVERY == 0
  assert [u for u, _ in entries[killed_at:]] == list(range(resumed_from, 12))
  for u, loss in entries:
    assert loss == reference[u], f"update {u}: {float.fromhex(loss)} != {float.fromhex(reference[u])}"


def trainable_state(model_dir, layout):
  lora = LoRAConfig(rank=4, alpha=8.0, full_finetune=("embed",))
  model = from_pretrained(model_dir, dtype=jnp.float32).model
  apply_lora(model, lora, rngs=nnx.Rngs(0))
  _, params, _ = split_trainable(model, lora)
  return init_train_state(params, DistillConfig(total_updates=4), seed=0, layout=layout)


def perturbed(state, offset):
  """`state` with every float leaf shifted, so a restore is told apart from a fresh init."""
  return jax.tree.map(lambda x: x + offset if jnp.issubdtype(x.dtype, jnp.floating) else x + 1, state)


@pytest.mark.parametrize("target_mesh", [None, (1, 4, 2)])
def test_checkpoint_saved_on_a_2x2x2_mesh_restores_onto_another_layout(model_dir, tmp_path, target_mesh):
  layout = Layout.create(make_mesh((2, 2, 2)), "train")
  saved = perturbed(trainable_state(model_dir, layout), 0.5)
  embed = saved.params["embed"][...]
  assert not embed.sharding.is_fully_replicated  # the fully trained embedding is sharded
  ckpt = Checkpointer(str(tmp_path), save_every=1)
  assert ckpt.save(3, saved, {"update": 3})
  ckpt.wait()
  target_layout = None if target_mesh is None else Layout.create(make_mesh(target_mesh), "train")
  target = trainable_state(model_dir, target_layout)
  state, meta = Checkpointer(str(tmp_path), save_every=1).restore(target)
  assert meta == {"update": 3}
  for got, want, like in zip(jax.tree.leaves(state), jax.tree.leaves(saved), jax.tree.leaves(target)):
    assert np.array_equal(np.asarray(got), np.asarray(want))
    assert got.sharding.is_equivalent_to(like.sharding, got.ndim)


def save_steps(directory, model_dir, steps):
  state = trainable_state(model_dir, None)
  ckpt = Checkpointer(directory, save_every=1, keep=5)
  for s in steps:
    ckpt.save(s, perturbed(state, float(s)), {"update": s})
  ckpt.wait()
  return state


def damage_largest_state_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)


def delete_meta(step_dir):
  os.remove(os.path.join(step_dir, "meta", "metadata"))


@pytest.mark.parametrize("damage", [damage_largest_state_file, delete_meta])
def test_a_corrupt_latest_checkpoint_is_set_aside_with_a_warning_and_the_previous_used(model_dir, tmp_path, damage):
  directory = str(tmp_path / "ckpt")
  fresh = save_steps(directory, model_dir, [1, 2, 3])
  damage(os.path.join(directory, "3"))
  ckpt = Checkpointer(directory, save_every=1, keep=5)
  with pytest.warns(RuntimeWarning, match=r"checkpoint .*/3 is unreadable .* moved to .*3\.corrupt"):
    state, meta = ckpt.restore(fresh)
  assert meta == {"update": 2}
  assert np.array_equal(np.asarray(state.params["embed"][...]), np.asarray(fresh.params["embed"][...]) + 2.0)
  assert ckpt.all_steps() == [1, 2] and os.path.isdir(os.path.join(directory, "3.corrupt"))
  # the run goes on: step 3 can be saved again and is the one restored next
  assert ckpt.save(3, perturbed(fresh, 30.0), {"update": 3})
  ckpt.wait()
  assert Checkpointer(directory, save_every=1).restore(fresh)[1] == {"update": 3}


def test_a_checkpoint_of_other_settings_is_refused_by_name_and_left_in_place(model_dir, tmp_path):
  directory = str(tmp_path / "ckpt")
  state = trainable_state(model_dir, None)
  ckpt = Checkpointer(directory, save_every=1)
  ckpt.save(1, state, {"update": 1, "num_updates": 6, "lora": {"rank": 4, "targets": ("q_proj",)}})
  ckpt.wait()
  with pytest.raises(SettingsChanged) as error:
    ckpt.restore(state, expect={"num_updates": 2, "lora": {"rank": 4, "targets": ("q_proj",)}})
  assert str(error.value) == (f"{directory}/1 was written with other settings (num_updates: saved 6, now 2); "
                              "rerun with the saved settings, or use a fresh workdir")
  assert ckpt.all_steps() == [1] and not os.path.exists(os.path.join(directory, "1.corrupt"))
  # the same settings (tuples as the JSON meta stores them), and entries an older checkpoint lacks, pass
  _, meta = ckpt.restore(state, expect={"num_updates": 6, "lora": {"rank": 4, "targets": ("q_proj",)}, "seed": 3})
  assert meta["update"] == 1
  # ... unless the caller fills them in as the older version behaved (the distill stage's `order`)
  from lr_jax.stages.distill import saved_settings
  assert ckpt.restore(state, expect={"order": "trajectories"}, backfill=saved_settings)[1] == meta
  with pytest.raises(SettingsChanged, match="order: saved 'trajectories', now 'steps'"):
    ckpt.restore(state, expect={"order": "steps"}, backfill=saved_settings)


def test_saves_every_n_updates_and_keeps_the_last_k(model_dir, tmp_path):
  state = trainable_state(model_dir, None)
  ckpt = Checkpointer(str(tmp_path), save_every=2, keep=2)
  saved = [ckpt.save(s, state, {"update": s}) for s in range(1, 8)]
  ckpt.wait()
  assert saved == [False, True, False, True, False, True, False] and ckpt.all_steps() == [4, 6]
  assert ckpt.save(7, state, {"update": 7}, force=True) and not ckpt.save(7, state, {"update": 7}, force=True)
  ckpt.wait()
  assert ckpt.all_steps() == [6, 7]
  assert Checkpointer(str(tmp_path / "empty"), save_every=1).restore(state) is None


if __name__ == "__main__":
  train(sys.argv[1], sys.argv[2], sys.argv[3], pause=float(sys.argv[4]))
