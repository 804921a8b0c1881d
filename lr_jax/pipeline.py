"""The run: config checks, then the selected stages in order, each resumable from the workdir."""
from __future__ import annotations

import json
import os
import time

import jax
import ml_collections

from lr_jax import sharding
from lr_jax.models.transformer import ATTENTION_KERNELS, DECODE_GEMMS, DECODE_KERNELS
from lr_jax.ops import hopper_gemm
from lr_jax.stages import common

STAGE_ORDER = common.STAGE_ORDER


class ConfigError(ValueError):
  """A config problem, reported in one line before any model is loaded."""


def _looks_local(path: str) -> bool:
  return path.startswith((".", "/", "~")) or os.path.exists(path) or path.count("/") != 1


def _local_model_config(path_or_id: str):
  """ModelConfig of a local folder or a cached hub id; None when only the hub has it."""
  from lr_jax.models.config import ModelConfig
  if os.path.isdir(path_or_id):
    return ModelConfig.from_json(path_or_id)
  try:
    from huggingface_hub import hf_hub_download
    return ModelConfig.from_json(hf_hub_download(path_or_id, "config.json", local_files_only=True))
  except Exception:  # not cached: checked when the stage loads it
    return None


def stages_of(config) -> list[str]:
  stages = [s.strip() for s in config.stages.split(",") if s.strip()]
  unknown = [s for s in stages if s not in STAGE_ORDER]
  if unknown:
    raise ConfigError(f"config.stages: unknown stage {unknown[0]!r}; known: {', '.join(STAGE_ORDER)}")
  return sorted(stages, key=STAGE_ORDER.index)


def _check_decode_gemm(config, decodes: bool) -> None:
  """The value always; whether the kernel can run only for stages that decode (`decodes`)."""
  gemm = config.get("decode_gemm", "xla")
  if gemm not in DECODE_GEMMS:
    raise ConfigError(f"config.decode_gemm: {gemm!r} is not one of {', '.join(DECODE_GEMMS)}")
  if gemm != "mosaic" or not decodes:
    return
  why = hopper_gemm.unavailable()
  if why is None and jax.device_count() > 1:
    why = f"runs on one device; this job has {jax.device_count()}"
  if why is None and not config.get("fuse_decode_projections", True):
    why = "runs the fused projections: needs config.fuse_decode_projections = True"
  if why is None and config.dtype not in ("bfloat16", "float16"):
    why = f"needs config.dtype bfloat16 or float16, not {config.dtype}"
  if why:
    raise ConfigError(f"config.decode_gemm: 'mosaic' (the Hopper Mosaic GPU matmul) {why}; use 'xla'")


def check_config(config, stages: list[str]) -> None:
  """Raises ConfigError (one line) for anything that would fail later, before loading a model."""
  if config.dtype not in common.DTYPES:
    raise ConfigError(f"config.dtype: {config.dtype!r} is not one of {', '.join(common.DTYPES)}")
  for field, kernels in (("attention", ATTENTION_KERNELS), ("decode_attention", DECODE_KERNELS)):
    if config.get(field, "auto") not in kernels:
      raise ConfigError(f"config.{field}: {config.get(field)!r} is not one of {', '.join(kernels)}")
  if not isinstance(config.get("fuse_decode_projections", True), bool):
    raise ConfigError(f"config.fuse_decode_projections: expected True or False, got "
                      f"{config.get('fuse_decode_projections')!r}")
  _check_decode_gemm(config, decodes=any(s in stages for s in ("sample", "eval")))
  needs_models = any(s in stages for s in ("sample", "distill", "eval", "export"))
  if needs_models and "demo" not in stages:
    for role in ("expert", "amateur"):
      path = getattr(config, role)
      if not path and "demo" in config:
        raise ConfigError(f"config.{role}: empty; the demo config's demo stage fills it in: keep demo in config.stages")
      if not path:
        raise ConfigError(f"config.{role}: empty; give a checkpoint folder or a hub id such as Qwen/Qwen2.5-0.5B")
      if _looks_local(path) and not os.path.isdir(path):
        raise ConfigError(f"config.{role}: {path} is not a checkpoint folder (and not a hub id org/name)")
    e, a = _local_model_config(config.expert), _local_model_config(config.amateur)
    if e is not None and a is not None and a.num_params() > e.num_params():
      raise ConfigError(f"config.amateur ({config.amateur}, {a.num_params() / 1e6:.0f}M params) is larger than "
                        f"config.expert ({config.expert}, {e.num_params() / 1e6:.0f}M): swapped by mistake?")
  if "sample" in stages and "demo" not in stages and not config.data.path.startswith("tfds:"):
    if not os.path.isfile(config.data.path):
      raise ConfigError(f"config.data.path: {config.data.path} does not exist (a JSONL file or tfds:NAME[:SPLIT])")
  if "sample" in stages:
    _check_sample(config)
  if "distill" in stages:
    _check_distill(config)
  if "eval" in stages:
    _check_eval(config, check_files="demo" not in stages)
  if "export" in stages and config.export.dtype not in common.DTYPES:
    raise ConfigError(f"config.export.dtype: {config.export.dtype!r} is not one of {', '.join(common.DTYPES)}")
  n_dev = jax.device_count()
  for stage, mesh_name, batch in (("sample", "sample", config.sample.batch_size), ("distill", "train", None),
                                  ("eval", "eval", config.eval.batch_size)):
    if stage not in stages:
      continue
    try:
      mesh = sharding.make_mesh(tuple(getattr(config.mesh, mesh_name)))
    except ValueError as e:
      raise ConfigError(f"config.mesh.{mesh_name}: {e}") from None
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch is None:  # distillation packs its rows to a multiple of the data-parallel ways itself
      continue
    if batch % ways:
      raise ConfigError(f"batch size {batch} of stage {stage} is not divisible by the {ways} data-parallel "
                        f"ways of config.mesh.{mesh_name}={tuple(getattr(config.mesh, mesh_name))} ({n_dev} devices)")
    if batch % jax.process_count():
      raise ConfigError(f"batch size {batch} of stage {stage} is not divisible by {jax.process_count()} processes")


