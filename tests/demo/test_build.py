"""Tests for lr_jax/demo/build.py: artifacts, caching, loadability (lr_jax and transformers), determinism.

Every build here is tiny (a few hundred problems, one-layer models, a handful of steps); the builds
after the first reuse its compiled train and decode steps, so the file runs in well under a minute.
"""
from __future__ import annotations

import copy
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lr_jax.demo import build, pretrain
from lr_jax.models.config import ModelConfig
from lr_jax.models.hf_io import from_pretrained
from lr_jax.models.safetensors_io import SafetensorsFile

TINY_MODEL = {"hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "mlp": 64}


def _tiny_config(**overrides) -> dict:
  cfg = copy.deepcopy(build.CI_DEMO)
  cfg.update(n_pretrain=200, n_sample=5, n_test=6, vocab_size=400, seq_len=192, batch_size=8, learning_rate=1e-2,
             max_new_tokens=12, expert={**TINY_MODEL, "steps": 12}, amateur={**TINY_MODEL, "steps": 3})
  cfg.update(overrides)
  return cfg


def _weights(checkpoint_dir: str) -> dict[str, np.ndarray]:
  f = SafetensorsFile(os.path.join(checkpoint_dir, "model.safetensors"))
  return {name: np.asarray(f.get(name)) for name in f.keys()}


class _CountingPretrain:
  """Wraps `pretrain.pretrain`, counting calls (a skipped build makes none)."""

  def __init__(self):
    self.calls = 0
    self._real = pretrain.pretrain

  def __call__(self, *args, **kwargs):
    self.calls += 1
    return self._real(*args, **kwargs)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp("demo_pair"))
  cfg = _tiny_config()
  return out_dir, cfg, build.build_demo_pair(out_dir, cfg)


def _read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_build_writes_gsm8k_splits_two_checkpoints_and_the_summary(built):
  out_dir, cfg, summary = built
  sample = _read_jsonl(os.path.join(out_dir, build.SAMPLE_FILE))
  test = _read_jsonl(os.path.join(out_dir, build.TEST_FILE))
  assert (len(sample), len(test)) == (cfg["n_sample"], cfg["n_test"])
  for record in sample + test:
    assert set(record) == {"question", "answer"}
    assert "\\boxed{" in record["answer"] and "\n#### " in record["answer"]
  assert not {r["question"] for r in sample} & {r["question"] for r in test}
  for name in (build.EXPERT_DIR, build.AMATEUR_DIR):
    folder = os.path.join(out_dir, name)
    for file in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
      assert os.path.isfile(os.path.join(folder, file)), f"{name}/{file}"
    with open(os.path.join(folder, "generation_config.json")) as f:
      gen = json.load(f)
    assert (gen["eos_token_id"], gen["pad_token_id"], gen["do_sample"]) == ([2], 0, False)
    model_cfg = ModelConfig.from_json(folder)
    assert model_cfg.model_type == "qwen2" and model_cfg.hidden_size == cfg[name]["hidden"]
    assert model_cfg.vocab_size == summary["tokenizer"]["vocab_size"]
    assert summary[name]["params"] == model_cfg.num_params()
    assert summary[name]["steps"] == cfg[name]["steps"]
    assert 0.0 <= summary[name]["test_accuracy"] <= 1.0
    assert np.isfinite(summary[name]["final_loss"])
  assert summary["expert"]["final_loss"] < summary["expert"]["first_loss"] - 0.5
  with open(os.path.join(out_dir, build.DONE_FILE)) as f:
    assert json.load(f) == summary
  assert summary["config"] == cfg
  assert summary["tokenizer"]["eos_id"] == 2 and summary["tokenizer"]["pad_id"] == 0


def test_done_json_is_the_last_file_written(built):
  out_dir, _, _ = built
  done = os.path.getmtime(os.path.join(out_dir, build.DONE_FILE))
  others = [os.path.join(root, f) for root, _, files in os.walk(out_dir) for f in files if f != build.DONE_FILE]
  assert others and all(os.path.getmtime(p) <= done for p in others)
  assert sorted(os.listdir(out_dir)) == sorted([build.SAMPLE_FILE, build.TEST_FILE, build.EXPERT_DIR,
                                                build.AMATEUR_DIR, build.DONE_FILE])


def test_same_config_returns_cached_summary_without_training(built, monkeypatch):
  out_dir, cfg, summary = built
  counter = _CountingPretrain()
  monkeypatch.setattr(pretrain, "pretrain", counter)
  assert build.build_demo_pair(out_dir, cfg) == summary
  assert build.build_demo_pair(out_dir, ml_collections.ConfigDict(cfg)) == summary
  assert counter.calls == 0


