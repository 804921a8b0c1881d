"""Problem sources for the sampling stage: JSON Lines files and prepared TFDS datasets.

A `Problem` is what the sampler needs from a data set: a stable id, the question text and, when the
source has one, the reference answer. Ids are stable across runs so that a resumed sampling run can tell
which problems its store already holds:
  * JSONL: f"{file_stem}-{line_index}", line_index the 0-based physical line of the record
    (GSM8K's train.jsonl line 0 -> "train-0");
  * TFDS:  f"{split}-{record_index}", record_index the position in the prepared split (the same ids
    as the JSONL file's when it has no blank lines, as the shared files do not).

Selection (`order`):
  * 'first':  the first n records in source order (what the original LightReasoner does:
    the first 1000 GSM8K training problems);
  * 'random': the first n of a permutation seeded by `seed`, in that permuted order. A larger n
    extends a smaller one's selection, so growing a run keeps the problems it already sampled.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from lr_jax.eval.files import iter_jsonl

ORDERS = ("first", "random")


@dataclasses.dataclass(frozen=True)
class Problem:
  id: str
  question: str
  answer: str | None


def load_problems(
    path: str | os.PathLike,
    *,
    n: int | None = 1000,
    order: str = "first",
    seed: int = 0,
    question_field: str = "question",
    answer_field: str | None = "answer",
) -> list[Problem]:
  """Reads n problems from a JSON Lines file (one object per line; blank lines are skipped).

  Args:
    path: the .jsonl file, e.g. GSM8K's train.jsonl.
    n: how many problems to return; None for all of them.
    order: 'first' or 'random' (see the module docstring).
    seed: the permutation seed for order='random'.
    question_field: the record field holding the question text.
    answer_field: the record field holding the reference answer (a string or a number, stored as
      text); None when the source has no answers, giving `answer=None`.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: a line is not a JSON object, lacks a field or holds the wrong type, or the file
      has fewer than n records; the message names the file and line number.
  """
  path = os.fspath(path)
  _check_selection(n, order)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"problem file {path} does not exist")
  stem = os.path.splitext(os.path.basename(path))[0]
  # 'first' can stop reading early; 'random' needs every record to permute over.
  stop_after = n if order == "first" else None
  records = [(line_number - 1, record) for line_number, record in iter_jsonl(path, stop_after)]
  chosen = _select(len(records), n, order, seed, source=path)
  problems = []
  for i in chosen:
    line_index, record = records[i]
    problems.append(_to_problem(
        f"{stem}-{line_index}", record, question_field, answer_field,
        where=f"{path}:{line_index + 1}"))
  return problems


def load_problems_tfds(
    name: str,
    *,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    n: int | None = 1000,
    order: str = "first",
    seed: int = 0,
    question_field: str = "question",
    answer_field: str | None = "answer",
) -> list[Problem]:
  """Reads n problems from an already prepared TFDS dataset, TensorFlow-free.

  Only the reader side: the dataset must have been prepared beforehand in the array_record file
  format (`builder.download_and_prepare(file_format='array_record')`), which
  `tfds.data_source` reads with random access and without TensorFlow. Nothing is downloaded.
  Text features arrive as UTF-8 bytes and are decoded. An example whose only feature is `record`
  (the `lr_jax.data.tfds_builders` data sets) holds the source record as JSON text, and its fields
  are read from that JSON object.

  Args:
    name: the TFDS name, with optional config and version ('gsm8k', 'my_set/main:1.0.0').
    split: the split to read; ids are f"{split}-{record_index}".
    data_dir: the TFDS data directory holding the prepared dataset (TFDS's default when None).
    n, order, seed, question_field, answer_field: as in `load_problems`.

  Raises:
    FileNotFoundError: the dataset or split is not prepared under data_dir.
    ValueError: a record lacks a field or holds the wrong type (names the record index), or the
      split has fewer than n records.
  """
  import tensorflow_datasets as tfds  # Heavy import, needed only for this source.

  _check_selection(n, order)
  source_name = f"TFDS {name}[{split}] in {data_dir}"
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # TFDS signals a missing dataset with several unrelated exception types.
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise FileNotFoundError(f"{source_name} is not prepared: {first_line}") from None
  chosen = _select(len(source), n, order, seed, source=source_name)
  problems = []
  for i in chosen:
    where = f"{source_name} record {i}"
    problems.append(_to_problem(f"{split}-{i}", _fields(source[int(i)], where), question_field,
                                answer_field, where=where))
  return problems


def load_problems_from_spec(
    spec: str,
    *,
    tfds_dir: str | os.PathLike | None = None,
    n: int | None = 1000,
    order: str = "first",
    seed: int = 0,
    question_field: str = "question",
    answer_field: str | None = "answer",
) -> list[Problem]:
  """Reads problems from `spec`: a JSONL path, or 'tfds:NAME[:SPLIT]' (split 'train' by default).

  NAME may carry a version ('tfds:lr_jax_gsm8k:1.0.0:train'); a tfds spec reads from the TFDS
  data dir `tfds_dir` (TFDS's default when empty or None). The other arguments are as in
  `load_problems`.
  """
  if not spec.startswith("tfds:"):
    return load_problems(spec, n=n, order=order, seed=seed, question_field=question_field,
                         answer_field=answer_field)
  parts = spec[len("tfds:"):].split(":")
  if not parts[0] or len(parts) > 3:
    raise ValueError(f"data spec {spec!r}: expected tfds:NAME[:SPLIT] or tfds:NAME:VERSION:SPLIT")
  name, split = (parts[0], "train") if len(parts) == 1 else (":".join(parts[:-1]), parts[-1])
  return load_problems_tfds(name, split=split, data_dir=tfds_dir or None, n=n, order=order, seed=seed,
                            question_field=question_field, answer_field=answer_field)


def _check_selection(n: int | None, order: str) -> None:
  if order not in ORDERS:
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
  if n is not None and n < 0:
    raise ValueError(f"n must be >= 0 or None, got {n}")


def _select(num_records: int, n: int | None, order: str, seed: int, *, source: str) -> Sequence[int]:
  """Returns the indices (into the source's records) of the selected problems, in problem order."""
  if n is None:
    n = num_records
  if n > num_records:
    raise ValueError(f"{source}: asked for n={n} problems but it holds only {num_records}")
  if order == "first":
    return range(n)
  return np.random.default_rng(seed).permutation(num_records)[:n].tolist()


def _fields(example: Mapping, where: str) -> Mapping:
  """The record's fields: the example itself, or the JSON object of a lone `record` feature."""
  if set(example) != {"record"}:
    return example
  try:
    record = json.loads(bytes(example["record"]).decode("utf-8"))
  except (TypeError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{where}: feature 'record' is not JSON text ({type(e).__name__})") from None
  if not isinstance(record, dict):
    raise ValueError(f"{where}: feature 'record' holds a {type(record).__name__}, expected a JSON object")
  return record


def _to_problem(problem_id: str, record: Mapping, question_field: str,
                answer_field: str | None, *, where: str) -> Problem:
  question = _text_field(record, question_field, where, allow_number=False)
  if not question.strip():
    raise ValueError(f"{where}: field {question_field!r} is empty")
  answer = None if answer_field is None else _text_field(record, answer_field, where,
                                                         allow_number=True)
  return Problem(id=problem_id, question=question, answer=answer)


def _text_field(record: Mapping, field: str, where: str, *, allow_number: bool) -> str:
  if field not in record:
    raise ValueError(f"{where}: missing field {field!r} (fields: {sorted(record)})")
  value = record[field]
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8")
  if isinstance(value, str):
    return value
  # Some benchmarks store numeric answers (SVAMP's floats); they are compared as text downstream.
  if allow_number and isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
    return str(value.item() if isinstance(value, np.number) else value)
  expected = "a string or a number" if allow_number else "a string"
  raise ValueError(f"{where}: field {field!r} must be {expected}, got {type(value).__name__}")
