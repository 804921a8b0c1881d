"""The distillation stage: LoRA-tune the expert on the stored contrastive targets.

Packs the sample store into updates of `steps_per_update` kept steps (`distill.order`: the shuffled
trajectories' steps end to end, or kept steps drawn at random; one row per trajectory an update
draws from: one forward a row), runs `distill_step`,
checkpoints with Orbax every `checkpoint_every` updates and resumes from the newest readable
checkpoint. Ends with the adapter as a PEFT folder (workdir/checkpoints/final_adapter) and DONE.json.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
from flax import nnx
from tqdm.auto import tqdm

from lr_jax.checkpointing import Checkpointer
from lr_jax.data.packing import PackedUpdates, PackingConfig
from lr_jax.data.store import SampleStore
from lr_jax.distill import DistillConfig, init_train_state, make_distill_step, shard_batch
from lr_jax.errors import SettingsChanged, check_unchanged
from lr_jax.export import export_peft
from lr_jax.models.lora import LoRAConfig, apply_lora, split_trainable
from lr_jax.stages import common


def lora_config(config) -> LoRAConfig:
  d = config.distill
  return LoRAConfig(targets=tuple(d.lora_targets), rank=d.lora_rank, alpha=float(d.lora_alpha),
                    dropout=d.lora_dropout)


# Settings added after files were written without them, with the value those versions behaved as.
ADDED_SETTINGS = {"order": "trajectories"}


def saved_settings(saved: dict) -> dict:
  """Saved settings (a DONE.json's, a checkpoint's meta) with what older versions did not record filled
  in as they behaved, so a rerun with that behaviour is accepted and one with another is refused.
  An empty record (older still: no settings at all) stays empty, unchecked."""
  return {**ADDED_SETTINGS, **saved} if saved else dict(saved)


def settings(config) -> dict:
  """What the tuned adapter depends on in the config: a resumed checkpoint, and a finished stage that
  a rerun skips, must have been made with the same."""
  d = config.distill
  return {"expert": config.expert, "dtype": config.dtype, "updates": d.updates,
          "lora": dataclasses.asdict(lora_config(config)), "learning_rate": d.learning_rate, "grad_clip": d.grad_clip,
          "steps_per_update": d.steps_per_update, "micro_batches": d.micro_batches, "order": d.order,
          "seed": config.seed}


def run(config, workdir: common.Workdir, writer) -> dict:
  if os.path.isfile(workdir.distill_done):
    done = common.read_json(workdir.distill_done)
    check_unchanged(saved_settings(done.get("settings", {})), settings(config), workdir.distill_done)
    stored = SampleStore(workdir.samples).num_records()
    if done.get("records", stored) != stored:
      raise SettingsChanged(f"{workdir.distill_done}: the adapter was trained on {done['records']} records, the sample "
                            f"store {workdir.samples} now holds {stored}: use a fresh workdir (or the saved store)")
    return {"skipped": True}
  d = config.distill
  records = list(SampleStore(workdir.samples).iter_records())
  kept = sum(r.num_kept for r in records)
  if not kept:
    raise ValueError(f"{workdir.samples}: no kept steps to train on (lower sample.beta?)")
  tokenizer = common.load_tokenizer(config.expert)
  layout = common.make_layout(config.mesh.train, "train")
  pretrained = common.load_model(config.expert, config.dtype, layout, remat=d.remat,
                                 scan_layers=d.get("scan_layers", False), attention=config.get("attention", "auto"))
  lora = lora_config(config)
  apply_lora(pretrained.model, lora, rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
  graphdef, params, frozen = split_trainable(pretrained.model, lora)
  valid_vocab = min(len(tokenizer), pretrained.config.vocab_size)
  dcfg = DistillConfig(total_updates=d.updates, learning_rate=d.learning_rate, max_grad_norm=d.grad_clip,
                       valid_vocab=valid_vocab)
  epochs = math.ceil(d.updates * d.steps_per_update / kept)  # the paper's 1000 updates revisit the data
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  packing = PackingConfig(steps_per_update=d.steps_per_update, micro_batches=d.micro_batches,
                          row_multiple=layout.data_size, shuffle_seed=config.seed, epochs=epochs, pad_id=pad_id,
                          order=d.order)
  packed = PackedUpdates(records, packing, valid_vocab)
  n_updates = min(d.updates, len(packed))
  state = init_train_state(params, dcfg, config.seed, layout)
  ckpt = Checkpointer(os.path.join(workdir.checkpoints, "orbax"), save_every=d.checkpoint_every,
                      keep=d.keep_checkpoints)
  # What a checkpoint's state depends on besides the weights: a resumed run must agree on all of it.
  plan = {**settings(config), "num_updates": n_updates, "records": len(records), "kept_steps": kept,
          "valid_vocab": valid_vocab}
  start = 0
  restored = ckpt.restore(state, expect=plan, backfill=saved_settings)
  if restored is not None:
    state, meta = restored
    start = int(meta["next_update"])
    common.log("distill: resumed at update %d of %d", start, n_updates)
  step = make_distill_step(graphdef, dcfg, layout)
  common.log("distill: %d records, %d kept steps, %d updates of %d steps (%d epochs)", len(records), kept,
             n_updates, d.steps_per_update, epochs)
  t0 = time.time()
  pending = None  # (update, device metrics): fetched after the next update is dispatched, no stall

  def log(update, device_metrics):
    nonlocal t0
    m = jax.device_get(device_metrics)
    writer.write("distill", update, {**m, "supervised_steps_per_s": m["supervised_steps"] /
                                     max(time.time() - t0, 1e-9)})
    t0 = time.time()
    return m

  metrics = None
  for u in tqdm(range(start, n_updates), desc="distill", initial=start, total=n_updates,
                disable=jax.process_index() != 0):
    state, device_metrics = step(state, frozen, shard_batch(packed.batch(u), layout))
    if pending is not None:
      log(*pending)
    pending = (u, device_metrics)
    if (u + 1) % d.checkpoint_every == 0:  # log (and flush) all updates a checkpoint holds before saving it
      log(*pending)
      writer.flush()
      pending = None
    ckpt.save(u + 1, state, {"next_update": u + 1, **plan})
  if pending is not None:
    metrics = log(*pending)
  elif n_updates > start:
    metrics = jax.device_get(device_metrics)
  if n_updates not in ckpt.all_steps():
    ckpt.save(n_updates, state, {"next_update": n_updates, **plan}, force=True)
  ckpt.wait()
  ckpt.close()
  model = nnx.merge(graphdef, state.params, frozen)
  if common.is_main_process():
    export_peft(model, lora, workdir.adapter, base_model_name_or_path=config.expert)
    common.write_json(workdir.distill_done, {"updates": n_updates, "kept_steps": kept, "epochs": epochs,
                                             "records": len(records), "settings": settings(config)})
  common.wait_for_main_process("lr_jax distill: adapter written")  # the eval stage reads it on every process
  return {"updates": n_updates, "kept_steps": kept,
          "final_loss": None if metrics is None else float(metrics["loss"])}
