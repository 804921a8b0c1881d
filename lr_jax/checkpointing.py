"""Orbax checkpoints of the distillation state, resumable after a kill at any moment.

Each checkpoint `<dir>/<step>/` holds two items: `state`, the `TrainState` pytree (trainable params,
optimizer state, step, dropout rng), and `meta`, a JSON object (the data position and the run's
config). Saves run in the background (Orbax async) every `save_every` updates; the last `keep`
checkpoints stay. Orbax writes a step to a temporary folder and renames it when complete, so a kill
mid-save leaves no step folder (the temporary one is removed on the next start).

`restore` tries the newest step first. A step that fails to load (a truncated or deleted file, a
corrupt JSON, a shape that no longer matches) is reported with a warning, moved aside to
`<dir>/<step>.corrupt` (never deleted: a person may want it) and the previous one is tried. A step
whose meta records other settings than the run's (`expect`) is refused with a `SettingsChanged`
error instead, before its state is read: it is not damaged, the run is configured differently.

Restoring takes a target state (e.g. a freshly initialised one) whose arrays carry the shardings
wanted now: a checkpoint saved on one mesh restores onto any other, or onto one device.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from lr_jax.errors import SettingsChanged, check_unchanged


class Checkpointer:
  """Saves and restores (state pytree, JSON meta) pairs under `directory`."""

  def __init__(self, directory: str, *, save_every: int, keep: int = 3):
    if save_every < 1 or keep < 1:
      raise ValueError(f"Checkpointer: save_every ({save_every}) and keep ({keep}) must be >= 1")
    self.directory = os.path.abspath(directory)
    self.save_every = save_every
    # Which steps are saved is decided here (multiples of save_every), never by Orbax's policies:
    # its interval policy also saves the first step, and it may skip a step while a save is running.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=True, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
    """Starts saving `state` and `meta` as `step` if it is a multiple of `save_every` (or `force`)
    and not saved already (a final forced save may repeat the last periodic one).

    Returns whether a save started. The device-to-host transfer completes before this returns (the
    write continues in the background), so the caller may donate `state` to the next update.
    """
    if (step % self.save_every and not force) or step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    return self._manager.save(step, args=args, force=True)

  def restore(self, target: Any, expect: Mapping[str, Any] | None = None,
              backfill: Callable[[dict], dict] = dict) -> tuple[Any, dict[str, Any]] | None:
    """(state, meta) of the newest loadable step, laid out like `target`; None when there is none.

    `expect`: meta entries the step must hold with these values (JSON-comparable); an entry the meta
    lacks (a checkpoint of an older version) is not checked, unless `backfill(meta)` supplies it.
    A difference raises `SettingsChanged` naming the entries, and the step is left where it is.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    expect = expect or {}
    for step in reversed(self.all_steps()):
      try:
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        meta = backfill(meta)
        check_unchanged(meta, expect, os.path.join(self.directory, str(step)), keys=[k for k in expect if k in meta])
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        restored = self._manager.restore(step, args=args)
        return restored.state, restored.meta
      except SettingsChanged:
        raise
      except Exception as e:  # noqa: BLE001 - any failure to load marks the step unusable
        self._set_aside(step, e)
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    path = os.path.join(self.directory, str(step))
    reason = str(error).splitlines()[0][:200] if str(error) else ""
    warnings.warn(f"checkpoint {path} is unreadable ({type(error).__name__}: {reason}); moved to "
                  f"{path}.corrupt, trying the previous one", RuntimeWarning, stacklevel=3)
    if jax.process_index() == 0 and os.path.isdir(path):
      os.replace(path, _free_name(path + ".corrupt"))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"lr_jax checkpoint set aside {step}")
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until the background save (if any) is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _free_name(path: str) -> str:
  """`path`, or `path.1`, `path.2`, ... whichever does not exist yet."""
  candidate, n = path, 0
  while os.path.exists(candidate):
    n += 1
    candidate = f"{path}.{n}"
  return candidate
