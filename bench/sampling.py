"""LightReasoner sampling, seconds per problem: the original approach (transformers) vs lr_jax, one run.

Same models, same prompts, same CPU, in one process:
  (a) original: the original code's structure re-implemented with transformers + PyTorch (fp32):
      greedy `generate` one problem at a time with `output_logits` (the expert's distribution at
      every step), then the amateur once per prefix (prompt + completion[:t]) in right-padded
      chunks of 64 prefixes, its LM head at each prefix's last position only, then KL / mask /
      contrastive targets in torch float32 over the chunk;
  (b) lr_jax teacher-forced: `generate` for the batch, then `contrastive_step` (one forward per model);
  (c) lr_jax lockstep: `contrastive_decode`, both models decoded in one loop.
(b) and (c) run in fp32 and bf16, --repeats timed runs each after a compiling one, alternating;
the batch and chunk are `default_sampling_batch`'s (the batch capped at the problem count), or --batch.
(a) runs once, after one short set-up call.

Models: Qwen2-shaped, random weights N(0, 0.2) (so distributions are peaked, as trained models'),
tied heads over the real 151,936-row vocabulary: expert hidden 256, 4 layers, 4/2 heads, FFN 1024;
amateur hidden 128, 2 layers, 4/2 heads, FFN 512. Prompts: the first --problems GSM8K train
questions in the original code's chat prompt (Qwen2.5 tokenizer). --new-tokens are generated per
problem, always to full length (no EOS).

Reported: seconds per problem and the ratio to (a); each stage's share of its approach's time;
% of the FLOP floor (2 * weights * tokens for both models' bodies over prompt + completion, plus
both LM heads at the generated steps only, over a matmul rate measured in this run: the same floor
for every approach); peak host memory (ru_maxrss) before and after the lr_jax runs.

  python bench/sampling.py                     # 16 problems x 128 tokens; several minutes on 2 cores
  python bench/sampling.py --problems 4 --new-tokens 32 --batch 4
  python bench/sampling.py --smoke             # tiny shapes, seconds (run by a test)

With --real-pair DIR (the folder `shared/tools/real_pair.py` writes) the two models are the real
Qwen2.5-Coder-1.5B/0.5B-Instruct checkpoints instead (no EOS, so every problem runs to full
length in every approach alike), and the run also prints the KL statistics of the lockstep and
original trajectories over each problem's steps up to its first EOS: the share of steps with KL in
[0, 0.1) and above beta, and the mean KL where the two models' top-1 tokens agree and differ.

  python bench/sampling.py --real-pair ~/.cache/lr_real_pair --repeats 1   # ~1 h on 2 cores
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import time

if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the comparison is CPU against CPU
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lr_jax.contrastive import ContrastiveConfig, make_contrastive_step
from lr_jax.data.original_format import original_prompt_text
from lr_jax.generation.api import generate
from lr_jax.generation.engine import MIN_PROMPT_BUCKET, bucket_size, output_slots
from lr_jax.lockstep import contrastive_decode
from lr_jax.sampling_memory import default_sampling_batch, device_memory_bytes
from lr_jax.models import ModelConfig, from_pretrained
from lr_jax.stages.sample import pad_batch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = dict(model_type="qwen2", vocab_size=151936, num_heads=4, num_kv_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
            max_position_embeddings=4096, tie_word_embeddings=True, qkv_bias=True, o_bias=False)
FULL = {"expert": dict(hidden_size=256, num_layers=4, head_dim=64, intermediate_size=1024),
        "amateur": dict(hidden_size=128, num_layers=2, head_dim=32, intermediate_size=512)}
SMOKE_VOCAB = 4096
SMOKE = {"expert": dict(hidden_size=32, num_layers=2, head_dim=8, intermediate_size=64, vocab_size=SMOKE_VOCAB),
         "amateur": dict(hidden_size=16, num_layers=1, head_dim=4, intermediate_size=32, vocab_size=SMOKE_VOCAB)}
VALID_VOCAB = 151665  # Qwen2.5 tokenizer ids; rows past it are embedding padding
INIT_STD = 0.2
AMATEUR_CHUNK = 64
REAL_FOLDERS = {"expert": "qwen2.5-coder-1.5b-instruct", "amateur": "qwen2.5-coder-0.5b-instruct"}
QWEN_EOS = (151645, 151643)  # <|im_end|>, <|endoftext|>: where a real trajectory would have ended
LOW_KL = 0.1
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--problems", type=int, default=16)
  p.add_argument("--new-tokens", type=int, default=128)
  p.add_argument("--batch", type=int, default=0, help="lr_jax rows per batch (0: default_sampling_batch)")
  p.add_argument("--repeats", type=int, default=2, help="timed lr_jax runs, (b) and (c) alternating; mean reported")
  p.add_argument("--dtypes", default="", help="lr_jax dtypes, comma-separated (default fp32,bf16; --smoke: fp32)")
  p.add_argument("--smoke", action="store_true",
                 help=f"tiny models over {SMOKE_VOCAB} ids (prompt ids folded into them), 2 problems, 4 tokens")
  p.add_argument("--real-pair", default="", help="folder of shared/tools/real_pair.py: real models, KL statistics")
  p.add_argument("--shared", default=os.environ.get("LR_SHARED_DIR") or os.path.join(os.path.dirname(REPO_ROOT),
                                                                                      "shared"))
  args = p.parse_args(argv)
  if args.smoke:
    args.problems, args.new_tokens, args.repeats = 2, 4, 1
    args.dtypes = args.dtypes or "fp32"
  args.dtypes = [d.strip() for d in (args.dtypes or "fp32,bf16").split(",") if d.strip()]
  bad = [d for d in args.dtypes if d not in DTYPES]
  if bad:
    p.error(f"--dtypes: {bad[0]!r} is not one of {', '.join(DTYPES)}")
  return args


def shared_file(args, *parts) -> str:
  path = os.path.join(args.shared, *parts)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: not found; the benchmark needs the shared data folder "
                            "(--shared or LR_SHARED_DIR)")
  return path


def load_prompts(args, tokenizer, vocab: int) -> list[list[int]]:
  """The first `args.problems` GSM8K train questions as the original code's chat prompt ids."""
  with open(shared_file(args, "data", "gsm8k", "train.jsonl")) as f:
    questions = [json.loads(line)["question"] for line, _ in zip(f, range(args.problems))]
  prompts = [tokenizer.encode(original_prompt_text(tokenizer, q), add_special_tokens=False) for q in questions]
  return [[t % vocab for t in p] for p in prompts]


