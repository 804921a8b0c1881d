"""The run's config handling: loading, overrides, stage selection and the one-line errors."""
import json
import os
import subprocess
import sys

import jax
import ml_collections
import pytest

from configs import demo, llama, qwen_math
from lr_jax import pipeline
from lr_jax.stages import common
from tests.helpers import REPO_ROOT


def _model_dir(tmp_path, name, hidden, layers):
  """A folder with only config.json: enough for the checks, which never load weights."""
  d = tmp_path / name
  d.mkdir()
  (d / "config.json").write_text(json.dumps({
      "model_type": "qwen2", "vocab_size": 1000, "hidden_size": hidden, "num_hidden_layers": layers,
      "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 4 * hidden}))
  return str(d)


def _config(tmp_path, **fields):
  c = qwen_math.get_config()
  c.expert = _model_dir(tmp_path, "expert", 256, 4)
  c.amateur = _model_dir(tmp_path, "amateur", 64, 2)
  c.data.path = str(tmp_path / "problems.jsonl")
  (tmp_path / "problems.jsonl").write_text('{"question": "1+1?"}\n')
  (tmp_path / "bench" / "gsm8k").mkdir(parents=True)
  (tmp_path / "bench" / "gsm8k" / "test.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
  c.eval.data_dir, c.eval.benchmarks = str(tmp_path / "bench"), "gsm8k"
  c.eval.batch_size = 8
  c.sample.batch_size = 8
  for key, value in fields.items():
    *parents, name = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[name] = value
  return c


def test_every_config_and_variant_loads():
  for variant in qwen_math.EXPERTS:
    assert qwen_math.get_config(variant).sample.beta == 0.4
  ref = qwen_math.get_config("reference")
  assert ref.sample.beta_inclusive and not ref.sample.score_first_token
  assert ref.prompt.system_prompt == "Please reason step by step."
  assert ref.distill.order == "steps" and ref.distill.grad_clip == 0.5
  assert qwen_math.get_config("").distill.order == "trajectories"
  r1 = qwen_math.get_config("r1-distill-1.5b")  # its tokenizer has no ChatML markers
  assert r1.prompt.template == r1.eval.template == "chat"
  assert llama.get_config().prompt.template == "chat"
  assert demo.get_config("ci").demo.n_sample < demo.get_config().demo.n_sample
  with pytest.raises(ValueError, match="unknown variant"):
    qwen_math.get_config("gpt")


def test_valid_config_passes_the_checks(tmp_path):
  c = _config(tmp_path)
  pipeline.check_config(c, pipeline.stages_of(c))


@pytest.mark.parametrize("fields, message", [
    ({"stages": "sample,train"}, "config.stages: unknown stage 'train'"),
    ({"dtype": "int8"}, "config.dtype: 'int8' is not one of"),
    ({"attention": "flash"}, "config.attention: 'flash' is not one of auto, xla, cudnn"),
    ({"decode_attention": "triton"}, "config.decode_attention: 'triton' is not one of auto, xla, pallas"),
    ({"expert": "/no/such/model"}, "config.expert: /no/such/model is not a checkpoint folder"),
    ({"data.path": "/no/such.jsonl"}, "config.data.path: /no/such.jsonl does not exist"),
    ({"data.num_problems": 0}, "config.data.num_problems: expected an integer >= 1 (or None: all), got 0"),
    ({"sample.batch_size": 12}, "batch size 12 of stage sample is not divisible by the 8 data-parallel ways"),
    ({"mesh.train": (3, -1, 1)}, "config.mesh.train: mesh shape (3, -1, 1) does not divide 8 devices"),
    ({"distill.lora_targets": ("qproj",)}, "config.distill: LoRAConfig.targets: ['qproj'] must be a non-empty"),
    ({"distill.lora_rank": 0}, "config.distill: LoRAConfig.rank: expected >= 1, got 0"),
    ({"distill.lora_dropout": 1.0}, "config.distill: LoRAConfig.dropout: expected a rate in [0, 1)"),
    ({"distill.micro_batches": 3}, "config.distill: PackingConfig: micro_batches=3 must divide steps_per_update=16"),
    ({"distill.updates": 0}, "config.distill: DistillConfig.total_updates: expected >= 1, got 0"),
    ({"distill.order": "random"}, "config.distill: PackingConfig.order: expected one of trajectories, steps"),
    ({"distill.checkpoint_every": 0}, "config.distill.checkpoint_every: expected >= 1, got 0"),
    ({"export.dtype": "bf16"}, "config.export.dtype: 'bf16' is not one of bfloat16, float32, float16"),
    ({"sample.batch_size": -2}, "config.sample.batch_size: expected >= 0, got -2"),
    ({"sample.top_k": 0}, "config.sample: ContrastiveConfig: expected 0 < alpha <= 1, top_k >= 1"),
    ({"sample.scoring": "greedy"}, "config.sample.scoring: 'greedy' is not one of lockstep, teacher_forced"),
    ({"data.order": "shuffled"}, "config.data.order: 'shuffled' is not one of first, random"),
    ({"prompt.template": "qwen-cot"}, "config.prompt.template: unknown prompt template 'qwen-cot'"),
    ({"eval.template": "qwen-cot"}, "config.eval.template: unknown prompt template 'qwen-cot'"),
    ({"eval.models": "base,bse"}, "config.eval.models: 'base,bse' should name some of base, tuned, amateur"),
    ({"eval.benchmarks": "gsm8k,maths"}, "config.eval.benchmarks: unknown benchmark 'maths' in 'maths'"),
    ({"eval.benchmarks": "mine=gsm8k:/no/such.jsonl"}, "config.eval.benchmarks: 'mine=gsm8k:/no/such.jsonl': "
     "/no/such.jsonl does not exist"),
    ({"eval.limit": -1}, "config.eval.limit: expected >= 0, got -1"),
    ({"eval.benchmarks": "gsm8k,gsm8k"}, "config.eval.benchmarks: 'gsm8k' listed twice"),
])
def test_config_errors_are_reported_in_one_line(tmp_path, fields, message):
  c = _config(tmp_path, **fields)
  with pytest.raises(pipeline.ConfigError) as e:
    pipeline.check_config(c, pipeline.stages_of(c))
  assert message in str(e.value) and "\n" not in str(e.value)


def test_a_non_boolean_fuse_decode_projections_is_refused(tmp_path):
  """A config of the user's own may hold any type there (ConfigDict keeps qwen_math's bool)."""
  c = _config(tmp_path)
  del c["fuse_decode_projections"]
  pipeline.check_config(c, pipeline.stages_of(c))  # absent: the default (True)
  c.fuse_decode_projections = "yes"
  with pytest.raises(pipeline.ConfigError, match="config.fuse_decode_projections: expected True or False, got 'yes'"):
    pipeline.check_config(c, pipeline.stages_of(c))


def test_decode_gemm_is_checked_before_any_model_loads(tmp_path, monkeypatch):
  """'mosaic' where it cannot run is refused in one line saying why: here (CPU) for the device;
  with the kernel available, for a job of 8 devices, unfused projections or float32 weights."""
  from lr_jax.ops import hopper_gemm
  c = _config(tmp_path)
  pipeline.check_config(c, pipeline.stages_of(c))  # "xla", qwen_math's default
  del c["decode_gemm"]
  pipeline.check_config(c, pipeline.stages_of(c))  # absent: "xla"
  c.decode_gemm = "xla"

  def refused(message, **fields):
    d = c.copy_and_resolve_references()
    d.update(decode_gemm="mosaic", **fields)
    with pytest.raises(pipeline.ConfigError, match=message) as e:
      pipeline.check_config(d, pipeline.stages_of(d))
    assert "\n" not in str(e.value) and str(e.value).endswith("; use 'xla'")

  c.decode_gemm = "cutlass"
  with pytest.raises(pipeline.ConfigError, match="config.decode_gemm: 'cutlass' is not one of xla, mosaic"):
    pipeline.check_config(c, pipeline.stages_of(c))
  refused(r"config.decode_gemm: 'mosaic' \(the Hopper Mosaic GPU matmul\) needs an NVIDIA Hopper GPU")
  monkeypatch.setattr(hopper_gemm, "unavailable", lambda: None)
  refused("runs on one device; this job has 8")
  monkeypatch.setattr(pipeline.jax, "device_count", lambda: 1)
  refused("needs config.fuse_decode_projections = True", fuse_decode_projections=False)
  refused("needs config.dtype bfloat16 or float16, not float32", dtype="float32")
  c.decode_gemm = "mosaic"
  pipeline.check_config(c, pipeline.stages_of(c))
  monkeypatch.setattr(hopper_gemm, "unavailable", lambda: "needs an NVIDIA Hopper GPU")
  c.stages = "distill,export"
  pipeline.check_config(c, pipeline.stages_of(c))  # no stage decodes: the kernel is not needed
  c.decode_gemm = "Mosaic"
  with pytest.raises(pipeline.ConfigError, match="config.decode_gemm: 'Mosaic' is not one of xla, mosaic"):
    pipeline.check_config(c, pipeline.stages_of(c))  # a misspelt value still is refused


def test_demo_stages_without_the_demo_stage_say_to_keep_it():
  c = demo.get_config("ci")
  with pytest.raises(pipeline.ConfigError, match="^config.expert: empty; the demo config's demo stage fills it in: "
                                                 "keep demo in config.stages$"):
    pipeline.check_config(c, ["sample", "distill"])


def test_amateur_larger_than_expert_is_refused(tmp_path):
  c = _config(tmp_path)
  c.expert, c.amateur = c.amateur, c.expert
  with pytest.raises(pipeline.ConfigError, match="is larger than config.expert"):
    pipeline.check_config(c, pipeline.stages_of(c))


def test_a_leading_tilde_in_path_fields_is_expanded(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  c = qwen_math.get_config()
  c.data.tfds_dir, c.eval.data_dir, c.expert = "~/tfds", "~/data", "Qwen/Qwen2.5-Math-1.5B"
  pipeline.expand_user_paths(c)
  assert (c.data.tfds_dir, c.eval.data_dir, c.expert) == (f"{tmp_path}/tfds", f"{tmp_path}/data",
                                                          "Qwen/Qwen2.5-Math-1.5B")
  del c.data["tfds_dir"]  # an optional field a config may leave out
  pipeline.expand_user_paths(c)


def test_stage_selection_keeps_pipeline_order():
  c = ml_collections.ConfigDict({"stages": "report, eval,sample"})
  assert pipeline.stages_of(c) == ["sample", "eval", "report"]


def _main(*args, cwd=REPO_ROOT):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "lr_jax.main", *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def test_cli_reports_a_config_error_in_one_line_before_loading_models(tmp_path):
  c = _config(tmp_path)
  r = _main("--config=configs/qwen_math.py", f"--workdir={tmp_path / 'run'}", f"--config.expert={c.expert}",
            f"--config.amateur={c.amateur}", "--config.data.path=/no/such.jsonl")
  assert r.returncode != 0
  assert r.stderr.strip().splitlines()[-1] == ("lr_jax: config error: config.data.path: /no/such.jsonl does not "
                                                "exist (a JSONL file or tfds:NAME[:SPLIT])")


def test_cli_refuses_unknown_keys_wrong_types_and_stray_arguments_in_one_line(tmp_path):
  r = _main("--config=configs/qwen_math.py", f"--workdir={tmp_path}", "--config.sample.betta=1")
  assert r.returncode == 1 and r.stderr.strip() == (
      "lr_jax: config error: a --config override names a field the config does not have: 'betta' Did you mean "
      '"beta" instead of "betta"?'), r.stderr
  r = _main("--config=configs/qwen_math.py", f"--workdir={tmp_path}", "--config.sample.beta=high")
  assert r.returncode != 0 and "beta" in r.stderr
  r = _main("--config=configs/qwen_math.py", f"--workdir={tmp_path}", "config.sample.beta=0.5")
  assert r.returncode == 1 and r.stderr.strip() == ("lr_jax: unexpected arguments ['config.sample.beta=0.5']: give "
                                                     "overrides as --config.FIELD=VALUE")
  assert not os.path.exists(tmp_path / "config.json")  # nothing ran


def test_stages_that_need_an_adapter_no_stage_makes_are_refused_up_front(tmp_path):
  workdir = common.Workdir(str(tmp_path / "run"))
  adapter = os.path.join(workdir.checkpoints, "final_adapter")
  c = _config(tmp_path, **{"eval.models": "base"})
  pipeline.check_adapter(c, ["eval"], workdir)  # the base model needs none
  for stages, models, what in ((["eval"], "base,tuned", "evaluating the tuned model (config.eval.models)"),
                               (["eval", "export"], "base", "export")):
    c.eval.models = models
    with pytest.raises(pipeline.ConfigError) as e:
      pipeline.check_adapter(c, stages, workdir)
    assert str(e.value) == f"{adapter}: no trained adapter, which {what} needs: add distill to config.stages"
    pipeline.check_adapter(c, ["distill", *stages], workdir)
  os.makedirs(adapter)
  pipeline.check_adapter(c, ["eval", "export"], workdir)


def test_an_unknown_or_unprepared_tfds_benchmark_is_refused_before_any_work(tmp_path):
  c = _config(tmp_path)
  c.eval.benchmarks = "gsm8k,tfds:gsm8kk"
  with pytest.raises(pipeline.ConfigError, match=r"config.eval.benchmarks: 'tfds:gsm8kk': unknown data set 'gsm8kk'"):
    pipeline.check_config(c, ["eval"])
  c.eval.benchmarks = "tfds:svamp"
  with pytest.raises(pipeline.ConfigError, match=r"config.eval.benchmarks: 'tfds:svamp': lr_jax_svamp is not "
                                                 r"prepared in config.eval.data_dir"):
    pipeline.check_config(c, ["eval"])
  (tmp_path / "bench" / "lr_jax_svamp").mkdir()
  pipeline.check_config(c, ["eval"])


def test_compilation_cache_is_created_and_set_or_left_off(tmp_path):
  previous = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  try:
    assert pipeline.use_compilation_cache("") is None
    assert jax.config.jax_compilation_cache_dir == previous[0]
    path = pipeline.use_compilation_cache(str(tmp_path / "cache" / "xla"))
    assert path == str(tmp_path / "cache" / "xla") and os.path.isdir(path)
    assert jax.config.jax_compilation_cache_dir == path
  finally:
    jax.config.update("jax_compilation_cache_dir", previous[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])


def test_fuse_decode_projections_reaches_the_models_the_sample_stage_loads(tmp_path, monkeypatch):
  from lr_jax.stages import common
  from tests.helpers import make_tiny_hf

  class Loaded(Exception):
    pass

  def load_model(path, dtype_name, layout, **flags):
    raise Loaded(flags)

  c = _config(tmp_path, stages="sample", fuse_decode_projections=False, compilation_cache_dir="",
              **{"data.num_problems": 1})  # no cache: the run would set JAX's for the tests after it
  c.expert = make_tiny_hf(tmp_path, "qwen2", name="expert_hf", vocab_size=151936, hidden_size=32)
  c.amateur = make_tiny_hf(tmp_path, "qwen2", name="amateur_hf", vocab_size=151936, hidden_size=16)
  (tmp_path / "problems.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n')
  monkeypatch.setattr(common, "load_model", load_model)
  with pytest.raises(Loaded) as e:
    pipeline.run(c, str(tmp_path / "work"))
  assert e.value.args[0]["fuse_decode_projections"] is False
