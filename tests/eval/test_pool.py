"""Deadline pool: order kept, stuck and dead workers replaced, worker exceptions raised here.

The task functions are standard-library ones so that worker processes can import them by name.
"""
from __future__ import annotations

import math
import os
import time

import pytest

from lr_jax.eval.pool import map_with_deadline


def _failed(task):
  return ("failed", task)


def test_results_come_back_in_task_order():
  tasks = [-(i % 7) for i in range(50)]
  assert map_with_deadline(abs, tasks, deadline_s=30, on_failure=_failed, num_workers=2) == [abs(t) for t in tasks]


def test_stuck_task_is_killed_at_its_deadline_and_the_rest_complete():
  start = time.monotonic()
  results = map_with_deadline(time.sleep, [0.0, 600.0, 0.0, 0.0], deadline_s=1.0, on_failure=_failed,
                              num_workers=2)
  assert results == [None, ("failed", 600.0), None, None]
  assert time.monotonic() - start < 20


def test_dead_worker_is_replaced_and_its_task_marked_failed():
  results = map_with_deadline(os._exit, [3], deadline_s=30, on_failure=_failed, num_workers=1)
  assert results == [("failed", 3)]


def test_exception_in_a_worker_is_raised_in_the_caller():
  with pytest.raises(RuntimeError, match="task 1 raised in a worker: ValueError"):
    map_with_deadline(math.sqrt, [4.0, -1.0], deadline_s=30, on_failure=_failed, num_workers=1)


def test_a_negative_worker_count_is_refused():
  with pytest.raises(ValueError, match=r"num_workers must be >= 0 \(0: the CPUs available\), got -1"):
    map_with_deadline(abs, [1], deadline_s=1, on_failure=_failed, num_workers=-1)


def test_empty_task_list_starts_nothing():
  assert map_with_deadline(abs, [], deadline_s=1, on_failure=_failed) == []
