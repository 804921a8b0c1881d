"""Loading and exporting Hugging Face checkpoints: layouts, dtypes, hub ids, and every refusal's message."""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from lr_jax.models import from_pretrained
from lr_jax.models.hf_io import INDEX_FILE, SINGLE_FILE, save_pretrained, to_hf_tensors, weight_files
from lr_jax.models.safetensors_io import SafetensorsFile, save_file
from tests.helpers import edit_config, hf_logits, jax_logits, load_hf, make_tiny_hf, random_ids

torch = pytest.importorskip("torch")

VOCAB = 96


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  """A tiny untied Qwen2 checkpoint (single model.safetensors, fp32); copy it before changing it."""
  return make_tiny_hf(tmp_path_factory.mktemp("ckpt"), "qwen2", vocab_size=VOCAB, hidden_size=32,
                      intermediate_size=64, num_heads=2, num_kv_heads=1, tokenizer=False)


@pytest.fixture
def ckpt(tiny_dir, tmp_path):
  return shutil.copytree(tiny_dir, str(tmp_path / "ckpt"))


def read_all(path):
  f = SafetensorsFile(path)
  return {name: np.array(f.get(name)) for name in f.keys()}


def rewrite(model_dir, change):
  """Applies `change(tensors)` to model.safetensors in place."""
  path = os.path.join(model_dir, SINGLE_FILE)
  tensors = read_all(path)
  change(tensors)
  save_file(tensors, path)
  return path


def params(model):
  return {path: np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}


def load_error(model_dir, error=ValueError):
  with pytest.raises(error) as e:
    from_pretrained(model_dir, dtype=jnp.float32)
  msg = str(e.value)
  assert "\n" not in msg, msg
  return msg


def test_sharded_index_checkpoint_loads_the_same_parameters(tmp_path):
  single = make_tiny_hf(tmp_path, "llama", name="single", vocab_size=VOCAB, tokenizer=False)
  sharded = make_tiny_hf(tmp_path, "llama", name="sharded", vocab_size=VOCAB, tokenizer=False, max_shard_size="60KB")
  assert os.path.isfile(os.path.join(sharded, INDEX_FILE)) and not os.path.exists(os.path.join(sharded, SINGLE_FILE))
  assert len(set(weight_files(sharded).values())) > 2
  a, b = params(from_pretrained(single, dtype=jnp.float32).model), params(from_pretrained(sharded, dtype=jnp.float32).model)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("stored", ["float32", "bfloat16", "float16"])
def test_stored_dtype_converted_to_requested_dtype(tmp_path, stored):
  model_dir = make_tiny_hf(tmp_path, "qwen2", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_heads=2,
                           num_kv_heads=1, dtype=stored, tokenizer=False)
  raw = read_all(os.path.join(model_dir, SINGLE_FILE))
  assert raw["model.embed_tokens.weight"].dtype == np.dtype(getattr(ml_dtypes, stored, None) or stored)
  for want in (jnp.float32, jnp.bfloat16, jnp.float16):
    model = from_pretrained(model_dir, dtype=want).model
    assert {a.dtype for a in params(model).values()} == {np.dtype(want)}
    # values are the stored ones, rounded once to the requested dtype
    np.testing.assert_array_equal(np.asarray(model.embed[...]), raw["model.embed_tokens.weight"].astype(want))
    q = raw["model.layers.1.self_attn.q_proj.weight"]  # [H*Dh, D] -> ours [D, H, Dh]
    np.testing.assert_array_equal(np.asarray(model.layers[1].attn.q_proj.kernel[...]),
                                  q.T.reshape(32, 2, 16).astype(want))


