"""TensorFlow-free TFDS builders for the shared JSON Lines data sets (GSM8K and the evaluation benchmarks).

One `GeneratorBasedBuilder` per data set of `BENCHMARK_FILES`, registered as `lr_jax_<benchmark>`
(`lr_jax_gsm8k`, `lr_jax_math`, ...). A builder reads `<manual_dir>/<benchmark>/<split>.jsonl`, the
layout of the shared data folder, and writes array_record files that `tfds.data_source` reads with
random access and without TensorFlow.

Each example has one feature, `record`: the source line's JSON object as UTF-8 text. The benchmarks
mix strings, numbers (SVAMP's float `Answer`, MMLU's int `answer`) and lists (OlympiadBench's
`final_answer`, MMLU's `choices`); one JSON text round-trips every field exactly, where per-field
tfds features would need a schema per benchmark and would turn numbers into text. Shuffling is
disabled, so record i of a split is the i-th non-blank line of its file.

Prepare from the command line:
  python -m lr_jax.data.tfds_builders --manual-dir ../shared/data --data-dir DIR [--names gsm8k,math]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import tensorflow_datasets as tfds

from lr_jax.eval.files import iter_jsonl

PREFIX = "lr_jax_"

# benchmark -> (splits, where the files come from). The shared data folder holds exactly these.
BENCHMARK_FILES: dict[str, tuple[tuple[str, ...], str]] = {
    "gsm8k": (("train", "test"), "https://github.com/openai/grade-school-math (grade_school_math/data)"),
    "math": (("train", "test"), "Hendrycks MATH (https://github.com/hendrycks/math), one JSON object a line"),
    "math500": (("test",), "the MATH500 subset of https://github.com/openai/prm800k"),
    "svamp": (("test",), "the Qwen2.5-Math evaluation data (https://github.com/QwenLM/Qwen2.5-Math, evaluation/data)"),
    "asdiv": (("test",), "the Qwen2.5-Math evaluation data (https://github.com/QwenLM/Qwen2.5-Math, evaluation/data)"),
    "minerva_math": (("test",), "the Qwen2.5-Math evaluation data (https://github.com/QwenLM/Qwen2.5-Math, evaluation/data)"),
    "olympiadbench": (("test",), "the Qwen2.5-Math evaluation data (https://github.com/QwenLM/Qwen2.5-Math, evaluation/data)"),
    "mmlu_stem": (("test",), "the Qwen2.5-Math evaluation data (https://github.com/QwenLM/Qwen2.5-Math, evaluation/data)"),
    "aime24": (("test",), "the Qwen2.5-Math evaluation data (https://github.com/QwenLM/Qwen2.5-Math, evaluation/data)"),
    "amc23": (("test",), "the Qwen2.5-Math evaluation data (https://github.com/QwenLM/Qwen2.5-Math, evaluation/data)"),
    "college_math": (("test",), "the Qwen2.5-Math evaluation data (https://github.com/QwenLM/Qwen2.5-Math, evaluation/data)"),
}


def dataset_name(name: str) -> str:
  """The TFDS name for a benchmark ('gsm8k' -> 'lr_jax_gsm8k'); a TFDS name is returned as is."""
  benchmark = benchmark_of(name)
  return PREFIX + benchmark


def benchmark_of(name: str) -> str:
  """The benchmark behind a benchmark or TFDS name ('lr_jax_gsm8k' or 'gsm8k' -> 'gsm8k')."""
  benchmark = name[len(PREFIX):] if name.startswith(PREFIX) else name
  if benchmark not in BENCHMARK_FILES:
    raise ValueError(f"unknown data set {name!r}: expected one of {', '.join(BENCHMARK_FILES)} "
                     f"(optionally prefixed {PREFIX!r})")
  return benchmark


def manual_file(manual_dir: str | os.PathLike, name: str, split: str) -> str:
  """Where a builder expects a split's JSONL: <manual_dir>/<benchmark>/<split>.jsonl."""
  return os.path.join(os.fspath(manual_dir), benchmark_of(name), f"{split}.jsonl")


