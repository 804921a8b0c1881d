"""Qwen2/Llama decoders in Flax NNX and their Hugging Face checkpoint I/O."""
from lr_jax.models.config import ModelConfig
from lr_jax.models.hf_io import Pretrained, from_pretrained
from lr_jax.models.transformer import KVCache, Transformer, positions_from_mask

__all__ = ["ModelConfig", "Pretrained", "from_pretrained", "KVCache", "Transformer", "positions_from_mask"]
