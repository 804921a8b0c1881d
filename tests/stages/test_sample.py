"""lr_jax.stages.sample: the batch and chunk the stage asks `default_sampling_batch` for."""
from __future__ import annotations

import ml_collections
import pytest

from lr_jax.sampling_memory import default_sampling_batch
from lr_jax.sharding import Layout, make_mesh
from lr_jax.stages import sample
from tests.test_sampling_memory import QWEN_0_5B, QWEN_1_5B


def _config(batch: int, chunk: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"dtype": "bfloat16", "fuse_decode_projections": True,
                                    "sample": {"batch_size": batch, "chunk_size": chunk, "max_new_tokens": 128,
                                               "scoring": "lockstep", "scan_layers": True}})


@pytest.mark.parametrize("mesh", [(-1, 1, 1), (-1, 1, 2), (2, 2, 2)])
def test_default_batch_is_per_data_way_and_counts_the_tensor_axis(monkeypatch, mesh):
  monkeypatch.setattr(sample, "device_memory_bytes", lambda: 10 * 2**30)
  layout = Layout.create(make_mesh(mesh), "sample")
  batch, chunk = sample.batch_and_chunk(_config(0, 0), QWEN_1_5B, QWEN_0_5B, 151665, 200, 10_000, layout)
  per_device, auto_chunk = default_sampling_batch(QWEN_1_5B, QWEN_0_5B, 151665, 256 + 128, 10 * 2**30,
                                                  tensor_ways=layout.mesh.shape["tensor"])
  assert (batch, chunk) == (per_device * layout.data_size, auto_chunk)
  if mesh[2] > 1:  # the weights split over 'tensor' leave room for more rows than replicated ones
    assert per_device > default_sampling_batch(QWEN_1_5B, QWEN_0_5B, 151665, 384, 10 * 2**30)[0]


def test_a_set_batch_and_chunk_are_kept_and_a_small_problem_count_caps_the_default(monkeypatch):
  monkeypatch.setattr(sample, "device_memory_bytes", lambda: 80 * 2**30)
  layout = Layout.create(make_mesh((-1, 1, 1)), "sample")
  assert sample.batch_and_chunk(_config(24, 40), QWEN_1_5B, QWEN_0_5B, 151665, 200, 5, layout) == (24, 40)
  batch, _ = sample.batch_and_chunk(_config(0, 0), QWEN_1_5B, QWEN_0_5B, 151665, 200, 20, layout)
  assert batch == 8 * 4  # 20 problems over 8 devices: 3 a device, up to a power of two


def _stage_config(tmp_path, problems: str, template: str) -> ml_collections.ConfigDict:
  from configs import qwen_math
  from tests.helpers import make_tiny_hf
  c = qwen_math.get_config()
  c.expert = make_tiny_hf(tmp_path, name="expert", vocab_size=151936, num_layers=1)
  c.amateur = c.expert
  c.dtype, c.data.path, c.prompt.template = "float32", str(tmp_path / "problems.jsonl"), template
  c.data.num_problems = None  # all (a count the file cannot meet is refused by the reader)
  (tmp_path / "problems.jsonl").write_text(problems)
  return c


