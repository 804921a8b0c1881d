"""Evaluate one model through a `complete` callable; compare two evaluated runs.

`evaluate(items, complete, out_dir, template=..., run_name=R)` writes, under out_dir/R/:
  <benchmark>.jsonl  one line per item: id, benchmark, question, gold, completion, extracted, correct,
                     tokens, finish_reason, multiple_choice (in item order; `python -m lr_jax.eval.grade`
                     can regrade it)
  results.json       run_name, run_dir, template, system_prompt, per benchmark {accuracy, num_correct, num_items},
                     and the average accuracy over benchmarks (unweighted, as the paper's "Avg.")
  results.md         the same as a markdown table, accuracies in percent
  settings.json      what the completions depend on: template, system_prompt and the caller's `settings`
Every file is written atomically. A benchmark whose .jsonl already holds exactly the requested items
(same ids in the same order) is kept, not generated again, so a rerun after an interruption only redoes
the unfinished benchmarks. A rerun with other settings (another model, template or prompt) is refused
(`SettingsChanged`): use a new run_name.

`complete(prompts) -> completions` is the generator (greedy decoding is the caller's business); it gets
a benchmark's prompts `GENERATION_CHUNK` at a time and returns one `Completion` per prompt, in order.
Each chunk's completions are saved (<benchmark>.partial.jsonl) before the next starts, so an
interruption loses at most one chunk of generation; the file is removed once the benchmark is graded.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lr_jax.data.prompts import render_prompt
from lr_jax.errors import check_unchanged
from lr_jax.eval.benchmarks import EvalItem
from lr_jax.eval.fewshot import fewshot_prefix
from lr_jax.eval.files import iter_jsonl, write_jsonl_atomic
from lr_jax.eval.grade import DEFAULT_TIMEOUT_S, grade_items
from lr_jax.eval.significance import mcnemar_exact, paired_bootstrap
from lr_jax.files import write_text_atomic

RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"
SETTINGS_JSON = "settings.json"
PARTIAL_SUFFIX = ".partial.jsonl"
GENERATION_CHUNK = 1024  # prompts per `complete` call: the most generation an interruption can lose
ITEM_FIELDS = ("id", "benchmark", "question", "gold", "completion", "extracted", "correct", "tokens", "finish_reason")


@dataclasses.dataclass(frozen=True)
class Completion:
  """One generated answer: its text, how many tokens were generated, and why generation stopped
  ("stop" for EOS or a stop string, "length" for the token limit)."""
  text: str
  num_tokens: int
  finish_reason: str


def evaluate(items: Sequence[EvalItem], complete: Callable[[list[str]], Sequence[Completion]],
             out_dir: str | os.PathLike, *, template: str, run_name: str, tokenizer: Any = None,
             system_prompt: str | None = None, settings: Mapping[str, Any] | None = None,
             grade_timeout_s: float = DEFAULT_TIMEOUT_S, num_workers: int | None = None,
             write: bool = True) -> dict[str, Any] | None:
  """Prompts, generates, grades and records `items` (any mix of benchmarks); returns results.json's dict.

  `template`, `tokenizer` and `system_prompt` go to `render_prompt`. `settings`: what else the
  completions depend on (JSON values, e.g. the model and the token limit), checked against the run's
  settings.json (`check_settings`). Multiple-choice items (with choices) get the MMLU-STEM 5-shot
  block and are graded by option letter, whatever their benchmark label. Grading runs in
  `num_workers` processes with `grade_timeout_s` per check.

  `write=False` (the other processes of a multi-process run, whose generation is collective): take
  part in generation only; grade and write nothing, return None. Process 0 grades and writes alone,
  so every file holds one process's verdicts (a grading timeout may differ between hosts).
  """
  if not items:
    raise ValueError("evaluate: no items given")
  seen: set[tuple[str, str]] = set()
  for item in items:
    if (item.benchmark, item.id) in seen:
      raise ValueError(f"evaluate: {item.benchmark} item {item.id!r} is given twice (a benchmark listed twice?)")
    seen.add((item.benchmark, item.id))
  run_dir = Path(out_dir) / run_name
  recorded = run_settings(template, system_prompt, settings)
  check_settings(run_dir, recorded)
  if write:
    write_text_atomic(run_dir / SETTINGS_JSON, json.dumps(recorded, indent=1, sort_keys=True) + "\n")
  by_benchmark: dict[str, list[EvalItem]] = {}
  for item in items:
    by_benchmark.setdefault(item.benchmark, []).append(item)
  summaries = {}
  for benchmark, bench_items in by_benchmark.items():
    path = run_dir / f"{benchmark}.jsonl"
    records = _finished_records(path, bench_items)
    if records is None:
      partial = run_dir / f"{benchmark}{PARTIAL_SUFFIX}"
      if write:  # results.json is rewritten last: until then, none that a crash could leave beside new records
        (run_dir / RESULTS_JSON).unlink(missing_ok=True)
      records = _run_benchmark(benchmark, bench_items, complete, partial, template=template, tokenizer=tokenizer,
                               system_prompt=system_prompt, grade_timeout_s=grade_timeout_s,
                               num_workers=num_workers, write=write)
      if not write:
        continue
      write_jsonl_atomic(path, records)
      partial.unlink(missing_ok=True)
    else:
      logging.info("evaluate: %s already done in %s; kept", benchmark, path)
    num_correct = sum(bool(record["correct"]) for record in records)
    summaries[benchmark] = {"accuracy": num_correct / len(records), "num_correct": num_correct,
                            "num_items": len(records)}
  if not write:
    return None
  results = {"run_name": run_name, "run_dir": str(run_dir.resolve()), "template": template,
             "system_prompt": system_prompt, "benchmarks": summaries,
             "average": float(np.mean([summary["accuracy"] for summary in summaries.values()]))}
  write_text_atomic(run_dir / RESULTS_JSON, json.dumps(results, indent=1) + "\n")
  write_text_atomic(run_dir / RESULTS_MARKDOWN, results_markdown(results))
  return results


def run_settings(template: str, system_prompt: str | None, settings: Mapping[str, Any] | None = None) -> dict:
  """The settings.json of a run: template, system_prompt and `settings`."""
  return {"template": template, "system_prompt": system_prompt, **(settings or {})}


def check_settings(run_dir: str | os.PathLike, recorded: Mapping[str, Any]) -> None:
  """Raises `SettingsChanged` if `run_dir` holds a run made with other settings (`run_settings`); an
  entry its settings.json lacks (an older version's) is not checked."""
  path = Path(run_dir) / SETTINGS_JSON
  if not path.is_file():
    return
  with open(path, encoding="utf-8") as f:
    check_unchanged(json.load(f), recorded, str(run_dir))


def finished(out_dir: str | os.PathLike, run_name: str, items: Sequence[EvalItem]) -> bool:
  """Whether run `run_name` holds results of exactly `items`: the same benchmarks, each with the same
  items (id, question, gold) in the same order (`evaluate` would generate nothing)."""
  run_dir = Path(out_dir) / run_name
  if not (run_dir / RESULTS_JSON).is_file():
    return False
  by_benchmark: dict[str, list[EvalItem]] = {}
  for item in items:
    by_benchmark.setdefault(item.benchmark, []).append(item)
  if set(_read_results(run_dir)["benchmarks"]) != set(by_benchmark):
    return False
  return all((run_dir / f"{name}.jsonl").is_file() and
             _record_keys(r for _, r in iter_jsonl(run_dir / f"{name}.jsonl")) == _item_keys(its)
             for name, its in by_benchmark.items())


def results_markdown(results: Mapping[str, Any]) -> str:
  """| Benchmark | Items | Accuracy (%) | rows, then the average."""
  lines = [f"Run `{results['run_name']}` (template `{results['template']}`)", "",
           "| Benchmark | Items | Accuracy (%) |", "|---|---:|---:|"]
  for benchmark, summary in results["benchmarks"].items():
    lines.append(f"| {benchmark} | {summary['num_items']} | {100 * summary['accuracy']:.1f} |")
  lines.append(f"| **Average** | | **{100 * results['average']:.1f}** |")
  return "\n".join(lines) + "\n"


def compare_runs(base: Mapping[str, Any] | str | os.PathLike, tuned: Mapping[str, Any] | str | os.PathLike, *,
                 num_resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
  """Side-by-side accuracy of two runs on their common benchmarks, with paired significance.

  `base` and `tuned` are `evaluate` results or run directories. Items are paired by id; both runs must
  hold the same ids for each compared benchmark. Per benchmark: accuracies, delta (tuned - base),
  discordant counts and exact McNemar p, paired-bootstrap 95% CI and p of the delta (seeded).
  Accuracies and deltas are fractions; `comparison_markdown` renders percent.
  """
  base_dir, tuned_dir = _run_dir(base), _run_dir(tuned)
  base_results, tuned_results = _read_results(base_dir), _read_results(tuned_dir)
  common = [name for name in base_results["benchmarks"] if name in tuned_results["benchmarks"]]
  if not common:
    raise ValueError(f"compare_runs: {base_dir} and {tuned_dir} share no benchmark")
  rows = {}
  for benchmark in common:
    base_verdicts = _verdicts(base_dir / f"{benchmark}.jsonl")
    tuned_verdicts = _verdicts(tuned_dir / f"{benchmark}.jsonl")
    if base_verdicts.keys() != tuned_verdicts.keys():
      raise ValueError(f"compare_runs: {benchmark} items differ between {base_dir} and {tuned_dir}")
    ids = list(base_verdicts)
    base_correct = np.array([base_verdicts[i] for i in ids])
    tuned_correct = np.array([tuned_verdicts[i] for i in ids])
    mcnemar = mcnemar_exact(base_correct, tuned_correct)
    bootstrap = paired_bootstrap(base_correct, tuned_correct, num_resamples=num_resamples, seed=seed)
    rows[benchmark] = {
        "num_items": len(ids), "base_accuracy": float(base_correct.mean()),
        "tuned_accuracy": float(tuned_correct.mean()), "delta": bootstrap.delta,
        "base_only": mcnemar.base_only, "tuned_only": mcnemar.tuned_only, "mcnemar_p": mcnemar.p_value,
        "bootstrap_ci": [bootstrap.ci_low, bootstrap.ci_high], "bootstrap_p": bootstrap.p_value}
  base_average = float(np.mean([row["base_accuracy"] for row in rows.values()]))
  tuned_average = float(np.mean([row["tuned_accuracy"] for row in rows.values()]))
  return {"base": base_results["run_name"], "tuned": tuned_results["run_name"], "benchmarks": rows,
          "average": {"base_accuracy": base_average, "tuned_accuracy": tuned_average,
                      "delta": tuned_average - base_average}}


def comparison_markdown(comparison: Mapping[str, Any]) -> str:
  """The comparison as a markdown table, accuracies and deltas in percent."""
  base, tuned = comparison["base"], comparison["tuned"]
  lines = [f"| Benchmark | Items | {base} (%) | {tuned} (%) | Delta | 95% CI | McNemar p | Bootstrap p |",
           "|---|---:|---:|---:|---:|---|---:|---:|"]
  for benchmark, row in comparison["benchmarks"].items():
    low, high = row["bootstrap_ci"]
    lines.append(f"| {benchmark} | {row['num_items']} | {100 * row['base_accuracy']:.1f} | "
                 f"{100 * row['tuned_accuracy']:.1f} | {100 * row['delta']:+.1f} | "
                 f"[{100 * low:+.1f}, {100 * high:+.1f}] | {row['mcnemar_p']:.3g} | {row['bootstrap_p']:.3g} |")
  average = comparison["average"]
  lines.append(f"| **Average** | | {100 * average['base_accuracy']:.1f} | {100 * average['tuned_accuracy']:.1f} | "
               f"{100 * average['delta']:+.1f} | | | |")
  return "\n".join(lines) + "\n"


def _run_benchmark(benchmark: str, items: list[EvalItem], complete: Callable[[list[str]], Sequence[Completion]],
                   partial: Path, *, template: str, tokenizer: Any, system_prompt: str | None, grade_timeout_s: float,
                   num_workers: int | None, write: bool = True) -> list[dict[str, Any]] | None:
  prompts = [render_prompt(item.question, template, tokenizer=tokenizer, system_prompt=system_prompt,
                           fewshot=fewshot_prefix(item)) for item in items]
  completions = _saved_completions(partial, items)
  for start in range(len(completions), len(prompts), GENERATION_CHUNK):
    chunk_prompts = prompts[start:start + GENERATION_CHUNK]
    chunk = list(complete(chunk_prompts))
    if len(chunk) != len(chunk_prompts) or not all(isinstance(c, Completion) for c in chunk):
      raise ValueError(f"evaluate: complete() returned {len(chunk)} results for {len(chunk_prompts)} {benchmark} "
                       f"prompts; expected one Completion per prompt")
    completions += chunk
    if write:
      write_jsonl_atomic(partial, [{"id": item.id, "question": item.question, **dataclasses.asdict(c)}
                                   for item, c in zip(items, completions)])
  if not write:
    return None
  grades = grade_items(items, [c.text for c in completions], timeout_s=grade_timeout_s, num_workers=num_workers)
  return [{"id": item.id, "benchmark": benchmark, "question": item.question, "gold": item.gold,
           "completion": completion.text, "extracted": grade.extracted, "correct": grade.correct,
           "tokens": completion.num_tokens, "finish_reason": completion.finish_reason,
           "multiple_choice": item.choices is not None}
          for item, completion, grade in zip(items, completions, grades)]


def _saved_completions(partial: Path, items: list[EvalItem]) -> list[Completion]:
  """The completions an interrupted run saved for a prefix of `items` (none if they are of other items)."""
  if not partial.is_file():
    return []
  saved = [record for _, record in iter_jsonl(partial)]
  if [(r.get("id"), r.get("question")) for r in saved] != [(i.id, i.question) for i in items[:len(saved)]]:
    logging.warning("evaluate: %s holds completions of other items; generating again", partial)
    return []
  return [Completion(record["text"], record["num_tokens"], record["finish_reason"]) for record in saved]


def _item_keys(items: Sequence[EvalItem]) -> list[tuple[Any, Any, Any]]:
  """What a record must repeat of its item to stand for it: id, question and gold (a benchmark file
  replaced under the same ids, e.g. another `eval.data_dir`, is evaluated again)."""
  return [(item.id, item.question, item.gold) for item in items]


def _record_keys(records: Iterable[Mapping[str, Any]]) -> list[tuple[Any, Any, Any]]:
  return [(r.get("id"), r.get("question"), r.get("gold")) for r in records]


def _finished_records(path: Path, items: list[EvalItem]) -> list[dict[str, Any]] | None:
  """The records already in `path` if they cover exactly `items`, else None (redo the benchmark)."""
  if not path.is_file():
    return None
  records = [record for _, record in iter_jsonl(path)]
  if _record_keys(records) != _item_keys(items) or not all(
      set(ITEM_FIELDS) <= record.keys() for record in records):
    logging.warning("evaluate: %s holds other items than requested; generating again", path)
    return None
  return records


def _run_dir(run: Mapping[str, Any] | str | os.PathLike) -> Path:
  return Path(run["run_dir"]) if isinstance(run, Mapping) else Path(run)


def _read_results(run_dir: Path) -> dict[str, Any]:
  path = run_dir / RESULTS_JSON
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no results of an evaluated run")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _verdicts(path: Path) -> dict[str, bool]:
  verdicts = {}
  for line, record in iter_jsonl(path):
    if "id" not in record or not isinstance(record.get("correct"), bool):
      raise ValueError(f"{path}:{line}: expected fields 'id' and boolean 'correct'")
    verdicts[str(record["id"])] = record["correct"]
  return verdicts
