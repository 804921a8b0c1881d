"""Hugging Face checkpoints <-> lr_jax parameter trees.

Loading resolves a local directory or a hub id, reads only safetensors (never pickle, never remote
code), and places each tensor straight into its sharded `jax.Array` (one tensor on the host at a
time). Export writes the same layout back (sharded with an index past a size limit).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lr_jax.files import write_json_atomic
from lr_jax.models.config import ModelConfig
from lr_jax.models.safetensors_io import SafetensorsFile, save_file
from lr_jax.models.transformer import Fused, Transformer
from lr_jax.sharding import Layout

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Files copied next to exported weights so the folder is a complete HF checkpoint.
AUX_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
             "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "tokenizer.model")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]

_LAYER_KEYS = {
    "self_attn.q_proj": ("attn", "q_proj"), "self_attn.k_proj": ("attn", "k_proj"),
    "self_attn.v_proj": ("attn", "v_proj"), "self_attn.o_proj": ("attn", "o_proj"),
    "mlp.gate_proj": ("mlp", "gate_proj"), "mlp.up_proj": ("mlp", "up_proj"), "mlp.down_proj": ("mlp", "down_proj"),
}
_NORMS = {"input_layernorm": "input_norm", "post_attention_layernorm": "post_attn_norm"}


class Pretrained(NamedTuple):
  """What `from_pretrained` returns: the model, its config and the resolved checkpoint folder."""
  model: Transformer
  config: ModelConfig
  path: str


def resolve_checkpoint(path_or_id: str) -> str:
  """A local folder as is; otherwise a hub id through huggingface_hub (local cache first).

  With HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set, only the cache is consulted.
  """
  local = os.path.expanduser(path_or_id)
  if os.path.isdir(local):
    return local
  if path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1:
    raise FileNotFoundError(f"{path_or_id}: no such checkpoint directory (and not a hub id of the form org/name)")
  from huggingface_hub import constants, snapshot_download
  from huggingface_hub.errors import LocalEntryNotFoundError
  partial = None
  try:
    cached = snapshot_download(path_or_id, allow_patterns=_HUB_PATTERNS, local_files_only=True)
  except LocalEntryNotFoundError:
    pass  # not cached
  else:
    partial = _incomplete(cached)
    if partial is None:
      return cached
  # huggingface_hub reads HF_HUB_OFFLINE once, at import; read the environment too so a later setting counts.
  offline = constants.HF_HUB_OFFLINE or any(
      os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
  if offline and partial:
    raise FileNotFoundError(f"{path_or_id}: the Hugging Face cache holds only part of it ({partial}); offline "
                            "mode (HF_HUB_OFFLINE) forbids downloading the rest: download it once with network "
                            "access, or pass a local checkpoint folder")
  if offline:
    raise FileNotFoundError(f"{path_or_id}: not a local directory and not in the Hugging Face cache "
                            f"({constants.HF_HUB_CACHE}); offline mode (HF_HUB_OFFLINE) forbids downloading it: "
                            "download it once with network access, or pass a local checkpoint folder")
  try:
    return snapshot_download(path_or_id, allow_patterns=_HUB_PATTERNS)
  except Exception as e:
    raise OSError(f"{path_or_id}: not a local directory, not in the Hugging Face cache, and the hub could "
                  f"not be reached (offline?): {type(e).__name__}") from None


def _incomplete(folder: str) -> str | None:
  """What a cached hub snapshot lacks to be loaded (e.g. only its config and tokenizer were fetched,
  or a sharded download stopped part way), or None if it is complete."""
  if not os.path.isfile(os.path.join(folder, "config.json")):
    return f"{folder} has no config.json"
  try:
    weight_files(folder)
  except (OSError, ValueError) as e:
    return str(e)
  return None


def weight_files(folder: str) -> dict[str, str]:
  """Tensor name -> safetensors file, from the index or the single file. Refuses pickle-only folders."""
  index = os.path.join(folder, INDEX_FILE)
  if os.path.isfile(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise ValueError(f"{index}: corrupt index, expected a JSON object with 'weight_map' ({e})") from None
    for name, file in weight_map.items():
      if not os.path.isfile(os.path.join(folder, file)):
        raise FileNotFoundError(f"{index}: tensor {name} is in {file}, which does not exist")
    return {name: os.path.join(folder, file) for name, file in weight_map.items()}
  single = os.path.join(folder, SINGLE_FILE)
  if os.path.isfile(single):
    return {name: single for name in SafetensorsFile(single).keys()}
  pickles = sorted(f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".pth", ".ckpt")))
  if pickles:
    raise ValueError(
        f"{folder}: only pickle weights ({', '.join(pickles)}) found; lr_jax loads safetensors only, because "
        "unpickling can run arbitrary code. Convert once in a trusted environment: "
        "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT) writes model.safetensors")
  raise FileNotFoundError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}")


def _hf_name(path: tuple) -> tuple[str, int | None]:
  """HF tensor name of one parameter path, and the kernel's input rank (None: copy as is)."""
  if path == ("embed",):
    return "model.embed_tokens.weight", None
  if path == ("lm_head",):
    return "lm_head.weight", None
  if path == ("final_norm", "scale"):
    return "model.norm.weight", None
  assert path[0] == "layers", path
  i, rest = path[1], path[2:]
  if rest[-1] == "scale":
    hf = {v: k for k, v in _NORMS.items()}[rest[0]]
    return f"model.layers.{i}.{hf}.weight", None
  module = {v: k for k, v in _LAYER_KEYS.items()}[tuple(rest[:2])]
  kind = rest[2]
  in_ndim = 2 if rest[1] == "o_proj" else 1
  return f"model.layers.{i}.{module}.{'weight' if kind == 'kernel' else 'bias'}", (in_ndim if kind == "kernel" else 0)


