"""The original LightReasoner sample format: export our records to it, import the samples it holds.

The format is JSON Lines, one line per kept step, as written by the original `LightR_sampling.py` and
read by its `LightR_finetuning.py`:
  prompt_id      str: names the problem. The original code uses the question text itself, and its
                 fine-tuner puts prompt_id into the chat template as the user message.
  step           int: index of the scored completion token (the original scores steps 1..T-1).
  prefix         str: tokenizer.decode(completion_ids[:step]), the assistant text before the step,
                 WITHOUT the prompt (the fine-tuner re-renders the prompt from prompt_id).
  tokens         [str]: tokenizer.decode([id]) of each target id.
  token_ids      [int]: target token ids (the whole alpha mask in the original; our top-K here).
  weights        [float]: target probabilities, aligned with token_ids.
  kl_divergence  float: KL(pE || pA) over the full vocabulary (Infinity where pA is 0 at a token pE
                 gives mass, as Python's json writes it).
The format holds no token ids of the context (an import renders the prompt from prompt_id: the
original's chat prompt, or the `--template` the samples were drawn with), no per-step statistics of
unkept steps and no top-1 tokens: an import knows KL only at kept steps (NaN elsewhere) and no top-1
tokens (-1), and as the exported weights are renormalised, it has no dropped target mass (0) and counts
the ids it keeps as each step's mask size.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from lr_jax.data.prompts import render_prompt as render_template
from lr_jax.data.store import TARGET_PAD_ID, SampleStore, TrajectoryRecord
from lr_jax.eval.files import iter_jsonl
from lr_jax.files import write_file_atomic

ORIGINAL_SYSTEM_PROMPT = "Please reason step by step."
ORIGINAL_TEMPLATE = "original"  # the original code's chat prompt (`original_prompt_text`)
IMPORTED_FINISH_REASON = "imported"
_FIELDS = ("prompt_id", "step", "prefix", "tokens", "token_ids", "weights", "kl_divergence")


def original_prompt_text(tokenizer, question: str) -> str:
  """The prompt text the original code renders for a question (system prompt + chat template)."""
  messages = [{"role": "system", "content": ORIGINAL_SYSTEM_PROMPT}, {"role": "user", "content": question}]
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def export_original(
    store_or_records: SampleStore | Iterable[TrajectoryRecord],
    path: str | os.PathLike,
    tokenizer,
    *,
    prompt_id_of: Mapping[str, str] | None = None,
) -> int:
  """Writes every kept step as one line of the original format, atomically; returns the line count.

  Args:
    store_or_records: a SampleStore (all its records) or an iterable of records.
    path: the .jsonl file to write.
    tokenizer: a transformers tokenizer of the models that produced the records.
    prompt_id_of: problem_id -> the prompt_id to write. For the original fine-tuner, map each id to
      its question text ({p.id: p.question for p in problems}); by default the problem_id is written.
  """
  records = store_or_records.iter_records() if isinstance(store_or_records, SampleStore) else store_or_records
  token_text: dict[int, str] = {}
  lines = []
  for record in records:
    if prompt_id_of is not None and record.problem_id not in prompt_id_of:
      raise ValueError(f"export_original: prompt_id_of has no entry for problem {record.problem_id!r}")
    prompt_id = record.problem_id if prompt_id_of is None else prompt_id_of[record.problem_id]
    completion = record.completion_ids.tolist()
    for i, step in enumerate(record.steps.tolist()):
      used = record.target_ids[i] != TARGET_PAD_ID
      token_ids = record.target_ids[i][used].tolist()
      for token_id in token_ids:
        if token_id not in token_text:
          token_text[token_id] = tokenizer.decode([token_id])
      lines.append(json.dumps({
          "prompt_id": prompt_id,
          "step": step,
          "prefix": tokenizer.decode(completion[:step]),
          "tokens": [token_text[t] for t in token_ids],
          "token_ids": token_ids,
          "weights": record.target_weights[i][used].tolist(),
          "kl_divergence": float(record.kl[i]),
      }))  # json's defaults, as the original writer used.
  write_file_atomic(path, "".join(line + "\n" for line in lines).encode("utf-8"))
  return len(lines)


def import_original(
    path: str | os.PathLike,
    tokenizer,
    K: int = 32,
    *,
    render_prompt: Callable[[str], str] | None = None,
) -> list[TrajectoryRecord]:
  """Rebuilds trajectory records from an original-format file, re-tokenising the text.

  The format stores text, not context token ids, so re-tokenising `render_prompt(prompt_id) + prefix`
  is the only way to recover a step's context; it is exactly the input the original fine-tuner
  builds. Lines are grouped by prompt_id (in order of first appearance). A step whose re-tokenised
  context is a prefix of a longer step's context joins that step's trajectory, at the position
  len(context) - len(prompt); where decode/encode does not round-trip, a step starts a trajectory of
  its own, so every line stays trainable. Steps are therefore re-derived positions, which equal the
  file's `step` whenever the text round-trips.

  Targets wider than K keep the K heaviest tokens (heaviest first), renormalised, and record the cut
  mass in `dropped_mass`; targets of at most K tokens keep the file's order and weights unchanged.
  Records get finish_reason 'imported', problem_id = prompt_id, KL NaN at unkept steps and top-1
  tokens -1 (unknown).

  Args:
    path: the original-format .jsonl file.
    tokenizer: a transformers tokenizer; text is encoded without added special tokens, since the
      rendered chat template carries them.
    K: the target width of the records.
    render_prompt: prompt_id -> prompt text; by default `original_prompt_text` with prompt_id as
      the question, as the original code does.

  Raises:
    ValueError: a line is not valid JSON, lacks a field, has a wrong type, or repeats a step of its
      trajectory; the message names the file, line number and field.
  """
  path = os.fspath(path)
  if K < 1:
    raise ValueError(f"K must be >= 1, got {K}")
  if render_prompt is None:
    render_prompt = functools.partial(original_prompt_text, tokenizer)

  def encode(text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]

  steps_by_prompt: dict[str, list[dict]] = {}
  for line_number, entry in iter_jsonl(path):
    entry = _check_entry(entry, where=f"{path}:{line_number}")
    if entry["token_ids"] and max(entry["token_ids"]) >= len(tokenizer):
      raise ValueError(f"{path}:{line_number}: field 'token_ids' holds {max(entry['token_ids'])}, beyond the "
                       f"tokenizer's {len(tokenizer)} ids")
    steps_by_prompt.setdefault(entry["prompt_id"], []).append(entry)

  records = []
  for prompt_id, entries in steps_by_prompt.items():
    prompt_text = render_prompt(prompt_id)
    prompt_ids = encode(prompt_text)
    # Longest context first, so each shorter step finds the trajectory whose tokens extend its own.
    trajectories: list[tuple[list[int], list[tuple[list[int], dict]]]] = []
    for entry in sorted(entries, key=lambda e: -e["step"]):
      context = encode(prompt_text + entry["prefix"])
      # A context already taken by another line (decode gives the same text, e.g. "\ufffd", for two
      # positions inside one multi-token character) goes to a trajectory of its own, so both stay trainable.
      home = next((t for t in trajectories if t[0][:len(context)] == context
                   and all(len(c) != len(context) or e["step"] == entry["step"] for c, e in t[1])), None)
      if home is None:
        home = (context, [])
        trajectories.append(home)
      home[1].append((context, entry))
    for full_ids, members in trajectories:
      records.append(_trajectory_record(prompt_id, prompt_ids, full_ids, members, K))
  return records


def _check_entry(entry: dict, *, where: str) -> dict:
  """`entry` (one line's object) checked, with `where` (file:line) added for later messages."""
  for field in _FIELDS:
    if field not in entry:
      raise ValueError(f"{where}: missing field {field!r}")
  checks = {
      "prompt_id": isinstance(entry["prompt_id"], str) and entry["prompt_id"] != "",
      "step": _is_int(entry["step"]) and entry["step"] >= 0,
      "prefix": isinstance(entry["prefix"], str),
      "token_ids": isinstance(entry["token_ids"], list) and all(
          _is_int(t) and t >= 0 for t in entry["token_ids"]),
      "weights": isinstance(entry["weights"], list) and all(
          _is_number(w) and w >= 0 for w in entry["weights"]),
      "kl_divergence": _is_number(entry["kl_divergence"]) or entry["kl_divergence"] == math.inf,
  }
  expected = {"prompt_id": "a non-empty string", "step": "an int >= 0", "prefix": "a string",
              "token_ids": "a list of ints >= 0", "weights": "a list of numbers >= 0",
              "kl_divergence": "a number or Infinity"}
  for field, ok in checks.items():
    if not ok:
      raise ValueError(f"{where}: field {field!r} must be {expected[field]}")
  if not entry["token_ids"] or len(entry["token_ids"]) != len(entry["weights"]):
    raise ValueError(f"{where}: field 'weights' must match the non-empty 'token_ids' in length "
                     f"({len(entry['weights'])} vs {len(entry['token_ids'])})")
  if sum(entry["weights"]) <= 0:
    raise ValueError(f"{where}: field 'weights' must have a positive sum")
  entry["where"] = where
  return entry


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _trajectory_record(prompt_id: str, prompt_ids: list[int], full_ids: list[int],
                       members: list[tuple[list[int], dict]], K: int) -> TrajectoryRecord:
  """One record from the steps sharing the context `full_ids`; members hold (context ids, entry)."""
  # The prompt's last token can merge with the prefix's first: the prompt is then the common part.
  prompt_len = min([_common_prefix_len(prompt_ids, full_ids)] + [len(c) for c, _ in members])
  members = sorted(members, key=lambda m: len(m[0]))
  steps = np.array([len(context) - prompt_len for context, _ in members], dtype=np.int32)
  repeats = np.flatnonzero(np.diff(steps) == 0)
  if repeats.size:
    raise ValueError(f"{members[repeats[0] + 1][1]['where']}: field 'step' repeats an earlier step of "
                     f"prompt_id {prompt_id[:60]!r}")
  num_scored = int(steps[-1]) + 1
  target_ids = np.full((len(members), K), TARGET_PAD_ID, np.int32)
  target_weights = np.zeros((len(members), K), np.float32)
  dropped_mass = np.zeros(len(members), np.float32)
  kl = np.array([entry["kl_divergence"] for _, entry in members], dtype=np.float32)
  for row, (_, entry) in enumerate(members):
    ids = np.array(entry["token_ids"], np.int32)
    weights = np.array(entry["weights"], np.float32)
    if len(ids) > K:
      order = np.argsort(-weights, kind="stable")
      kept, cut = order[:K], order[K:]
      dropped_mass[row] = weights[cut].sum()
      ids, weights = ids[kept], weights[kept] / weights[kept].sum()
    target_ids[row, :len(ids)] = ids
    target_weights[row, :len(ids)] = weights
  all_kl = np.full(num_scored, np.nan, np.float32)
  all_kl[steps] = kl
  return TrajectoryRecord(
      problem_id=prompt_id,
      prompt_ids=np.array(full_ids[:prompt_len], np.int32),
      completion_ids=np.array(full_ids[prompt_len:], np.int32),
      finish_reason=IMPORTED_FINISH_REASON,
      steps=steps,
      kl=kl,
      target_ids=target_ids,
      target_weights=target_weights,
      dropped_mass=dropped_mass,
      num_target_tokens=np.array([len(entry["token_ids"]) for _, entry in members], np.int32),
      all_kl=all_kl,
      expert_top1=np.full(num_scored, -1, np.int32),
      amateur_top1=np.full(num_scored, -1, np.int32),
  )


def _common_prefix_len(a: list[int], b: list[int]) -> int:
  n = 0
  for x, y in zip(a, b):
    if x != y:
      break
    n += 1
  return n


def main(argv: list[str] | None = None) -> None:
  """`python -m lr_jax.data.original_format export|import ...`: convert between a store and the file."""
  import argparse

  from transformers import AutoTokenizer

  parser = argparse.ArgumentParser(prog="python -m lr_jax.data.original_format", description=main.__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  exp = sub.add_parser("export", help="sample store -> original JSONL (one line per kept step)")
  exp.add_argument("--store", required=True, help="a sample store folder (e.g. WORKDIR/samples)")
  exp.add_argument("--output", required=True, help="the .jsonl file to write")
  exp.add_argument("--tokenizer", required=True, help="tokenizer folder of the models that sampled")
  exp.add_argument("--problems", help="the problems (a JSONL file or tfds:NAME[:SPLIT]) whose questions are written "
                                      "as prompt_id, as the original does; default: the source the store was sampled "
                                      "from (its meta.json)")
  exp.add_argument("--question-field", help="the question field of --problems (default: the store's)")
  exp.add_argument("--tfds-dir", default="", help="TFDS data dir of a tfds: --problems")
  imp = sub.add_parser("import", help="original JSONL -> a new sample store that `distill` trains on")
  imp.add_argument("--input", required=True, help="a file written by the original LightR_sampling.py")
  imp.add_argument("--store", required=True, help="the sample store folder to create (e.g. WORKDIR/samples)")
  imp.add_argument("--tokenizer", required=True, help="tokenizer folder of the expert")
  imp.add_argument("--top-k", type=int, default=32, help="K, the width of the stored sparse targets")
  imp.add_argument("--template", default=ORIGINAL_TEMPLATE,
                   help=f"prompt around each prompt_id: {ORIGINAL_TEMPLATE!r} (the original code's chat prompt) or "
                        "a lr_jax.data.prompts template, e.g. the sampling run's config.prompt.template")
  imp.add_argument("--system-prompt", default=None, help="system prompt of a lr_jax template (its default if unset)")
  args = parser.parse_args(argv)
  tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
  if args.command == "export":
    from lr_jax.data.problems import load_problems_from_spec
    store = SampleStore(args.store)
    data = store.meta.get("data", {})  # what a sampling run read; an imported store's ids are its questions
    spec = args.problems or data.get("path")
    prompt_id_of = None
    if spec:
      # The sampling run's loader, so the problem ids are the ones the store holds.
      problems = load_problems_from_spec(spec, tfds_dir=args.tfds_dir, n=None, answer_field=None,
                                         question_field=args.question_field or data.get("question_field", "question"))
      prompt_id_of = {p.id: p.question for p in problems}
    n = export_original(store, args.output, tokenizer, prompt_id_of=prompt_id_of)
    print(f"wrote {n} kept steps to {args.output}")
    if store.meta.get("template") is not None:  # the file keeps no prompt: say how to get it back
      print(f"note: the store was sampled with template {store.meta['template']!r} and system prompt "
            f"{store.meta.get('system_prompt')!r}; importing this file with --template/--system-prompt set so "
            "gives the same contexts")
  else:
    def render(question: str) -> str:
      return render_template(question, args.template, tokenizer=tokenizer, system_prompt=args.system_prompt)

    records = import_original(args.input, tokenizer, K=args.top_k,
                              render_prompt=None if args.template == ORIGINAL_TEMPLATE else render)
    store = SampleStore(args.store, meta={"source": "original LightReasoner JSONL", "file": os.path.abspath(args.input),
                                          "top_k": args.top_k, "scoring": "imported"})
    store.append(records)
    print(f"imported {len(records)} trajectories ({sum(r.num_kept for r in records)} kept steps) into {args.store}")


if __name__ == "__main__":
  main()
