"""Distillation throughput: lr_jax's packed `distill_step` against the original per-step approach.

Both train the same LoRA (r 8, alpha 16, dropout 0.05 on q/v) of the same random Qwen2-shaped model
(hidden 256, 4 layers, the real 151,936-row vocabulary, float32, tied head) on the same synthetic
trajectories (prompt 100 + completion 128 tokens, ~20% of steps kept, 32-slot targets), 16 kept
steps per update, on the same CPU, in this process:

  original  transformers + peft, as LightReasoner trains: every kept step is its own sample (prompt +
            completion[:t]); batches of 8 right-padded prefixes; the model's logits at every position
            ([8, T, V] float32); the log-softmax at each prefix's true last position; F.kl_div with a
            dense target (batchmean); 2 micro-batches per update; AdamW + clipping + linear decay.
  lr_jax    one row per trajectory holding all its kept steps (`lr_jax.data.packing`); the LM head
            only at the 16 supervised positions; jitted `distill_step`.

Prints supervised steps per second of each (after a warm-up that compiles every shape timed), their
ratio, and the forward tokens per supervised step (padding included: it is computed too).

Usage: python bench/distill.py [--smoke] [--updates N] [--original-updates N]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from types import SimpleNamespace

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from lr_jax.data.packing import PackedUpdates, PackingConfig  # noqa: E402
from lr_jax.distill import DistillConfig, init_train_state, make_distill_step, shard_batch  # noqa: E402
from lr_jax.models import from_pretrained  # noqa: E402
from lr_jax.models.lora import LoRAConfig, apply_lora, split_trainable  # noqa: E402

FULL = dict(vocab=151936, hidden=256, layers=4, heads=4, kv_heads=2, mlp=1024, trajectories=64, prompt=100,
            completion=128)
SMOKE = dict(vocab=4096, hidden=64, layers=2, heads=4, kv_heads=2, mlp=128, trajectories=8, prompt=20,
             completion=24)
KEEP_RATE, TOP_K, STEPS_PER_UPDATE, ORIGINAL_BATCH = 0.2, 32, 16, 8
LORA = LoRAConfig(targets=("q_proj", "v_proj"), rank=8, alpha=16.0, dropout=0.05)


def make_model(folder: str, shape: dict) -> str:
  import torch
  import transformers
  config = transformers.Qwen2Config(
      vocab_size=shape["vocab"], hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
      num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"], intermediate_size=shape["mlp"],
      tie_word_embeddings=True, max_position_embeddings=4096)
  torch.manual_seed(0)
  model = transformers.Qwen2ForCausalLM(config)
  with torch.no_grad():
    for p in model.parameters():
      torch.nn.init.normal_(p, std=0.05)
  model.save_pretrained(folder)
  return folder


def make_records(shape: dict, seed: int = 0) -> list[SimpleNamespace]:
  rng = np.random.default_rng(seed)
  records = []
  for i in range(shape["trajectories"]):
    c = shape["completion"]
    steps = np.flatnonzero(rng.random(c) < KEEP_RATE).astype(np.int32)
    ids = np.stack([rng.choice(shape["vocab"], TOP_K, replace=False) for _ in steps]).astype(np.int32)
    w = rng.random((len(steps), TOP_K)).astype(np.float32) ** 4
    records.append(SimpleNamespace(
        problem_id=str(i), prompt_ids=rng.integers(0, shape["vocab"], shape["prompt"]).astype(np.int32),
        completion_ids=rng.integers(0, shape["vocab"], c).astype(np.int32), steps=steps, target_ids=ids,
        target_weights=w / w.sum(1, keepdims=True)))
  return records


def bench_original(model_dir: str, records, updates: int) -> dict:
  import peft
  import torch
  import torch.nn.functional as F
  import transformers
  torch.manual_seed(0)
  base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  model = peft.get_peft_model(base, peft.LoraConfig(r=LORA.rank, lora_alpha=LORA.alpha, lora_dropout=LORA.dropout,
                                                    target_modules=list(LORA.targets), task_type="CAUSAL_LM"))
  model.train()
  vocab = base.config.vocab_size
  samples = [(np.concatenate([r.prompt_ids, r.completion_ids[:t]]), r.target_ids[j], r.target_weights[j])
             for r in records for j, t in enumerate(r.steps)]
  order = np.random.default_rng(0).permutation(len(samples))
  opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, eps=1e-8, weight_decay=0.0)
  total = len(samples) // STEPS_PER_UPDATE
  sched = transformers.get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=total)
  micro = STEPS_PER_UPDATE // ORIGINAL_BATCH

  def update(u: int) -> int:
    """One optimizer update over 16 samples; returns the forward tokens (padding included)."""
    tokens = 0
    for m in range(micro):
      start = (u * micro + m) * ORIGINAL_BATCH
      batch = [samples[i] for i in order[start:start + ORIGINAL_BATCH]]
      lengths = torch.tensor([len(p) for p, _, _ in batch])
      width = int(lengths.max())
      ids = torch.zeros(len(batch), width, dtype=torch.long)
      target = torch.zeros(len(batch), vocab)
      for b, (prefix, tid, tw) in enumerate(batch):
        ids[b, :len(prefix)] = torch.from_numpy(prefix.astype(np.int64))
        target[b, torch.from_numpy(tid.astype(np.int64))] = torch.from_numpy(tw)
      mask = (torch.arange(width)[None] < lengths[:, None]).long()
      logits = model(input_ids=ids, attention_mask=mask).logits  # [8, T, V]: every position
      last = logits[torch.arange(len(batch)), lengths - 1]
      loss = F.kl_div(F.log_softmax(last.float(), -1), target, reduction="batchmean") / micro
      loss.backward()
      tokens += ids.numel()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    sched.step()
    opt.zero_grad()
    return tokens

  update(0)  # warm-up
  t0 = time.perf_counter()
  tokens = sum(update(u) for u in range(1, updates + 1))
  seconds = time.perf_counter() - t0
  steps = updates * STEPS_PER_UPDATE
  return dict(steps_per_s=steps / seconds, tokens_per_step=tokens / steps, seconds=seconds, steps=steps)


def bench_lr_jax(model_dir: str, records, updates: int) -> dict:
  model = from_pretrained(model_dir, dtype=jnp.float32).model
  apply_lora(model, LORA, rngs=nnx.Rngs(0))
  graphdef, params, frozen = split_trainable(model, LORA)
  packed = PackedUpdates(records, PackingConfig(steps_per_update=STEPS_PER_UPDATE), valid_vocab=model.config.vocab_size)
  config = DistillConfig(total_updates=len(packed), valid_vocab=model.config.vocab_size)
  step = make_distill_step(graphdef, config)
  state = init_train_state(params, config, seed=0)
  batches = [shard_batch(packed.batch(u), None) for u in range(min(updates, len(packed)))]
  t0 = time.perf_counter()
  for batch in batches:  # warm-up: compiles every (rows, length) shape the timed pass meets
    state, metrics = step(state, frozen, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  computed = supervised = 0
  for batch in batches:
    state, metrics = step(state, frozen, batch)
    computed += batch["tokens"].size
    supervised += int(np.sum(batch["sup_mask"]))
  jax.block_until_ready(state)
  seconds = time.perf_counter() - t0
  return dict(steps_per_s=supervised / seconds, tokens_per_step=computed / supervised, seconds=seconds,
              steps=supervised, warmup_s=compile_s, shapes=len({b["tokens"].shape for b in batches}))


def main(argv: list[str] | None = None) -> dict:
  """Runs both sides and prints them; returns {'lr_jax': ..., 'original': ..., 'ratio': ...}."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny model and data: checks that the script runs")
  parser.add_argument("--updates", type=int, default=20, help="lr_jax updates timed")
  parser.add_argument("--original-updates", type=int, default=3, help="original-approach updates timed")
  args = parser.parse_args(argv)
  shape = SMOKE if args.smoke else FULL
  updates, original_updates = (2, 1) if args.smoke else (args.updates, args.original_updates)
  records = make_records(shape)
  kept = sum(len(r.steps) for r in records)
  print(f"model: hidden {shape['hidden']}, {shape['layers']} layers, vocab {shape['vocab']}; data: "
        f"{len(records)} trajectories, prompt {shape['prompt']} + completion {shape['completion']}, "
        f"{kept} kept steps ({kept / (len(records) * shape['completion']):.0%}); {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s), {os.cpu_count()} CPUs")
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = make_model(tmp, shape)
    ours = bench_lr_jax(model_dir, records, updates)
    original = bench_original(model_dir, records, original_updates)
  for name, r in (("original (transformers+peft)", original), ("lr_jax packed", ours)):
    print(f"{name:30s} {r['steps_per_s']:9.2f} supervised steps/s  ({r['steps']} steps in {r['seconds']:.1f} s)  "
          f"{r['tokens_per_step']:7.1f} forward tokens / supervised step")
  print(f"lr_jax warm-up (compiling {ours['shapes']} shapes + one pass): {ours['warmup_s']:.1f} s")
  ratio = ours['steps_per_s'] / original['steps_per_s']
  print(f"speed-up lr_jax / original: {ratio:.1f}x")
  return {"lr_jax": ours, "original": original, "ratio": ratio}


if __name__ == "__main__":
  main()
