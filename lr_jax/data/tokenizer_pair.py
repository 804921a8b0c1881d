"""Checks that an expert and an amateur share a tokenizer, so token ids mean the same in both.

The regular (BPE) vocabulary and merges must be identical; added/special tokens may differ
(e.g. DeepSeek-R1-Distill-Qwen against Qwen2.5), which is allowed with a warning that lists them.
"""
from __future__ import annotations

import json
import logging
from typing import Any


def _model_part(tokenizer) -> dict[str, Any]:
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if backend is None:
    return {"vocab": tokenizer.get_vocab(), "merges": None}
  model = json.loads(backend.to_str())["model"]
  added = set(tokenizer.get_added_vocab())
  vocab = {k: v for k, v in model.get("vocab", {}).items() if k not in added}
  return {"vocab": vocab, "merges": model.get("merges")}


def check_tokenizer_pair(expert_tok, amateur_tok, *, allow_mismatch: bool = False,
                         names: tuple[str, str] = ("expert", "amateur")) -> dict[str, Any]:
  """Compares two HF tokenizers; returns a report dict (recorded with the samples).

  Raises ValueError when the regular vocabularies or merges differ, unless `allow_mismatch`.
  """
  e, a = _model_part(expert_tok), _model_part(amateur_tok)
  same_vocab = e["vocab"] == a["vocab"]
  same_merges = e["merges"] == a["merges"]
  if not (same_vocab and same_merges):
    what = " and ".join(x for x, same in (("vocabulary", same_vocab), ("merges", same_merges)) if not same)
    msg = (f"{names[0]} and {names[1]} tokenizers differ in their regular {what} ({len(e['vocab'])} vs "
           f"{len(a['vocab'])} tokens): token ids would not mean the same in both models; "
           "set sample.allow_tokenizer_mismatch=True to override")
    if not allow_mismatch:
      raise ValueError(msg)
    logging.warning(msg)
  ea, aa = expert_tok.get_added_vocab(), amateur_tok.get_added_vocab()
  only_e = sorted(set(ea.items()) - set(aa.items()), key=lambda kv: kv[1])
  only_a = sorted(set(aa.items()) - set(ea.items()), key=lambda kv: kv[1])
  if only_e or only_a:
    logging.warning("%s and %s tokenizers differ in added/special tokens: only %s: %s; only %s: %s",
                    names[0], names[1], names[0], only_e, names[1], only_a)
  return {
      "regular_vocab_identical": same_vocab,
      "merges_identical": same_merges,
      "tokenizer_length": {names[0]: len(expert_tok), names[1]: len(amateur_tok)},
      "added_tokens_only_in": {names[0]: dict(only_e), names[1]: dict(only_a)},
  }