def check_adapter(config, stages: list[str], workdir: common.Workdir) -> None:
  """Raises ConfigError where a stage needs the trained adapter that neither the workdir holds nor
  this run's distill stage makes (before the stages before it spend their time)."""
  adapter = workdir.adapter
  if "distill" in stages or os.path.isdir(adapter):
    return
  tuned_eval = "eval" in stages and "tuned" in [m.strip() for m in config.eval.models.split(",")]
  for needed, what in ((tuned_eval, "evaluating the tuned model (config.eval.models)"), ("export" in stages, "export")):
    if needed:
      raise ConfigError(f"{adapter}: no trained adapter, which {what} needs: add distill to config.stages")


def _check_sample(config) -> None:
  """The sampling settings, checked as the stage checks them."""
  from lr_jax.data.problems import ORDERS
  from lr_jax.data.prompts import default_stop_strings
  from lr_jax.stages.sample import contrastive_config, scoring_of
  s = config.sample
  for field, least in (("batch_size", 0), ("chunk_size", 0), ("max_new_tokens", 1)):
    if s[field] < least:
      raise ConfigError(f"config.sample.{field}: expected >= {least}, got {s[field]}")
  n = config.data.num_problems
  if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
    raise ConfigError(f"config.data.num_problems: expected an integer >= 1 (or None: all), got {n!r}")
  if config.data.order not in ORDERS:
    raise ConfigError(f"config.data.order: {config.data.order!r} is not one of {', '.join(ORDERS)}")
  try:
    scoring_of(config)
    contrastive_config(config)
  except ValueError as e:
    raise ConfigError(f"config.sample: {e}" if str(e).startswith("ContrastiveConfig") else str(e)) from None
  try:
    default_stop_strings(config.prompt.template)
  except ValueError as e:
    raise ConfigError(f"config.prompt.template: {e}") from None


def _check_eval(config, check_files: bool) -> None:
  """The evaluation settings; `check_files`: also the benchmark files (not yet built for the demo)."""
  from lr_jax.data.prompts import default_stop_strings
  from lr_jax.stages.evaluate import check_benchmarks, check_models
  e = config.eval
  for field, least in (("limit", 0), ("max_new_tokens", 1), ("batch_size", 1)):
    if e[field] < least:
      raise ConfigError(f"config.eval.{field}: expected >= {least}, got {e[field]}")
  try:
    check_models(e.models)
    if check_files:
      check_benchmarks(e.benchmarks, e.data_dir)
  except ValueError as error:
    raise ConfigError(str(error)) from None
  try:
    default_stop_strings(e.template)
  except ValueError as error:
    raise ConfigError(f"config.eval.template: {error}") from None


