"""Shared test helpers: the shared data folder, tiny random Hugging Face models, reference logits.

`make_tiny_hf` builds a Qwen2 or Llama model with transformers + torch, re-initialises its weights
so that logits have a meaningful scale (std ~1-3), saves it with `save_pretrained` and copies the
family's real tokenizer next to it, so `AutoTokenizer.from_pretrained(dir)` and
`lr_jax.models.from_pretrained(dir)` both work on the folder. Tests that use it need torch.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lr_jax.models import positions_from_mask

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_module(stem: str):
  """bench/<stem>.py imported as module `bench_<stem>`, with bench/ on sys.path for the scripts'
  imports of each other; registered in sys.modules (dataclasses resolve annotations through it)."""
  folder = os.path.join(REPO_ROOT, "bench")
  if folder not in sys.path:
    sys.path.insert(0, folder)
  name = f"bench_{stem}"
  spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{stem}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module

# family -> (shared tokenizer folder, embedding rows of the real models, special token ids of the real configs)
FAMILIES = {
    "qwen2": ("qwen2.5", 151936, {"bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643}),
    "llama": ("smollm2", 49152, {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}),
}


def shared_dir() -> str:
  """The read-only shared data folder: $LR_SHARED_DIR, else <repo>/../shared."""
  return os.environ.get("LR_SHARED_DIR") or os.path.join(os.path.dirname(REPO_ROOT), "shared")


def shared_path(*parts: str) -> str:
  """Path of a file or folder under the shared folder; skips the calling test when it is absent."""
  path = os.path.join(shared_dir(), *parts)
  if not os.path.exists(path):
    pytest.skip(f"shared file {path} not found (set LR_SHARED_DIR)")
  return path


def gsm8k_question(index: int = 0, split: str = "test") -> str:
  """The `question` field of record `index` of the shared GSM8K split."""
  with open(shared_path("data", "gsm8k", f"{split}.jsonl")) as f:
    for i, line in enumerate(f):
      if i == index:
        return json.loads(line)["question"]
  raise IndexError(f"gsm8k/{split}.jsonl has no record {index}")


def make_tiny_hf(tmp_path, family: str = "qwen2", *, name: str | None = None, vocab_size: int | None = None,
                 hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                 head_dim: int | None = None, intermediate_size: int = 128, tie_word_embeddings: bool = False,
                 rope_theta: float = 10000.0, rope_scaling: dict[str, Any] | None = None, dtype: str = "float32",
                 init_std: float = 0.2, seed: int = 0, max_shard_size: int | str | None = None,
                 tokenizer: bool = True, **config_overrides) -> str:
  """Builds, randomly initialises and saves a tiny HF causal LM; returns its folder `tmp_path/name`.

  Args:
    tmp_path: parent folder (pytest's `tmp_path`); the model goes to `tmp_path / (name or family)`.
    family: "qwen2" (q/k/v bias, Qwen2.5 tokenizer) or "llama" (no bias, SmolLM2 tokenizer).
    vocab_size: embedding rows; default the family's real size (151,936 / 49,152), so every id the
      tokenizer produces is valid. Smaller values are faster but only random ids are then safe.
    head_dim: None = hidden_size // num_heads; set it to test head_dim != hidden / heads.
    rope_scaling: extra `rope_parameters` entries, e.g. {"rope_type": "llama3", "factor": 8.0, ...}.
    dtype: dtype of the saved tensors: "float32", "bfloat16" or "float16".
    init_std: std of the normal re-initialisation of every matrix and bias; RMSNorm weights become
      1 + 0.1 * N(0, 1) so that a loader that drops them is caught.
    max_shard_size: passed to `save_pretrained` (e.g. "200KB") to get shards and an index.
    tokenizer: copy the family's real tokenizer files from the shared folder (skips if absent).
    config_overrides: any other field of Qwen2Config / LlamaConfig (e.g. attention_bias=True).
  """
  torch = pytest.importorskip("torch")
  import transformers

  if family not in FAMILIES:
    raise ValueError(f"family {family!r} is not one of {sorted(FAMILIES)}")
  tok_name, real_vocab, special_ids = FAMILIES[family]
  config_cls = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig}[family]
  model_cls = {"qwen2": transformers.Qwen2ForCausalLM, "llama": transformers.LlamaForCausalLM}[family]
  vocab_size = vocab_size or real_vocab
  fields = dict(
      vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
      num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
      head_dim=head_dim or hidden_size // num_heads, intermediate_size=intermediate_size,
      tie_word_embeddings=tie_word_embeddings, max_position_embeddings=4096, rms_norm_eps=1e-6,
      rope_parameters={"rope_type": "default", "rope_theta": rope_theta, **(rope_scaling or {})},
      # ids the embedding cannot hold are left out (transformers refuses a pad id beyond the vocab)
      **{k: v for k, v in special_ids.items() if v < vocab_size})
  fields.update(config_overrides)
  config = config_cls(**fields)

  torch.manual_seed(seed)
  model = model_cls(config).eval()
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if pname.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      else:
        torch.nn.init.normal_(p, std=init_std)
  model = model.to(getattr(torch, dtype))
  out = os.path.join(str(tmp_path), name or family)
  kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(out, **kwargs)
  if tokenizer:
    src = shared_path("tokenizers", tok_name)
    for f in sorted(os.listdir(src)):
      shutil.copyfile(os.path.join(src, f), os.path.join(out, f))
  return out


def edit_config(model_dir: str, drop: tuple[str, ...] = (), **fields) -> None:
  """Rewrites `model_dir/config.json` with `fields` set and the keys in `drop` removed."""
  path = os.path.join(model_dir, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  for key in drop:
    cfg.pop(key, None)
  cfg.update(fields)
  with open(path, "w") as f:
    json.dump(cfg, f, indent=2)


def load_hf(model_dir: str, dtype: str = "float32"):
  """The transformers PyTorch model of `model_dir` in eval mode, eager attention (the plain maths)."""
  torch = pytest.importorskip("torch")
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                            attn_implementation="eager")
  return model.eval()


def hf_logits(hf_model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  """float32 `[B, T, V]` logits of a transformers model for int ids `[B, T]`.

  With a (left-padding) `mask`, positions restart at 0 on each row's first real token, as in
  `lr_jax.models.positions_from_mask`; plain transformers forwards would count the padding.
  """
  import torch
  ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
  mask_t = torch.ones_like(ids_t) if mask is None else torch.as_tensor(np.asarray(mask), dtype=torch.long)
  positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
  with torch.no_grad():
    out = hf_model(input_ids=ids_t, attention_mask=mask_t, position_ids=positions)
  return out.logits.float().numpy()


def jax_hidden(model, ids: np.ndarray, mask: np.ndarray | None = None) -> jax.Array:
  """Final-normed hidden `[B, T, D]` of an lr_jax `Transformer`, positions from the (left-padding) mask.

  Jitted with the graph definition static: eager op-by-op dispatch compiles every op anew for each
  shape, which is several times slower than one compile of the whole forward.
  """
  ids = jnp.asarray(ids, jnp.int32)
  mask = jnp.ones(ids.shape, bool) if mask is None else jnp.asarray(mask, bool)
  graphdef, state = nnx.split(model)
  return _jit_hidden(graphdef, state, ids, mask)


@functools.partial(jax.jit, static_argnums=0)
def _jit_hidden(graphdef, state, ids, mask):
  hidden, _ = nnx.merge(graphdef, state)(ids, positions_from_mask(mask), mask)
  return hidden


def jax_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  """float32 `[B, T, V]` logits of an lr_jax `Transformer` (tests only: the whole `[B, T, V]` at once)."""
  return np.asarray(model.logits(jax_hidden(model, ids, mask)))


def random_ids(batch: int, length: int, vocab_size: int, seed: int = 0) -> np.ndarray:
  """int32 `[batch, length]` token ids drawn uniformly from `[0, vocab_size)`."""
  return np.random.default_rng(seed).integers(0, vocab_size, (batch, length), dtype=np.int32)