def _to_ours(arr: np.ndarray, in_ndim: int | None, shape: tuple[int, ...]) -> np.ndarray:
  """HF layout -> ours: Linear weights `[out, in]` become `[*in, *out]`; biases reshape."""
  if in_ndim:
    return arr.T.reshape(shape)
  return arr.reshape(shape)


def _to_hf(arr: np.ndarray, in_ndim: int | None) -> np.ndarray:
  if in_ndim:
    in_size = int(np.prod(arr.shape[:in_ndim]))
    return arr.reshape(in_size, -1).T
  if in_ndim == 0:
    return arr.reshape(-1)
  return arr


def param_paths(state: nnx.State) -> Iterator[tuple[tuple, nnx.Variable]]:
  """(path of plain keys, Variable) for every parameter of a model state: LoRA and the fused
  projections' derived copies (`Transformer.fuse_projections`) excluded."""
  flat = jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  for keypath, var in flat:
    path = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in keypath)
    if "lora" not in path and not isinstance(var, Fused):
      yield path, var


def load_state(folder: str, cfg: ModelConfig, abstract_state: nnx.State, dtype, layout: Layout | None) -> nnx.State:
  """Fills `abstract_state` (from `nnx.eval_shape`) with the checkpoint's tensors, sharded per `layout`."""
  files = weight_files(folder)
  listing = os.path.join(folder, INDEX_FILE if os.path.isfile(os.path.join(folder, INDEX_FILE)) else SINGLE_FILE)
  opened: dict[str, SafetensorsFile] = {}
  used = set()

  def tensor(name: str) -> np.ndarray:
    if name not in files:
      raise ValueError(f"{listing}: missing tensor {name} (required by config.json: model_type={cfg.model_type}, "
                       f"layers={cfg.num_layers}, tie_word_embeddings={cfg.tie_word_embeddings})")
    file = files[name]
    if file not in opened:
      opened[file] = SafetensorsFile(file)
    if name not in opened[file]:
      raise ValueError(f"{listing}: maps tensor {name} to {file}, which does not hold it (a stale index?)")
    used.add(name)
    return opened[file].get(name)

  def load(path, var):
    name, in_ndim = _hf_name(path)
    raw = tensor(name)
    shape = tuple(var.shape)
    expect_hf = _to_hf(np.empty(shape, np.int8), in_ndim).shape
    if tuple(raw.shape) != tuple(expect_hf):
      raise ValueError(f"{files[name]}: tensor {name} has shape {tuple(raw.shape)}, config.json implies "
                       f"{tuple(expect_hf)}")
    arr = np.asarray(_to_ours(raw, in_ndim, shape)).astype(jnp.dtype(dtype))
    if layout is None:
      value = jax.device_put(arr)
    else:
      sharding = layout.sharding(var.logical_axes, shape)
      value = jax.make_array_from_callback(shape, sharding, lambda idx: arr[idx])
    return var.replace(value)

  leaves = {path: load(path, var) for path, var in param_paths(abstract_state)}
  if cfg.tie_word_embeddings and "lm_head.weight" in files:
    # Some exporters store the tied head too; accept it only if it is the embedding.
    if not np.array_equal(tensor("lm_head.weight"), tensor("model.embed_tokens.weight")):
      raise ValueError(f"{files['lm_head.weight']}: tensor lm_head.weight differs from model.embed_tokens.weight, "
                       "but config.json has tie_word_embeddings=true")
  unexpected = sorted(n for n in files if n not in used and not n.endswith("rotary_emb.inv_freq"))
  if unexpected:
    raise ValueError(f"{files[unexpected[0]]}: unexpected tensor {unexpected[0]}"
                     + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
                     + " not used by the architecture in config.json")

  def fill(keypath, var):
    path = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in keypath)
    return leaves.get(path, var)

  return jax.tree_util.tree_map_with_path(fill, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def from_pretrained(path_or_id: str, *, dtype=jnp.bfloat16, layout: Layout | None = None,
                    remat: bool = False, scan_layers: bool = False, attention: str = "auto",
                    decode_attention: str = "auto", fuse_decode_projections: bool = True,
                    decode_gemm: str = "xla") -> Pretrained:
  """Loads a Qwen2/Llama HF checkpoint (local folder or hub id) into a `Transformer`.

  Args:
    path_or_id: a folder with config.json + safetensors, or a hub id such as "Qwen/Qwen2.5-0.5B".
    dtype: parameter and activation dtype (bf16, fp16 or fp32); stored tensors are converted.
    layout: mesh + sharding rules; parameters are placed per the rules. None: default device.
    remat, scan_layers, attention, decode_attention, fuse_decode_projections, decode_gemm: the
      `Transformer` flags (rematerialise each layer in the backward pass; run cache-free forwards as
      one scan over the layers; the attention kernel of cache-free forwards: "auto", "xla" or
      "cudnn"; that of one-token decode steps: "auto", "xla" or "pallas"; fuse q/k/v and gate/up in
      decode loops; their GEMMs: "xla" or "mosaic"). All six can be changed on the model later.
  """
  folder = resolve_checkpoint(path_or_id)
  cfg = ModelConfig.from_json(folder)
  abstract = nnx.eval_shape(lambda: Transformer(cfg, dtype=dtype, layout=layout, remat=remat,
                                                scan_layers=scan_layers, attention=attention,
                                                decode_attention=decode_attention,
                                                fuse_decode_projections=fuse_decode_projections,
                                                decode_gemm=decode_gemm, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  state = load_state(folder, cfg, abstract_state, dtype, layout)
  return Pretrained(nnx.merge(graphdef, state), cfg, folder)


def to_hf_tensors(state: nnx.State, dtype=None) -> dict[str, np.ndarray]:
  """The base parameters of a model state as HF-named host arrays (gathered from all devices)."""
  out = {}
  for path, var in param_paths(state):
    name, in_ndim = _hf_name(path)
    arr = np.asarray(jax.device_get(var.get_value()))
    if dtype is not None:
      arr = arr.astype(jnp.dtype(dtype))
    out[name] = np.ascontiguousarray(_to_hf(arr, in_ndim))
  return out


def save_pretrained(tensors: dict[str, np.ndarray], cfg: ModelConfig, out_dir: str, *,
                    source_dir: str | None = None, max_shard_bytes: int = 5 * 2**30, dtype_name: str | None = None) -> None:
  """Writes an HF checkpoint folder: config.json, safetensors (sharded + index past `max_shard_bytes`),
  and the tokenizer/generation files copied from `source_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensors[name]
    size += nbytes
  if len(shards) == 1:
    save_file(shards[0], os.path.join(out_dir, SINGLE_FILE))
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, os.path.join(out_dir, file))
      weight_map.update({n: file for n in shard})
    total = sum(t.nbytes for t in tensors.values())
    write_json_atomic(os.path.join(out_dir, INDEX_FILE), {"metadata": {"total_size": total}, "weight_map": weight_map})
  hf_config = cfg.to_hf_dict()
  if source_dir and os.path.isfile(os.path.join(source_dir, "config.json")):
    with open(os.path.join(source_dir, "config.json")) as f:
      hf_config = {**json.load(f), **hf_config}
  if dtype_name:
    hf_config["dtype"] = dtype_name
    if "torch_dtype" in hf_config:  # the field's name before transformers 4.56; older tools still read it
      hf_config["torch_dtype"] = dtype_name
  write_json_atomic(os.path.join(out_dir, "config.json"), hf_config)
  if source_dir:
    for name in AUX_FILES:
      src = os.path.join(source_dir, name)
      if os.path.isfile(src):
        shutil.copyfile(src, os.path.join(out_dir, name))
