"""The sampling stage: expert trajectories, scored against the amateur, into the sample store.

Per batch: greedy expert generation, then `contrastive_step` over the whole trajectories (one
teacher-forced forward per model), then one atomic append to this process's shard of the store.
A restarted stage skips the problems whose batch reached the store.
"""
from __future__ import annotations

import time

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from lr_jax.contrastive import ContrastiveConfig, make_contrastive_step
from lr_jax.data.problems import load_problems
from lr_jax.data.prompts import render_prompt
from lr_jax.data.sample_stats import compute_stats, write_stats
from lr_jax.data.store import TARGET_PAD_ID, SampleStore, TrajectoryRecord
from lr_jax.data.tokenizer_pair import check_tokenizer_pair
from lr_jax.generate import generate
from lr_jax.sharding import host_local_to_global
from lr_jax.stages import common


def contrastive_config(config) -> ContrastiveConfig:
  s = config.sample
  return ContrastiveConfig(alpha=s.alpha, beta=s.beta, top_k=s.top_k, beta_inclusive=s.beta_inclusive,
                           score_first_token=s.score_first_token, chunk_size=s.chunk_size)


def pad_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int, bucket: int = 16):
  """Left-pads prompts and right-pads completions to bucketed widths (few compiled shapes)."""
  def width(n):
    return max(bucket, int(2 ** np.ceil(np.log2(max(n, 1)))))
  p, t = width(max(map(len, prompts))), width(max(max(map(len, completions)), 1))
  b = len(prompts)
  out = {"prompt_tokens": np.full((b, p), pad_id, np.int32), "prompt_mask": np.zeros((b, p), bool),
         "completion_tokens": np.full((b, t), pad_id, np.int32), "completion_mask": np.zeros((b, t), bool)}
  for i, (pr, co) in enumerate(zip(prompts, completions)):
    out["prompt_tokens"][i, p - len(pr):] = pr
    out["prompt_mask"][i, p - len(pr):] = True
    out["completion_tokens"][i, :len(co)] = co
    out["completion_mask"][i, :len(co)] = True
  return out


def to_records(problem_ids, prompts, completions, finish_reasons, scored) -> list[TrajectoryRecord]:
  """Store records from `ContrastiveOut` host arrays `[B, T, ...]` (rows beyond len(problem_ids) are padding)."""
  records = []
  for i, pid in enumerate(problem_ids):
    n = len(completions[i])
    kept = np.flatnonzero(scored.kept[i, :n])
    ids = scored.target_ids[i, kept]
    weights = scored.target_weights[i, kept]
    ids = np.where(weights > 0, ids, TARGET_PAD_ID)
    records.append(TrajectoryRecord(
        problem_id=pid, prompt_ids=prompts[i], completion_ids=completions[i], finish_reason=finish_reasons[i],
        steps=kept, kl=scored.kl[i, kept], target_ids=ids, target_weights=weights,
        dropped_mass=scored.dropped_mass[i, kept], num_target_tokens=scored.mask_size[i, kept],
        all_kl=scored.kl[i, :n], expert_top1=scored.expert_top1[i, :n], amateur_top1=scored.amateur_top1[i, :n]))
  return records


