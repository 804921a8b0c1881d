"""The evaluation stage: greedy pass@1 of the base expert, the tuned expert (and optionally the amateur).

`config.eval.benchmarks` lists names of the shared benchmarks (`gsm8k`, `math`, ...), custom sets
as `LABEL=READER:PATH` (PATH read with benchmark READER's fields, reported as LABEL), or prepared
TFDS sets as `tfds:NAME` (`tfds:gsm8k` or `tfds:lr_jax_gsm8k`: the test split of
`lr_jax.data.tfds_builders`' data set, read from `config.eval.data_dir` as the TFDS data dir).
Results go to workdir/eval/<model>/ (per-item JSONL, results.json/.md); base vs tuned with a paired
significance test to workdir/eval/comparison.{json,md}.
"""
from __future__ import annotations

import dataclasses
import os

import jax

from lr_jax.data.prompts import default_stop_strings
from lr_jax.eval.benchmarks import BENCHMARKS, default_path, items_from_records, load_benchmark
from lr_jax.eval.harness import (Completion, check_settings, compare_runs, comparison_markdown, evaluate, finished,
                                  run_settings)
from lr_jax.export import load_peft_adapter
from lr_jax.files import write_text_atomic
from lr_jax.generation.api import generate_batched
from lr_jax.stages import common


def load_benchmark_items(spec: str, data_dir: str, limit: int):
  """Items of every benchmark in `spec` (comma-separated names, LABEL=READER:PATH or tfds:NAME)."""
  items = []
  for entry in (s.strip() for s in spec.split(",") if s.strip()):
    if entry.startswith("tfds:"):
      from lr_jax.data import tfds_builders  # Heavy import (tensorflow_datasets), needed only here.
      name = entry[len("tfds:"):]
      records = tfds_builders.read_records(name, "test", data_dir, limit or None)
      items += items_from_records(tfds_builders.benchmark_of(name), records,
                                  source=f"TFDS {tfds_builders.dataset_name(name)}[test] in {data_dir}")
    elif "=" in entry:
      label, rest = entry.split("=", 1)
      reader, _, path = rest.partition(":")
      if not path:
        raise ValueError(f"config.eval.benchmarks: {entry!r} should be LABEL=READER:PATH")
      items += [dataclasses.replace(it, benchmark=label)
                for it in load_benchmark(reader, os.path.expanduser(path), limit or None)]
    else:
      path = os.path.join(data_dir, entry, "test.jsonl") if data_dir else None
      items += load_benchmark(entry, path, limit or None)
  if not items:
    raise ValueError("config.eval.benchmarks: no benchmark given")
  return items


EVAL_MODELS = ("base", "tuned", "amateur")


def check_benchmarks(spec: str, data_dir: str) -> None:
  """What `load_benchmark_items` needs, without reading the files: known readers and existing files,
  and for tfds: entries a known data set, prepared in `data_dir` where one is given."""
  entries = [s.strip() for s in spec.split(",") if s.strip()]
  if not entries:
    raise ValueError("config.eval.benchmarks: no benchmark given")
  labels = [entry.split("=", 1)[0] for entry in entries]
  repeated = sorted({label for label in labels if labels.count(label) > 1})
  if repeated:
    raise ValueError(f"config.eval.benchmarks: {', '.join(map(repr, repeated))} listed twice")
  for entry in entries:
    if entry.startswith("tfds:"):
      _check_tfds_benchmark(entry, data_dir)
      continue
    if "=" in entry:
      reader, _, path = entry.split("=", 1)[1].partition(":")
      if not path:
        raise ValueError(f"config.eval.benchmarks: {entry!r} should be LABEL=READER:PATH")
      path = os.path.expanduser(path)
    else:
      reader, path = entry, os.path.join(data_dir, entry, "test.jsonl") if data_dir else default_path(entry)
    if reader not in BENCHMARKS:
      raise ValueError(f"config.eval.benchmarks: unknown benchmark {reader!r} in {entry!r}; expected one of "
                       f"{', '.join(BENCHMARKS)}")
    if not os.path.isfile(path):
      raise ValueError(f"config.eval.benchmarks: {entry!r}: {path} does not exist")


def _check_tfds_benchmark(entry: str, data_dir: str) -> None:
  from lr_jax.data import tfds_builders  # Heavy import (tensorflow_datasets), needed only here.
  name = entry[len("tfds:"):]
  try:
    tfds_name = tfds_builders.dataset_name(name)
  except ValueError as e:
    raise ValueError(f"config.eval.benchmarks: {entry!r}: {e}") from None
  if data_dir and not os.path.isdir(os.path.join(data_dir, tfds_name)):
    raise ValueError(f"config.eval.benchmarks: {entry!r}: {tfds_name} is not prepared in config.eval.data_dir "
                     f"{data_dir} (python -m lr_jax.data.tfds_builders --manual-dir DATA --data-dir {data_dir})")