def test_hub_id_offline_and_not_cached_is_a_clear_error_without_network(tmp_path, monkeypatch):
  import huggingface_hub

  calls = []

  def cache_only(repo_id, **kw):
    calls.append(kw.get("local_files_only"))
    assert kw.get("local_files_only"), "tried the network"
    return real(repo_id, cache_dir=str(tmp_path / "hub"), **kw)

  real = huggingface_hub.snapshot_download
  monkeypatch.setattr(huggingface_hub, "snapshot_download", cache_only)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.chdir(tmp_path)  # so "lr-jax-tests/..." is not a local folder
  msg = load_error("lr-jax-tests/no-such-model", FileNotFoundError)
  assert calls == [True]
  assert msg.startswith("lr-jax-tests/no-such-model: not a local directory and not in the Hugging Face cache")
  assert "HF_HUB_OFFLINE" in msg


def _fake_hub_cache(root, repo, files):
  """A Hugging Face cache holding `files` (name -> source path) of hub id `repo` at one snapshot."""
  repo_dir = os.path.join(root, "models--" + repo.replace("/", "--"))
  snapshot = os.path.join(repo_dir, "snapshots", "0" * 40)
  os.makedirs(snapshot)
  os.makedirs(os.path.join(repo_dir, "refs"))
  with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
    f.write("0" * 40)
  for name, source in files.items():
    shutil.copy(source, os.path.join(snapshot, name))
  return snapshot


def _cache_only(monkeypatch, tmp_path, online_calls):
  """snapshot_download reading the test's cache; a download attempt is recorded and fails."""
  import huggingface_hub
  real = huggingface_hub.snapshot_download

  def fake(repo_id, **kw):
    if not kw.get("local_files_only"):
      online_calls.append(repo_id)
      raise ConnectionError("no network in tests")
    return real(repo_id, cache_dir=str(tmp_path / "hub"), **kw)

  monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
  monkeypatch.chdir(tmp_path)


def test_hub_id_fully_cached_loads_from_the_cache(ckpt, tmp_path, monkeypatch):
  snapshot = _fake_hub_cache(str(tmp_path / "hub"), "org/tiny", {
      n: os.path.join(ckpt, n) for n in ("config.json", SINGLE_FILE)})
  online = []
  _cache_only(monkeypatch, tmp_path, online)
  assert from_pretrained("org/tiny", dtype=jnp.float32).path == snapshot and online == []


def test_hub_id_cached_without_weights_is_downloaded_not_refused(ckpt, tmp_path, monkeypatch):
  """Config and tokenizer fetched earlier (e.g. by AutoTokenizer) but no weights: the cache is
  not taken for the checkpoint; online the rest is downloaded, offline the error says what lacks."""
  _fake_hub_cache(str(tmp_path / "hub"), "org/tiny", {"config.json": os.path.join(ckpt, "config.json")})
  online = []
  _cache_only(monkeypatch, tmp_path, online)
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
  msg = load_error("org/tiny", OSError)
  assert online == ["org/tiny"] and "the hub could not be reached" in msg, msg
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  msg = load_error("org/tiny", FileNotFoundError)
  assert msg.startswith("org/tiny: the Hugging Face cache holds only part of it") and SINGLE_FILE in msg, msg
  assert online == ["org/tiny"]


def test_local_path_with_a_tilde_is_expanded(ckpt, monkeypatch):
  monkeypatch.setenv("HOME", os.path.dirname(ckpt))
  assert from_pretrained("~/ckpt", dtype=jnp.float32).path == ckpt


def test_missing_local_path_is_not_taken_for_a_hub_id(tmp_path):
  msg = load_error(str(tmp_path / "nowhere"), FileNotFoundError)
  assert msg.startswith(f"{tmp_path}/nowhere: no such checkpoint directory")


def test_pickle_only_folder_refused_with_reason_and_conversion(ckpt):
  os.remove(os.path.join(ckpt, SINGLE_FILE))
  torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, os.path.join(ckpt, "pytorch_model.bin"))
  msg = load_error(ckpt)
  assert msg.startswith(f"{ckpt}: only pickle weights (pytorch_model.bin) found")
  assert "safetensors only" in msg and "arbitrary code" in msg and "save_pretrained(OUT)" in msg


