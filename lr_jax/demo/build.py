"""Builds the demo's expert/amateur pair from nothing: world splits, tokenizer, two pre-trained Qwen2s.

`build_demo_pair(out_dir, cfg)` leaves this layout, with DONE.json written last:

  out_dir/sample.jsonl   problems for the sampling stage, GSM8K format (question, answer '... #### N')
  out_dir/test.jsonl     held-out problems for evaluation, same format
  out_dir/expert/        HF checkpoint: config.json, model.safetensors (float32), tokenizer files,
  out_dir/amateur/         generation_config.json (greedy, eos [<|im_end|>], pad <|endoftext|>)
  out_dir/DONE.json      the config it was built from and what was measured (sizes, steps, losses,
                         greedy test accuracy, seconds)

Both models share the architecture family (Qwen2: q/k/v bias, tied embeddings) and the tokenizer;
the amateur is smaller and trained for fewer steps, so it is competent but clearly weaker, the
"sweet spot" LightReasoner's contrast needs. A call whose config matches an existing DONE.json
returns that summary without rebuilding; the build is seeded and deterministic (the same config
gives bitwise the same checkpoints on the same machine).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from lr_jax.data import prompts as prompt_templates
from lr_jax.demo import pretrain, world
from lr_jax.demo import tokenizer as demo_tokenizer
from lr_jax.files import write_json_atomic
from lr_jax.generation.api import generate
from lr_jax.models.config import ModelConfig
from lr_jax.models.transformer import Transformer

SAMPLE_FILE = "sample.jsonl"
TEST_FILE = "test.jsonl"
EXPERT_DIR = "expert"
AMATEUR_DIR = "amateur"
DONE_FILE = "DONE.json"
# Bump when a change to the build makes older demo folders stale for the same config.
BUILD_VERSION = 1

# The full demo, tuned on 2 shared CPU cores: ~300 CPU-seconds, 2-2.5 min on two free cores.
# Expert 96x3 (381k params), 1200 steps: 59.5% greedy accuracy on the 200 test problems; amateur
# 64x2 (149k), 600 steps: 18.5%. On 64 expert greedy trajectories, 19% of the steps have
# KL(pE||pA) > 0.4, nearly all of them digits of a result. Two-step problems with small numbers are
# what this budget can learn: at the world's default difficulty (2-4 steps, numbers to 20) a 128x4
# expert trained for 600 steps solved 7%. From ~700 steps on, the 64x2 amateur starts to get the
# arithmetic right and the KL share drops to 6-12%, so it stops short of that. The BPE saturates at
# 785 tokens on this world, below vocab_size.
DEFAULT_DEMO: dict[str, Any] = {
    "seed": 0,
    "n_pretrain": 16000,
    "n_sample": 200,
    "n_test": 200,
    "difficulty": {"min_steps": 2, "max_steps": 2, "max_number": 10, "max_factor": 5},
    "vocab_size": 1024,
    "seq_len": 112,
    "batch_size": 16,
    "learning_rate": 3e-3,
    "max_new_tokens": 64,
    "expert": {"hidden": 96, "layers": 3, "heads": 4, "kv_heads": 2, "mlp": 256, "steps": 1200},
    "amateur": {"hidden": 64, "layers": 2, "heads": 2, "kv_heads": 1, "mlp": 192, "steps": 600},
}

# The reduced variant CI runs: ~50 s of 2-core time. A smoke test of the pipeline: expert 12.5%, amateur
# 9.4% on 64 test problems, 34% of expert steps with KL > 0.4.
CI_DEMO: dict[str, Any] = {
    **DEFAULT_DEMO,
    "n_pretrain": 4000,
    "n_sample": 32,
    "n_test": 64,
    "expert": {**DEFAULT_DEMO["expert"], "steps": 300},
    "amateur": {**DEFAULT_DEMO["amateur"], "steps": 150},
}

_BOXED = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")


def build_demo_pair(out_dir: str | os.PathLike, cfg: Mapping[str, Any]) -> dict[str, Any]:
  """Builds (or finds already built) the demo pair under `out_dir`; returns the DONE.json summary.

  Args:
    out_dir: folder to build in (created if missing). Only the paths in the module docstring are
      written or removed there.
    cfg: a dict or ml_collections ConfigDict with exactly the keys of `DEFAULT_DEMO`.
  Returns:
    {'version', 'config', 'data', 'tokenizer', 'expert', 'amateur', 'seconds'}: 'expert' and
    'amateur' hold params, steps, first/final loss and greedy accuracy on the test split.
  """
  cfg = normalize_config(cfg)
  out_dir = os.fspath(out_dir)
  cached = load_summary(out_dir, cfg)
  if cached is not None:
    logging.info("demo pair in %s is up to date; skipping the build", out_dir)
    return cached
  start = time.perf_counter()
  os.makedirs(out_dir, exist_ok=True)
  _remove_outputs(out_dir)

  t = time.perf_counter()
  splits = world.make_splits(cfg["seed"], cfg["n_pretrain"], cfg["n_sample"], cfg["n_test"],
                             difficulty=world.Difficulty(**cfg["difficulty"]))
  world.write_jsonl(splits["sample"], os.path.join(out_dir, SAMPLE_FILE))
  world.write_jsonl(splits["test"], os.path.join(out_dir, TEST_FILE))
  seconds = {"world": time.perf_counter() - t}

  with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tokenizer-") as tokenizer_dir:
    t = time.perf_counter()
    prompts = [demo_prompt(p.question) for p in splits["pretrain"]]
    completions = [p.solution + demo_tokenizer.IM_END for p in splits["pretrain"]]
    tok = demo_tokenizer.train_tokenizer([p + c for p, c in zip(prompts, completions)], tokenizer_dir,
                                         vocab_size=cfg["vocab_size"])
    special = demo_tokenizer.special_token_ids(tok)
    eos_id, pad_id = special[demo_tokenizer.IM_END], special[demo_tokenizer.ENDOFTEXT]
    rows = pretrain.pack_examples(_encode(tok, prompts), _encode(tok, completions), cfg["seq_len"], pad_id)
    if len(rows[0]) < cfg["batch_size"]:
      raise ValueError(f"demo.seq_len={cfg['seq_len']}: only {len(rows[0])} pretraining problems fit, fewer than "
                       f"demo.batch_size={cfg['batch_size']}")
    seconds["tokenizer"] = time.perf_counter() - t

    test_prompts = _encode(tok, [demo_prompt(p.question) for p in splits["test"]])
    models = {}
    for offset, name in enumerate((EXPERT_DIR, AMATEUR_DIR)):
      t = time.perf_counter()
      model, losses = pretrain.pretrain(_model_config(cfg, name, len(tok)), *rows, steps=cfg[name]["steps"],
                                        batch_size=cfg["batch_size"], learning_rate=cfg["learning_rate"],
                                        seed=cfg["seed"] + offset, desc=f"pretrain {name}")
      pretrain.save_model(model, os.path.join(out_dir, name), tokenizer_dir, [eos_id], pad_id)
      seconds[f"{name}_train"] = time.perf_counter() - t
      t = time.perf_counter()
      texts = [tok.decode(ids, skip_special_tokens=True)
               for ids in greedy_decode(model, test_prompts, cfg["max_new_tokens"], eos_id, pad_id)]
      seconds[f"{name}_eval"] = time.perf_counter() - t
      models[name] = {
          "params": model.config.num_params(),
          "steps": cfg[name]["steps"],
          "first_loss": losses[0],
          "final_loss": float(np.mean(losses[-max(1, len(losses) // 10):])),
          "test_accuracy": float(np.mean([boxed_answer(text) == p.answer for text, p in zip(texts, splits["test"])])),
      }
      logging.info("demo %s: %d params, final loss %.3f, test accuracy %.3f", name,
                   models[name]["params"], models[name]["final_loss"], models[name]["test_accuracy"])

  seconds["total"] = time.perf_counter() - start
  summary = {
      "version": BUILD_VERSION,
      "config": cfg,
      "data": {"pretrain_rows": len(rows[0]), "dropped_over_seq_len": cfg["n_pretrain"] - len(rows[0])},
      "tokenizer": {"vocab_size": len(tok), "eos_id": eos_id, "pad_id": pad_id},
      **models,
      "seconds": {k: round(v, 2) for k, v in seconds.items()},
  }
  write_json_atomic(os.path.join(out_dir, DONE_FILE), summary)
  return summary


def normalize_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """`cfg` as plain JSON-typed dicts, checked against `DEFAULT_DEMO`'s keys and value types."""
  if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict
    cfg = cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise ValueError(f"demo config: expected a dict or ConfigDict, got {type(cfg).__name__}")
  cfg = _checked(cfg, DEFAULT_DEMO, "demo")
  try:
    world.Difficulty(**cfg["difficulty"])
  except ValueError as e:
    raise ValueError(f"demo.difficulty: {e}") from None
  for name in (EXPERT_DIR, AMATEUR_DIR):
    try:
      _model_config(cfg, name, cfg["vocab_size"])
    except ValueError as e:
      raise ValueError(f"demo.{name}: {e}") from None
  return cfg


