"""Tests for lr_jax/data/store.py: the resumable, crash-safe sample store."""

from __future__ import annotations

import inspect
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from lr_jax.data import store as store_lib
from lr_jax.data.store import TARGET_PAD_ID, SampleStore, TrajectoryRecord
from lr_jax.errors import SettingsChanged

META = {"expert": "tiny-expert", "amateur": "tiny-amateur", "alpha": 0.2, "beta": 0.4, "K": 4,
        "special_ids": (151643, 151645)}
STORE_PY = pathlib.Path(store_lib.__file__).resolve()


def make_record(index: int, K: int = 4, problem_id: str | None = None) -> TrajectoryRecord:
  """A deterministic pseudo-random record; index 0 mod 5 keeps no step."""
  rng = np.random.default_rng(index)
  num_steps = completion_len = int(rng.integers(3, 12))
  k = 0 if index % 5 == 0 else int(rng.integers(1, num_steps + 1))
  widths = rng.integers(1, K + 1, size=k)
  target_ids = np.full((k, K), TARGET_PAD_ID, np.int32)
  target_weights = np.zeros((k, K), np.float32)
  for row, width in enumerate(widths):
    target_ids[row, :width] = rng.choice(1000, size=width, replace=False)
    target_weights[row, :width] = rng.dirichlet(np.ones(width))
  all_kl = rng.exponential(0.5, size=num_steps).astype(np.float32)
  steps = np.sort(rng.choice(num_steps, size=k, replace=False)).astype(np.int32)
  return TrajectoryRecord(
      problem_id=problem_id or f"p{index}",
      prompt_ids=rng.integers(0, 1000, size=int(rng.integers(2, 9))),
      completion_ids=rng.integers(0, 1000, size=completion_len),
      finish_reason="stop" if index % 2 else "length",
      steps=steps, kl=all_kl[steps], target_ids=target_ids, target_weights=target_weights,
      dropped_mass=rng.uniform(0, 0.1, size=k), num_target_tokens=widths + rng.integers(0, 3, size=k),
      all_kl=all_kl, expert_top1=rng.integers(0, 1000, size=num_steps),
      amateur_top1=rng.integers(0, 1000, size=num_steps))


def assert_same_records(actual: list[TrajectoryRecord], expected: list[TrajectoryRecord]):
  assert [r.problem_id for r in actual] == [r.problem_id for r in expected]
  for a, e in zip(actual, expected):
    assert a.finish_reason == e.finish_reason
    for name, dtype in store_lib._RECORD_ARRAYS.items():
      got, want = getattr(a, name), getattr(e, name)
      assert got.dtype == dtype and got.shape == want.shape, (a.problem_id, name)
      np.testing.assert_array_equal(got, want, err_msg=f"{a.problem_id}.{name}")


def test_appended_batches_read_back_identically_after_reopening(tmp_path):
  records = [make_record(i) for i in range(7)]
  store = SampleStore(tmp_path / "s", meta=META)
  store.append(records[:3])
  store.append(records[3:])
  reopened = SampleStore(tmp_path / "s", meta=META)
  assert_same_records(list(reopened.iter_records()), records)
  assert reopened.done_ids() == {f"p{i}" for i in range(7)}
  assert reopened.num_records() == 7
  assert sorted(os.listdir(tmp_path / "s" / "shard-00000-of-00001")) == [
      "chunk-000000.npz", "chunk-000001.npz", "manifest.json"]


def test_a_record_without_kept_steps_keeps_its_target_width_through_the_store(tmp_path):
  store = SampleStore(tmp_path / "s", meta=META)
  store.append([make_record(0), make_record(1)])
  empty = next(store.iter_records())
  assert empty.num_kept == 0 and empty.target_ids.shape == (0, 4) and empty.target_weights.shape == (0, 4)


def test_a_first_chunk_that_keeps_no_step_is_stored_and_later_chunks_set_the_width(tmp_path):
  records = [make_record(0), make_record(5), make_record(1)]  # the first two keep no step
  store = SampleStore(tmp_path / "s", meta=META)
  store.append(records[:2])
  store.append(records[2:])
  assert_same_records(list(SampleStore(tmp_path / "s", meta=META).iter_records()), records)


