"""Exact vocabulary-axis reductions, block by block, tuned for XLA:CPU (see `vocab`)."""
from __future__ import annotations

from lr_jax.ops.vocab import argmax, auto_block, logsumexp, mask_padded_vocab, top_k

__all__ = ["argmax", "auto_block", "logsumexp", "mask_padded_vocab", "top_k"]