def test_checkpoints_load_in_lr_jax_and_transformers_with_equal_logits(built):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  out_dir, _, _ = built
  tok = transformers.AutoTokenizer.from_pretrained(os.path.join(out_dir, build.EXPERT_DIR))
  question = _read_jsonl(os.path.join(out_dir, build.TEST_FILE))[0]["question"]
  ids = tok(build.demo_prompt(question), add_special_tokens=False)["input_ids"]
  assert ids[0] == 1  # <|im_start|>
  for name in (build.EXPERT_DIR, build.AMATEUR_DIR):
    folder = os.path.join(out_dir, name)
    ours = from_pretrained(folder, dtype=jnp.float32).model
    tokens = jnp.asarray([ids], jnp.int32)
    mask = jnp.ones_like(tokens, bool)
    with jax.default_matmul_precision("highest"):
      hidden, _ = ours(tokens, jnp.arange(len(ids))[None], mask)
      logits = np.asarray(ours.logits(hidden))[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
      ref = hf(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)


def test_rebuild_is_bitwise_identical_and_partial_or_changed_builds_are_redone(built, tmp_path, monkeypatch):
  out_dir, cfg, summary = built
  counter = _CountingPretrain()
  monkeypatch.setattr(pretrain, "pretrain", counter)
  again = str(tmp_path / "again")
  second = build.build_demo_pair(again, cfg)
  assert counter.calls == 2
  for name in (build.EXPERT_DIR, build.AMATEUR_DIR):
    ours, theirs = _weights(os.path.join(out_dir, name)), _weights(os.path.join(again, name))
    assert ours.keys() == theirs.keys()
    for tensor in ours:
      assert ours[tensor].tobytes() == theirs[tensor].tobytes(), f"{name}: {tensor}"
  for split in (build.SAMPLE_FILE, build.TEST_FILE):
    with open(os.path.join(out_dir, split), "rb") as a, open(os.path.join(again, split), "rb") as b:
      assert a.read() == b.read()
  assert {k: v for k, v in second.items() if k != "seconds"} == {k: v for k, v in summary.items() if k != "seconds"}

  # A build cut short (no DONE.json, a stray file in a checkpoint) is redone from scratch.
  os.remove(os.path.join(again, build.DONE_FILE))
  stray = os.path.join(again, build.EXPERT_DIR, "model-00001-of-00002.safetensors")
  open(stray, "w").close()
  build.build_demo_pair(again, cfg)
  assert counter.calls == 4 and not os.path.exists(stray)
  assert os.path.isfile(os.path.join(again, build.DONE_FILE))

  # Another config rebuilds: a new seed gives new problems and new weights.
  reseeded = build.build_demo_pair(again, _tiny_config(seed=cfg["seed"] + 1))
  assert counter.calls == 6 and reseeded["config"]["seed"] == cfg["seed"] + 1
  assert _read_jsonl(os.path.join(again, build.TEST_FILE)) != _read_jsonl(os.path.join(out_dir, build.TEST_FILE))
  ours, theirs = _weights(os.path.join(out_dir, build.EXPERT_DIR)), _weights(os.path.join(again, build.EXPERT_DIR))
  assert any(ours[t].tobytes() != theirs[t].tobytes() for t in ours)


@pytest.mark.parametrize("change, field", [
    (lambda c: c.pop("seed"), "missing keys ['seed']"),
    (lambda c: c.update(n_tests=3), "unknown keys ['n_tests']"),
    (lambda c: c["expert"].pop("mlp"), "demo.expert config: missing keys ['mlp']"),
    (lambda c: c.update(batch_size=-1), "demo.batch_size"),
    (lambda c: c.update(learning_rate="fast"), "demo.learning_rate"),
    (lambda c: c.update(difficulty=3), "demo.difficulty"),
])
def test_bad_config_is_rejected_naming_the_field(change, field, tmp_path):
  cfg = _tiny_config()
  change(cfg)
  with pytest.raises(ValueError, match=re.escape(field)):
    build.build_demo_pair(tmp_path, cfg)
  assert not os.listdir(tmp_path)


def test_default_and_ci_configs_are_valid_and_ci_is_smaller():
  full, ci = build.normalize_config(build.DEFAULT_DEMO), build.normalize_config(build.CI_DEMO)
  assert ci["n_pretrain"] <= full["n_pretrain"]
  for name in (build.EXPERT_DIR, build.AMATEUR_DIR):
    assert ci[name]["steps"] <= full[name]["steps"]
  for cfg in (full, ci):
    expert, amateur = cfg[build.EXPERT_DIR], cfg[build.AMATEUR_DIR]
    # The amateur is the weaker of the pair: no larger in any dimension, no longer trained.
    assert all(amateur[k] <= expert[k] for k in ("hidden", "layers", "mlp", "steps"))


def test_boxed_answer_reads_the_last_boxed_integer():
  assert build.boxed_answer("So 3 + 4 = 7.\nThe answer is \\boxed{7}.") == "7"
  assert build.boxed_answer("\\boxed{1} then \\boxed{ 12 }") == "12"
  assert build.boxed_answer("The answer is 7.") is None
  assert build.boxed_answer("\\boxed{x}") is None