def build_pair(args, folder: str):
  """Random HF models saved under `folder`; returns {role: (torch model, ModelConfig, path)}."""
  import torch
  import transformers
  out = {}
  for seed, role in enumerate(("expert", "amateur")):
    cfg = ModelConfig(**{**BASE, **(SMOKE if args.smoke else FULL)[role]})
    hf_cfg = transformers.Qwen2Config(**{k: v for k, v in cfg.to_hf_dict().items() if k != "architectures"})
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
      for name, p in model.named_parameters():
        p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("norm.weight") else INIT_STD * torch.randn_like(p))
    model.generation_config.eos_token_id = None  # no EOS: every trajectory runs to full length
    model.generation_config.pad_token_id = 0
    path = os.path.join(folder, role)
    model.save_pretrained(path)
    out[role] = (model, cfg, path)
  return out


def load_real_pair(args):
  """{role: (None, ModelConfig, path)} of the real checkpoints; torch loads them later (`torch_model`)."""
  out = {}
  for role, folder in REAL_FOLDERS.items():
    path = os.path.join(args.real_pair, folder)
    if not os.path.isfile(os.path.join(path, "config.json")):
      raise FileNotFoundError(f"{path}/config.json: not found; run shared/tools/real_pair.py --out {args.real_pair}")
    out[role] = (None, ModelConfig.from_json(os.path.join(path, "config.json")), path)
  return out


def torch_model(path: str):
  """A float32 transformers model from `path`, plain greedy with no EOS (full-length trajectories)."""
  import torch
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  model.generation_config = transformers.GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0)
  return model


def steps_before_eos(tokens: list[list[int]], new_tokens: int) -> np.ndarray:
  """bool [problems, new_tokens]: the steps up to and including each trajectory's first EOS."""
  out = np.zeros((len(tokens), new_tokens), bool)
  for i, row in enumerate(tokens):
    ends = [t for t, tok in enumerate(row[:new_tokens]) if tok in QWEN_EOS]
    out[i, :ends[0] + 1 if ends else len(row[:new_tokens])] = True
  return out