def _model_config(cfg: dict[str, Any], name: str, vocab_size: int) -> ModelConfig:
  """The Qwen2 config of cfg[name] ('expert' or 'amateur')."""
  m = cfg[name]
  return pretrain.tiny_qwen2_config(vocab_size, m["hidden"], m["layers"], m["heads"], m["kv_heads"], m["mlp"])


def _checked(cfg: Mapping[str, Any], reference: Mapping[str, Any], where: str) -> dict[str, Any]:
  """`cfg` with exactly `reference`'s keys, each value of its type (floats > 0, ints >= 1, seed >= 0)."""
  missing = sorted(set(reference) - set(cfg))
  unknown = sorted(set(cfg) - set(reference))
  if missing or unknown:
    raise ValueError(f"{where} config: missing keys {missing}, unknown keys {unknown}; expected exactly "
                     f"{sorted(reference)}")
  out = {}
  for key, ref in reference.items():
    value = cfg[key]
    if isinstance(ref, Mapping):
      if hasattr(value, "to_dict"):
        value = value.to_dict()
      if not isinstance(value, Mapping):
        raise ValueError(f"{where}.{key}: expected a mapping with keys {sorted(ref)}, got {value!r}")
      out[key] = _checked(value, ref, f"{where}.{key}")
    elif isinstance(ref, float):
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{where}.{key}: expected a positive number, got {value!r}")
      out[key] = float(value)
    else:
      lowest = 0 if key == "seed" else 1
      if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(f"{where}.{key}: expected an int >= {lowest}, got {value!r}")
      out[key] = value
  return out