def test_read_only_store_iterates_all_shards_in_shard_then_append_order(tmp_path):
  shards = [SampleStore(tmp_path / "s", process_index=i, process_count=2, meta=META) for i in range(2)]
  shards[1].append([make_record(i) for i in (10, 11)])
  shards[0].append([make_record(i) for i in (1, 2)])
  shards[0].append([make_record(3)])
  reader = SampleStore(tmp_path / "s", process_index=1, process_count=2)
  assert [r.problem_id for r in reader.iter_records()] == ["p1", "p2", "p3", "p10", "p11"]
  default_reader = SampleStore(tmp_path / "s")  # Reads the process_count the shards were written with.
  assert default_reader.process_count == 2 and default_reader.num_records() == 5
  assert reader.num_records() == 5
  assert reader.done_ids() == {"p10", "p11"}
  assert reader.meta == json.loads(json.dumps(META))
  with pytest.raises(ValueError, match="opened read-only"):
    reader.append([make_record(4)])


def test_reopening_with_another_process_count_is_refused(tmp_path):
  SampleStore(tmp_path / "s", process_index=0, process_count=2, meta=META)
  with pytest.raises(ValueError, match=r"written with process_count \[2\]; reopen it with that process_count, not 1"):
    SampleStore(tmp_path / "s", meta=META)
  with pytest.raises(ValueError, match="not 3"):
    SampleStore(tmp_path / "s", process_count=3)


def test_meta_differing_from_the_stored_one_is_refused_naming_the_key(tmp_path):
  SampleStore(tmp_path / "s", meta=META)
  SampleStore(tmp_path / "s", meta={**META, "special_ids": [151643, 151645]})  # Tuple == list in JSON.
  with pytest.raises(SettingsChanged, match=r"s was written with other settings \(beta: saved 0.4, now 0.5\)"):
    SampleStore(tmp_path / "s", meta={**META, "beta": 0.5})
  with pytest.raises(SettingsChanged, match=r"\(K: saved 4, now '<absent>'\)"):
    SampleStore(tmp_path / "s", meta={k: v for k, v in META.items() if k != "K"})
  # a key the stored meta lacks was not recorded by the version that wrote the store: not checked
  SampleStore(tmp_path / "s", meta={**META, "data": {"path": "train.jsonl"}})
  with pytest.raises(FileNotFoundError, match="no meta.json"):
    SampleStore(tmp_path / "missing")


def test_append_refuses_committed_problems_and_mixed_target_widths(tmp_path):
  store = SampleStore(tmp_path / "s", meta=META)
  store.append([make_record(1)])
  with pytest.raises(ValueError, match="problem 'p1' is already stored"):
    store.append([make_record(2), make_record(1)])
  with pytest.raises(ValueError, match=r"one target width K, got \[4, 8\]"):
    store.append([make_record(3, K=8)])
  store.append([make_record(4, problem_id="p4"), make_record(6, problem_id="p4")])  # Two trajectories.
  assert store.num_records() == 3 and store.done_ids() == {"p1", "p4"}