def kl_statistics(kl: np.ndarray, agree: np.ndarray, used: np.ndarray, beta: float) -> dict:
  """Shares of steps by KL band and the mean KL where the top-1 tokens agree / differ, over `used`."""
  kl, agree = kl[used], agree[used]
  return {"steps": int(kl.size), "share_kl_below_0.1": float(np.mean(kl < LOW_KL)),
          "share_kl_above_beta": float(np.mean(kl > beta)), "share_top1_differ": float(np.mean(~agree)),
          "mean_kl_top1_agree": float(np.mean(kl[agree])) if agree.any() else float("nan"),
          "mean_kl_top1_differ": float(np.mean(kl[~agree])) if (~agree).any() else float("nan")}


def print_kl_statistics(name: str, st: dict, beta: float) -> None:
  print(f"KL statistics, {name}: {st['steps']} steps; KL in [0, {LOW_KL}) {st['share_kl_below_0.1'] * 100:.1f}%, "
        f"KL > {beta} {st['share_kl_above_beta'] * 100:.1f}%; top-1 differs at {st['share_top1_differ'] * 100:.1f}%; "
        f"mean KL {st['mean_kl_top1_agree']:.3f} where top-1 agrees, {st['mean_kl_top1_differ']:.3f} where it differs")


def original_approach(expert, amateur, prompts, new_tokens: int, vocab: int, config: ContrastiveConfig) -> dict:
  """(a): per problem, HF greedy generate with logits, then the amateur per prefix in chunks of 64."""
  import torch
  seconds = {"generate": 0.0, "amateur prefixes": 0.0, "KL and targets": 0.0}
  trajectories, records, kls, agrees = [], [], [], []
  with torch.inference_mode():
    expert.generate(torch.tensor([prompts[0][:8]]), max_new_tokens=2, do_sample=False, pad_token_id=0)  # set-up
    for prompt in prompts:
      t0 = time.perf_counter()
      ids = torch.tensor([prompt])
      out = expert.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, do_sample=False, output_logits=True,
                            return_dict_in_generate=True, pad_token_id=0)
      completion = out.sequences[0, len(prompt):].tolist()
      expert_logits = torch.cat(out.logits)[:, :vocab].float()  # [T, V]
      trajectories.append(completion)
      t1 = time.perf_counter()
      seconds["generate"] += t1 - t0
      for start in range(0, len(completion), AMATEUR_CHUNK):
        t1 = time.perf_counter()
        lengths = [len(prompt) + t for t in range(start, min(start + AMATEUR_CHUNK, len(completion)))]
        width = max(lengths)
        full = prompt + completion
        batch = torch.zeros((len(lengths), width), dtype=torch.long)
        mask = torch.zeros((len(lengths), width), dtype=torch.long)
        for row, n in enumerate(lengths):  # right padding: causal attention never sees it
          batch[row, :n] = torch.tensor(full[:n])
          mask[row, :n] = 1
        hidden = amateur.model(input_ids=batch, attention_mask=mask).last_hidden_state
        last = hidden[torch.arange(len(lengths)), torch.tensor(lengths) - 1]
        amateur_logits = amateur.lm_head(last)[:, :vocab].float()
        t2 = time.perf_counter()
        lpe = torch.log_softmax(expert_logits[start:start + len(lengths)], -1)
        lpa = torch.log_softmax(amateur_logits, -1)
        pe = lpe.exp()
        kl = (pe * (lpe - lpa)).sum(-1)
        in_mask = pe >= config.alpha * pe.max(-1, keepdim=True).values
        targets = torch.softmax(torch.where(in_mask, lpe - lpa, torch.tensor(-float("inf"))), -1)
        keep = kl > config.beta
        kls.append(kl.numpy())
        agrees.append((lpe.argmax(-1) == lpa.argmax(-1)).numpy())
        top = torch.topk(targets[keep], config.top_k, dim=-1)
        records.append((kl[keep], top.indices, top.values))  # what the original writes out per kept step
        seconds["amateur prefixes"] += t2 - t1
        seconds["KL and targets"] += time.perf_counter() - t2
  return dict(seconds=seconds, tokens=trajectories, kept=sum(len(kl) for kl, _, _ in records),
              kl=np.concatenate(kls).reshape(len(prompts), -1), agree=np.concatenate(agrees).reshape(len(prompts), -1))


