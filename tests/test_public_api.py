"""The top-level names the README promises: importable lazily, and each the object it names."""
from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO_ROOT

# In a fresh interpreter: every export, before and after the package's own modules are imported (a
# submodule named like an export would replace it as a package attribute).
CHECK = """
import inspect, lr_jax
first = {name: getattr(lr_jax, name) for name in lr_jax.__all__}
import lr_jax.lockstep, lr_jax.stages.sample, lr_jax.stages.evaluate, lr_jax.demo.build
for name in lr_jax.__all__:
  value = getattr(lr_jax, name)
  assert value is first[name], (name, value, first[name])
  assert inspect.ismodule(value) == (name == "models"), (name, value)
assert callable(lr_jax.generate) and lr_jax.generate.__name__ == "generate"
print("ok", len(lr_jax.__all__))
"""


def test_every_export_is_what_it_names_whatever_was_imported_before():
  run = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.startswith("ok ")