@pytest.mark.parametrize("change, message", [
    (dict(kl=np.zeros(1, np.float32)), r"kl must have shape \[\d+\]"),
    (dict(kl=np.ones(2, np.float32)), r"kl must equal all_kl\[steps\]"),
    (dict(steps=np.array([5, 3], np.int32)), "steps must be strictly increasing"),
    (dict(target_ids=np.full((2, 4), -2, np.int32)), "target_ids must be >= 0"),
    (dict(target_weights=np.ones((2, 4), np.float32)), "0 where target_ids is -1"),
    (dict(num_target_tokens=np.zeros(2, np.int32)), "num_target_tokens must be >="),
    (dict(completion_ids=np.array([1.5, 2.5])), "completion_ids must hold integers"),
    (dict(all_kl=np.zeros(20, np.float32)), "exceed len\\(completion_ids\\) \\+ 1"),
])
def test_inconsistent_records_are_refused_with_one_line_errors(change, message):
  base = make_record(1)
  fields = {name: getattr(base, name) for name in TrajectoryRecord.__dataclass_fields__}
  fields.update(steps=np.array([0, 2], np.int32), kl=base.all_kl[[0, 2]],
                target_ids=np.array([[5, -1, -1, -1], [6, 7, -1, -1]], np.int32),
                target_weights=np.array([[1, 0, 0, 0], [0.5, 0.5, 0, 0]], np.float32),
                dropped_mass=np.zeros(2, np.float32), num_target_tokens=np.array([1, 2], np.int32))
  TrajectoryRecord(**fields)  # The base is valid; only `change` breaks it.
  fields.update(change)
  if "all_kl" in change:
    fields.update(expert_top1=np.zeros(20, np.int32), amateur_top1=np.zeros(20, np.int32))
  with pytest.raises(ValueError, match=message) as info:
    TrajectoryRecord(**fields)
  assert str(info.value).startswith("TrajectoryRecord 'p1': ") and "\n" not in str(info.value)


def test_reopening_deletes_temporaries_and_adopts_the_next_uncommitted_chunk(tmp_path):
  path = tmp_path / "s"
  store = SampleStore(path, meta=META)
  store.append([make_record(1), make_record(2)])
  shard = path / "shard-00000-of-00001"
  manifest = (shard / "manifest.json").read_bytes()
  store.append([make_record(3)])
  (shard / "manifest.json").write_bytes(manifest)  # As if killed between chunk and manifest.
  (shard / "chunk-000002.npz.abc.tmp").write_bytes(b"half a chunk")
  reopened = SampleStore(path, meta=META)
  assert sorted(os.listdir(shard)) == ["chunk-000000.npz", "chunk-000001.npz", "manifest.json"]
  assert [r.problem_id for r in reopened.iter_records()] == ["p1", "p2", "p3"]
  assert reopened.done_ids() == {"p1", "p2", "p3"}


