"""LightReasoner on Qwen2.5-Math-1.5B (expert) against Qwen2.5-0.5B (amateur), the paper's main setting.

Usage: python -m lr_jax.main --config=configs/qwen_math.py[:VARIANT] --workdir=DIR
Variants (the paper's other experts): math-7b, math-1.5b-instruct, math-7b-instruct, r1-distill-1.5b;
and `reference`, which reproduces the original code's choices (prompt "Please reason step by step.",
beta compared with >=, first generated token not scored, updates of randomly drawn kept steps, the
gradient clipped at 0.5: see below).
Mesh layouts: sampling replicates the weights and splits the batch over every device (`mesh.sample`;
a tensor size > 1 splits the weights too); training shards the frozen base FSDP over all devices
(`mesh.train`).
"""
import ml_collections

from lr_jax.data.prompts import DEFAULT_SYSTEM_PROMPT

EXPERTS = {
    "": "Qwen/Qwen2.5-Math-1.5B",
    "math-7b": "Qwen/Qwen2.5-Math-7B",
    "math-1.5b-instruct": "Qwen/Qwen2.5-Math-1.5B-Instruct",
    "math-7b-instruct": "Qwen/Qwen2.5-Math-7B-Instruct",
    "r1-distill-1.5b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "reference": "Qwen/Qwen2.5-Math-1.5B",
}
BENCHMARKS = ("gsm8k", "math", "svamp", "asdiv", "minerva_math", "olympiadbench", "mmlu_stem")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in EXPERTS:
    raise ValueError(f"configs/qwen_math.py: unknown variant {variant!r}; known: {', '.join(sorted(EXPERTS))}")
  c = ml_collections.ConfigDict()
  c.expert = EXPERTS[variant]
  c.amateur = "Qwen/Qwen2.5-0.5B"
  c.dtype = "bfloat16"
  c.attention = "auto"          # cache-free forwards (training, teacher-forced scoring): cuDNN flash attention
                                # on NVIDIA GPUs in bf16/fp16, else XLA; "xla" forces XLA everywhere
  c.decode_attention = "auto"   # one-token decode steps (sampling, eval): a Pallas kernel on NVIDIA GPUs
                                # in bf16/fp16, else XLA; "xla" forces XLA
  c.fuse_decode_projections = True  # decode loops: q/k/v and gate/up as one GEMM each (1.21x a step on an
                                    # H200) over a copy of those weights (+1.7 GB for the 1.5B expert)
  c.decode_gemm = "xla"         # those projections in decode loops: XLA's GEMMs, or "mosaic": JAX's Hopper
                                # matmul (one H100/H200; bench/hopper_gemms.py says whether it is faster)
  c.seed = 0
  c.stages = "sample,distill,eval,export,report"
  c.compilation_cache_dir = "~/.cache/lr_jax/xla"  # JAX's persistent compilation cache: a rerun, a resumed
                                # run or another run of the same shapes loads executables instead of
                                # compiling them; "" turns it off

  c.mesh = ml_collections.ConfigDict()
  c.mesh.sample = (-1, 1, 1)   # (data, fsdp, tensor): batch over every device, weights replicated
  c.mesh.train = (1, -1, 1)    # frozen base fully sharded, batch over fsdp
  c.mesh.eval = (-1, 1, 1)

  c.prompt = ml_collections.ConfigDict()
  c.prompt.template = "qwen25-math-cot"
  c.prompt.system_prompt = DEFAULT_SYSTEM_PROMPT

  c.data = ml_collections.ConfigDict()
  c.data.path = "../shared/data/gsm8k/train.jsonl"   # a JSONL file, or tfds:lr_jax_gsm8k:train with data.tfds_dir
  c.data.tfds_dir = ""
  c.data.num_problems = 1000
  c.data.order = "first"        # first N in file order (the original), or "random" (seeded)
  c.data.question_field = "question"

  c.sample = ml_collections.ConfigDict()
  c.sample.max_new_tokens = 128
  c.sample.batch_size = 0       # global rows; 0: rows per device from the models and device memory (256 on an
                                # 80 GB GPU) times the data-parallel ways
  c.sample.alpha = 0.2
  c.sample.beta = 0.4
  c.sample.beta_inclusive = False
  c.sample.score_first_token = True
  c.sample.top_k = 32
  c.sample.chunk_size = 0       # 0: LM-head rows per scoring chunk, likewise
  c.sample.scoring = "lockstep"
  c.sample.scan_layers = True   # teacher_forced scoring runs each model's layers as one scan (one compiled layer)
  c.sample.allow_tokenizer_mismatch = False

  c.distill = ml_collections.ConfigDict()
  c.distill.lora_rank = 8
  c.distill.lora_alpha = 16.0
  c.distill.lora_dropout = 0.05
  c.distill.lora_targets = ("q_proj", "v_proj")
  c.distill.learning_rate = 5e-5
  c.distill.updates = 1000
  c.distill.steps_per_update = 16
  c.distill.order = "trajectories"  # an update's steps: the shuffled trajectories' kept steps end to end (1-2
                                    # trajectories, one row each), or "steps": kept steps drawn at random
                                    # (~16 trajectories, as the original's sampler; ~9x the tokens an update)
  c.distill.grad_clip = 1.0
  c.distill.micro_batches = 1
  c.distill.remat = False       # 16 rows of a 1.5B model fit without it; True for 7B on small devices
  c.distill.scan_layers = False  # True compiles one layer, not 28 (2x faster), but on GPUs an update then
                                 # moves ~1.9x the bytes (stacked residuals and weights: bench/gpu_hlo.py)
  c.distill.checkpoint_every = 100
  c.distill.keep_checkpoints = 3

  c.eval = ml_collections.ConfigDict()
  c.eval.benchmarks = ",".join(BENCHMARKS)
  c.eval.data_dir = "../shared/data"
  c.eval.limit = 0              # items per benchmark; 0 = all
  c.eval.template = "qwen25-math-cot"
  c.eval.system_prompt = ""     # empty: prompt.system_prompt
  c.eval.max_new_tokens = 2048
  c.eval.batch_size = 64        # rows in all, split over the devices: raise it with their count (a v5e-8
                                # chip holds 8 rows at 64 and re-reads the weights for them every token)
  c.eval.models = "base,tuned"

  c.export = ml_collections.ConfigDict()
  c.export.merged = True
  c.export.peft = True
  c.export.dtype = "bfloat16"
  c.export.max_shard_bytes = 5 * 2**30

  if variant.startswith("math-7b"):
    c.distill.remat = True        # 7B activations of 16 rows take ~20 GB without it
  if variant == "reference":
    c.prompt.system_prompt = "Please reason step by step."   # sampling and training
    c.eval.system_prompt = DEFAULT_SYSTEM_PROMPT               # the original evaluated with the boxed cue
    c.sample.beta_inclusive = True
    c.sample.score_first_token = False
    c.distill.order = "steps"     # the HF Trainer shuffles the (prefix, target) pairs themselves
    # The original's loss ignores the Trainer's `num_items_in_batch`, so transformers >= 4.46 (which its
    # `transformers>=4.44` admits) no longer divides it by the 2 accumulation steps: the gradient it clips
    # at 1.0 is twice the batch mean, which is clipping the mean at 0.5 (Adam is scale-free but for eps).
    c.distill.grad_clip = 0.5
  if variant == "r1-distill-1.5b":
    c.prompt.template = "chat"    # its tokenizer has no <|im_start|>: the original renders its own template
    c.eval.template = "chat"
  return c
