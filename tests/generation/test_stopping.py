"""EOS ids from a checkpoint folder, and where a stop string cuts the generated ids."""
from __future__ import annotations

import json

import pytest

from lr_jax.generation.stopping import eos_ids_from_checkpoint, stop_length
from tests.helpers import shared_path


@pytest.fixture(scope="module")
def qwen_tokenizer():
  transformers = pytest.importorskip("transformers")
  return transformers.AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen2.5"))


def write_generation_config(tmp_path, **fields):
  (tmp_path / "generation_config.json").write_text(json.dumps(fields))
  return str(tmp_path)


def test_eos_ids_read_a_list_then_add_the_tokenizer_eos_once(tmp_path, qwen_tokenizer):
  folder = write_generation_config(tmp_path, eos_token_id=[151645, 151643])
  assert eos_ids_from_checkpoint(folder) == [151645, 151643]
  # the Qwen2.5 tokenizer's eos (<|im_end|>, 151645) is already listed
  assert eos_ids_from_checkpoint(folder, qwen_tokenizer) == [151645, 151643]


def test_eos_ids_read_a_single_int_and_merge_the_tokenizer_eos(tmp_path, qwen_tokenizer):
  folder = write_generation_config(tmp_path, eos_token_id=151643)  # <|endoftext|>, as base models give
  assert eos_ids_from_checkpoint(folder, qwen_tokenizer) == [151643, 151645]


def test_eos_ids_fall_back_to_the_tokenizer_without_generation_config(tmp_path, qwen_tokenizer):
  assert eos_ids_from_checkpoint(str(tmp_path), qwen_tokenizer) == [qwen_tokenizer.eos_token_id]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"eos_token_id": "151645"}), "eos_token_id must be an int or a list of ints"),
    (json.dumps({"do_sample": False}), "no eos_token_id"),
])
def test_bad_generation_config_gives_a_one_line_error_naming_the_file(tmp_path, content, message):
  (tmp_path / "generation_config.json").write_text(content)
  with pytest.raises(ValueError, match=message) as e:
    eos_ids_from_checkpoint(str(tmp_path))
  assert "generation_config.json" in str(e.value) and "\n" not in str(e.value)


def test_stop_length_keeps_ids_up_to_the_token_completing_the_stop_string(qwen_tokenizer):
  text_ids = qwen_tokenizer.encode("The answer is 42.\n\nQuestion: what next?", add_special_tokens=False)
  keep = stop_length(text_ids, ["\n\nQuestion:"], qwen_tokenizer)
  assert keep is not None
  assert "\n\nQuestion:" in qwen_tokenizer.decode(text_ids[:keep])
  assert "\n\nQuestion:" not in qwen_tokenizer.decode(text_ids[:keep - 1])
  assert stop_length(text_ids, ["Answer:", "nothing"], qwen_tokenizer) is None
  assert stop_length([], ["x"], qwen_tokenizer) is None


def test_stop_length_takes_the_earliest_of_several_stop_strings(qwen_tokenizer):
  ids = qwen_tokenizer.encode("alpha beta gamma delta", add_special_tokens=False)
  assert qwen_tokenizer.decode(ids[:stop_length(ids, ["delta", "beta"], qwen_tokenizer)]) == "alpha beta"
