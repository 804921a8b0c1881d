"""The sampling stage: expert trajectories, scored against the amateur, into the sample store.

Per batch, by `config.sample.scoring`:
  'lockstep' (default): `lr_jax.lockstep.contrastive_decode`: the expert decodes greedily and the
    amateur follows in the same loop; each step's expert logits give both the token and the record.
  'teacher_forced': greedy `generate`, then `contrastive_step` over the whole trajectories (one
    teacher-forced forward per model); the way to score trajectories that already exist.
Both give the same records (up to float rounding); the store's meta names the mode. Then one atomic
append to this process's shard of the store; a restarted stage skips the problems whose batch
reached the store.

`config.sample.batch_size` (global rows) and `config.sample.chunk_size` (LM-head rows per scoring
call): 0 means chosen from the models' shapes, the vocabulary, the longest prompt and the device
memory (`lr_jax.sampling_memory.default_sampling_batch`); the choice is logged.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from lr_jax.contrastive import ContrastiveConfig, make_contrastive_step
from lr_jax.data.problems import load_problems_from_spec
from lr_jax.data.sample_stats import compute_stats, write_stats
from lr_jax.data.store import TARGET_PAD_ID, SampleStore, TrajectoryRecord
from lr_jax.data.tokenizer_pair import check_tokenizer_pair
from lr_jax.errors import SettingsChanged
from lr_jax.generation.api import generate
from lr_jax.generation.chat import format_chat
from lr_jax.generation.engine import MIN_PROMPT_BUCKET, bucket_size, output_slots
from lr_jax.lockstep import contrastive_decode
from lr_jax.models.config import ModelConfig
from lr_jax.models.hf_io import resolve_checkpoint
from lr_jax.sampling_memory import default_sampling_batch, device_memory_bytes
from lr_jax.sharding import agree_max, fetch_global, first_local_row, host_local_to_global, sum_over_hosts
from lr_jax.stages import common

LOCKSTEP, TEACHER_FORCED = "lockstep", "teacher_forced"
SCORINGS = (LOCKSTEP, TEACHER_FORCED)


def contrastive_config(config) -> ContrastiveConfig:
  s = config.sample
  return ContrastiveConfig(alpha=s.alpha, beta=s.beta, top_k=s.top_k, beta_inclusive=s.beta_inclusive,
                           score_first_token=s.score_first_token,
                           chunk_size=s.chunk_size or ContrastiveConfig.chunk_size)  # 0: chosen in `run`


def pad_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int):
  """Left-pads prompts and right-pads completions to bucketed widths (few compiled shapes), the same
  on every host (the widest host's), so the global batch has one shape."""
  def width(n):
    return max(MIN_PROMPT_BUCKET, int(2 ** np.ceil(np.log2(max(n, 1)))))
  p, t = agree_max(width(max(map(len, prompts))), width(max(max(map(len, completions)), 1)))
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


def scoring_of(config) -> str:
  """config.sample.scoring, checked: 'lockstep' (default) or 'teacher_forced'."""
  scoring = config.sample.get("scoring", LOCKSTEP)
  if scoring not in SCORINGS:
    raise ValueError(f"config.sample.scoring: {scoring!r} is not one of {', '.join(SCORINGS)}")
  return scoring


def batch_and_chunk(config, expert_cfg: ModelConfig, amateur_cfg: ModelConfig, valid_vocab: int,
                    longest_prompt: int, num_problems: int, layout) -> tuple[int, int]:
  """Global batch and scoring chunk: the config's, or `default_sampling_batch` where they are 0 (logged).

  A default batch holds at most `num_problems` rows per data-parallel way (rounded up to a power of
  two): every batch is padded to the full size, so a larger one would only compute padding.
  """
  batch, chunk = config.sample.batch_size, config.sample.chunk_size
  if batch and chunk:
    return batch, chunk
  max_len = bucket_size(longest_prompt, MIN_PROMPT_BUCKET) + output_slots(config.sample.max_new_tokens)
  memory = device_memory_bytes()
  scanned = scoring_of(config) == TEACHER_FORCED and config.sample.get("scan_layers", True)
  per_device, auto_chunk = default_sampling_batch(expert_cfg, amateur_cfg, valid_vocab, max_len, memory,
                                                  param_bytes=jnp.dtype(common.dtype_of(config.dtype)).itemsize,
                                                  scanned_layers=scanned,
                                                  fused_projections=config.get("fuse_decode_projections", True),
                                                  tensor_ways=layout.mesh.shape["tensor"])
  ways = layout.data_size
  if not batch:
    per_device = min(per_device, bucket_size(-(-num_problems // ways)))
    batch = per_device * ways
    common.log("sample: batch %d (%d rows on each of %d data-parallel devices, %.1f GiB each, %d cache slots)",
               batch, per_device, ways, memory / 2**30, max_len)
  if not chunk:
    chunk = auto_chunk
    common.log("sample: scoring chunk %d rows", chunk)
  return batch, chunk


def run(config, workdir: common.Workdir, writer) -> dict:
  """Runs (or resumes) the stage; returns a summary. Does nothing when every problem is stored."""
  pi, pc = jax.process_index(), jax.process_count()
  scoring = scoring_of(config)
  problems = load_problems_from_spec(config.data.path, tfds_dir=config.data.get("tfds_dir", ""),
                                     n=config.data.num_problems, order=config.data.order,
                                     seed=config.seed, question_field=config.data.question_field,
                                     answer_field=None)  # sampling needs no answer (MATH train has none)
  if not problems:
    raise ValueError(f"{config.data.path}: no problems to sample (an empty file or split?)")
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
          "eos_ids": eos, "tokenizer_pair": pair_report, "scoring": scoring,
          "data": {"path": config.data.path, "order": config.data.order, "question_field": config.data.question_field,
                   "seed": config.seed if config.data.order != "first" else None}}
  store = SampleStore(workdir.samples, pi, pc, meta=meta)
  done = store.done_ids()
  unselected = sorted(done - {p.id for p in mine})
  if unselected:  # the distill stage trains on every stored record
    raise SettingsChanged(f"sample store {workdir.samples} holds {len(unselected)} problem(s) (e.g. {unselected[0]}) "
                          f"that config.data (num_problems = {config.data.num_problems}, order "
                          f"{config.data.order!r}) no longer selects; rerun with the saved settings, or use a "
                          f"fresh workdir")
  todo = [p for p in mine if p.id not in done]
  (pending,) = agree_max(len(todo))
  if pending and os.path.isfile(workdir.distill_done):
    raise SettingsChanged(f"{workdir.distill_done}: distillation has finished on the problems the sample store "
                          f"holds; sampling more (config.data.num_problems = "
                          f"{config.data.num_problems}) would leave the adapter out of date: rerun with the saved "
                          f"settings, or use a fresh workdir")
  # Every problem's prompt, not only those still to sample: the default batch depends on the longest,
  # so a resumed run batches what is left as the uninterrupted run would have.
  encoded = {}
  for p in mine or problems[:1]:
    encoded[p.id] = format_chat(expert_tok, p.question, system_prompt=config.prompt.system_prompt,
                                template=config.prompt.template)
    if not encoded[p.id]:
      raise ValueError(f"{config.data.path}: problem {p.id}: its prompt (config.prompt.template) renders to no tokens")
  prompt_ids = [encoded[p.id] for p in todo] or [next(iter(encoded.values()))]
  layout = common.make_layout(config.mesh.sample, "sample")
  expert_cfg = ModelConfig.from_json(resolve_checkpoint(config.expert))
  amateur_cfg = ModelConfig.from_json(resolve_checkpoint(config.amateur))
  valid_vocab = min(len(expert_tok), expert_cfg.vocab_size, amateur_cfg.vocab_size)
  (longest,) = agree_max(max(map(len, encoded.values())))
  global_batch, chunk = batch_and_chunk(config, expert_cfg, amateur_cfg, valid_vocab, longest, len(problems),
                                        layout)
  bs = global_batch // pc
  n_batches = -(-len(todo) // bs)
  (n_batches,) = agree_max(n_batches)
  stats_file = os.path.join(workdir.sample_stats, "stats.json")
  if n_batches == 0 and os.path.isfile(stats_file) and \
      common.read_json(stats_file).get("num_records") == store.num_records():
    return {"skipped": True}  # (statistics of fewer records: a crash came between the last append and them)
  if n_batches:
    common.log("sample: %d problems (%d already stored), %d batches of %d, %s scoring", len(problems), len(done),
               n_batches, global_batch, scoring)
    scan = config.sample.get("scan_layers", True)  # teacher-forced scoring only; decoding unrolls
    kernels = common.kernel_flags(config)
    expert = common.load_model(config.expert, config.dtype, layout, scan_layers=scan, **kernels)
    amateur = common.load_model(config.amateur, config.dtype, layout, scan_layers=scan, **kernels)
    ccfg = dataclasses.replace(ccfg, valid_vocab=valid_vocab, chunk_size=chunk)
    eg, es = nnx.split(expert.model)
    ag, as_ = nnx.split(amateur.model)
    step = make_contrastive_step(eg, ag, ccfg) if scoring == TEACHER_FORCED else None
    seconds = {"gen_seconds": 0.0, "score_seconds": 0.0, "lockstep_seconds": 0.0}
    for b in tqdm(range(n_batches), desc="sample", disable=pi != 0):
      batch_problems = todo[b * bs:(b + 1) * bs]
      prompts = prompt_ids[b * bs:(b + 1) * bs] or prompt_ids[:1]
      prompts += [prompts[-1]] * (bs - len(prompts))  # fixed global batch; padding rows are not stored
      t0 = time.time()
      if scoring == LOCKSTEP:
        gen, scored = contrastive_decode((eg, es), (ag, as_), prompts, max_new_tokens=config.sample.max_new_tokens,
                                         eos_ids=eos, pad_id=pad_id, config=ccfg, layout=layout)
        timing = {"lockstep_seconds": time.time() - t0}
      else:
        gen = generate((eg, es), prompts, max_new_tokens=config.sample.max_new_tokens, eos_ids=eos,
                       pad_id=pad_id, valid_vocab=valid_vocab, layout=layout)
        t1 = time.time()
        batch = host_local_to_global(pad_batch(prompts, gen.tokens, pad_id), layout)
        scored = step(es, as_, batch)
        first = first_local_row(scored.kept)  # this process's rows within the gathered global batch
        scored = jax.tree.map(lambda x: fetch_global(x)[first:first + bs], scored)
        timing = {"gen_seconds": t1 - t0, "score_seconds": time.time() - t1}
      seconds = {k: v + timing.get(k, 0.0) for k, v in seconds.items()}
      completions = gen.tokens[:len(batch_problems)]
      if batch_problems:
        store.append(to_records([p.id for p in batch_problems], prompts, completions,
                                list(gen.finish_reasons), scored))
      kept, steps = sum_over_hosts(int(np.sum(scored.kept[:len(batch_problems)])),
                                   sum(map(len, completions)))  # the whole batch's, every shard's rows
      # steps go on from the batches a resumed run found stored (this process's shard: `bs` rows a
      # batch), so metrics of two runs do not collide
      writer.write("sample", -(-len(done) // bs) + b,
                   {"kept_ratio": kept / max(steps, 1), "new_tokens": steps, **timing})
    if scoring == LOCKSTEP:
      common.log("sample: lockstep generation and scoring %.1fs", seconds["lockstep_seconds"])
    else:
      common.log("sample: generation %.1fs, scoring %.1fs", seconds["gen_seconds"], seconds["score_seconds"])
  if pc > 1:  # every shard's last append is on disk before process 0 reads the store
    multihost_utils.sync_global_devices("lr_jax sample: store complete")
  if pi == 0:
    records = list(SampleStore(workdir.samples).iter_records())
    stats = compute_stats(records, beta=config.sample.beta, beta_inclusive=config.sample.beta_inclusive)
    write_stats(stats, workdir.sample_stats)
    return {"problems": len(problems), "records": len(records), **{k: v for k, v in stats.items()
                                                                    if isinstance(v, (int, float))}}
  return {}