def check_models(spec: str) -> None:
  models = [m.strip() for m in spec.split(",") if m.strip()]
  unknown = [m for m in models if m not in EVAL_MODELS]
  if unknown or not models:
    raise ValueError(f"config.eval.models: {spec!r} should name some of {', '.join(EVAL_MODELS)}")


def _completer(pretrained, tokenizer, config, layout):
  eos = common.eos_ids(pretrained.path, tokenizer)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
  valid_vocab = min(len(tokenizer), pretrained.config.vocab_size)
  stops = list(default_stop_strings(config.eval.template)) or None

  def complete(prompts: list[str]) -> list[Completion]:
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    out = generate_batched(pretrained.model, ids, max_new_tokens=config.eval.max_new_tokens,
                           batch_size=config.eval.batch_size // jax.process_count(), eos_ids=eos, pad_id=pad_id,
                           stop_strings=stops, tokenizer=tokenizer if stops else None,
                           valid_vocab=valid_vocab, layout=layout)
    return [Completion(text=tokenizer.decode(t, skip_special_tokens=True), num_tokens=len(t),
                       finish_reason="length" if r == "length" else "stop")
            for t, r in zip(out.tokens, out.finish_reasons)]

  return complete


def run(config, workdir: common.Workdir, writer) -> dict:
  items = load_benchmark_items(config.eval.benchmarks, config.eval.data_dir, config.eval.limit)
  models = [m.strip() for m in config.eval.models.split(",") if m.strip()]
  adapter = workdir.adapter
  system_prompt = config.eval.system_prompt or config.prompt.system_prompt
  layout = None
  summary, skipped = {}, True
  for name in models:
    run_dir = os.path.join(workdir.eval, name)
    source = config.amateur if name == "amateur" else config.expert
    settings = {"model": source, "dtype": config.dtype, "max_new_tokens": config.eval.max_new_tokens}
    check_settings(run_dir, run_settings(config.eval.template, system_prompt, settings))
    if finished(workdir.eval, name, items):
      summary[name] = common.read_json(os.path.join(run_dir, "results.json"))["average"]
      continue
    skipped = False
    if name == "tuned" and not os.path.isdir(adapter):
      raise FileNotFoundError(f"{adapter}: no trained adapter; run the distill stage first")
    if layout is None:
      layout = common.make_layout(config.mesh.eval, "sample")
    pretrained = common.load_model(source, config.dtype, layout, **common.kernel_flags(config))
    if name == "tuned":
      load_peft_adapter(pretrained.model, adapter)
    tokenizer = common.load_tokenizer(source)
    common.log("eval: %s (%s) on %d items", name, source, len(items))
    results = evaluate(items, _completer(pretrained, tokenizer, config, layout), workdir.eval,
                       template=config.eval.template, run_name=name, tokenizer=tokenizer,
                       system_prompt=system_prompt, settings=settings, write=common.is_main_process())
    common.wait_for_main_process(f"lr_jax eval: {name} graded")  # process 0 grades and writes alone
    if results is None:
      results = common.read_json(os.path.join(run_dir, "results.json"))
    summary[name] = results["average"]
    for b, r in results["benchmarks"].items():
      writer.write("eval", models.index(name), {f"{name}/{b}": r["accuracy"]})
  if ("base" in models or "tuned" in models) and common.is_main_process():
    _write_comparison(workdir)
  return {"skipped": skipped, **{f"average_{k}": v for k, v in summary.items()}}


def _write_comparison(workdir: common.Workdir) -> None:
  """eval/comparison.{json,md} of the base and tuned results on disk (either may be from an earlier
  run); removed where they cannot be compared (one missing, or other items), so none is stale."""
  paths = [os.path.join(workdir.eval, name) for name in ("comparison.json", "comparison.md")]
  for path in paths:
    if os.path.isfile(path):
      os.remove(path)
  base, tuned = os.path.join(workdir.eval, "base"), os.path.join(workdir.eval, "tuned")
  if not all(os.path.isfile(os.path.join(run, "results.json")) for run in (base, tuned)):
    return
  try:
    comparison = compare_runs(base, tuned)
  except (ValueError, FileNotFoundError) as error:  # e.g. evaluated on other limits
    common.log("eval: no comparison of base and tuned: %s", error)
    return
  common.write_json(paths[0], comparison)
  write_text_atomic(paths[1], comparison_markdown(comparison))
