"""The README's main job at reduced size (`configs/demo.py:ci`), end to end, as a user runs it.

One full run (module fixture), then: every artifact exists and the report's numbers match them; the
merged export loads in transformers with the tuned model's logits; a rerun does nothing; a run
killed (SIGKILL) during distillation and restarted ends with the same adapter and losses.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO_ROOT

pytest.importorskip("torch")


def _cmd(workdir, cache, *extra):
  return [sys.executable, "-m", "lr_jax.main", "--config=configs/demo.py:ci", f"--workdir={workdir}",
          f"--config.compilation_cache_dir={cache}", *extra]


def _env():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  env.pop("XLA_FLAGS", None)  # the run uses the real device count, as a user's would
  return env


def _run(workdir, cache, *extra, timeout=600):
  r = subprocess.run(_cmd(workdir, cache, *extra), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                     timeout=timeout)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  return r.stdout + r.stderr


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
  """The runs' persistent compilation cache: filled by the first run, read by the later ones."""
  return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, xla_cache):
  workdir = tmp_path_factory.mktemp("demo") / "run"
  t0 = time.time()
  log = _run(workdir, xla_cache)
  return str(workdir), log, time.time() - t0


def _read(workdir, *parts):
  with open(os.path.join(workdir, *parts)) as f:
    return json.load(f) if parts[-1].endswith(".json") else f.read()


def test_demo_run_writes_every_artifact(finished_run, xla_cache):
  workdir, _, seconds = finished_run
  for path in ("config.json", "demo/DONE.json", "demo/expert/model.safetensors", "demo/amateur/config.json",
               "samples/meta.json", "samples/stats/stats.json", "samples/stats/kl_hist.png",
               "checkpoints/DONE.json", "checkpoints/final_adapter/adapter_model.safetensors",
               "eval/base/results.json", "eval/tuned/results.json", "eval/amateur/results.json",
               "eval/comparison.json", "export/merged/model.safetensors", "export/merged/tokenizer.json",
               "export/peft/adapter_config.json", "metrics.jsonl", "timings.json", "report.md",
               "plots/loss.png", "plots/accuracy.png", "plots/kl_hist.png"):
    assert os.path.isfile(os.path.join(workdir, path)), path
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.listdir(xla_cache), "no executable was stored in the persistent compilation cache"
  print(f"demo:ci took {seconds:.0f} s")


def test_report_numbers_match_the_artifacts(finished_run):
  workdir = finished_run[0]
  report = _read(workdir, "report.md")
  stats = _read(workdir, "samples", "stats", "stats.json")
  assert f"kept steps (KL > β = {stats['beta']}): {stats['kept_steps']}" in report
  assert f"token efficiency: {stats['kept_steps']} distinct positions trained, of the {stats['total_steps']}" in report
  for name in ("base", "tuned", "amateur"):
    acc = _read(workdir, "eval", name, "results.json")["benchmarks"]["arith_test"]["accuracy"]
    assert f"{100 * acc:.1f}%" in report
  comp = _read(workdir, "eval", "comparison.json")
  assert f"{comp['benchmarks']['arith_test']['mcnemar_p']:.3g} |" in report
  assert f"{100 * comp['benchmarks']['arith_test']['delta']:+.1f} points" in report


def test_merged_export_loads_in_transformers_with_the_tuned_logits(finished_run):
  import jax.numpy as jnp
  import torch
  import transformers
  from flax import nnx

  from lr_jax.export import load_peft_adapter
  from lr_jax.models import from_pretrained, positions_from_mask

  workdir = finished_run[0]
  hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(workdir, "export", "merged"),
                                                         dtype=torch.float32).eval()
  tuned = from_pretrained(os.path.join(workdir, "demo", "expert"), dtype=jnp.float32).model
  load_peft_adapter(tuned, os.path.join(workdir, "checkpoints", "final_adapter"))
  tuned = nnx.view(tuned, deterministic=True, raise_if_not_found=False)
  ids = np.random.default_rng(0).integers(3, tuned.config.vocab_size, (2, 24))
  with torch.no_grad():
    ref = hf(torch.tensor(ids)).logits.numpy()
  mask = jnp.ones(ids.shape, bool)
  hidden, _ = tuned(jnp.asarray(ids), positions_from_mask(mask), mask)
  np.testing.assert_allclose(np.asarray(tuned.logits(hidden)), ref, atol=1e-4)


def test_rerun_of_a_finished_run_does_nothing(finished_run, xla_cache):
  log = _run(finished_run[0], xla_cache)
  assert "nothing to do" in log


def test_a_report_only_run_rebuilds_the_report_from_the_artifacts_and_keeps_the_runs_config(finished_run, xla_cache):
  """Asked for alone, the report is rebuilt (an eval run in between may have changed what it shows),
  with the settings the artifacts record, and config.json keeps the run's (the demo's model paths)."""
  workdir = finished_run[0]
  saved = _read(workdir, "config.json")
  log = _run(workdir, xla_cache, "--config.stages=report", "--config.sample.beta=0.3")
  assert "report: already written" not in log and "nothing to do" not in log
  assert _read(workdir, "config.json") == saved
  report = _read(workdir, "report.md")
  assert f"- expert: `{saved['expert']}`" in report and "β = 0.4" in report and "β = 0.3" not in report


