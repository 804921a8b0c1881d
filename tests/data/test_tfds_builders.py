"""Tests for lr_jax/data/tfds_builders.py: TensorFlow-free TFDS data sets from the shared JSONL files."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from lr_jax.data import tfds_builders  # noqa: E402
from lr_jax.data.problems import load_problems, load_problems_from_spec  # noqa: E402
from lr_jax.stages.evaluate import load_benchmark_items  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED_DATA = pathlib.Path(os.environ.get("LR_SHARED_DIR", REPO.parent / "shared")) / "data"
HEAD = 20  # Lines copied from each shared file: enough for two-digit keys, fast to prepare.
# gsm8k for the training side; olympiadbench (list final_answer) and svamp (float Answer) and
# mmlu_stem (list choices, int answer) for fields that are not text.
NAMES = ("gsm8k", "olympiadbench", "svamp", "mmlu_stem")


def _jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  """(manual_dir with the first HEAD lines of each shared split, TFDS data dir with them prepared)."""
  manual = tmp_path_factory.mktemp("manual")
  for name in NAMES:
    for split in tfds_builders.BENCHMARK_FILES[name][0]:
      source = SHARED_DATA / name / f"{split}.jsonl"
      if not source.exists():
        pytest.skip(f"needs {source}")
      (manual / name).mkdir(exist_ok=True)
      with open(source, encoding="utf-8") as f:
        (manual / name / f"{split}.jsonl").write_text("".join(next(f) for _ in range(HEAD)), encoding="utf-8")
  data_dir = tmp_path_factory.mktemp("tfds")
  for name in NAMES:
    tfds_builders.prepare(name, manual, data_dir)
  return manual, data_dir


def test_tensorflow_is_not_installed_so_everything_here_runs_without_it():
  assert importlib.util.find_spec("tensorflow") is None


def test_every_shared_data_set_has_a_registered_builder_named_lr_jax_benchmark():
  for name in ("gsm8k", "math", "math500", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem",
               "aime24", "amc23", "college_math"):
    builder_cls = tfds.builder_cls(f"lr_jax_{name}")
    assert builder_cls is tfds_builders.BUILDERS[name]
    assert f"{name}/test.jsonl" in builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert "gsm8k/train.jsonl" in tfds_builders.BUILDERS["gsm8k"].MANUAL_DOWNLOAD_INSTRUCTIONS


@pytest.mark.parametrize("name, split", [("gsm8k", "train"), ("gsm8k", "test"), ("olympiadbench", "test"),
                                         ("svamp", "test"), ("mmlu_stem", "test")])
def test_read_records_equal_the_jsonl_records_exactly_in_file_order(dirs, name, split):
  manual, data_dir = dirs
  expected = _jsonl(manual / name / f"{split}.jsonl")
  records = tfds_builders.read_records(f"lr_jax_{name}", split, data_dir)
  assert records == expected
  # Types survive too (== alone would let 145 stand for 145.0).
  assert [{k: type(v) for k, v in r.items()} for r in records] == [
      {k: type(v) for k, v in r.items()} for r in expected]
  assert tfds_builders.read_records(name, split, data_dir, limit=3) == expected[:3]


def test_non_text_fields_round_trip_as_their_json_types(dirs):
  _, data_dir = dirs
  olympiad = tfds_builders.read_records("olympiadbench", "test", data_dir)[0]
  assert isinstance(olympiad["final_answer"], list)
  svamp = tfds_builders.read_records("svamp", "test", data_dir)[0]
  assert isinstance(svamp["Answer"], float)
  mmlu = tfds_builders.read_records("mmlu_stem", "test", data_dir)[0]
  assert isinstance(mmlu["choices"], list) and len(mmlu["choices"]) == 4 and isinstance(mmlu["answer"], int)


def test_problems_from_a_tfds_spec_match_the_jsonl_problems(dirs):
  manual, data_dir = dirs
  jsonl = load_problems(manual / "gsm8k" / "train.jsonl", n=None)
  from_tfds = load_problems_from_spec("tfds:lr_jax_gsm8k:train", tfds_dir=data_dir, n=None)
  assert from_tfds == jsonl  # Same ids ("train-<line>"), questions and answers.
  assert load_problems_from_spec("tfds:lr_jax_gsm8k", tfds_dir=data_dir, n=5) == jsonl[:5]  # Split train.
  assert load_problems_from_spec("tfds:lr_jax_gsm8k:test", tfds_dir=data_dir, n=4, order="random", seed=2) == (
      load_problems(manual / "gsm8k" / "test.jsonl", n=4, order="random", seed=2))
  assert load_problems_from_spec(str(manual / "gsm8k" / "train.jsonl"), n=3) == jsonl[:3]


def test_tfds_benchmarks_give_the_same_eval_items_as_the_jsonl_files(dirs):
  manual, data_dir = dirs
  for name in ("gsm8k", "olympiadbench", "svamp", "mmlu_stem"):
    assert load_benchmark_items(f"tfds:{name}", str(data_dir), 0) == load_benchmark_items(name, str(manual), 0)
  assert load_benchmark_items("tfds:lr_jax_svamp,tfds:gsm8k", str(data_dir), 7) == (
      load_benchmark_items("svamp,gsm8k", str(manual), 7))


def test_command_line_prepares_the_named_data_sets(dirs, tmp_path, capsys):
  manual, _ = dirs
  tfds_builders.main(["--manual-dir", str(manual), "--data-dir", str(tmp_path), "--names", "svamp"])
  assert f"lr_jax_svamp: test {HEAD}" in capsys.readouterr().out
  assert tfds_builders.read_records("svamp", "test", tmp_path) == _jsonl(manual / "svamp" / "test.jsonl")


def test_a_missing_manual_file_is_a_one_line_error_naming_it(dirs, tmp_path):
  manual, _ = dirs
  partial = tmp_path / "manual"
  shutil.copytree(manual / "gsm8k", partial / "gsm8k")
  (partial / "gsm8k" / "test.jsonl").unlink()
  with pytest.raises(FileNotFoundError, match=r"gsm8k/test\.jsonl does not exist") as info:
    tfds_builders.prepare("gsm8k", partial, tmp_path / "out")
  assert "\n" not in str(info.value)


def test_unknown_names_and_unprepared_splits_are_refused(dirs, tmp_path):
  _, data_dir = dirs
  with pytest.raises(ValueError, match="unknown data set 'gsm9k'"):
    tfds_builders.read_records("gsm9k", "test", data_dir)
  with pytest.raises(FileNotFoundError, match=r"lr_jax_math\[test\].*is not prepared"):
    tfds_builders.read_records("math", "test", data_dir)
  with pytest.raises(ValueError, match="expected tfds:NAME"):
    load_problems_from_spec("tfds:", tfds_dir=data_dir)


def test_a_bad_jsonl_line_is_an_error_naming_file_and_line(tmp_path):
  (tmp_path / "manual" / "aime24").mkdir(parents=True)
  (tmp_path / "manual" / "aime24" / "test.jsonl").write_text('{"problem": "p", "answer": "1"}\n[1]\n')
  with pytest.raises(ValueError, match=r"aime24/test\.jsonl:2: expected a JSON object"):
    tfds_builders.prepare("aime24", tmp_path / "manual", tmp_path / "out")


def test_preparing_again_after_the_file_changed_serves_the_new_records_and_a_lone_surrogate_is_kept(tmp_path):
  manual, data_dir = tmp_path / "manual", tmp_path / "tfds"
  (manual / "svamp").mkdir(parents=True)
  path = manual / "svamp" / "test.jsonl"
  for answer in (1.0, 2.0):
    path.write_text(json.dumps({"Body": "b\ud83d.", "Question": "q?", "Answer": answer, "ID": "x"}) + "\n")
    tfds_builders.prepare("svamp", manual, data_dir)
    assert tfds_builders.read_records("svamp", "test", data_dir) == _jsonl(path)
