"""The embedded demo: a complete LightReasoner run on a laptop CPU, no download.

An "arithmetic world" of multi-step word problems, a tokenizer trained on it, and an expert and a
weaker amateur (same Qwen2 architecture) pre-trained from scratch with lr_jax's own model; then the
unchanged pipeline: sample -> distill -> eval (base and tuned expert, and the amateur, on held-out
problems) -> export -> report.

Usage: python -m lr_jax.main --config=configs/demo.py --workdir=/tmp/lr_demo
Variant `ci`: a reduced run (under 3 minutes on 2 cores) used by the test suite.
"""
import ml_collections

from configs import qwen_math
from lr_jax.demo.build import CI_DEMO, DEFAULT_DEMO


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "ci"):
    raise ValueError(f"configs/demo.py: unknown variant {variant!r}; known: '' (full), 'ci'")
  c = qwen_math.get_config("")
  c.stages = "demo,sample,distill,eval,export,report"
  c.demo = ml_collections.ConfigDict(CI_DEMO if variant == "ci" else DEFAULT_DEMO)
  c.expert = ""    # filled in by the demo stage: <workdir>/demo/expert
  c.amateur = ""   # <workdir>/demo/amateur
  c.dtype = "float32"
  c.mesh.train = (-1, 1, 1)   # the tiny pair: rows over every device, weights replicated

  c.data.path = ""  # <workdir>/demo/sample.jsonl
  c.data.num_problems = c.demo.n_sample

  c.sample.max_new_tokens = c.demo.max_new_tokens   # solutions end within 50 tokens
  c.sample.batch_size = 64
  c.sample.top_k = 8
  c.sample.chunk_size = 512

  c.distill.learning_rate = 1e-3
  c.distill.updates = 60 if variant == "ci" else 200
  c.distill.checkpoint_every = 20

  c.eval.benchmarks = ""   # <workdir>/demo/test.jsonl, read as GSM8K records
  c.eval.models = "base,tuned,amateur"
  c.eval.max_new_tokens = c.demo.max_new_tokens

  c.export.dtype = "float32"
  return c
