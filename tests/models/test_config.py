"""ModelConfig: reading Qwen2/Llama `config.json` files (transformers 5 and older layouts), refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lr_jax.models.config import ModelConfig
from lr_jax.models.transformer import rope_inv_freq
from tests.helpers import load_hf, make_tiny_hf

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def hf_dict(model_type="qwen2", **fields):
  """A minimal `config.json` dict in the transformers 5 layout."""
  d = {"model_type": model_type, "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
       "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
  d.update(fields)
  return d


def test_qwen2_fields_and_attention_biases():
  cfg = ModelConfig.from_hf_dict(hf_dict(tie_word_embeddings=True, rms_norm_eps=1e-5))
  assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == (100, 64, 2, 4, 2)
  assert (cfg.head_dim, cfg.intermediate_size, cfg.rms_norm_eps) == (16, 128, 1e-5)
  assert cfg.tie_word_embeddings and cfg.qkv_bias and not cfg.o_bias and cfg.rope_scaling is None


def test_llama_attention_bias_applies_to_q_k_v_and_o():
  assert not ModelConfig.from_hf_dict(hf_dict("llama")).qkv_bias
  cfg = ModelConfig.from_hf_dict(hf_dict("llama", attention_bias=True))
  assert cfg.qkv_bias and cfg.o_bias


def test_head_dim_may_differ_from_hidden_over_heads():
  assert ModelConfig.from_hf_dict(hf_dict("llama", head_dim=48)).head_dim == 48
  assert ModelConfig.from_hf_dict(hf_dict("llama", head_dim=None)).head_dim == 16


def test_swish_is_silu():
  assert ModelConfig.from_hf_dict(hf_dict(hidden_act="swish")) == ModelConfig.from_hf_dict(hf_dict())


def test_missing_num_key_value_heads_means_multi_head_attention():
  d = hf_dict()
  del d["num_key_value_heads"]
  assert ModelConfig.from_hf_dict(d).num_kv_heads == 4


def test_rope_theta_from_rope_parameters_transformers5_layout():
  assert ModelConfig.from_hf_dict(hf_dict(rope_parameters={"rope_type": "default", "rope_theta": 5e5})).rope_theta == 5e5


def test_rope_theta_from_top_level_field_older_layout():
  d = hf_dict(rope_theta=1234.0, rope_scaling=None)
  del d["rope_parameters"]
  assert ModelConfig.from_hf_dict(d).rope_theta == 1234.0


def test_llama3_scaling_read_from_either_layout():
  new = ModelConfig.from_hf_dict(hf_dict("llama", rope_parameters={"rope_theta": 5e5, **LLAMA3}))
  old = hf_dict("llama", rope_theta=5e5, rope_scaling=dict(LLAMA3))
  del old["rope_parameters"]
  old = ModelConfig.from_hf_dict(old)
  assert new == old
  assert new.rope_theta == 5e5
  assert new.rope_scaling_dict == {k: float(v) for k, v in LLAMA3.items() if k != "rope_type"}


@pytest.mark.parametrize("fields", [
    dict(rope_scaling=dict(LLAMA3), rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
    dict(rope_scaling=dict(LLAMA3), rope_parameters={"rope_type": "default", "rope_theta": 5e5}, rope_theta=2e5),
    dict(rope_scaling=None, rope_parameters={"rope_theta": 5e5, **LLAMA3}, rope_theta=2e5),
    dict(rope_scaling={}, rope_parameters={"rope_type": "default"}, rope_theta=2e5),
    # llama3 without original_max_position_embeddings: max_position_embeddings (a top-level one is ignored)
    dict(rope_parameters={"rope_theta": 5e5, **{k: v for k, v in LLAMA3.items() if k != "original_max_position_embeddings"}},
         max_position_embeddings=2048),
    dict(rope_parameters={"rope_theta": 5e5, **LLAMA3}, original_max_position_embeddings=128),
    dict(rope_parameters={"rope_theta": 5e5, **{k: v for k, v in LLAMA3.items() if k != "original_max_position_embeddings"}}),
])
def test_both_rope_layouts_in_one_file_are_read_as_transformers_reads_them(fields):
  """A non-empty `rope_scaling` replaces `rope_parameters`; a theta neither holds comes from the top level."""
  transformers = pytest.importorskip("transformers")
  d = hf_dict("llama", **fields)
  ours = ModelConfig.from_hf_dict(d)
  theirs = dict(transformers.LlamaConfig(**{k: v for k, v in d.items() if k != "model_type"}).rope_parameters)
  assert ours.rope_theta == theirs.pop("rope_theta")
  rope_type = theirs.pop("rope_type")
  assert (ours.rope_scaling is None) == (rope_type == "default")
  if rope_type == "llama3":
    assert ours.rope_scaling_dict == {k: float(v) for k, v in theirs.items()}


def test_a_legacy_scaling_field_refused_even_beside_a_default_rope_parameters():
  d = hf_dict(rope_scaling={"type": "linear", "factor": 2.0}, rope_parameters={"rope_type": "default"})
  with pytest.raises(ValueError, match="'linear' is not supported"):
    ModelConfig.from_hf_dict(d)


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "longrope"])
def test_other_rope_scaling_types_refused_by_name(rope_type):
  d = hf_dict(rope_parameters={"rope_type": rope_type, "rope_theta": 1e4, "factor": 2.0})
  with pytest.raises(ValueError, match=f"RoPE scaling type '{rope_type}' is not supported; supported: default, llama3"):
    ModelConfig.from_hf_dict(d, source="m/config.json")


def test_legacy_rope_scaling_type_key_is_refused_too():
  d = hf_dict(rope_scaling={"type": "linear", "factor": 2.0})
  del d["rope_parameters"]
  with pytest.raises(ValueError, match="'linear' is not supported"):
    ModelConfig.from_hf_dict(d)


def test_llama3_scaling_without_its_fields_names_them():
  d = hf_dict("llama", rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0})
  with pytest.raises(ValueError, match="llama3 RoPE scaling lacks low_freq_factor, high_freq_factor"):
    ModelConfig.from_hf_dict(d)


def test_unknown_model_type_named_with_supported_list_on_one_line(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps(hf_dict("mistral")))
  with pytest.raises(ValueError) as e:
    ModelConfig.from_json(str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg
  assert str(path) in msg and "'mistral'" in msg and "supported: qwen2, llama" in msg


@pytest.mark.parametrize("field, value, expect", [
    ("hidden_act", "gelu", "hidden_act 'gelu' is not supported"),
    ("use_sliding_window", True, "use_sliding_window=true is not supported"),
    ("mlp_bias", True, "mlp_bias=true is not supported"),
    ("quantization_config", {"quant_method": "awq", "bits": 4}, r"quantized checkpoints \(awq\) are not supported"),
    ("num_key_value_heads", 3, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
])
def test_unsupported_options_refused(field, value, expect):
  with pytest.raises(ValueError, match=expect):
    ModelConfig.from_hf_dict(hf_dict(**{field: value}))


def test_missing_required_field_named():
  d = hf_dict()
  del d["intermediate_size"]
  with pytest.raises(ValueError, match="missing field 'intermediate_size'"):
    ModelConfig.from_hf_dict(d)


def test_from_json_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/config.json: no config.json"):
    ModelConfig.from_json(str(tmp_path))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="config.json: not valid JSON"):
    ModelConfig.from_json(str(tmp_path / "config.json"))


@pytest.mark.parametrize("d", [hf_dict(), hf_dict("llama", head_dim=8, attention_bias=True, tie_word_embeddings=True),
                               hf_dict("llama", rope_parameters={"rope_theta": 5e5, **LLAMA3})])
def test_to_hf_dict_round_trips(d):
  cfg = ModelConfig.from_hf_dict(d)
  assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
  older = cfg.to_hf_dict()  # read as tools before transformers 5 read it: top-level theta and scaling only
  del older["rope_parameters"]
  assert ModelConfig.from_hf_dict(older) == cfg


def test_config_is_hashable_for_jit_static_use():
  assert hash(ModelConfig.from_hf_dict(hf_dict("llama", rope_parameters={"rope_theta": 5e5, **LLAMA3})))


@pytest.mark.parametrize("family, kw", [
    ("qwen2", dict(tie_word_embeddings=False)),
    ("qwen2", dict(tie_word_embeddings=True)),
    ("llama", dict(head_dim=32, attention_bias=True, tie_word_embeddings=False)),
])
def test_num_params_matches_transformers(tmp_path, family, kw):
  model_dir = make_tiny_hf(tmp_path, family, vocab_size=96, tokenizer=False, **kw)
  hf = load_hf(model_dir)
  assert ModelConfig.from_json(model_dir).num_params() == sum(p.numel() for p in hf.parameters())


def test_rope_inv_freq_matches_transformers_llama3(tmp_path):
  model_dir = make_tiny_hf(tmp_path, "llama", vocab_size=96, head_dim=32, rope_theta=5e5, rope_scaling=LLAMA3,
                           tokenizer=False)
  ours = rope_inv_freq(ModelConfig.from_json(model_dir))
  theirs = load_hf(model_dir).model.rotary_emb.inv_freq.numpy()
  # all three llama3 regimes (scaled, smoothed, kept) occur at this head_dim / context length
  plain = rope_inv_freq(ModelConfig.from_hf_dict(hf_dict("llama", head_dim=32,
                                                         rope_parameters={"rope_theta": 5e5})))
  ratio = plain / ours
  assert np.any(np.isclose(ratio, 8.0)) and np.any(np.isclose(ratio, 1.0)) and np.any((ratio > 1.01) & (ratio < 7.9))
  np.testing.assert_allclose(ours, theirs, rtol=1e-6)
