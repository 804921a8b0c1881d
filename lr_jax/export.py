"""Exports of a LoRA-tuned model: a merged Hugging Face checkpoint and a PEFT adapter; PEFT import.

- `export_merged`: base + (alpha / r) * A @ B folded into each targeted kernel, written as a complete
  HF folder (config.json, safetensors sharded with an index past `max_shard_bytes`, and the
  tokenizer/generation files of the source checkpoint); `transformers.AutoModelForCausalLM` loads it.
- `export_peft`: adapter_config.json + adapter_model.safetensors (float32) that
  `peft.PeftModel.from_pretrained(base, dir)` loads onto the base model.
- `load_peft_adapter`: the reverse, for adapters from PEFT or from `export_peft`.

Each export is written to a temporary sibling folder and renamed into place, so `out_dir` is either
the complete previous export or the complete new one, never a mix.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from typing import Iterator

import jax.numpy as jnp
from flax import nnx

from lr_jax.models.hf_io import save_pretrained, to_hf_tensors
from lr_jax.models.lora import (TARGETS, LoRAConfig, LoRAParam, adapter_scale, adapter_shapes, apply_lora,
                                from_peft_tensors, merge_lora, to_peft_tensors)
from lr_jax.models.safetensors_io import SafetensorsFile, save_file
from lr_jax.models.transformer import Transformer
from lr_jax.sharding import shard_state

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@contextlib.contextmanager
def _atomic_dir(out_dir: str) -> Iterator[str]:
  """Yields a temporary folder beside `out_dir` that replaces it once the block succeeds (first
  removing the temporary folders an export killed part way left there: a model copy each)."""
  out_dir = os.path.abspath(out_dir)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  for kind in ("tmp", "old"):
    for stale in glob.glob(os.path.join(parent, f".{glob.escape(os.path.basename(out_dir))}.{kind}-*")):
      shutil.rmtree(stale, ignore_errors=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.tmp-")
  os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is meant to be shared
  try:
    yield tmp
    old = None
    if os.path.exists(out_dir):
      old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.old-")
      os.replace(out_dir, os.path.join(old, "export"))
    os.replace(tmp, out_dir)
    if old is not None:
      shutil.rmtree(old)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)


def export_merged(model: Transformer, out_dir: str, *, source_dir: str | None = None,
                  max_shard_bytes: int = 5 * 2**30, dtype: str | None = None) -> None:
  """Writes `model` with its adapters merged as an HF checkpoint folder.

  Args:
    model: a `Transformer` with LoRA adapters (e.g. `nnx.merge(graphdef, params, frozen)`), its
      fully fine-tuned parameters (if any) included.
    source_dir: the base checkpoint folder, whose tokenizer and generation files are copied.
    max_shard_bytes: safetensors files are split past this size, with an index.
    dtype: tensor dtype name ('bfloat16', 'float32', ...); None keeps the model's.
  """
  merged = merge_lora(nnx.state(model), adapter_scale(model))
  tensors = to_hf_tensors(merged, dtype=None if dtype is None else jnp.dtype(dtype))
  dtype_name = dtype or jnp.dtype(model.embed[...].dtype).name
  with _atomic_dir(out_dir) as tmp:
    save_pretrained(tensors, model.config, tmp, source_dir=source_dir, max_shard_bytes=max_shard_bytes,
                    dtype_name=dtype_name)


def adapter_config(lora: LoRAConfig, base_model_name_or_path: str) -> dict:
  """The adapter_config.json fields PEFT reads for a plain LoRA on `lora.targets`."""
  return {
      "peft_type": "LORA",
      "task_type": "CAUSAL_LM",
      "r": lora.rank,
      "lora_alpha": lora.alpha,
      "lora_dropout": lora.dropout,
      "target_modules": sorted(lora.targets),
      "base_model_name_or_path": base_model_name_or_path,
      "bias": "none",
      "fan_in_fan_out": False,
      "inference_mode": True,
      "init_lora_weights": True,
      "use_rslora": False,
      "use_dora": False,
      "modules_to_save": None,
      "layers_to_transform": None,
      "rank_pattern": {},
      "alpha_pattern": {},
  }


def export_peft(model: Transformer, lora: LoRAConfig, out_dir: str, *, base_model_name_or_path: str) -> None:
  """Writes the adapters of `model` as a PEFT LoRA adapter folder (float32 tensors).

  Refuses a run with `full_finetune` parameters: they are not LoRA factors, so only the merged
  export carries them.
  """
  if lora.full_finetune:
    raise ValueError(f"export_peft: full_finetune={list(lora.full_finetune)} parameters cannot be stored in a "
                     "LoRA adapter; use export_merged")
  if adapter_scale(model) != lora.scale:
    raise ValueError(f"export_peft: the model's adapters scale by {adapter_scale(model)}, the config's "
                     f"lora_alpha / r by {lora.scale}")
  targets, ranks = adapter_shapes(nnx.state(model, LoRAParam))
  if targets != set(lora.targets) or ranks != {lora.rank}:
    raise ValueError(f"export_peft: the model has adapters on {sorted(targets)} of rank {sorted(ranks)}, the config "
                     f"describes {sorted(lora.targets)} of rank {lora.rank}")
  tensors = to_peft_tensors(nnx.state(model, LoRAParam))
  with _atomic_dir(out_dir) as tmp:
    save_file(tensors, os.path.join(tmp, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
      json.dump(adapter_config(lora, base_model_name_or_path), f, indent=2, sort_keys=True)


def read_adapter_config(adapter_dir: str) -> LoRAConfig:
  """The LoRAConfig of a PEFT adapter folder; refuses LoRA variants lr_jax does not implement."""
  path = os.path.join(adapter_dir, ADAPTER_CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no PEFT adapter config found")
  try:
    with open(path) as f:
      cfg = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if cfg.get("peft_type") != "LORA":
    raise ValueError(f"{path}: peft_type {cfg.get('peft_type')!r} is not supported; expected 'LORA'")
  unsupported = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "bias": "none"}
  for key, plain in unsupported.items():
    if cfg.get(key, plain) != plain:
      raise ValueError(f"{path}: {key}={cfg[key]!r} is not supported; expected {plain!r}")
  for key in ("modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern"):
    if cfg.get(key):
      raise ValueError(f"{path}: {key}={cfg[key]!r} is not supported; expected it empty")
  targets = cfg.get("target_modules")
  if not isinstance(targets, list) or not set(targets) <= set(TARGETS):
    raise ValueError(f"{path}: target_modules {targets!r} must be a list drawn from {list(TARGETS)}")
  for key in ("r", "lora_alpha"):
    if not isinstance(cfg.get(key), (int, float)):
      raise ValueError(f"{path}: field {key!r} must be a number, got {cfg.get(key)!r}")
  return LoRAConfig(targets=tuple(t for t in TARGETS if t in targets), rank=int(cfg["r"]),
                    alpha=float(cfg["lora_alpha"]), dropout=float(cfg.get("lora_dropout", 0.0)))


def load_peft_adapter(model: Transformer, adapter_dir: str, *, rngs: nnx.Rngs | None = None) -> LoRAConfig:
  """Loads a PEFT LoRA adapter into `model` (in place) and returns its config.

  A model without adapters gets them (`apply_lora`, dropout streams from `rngs`); a model that has
  them must have the adapter's targets, rank and scale. The factors are placed on the model's
  mesh (replicated) when it has a layout.
  """
  lora = read_adapter_config(adapter_dir)
  weights = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
  if not os.path.isfile(weights):
    raise FileNotFoundError(f"{weights}: no adapter weights found (only safetensors adapters are read)")
  if not nnx.to_flat_state(nnx.state(model, LoRAParam)):
    apply_lora(model, lora, rngs=rngs or nnx.Rngs(0))
  elif adapter_scale(model) != lora.scale:
    raise ValueError(f"{adapter_dir}: lora_alpha / r = {lora.scale}, the model's adapters scale by "
                     f"{adapter_scale(model)}")
  present = nnx.state(model, LoRAParam)
  file = SafetensorsFile(weights)
  tensors = {name: file.get(name) for name in file.keys()}
  # Placed like the model (replicated over its mesh), so a sharded or multi-host model can use them.
  nnx.update(model, shard_state(from_peft_tensors(present, tensors, weights), model.layout))
  return lora
