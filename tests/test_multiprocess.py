"""Two local processes (`jax.distributed` on CPU with gloo) sample the same records as one process."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from lr_jax.data.store import SampleStore
from tests.helpers import REPO_ROOT, make_tiny_hf, shared_path


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# lr_jax.main with process 1's store appends delayed, as on a slow shared filesystem: process 0 must
# wait for them before it summarises the store.
SLOW_SECOND_PROCESS = """
import os, sys, time
from absl import app
from lr_jax import main
from lr_jax.data import store
if os.environ["JAX_PROCESS_ID"] == "1":
  append = store.SampleStore.append
  store.SampleStore.append = lambda self, records: (time.sleep(3), append(self, records))[1]
app.run(main.main)
"""

# lr_jax.main where process 1 may not grade: process 0 grades and writes the evaluation alone.
ONLY_PROCESS_0_GRADES = """
import os
from absl import app
from lr_jax import main
from lr_jax.eval import harness
if os.environ["JAX_PROCESS_ID"] == "1":
  def refuse(*args, **kwargs):
    raise AssertionError("process 1 graded")
  harness.grade_items = refuse
app.run(main.main)
"""

# Each process pads rows of its own lengths; the global batch must have one shape on both.
PAD_BATCH_ACROSS_PROCESSES = """
import jax, numpy as np
from jax.experimental import multihost_utils
from lr_jax.sharding import host_local_to_global, maybe_initialize_distributed
maybe_initialize_distributed()
from lr_jax.stages.common import make_layout
from lr_jax.stages.sample import pad_batch
first = jax.process_index() == 0
batch = pad_batch([[1] * (10 if first else 40)], [[2] * (5 if first else 20)], pad_id=0)
arrays = host_local_to_global(batch, make_layout((-1, 1, 1), "sample"))
gathered = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in arrays.items()}
print({k: [list(v.shape), int(v.sum())] for k, v in gathered.items() if k.endswith("mask")}, flush=True)
"""

# The un-jitted contrastive_step on a global batch (its values span both processes) = the jitted one.
EAGER_CONTRASTIVE_STEP = """
import sys, jax, jax.numpy as jnp, numpy as np
from flax import nnx
from lr_jax.sharding import Layout, host_local_to_global, make_mesh, maybe_initialize_distributed
maybe_initialize_distributed()
from lr_jax.contrastive import ContrastiveConfig, contrastive_step, make_contrastive_step
from lr_jax.models import from_pretrained
layout = Layout.create(make_mesh((-1, 1, 1)), "sample")
model = nnx.split(from_pretrained(sys.argv[1], dtype=jnp.float32, layout=layout).model)
rng = np.random.default_rng(jax.process_index())
batch = host_local_to_global(dict(prompt_tokens=rng.integers(0, 64, (2, 6)).astype(np.int32),
                                  prompt_mask=np.ones((2, 6), bool),
                                  completion_tokens=rng.integers(0, 64, (2, 4)).astype(np.int32),
                                  completion_mask=np.ones((2, 4), bool)), layout)
