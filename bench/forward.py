"""Prefill throughput of the lr_jax decoder vs transformers' PyTorch model, same shapes, same CPU, one run.

Both sides get random weights of a Qwen2.5-0.5B-shaped model (24 layers, hidden 896, 14/2 heads,
FFN 4864, vocab 151,936, tied head) and the same batch of random token ids, and compute
  * "last":  final hidden states of every position + logits at the last position only
             (what sampling's prefill needs): lr_jax `model.logits(hidden[:, -1])`, transformers
             `model(ids, logits_to_keep=1)`;
  * "full":  logits at every position, `[B, T, V]` float32 (transformers' default forward).
Throughput = B * T / median wall time of `--iters` timed calls, lr_jax and transformers calls
interleaved (fair on a shared CPU); warm-up calls are excluded and the lr_jax compile time is
reported on its own.

  python bench/forward.py                      # 0.5B shape, batch 4 x 128, float32, CPU
  python bench/forward.py --dtype bfloat16 --batch 8 --seq 256
  python bench/forward.py --smoke              # tiny shapes, seconds (run by the tests)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the comparison is CPU against CPU
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lr_jax.models import ModelConfig, Transformer

QWEN25_05B = dict(layers=24, hidden=896, heads=14, kv_heads=2, ffn=4864, vocab=151936)
SMOKE = dict(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=512, batch=2, seq=16, iters=2)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--layers", type=int, default=QWEN25_05B["layers"])
  p.add_argument("--hidden", type=int, default=QWEN25_05B["hidden"])
  p.add_argument("--heads", type=int, default=QWEN25_05B["heads"])
  p.add_argument("--kv-heads", type=int, default=QWEN25_05B["kv_heads"])
  p.add_argument("--ffn", type=int, default=QWEN25_05B["ffn"])
  p.add_argument("--vocab", type=int, default=QWEN25_05B["vocab"])
  p.add_argument("--untied", action="store_true", help="separate lm_head (default: tied, as the 0.5B)")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--iters", type=int, default=5, help="timed calls per measurement (median reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
  p.add_argument("--no-full-logits", dest="full_logits", action="store_false",
                 help="skip the all-positions logits variant")
  p.add_argument("--smoke", action="store_true", help=f"tiny shapes for a quick check: {SMOKE}")
  args = p.parse_args(argv)
  if args.smoke:
    for k, v in SMOKE.items():
      setattr(args, k.replace("-", "_"), v)
  return args


def model_config(args) -> ModelConfig:
  return ModelConfig(model_type="qwen2", vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                     num_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=args.hidden // args.heads,
                     intermediate_size=args.ffn, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
                     tie_word_embeddings=not args.untied, qkv_bias=True, o_bias=False)


def interleaved_medians(fns: dict[str, Callable[[], None]], iters: int, warmup: int) -> dict[str, float]:
  """Median seconds per call of each blocking `fn`, calls interleaved round-robin so that load from
  other processes on a shared CPU falls on every contender alike."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(iters):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def jax_forwards(cfg: ModelConfig, ids: np.ndarray, args) -> tuple[dict[str, Callable[[], None]], dict[str, float]]:
  """Compiled lr_jax prefill calls per variant, and their compile seconds."""
  graphdef, state = nnx.split(Transformer(cfg, dtype=jnp.dtype(args.dtype), rngs=nnx.Rngs(0)))
  ids = jnp.asarray(ids)
  mask = jnp.ones(ids.shape, bool)
  positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)

  def forward(state, ids, positions, mask, full):
    model = nnx.merge(graphdef, state)
    hidden, _ = model(ids, positions, mask)
    return model.logits(hidden if full else hidden[:, -1])

  calls, compile_s = {}, {}
  for variant in variants(args):
    start = time.perf_counter()
    compiled = jax.jit(forward, static_argnums=4).lower(state, ids, positions, mask, variant == "full").compile()
    compile_s[variant] = time.perf_counter() - start
    calls[variant] = lambda c=compiled: c(state, ids, positions, mask).block_until_ready()
  return calls, compile_s


def torch_forwards(cfg: ModelConfig, ids: np.ndarray, args) -> dict[str, Callable[[], None]]:
  """transformers Qwen2ForCausalLM prefill calls per variant (no KV cache kept)."""
  import torch
  import transformers

  hf_cfg = transformers.Qwen2Config(**{k: v for k, v in cfg.to_hf_dict().items() if k != "architectures"})
  torch.manual_seed(0)
  model = transformers.Qwen2ForCausalLM(hf_cfg).to(getattr(torch, args.dtype)).eval()
  ids_t = torch.as_tensor(ids, dtype=torch.long)
  mask_t = torch.ones_like(ids_t)

  def run(keep):
    with torch.inference_mode():
      model(input_ids=ids_t, attention_mask=mask_t, logits_to_keep=keep, use_cache=False)

  return {variant: (lambda keep=1 if variant == "last" else 0: run(keep)) for variant in variants(args)}


def variants(args) -> tuple[str, ...]:
  return ("last", "full") if args.full_logits else ("last",)


def main(argv=None) -> dict[str, float]:
  """Runs the benchmark, prints a report and returns {measurement: value}."""
  args = parse_args(argv)
  import torch
  cfg = model_config(args)
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.seq), dtype=np.int32)
  tokens = args.batch * args.seq
  print(f"model: {cfg.num_layers} layers, hidden {cfg.hidden_size}, heads {cfg.num_heads}/{cfg.num_kv_heads}, "
        f"FFN {cfg.intermediate_size}, vocab {cfg.vocab_size}, tied={cfg.tie_word_embeddings}, "
        f"{cfg.num_params() / 1e6:.1f}M params, {args.dtype}")
  print(f"batch {args.batch} x {args.seq} tokens; median of {args.iters} after {args.warmup} warm-up; "
        f"jax {jax.__version__} on {jax.devices()[0].platform} ({len(jax.devices())} device(s)), "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} (other processes skew both sides)")
  jax_calls, compile_s = jax_forwards(cfg, ids, args)
  torch_calls = torch_forwards(cfg, ids, args)
  results = {}
  for variant in variants(args):
    t = interleaved_medians({"jax": jax_calls[variant], "torch": torch_calls[variant]}, args.iters, args.warmup)
    what = "hidden + last-position logits" if variant == "last" else "hidden + all-position logits"
    results.update({f"jax_{variant}_tok_s": tokens / t["jax"], f"torch_{variant}_tok_s": tokens / t["torch"],
                    f"ratio_{variant}": t["torch"] / t["jax"], f"compile_{variant}_s": compile_s[variant]})
    print(f"{what}: lr_jax {tokens / t['jax']:.1f} tok/s ({t['jax'] * 1e3:.1f} ms), "
          f"transformers {tokens / t['torch']:.1f} tok/s ({t['torch'] * 1e3:.1f} ms), "
          f"ratio lr_jax/transformers {t['torch'] / t['jax']:.2f}x; lr_jax compile {compile_s[variant]:.1f} s")
  return results


if __name__ == "__main__":
  main()
