"""Merged-HF and PEFT exports load in transformers / peft with the LoRA model's logits; PEFT import.

Models are tiny random Qwen2s (hidden 64, 2 layers, vocab 512, fp32) with adapters whose B is drawn
at random (B = 0 at init would make every comparison trivially pass). Logits agree to 1e-5 relative to
their scale (max |logit| ~ 5; the two fp32 forwards round differently, ~1e-5 absolute at most).
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lr_jax.export import ADAPTER_CONFIG, export_merged, export_peft, load_peft_adapter
from lr_jax.models import from_pretrained
from lr_jax.models.lora import TARGETS, LoRAConfig, LoRAParam, apply_lora
from lr_jax.sharding import Layout, make_mesh
from tests.helpers import edit_config, hf_logits, jax_logits, load_hf, make_tiny_hf, random_ids

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

VOCAB = 512
RTOL = 1e-5


@pytest.fixture(autouse=True)
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  path = make_tiny_hf(tmp_path_factory.mktemp("base"), "qwen2", vocab_size=VOCAB, tokenizer=False)
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"model_max_length": 4096}, f)  # stands for the tokenizer files an export must copy
  return path


def tuned_model(base_dir, lora: LoRAConfig, seed: int = 0):
  """The fp32 base with adapters on `lora.targets`, A and B both random (std 0.05)."""
  model = from_pretrained(base_dir, dtype=jnp.float32).model
  apply_lora(model, lora, rngs=nnx.Rngs(seed))
  rng = np.random.default_rng(seed)
  nnx.update(model, nnx.map_state(lambda p, v: v.replace(jnp.asarray(0.05 * rng.standard_normal(v.shape), v.dtype)),
                                  nnx.state(model, LoRAParam)))
  return model


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def assert_logits_close(ours, ref):
  bound = RTOL * float(np.max(np.abs(ref)))
  assert max_diff(ours, ref) <= bound, f"max abs diff {max_diff(ours, ref):.3g} > {bound:.3g}"


def test_merged_export_loads_in_transformers_with_equal_logits_and_shards_past_the_limit(base_dir, tmp_path):
  lora = LoRAConfig(targets=("q_proj", "v_proj", "o_proj", "down_proj"), rank=4, alpha=8.0)
  model = tuned_model(base_dir, lora)
  out = str(tmp_path / "merged")
  export_merged(model, out, source_dir=base_dir, max_shard_bytes=100_000)
  files = sorted(os.listdir(out))
  shards = [f for f in files if f.endswith(".safetensors")]
  assert len(shards) > 2 and "model.safetensors.index.json" in files, files
  assert {"config.json", "generation_config.json", "tokenizer_config.json"} <= set(files)
  ids = random_ids(2, 24, VOCAB, seed=3)
  ours = jax_logits(model, ids)
  ref = hf_logits(load_hf(out), ids)
  assert_logits_close(ours, ref)
  # the export changed something: the base model's logits are far from the tuned ones
  assert max_diff(hf_logits(load_hf(base_dir), ids), ref) > 1e-2


def test_merged_export_writes_its_dtype_under_both_config_names(base_dir, tmp_path):
  """A source config of transformers < 4.56 names the dtype "torch_dtype": both names then say the
  export's, so neither old nor new tools load a float32 export as bfloat16."""
  source = str(tmp_path / "old")
  shutil.copytree(base_dir, source)
  edit_config(source, torch_dtype="bfloat16")
  out = str(tmp_path / "merged")
  export_merged(tuned_model(base_dir, LoRAConfig()), out, source_dir=source, dtype="float32")
  with open(os.path.join(out, "config.json")) as f:
    cfg = json.load(f)
  assert (cfg["dtype"], cfg["torch_dtype"]) == ("float32", "float32")


