"""LightReasoner on a Llama pair: Llama-3.2-3B-Instruct (expert) against Llama-3.2-1B-Instruct (amateur).

Both share the Llama 3 tokenizer (128,256 rows). Prompts use the model's own chat template.
Usage: python -m lr_jax.main --config=configs/llama.py --workdir=DIR
Mesh layouts as in qwen_math.py: batch-parallel sampling, FSDP training.
"""
from configs import qwen_math


def get_config(variant: str = ""):
  c = qwen_math.get_config("")
  c.expert = "meta-llama/Llama-3.2-3B-Instruct"
  c.amateur = "meta-llama/Llama-3.2-1B-Instruct"
  c.prompt.template = "chat"
  c.eval.template = "chat"
  if variant:
    raise ValueError(f"configs/llama.py: unknown variant {variant!r}; it has none")
  return c