def test_bad_problems_are_refused_naming_the_file_and_problem(tmp_path, monkeypatch):
  """No problem at all, or one whose prompt renders to no tokens: one line naming the data file
  (and the problem), before any model loads."""
  from lr_jax.stages import common
  c = _stage_config(tmp_path, "", "{question}")
  with pytest.raises(ValueError, match=rf"^{c.data.path}: no problems to sample \(an empty file or split\?\)$"):
    sample.run(c, common.Workdir(str(tmp_path / "run")), None)
  (tmp_path / "problems.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n{"question": " ", "answer": "0"}\n')
  with pytest.raises(ValueError, match=rf"^{c.data.path}:2: field 'question' is empty$"):
    sample.run(c, common.Workdir(str(tmp_path / "run")), None)
  (tmp_path / "problems.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n')
  monkeypatch.setattr(sample, "format_chat", lambda *a, **k: [])  # a template that renders nothing
  with pytest.raises(ValueError, match=rf"^{c.data.path}: problem \S+: its prompt \(config.prompt.template\) "
                                       r"renders to no tokens$"):
    sample.run(c, common.Workdir(str(tmp_path / "run")), None)


def test_a_store_holding_problems_the_config_no_longer_selects_is_refused(tmp_path, monkeypatch):
  """Sampled with 2 problems, rerun with 1: the distill stage would train on the other too."""
  from lr_jax.errors import SettingsChanged
  from lr_jax.stages import common
  c = _stage_config(tmp_path, "".join(f'{{"question": "{q}", "answer": "0"}}\n' for q in ("1+1?", "2+2?")),
                    "{question}")
  workdir = common.Workdir(str(tmp_path / "run"))
  ids = [p.id for p in sample.load_problems_from_spec(c.data.path, n=2, order="first")]
  monkeypatch.setattr(sample.SampleStore, "done_ids", lambda self: set(ids))  # as if both were sampled
  c.data.num_problems = 1
  with pytest.raises(SettingsChanged, match=rf"sample store {workdir.samples} holds 1 problem\(s\) \(e.g. {ids[1]}\) "
                                            r"that config.data \(num_problems = 1, order 'first'\) no longer selects"):
    sample.run(c, workdir, None)


def test_statistics_of_fewer_records_than_the_store_holds_are_written_again(tmp_path):
  """A crash between the last append and stats.json (which tells the stage it is done) leaves an older
  stats.json beside a fuller store: the rerun must not take it for done."""
  import json

  from lr_jax.stages import common
  c = _stage_config(tmp_path, "".join(f'{{"question": "{q}", "answer": "0"}}\n' for q in ("1+1?", "2+2?")),
                    "{question}")
  c.sample.max_new_tokens, c.sample.batch_size = 4, 8
  workdir = common.Workdir(str(tmp_path / "run"))
  writer = type("Writer", (), {"write": lambda *a, **k: None})()
  assert sample.run(c, workdir, writer)["records"] == 2
  stats_file = tmp_path / "run" / "samples" / "stats" / "stats.json"
  stats = json.loads(stats_file.read_text())
  stats_file.write_text(json.dumps({**stats, "num_records": 1}))  # as written before the last batch
  assert sample.run(c, workdir, writer)["records"] == 2
  assert json.loads(stats_file.read_text()) == stats
  assert sample.run(c, workdir, writer) == {"skipped": True}


def test_a_resumed_run_sizes_its_default_batch_by_every_prompt_not_only_those_left(tmp_path, monkeypatch):
  """The default batch depends on the longest prompt; were it the longest of those left, a resumed run
  would batch (and pad) the rest differently from the uninterrupted run."""
  from lr_jax.stages import common
  questions = ("1+1?", "What is the sum of all the numbers from one to one hundred, counted one by one?")
  c = _stage_config(tmp_path, "".join(f'{{"question": "{q}", "answer": "0"}}\n' for q in questions), "{question}")
  seen = []

  class Stop(Exception):
    pass

  def capture(config, expert_cfg, amateur_cfg, valid_vocab, longest, num_problems, layout):
    seen.append(longest)
    raise Stop

  monkeypatch.setattr(sample, "batch_and_chunk", capture)
  workdir = common.Workdir(str(tmp_path / "run"))
  for done in (set(), {p.id for p in sample.load_problems_from_spec(c.data.path, n=2, order="first")[1:]}):
    monkeypatch.setattr(sample.SampleStore, "done_ids", lambda self, done=done: done)  # the long one sampled
    with pytest.raises(Stop):
      sample.run(c, workdir, None)
  assert seen[0] == seen[1] > 5


def test_problems_without_an_answer_field_are_sampled(tmp_path, monkeypatch):
  """Sampling reads only the question: MATH train ('problem', 'solution') has no 'answer' field."""
  from lr_jax.stages import common
  c = _stage_config(tmp_path, '{"problem": "1+1?", "solution": "2"}\n', "{question}")
  c.data.question_field = "problem"

  class Loaded(Exception):
    pass

  def past_loading(*_):
    raise Loaded

  monkeypatch.setattr(common, "load_tokenizer", past_loading)  # the step after the problems are read
  with pytest.raises(Loaded):
    sample.run(c, common.Workdir(str(tmp_path / "run")), None)