def test_peft_export_loads_with_peftmodel_with_equal_logits(base_dir, tmp_path):
  lora = LoRAConfig(targets=("q_proj", "v_proj"), rank=8, alpha=16.0, dropout=0.05)
  model = tuned_model(base_dir, lora, seed=2)
  out = str(tmp_path / "adapter")
  export_peft(model, lora, out, base_model_name_or_path=base_dir)
  with open(os.path.join(out, ADAPTER_CONFIG)) as f:
    cfg = json.load(f)
  assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (8, 16.0, 0.05)
  assert cfg["target_modules"] == ["q_proj", "v_proj"]
  assert (cfg["peft_type"], cfg["task_type"], cfg["base_model_name_or_path"]) == ("LORA", "CAUSAL_LM", base_dir)
  tuned = peft.PeftModel.from_pretrained(load_hf(base_dir), out).eval()
  ids = random_ids(2, 24, VOCAB, seed=4)
  assert_logits_close(jax_logits(model, ids), hf_logits(tuned, ids))


def test_adapter_saved_by_peft_on_every_target_loads_with_equal_logits(base_dir, tmp_path):
  hf = load_hf(base_dir)
  config = peft.LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, target_modules=sorted(TARGETS), task_type="CAUSAL_LM")
  tuned = peft.get_peft_model(hf, config)
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in tuned.named_parameters():
      if "lora_B" in name:
        torch.nn.init.normal_(p, std=0.05)
  tuned.save_pretrained(str(tmp_path / "peft"))
  model = from_pretrained(base_dir, dtype=jnp.float32).model
  lora = load_peft_adapter(model, str(tmp_path / "peft"))
  assert (lora.targets, lora.rank, lora.alpha) == (tuple(TARGETS), 4, 12.0)
  ids = random_ids(2, 24, VOCAB, seed=5)
  assert_logits_close(jax_logits(model, ids), hf_logits(tuned.eval(), ids))


def test_peft_round_trip_restores_adapters_bitwise(base_dir, tmp_path):
  lora = LoRAConfig(targets=("k_proj", "o_proj", "gate_proj", "up_proj"), rank=2, alpha=4.0)
  model = tuned_model(base_dir, lora, seed=7)
  export_peft(model, lora, str(tmp_path / "a"), base_model_name_or_path="base")
  fresh = from_pretrained(base_dir, dtype=jnp.float32).model
  assert load_peft_adapter(fresh, str(tmp_path / "a")) == LoRAConfig(
      targets=("k_proj", "o_proj", "gate_proj", "up_proj"), rank=2, alpha=4.0, dropout=lora.dropout)
  ours, back = nnx.to_flat_state(nnx.state(model, LoRAParam)), nnx.to_flat_state(nnx.state(fresh, LoRAParam))
  assert [p for p, _ in ours] == [p for p, _ in back]
  for (path, a), (_, b) in zip(ours, back):
    assert np.array_equal(np.asarray(a[...]), np.asarray(b[...])), path
  # loading into a model that already has adapters of that shape overwrites them
  assert load_peft_adapter(fresh, str(tmp_path / "a")).rank == 2


def test_reexport_replaces_the_folder_whole(base_dir, tmp_path):
  lora = LoRAConfig(rank=2, alpha=4.0)
  out = str(tmp_path / "adapter")
  export_peft(tuned_model(base_dir, lora, seed=1), lora, out, base_model_name_or_path="base")
  (tmp_path / "adapter" / "stale.txt").write_text("from an older export")
  export_peft(tuned_model(base_dir, lora, seed=2), lora, out, base_model_name_or_path="base")
  assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
  assert sorted(os.listdir(tmp_path)) == ["adapter"]  # no temporary folders left behind


@pytest.fixture(scope="module")
def small_adapter(base_dir, tmp_path_factory):
  lora = LoRAConfig(rank=2, alpha=4.0)
  out = str(tmp_path_factory.mktemp("small") / "adapter")
  export_peft(tuned_model(base_dir, lora), lora, out, base_model_name_or_path="base")
  return out


