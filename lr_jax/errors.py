"""The error `lr_jax.main` reports in one line when a workdir's saved state disagrees with the run."""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any


class SettingsChanged(ValueError):
  """A workdir's saved state (the sample store, a distillation checkpoint, an evaluation run) was
  written with other settings than this run's: resuming would mix the two."""


def check_unchanged(saved: Mapping[str, Any], now: Mapping[str, Any], where: str,
                    keys: Iterable[str] | None = None) -> None:
  """Raises `SettingsChanged` naming each of `keys` (default: all of `saved`'s) whose saved value
  differs from `now`'s, compared as JSON stores them (tuples as lists; a key `now` lacks reads
  '<absent>'). `where` names the saved state."""
  now = json.loads(json.dumps(dict(now)))
  changed = [f"{key}: saved {saved[key]!r}, now {now.get(key, '<absent>')!r}"
             for key in sorted(saved if keys is None else keys) if saved[key] != now.get(key, "<absent>")]
  if changed:
    raise SettingsChanged(f"{where} was written with other settings ({'; '.join(changed)}); rerun with the saved "
                          "settings, or use a fresh workdir")
