"""`ModelConfig`: the architecture of a Qwen2 or Llama checkpoint, read from its `config.json`."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")
SUPPORTED_ROPE_TYPES = ("default", "llama3")
DEFAULT_MAX_POSITIONS = {"qwen2": 32768, "llama": 2048}  # transformers' config defaults
SUPPORTED_ACTIVATIONS = ("silu", "swish")  # transformers: both are torch.nn.SiLU


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of one decoder. Frozen and hashable: it is static in jitted functions.

  `rope_scaling` is a sorted tuple of (key, value) pairs of the `llama3` scaling, or None.
  """
  model_type: str
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  intermediate_size: int
  rms_norm_eps: float
  rope_theta: float
  max_position_embeddings: int
  tie_word_embeddings: bool
  qkv_bias: bool
  o_bias: bool
  rope_scaling: tuple[tuple[str, Any], ...] | None = None

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return None if self.rope_scaling is None else dict(self.rope_scaling)

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
    """Builds a config from a parsed HF `config.json`; refuses unsupported options in one line."""

    def need(key):
      if key not in d or d[key] is None:
        raise ValueError(f"{source}: missing field '{key}' required for model_type '{d.get('model_type')}'")
      return d[key]

    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(f"{source}: model_type {model_type!r} is not supported; "
                       f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    act = d.get("hidden_act", "silu")
    if act not in SUPPORTED_ACTIVATIONS:
      raise ValueError(f"{source}: hidden_act {act!r} is not supported; supported: {', '.join(SUPPORTED_ACTIVATIONS)}")
    if d.get("quantization_config"):
      method = d["quantization_config"].get("quant_method", "?") if isinstance(d["quantization_config"], dict) else "?"
      raise ValueError(f"{source}: quantized checkpoints ({method}) are not supported; give the bf16/fp32 model")
    if d.get("use_sliding_window"):
      raise ValueError(f"{source}: use_sliding_window=true is not supported; supported: full attention only")
    if d.get("mlp_bias"):
      raise ValueError(f"{source}: mlp_bias=true is not supported; supported: bias-free MLP")

    max_positions = d.get("max_position_embeddings") or DEFAULT_MAX_POSITIONS[model_type]
    # transformers >= 5 keeps rope_theta and the scaling in `rope_parameters`; older files use
    # top-level `rope_theta` and `rope_scaling`. As transformers reads them: a non-empty `rope_scaling`
    # replaces `rope_parameters`, and a theta it lacks comes from the top level.
    scaling = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
    theta = scaling.pop("rope_theta", d.get("rope_theta", 10000.0))
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
      raise ValueError(f"{source}: RoPE scaling type {rope_type!r} is not supported; "
                       f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    rope_scaling = None
    if rope_type == "llama3":
      scaling.setdefault("original_max_position_embeddings", max_positions)  # as transformers fills it in
      keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
      missing = [k for k in keys if k not in scaling]
      if missing:
        raise ValueError(f"{source}: llama3 RoPE scaling lacks {', '.join(missing)}")
      rope_scaling = tuple(sorted((k, float(scaling[k])) for k in keys))

    hidden = int(need("hidden_size"))
    heads = int(need("num_attention_heads"))
    kv_heads = int(d.get("num_key_value_heads") or heads)
    if heads % kv_heads:
      raise ValueError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    head_dim = d.get("head_dim") or hidden // heads
    if model_type == "qwen2":
      qkv_bias, o_bias = True, False  # Qwen2 attention: q/k/v bias, no o bias.
    else:
      qkv_bias = o_bias = bool(d.get("attention_bias", False))
    return cls(
        model_type=model_type,
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(head_dim),
        intermediate_size=int(need("intermediate_size")),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        max_position_embeddings=int(max_positions),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        rope_scaling=rope_scaling,
    )

  @classmethod
  def from_json(cls, path: str) -> "ModelConfig":
    """Reads `config.json` (a file, or a directory holding one)."""
    if os.path.isdir(path):
      path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no config.json found")
    try:
      with open(path) as f:
        d = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
    return cls.from_hf_dict(d, source=path)

  def to_hf_dict(self) -> dict[str, Any]:
    """The `config.json` fields transformers needs to rebuild this architecture."""
    rope = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling is not None:
      rope = {"rope_type": "llama3", "rope_theta": self.rope_theta, **self.rope_scaling_dict}
      rope["original_max_position_embeddings"] = int(rope["original_max_position_embeddings"])
    d = {
        "model_type": self.model_type,
        "architectures": ["Qwen2ForCausalLM" if self.model_type == "qwen2" else "LlamaForCausalLM"],
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "intermediate_size": self.intermediate_size,
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "rope_parameters": rope,
        "rope_scaling": None if self.rope_scaling is None else {k: v for k, v in rope.items() if k != "rope_theta"},
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_word_embeddings,
        "hidden_act": "silu",
    }
    if self.model_type == "llama":
      d["attention_bias"] = self.qkv_bias
    return d

  def num_params(self, include_head: bool = True) -> int:
    """Parameter count (the tied head counted once)."""
    d, h, kv, dh, f = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate_size
    attn = d * h * dh * 2 + d * kv * dh * 2 + (h + 2 * kv) * dh * self.qkv_bias + d * self.o_bias
    layer = attn + 3 * d * f + 2 * d
    head = 0 if (self.tie_word_embeddings or not include_head) else self.vocab_size * d
    return self.vocab_size * d + self.num_layers * layer + d + head
