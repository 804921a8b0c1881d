"""How a generation ends: EOS ids read from a checkpoint, and stop strings found in decoded text."""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

GENERATION_CONFIG = "generation_config.json"


def eos_ids_from_checkpoint(checkpoint_dir: str, tokenizer: Any = None) -> list[int]:
  """EOS ids: `eos_token_id` of `generation_config.json` (an int or a list), then the tokenizer's.

  Qwen2.5 instruct checkpoints give [151645, 151643] (<|im_end|>, <|endoftext|>). Either source
  may be missing, not both. Returns the ids in that order without duplicates.
  """
  path = os.path.join(checkpoint_dir, GENERATION_CONFIG)
  ids: list[int] = []
  if os.path.isfile(path):
    try:
      with open(path) as f:
        value = json.load(f).get("eos_token_id")
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
    values = [] if value is None else value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
      raise ValueError(f"{path}: eos_token_id must be an int or a list of ints, got {value!r}")
    ids.extend(values)
  if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
    ids.append(int(tokenizer.eos_token_id))
  if not ids:
    raise ValueError(f"{path}: no eos_token_id (file missing or field absent) and no tokenizer EOS given")
  return list(dict.fromkeys(ids))


def stop_length(ids: Sequence[int], stop_strings: Sequence[str], tokenizer: Any) -> int | None:
  """Fewest leading `ids` whose decoded text contains one of `stop_strings`, or None if none does.

  The token that completes the stop string is kept (as transformers' `stop_strings` does). Binary
  search over prefixes: containment only grows as tokens are appended.
  """
  def stops(k: int) -> bool:
    text = tokenizer.decode(list(ids[:k]))
    return any(s in text for s in stop_strings)

  if not ids or not stops(len(ids)):
    return None
  lo, hi = 1, len(ids)  # stops(hi) holds; find the least such k
  while lo < hi:
    mid = (lo + hi) // 2
    if stops(mid):
      hi = mid
    else:
      lo = mid + 1
  return lo
