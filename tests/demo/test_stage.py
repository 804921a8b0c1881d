"""The demo stage: reuses a build of the same `config.demo`; a rebuild under later stages' work is refused."""
from __future__ import annotations

import pytest

from configs import demo as demo_config
from lr_jax.errors import SettingsChanged
from lr_jax.stages import common
from lr_jax.stages import demo as demo_stage


@pytest.fixture
def builds(monkeypatch):
  """Replaces the (minutes-long) build: `summaries` says whether the workdir holds this config's build."""
  calls, summaries = [], []
  monkeypatch.setattr(demo_stage, "load_summary", lambda out_dir, cfg: summaries[-1] if summaries else None)
  monkeypatch.setattr(demo_stage, "build_demo_pair", lambda out_dir, cfg: calls.append(out_dir) or {"built": True})
  return calls, summaries


def test_a_build_of_this_config_is_reported_as_skipped(tmp_path, builds):
  calls, summaries = builds
  config, workdir = demo_config.get_config("ci"), common.Workdir(str(tmp_path))
  assert demo_stage.run(config, workdir)["skipped"] is False
  summaries.append({"built": True})
  assert demo_stage.run(config, workdir)["skipped"] is True
  assert config.expert == str(tmp_path / "demo" / "expert")


def test_a_rebuild_where_samples_of_the_old_pair_exist_is_refused(tmp_path, builds):
  calls, _ = builds
  config, workdir = demo_config.get_config("ci"), common.Workdir(str(tmp_path))
  (tmp_path / "samples").mkdir()
  with pytest.raises(SettingsChanged, match=r"another demo pair than the one built here, and .*samples hold"):
    demo_stage.run(config, workdir)
  assert not calls