def run(config, workdir: common.Workdir, writer) -> dict:
  """Runs (or resumes) the stage; returns a summary. Does nothing when every problem is stored."""
  pi, pc = jax.process_index(), jax.process_count()
  problems = load_problems(config.data.path, n=config.data.num_problems, order=config.data.order,
                           seed=config.seed, question_field=config.data.question_field)
  mine = problems[pi::pc]
  expert_tok = common.load_tokenizer(config.expert)
  amateur_tok = common.load_tokenizer(config.amateur)
  pair_report = check_tokenizer_pair(expert_tok, amateur_tok,
                                     allow_mismatch=config.sample.allow_tokenizer_mismatch)
  ccfg = contrastive_config(config)
  eos = common.eos_ids(config.expert, expert_tok)
  pad_id = expert_tok.pad_token_id if expert_tok.pad_token_id is not None else eos[0]
  meta = {"expert": config.expert, "amateur": config.amateur, "dtype": config.dtype,
          "alpha": ccfg.alpha, "beta": ccfg.beta, "top_k": ccfg.top_k, "beta_inclusive": ccfg.beta_inclusive,
          "score_first_token": ccfg.score_first_token, "max_new_tokens": config.sample.max_new_tokens,
          "template": config.prompt.template, "system_prompt": config.prompt.system_prompt,
          "eos_ids": eos, "tokenizer_pair": pair_report, "scoring": "teacher_forced"}
  store = SampleStore(workdir.samples, pi, pc, meta=meta)
  done = store.done_ids()
  todo = [p for p in mine if p.id not in done]
  bs = config.sample.batch_size // pc
  n_batches = -(-len(todo) // bs)
  if pc > 1:
    n_batches = int(np.max(multihost_utils.process_allgather(np.array([n_batches]))))
  if n_batches == 0:
    common.log("sample: all %d problems already in %s, nothing to do", len(problems), workdir.samples)
  else:
    common.log("sample: %d problems (%d already stored), %d batches of %d", len(problems), len(done),
               n_batches, config.sample.batch_size)
    layout = common.make_layout(config.mesh.sample, "sample")
    expert = common.load_model(config.expert, config.dtype, layout)
    amateur = common.load_model(config.amateur, config.dtype, layout)
    valid_vocab = min(len(expert_tok), expert.config.vocab_size, amateur.config.vocab_size)
    ccfg = ContrastiveConfig(**{**ccfg.__dict__, "valid_vocab": valid_vocab})
    eg, es = nnx.split(expert.model)
    ag, as_ = nnx.split(amateur.model)
    step = make_contrastive_step(eg, ag, ccfg)
    t_gen = t_score = 0.0
    for b in tqdm(range(n_batches), desc="sample", disable=pi != 0):
      chunk = todo[b * bs:(b + 1) * bs]
      questions = [p.question for p in chunk] or [mine[0].question]
      prompts = [expert_tok.encode(render_prompt(q, config.prompt.template, tokenizer=expert_tok,
                                                 system_prompt=config.prompt.system_prompt),
                                   add_special_tokens=False) for q in questions]
      prompts += [prompts[-1]] * (bs - len(prompts))  # fixed global batch; padding rows are not stored
      t0 = time.time()
      gen = generate((eg, es), prompts, max_new_tokens=config.sample.max_new_tokens, eos_ids=eos,
                     pad_id=pad_id, valid_vocab=valid_vocab, layout=layout)
      t1 = time.time()
      completions = [list(map(int, c)) for c in gen.tokens]
      batch = host_local_to_global(pad_batch(prompts, completions, pad_id), layout)
      scored = step(es, as_, batch)
      scored = jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
                            if pc > 1 else np.asarray(x), scored)
      if pc > 1:  # rows of this process within the gathered global batch
        scored = jax.tree.map(lambda x: x[pi * bs:(pi + 1) * bs], scored)
      t2 = time.time()
      t_gen, t_score = t_gen + t1 - t0, t_score + t2 - t1
      if chunk:
        store.append(to_records([p.id for p in chunk], prompts, completions, list(gen.finish_reasons), scored))
      kept = float(np.sum(scored.kept[:len(chunk)]))
      steps = float(np.sum(np.asarray(batch["completion_mask"])[:len(chunk)])) if pc == 1 else float(
          sum(len(c) for c in completions[:len(chunk)]))
      writer.write("sample", b, {"kept_ratio": kept / max(steps, 1.0), "gen_seconds": t1 - t0,
                                 "score_seconds": t2 - t1, "new_tokens": steps})
    common.log("sample: generation %.1fs, scoring %.1fs", t_gen, t_score)
  if pi == 0:
    records = list(SampleStore(workdir.samples).iter_records())
    stats = compute_stats(records, beta=config.sample.beta)
    write_stats(stats, workdir.sample_stats)
    return {"problems": len(problems), "records": len(records), **{k: v for k, v in stats.items()
                                                                    if isinstance(v, (int, float))}}
  return {}
