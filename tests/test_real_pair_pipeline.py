"""Opt-in: the whole pipeline on the real Qwen2.5 1.5B / 0.5B pair (shared/tools/real_pair.py), as a user runs it.

Skipped unless $LR_REAL_PAIR_DIR/READY exists. `python -m lr_jax.main --config=configs/qwen_math.py` with
the pair's folders, reduced to 4 GSM8K problems, 2 LoRA updates (lr 1e-3) and 4 evaluation items, in
bf16; then its exports are read by transformers + PEFT: the adapter moves transformers' float32 logits
as it moves lr_jax's, and the merged checkpoint holds bf16(W + scale * B @ A) for the adapted
projections and the base weights elsewhere. About 5.5 minutes on 2 CPU cores; needs ~8 GB of RAM.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import REPO_ROOT, gsm8k_question, jax_hidden, shared_path

REAL = os.environ.get("LR_REAL_PAIR_DIR", "")
pytestmark = [pytest.mark.real_pair,
              pytest.mark.skipif(not os.path.isfile(os.path.join(REAL, "READY")),
                                 reason="set LR_REAL_PAIR_DIR and run shared/tools/real_pair.py")]
EXPERT, AMATEUR = "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"
TOL = 5e-3  # float32 logits of 28 layers, summed in a different order (tests/models/test_real_pair.py)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("real_run")
  cmd = [sys.executable, "-m", "lr_jax.main", "--config=configs/qwen_math.py", f"--workdir={workdir}",
         f"--config.expert={os.path.join(REAL, EXPERT)}", f"--config.amateur={os.path.join(REAL, AMATEUR)}",
         f"--config.data.path={shared_path('data', 'gsm8k', 'train.jsonl')}",
         f"--config.eval.data_dir={shared_path('data')}",
         "--config.data.num_problems=4", "--config.sample.batch_size=4", "--config.sample.max_new_tokens=64",
         "--config.distill.updates=2", "--config.distill.checkpoint_every=1",
         "--config.distill.learning_rate=1e-3",  # 2 updates at 5e-5 move the logits by < 0.05: too little to compare
         "--config.eval.benchmarks=gsm8k", "--config.eval.limit=4", "--config.eval.max_new_tokens=64",
         "--config.eval.batch_size=4", f"--config.compilation_cache_dir={workdir / 'xla'}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_every_stage_finishes_with_its_artifacts(run_dir):
  stats = json.loads((run_dir / "samples" / "stats" / "stats.json").read_text())
  assert stats["num_records"] == 4 and stats["kept_steps"] > 0
  done = json.loads((run_dir / "checkpoints" / "DONE.json").read_text())
  assert done["updates"] == 2
  for model in ("base", "tuned"):
    results = json.loads((run_dir / "eval" / model / "results.json").read_text())
    assert results["benchmarks"]["gsm8k"]["num_items"] == 4
  assert "## Evaluation" in (run_dir / "report.md").read_text()


def test_peft_adapter_moves_transformers_logits_as_it_moves_lr_jax(run_dir):
  torch = pytest.importorskip("torch")
  peft = pytest.importorskip("peft")
  from transformers import AutoModelForCausalLM, AutoTokenizer

  from lr_jax.export import load_peft_adapter
  from lr_jax.models import from_pretrained

  base_dir = os.path.join(REAL, EXPERT)
  tok = AutoTokenizer.from_pretrained(run_dir / "export" / "merged")
  ids = np.asarray(tok.apply_chat_template([{"role": "user", "content": gsm8k_question(0)}],
                                           add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"],
                   np.int32)[None]
  with torch.no_grad():
    hf = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    hf_base = hf(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.numpy()[0]
    hf = peft.PeftModel.from_pretrained(hf, str(run_dir / "export" / "peft"))
    hf_tuned = hf(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.numpy()[0]
  del hf
  model = from_pretrained(base_dir, dtype=jnp.float32).model
  ours_base = np.asarray(model.logits(jax_hidden(model, ids)[0]))
  load_peft_adapter(model, str(run_dir / "export" / "peft"))
  ours_tuned = np.asarray(model.logits(jax_hidden(model, ids)[0]))
  hf_delta, ours_delta = hf_tuned - hf_base, ours_tuned - ours_base
  assert np.abs(hf_delta).max() > 10 * TOL, "the adapter should move the logits measurably"
  assert np.abs(ours_delta - hf_delta).max() <= TOL
  assert np.abs(ours_tuned - hf_tuned).max() <= TOL


def test_merged_checkpoint_holds_the_folded_adapter(run_dir):
  torch = pytest.importorskip("torch")
  from safetensors.torch import load_file

  def tensors(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
      if name.endswith(".safetensors"):
        out.update(load_file(os.path.join(folder, name)))
    return out

  base = tensors(os.path.join(REAL, EXPERT))
  merged = tensors(run_dir / "export" / "merged")
  adapter = tensors(run_dir / "export" / "peft")
  config = json.loads((run_dir / "export" / "peft" / "adapter_config.json").read_text())
  scale = config["lora_alpha"] / config["r"]
  assert set(merged) <= set(base) and merged["model.embed_tokens.weight"].dtype == torch.bfloat16
  adapted = 0
  for key, weight in base.items():
    if key not in merged:
      assert key == "lm_head.weight"  # tied: the merged checkpoint keeps only the embedding
      continue
    stem = key.removesuffix(".weight")
    a_key = f"base_model.model.{stem}.lora_A.weight"
    if a_key not in adapter:
      assert torch.equal(merged[key], weight.to(torch.bfloat16)), key
      continue
    delta = adapter[a_key.replace("lora_A", "lora_B")].double() @ adapter[a_key].double()
    exact = weight.double() + scale * delta
    # Folded in float32, then rounded to bf16 (half a bf16 ulp: 2^-8 relative) once; where W and the
    # delta nearly cancel, float32's own rounding of the two terms dominates.
    err = (merged[key].double() - exact).abs()
    bound = 2.0**-8 * exact.abs() + 2.0**-22 * (weight.double().abs() + scale * delta.abs())
    assert bool((err <= bound).all()), key
    assert float((merged[key] != exact.to(torch.bfloat16)).double().mean()) < 1e-4, key
    adapted += 1
  assert adapted == 2 * 28  # q_proj and v_proj of every layer