cfg = ContrastiveConfig(valid_vocab=64, top_k=4)
eager, jitted = contrastive_step(model, model, batch, cfg), make_contrastive_step(model[0], model[0], cfg)(model[1], model[1], batch)
same = [bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted))]
print(eager.kl.shape, all(same), flush=True)
"""


def _args(workdir, expert, amateur, problems, program=("-m", "lr_jax.main")):
  return [sys.executable, *program, "--config=configs/qwen_math.py", f"--workdir={workdir}",
          "--config.stages=sample", f"--config.expert={expert}", f"--config.amateur={amateur}",
          f"--config.data.path={problems}", "--config.data.num_problems=6", "--config.dtype=float32",
          "--config.sample.max_new_tokens=8", "--config.sample.batch_size=4", "--config.sample.beta=0.0",
          f"--config.compilation_cache_dir={workdir}_xla_cache"]


def _env(**extra):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **extra}
  env.pop("XLA_FLAGS", None)  # one CPU device per process
  return env


def _two_processes(args, **popen):
  port = _free_port()
  procs = [subprocess.Popen(args, env=_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                           JAX_PROCESS_ID=str(i), PYTHONPATH=str(REPO_ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outs]


def _records(workdir):
  return {r.problem_id: r for r in SampleStore(os.path.join(workdir, "samples")).iter_records()}


def test_two_processes_write_the_same_records_as_one(tmp_path):
  pytest.importorskip("torch")
  expert = make_tiny_hf(tmp_path, "qwen2", name="expert", hidden_size=32, seed=1)
  amateur = make_tiny_hf(tmp_path, "qwen2", name="amateur", hidden_size=16, num_layers=1, num_heads=2,
                         num_kv_heads=1, seed=2)
  problems = tmp_path / "problems.jsonl"
  with open(shared_path("data", "gsm8k", "train.jsonl")) as f:
    problems.write_text("".join(f.readline() for _ in range(6)))

  single = tmp_path / "single"  # sampled in two runs: 4 problems, then the other 2
  for extra in (["--config.data.num_problems=4"], []):
    r = subprocess.run(_args(single, expert, amateur, problems) + extra, cwd=REPO_ROOT, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
  with open(single / "metrics.jsonl") as f:
    steps = [m["step"] for m in map(json.loads, f) if m["stage"] == "sample"]
  assert steps == [0, 1]  # the second run's batch goes on from the first's
  other = tmp_path / "other.jsonl"  # resuming on other problems would mix two datasets in one store
  other.write_text(problems.read_text())
  r = subprocess.run(_args(single, expert, amateur, other), cwd=REPO_ROOT, env=_env(), capture_output=True,
                     text=True, timeout=600)
  error = r.stderr.strip().splitlines()[-1]
  assert r.returncode == 1 and error.startswith("lr_jax: config error: sample store") and "(data: saved {" in error

  multi = tmp_path / "multi"
  _two_processes(_args(multi, expert, amateur, problems, program=("-c", SLOW_SECOND_PROCESS)), cwd=REPO_ROOT)
  assert {"shard-00000-of-00002", "shard-00001-of-00002"} <= set(os.listdir(multi / "samples"))

  one, two = _records(single), _records(multi)
  assert sorted(one) == sorted(two) and len(one) == 6
  for pid, a in one.items():
    b = two[pid]
    np.testing.assert_array_equal(a.completion_ids, b.completion_ids)
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_array_equal(a.target_ids, b.target_ids)
    np.testing.assert_allclose(a.target_weights, b.target_weights, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a.all_kl, b.all_kl, rtol=1e-5, atol=1e-6)
  with open(multi / "samples" / "stats" / "stats.json") as f:
    assert json.load(f)["num_records"] == 6
  new_tokens = [sum(m["new_tokens"] for m in map(json.loads, open(run / "metrics.jsonl")) if m["stage"] == "sample")
                for run in (single, multi)]
  assert new_tokens[0] == new_tokens[1] == sum(len(r.completion_ids) for r in one.values())  # every shard's


def test_teacher_forced_batches_have_one_shape_across_processes(tmp_path):
  outs = _two_processes([sys.executable, "-c", PAD_BATCH_ACROSS_PROCESSES], cwd=tmp_path)
  expected = "{'completion_mask': [[2, 32], 25], 'prompt_mask': [[2, 64], 50]}"
  assert [out.strip().splitlines()[-1] for out in outs] == [expected, expected]


def test_an_unjitted_contrastive_step_takes_a_batch_spread_over_processes(tmp_path):
  """Its id checks read values only a batch held whole in this process has (they used to fetch the
  other process's shards and fail)."""
  model = make_tiny_hf(tmp_path / "m", "qwen2", vocab_size=64, tokenizer=False)
  outs = _two_processes([sys.executable, "-c", EAGER_CONTRASTIVE_STEP, str(model)], cwd=tmp_path)
  assert [out.strip().splitlines()[-1] for out in outs] == ["(4, 4) True"] * 2


def test_two_processes_evaluate_as_one_with_process_0_grading_and_writing(tmp_path):
  pytest.importorskip("torch")
  expert = make_tiny_hf(tmp_path, "qwen2", name="expert", hidden_size=32, seed=1)
  items = tmp_path / "items.jsonl"
  with open(shared_path("data", "gsm8k", "test.jsonl")) as f:
    items.write_text("".join(f.readline() for _ in range(6)))

  def args(workdir, program=("-m", "lr_jax.main")):
    return [sys.executable, *program, "--config=configs/qwen_math.py", f"--workdir={workdir}",
            "--config.stages=eval", f"--config.expert={expert}", f"--config.amateur={expert}",
            "--config.dtype=float32", "--config.eval.models=base", f"--config.eval.benchmarks=mine=gsm8k:{items}",
            "--config.eval.max_new_tokens=8", "--config.eval.batch_size=4",
            f"--config.compilation_cache_dir={workdir}_xla_cache"]

  r = subprocess.run(args(tmp_path / "single"), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  _two_processes(args(tmp_path / "multi", program=("-c", ONLY_PROCESS_0_GRADES)), cwd=REPO_ROOT)
  for name in ("mine.jsonl", "results.json"):
    one = (tmp_path / "single" / "eval" / "base" / name).read_text()
    two = (tmp_path / "multi" / "eval" / "base" / name).read_text()
    assert one.replace(str(tmp_path / "single"), "") == two.replace(str(tmp_path / "multi"), "")