def test_folder_without_weights_named(ckpt):
  os.remove(os.path.join(ckpt, SINGLE_FILE))
  assert load_error(ckpt, FileNotFoundError) == f"{ckpt}: no {SINGLE_FILE} or {INDEX_FILE}"


def test_missing_tensor_named_with_file(ckpt):
  path = rewrite(ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  assert load_error(ckpt).startswith(f"{path}: missing tensor model.layers.1.mlp.up_proj.weight")


def test_unexpected_tensor_named_with_file(ckpt):
  path = rewrite(ckpt, lambda t: t.update({"model.layers.0.mlp.extra.weight": np.zeros(3, np.float32)}))
  assert load_error(ckpt).startswith(f"{path}: unexpected tensor model.layers.0.mlp.extra.weight")


def test_wrong_shape_named_with_file_and_both_shapes(ckpt):
  path = rewrite(ckpt, lambda t: t.update({"model.layers.0.self_attn.k_proj.bias": np.zeros(8, np.float32)}))
  assert load_error(ckpt) == (f"{path}: tensor model.layers.0.self_attn.k_proj.bias has shape (8,), "
                              "config.json implies (16,)")


def test_truncated_file_named_with_tensor(ckpt):
  path = os.path.join(ckpt, SINGLE_FILE)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size - 100)
  last = max(read_all_header(path), key=lambda kv: kv[1])[0]
  assert load_error(ckpt).startswith(f"{path}: truncated file: tensor {last} ends at byte {size}")


def read_all_header(path):
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
  return [(k, v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]


def test_corrupt_file_named(ckpt):
  path = os.path.join(ckpt, SINGLE_FILE)
  with open(path, "r+b") as f:
    f.seek(10)
    f.write(b"\xff\xfe{{")
  assert load_error(ckpt).startswith(f"{path}: corrupt safetensors header")


@pytest.mark.parametrize("fields, expect", [
    ({"num_hidden_layers": 3}, "{index}: missing tensor model.layers.2."),
    ({"num_hidden_layers": 1}, "{file}: unexpected tensor model.layers.1."),
    ({"intermediate_size": 48}, "{file}: tensor model.layers.0.mlp.down_proj.weight has shape (32, 64), "
                                "config.json implies (32, 48)"),
    ({"vocab_size": 100}, "{file}: tensor model.embed_tokens.weight has shape (96, 32), config.json implies (100, 32)"),
])
def test_config_and_weights_that_disagree_named(ckpt, fields, expect):
  edit_config(ckpt, **fields)
  file = os.path.join(ckpt, SINGLE_FILE)
  assert load_error(ckpt).startswith(expect.format(index=file, file=file))


def test_untied_config_on_tied_weights_reports_missing_head(tmp_path):
  model_dir = make_tiny_hf(tmp_path, "llama", vocab_size=VOCAB, tie_word_embeddings=True, tokenizer=False)
  assert "lm_head.weight" not in SafetensorsFile(os.path.join(model_dir, SINGLE_FILE)).keys()
  edit_config(model_dir, tie_word_embeddings=False)
  assert load_error(model_dir).startswith(f"{model_dir}/{SINGLE_FILE}: missing tensor lm_head.weight")


def test_tied_config_accepts_a_stored_copy_of_the_embedding_but_not_another_head(ckpt):
  edit_config(ckpt, tie_word_embeddings=True)
  path = rewrite(ckpt, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].copy()}))
  assert from_pretrained(ckpt, dtype=jnp.float32).model.lm_head is None
  rewrite(ckpt, lambda t: t.update({"lm_head.weight": t["lm_head.weight"] + 1}))
  assert load_error(ckpt).startswith(f"{path}: tensor lm_head.weight differs from model.embed_tokens.weight")


