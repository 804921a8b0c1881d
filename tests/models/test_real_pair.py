"""Opt-in: the real Qwen2.5 0.5B / 1.5B checkpoints (shared/tools/real_pair.py) against transformers.

Skipped unless $LR_REAL_PAIR_DIR/READY exists. Both sides run in float32 on the same weights (a bf16
folder is upcast exactly by both loaders), so only fp32 summation order differs over 24-28 layers:
real logits reach |30|, and the bound is 5e-3 max abs at the last 16 positions of a GSM8K chat
prompt, with equal argmax wherever the top two logits are further apart than twice that bound.
Needs ~7 GB of RAM per side for the 1.5B model.
"""
from __future__ import annotations

import gc
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.models import from_pretrained
from tests.helpers import gsm8k_question, jax_hidden, load_hf

REAL = os.environ.get("LR_REAL_PAIR_DIR", "")
pytestmark = [pytest.mark.real_pair,
              pytest.mark.skipif(not os.path.isfile(os.path.join(REAL, "READY")),
                                 reason="set LR_REAL_PAIR_DIR and run shared/tools/real_pair.py")]
LAST = 16
TOL = 5e-3


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("folder", ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"])
def test_real_checkpoint_logits_match_transformers(folder, scan_layers):
  torch = pytest.importorskip("torch")
  from transformers import AutoTokenizer

  model_dir = os.path.join(REAL, folder)
  tok = AutoTokenizer.from_pretrained(model_dir)
  ids = np.asarray(tok.apply_chat_template([{"role": "user", "content": gsm8k_question(0)}],
                                           add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"],
                   np.int32)[None]
  hf = load_hf(model_dir, "float32")
  with torch.no_grad():
    ref = hf(input_ids=torch.as_tensor(ids, dtype=torch.long), logits_to_keep=LAST).logits.float().numpy()[0]
  del hf
  gc.collect()
  with jax.default_matmul_precision("highest"):
    model = from_pretrained(model_dir, dtype=jnp.float32, scan_layers=scan_layers).model
    ours = np.asarray(model.logits(jax_hidden(model, ids)[0, -LAST:]))
  err = float(np.max(np.abs(ours - ref)))
  assert err <= TOL, f"{folder}: max abs logit diff {err:.3g} (max |logit| {np.max(np.abs(ref)):.3g})"
  top2 = np.sort(ref, axis=-1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > 2 * TOL
  np.testing.assert_array_equal(ours.argmax(-1)[clear], ref.argmax(-1)[clear])