def load_summary(out_dir: str | os.PathLike, cfg: Mapping[str, Any]) -> dict[str, Any] | None:
  """The DONE.json summary if `out_dir` holds a complete build of `cfg` (normalized), else None."""
  out_dir = os.fspath(out_dir)
  try:
    with open(os.path.join(out_dir, DONE_FILE)) as f:
      summary = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  if not isinstance(summary, dict) or summary.get("version") != BUILD_VERSION or summary.get("config") != cfg:
    return None
  needed = [SAMPLE_FILE, TEST_FILE] + [os.path.join(d, f) for d in (EXPERT_DIR, AMATEUR_DIR)
                                        for f in ("config.json", "model.safetensors", "tokenizer.json")]
  if not all(os.path.isfile(os.path.join(out_dir, p)) for p in needed):
    return None
  return summary


def demo_prompt(question: str) -> str:
  """The pipeline's default prompt ('qwen25-math-cot' ChatML) for `question`, as the models see it."""
  return prompt_templates.render_prompt(question, prompt_templates.QWEN25_MATH_COT)


def boxed_answer(text: str) -> str | None:
  """The integer in the last `\\boxed{N}` of `text` (as written, e.g. '42'), or None."""
  found = _BOXED.findall(text)
  return found[-1] if found else None


def greedy_decode(model: Transformer, prompts: list[list[int]], max_new_tokens: int, eos_id: int,
                  pad_id: int) -> list[list[int]]:
  """Greedy completions of `prompts` through the generation engine, EOS excluded."""
  out = generate(model, prompts, max_new_tokens=max_new_tokens, eos_ids=(eos_id,), pad_id=pad_id)
  return [t[:-1] if r == "eos" else t for t, r in zip(out.tokens, out.finish_reasons)]


def _encode(tok, texts: list[str]) -> list[list[int]]:
  """Token ids of each text, no special tokens added (the chat markup is in the text)."""
  return tok(texts, add_special_tokens=False)["input_ids"]


def _remove_outputs(out_dir: str) -> None:
  """Deletes what an earlier (possibly partial) build left, DONE.json first."""
  for name in (DONE_FILE, SAMPLE_FILE, TEST_FILE):
    path = os.path.join(out_dir, name)
    if os.path.exists(path):
      os.remove(path)
  for name in (EXPERT_DIR, AMATEUR_DIR):
    shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