def test_reopening_drops_uncommitted_chunks_that_are_out_of_sequence_or_unreadable(tmp_path):
  path = tmp_path / "s"
  SampleStore(path, meta=META).append([make_record(1)])
  shard = path / "shard-00000-of-00001"
  committed = (shard / "chunk-000000.npz").read_bytes()
  (shard / "chunk-000001.npz").write_bytes(committed[:len(committed) // 2])
  (shard / "chunk-000005.npz").write_bytes(committed)
  reopened = SampleStore(path, meta=META)
  assert sorted(os.listdir(shard)) == ["chunk-000000.npz", "manifest.json"]
  assert reopened.done_ids() == {"p1"}


def test_a_committed_chunk_damaged_later_is_reported_naming_its_file(tmp_path):
  path = tmp_path / "s"
  SampleStore(path, meta=META).append([make_record(1)])
  chunk = path / "shard-00000-of-00001" / "chunk-000000.npz"
  chunk.write_bytes(chunk.read_bytes()[:100])
  with pytest.raises(ValueError, match=rf"^{chunk}: committed sample chunk is unreadable, damaged since it was "
                                       r"written \(BadZipFile: "):
    list(SampleStore(path).iter_records())


# --- A real SIGKILL at each window of the write protocol, then resume. ---

_WRITER = textwrap.dedent('''
    """Appends 10 problems in batches of 3; pauses (for the parent's SIGKILL) at one chosen point."""
    import importlib.util, os, sys, time
    import numpy as np

    # Load store.py by path: the child then needs only numpy and lr_jax.errors, not the package's heavier
    # imports.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(sys.argv[1]))))
    spec = importlib.util.spec_from_file_location("store_under_test", sys.argv[1])
    store_lib = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = store_lib
    spec.loader.exec_module(store_lib)
    TrajectoryRecord = store_lib.TrajectoryRecord
    TARGET_PAD_ID = -1

    {make_record}

    pause_at = tuple(sys.argv[3].split(":")) if len(sys.argv) > 3 else None
    seen = {{}}

    def maybe_pause(point, path):
      name = os.path.basename(path)
      target = "chunk" if name.startswith("chunk-") else name.split(".")[0]
      count = seen[(point, target)] = seen.get((point, target), 0) + 1
      if pause_at == (point, target, str(count - 1)):
        print("PAUSED", flush=True)
        time.sleep(60)

    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
      maybe_pause("before_replace", dst)
      real_replace(src, dst)
      maybe_pause("after_replace", dst)

    def fsync(fd):
      maybe_pause("fsync", os.readlink(f"/proc/self/fd/{{fd}}"))
      real_fsync(fd)

    os.replace, os.fsync = replace, fsync
    store = store_lib.SampleStore(sys.argv[2], meta={{"K": 4, "beta": 0.4}})
    todo = [i for i in range(10) if f"p{{i}}" not in store.done_ids()]
    for start in range(0, len(todo), 3):
      store.append([make_record(i) for i in todo[start:start + 3]])
    print("DONE", flush=True)
''')


def _run_writer(script: pathlib.Path, store_path: pathlib.Path, pause_at: str | None = None):
  args = [sys.executable, str(script), str(STORE_PY), str(store_path)] + ([pause_at] if pause_at else [])
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  watchdog = threading.Timer(30, proc.kill)
  watchdog.start()
  try:
    line = proc.stdout.readline().strip()
    if pause_at:
      assert line == "PAUSED", f"writer never reached {pause_at}: {line!r} {proc.stderr.read()}"
      os.kill(proc.pid, signal.SIGKILL)
      assert proc.wait() == -signal.SIGKILL
    else:
      assert line == "DONE" and proc.wait() == 0, proc.stderr.read()
  finally:
    watchdog.cancel()
    proc.stdout.close()
    proc.stderr.close()


def test_sigkill_at_every_write_window_then_resume_gives_the_uninterrupted_records(tmp_path):
  script = tmp_path / "writer.py"
  script.write_text(_WRITER.format(make_record=textwrap.dedent(inspect.getsource(make_record))))
  reference, killed = tmp_path / "reference", tmp_path / "killed"
  _run_writer(script, reference)

  def shard_files():
    return sorted(os.listdir(killed / "shard-00000-of-00001"))

  def manifest_files():
    manifest = json.loads((killed / "shard-00000-of-00001" / "manifest.json").read_text())
    return [chunk["file"] for chunk in manifest["chunks"]]

  _run_writer(script, killed, "before_replace:meta:0")  # Creating the store: meta.json half made.
  assert not (killed / "meta.json").exists()
  _run_writer(script, killed, "fsync:chunk:0")  # Batch 0's chunk written to its tmp, not synced.
  assert [f for f in shard_files() if f.endswith(".tmp")] and "chunk-000000.npz" not in shard_files()
  _run_writer(script, killed, "after_replace:chunk:1")  # Batch 1's chunk renamed, manifest not updated.
  assert "chunk-000001.npz" in shard_files() and manifest_files() == ["chunk-000000.npz"]
  _run_writer(script, killed, "before_replace:manifest:1")  # Adopts chunk 1; dies committing chunk 2.
  assert manifest_files() == ["chunk-000000.npz", "chunk-000001.npz"]
  assert "chunk-000002.npz" in shard_files() and any(f.startswith("manifest.json.") for f in shard_files())
  _run_writer(script, killed, "before_replace:chunk:0")  # Adopts chunk 2; dies renaming chunk 3.
  assert len(manifest_files()) == 3 and [f for f in shard_files() if f.startswith("chunk-000003.npz.")]
  _run_writer(script, killed)

  assert not [f for f in shard_files() if f.endswith(".tmp")]
  expected = list(SampleStore(reference).iter_records())
  resumed = SampleStore(killed)
  assert_same_records(list(resumed.iter_records()), expected)
  assert resumed.num_records() == 10 and resumed.done_ids() == {f"p{i}" for i in range(10)}
