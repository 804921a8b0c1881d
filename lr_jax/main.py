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


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a one-line error for an override of a field the config lacks
  (ml_collections raises AttributeError or KeyError there) and for stray arguments (an override
  missing its leading --)."""
  try:
    rest = app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    cause = e
    while isinstance(cause, BaseException) and cause.args:  # ml_collections nests the KeyError's text
      cause = cause.args[0]
    detail = " ".join(str(cause).split())
    sys.exit(f"lr_jax: config error: a --config override names a field the config does not have: {detail}")
  if len(rest) > 1:
    sys.exit(f"lr_jax: unexpected arguments {rest[1:]}: give overrides as --config.FIELD=VALUE")
  return rest


def main(argv):
  del argv  # parse_flags refused any left over
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)  # library INFO lines (Orbax, XLA) drown the progress bars
  from lr_jax import pipeline
  from lr_jax.errors import SettingsChanged
  try:
    pipeline.run(FLAGS.config, FLAGS.workdir)
  except (pipeline.ConfigError, SettingsChanged) as e:
    sys.exit(f"lr_jax: config error: {e}")
  except OSError as e:  # a checkpoint, data set or file the run needs is missing or unreachable
    sys.exit(f"lr_jax: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
