"""Tests for lr_jax/data/problems.py: JSONL and TFDS problem sources."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from lr_jax.data.problems import Problem, load_problems, load_problems_tfds

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get("LR_SHARED_DIR", REPO.parent / "shared"))
GSM8K_TRAIN = SHARED / "data" / "gsm8k" / "train.jsonl"


def _write_jsonl(path: pathlib.Path, lines: list) -> pathlib.Path:
  path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
  return path


@pytest.fixture
def twenty(tmp_path):
  return _write_jsonl(tmp_path / "tiny.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)])


def test_first_order_returns_gsm8k_train_head_in_file_order():
  if not GSM8K_TRAIN.exists():
    pytest.skip(f"needs {GSM8K_TRAIN}")
  problems = load_problems(GSM8K_TRAIN, n=5)
  with open(GSM8K_TRAIN) as f:
    head = [json.loads(next(f)) for _ in range(5)]
  assert [p.id for p in problems] == [f"train-{i}" for i in range(5)]
  assert [p.question for p in problems] == [r["question"] for r in head]
  assert [p.answer for p in problems] == [r["answer"] for r in head]
  assert len(load_problems(GSM8K_TRAIN)) == 1000  # The original LightReasoner's default selection.


def test_random_order_is_seeded_and_a_larger_n_extends_a_smaller_one(twenty):
  five = load_problems(twenty, n=5, order="random", seed=3)
  assert five == load_problems(twenty, n=5, order="random", seed=3)
  assert load_problems(twenty, n=8, order="random", seed=3)[:5] == five
  assert five != load_problems(twenty, n=5, order="random", seed=4)
  # The documented selection: the first n of numpy's permutation for the seed, in permuted order.
  assert [p.id for p in five] == [f"tiny-{i}" for i in np.random.default_rng(3).permutation(20)[:5]]
  for p in five:  # Each id still names its own line.
    index = int(p.id.split("-")[1])
    assert p == Problem(id=f"tiny-{index}", question=f"q{index}", answer=f"a{index}")
  assert sorted(p.id for p in load_problems(twenty, n=None, order="random")) == sorted(
      p.id for p in load_problems(twenty, n=None))


def test_ids_name_physical_lines_so_blank_lines_do_not_shift_them(tmp_path):
  path = _write_jsonl(tmp_path / "gaps.jsonl", [{"question": "x", "answer": 1}, "", {"question": "y", "answer": 2.5}])
  assert load_problems(path, n=None) == [Problem("gaps-0", "x", "1"), Problem("gaps-2", "y", "2.5")]


def test_answer_field_none_gives_problems_without_answers(tmp_path):
  path = _write_jsonl(tmp_path / "q.jsonl", [{"problem": "p0"}])
  assert load_problems(path, n=1, question_field="problem", answer_field=None) == [Problem("q-0", "p0", None)]


@pytest.mark.parametrize("lines, message", [
    (['{"question": "a", "answer": "b"}', '{"question": '], r"bad\.jsonl:2: invalid JSON"),
    (['[1, 2]'], r"bad\.jsonl:1: expected a JSON object"),
    ([{"question": "a"}], r"bad\.jsonl:1: missing field 'answer'"),
    ([{"question": 3, "answer": "b"}], r"bad\.jsonl:1: field 'question' must be a string"),
    ([{"question": "a", "answer": [1]}], r"bad\.jsonl:1: field 'answer' must be a string or a number"),
])
def test_bad_records_raise_one_line_errors_naming_file_line_and_field(tmp_path, lines, message):
  path = _write_jsonl(tmp_path / "bad.jsonl", lines)
  with pytest.raises(ValueError, match=message) as info:
    load_problems(path, n=None)
  assert "\n" not in str(info.value)


def test_bad_selection_arguments_are_refused(twenty, tmp_path):
  with pytest.raises(ValueError, match="n=21 problems but it holds only 20"):
    load_problems(twenty, n=21)
  with pytest.raises(ValueError, match="order must be one of"):
    load_problems(twenty, order="last")
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    load_problems(tmp_path / "missing.jsonl")


# --- TFDS: a tiny dataset prepared in the array_record format, TensorFlow-free. ---

@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")

  class LrJaxTinyProblems(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"question": tfds.features.Text(), "answer": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(6):
        yield i, {"question": f"question {i} é", "answer": f"{i}"}

  data_dir = tmp_path_factory.mktemp("tfds")
  LrJaxTinyProblems(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir


def test_tfds_reader_returns_split_records_with_split_index_ids(tfds_dir):
  import tensorflow_datasets as tfds
  source = tfds.data_source("lr_jax_tiny_problems", split="train", data_dir=str(tfds_dir))
  problems = load_problems_tfds("lr_jax_tiny_problems", split="train", data_dir=tfds_dir, n=None)
  assert [p.id for p in problems] == [f"train-{i}" for i in range(6)]
  assert [p.question for p in problems] == [source[i]["question"].decode() for i in range(6)]
  assert sorted(p.question for p in problems) == [f"question {i} é" for i in range(6)]
  random_three = load_problems_tfds("lr_jax_tiny_problems", data_dir=tfds_dir, n=3, order="random", seed=1)
  assert random_three == [problems[int(p.id.split("-")[1])] for p in random_three]


def test_tfds_reader_errors_name_the_dataset_record_and_field(tfds_dir):
  with pytest.raises(ValueError, match=r"lr_jax_tiny_problems\[train\].*record 0: missing field 'problem'"):
    load_problems_tfds("lr_jax_tiny_problems", data_dir=tfds_dir, n=1, question_field="problem")
  with pytest.raises(FileNotFoundError, match=r"TFDS no_such_dataset_here\[train\].*is not prepared"):
    load_problems_tfds("no_such_dataset_here", data_dir=tfds_dir, n=1)