def test_rerun_of_a_finished_run_with_other_settings_is_refused(finished_run, xla_cache):
  """A finished stage is skipped only for the settings it was run with: another LoRA rank (the
  distill stage's) or export dtype (the export stage's) is refused in one line naming the setting."""
  for extra, stage, key in (("--config.distill.lora_rank=4", "checkpoints", "lora: saved"),
                            ("--config.distill.order=steps", "checkpoints", "order: saved 'trajectories', now 'steps'"),
                            ("--config.export.dtype=float16", "export", "dtype: saved 'float32', now 'float16'")):
    r = subprocess.run(_cmd(finished_run[0], xla_cache, extra), cwd=REPO_ROOT, env=_env(), capture_output=True,
                       text=True, timeout=300)
    error = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and error.startswith("lr_jax: config error: "), error
    assert f"{os.path.join(finished_run[0], stage, 'DONE.json')} was written with other settings" in error
    assert key in error, error


def test_sampling_more_problems_after_distillation_is_refused_and_the_record_kept(finished_run, xla_cache):
  """More problems would extend the store under a finished adapter (which distillation would then
  skip as done): refused before anything is sampled; config.json keeps the finished run's record."""
  workdir = finished_run[0]
  record = _read(workdir, "config.json")
  n = record["data"]["num_problems"]
  store = sorted(os.listdir(os.path.join(workdir, "samples")))
  problems = os.path.join(workdir, "demo", "sample.jsonl")  # as many problems as the run sampled: add 4
  with open(problems) as f:
    original = f.read()
  more = [json.loads(line) for line in original.splitlines()[:4]]
  try:
    with open(problems, "a") as f:
      f.writelines(json.dumps({**p, "question": p["question"] + " Answer again."}) + "\n" for p in more)
    r = subprocess.run(_cmd(workdir, xla_cache, f"--config.data.num_problems={n + 4}"), cwd=REPO_ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
  finally:
    with open(problems, "w") as f:
      f.write(original)
  error = r.stderr.strip().splitlines()[-1]
  assert r.returncode == 1 and error == (
      f"lr_jax: config error: {os.path.join(workdir, 'checkpoints', 'DONE.json')}: distillation has finished on the "
      f"problems the sample store holds; sampling more (config.data.num_problems = {n + 4}) would leave the adapter "
      "out of date: rerun with the saved settings, or use a fresh workdir"), error
  assert _read(workdir, "config.json") == record and sorted(os.listdir(os.path.join(workdir, "samples"))) == store


def test_run_killed_during_distillation_resumes_to_the_same_result(finished_run, tmp_path, xla_cache):
  """Killed and restarted with the first run's compilation cache: the resumed process loads the
  executables the first run compiled, and still ends bitwise equal."""
  from safetensors.numpy import load_file

  done = finished_run[0]
  workdir = tmp_path / "killed"
  workdir.mkdir()
  for part in ("demo", "samples"):  # start from the same pair and samples: only distillation reruns
    shutil.copytree(os.path.join(done, part), workdir / part)
  metrics = workdir / "metrics.jsonl"
  proc = subprocess.Popen(_cmd(workdir, xla_cache, "--config.stages=demo,distill"), cwd=REPO_ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
  # past the first checkpoint (every 20 updates), and that one committed: saves run in the
  # background, and a kill before one is renamed into place leaves nothing to resume from
  first_checkpoint = workdir / "checkpoints" / "orbax" / "20"
  deadline = time.time() + 300
  while time.time() < deadline:
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    if sum('"stage": "distill"' in l for l in lines) >= 25 and first_checkpoint.is_dir():
      break
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (workdir / "checkpoints" / "DONE.json").exists(), "killed too late: distillation had finished"
  changed = subprocess.run(_cmd(workdir, xla_cache, "--config.stages=demo,distill", "--config.distill.updates=7"),
                           cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  error = changed.stderr.strip().splitlines()[-1]
  assert changed.returncode == 1 and error.startswith("lr_jax: config error: ") and "num_updates: saved" in error
  _run(workdir, xla_cache, "--config.stages=demo,distill")

  def adapter(root):
    return load_file(os.path.join(root, "checkpoints", "final_adapter", "adapter_model.safetensors"))

  a, b = adapter(done), adapter(str(workdir))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])

  def losses(root):
    by_step = {}
    for line in open(os.path.join(root, "metrics.jsonl")):
      m = json.loads(line)
      if m["stage"] == "distill":
        by_step[m["step"]] = m["loss"]
    return [by_step[k] for k in sorted(by_step)]

  assert losses(done) == losses(str(workdir))