@pytest.mark.parametrize("field,value,message", [
    ("peft_type", "IA3", "peft_type 'IA3' is not supported"),
    ("use_dora", True, "use_dora=True is not supported"),
    ("target_modules", ["q_proj", "lm_head"], "target_modules"),
    ("modules_to_save", ["embed_tokens"], "modules_to_save"),
])
def test_unsupported_adapter_configs_are_refused_in_one_line(base_dir, small_adapter, tmp_path, field, value, message):
  out = str(tmp_path / "a")
  shutil.copytree(small_adapter, out)
  path = os.path.join(out, ADAPTER_CONFIG)
  with open(path) as f:
    cfg = json.load(f)
  cfg[field] = value
  with open(path, "w") as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match=message) as err:
    load_peft_adapter(from_pretrained(base_dir, dtype=jnp.float32).model, out)
  assert "\n" not in str(err.value) and ADAPTER_CONFIG in str(err.value)


def test_adapter_with_another_scale_than_the_models_adapters_is_refused(base_dir, small_adapter):
  model = from_pretrained(base_dir, dtype=jnp.float32).model
  apply_lora(model, LoRAConfig(rank=2, alpha=2.0), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"lora_alpha / r = 2.0, the model's adapters scale by 1.0"):
    load_peft_adapter(model, small_adapter)


def test_peft_export_refuses_fully_finetuned_parameters(base_dir, tmp_path):
  lora = LoRAConfig(rank=2, alpha=4.0, full_finetune=("embed",))
  with pytest.raises(ValueError, match="use export_merged"):
    export_peft(tuned_model(base_dir, lora), lora, str(tmp_path / "a"), base_model_name_or_path="base")


@pytest.mark.parametrize("described, message", [
    (LoRAConfig(targets=("q_proj", "v_proj"), rank=2, alpha=4.0), r"on \['k_proj', 'q_proj', 'v_proj'\] of rank \[2\]"),
    (LoRAConfig(targets=("q_proj", "k_proj", "v_proj"), rank=4, alpha=8.0), r"describes \['k_proj', 'q_proj', "
     r"'v_proj'\] of rank 4"),
])
def test_peft_export_refuses_a_config_that_does_not_describe_the_models_adapters(base_dir, tmp_path, described,
                                                                                 message):
  model = tuned_model(base_dir, LoRAConfig(targets=("q_proj", "k_proj", "v_proj"), rank=2, alpha=4.0))
  with pytest.raises(ValueError, match=message):
    export_peft(model, described, str(tmp_path / "a"), base_model_name_or_path="base")
  assert not (tmp_path / "a").exists()


def test_adapter_loads_onto_a_sharded_model_replicated_with_equal_logits(base_dir, small_adapter):
  layout = Layout.create(make_mesh((2, 2, 2)), "sample")
  sharded = from_pretrained(base_dir, dtype=jnp.float32, layout=layout).model
  plain = from_pretrained(base_dir, dtype=jnp.float32).model
  load_peft_adapter(sharded, small_adapter)
  load_peft_adapter(plain, small_adapter)
  for _, v in nnx.to_flat_state(nnx.state(sharded, LoRAParam)):
    assert v[...].sharding.is_fully_replicated and len(v[...].sharding.device_set) == 8
  ids = random_ids(2, 16, VOCAB, seed=6)
  assert_logits_close(jax_logits(sharded, ids), jax_logits(plain, ids))


def test_an_export_removes_what_a_killed_one_left_beside_its_folder(tmp_path):
  """A SIGKILL mid-export leaves `.NAME.tmp-*` (a model copy) or `.NAME.old-*`; the next export of
  NAME removes them, and nothing of another folder's."""
  from lr_jax.export import _atomic_dir
  for left in (".merged.tmp-abc", ".merged.old-def", ".peft.tmp-ghi"):
    (tmp_path / left).mkdir()
    (tmp_path / left / "model.safetensors").write_bytes(b"x")
  with _atomic_dir(str(tmp_path / "merged")) as tmp:
    with open(os.path.join(tmp, "config.json"), "w") as f:
      f.write("{}")
  assert sorted(os.listdir(tmp_path)) == [".peft.tmp-ghi", "merged"]
  assert os.listdir(tmp_path / "merged") == ["config.json"]
