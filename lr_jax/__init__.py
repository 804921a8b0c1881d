"""lr_jax: LightReasoner (expert-vs-amateur contrastive distillation) in JAX/Flax NNX.

Public API: `models.from_pretrained`, `generate`, `contrastive_step`, `distill_step` (jitted by
`make_distill_step`), with their configs. Imported lazily so `import lr_jax` stays cheap.
"""
import importlib

_EXPORTS = {
    "generate": "lr_jax.generation.api",
    "generate_batched": "lr_jax.generation.api",
    "SamplingConfig": "lr_jax.generation.api",
    "contrastive_step": "lr_jax.contrastive",
    "make_contrastive_step": "lr_jax.contrastive",
    "ContrastiveConfig": "lr_jax.contrastive",
    "ContrastiveOut": "lr_jax.contrastive",
    "distill_step": "lr_jax.distill",
    "make_distill_step": "lr_jax.distill",
    "DistillConfig": "lr_jax.distill",
    "TrainState": "lr_jax.distill",
    "init_train_state": "lr_jax.distill",
    "from_pretrained": "lr_jax.models.hf_io",
}
__all__ = sorted(_EXPORTS) + ["models"]


def __getattr__(name):
  if name == "models":
    return importlib.import_module("lr_jax.models")
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'lr_jax' has no attribute {name!r}")