def lr_jax_runs(models, prompts, new_tokens: int, batch: int, config: ContrastiveConfig, repeats: int) -> dict:
  """(b) and (c) for one dtype, `batch` rows per call: the mean of `repeats` timed runs after one
  that compiles."""
  (eg, es), (ag, as_) = models
  step = make_contrastive_step(eg, ag, config)
  out = {}
  batches = [prompts[i:i + batch] for i in range(0, len(prompts), batch)]

  def teacher_forced(timed):
    tokens, kept = [], 0
    for chunk in batches:
      rows = chunk + [chunk[-1]] * (batch - len(chunk))  # one compiled shape for every batch
      t0 = time.perf_counter()
      gen = generate((eg, es), rows, max_new_tokens=new_tokens, valid_vocab=config.valid_vocab)
      t1 = time.perf_counter()
      scored = jax.device_get(step(es, as_, pad_batch(rows, gen.tokens, 0)))
      timed["generate"] += t1 - t0
      timed["contrastive_step"] += time.perf_counter() - t1
      tokens += gen.tokens[:len(chunk)]
      kept += int(scored.kept[:len(chunk)].sum())
    return tokens, kept

  def lockstep(timed):
    tokens, kept, kl, agree = [], 0, [], []
    for chunk in batches:
      t0 = time.perf_counter()
      gen, scored = contrastive_decode((eg, es), (ag, as_), chunk, max_new_tokens=new_tokens, config=config,
                                       min_batch=batch)
      timed["lockstep loop"] += time.perf_counter() - t0
      tokens += gen.tokens
      kept += int(scored.kept.sum())
      kl.append(scored.kl)
      agree.append(scored.expert_top1 == scored.amateur_top1)
    out["lockstep_kl"], out["lockstep_agree"] = np.concatenate(kl), np.concatenate(agree)
    return tokens, kept

  approaches = (("teacher-forced", teacher_forced, ("generate", "contrastive_step")),
                ("lockstep", lockstep, ("lockstep loop",)))
  for name, fn, stages in approaches:
    t0 = time.perf_counter()
    fn({s: 0.0 for s in stages})
    out[name] = dict(first_call_s=time.perf_counter() - t0, seconds={s: 0.0 for s in stages})
  for _ in range(repeats):  # alternating, so that load from other processes falls on both alike
    for name, fn, stages in approaches:
      timed = {s: 0.0 for s in stages}
      out[name]["tokens"], out[name]["kept"] = fn(timed)
      out[name]["seconds"] = {s: out[name]["seconds"][s] + timed[s] / repeats for s in stages}
  return out


