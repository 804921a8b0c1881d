"""Kernels and exact reductions: vocabulary-axis reductions (`vocab`, re-exported here), one-token
decode attention (`decode_attention`, Pallas/Triton) and decode-step GEMMs through JAX's Hopper
matmul (`hopper_gemm`, Mosaic GPU)."""
from __future__ import annotations

from lr_jax.ops.vocab import argmax, auto_block, logsumexp, mask_padded_vocab, top_k

__all__ = ["argmax", "auto_block", "logsumexp", "mask_padded_vocab", "top_k"]