class _JsonlBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Reads one benchmark's JSONL splits from the manual dir; subclasses set BENCHMARK."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Each record as its JSON text, in file order."}
  BENCHMARK = ""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.BENCHMARK}: each JSONL record as JSON text, in file order.",
        features=tfds.features.FeaturesDict({"record": tfds.features.Text()}),
        disable_shuffling=True,  # Record i must stay line i so ids and `order='first'` match the JSONL.
    )

  def _split_generators(self, dl_manager):
    splits = BENCHMARK_FILES[self.BENCHMARK][0]
    paths = {split: manual_file(dl_manager.manual_dir, self.BENCHMARK, split) for split in splits}
    for path in paths.values():
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: {self.name} needs "
                                f"{', '.join(f'{self.BENCHMARK}/{s}.jsonl' for s in splits)} in the manual dir")
    return {split: self._generate_examples(path) for split, path in paths.items()}

  def _generate_examples(self, path: str):
    for line_number, record in iter_jsonl(path):
      # Keyed by 0-based physical line, which keeps the file's order (problem ids equal the JSONL's
      # where it has no blank lines). ASCII JSON, so a lone surrogate escape stays encodable; json
      # floats round-trip through repr exactly.
      yield line_number - 1, {"record": json.dumps(record)}


def _make_builder_class(benchmark: str) -> type[_JsonlBuilder]:
  splits, origin = BENCHMARK_FILES[benchmark]
  files = " and ".join(f"{benchmark}/{s}.jsonl" for s in splits)
  class_name = "LrJax" + "".join(part.capitalize() for part in benchmark.split("_"))
  return type(class_name, (_JsonlBuilder,), {
      "name": PREFIX + benchmark,  # Explicit: CamelCase-to-snake would split 'Gsm8k' differently.
      "BENCHMARK": benchmark,
      "MANUAL_DOWNLOAD_INSTRUCTIONS": f"Put {files} from {origin} in the manual dir "
                                      f"(the shared data folder, e.g. ../shared/data, has this layout).",
      "__module__": __name__,
  })


BUILDERS: dict[str, type[_JsonlBuilder]] = {b: _make_builder_class(b) for b in BENCHMARK_FILES}


def prepare(name: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
  """Prepares benchmark `name` (or 'lr_jax_<name>') under data_dir as array_record, TensorFlow-free.

  Raises:
    FileNotFoundError: a split's JSONL file is missing from manual_dir (the message names it).
    ValueError: a line is not a JSON object (names the file and line).
  """
  benchmark = benchmark_of(name)
  for split in BENCHMARK_FILES[benchmark][0]:
    # Checked here too: TFDS reports a missing or empty manual dir with a multi-line message.
    path = manual_file(manual_dir, benchmark, split)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} does not exist: {PREFIX}{benchmark} needs "
                              f"{benchmark}/{split}.jsonl in the manual dir {os.fspath(manual_dir)}")
  builder = BUILDERS[benchmark](data_dir=os.fspath(data_dir), file_format="array_record")
  # Always rebuilt from the manual dir (the files are small): a prepared copy of an edited file is stale.
  mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir),
                                                                            download_mode=mode))
  return builder


def read_records(name: str, split: str, data_dir: str | os.PathLike, limit: int | None = None) -> list[dict]:
  """The first `limit` (None: all) records of a prepared split, as the original JSON objects.

  Raises:
    FileNotFoundError: the data set or split is not prepared under data_dir.
  """
  tfds_name = dataset_name(name)
  where = f"TFDS {tfds_name}[{split}] in {os.fspath(data_dir)}"
  try:
    source = tfds.data_source(tfds_name, split=split, data_dir=os.fspath(data_dir), download=False)
  except Exception as e:  # TFDS signals a missing data set or split with several exception types.
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise FileNotFoundError(f"{where} is not prepared: {first_line}") from None
  count = len(source) if limit is None else min(limit, len(source))
  return [json.loads(bytes(source[i]["record"]).decode("utf-8")) for i in range(count)]


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="Prepare the lr_jax TFDS data sets from local JSONL files.")
  parser.add_argument("--manual-dir", required=True, help="folder with <benchmark>/<split>.jsonl (../shared/data)")
  parser.add_argument("--data-dir", required=True, help="the TFDS data dir to write")
  parser.add_argument("--names", default=",".join(BENCHMARK_FILES),
                      help="comma-separated benchmarks (default: all)")
  args = parser.parse_args(argv)
  for name in (n.strip() for n in args.names.split(",") if n.strip()):
    builder = prepare(name, args.manual_dir, args.data_dir)
    sizes = ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
    print(f"{builder.name}: {sizes} -> {builder.data_dir}")


if __name__ == "__main__":
  main()
