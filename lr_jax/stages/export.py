"""The export stage: the tuned expert as a merged HF checkpoint and as a PEFT adapter folder."""
from __future__ import annotations

import os

from lr_jax.errors import check_unchanged
from lr_jax.export import export_merged, export_peft, load_peft_adapter
from lr_jax.models.hf_io import resolve_checkpoint
from lr_jax.stages import common, distill


def settings(config) -> dict:
  """What the exported folders depend on: the adapter's settings and the export's own."""
  e = config.export
  return {"distill": distill.settings(config), "dtype": e.dtype, "merged": bool(e.merged), "peft": bool(e.peft),
          "max_shard_bytes": e.max_shard_bytes}


def run(config, workdir: common.Workdir) -> dict:
  """Writes workdir/export/{merged,peft} (process 0; each folder appears atomically)."""
  adapter = workdir.adapter
  if os.path.isfile(workdir.export_done):
    saved = common.read_json(workdir.export_done).get("settings", {})  # none in a DONE.json of older versions
    if "distill" in saved:
      saved["distill"] = distill.saved_settings(saved["distill"])
    check_unchanged(saved, settings(config), workdir.export_done)
    return {"skipped": True}
  if not os.path.isdir(adapter):
    raise FileNotFoundError(f"{adapter}: no trained adapter; run the distill stage first")
  if common.is_main_process():
    pretrained = common.load_model(config.expert, config.export.dtype, None)
    lora = load_peft_adapter(pretrained.model, adapter)
    if config.export.merged:
      export_merged(pretrained.model, workdir.export_merged, source_dir=resolve_checkpoint(config.expert),
                    max_shard_bytes=config.export.max_shard_bytes, dtype=config.export.dtype)
      common.log("export: merged checkpoint in %s", workdir.export_merged)
    if config.export.peft:
      export_peft(pretrained.model, lora, workdir.export_peft, base_model_name_or_path=config.expert)
      common.log("export: PEFT adapter in %s", workdir.export_peft)
    common.write_json(workdir.export_done, {"merged": bool(config.export.merged), "peft": bool(config.export.peft),
                                            "settings": settings(config)})
  common.wait_for_main_process("lr_jax export: written")
  return {}