def test_index_naming_a_missing_shard_or_corrupt_index_named(tmp_path):
  model_dir = make_tiny_hf(tmp_path, "llama", vocab_size=VOCAB, tokenizer=False, max_shard_size="60KB")
  index = os.path.join(model_dir, INDEX_FILE)
  with open(index) as f:
    weight_map = json.load(f)["weight_map"]
  shard = weight_map["model.norm.weight"]
  os.remove(os.path.join(model_dir, shard))
  assert load_error(model_dir, FileNotFoundError).startswith(f"{index}: tensor ")
  with open(index, "w") as f:
    f.write('{"metadata": {}}')
  assert load_error(model_dir).startswith(f"{index}: corrupt index")


def test_index_mapping_a_tensor_to_a_shard_without_it_named(tmp_path):
  model_dir = make_tiny_hf(tmp_path, "llama", vocab_size=VOCAB, tokenizer=False, max_shard_size="60KB")
  index = os.path.join(model_dir, INDEX_FILE)
  with open(index) as f:
    shard = os.path.join(model_dir, json.load(f)["weight_map"]["model.norm.weight"])
  tensors = read_all(shard)
  del tensors["model.norm.weight"]
  save_file(tensors, shard)
  msg = load_error(model_dir)
  assert msg == f"{index}: maps tensor model.norm.weight to {shard}, which does not hold it (a stale index?)"


@pytest.mark.parametrize("family, tie", [("qwen2", False), ("llama", True)])
def test_export_round_trips_through_transformers(tmp_path, family, tie):
  src = make_tiny_hf(tmp_path, family, name="src", vocab_size=VOCAB, tie_word_embeddings=tie)
  pre = from_pretrained(src, dtype=jnp.float32)
  out = str(tmp_path / "out")
  _, state = nnx.split(pre.model)
  save_pretrained(to_hf_tensors(state), pre.config, out, source_dir=src, max_shard_bytes=100_000)
  assert os.path.isfile(os.path.join(out, INDEX_FILE)) and os.path.isfile(os.path.join(out, "tokenizer_config.json"))
  ids = random_ids(2, 12, VOCAB)
  with jax.default_matmul_precision("highest"):
    ref = hf_logits(load_hf(src), ids)
    np.testing.assert_allclose(hf_logits(load_hf(out), ids), ref, atol=1e-5)  # transformers reads the export
    np.testing.assert_allclose(jax_logits(from_pretrained(out, dtype=jnp.float32).model, ids), ref, atol=1e-4)
  from transformers import AutoTokenizer
  assert AutoTokenizer.from_pretrained(out)("Janet's ducks")["input_ids"] == \
      AutoTokenizer.from_pretrained(src)("Janet's ducks")["input_ids"]


def test_a_model_with_fused_projections_exports_its_parameters_only(ckpt):
  model = from_pretrained(ckpt, dtype=jnp.float32).model
  plain = to_hf_tensors(nnx.state(model))
  model.fuse_projections()
  fused = to_hf_tensors(nnx.state(model))
  assert fused.keys() == plain.keys()
  for name in plain:
    np.testing.assert_array_equal(fused[name], plain[name])


def test_export_in_bf16_writes_bf16_tensors(tmp_path):
  src = make_tiny_hf(tmp_path, "qwen2", name="src", vocab_size=VOCAB, tokenizer=False)
  pre = from_pretrained(src, dtype=jnp.float32)
  out = str(tmp_path / "out")
  save_pretrained(to_hf_tensors(nnx.state(pre.model), dtype=jnp.bfloat16), pre.config, out,
                  source_dir=src, dtype_name="bfloat16")
  stored = read_all(os.path.join(out, SINGLE_FILE))
  assert {a.dtype for a in stored.values()} == {np.dtype(ml_dtypes.bfloat16)}
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["dtype"] == "bfloat16"
  np.testing.assert_array_equal(stored["model.norm.weight"], np.asarray(pre.model.final_norm.scale[...]).astype(
      ml_dtypes.bfloat16))
