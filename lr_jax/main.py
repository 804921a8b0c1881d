"""Entry point: `python -m lr_jax.main --config=configs/qwen_math.py[:variant] --workdir=DIR`.

Runs the stages named in `config.stages` (sample, distill, eval, export, report; the demo config
adds `demo` first). Each stage reads its inputs from the workdir, skips finished work and resumes
after a crash. Override any field with `--config.FIELD=VALUE`, e.g. `--config.sample.beta=0.5`.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file, optionally :variant.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder of the run's artifacts (created; reused to resume).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)  # library INFO lines (Orbax, XLA) drown the progress bars
  from lr_jax import pipeline
  from lr_jax.errors import SettingsChanged
  try:
    pipeline.run(FLAGS.config, FLAGS.workdir)
  except (pipeline.ConfigError, SettingsChanged) as e:
    sys.exit(f"lr_jax: config error: {e}")


if __name__ == "__main__":
  app.run(main)
