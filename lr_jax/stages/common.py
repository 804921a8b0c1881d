"""What every stage shares: workdir layout, dtype names, loading models and tokenizers, logging."""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from lr_jax.files import write_json_atomic
from lr_jax.generation.stopping import eos_ids_from_checkpoint
from lr_jax.models.hf_io import Pretrained, from_pretrained, resolve_checkpoint
from lr_jax.sharding import Layout, make_mesh

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}


STAGE_ORDER = ("demo", "sample", "distill", "eval", "export", "report")


class Workdir:
  """Paths of a run's artifacts; stages communicate only through these files."""

  def __init__(self, root: str):
    self.root = root

  def __getattr__(self, name: str) -> str:
    paths = {
        "config": "config.json",
        "samples": "samples",
        "sample_stats": "samples/stats",
        "checkpoints": "checkpoints",
        "distill_done": "checkpoints/DONE.json",
        "adapter": "checkpoints/final_adapter",  # the tuned LoRA, a PEFT folder
        "eval": "eval",
        "export_merged": "export/merged",
        "export_peft": "export/peft",
        "export_done": "export/DONE.json",
        "report": "report.md",
        "plots": "plots",
        "demo": "demo",
        "timings": "timings.json",
    }
    if name not in paths:
      raise AttributeError(name)
    return os.path.join(self.root, paths[name])


def is_main_process() -> bool:
  return jax.process_index() == 0


def wait_for_main_process(name: str) -> None:
  """On several processes, a barrier: the others wait here for process 0's writes (and exit no earlier:
  JAX aborts every process when one exits more than 5 minutes before the rest)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def log(msg: str, *args: Any) -> None:
  """Prints a progress line on process 0 only (library INFO logging is off by default)."""
  if is_main_process():
    print(msg % args if args else msg, flush=True)


def dtype_of(name: str):
  if name not in DTYPES:
    raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
  return DTYPES[name]


def make_layout(mesh_shape, rules: str) -> Layout:
  return Layout.create(make_mesh(tuple(mesh_shape)), rules)


def load_model(path_or_id: str, dtype_name: str, layout: Layout | None, remat: bool = False,
               scan_layers: bool = False, attention: str = "auto", decode_attention: str = "auto",
               fuse_decode_projections: bool = True, decode_gemm: str = "xla") -> Pretrained:
  """`from_pretrained` with the config's dtype name; `attention`, `decode_attention`,
  `fuse_decode_projections` and `decode_gemm` are the config's top-level fields (checked with the
  config, by `pipeline.check_config`; `kernel_flags`)."""
  return from_pretrained(path_or_id, dtype=dtype_of(dtype_name), layout=layout, remat=remat,
                         scan_layers=scan_layers, attention=attention, decode_attention=decode_attention,
                         fuse_decode_projections=fuse_decode_projections, decode_gemm=decode_gemm)


def kernel_flags(config) -> dict:
  """The config's kernel fields, as `load_model`'s keywords (their defaults where a config lacks one)."""
  return dict(attention=config.get("attention", "auto"), decode_attention=config.get("decode_attention", "auto"),
              fuse_decode_projections=config.get("fuse_decode_projections", True),
              decode_gemm=config.get("decode_gemm", "xla"))


def load_tokenizer(path_or_id: str):
  """The checkpoint's HF tokenizer (offline when the folder is local)."""
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(resolve_checkpoint(path_or_id))


def eos_ids(path_or_id: str, tokenizer) -> list[int]:
  """Every EOS id of a checkpoint (generation_config.json's, then the tokenizer's)."""
  return eos_ids_from_checkpoint(resolve_checkpoint(path_or_id), tokenizer)


def write_json(path: str, obj: Any) -> None:
  """Atomic JSON write (process 0's business; callers decide who writes)."""
  write_json_atomic(path, obj, default=str)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)
