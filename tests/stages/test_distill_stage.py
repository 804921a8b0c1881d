"""The distill and export stages' DONE records: settings added since a run was made are taken as the
behaviour that run had (a rerun with it skips; one with another setting is refused)."""
from __future__ import annotations

import json

import pytest

from configs import qwen_math
from lr_jax.data.store import SampleStore
from lr_jax.errors import SettingsChanged
from lr_jax.stages import common, distill, export


def _older_done(workdir: common.Workdir, config) -> None:
  """DONE.json files as a version before `distill.order` wrote them (no 'order' in the settings)."""
  old = distill.settings(config)
  del old["order"]
  for path, extra in ((workdir.distill_done, {"updates": 1}), (workdir.export_done, {})):
    settings = old if path == workdir.distill_done else {**export.settings(config), "distill": old}
    common.write_json(path, {**extra, "settings": settings})


@pytest.mark.parametrize("stage", [distill, export])
def test_an_older_finished_run_is_the_trajectories_order_and_refused_for_another(tmp_path, stage):
  config = qwen_math.get_config()
  workdir = common.Workdir(str(tmp_path))
  _older_done(workdir, config)
  assert "order" not in json.dumps(common.read_json(workdir.distill_done))
  SampleStore(workdir.samples, meta={"expert": config.expert})  # an empty store: the record count check reads it
  run = (lambda c: stage.run(c, workdir, None)) if stage is distill else (lambda c: stage.run(c, workdir))
  assert run(config) == {"skipped": True}
  config.distill.order = "steps"
  with pytest.raises(SettingsChanged, match="now .*'steps'"):
    run(config)