def _check_distill(config) -> None:
  """The distillation settings, checked as the stage's own objects check them."""
  from lr_jax.data.packing import PackingConfig
  from lr_jax.distill import DistillConfig
  from lr_jax.stages.distill import lora_config
  d = config.distill
  for field in ("checkpoint_every", "keep_checkpoints"):
    if d[field] < 1:
      raise ConfigError(f"config.distill.{field}: expected >= 1, got {d[field]}")
  try:
    lora_config(config)
    PackingConfig(steps_per_update=d.steps_per_update, micro_batches=d.micro_batches, order=d.order)
    DistillConfig(total_updates=d.updates)
  except ValueError as e:
    raise ConfigError(f"config.distill: {e}") from None


def _save_config(config, workdir: common.Workdir) -> None:
  if jax.process_index() == 0:
    common.write_json(workdir.config, json.loads(config.to_json_best_effort()))


def use_compilation_cache(path: str) -> str | None:
  """Points JAX's persistent compilation cache at `path` (created; "~" expanded), before anything
  compiles: every executable that took over a second to compile is stored there and loaded, not
  compiled, by any later process that compiles the same program. "" leaves the cache off."""
  if not path:
    return None
  path = os.path.abspath(os.path.expanduser(path))
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return path


# Fields holding local paths (a shell leaves "~" unexpanded after "--config.FIELD=").
PATH_FIELDS = ("expert", "amateur", "data.path", "data.tfds_dir", "eval.data_dir")


def expand_user_paths(config: ml_collections.ConfigDict) -> None:
  """Expands a leading "~" in `PATH_FIELDS` (in place)."""
  for field in PATH_FIELDS:
    *parents, name = field.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    if isinstance(node.get(name), str) and node[name].startswith("~"):
      node[name] = os.path.expanduser(node[name])


def run(config: ml_collections.ConfigDict, workdir_path: str) -> None:
  """Runs the configured stages; a finished run does nothing and says so."""
  sharding.maybe_initialize_distributed()
  use_compilation_cache(config.get("compilation_cache_dir", ""))
  stages = stages_of(config)
  config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy: the demo stage fills in paths
  expand_user_paths(config)
  workdir = common.Workdir(os.path.expanduser(workdir_path))
  check_config(config, stages)
  check_adapter(config, stages, workdir)
  os.makedirs(workdir.root, exist_ok=True)
  if "demo" not in stages and not os.path.isfile(workdir.config):
    _save_config(config, workdir)  # a first run's record, should a stage fail; rewritten at the end
  from lr_jax.metrics import MetricsWriter, peak_device_memory
  writer = MetricsWriter(workdir.root)
  timings = common.read_json(workdir.timings) if os.path.isfile(workdir.timings) else {}
  did_work = False  # by a stage other than the report
  for stage in stages:
    if stage == "report" and not did_work and os.path.isfile(workdir.report) and stages != ["report"]:
      common.log("report: already written and nothing changed, skipped")
      continue
    t0 = time.time()
    summary = _run_stage(stage, config, workdir, writer)
    seconds = time.time() - t0
    if stage == "demo" and not os.path.isfile(workdir.config):
      _save_config(config, workdir)  # a first run's record, should a later stage fail; rewritten at the end
    if summary.get("skipped"):
      common.log("%s: already done, skipped", stage)
      continue
    did_work = did_work or stage != "report"
    timings[stage] = timings.get(stage, 0.0) + seconds  # a resumed stage adds up its invocations
    writer.write("time", STAGE_ORDER.index(stage), {f"{stage}_seconds": seconds,
                                                    "peak_device_memory_bytes_so_far": peak_device_memory()})
    writer.flush()  # TensorBoard buffers for minutes: a killed job keeps what finished stages logged
    if jax.process_index() == 0:
      common.write_json(workdir.timings, timings)
  if did_work:  # after every stage succeeded: a refused or failed rerun (or a report-only one) keeps the record
    _save_config(config, workdir)
  writer.close()
  if not did_work and stages != ["report"]:
    common.log("lr_jax: every stage of %s is already done; nothing to do", workdir.root)
  else:
    common.log("lr_jax: done; artifacts in %s", workdir.root)


def _run_stage(stage: str, config, workdir: common.Workdir, writer) -> dict:
  if stage == "demo":
    from lr_jax.stages import demo
    return demo.run(config, workdir)
  if stage == "sample":
    from lr_jax.stages import sample
    return sample.run(config, workdir, writer)
  if stage == "distill":
    from lr_jax.stages import distill
    return distill.run(config, workdir, writer)
  if stage == "eval":
    from lr_jax.stages import evaluate
    return evaluate.run(config, workdir, writer)
  if stage == "export":
    from lr_jax.stages import export
    return export.run(config, workdir)
  from lr_jax import report
  return report.run(config, workdir)