def matmul_flops_per_s(dtype, n: int, repeats: int = 5) -> float:
  """Median FLOP/s of an [n, n] x [n, n] matmul in `dtype` (float32 accumulation) on this device."""
  f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
  f(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / statistics.median(times)


def flop_floor(cfgs, prompts, new_tokens: int) -> float:
  """2 * weights * tokens: both bodies over prompt + completion, both LM heads at generated steps."""
  tokens = sum(len(p) + new_tokens for p in prompts)
  steps = len(prompts) * new_tokens
  total = 0.0
  for cfg in cfgs:
    head = cfg.vocab_size * cfg.hidden_size
    body = cfg.num_params(include_head=False) - cfg.vocab_size * cfg.hidden_size  # the lookup is no matmul
    total += 2.0 * body * tokens + 2.0 * head * steps
  return total


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def report(name: str, seconds: dict, n: int, baseline_s: float | None, floor: float, rate: float) -> float:
  total = sum(seconds.values())
  shares = ", ".join(f"{k} {v / total * 100:.0f}%" for k, v in seconds.items())
  ratio = "" if baseline_s is None else f"; ratio vs original {baseline_s / total:.1f}x"
  print(f"{name}: {total / n:.3f} s/problem ({total:.1f} s){ratio}; {floor / rate / total * 100:.2f}% of FLOP floor; "
        f"{shares}")
  return total


def main(argv=None) -> dict:
  args = parse_args(argv)
  import torch
  import transformers
  tokenizer = transformers.AutoTokenizer.from_pretrained(shared_file(args, "tokenizers", "qwen2.5"))
  vocab = SMOKE_VOCAB if args.smoke else VALID_VOCAB
  prompts = load_prompts(args, tokenizer, vocab)
  new = args.new_tokens
  n = len(prompts)
  config = ContrastiveConfig(valid_vocab=vocab)
  results: dict[str, float] = {}
  with tempfile.TemporaryDirectory() as folder:
    pair = load_real_pair(args) if args.real_pair else build_pair(args, folder)
    cfgs = [pair[r][1] for r in ("expert", "amateur")]
    max_len = bucket_size(max(map(len, prompts)), MIN_PROMPT_BUCKET) + output_slots(new)
    floor = flop_floor(cfgs, prompts, new)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)), torch "
          f"{torch.__version__} with {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"expert {cfgs[0].num_params() / 1e6:.1f}M params, amateur {cfgs[1].num_params() / 1e6:.1f}M, vocab "
          f"{cfgs[0].vocab_size} rows ({vocab} compared); {n} problems, prompts {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} ids, {new} new tokens each; FLOP floor {floor / 1e9:.1f} GFLOP")
    rss_before = peak_rss_gib()
    lr = {}
    for dname in args.dtypes:
      dtype = DTYPES[dname]
      models = tuple(nnx.split(from_pretrained(pair[r][2], dtype=dtype).model) for r in ("expert", "amateur"))
      if args.batch:
        batch, chunk, source = args.batch, config.chunk_size, "--batch"
      else:
        auto_batch, chunk = default_sampling_batch(*cfgs, vocab, max_len, device_memory_bytes(),
                                                   param_bytes=jnp.dtype(dtype).itemsize)
        batch, source = min(auto_batch, bucket_size(n)), f"default_sampling_batch: {auto_batch} rows"
      cfg = dataclasses.replace(config, chunk_size=chunk)
      print(f"lr_jax {dname}: batch {batch} ({source}), chunk {chunk}")
      lr[dname] = lr_jax_runs(models, prompts, new, batch, cfg, args.repeats)
      lr[dname]["rate"] = matmul_flops_per_s(dtype, 256 if args.smoke else 2048)
      print(f"  matmul {dname}: {lr[dname]['rate'] / 1e9:.1f} GFLOP/s")
      del models
    rss_after = peak_rss_gib()

    rate32 = matmul_flops_per_s(jnp.float32, 256 if args.smoke else 2048)
    expert_t, amateur_t = (pair[r][0] or torch_model(pair[r][2]) for r in ("expert", "amateur"))
    original = original_approach(expert_t, amateur_t, prompts, new, vocab, config)
    del expert_t, amateur_t
    base = report("(a) original (transformers, fp32)", original["seconds"], n, None, floor, rate32)
    results["original_s_per_problem"] = base / n
    for dname, runs in lr.items():
      for label, key in (("(b) lr_jax teacher-forced", "teacher-forced"), ("(c) lr_jax lockstep", "lockstep")):
        total = report(f"{label} {dname}", runs[key]["seconds"], n, base, floor, runs["rate"])
        results[f"{key}_{dname}_s_per_problem"] = total / n
        results[f"ratio_{key}_{dname}"] = base / total
    for dname, runs in lr.items():
      print(f"{dname}: at 100% of the FLOP floor ({floor / runs['rate']:.1f} s) lr_jax would be "
            f"{base / (floor / runs['rate']):.1f}x as fast as the original")
    for dname, runs in lr.items():
      tf, ls = runs["teacher-forced"], runs["lockstep"]
      same_hf = sum(a == b for a, b in zip(tf["tokens"], original["tokens"]))
      same_ls = sum(a == b for a, b in zip(tf["tokens"], ls["tokens"]))
      speedup = sum(tf["seconds"].values()) / sum(ls["seconds"].values())
      results[f"lockstep_over_teacher_forced_{dname}"] = speedup
      print(f"{dname}: lockstep is {speedup:.2f}x as fast as teacher-forced")
      print(f"{dname}: lockstep == teacher-forced trajectories {same_ls}/{n}, == transformers {same_hf}/{n}; "
            f"kept steps: original {original['kept']}, teacher-forced {tf['kept']}, lockstep {ls['kept']}; "
            f"first calls (with compile) {tf['first_call_s']:.1f} s / {ls['first_call_s']:.1f} s")
    if args.real_pair:
      for name, kl, agree, tokens in (
          [(f"lr_jax lockstep {d}", r["lockstep_kl"], r["lockstep_agree"], r["lockstep"]["tokens"])
           for d, r in lr.items()] + [("original", original["kl"], original["agree"], original["tokens"])]):
        st = kl_statistics(kl, agree, steps_before_eos(tokens, new), config.beta)
        print_kl_statistics(name, st, config.beta)
        results[f"kl_statistics {name}"] = st
    print(f"peak host memory (ru_maxrss): {rss_before:.2f} GiB before the lr_jax runs, {rss_after:.2f} GiB after")
    results["peak_rss_gib"] = rss_after
  return results


if __name__ == "__main__":
  main()
