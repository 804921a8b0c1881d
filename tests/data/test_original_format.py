"""Tests for lr_jax/data/original_format.py with the real Qwen2.5 tokenizer (offline)."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

from lr_jax.data.original_format import export_original, import_original, original_prompt_text
from lr_jax.data.store import TARGET_PAD_ID, SampleStore, TrajectoryRecord

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get("LR_SHARED_DIR", REPO.parent / "shared"))
QWEN_TOKENIZER = SHARED / "tokenizers" / "qwen2.5"
ORIGINAL_FIELDS = ["prompt_id", "step", "prefix", "tokens", "token_ids", "weights", "kl_divergence"]
QUESTIONS = {
    "train-0": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
               "How many clips did Natalia sell altogether in April and May?",
    "train-1": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes. How much did she earn?",
}
COMPLETIONS = {
    "train-0": "In May she sold 48 / 2 = 24 clips. Altogether: 48 + 24 = 72.\nThe answer is \\boxed{72}.<|im_end|>",
    "train-1": "Per minute she earns 12 / 60 = $0.2, so 50 minutes pay 0.2 x 50 = $10.<|im_end|>",
}


@pytest.fixture(scope="module")
def tokenizer():
  if not (QWEN_TOKENIZER / "vocab.json").exists():
    pytest.skip(f"needs {QWEN_TOKENIZER / 'vocab.json'}")
  transformers = pytest.importorskip("transformers")
  return transformers.AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))


def _encode(tokenizer, text):
  return tokenizer(text, add_special_tokens=False)["input_ids"]


def _record(tokenizer, problem_id: str, steps: list[int], seed: int, K: int = 4) -> TrajectoryRecord:
  rng = np.random.default_rng(seed)
  completion = _encode(tokenizer, COMPLETIONS[problem_id])
  k, num_steps = len(steps), len(completion)
  target_ids = np.full((k, K), TARGET_PAD_ID, np.int32)
  target_weights = np.zeros((k, K), np.float32)
  for row, width in enumerate(rng.integers(1, K + 1, size=k)):
    target_ids[row, :width] = rng.choice(150000, size=width, replace=False)
    target_weights[row, :width] = rng.dirichlet(np.ones(width))
  all_kl = rng.exponential(0.6, size=num_steps).astype(np.float32)
  return TrajectoryRecord(
      problem_id=problem_id, prompt_ids=_encode(tokenizer, original_prompt_text(tokenizer, QUESTIONS[problem_id])),
      completion_ids=completion, finish_reason="stop", steps=steps, kl=all_kl[steps], target_ids=target_ids,
      target_weights=target_weights, dropped_mass=np.zeros(k), num_target_tokens=np.sum(target_ids >= 0, axis=1),
      all_kl=all_kl, expert_top1=np.asarray(completion), amateur_top1=np.zeros(num_steps, np.int32))


def _write_lines(path: pathlib.Path, lines: list[dict | str]) -> pathlib.Path:
  path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
  return path


def test_records_round_trip_through_the_original_format_with_identical_steps_and_targets(tokenizer, tmp_path):
  records = [_record(tokenizer, "train-0", [1, 4, 5, 17, 30], seed=0),
             _record(tokenizer, "train-1", [2, 3, 20], seed=1)]
  for r in records:  # Precondition: these texts round-trip through decode/encode at every step.
    for t in r.steps:
      assert _encode(tokenizer, tokenizer.decode(r.completion_ids[:t])) == r.completion_ids[:t].tolist()
  path = tmp_path / "samples.jsonl"
  assert export_original(records, path, tokenizer) == 8
  imported = import_original(
      path, tokenizer, K=4, render_prompt=lambda pid: original_prompt_text(tokenizer, QUESTIONS[pid]))
  assert [r.problem_id for r in imported] == ["train-0", "train-1"]
  for got, want in zip(imported, records):
    last = int(want.steps[-1])
    np.testing.assert_array_equal(got.prompt_ids, want.prompt_ids)
    np.testing.assert_array_equal(got.completion_ids, want.completion_ids[:last])
    for name in ("steps", "kl", "target_ids", "target_weights", "num_target_tokens", "dropped_mass"):
      np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.finish_reason == "imported" and got.num_steps == last + 1
    np.testing.assert_array_equal(got.all_kl[got.steps], want.kl)
    assert np.isnan(np.delete(got.all_kl, got.steps)).all() and (got.expert_top1 == -1).all()


def test_export_writes_original_fields_with_the_completion_prefix_only(tokenizer, tmp_path):
  record = _record(tokenizer, "train-0", [3, 9], seed=2)
  path = tmp_path / "samples.jsonl"
  export_original([record], path, tokenizer, prompt_id_of=QUESTIONS)
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  assert [list(line) for line in lines] == [ORIGINAL_FIELDS] * 2
  first = lines[1]
  used = record.target_ids[1] >= 0
  assert first["prompt_id"] == QUESTIONS["train-0"] and first["step"] == 9
  assert first["prefix"] == tokenizer.decode(record.completion_ids[:9].tolist())
  assert first["token_ids"] == record.target_ids[1][used].tolist()
  assert first["tokens"] == [tokenizer.decode([t]) for t in first["token_ids"]]
  assert np.array(first["weights"], np.float32).tolist() == record.target_weights[1][used].tolist()
  assert np.float32(first["kl_divergence"]) == record.kl[1]


def test_export_of_a_store_equals_export_of_its_records(tokenizer, tmp_path):
  records = [_record(tokenizer, "train-0", [1, 2], seed=3), _record(tokenizer, "train-1", [5], seed=4)]
  store = SampleStore(tmp_path / "store", meta={"K": 4})
  store.append(records)
  export_original(store, tmp_path / "from_store.jsonl", tokenizer)
  export_original(records, tmp_path / "from_records.jsonl", tokenizer)
  assert (tmp_path / "from_store.jsonl").read_text() == (tmp_path / "from_records.jsonl").read_text()


def test_original_samples_import_with_question_prompts_and_top_k_truncation(tokenizer, tmp_path):
  question_a, question_b = QUESTIONS["train-0"], QUESTIONS["train-1"]
  completion = _encode(tokenizer, COMPLETIONS["train-0"])
  def line(question, step, ids, weights, kl):
    prefix = tokenizer.decode(completion[:step])
    return {"prompt_id": question, "step": step, "prefix": prefix, "tokens": [tokenizer.decode([t]) for t in ids],
            "token_ids": ids, "weights": weights, "kl_divergence": kl}
  path = _write_lines(tmp_path / "original.jsonl", [
      line(question_a, 7, [10, 11, 12, 13, 14], [0.1, 0.4, 0.05, 0.3, 0.15], 1.25),
      line(question_b, 2, [7], [1.0], 0.5),
      line(question_a, 3, [20, 21], [0.75, 0.25], 0.625),
  ])
  a, b = import_original(path, tokenizer, K=2)
  assert (a.problem_id, b.problem_id) == (question_a, question_b)
  np.testing.assert_array_equal(a.prompt_ids, _encode(tokenizer, original_prompt_text(tokenizer, question_a)))
  np.testing.assert_array_equal(a.completion_ids, completion[:7])
  np.testing.assert_array_equal(a.steps, [3, 7])
  np.testing.assert_array_equal(a.target_ids, [[20, 21], [11, 13]])  # Heaviest two of five, heaviest first.
  np.testing.assert_allclose(a.target_weights, [[0.75, 0.25], [0.4 / 0.7, 0.3 / 0.7]], rtol=1e-6)
  np.testing.assert_allclose(a.dropped_mass, [0.0, 0.3], rtol=1e-6)
  np.testing.assert_array_equal(a.num_target_tokens, [2, 5])
  np.testing.assert_array_equal(a.kl, np.float32([0.625, 1.25]))
  np.testing.assert_array_equal(b.target_ids, [[7, TARGET_PAD_ID]])
  np.testing.assert_array_equal(b.target_weights, [[1.0, 0.0]])


def test_steps_whose_text_does_not_round_trip_become_their_own_trajectory(tokenizer, tmp_path):
  # "Th" + "e" is a non-canonical split of "The": the prefix after one token re-encodes to ["Th"],
  # after two to ["The"], so step 1 cannot share a token sequence with the later steps.
  completion = _encode(tokenizer, "Th") + _encode(tokenizer, "e") + _encode(tokenizer, " answer is 4.")
  assert _encode(tokenizer, tokenizer.decode(completion[:2])) != completion[:2]
  path = _write_lines(tmp_path / "original.jsonl", [
      {"prompt_id": "Q", "step": step, "prefix": tokenizer.decode(completion[:step]), "tokens": ["x"],
       "token_ids": [100 + step], "weights": [1.0], "kl_divergence": 1.0} for step in (1, 2, 3)])
  records = import_original(path, tokenizer, K=1)
  prompt_text = original_prompt_text(tokenizer, "Q")
  contexts = {int(r.target_ids[i, 0]) - 100: r.prompt_ids.tolist() + r.completion_ids[:t].tolist()
              for r in records for i, t in enumerate(r.steps)}
  assert len(records) == 2 and sorted(contexts) == [1, 2, 3]
  for step, context in contexts.items():  # Each step keeps exactly the original fine-tuner's input.
    assert context == _encode(tokenizer, prompt_text + tokenizer.decode(completion[:step]))


def test_steps_inside_one_multi_token_character_import_as_trajectories_of_their_own(tokenizer, tmp_path):
  """U+20000 is 3 tokens: the prefixes before its 2nd and 3rd decode alike ('... \ufffd'), so two lines
  carry one context; each stays trainable (the import used to call the second a repeated step)."""
  completion = _encode(tokenizer, "It is \U00020000, written U+20000.")
  assert tokenizer.decode(completion[:4]) == tokenizer.decode(completion[:5])
  path = _write_lines(tmp_path / "original.jsonl", [
      {"prompt_id": "Q", "step": step, "prefix": tokenizer.decode(completion[:step]), "tokens": ["x"],
       "token_ids": [100 + step], "weights": [1.0], "kl_divergence": 1.0} for step in (3, 4, 5)])
  records = import_original(path, tokenizer, K=1)
  assert sorted(int(r.target_ids[i, 0]) - 100 for r in records for i in range(len(r.steps))) == [3, 4, 5]


@pytest.mark.parametrize("line, message", [
    ('{"prompt_id": "q"', r"original\.jsonl:2: invalid JSON"),
    ({"prompt_id": "q", "step": 1, "prefix": "a", "tokens": [], "token_ids": [1], "weights": [1.0]},
     r"original\.jsonl:2: missing field 'kl_divergence'"),
    ({"prompt_id": "q", "step": -1, "prefix": "a", "tokens": [], "token_ids": [1], "weights": [1.0],
      "kl_divergence": 1.0}, r"original\.jsonl:2: field 'step' must be an int >= 0"),
    ({"prompt_id": "q", "step": 1, "prefix": "a", "tokens": [], "token_ids": [1, 2], "weights": [1.0],
      "kl_divergence": 1.0}, r"original\.jsonl:2: field 'weights' must match"),
    ({"prompt_id": "q", "step": 1, "prefix": " a", "tokens": [], "token_ids": [1], "weights": [1.0],
      "kl_divergence": 1.0}, r"original\.jsonl:2: field 'step' repeats an earlier step"),
    ({"prompt_id": "q", "step": 2, "prefix": " a", "tokens": [], "token_ids": [10**6], "weights": [1.0],
      "kl_divergence": 1.0}, r"original\.jsonl:2: field 'token_ids' holds 1000000, beyond the tokenizer's"),
])
def test_bad_original_lines_raise_one_line_errors_naming_file_line_and_field(tokenizer, tmp_path, line, message):
  good = {"prompt_id": "q", "step": 1, "prefix": " a", "tokens": ["b"], "token_ids": [2], "weights": [1.0],
          "kl_divergence": 0.5}
  path = _write_lines(tmp_path / "original.jsonl", [good, line])
  with pytest.raises(ValueError, match=message) as info:
    import_original(path, tokenizer)
  assert "\n" not in str(info.value)


def test_a_line_that_is_not_utf8_is_named(tokenizer, tmp_path):
  good = {"prompt_id": "q", "step": 1, "prefix": " a", "tokens": ["b"], "token_ids": [2], "weights": [1.0],
          "kl_divergence": 0.5}
  path = tmp_path / "original.jsonl"
  path.write_bytes(json.dumps(good).encode() + b'\n{"prompt_id": "\xff"}\n')
  with pytest.raises(ValueError, match=r"original\.jsonl:2: not UTF-8 text \(invalid start byte at byte 15\)"):
    import_original(path, tokenizer)


def test_an_infinite_kl_round_trips_as_json_writes_it(tokenizer, tmp_path):
  record = _record(tokenizer, "train-0", [1, 4], seed=7)
  record.kl[1] = record.all_kl[4] = np.inf  # the amateur gives 0 where the expert does not
  export_original([record], tmp_path / "inf.jsonl", tokenizer)
  assert "Infinity" in (tmp_path / "inf.jsonl").read_text()
  (back,) = import_original(tmp_path / "inf.jsonl", tokenizer, K=4,
                            render_prompt=lambda pid: original_prompt_text(tokenizer, QUESTIONS[pid]))
  np.testing.assert_array_equal(back.kl, record.kl)


def test_command_line_import_renders_the_sampling_runs_template(tokenizer, tmp_path):
  from lr_jax.data.original_format import main
  from lr_jax.data.prompts import render_prompt

  records = [_record(tokenizer, "train-0", [1, 2], seed=8)]
  SampleStore(tmp_path / "store", meta={"K": 4}).append(records)
  main(["export", "--store", str(tmp_path / "store"), "--output", str(tmp_path / "orig.jsonl"),
        "--tokenizer", str(QWEN_TOKENIZER)])
  main(["import", "--input", str(tmp_path / "orig.jsonl"), "--store", str(tmp_path / "imported"),
        "--tokenizer", str(QWEN_TOKENIZER), "--top-k", "4", "--template", "qwen25-math-cot"])
  (back,) = SampleStore(tmp_path / "imported").iter_records()
  assert back.prompt_ids.tolist() == _encode(tokenizer, render_prompt("train-0", "qwen25-math-cot"))


def test_command_line_export_then_import_gives_a_trainable_store_with_the_same_targets(tokenizer, tmp_path):
  from lr_jax.data.original_format import main

  records = [_record(tokenizer, "train-0", [1, 2], seed=5), _record(tokenizer, "train-1", [3], seed=6)]
  SampleStore(tmp_path / "store", meta={"K": 4}).append(records)
  problems = tmp_path / "train.jsonl"  # ids train-0, train-1: the questions become the prompt_ids
  _write_lines(problems, [{"question": QUESTIONS[f"train-{i}"], "answer": "1"} for i in range(2)])
  main(["export", "--store", str(tmp_path / "store"), "--output", str(tmp_path / "orig.jsonl"),
        "--tokenizer", str(QWEN_TOKENIZER), "--problems", str(problems)])
  main(["import", "--input", str(tmp_path / "orig.jsonl"), "--store", str(tmp_path / "imported"),
        "--tokenizer", str(QWEN_TOKENIZER), "--top-k", "4"])
  back = list(SampleStore(tmp_path / "imported").iter_records())
  assert len(back) == 2
  for a, b in zip(records, back):
    np.testing.assert_array_equal(a.prompt_ids, b.prompt_ids)
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_allclose(np.sort(a.target_weights, axis=1), np.sort(b.target_weights, axis=1), atol=1e-6)


def test_command_line_export_takes_the_questions_from_the_source_the_store_was_sampled_from(tokenizer, tmp_path):
  """Without --problems, the store's meta names its source (here MATH-style: 'problem', no 'answer');
  the original fine-tuner reads prompt_id as the question, so a problem id there would train on nonsense."""
  from lr_jax.data.original_format import main

  problems = _write_lines(tmp_path / "train.jsonl", [{"problem": QUESTIONS[f"train-{i}"], "solution": "s"}
                                                     for i in range(2)])
  meta = {"K": 4, "data": {"path": str(problems), "question_field": "problem", "order": "first", "seed": None}}
  SampleStore(tmp_path / "store", meta=meta).append([_record(tokenizer, "train-1", [3], seed=6)])
  main(["export", "--store", str(tmp_path / "store"), "--output", str(tmp_path / "orig.jsonl"),
        "--tokenizer", str(QWEN_TOKENIZER)])
  lines = [json.loads(line) for line in (tmp_path / "orig.jsonl").read_text().splitlines()]
  assert [line["prompt_id"] for line in lines] == [QUESTIONS["train-1"]]
