"""The error `lr_jax.main` reports in one line when a workdir's saved state disagrees with the run."""


class SettingsChanged(ValueError):
  """A workdir's saved state (the sample store, a distillation checkpoint) was written with other
  settings than this run's: resuming would mix the two."""
