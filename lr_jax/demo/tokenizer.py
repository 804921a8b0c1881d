"""A small byte-level BPE tokenizer for the demo, trained offline and saved in Hugging Face format.

It mirrors the Qwen2.5 tokenizer in the ways the pipeline depends on, at a vocabulary of a few
hundred tokens so the demo's models stay tiny:
  * byte-level BPE: any text encodes, and decode(encode(text)) == text;
  * every digit is its own pre-token, so numbers are spelled digit by digit (arithmetic stays
    learnable and no merge ever straddles two digits);
  * the special tokens `<|endoftext|>` (pad), `<|im_start|>` and `<|im_end|>` (eos), each a single
    id that text never splits, and a ChatML chat template rendering
      <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{question}<|im_end|>\\n
      <|im_start|>assistant\\n
    (a default system message when none is given, as Qwen2.5's template does).
The saved folder (tokenizer.json, tokenizer_config.json with the chat template inline) loads with
`transformers.AutoTokenizer.from_pretrained(out_dir)`, offline.

Training is deterministic: the same texts give a byte-identical tokenizer.json.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Iterable

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Qwen2.5's order, so the ids are 0, 1, 2.
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen2.5's chat template without its tool-calling branches.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

_BYTE_ALPHABET_SIZE = 256
_SPECIAL_TOKEN_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike,
                    vocab_size: int = 512) -> transformers.PreTrainedTokenizerFast:
  """Trains the demo tokenizer on `texts`, saves it to `out_dir` and returns it.

  Args:
    texts: the training corpus, e.g. the pretraining problems rendered exactly as the models will
      see them (chat markup and system prompt included, so those get merged into few tokens).
      Special-token strings inside the texts are cut out before training, so no merge is spent
      on pieces of them.
    out_dir: folder to write tokenizer.json and tokenizer_config.json into (created if missing;
      each file is replaced atomically).
    vocab_size: total vocabulary, the 256 byte tokens and 3 special tokens included.
  Returns:
    The trained tokenizer, as `AutoTokenizer.from_pretrained(out_dir)` would load it.
  """
  min_size = _BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS) + 1
  if vocab_size < min_size:
    raise ValueError(f"train_tokenizer: vocab_size must be >= {min_size} (256 bytes, "
                     f"{len(SPECIAL_TOKENS)} special tokens, 1 merge), got {vocab_size}")
  bpe = Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
  ])
  bpe.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=list(SPECIAL_TOKENS),
      # All 256 bytes up front, so text unseen in training still encodes.
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  bpe.train_from_iterator(_without_special_tokens(texts), trainer)
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe,
      eos_token=IM_END,
      pad_token=ENDOFTEXT,
      additional_special_tokens=[IM_START],
      chat_template=CHAT_TEMPLATE,
      clean_up_tokenization_spaces=False,
  )
  _save_atomically(tokenizer, os.fspath(out_dir))
  return transformers.AutoTokenizer.from_pretrained(os.fspath(out_dir))


def special_token_ids(tokenizer: transformers.PreTrainedTokenizerBase) -> dict[str, int]:
  """{'<|endoftext|>': id, '<|im_start|>': id, '<|im_end|>': id} for a ChatML tokenizer.

  Works for the demo tokenizer and Qwen2.5's alike; raises ValueError if one is missing or is not
  a single token.
  """
  ids = {}
  for token in SPECIAL_TOKENS:
    encoded = tokenizer.encode(token, add_special_tokens=False)
    if len(encoded) != 1:
      raise ValueError(f"special_token_ids: {token!r} encodes to {len(encoded)} ids {encoded}, "
                       f"expected a single id")
    ids[token] = encoded[0]
  return ids


def _without_special_tokens(texts: Iterable[str]) -> Iterable[str]:
  """The pieces of each text between special tokens, which BPE training would otherwise merge."""
  for text in texts:
    for piece in _SPECIAL_TOKEN_RE.split(text):
      if piece:
        yield piece


def _save_atomically(tokenizer: transformers.PreTrainedTokenizerFast, out_dir: str) -> None:
  """save_pretrained into a temp folder beside out_dir, fsync, then os.replace file by file."""
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(out_dir, exist_ok=True)
  tmp_dir = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(out_dir) + ".tmp-")
  try:
    # save_jinja_files=False keeps the chat template in tokenizer_config.json, as Qwen2.5 has it.
    tokenizer.save_pretrained(tmp_dir, save_jinja_files=False)
    for name in sorted(os.listdir(tmp_dir)):
      tmp_path = os.path.join(tmp_dir, name)
      with open(tmp_path, "rb") as f:
        os.fsync(f.fileno())
      os.replace(tmp_path, os.path.join(out_dir, name))
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
