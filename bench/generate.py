"""Generation throughput: lr_jax `generate` vs transformers `generate`, same weights, same run.

Model: Qwen2.5-0.5B-shaped (24 layers, hidden 896, 14/2 heads, FFN 4864, vocab 151936, tied),
random weights. 16 prompts of ~100 random ids, 128 new tokens each, no EOS (every row runs to full
length). Baselines: transformers greedy generate one prompt at a time (as the original
LightReasoner samples) and the 16 prompts as one left-padded batch. Prints new tokens/s and the
ratios, plus the decode step's fraction of the memory-bandwidth roofline: (weight bytes + KV cache
bytes read per step) / step time, against a measured device-to-device copy bandwidth.

  python bench/generate.py                 # fp32 on CPU, a few minutes on 2 cores
  python bench/generate.py --dtype bf16 --new-tokens 64
  python bench/generate.py --smoke         # tiny shapes, seconds (run by a test)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

# The transformers baseline shares the accelerator with JAX: allocate on demand, do not preallocate.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from lr_jax.generation.api import generate  # noqa: E402
from lr_jax.generation.engine import MIN_PROMPT_BUCKET, bucket_size, output_slots  # noqa: E402
from lr_jax.models import ModelConfig, Transformer, from_pretrained  # noqa: E402

QWEN25_05B = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14,
                  num_kv_heads=2, head_dim=64, intermediate_size=4864, rms_norm_eps=1e-6, rope_theta=1e6,
                  max_position_embeddings=32768, tie_word_embeddings=True, qkv_bias=True, o_bias=False)
TINY = {**QWEN25_05B, "vocab_size": 1024, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "head_dim": 16,
        "intermediate_size": 128}
DTYPES = {"fp32": ("float32", jnp.float32), "bf16": ("bfloat16", jnp.bfloat16)}


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--smoke", action="store_true", help="tiny model, 4 prompts, 8 new tokens")
  p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
  p.add_argument("--prompts", type=int, default=16)
  p.add_argument("--prompt-len", type=int, default=100, help="mean prompt length (lengths vary by +-10%%)")
  p.add_argument("--new-tokens", type=int, default=128)
  p.add_argument("--no-hf", action="store_true", help="skip the transformers baselines")
  args = p.parse_args(argv)
  if args.smoke:
    args.prompts, args.prompt_len, args.new_tokens = 4, 20, 8
  return args


def make_checkpoint(cfg: ModelConfig, torch_dtype: str, folder: str):
  """A random transformers Qwen2 model saved to `folder`; returns it (eval mode) for the baselines."""
  import torch
  import transformers
  hf_cfg = transformers.Qwen2Config(**{k: v for k, v in cfg.to_hf_dict().items() if k != "architectures"})
  torch.manual_seed(0)
  model = transformers.Qwen2ForCausalLM(hf_cfg).to(getattr(torch, torch_dtype)).eval()
  model.generation_config.eos_token_id = None  # no EOS: every row runs to full length
  model.generation_config.pad_token_id = 0
  model.save_pretrained(folder)
  return model


def random_prompts(n: int, mean_len: int, vocab: int) -> list[list[int]]:
  rng = np.random.default_rng(0)
  lengths = rng.integers(int(mean_len * 0.9), int(mean_len * 1.1) + 1, n)
  return [rng.integers(0, min(vocab, 151643), int(k)).tolist() for k in lengths]


def copy_bandwidth(nbytes: int = 1 << 28, repeats: int = 10) -> float:
  """Device memory bytes/s of an in-place elementwise pass (bytes read + written)."""
  f = jax.jit(lambda a: a + 1, donate_argnums=0)  # donated: no fresh (page-faulting) buffer per pass
  x = f(jnp.zeros((nbytes // 4,), jnp.float32)).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(repeats):
    x = f(x)
  x.block_until_ready()
  return 2 * nbytes * repeats / (time.perf_counter() - t0)


def best_of(call, rounds: int = 3):
  """(last result, fastest of `rounds` timed calls): the step time is a difference of two such
  times, which single timings on a loaded machine can make negative."""
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    result = call()
    times.append(time.perf_counter() - t0)
  return result, min(times)


def bench_lr_jax(model, prompts, new_tokens: int) -> dict:
  graphdef, state = nnx.split(model)
  split = (graphdef, state)
  t0 = time.perf_counter()
  generate(split, prompts, max_new_tokens=new_tokens)  # compiles prefill and the decode loop
  compile_s = time.perf_counter() - t0
  out, total = best_of(lambda: generate(split, prompts, max_new_tokens=new_tokens))
  generate(split, prompts, max_new_tokens=1)  # prefill + first token only, compiled for 32 output slots
  _, prefill_s = best_of(lambda: generate(split, prompts, max_new_tokens=1))
  assert all(len(t) == new_tokens for t in out.tokens), "a row stopped early; the benchmark needs full rows"
  step_s = (total - prefill_s) / max(new_tokens - 1, 1)
  return dict(tokens=out.tokens, seconds=total, compile_s=compile_s, prefill_s=prefill_s, step_s=step_s)


def bench_hf(hf_model, prompts, new_tokens: int) -> dict:
  import torch
  device = "cuda" if torch.cuda.is_available() else "cpu"
  hf_model = hf_model.to(device)
  kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

  def one(prompt):
    ids = torch.tensor([prompt], device=device)
    return hf_model.generate(ids, attention_mask=torch.ones_like(ids), **kw)[0, len(prompt):].tolist()

  def batch(batch_prompts):
    width = max(len(p) for p in batch_prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in batch_prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch_prompts], device=device)
    return hf_model.generate(ids, attention_mask=mask, **kw)[:, width:].tolist()

  def timed(fn):
    if device == "cuda":
      torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = fn()
    if device == "cuda":
      torch.cuda.synchronize()
    return result, time.perf_counter() - t0

  with torch.inference_mode():
    one(prompts[0][:8])  # first-call set-up
    singles, single_s = timed(lambda: [one(p) for p in prompts])
    _, batch_s = timed(lambda: batch(prompts))
  return dict(tokens=singles, batch1_s=single_s, batch_s=batch_s, device=device)


def main(argv=None) -> dict:
  args = parse_args(argv)
  cfg = ModelConfig(**(TINY if args.smoke else QWEN25_05B))
  torch_dtype, jax_dtype = DTYPES[args.dtype]
  prompts = random_prompts(args.prompts, args.prompt_len, cfg.vocab_size)
  new = args.new_tokens
  n_new = len(prompts) * new
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}), {jax.device_count()} device(s); dtype {args.dtype}; "
        f"{len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} ids, {new} new tokens")

  with tempfile.TemporaryDirectory() as folder:
    hf_model = None
    if args.no_hf:
      model = Transformer(cfg, dtype=jax_dtype, rngs=nnx.Rngs(0))
    else:
      hf_model = make_checkpoint(cfg, torch_dtype, folder)
      model = from_pretrained(folder, dtype=jax_dtype).model
    ours = bench_lr_jax(model, prompts, new)
    results = {"lr_jax_tok_s": n_new / ours["seconds"]}
    print(f"lr_jax generate, batch {len(prompts)}: {results['lr_jax_tok_s']:.1f} new tok/s "
          f"({ours['seconds']:.2f} s; first call incl. compile {ours['compile_s']:.1f} s; "
          f"prefill+first token {ours['prefill_s'] * 1e3:.0f} ms, decode {ours['step_s'] * 1e3:.1f} ms/step)")

    itemsize = jnp.dtype(jax_dtype).itemsize
    slots = bucket_size(max(map(len, prompts)), MIN_PROMPT_BUCKET) + output_slots(new)
    rows = bucket_size(len(prompts))
    cache_bytes = 2 * cfg.num_layers * rows * slots * cfg.num_kv_heads * cfg.head_dim * itemsize
    step_bytes = cfg.num_params() * itemsize + cache_bytes
    bandwidth = copy_bandwidth(1 << 24 if args.smoke else 1 << 28)
    results["roofline_fraction"] = step_bytes / bandwidth / ours["step_s"]
    print(f"decode roofline: {step_bytes / 1e9:.3f} GB read per step (weights + full KV cache), copy bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s -> {results['roofline_fraction'] * 100:.1f}% of roofline")

    if hf_model is not None:
      hf = bench_hf(hf_model, prompts, new)
      results["hf_batch1_tok_s"] = n_new / hf["batch1_s"]
      results["hf_batch_tok_s"] = n_new / hf["batch_s"]
      results["ratio_vs_hf_batch1"] = results["lr_jax_tok_s"] / results["hf_batch1_tok_s"]
      results["ratio_vs_hf_batch"] = results["lr_jax_tok_s"] / results["hf_batch_tok_s"]
      same = sum(a == b for a, b in zip(ours["tokens"], hf["tokens"]))
      print(f"transformers generate ({hf['device']}), batch 1 x {len(prompts)}: "
            f"{results['hf_batch1_tok_s']:.1f} new tok/s ({hf['batch1_s']:.2f} s)")
      print(f"transformers generate ({hf['device']}), batch {len(prompts)}: "
            f"{results['hf_batch_tok_s']:.1f} new tok/s ({hf['batch_s']:.2f} s)")
      print(f"ratio lr_jax / transformers batch 1: {results['ratio_vs_hf_batch1']:.2f}x; "
            f"lr_jax / transformers batch {len(prompts)}: {results['ratio_vs_hf_batch']:.2f}x; "
            f"greedy rows identical to transformers: {same}/{len(prompts)} (expected all in fp32; bf16 "
            "rounding flips near-ties of these near-uniform random logits)")
  return results


if __name__ == "__main__":
  main()
