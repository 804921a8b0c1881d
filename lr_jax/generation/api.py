"""Batched autoregressive generation with a KV cache: `generate` for one batch of token-id prompts,
`generate_batched` for thousands of them.

One batch runs as: left-pad the prompts to a power-of-two length bucket and the batch to a
power-of-two row bucket (so a run compiles a handful of shapes), prefill the cache and choose the
first token (`engine.start_jit`), then decode in a `lax.while_loop` (`engine.decode_jit`, loop
state donated) until every row has hit an EOS id or `max_new_tokens` ids exist. With stop strings,
the loop returns to the host every `STOP_CHECK_EVERY` steps to decode the text and retire rows
that contain one. The LM head runs only at the last prompt position and at each decoded step.

Outputs follow transformers: a row's ids include the EOS id that ended it (and the token that
completed a stop string), nothing after it.

Sharding: prompts are host-local; with a `Layout` (by default the model's own) the batch is split
over the ('data', 'fsdp') mesh axes by the 'batch' rule, weights stay where they are placed, and
outputs are gathered back to each host's own rows.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from lr_jax.generation.engine import MIN_PROMPT_BUCKET, DecodeSpec, bucket_size, decode_jit, output_slots, start_jit
from lr_jax.generation.sampling import SamplingConfig
from lr_jax.generation.stopping import stop_length
from lr_jax.sharding import Layout, agree_max, check_batch_layout, fetch_global, first_local_row, host_local_to_global

__all__ = ["GenerationOutput", "SamplingConfig", "generate", "generate_batched"]

STOP_CHECK_EVERY = 32  # decode steps between host-side stop-string checks


@dataclasses.dataclass
class GenerationOutput:
  """Per-prompt results, in the order of the prompts given.

  tokens: generated ids (EOS or stop-string token included, padding excluded);
  lengths: int32 `[n]`, len of each entry of `tokens`;
  finish_reasons: 'eos' | 'stop' | 'length';
  logprobs: when requested, float32 `[lengths[i]]` per prompt: log-prob of each chosen id under
    the model's unprocessed distribution (no temperature, top-k or top-p; padded vocab masked).
  """
  tokens: list[list[int]]
  lengths: np.ndarray
  finish_reasons: list[str]
  logprobs: list[np.ndarray] | None = None


def _unpack(model_or_split) -> tuple[nnx.GraphDef, nnx.State, Any]:
  if isinstance(model_or_split, nnx.Module):
    graphdef, state = nnx.split(model_or_split)
    return graphdef, state, model_or_split
  graphdef, state = model_or_split
  return graphdef, state, nnx.merge(graphdef, state)


def _validate(prompts, vocab_size: int, max_new_tokens: int, stop_strings, tokenizer, sample_ids, seed: int) -> None:
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if not 0 <= seed < 2**31:
    raise ValueError(f"seed must be in [0, 2**31), got {seed}")
  if stop_strings and tokenizer is None:
    raise ValueError("stop_strings need a tokenizer to decode the generated ids; pass tokenizer=")
  if sample_ids is not None and len(sample_ids) != len(prompts):
    raise ValueError(f"sample_ids has {len(sample_ids)} entries for {len(prompts)} prompts")
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise ValueError(f"prompts[{i}] is empty; every prompt needs at least one token")
    lo, hi = min(p), max(p)
    if lo < 0 or hi >= vocab_size:
      bad = lo if lo < 0 else hi
      raise ValueError(f"prompts[{i}] holds id {bad}, outside the model's vocabulary [0, {vocab_size})")


def padded_prompts(prompts: Sequence[Sequence[int]], *, min_batch: int, pad_id: int,
                   layout: Layout | None) -> tuple[np.ndarray, np.ndarray]:
  """Host-local prompts left-padded to the batch shape every host agrees on.

  Rows: a power-of-two bucket of the most prompts any host has (at least `min_batch`), rounded to
  this host's share of the layout's data-parallel ways; length: a power-of-two bucket (at least
  MIN_PROMPT_BUCKET) of the longest prompt on any host. Returns tokens int32 and mask bool `[rows, length]`.
  """
  rows_needed, longest = agree_max(max(len(prompts), min_batch), max((len(p) for p in prompts), default=1))
  rows_multiple = 1
  if layout is not None:
    if layout.data_size % jax.process_count():
      raise ValueError(f"layout splits the batch {layout.data_size} ways, not a multiple of "
                       f"{jax.process_count()} processes")
    rows_multiple = layout.data_size // jax.process_count()
  rows = -(-bucket_size(rows_needed) // rows_multiple) * rows_multiple
  length = bucket_size(longest, MIN_PROMPT_BUCKET)
  tokens = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), bool)
  for i, p in enumerate(prompts):
    tokens[i, length - len(p):] = p
    mask[i, length - len(p):] = True
  return tokens, mask


def _run(graphdef, state, model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, min_batch: int,
         sample_ids: Sequence[int] | None, sampling: SamplingConfig = SamplingConfig(),
         eos_ids: Sequence[int] = (), pad_id: int = 0, stop_strings: Sequence[str] | None = None,
         tokenizer: Any = None, seed: int = 0, return_logprobs: bool = False, valid_vocab: int | None = None,
         layout: Layout | None = None) -> GenerationOutput:
  """One padded batch through the engine (all hosts call it together, possibly with no prompts)."""
  layout = layout if layout is not None else model.layout
  check_batch_layout(layout, model.layout, where="generate")
  n = len(prompts)
  tokens, mask = padded_prompts(prompts, min_batch=min_batch, pad_id=pad_id, layout=layout)
  rows, length = tokens.shape
  out_len = output_slots(max_new_tokens)
  spec = DecodeSpec(sampling=sampling, eos_ids=tuple(int(e) for e in eos_ids), pad_id=int(pad_id),
                    valid_vocab=valid_vocab, slots=length + out_len, out_len=out_len,
                    return_logprobs=return_logprobs)

  row_ids = np.zeros((rows,), np.int32)
  row_ids[:n] = np.arange(n) if sample_ids is None else np.asarray(sample_ids[:n])
  if layout is not None:
    tokens, mask, row_ids = host_local_to_global((tokens, mask, row_ids), layout)

  s = start_jit(graphdef, state, tokens, mask, row_ids, np.int32(seed), spec=spec)
  while True:
    step, finished = int(fetch_global(s.step)), fetch_global(s.finished)
    if stop_strings:
      ids, counts = fetch_global(s.tokens), fetch_global(s.num_tokens)
      stopped = [r for r in np.flatnonzero(~finished)
                 if stop_length(ids[r, :counts[r]].tolist(), stop_strings, tokenizer) is not None]
      if stopped:  # retire them on the device; their ids are trimmed below
        finished[stopped] = True
        s = s.replace(finished=jax.make_array_from_callback(
            finished.shape, s.finished.sharding, lambda idx: finished[idx]))
    if step >= max_new_tokens or finished.all():
      break
    until = max_new_tokens if not stop_strings else min(step + STOP_CHECK_EVERY, max_new_tokens)
    s = decode_jit(graphdef, state, s, np.int32(until), spec=spec)

  first = first_local_row(s.tokens)
  ids, counts, logprobs = fetch_global(s.tokens), fetch_global(s.num_tokens), fetch_global(s.logprobs)
  eos = set(spec.eos_ids)
  out_tokens, reasons, out_logprobs = [], [], []
  for g in range(first, first + n):
    row = ids[g, :counts[g]].tolist()
    keep = stop_length(row, stop_strings, tokenizer) if stop_strings else None
    if keep is not None:
      row, reason = row[:keep], "stop"
    else:
      reason = "eos" if row and row[-1] in eos else "length"
    out_tokens.append(row)
    reasons.append(reason)
    out_logprobs.append(logprobs[g, :len(row)].astype(np.float32))
  return GenerationOutput(tokens=out_tokens, lengths=np.asarray([len(t) for t in out_tokens], np.int32),
                          finish_reasons=reasons, logprobs=out_logprobs if return_logprobs else None)


def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             sampling: SamplingConfig = SamplingConfig(), eos_ids: Sequence[int] = (), pad_id: int = 0,
             stop_strings: Sequence[str] | None = None, tokenizer: Any = None, seed: int = 0,
             return_logprobs: bool = False, valid_vocab: int | None = None, layout: Layout | None = None,
             sample_ids: Sequence[int] | None = None) -> GenerationOutput:
  """Continues each prompt by up to `max_new_tokens` ids, all prompts in one padded batch.

  Args:
    model: a `Transformer`, or its `(graphdef, state)` from `nnx.split` (reused across calls).
    prompts: token-id lists (this host's, when multi-host), any lengths >= 1.
    max_new_tokens: the most ids generated per prompt.
    sampling: greedy by default; see `SamplingConfig`.
    eos_ids: ids that end a row (e.g. `eos_ids_from_checkpoint(dir, tokenizer)`); kept in the output.
    pad_id: fills the padding (never attended to, never returned).
    stop_strings: end a row once its decoded text contains one; needs `tokenizer`.
    seed: with `sample_ids`, seeds sampling; unused when greedy.
    return_logprobs: also return each chosen id's float32 log-prob (see `GenerationOutput`).
    valid_vocab: ids >= valid_vocab (embedding rows beyond the tokenizer) are never chosen.
    layout: shards the batch over ('data', 'fsdp'); default the model's own layout.
    sample_ids: one int per prompt seeding its random stream (default its index), so a prompt's
      draws do not depend on its batch-mates; `generate_batched` passes input indices.
  Returns:
    a `GenerationOutput` in prompt order.
  """
  graphdef, state, module = _unpack(model)
  _validate(prompts, module.config.vocab_size, max_new_tokens, stop_strings, tokenizer, sample_ids, seed)
  if not prompts and jax.process_count() == 1:
    return GenerationOutput([], np.zeros((0,), np.int32), [], [] if return_logprobs else None)
  return _run(graphdef, state, module, prompts, max_new_tokens=max_new_tokens, sampling=sampling,
              eos_ids=eos_ids, pad_id=pad_id, stop_strings=stop_strings, tokenizer=tokenizer, seed=seed,
              return_logprobs=return_logprobs, valid_vocab=valid_vocab, layout=layout, sample_ids=sample_ids,
              min_batch=1)


def generate_batched(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, batch_size: int,
                     progress: bool = True, **options) -> GenerationOutput:
  """`generate` over many prompts, `batch_size` at a time, results in input order.

  Prompts are sorted by length (longest first) so each batch pads little and shares a length
  bucket with its neighbours; every batch is padded to the same row bucket, so a run compiles
  once per length bucket. Prompt i is sampled with `sample_ids=i`: the draws match one `generate`
  call over all prompts. `options` are `generate`'s other keyword arguments (all but `sample_ids`).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if "sample_ids" in options:
    raise ValueError("generate_batched sets sample_ids itself (each prompt's input index)")
  graphdef, state, module = _unpack(model)
  _validate(prompts, module.config.vocab_size, max_new_tokens, options.get("stop_strings"),
            options.get("tokenizer"), None, options.get("seed", 0))
  order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
  batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
  (num_batches,) = agree_max(len(batches))
  batches += [[] for _ in range(num_batches - len(batches))]  # hosts with fewer prompts still step along

  tokens: list[list[int]] = [[] for _ in prompts]
  reasons = [""] * len(prompts)
  logprobs: list[np.ndarray] = [np.zeros((0,), np.float32) for _ in prompts]
  with tqdm(total=len(prompts), desc="generate", unit="prompt",
            disable=not progress or jax.process_index() != 0) as bar:
    for idx in batches:
      out = _run(graphdef, state, module, [prompts[i] for i in idx], max_new_tokens=max_new_tokens,
                 min_batch=batch_size, sample_ids=idx, **options)
      for j, i in enumerate(idx):
        tokens[i], reasons[i] = out.tokens[j], out.finish_reasons[j]
        if out.logprobs is not None:
          logprobs[i] = out.logprobs[j]
      bar.update(len(idx))
  return GenerationOutput(tokens=tokens, lengths=np.asarray([len(t) for t in tokens], np.int32),
                          finish_reasons=reasons,
                          logprobs=logprobs if options.get("return_logprobs") else None)
