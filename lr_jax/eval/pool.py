"""A process pool in which every task has a hard deadline: a worker past it is killed and replaced.

`multiprocessing.Pool` cannot abandon one stuck task without tearing the pool down, and a SymPy
computation stuck inside C code never sees a signal, so a per-task kill is the only guarantee that one
pathological input cannot hang a run. Workers are forked from a 'forkserver' (never from the caller,
which may hold JAX threads) with the task function's module preloaded, so a replacement starts in
milliseconds. Each worker holds one task at a time; results come back in task order.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")

_STOP = None


@dataclasses.dataclass
class _Worker:
  process: Any
  connection: multiprocessing.connection.Connection
  task_index: int | None = None
  started_at: float = 0.0


def default_num_workers() -> int:
  """The CPUs this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def map_with_deadline(fn: Callable[[Task], Result], tasks: Sequence[Task], *, deadline_s: float,
                      on_failure: Callable[[Task], Result], num_workers: int | None = None) -> list[Result]:
  """[fn(task) for task in tasks], computed in worker processes.

  Args:
    fn: a module-level (picklable) function; exceptions it raises are re-raised here as RuntimeError.
    tasks: picklable inputs.
    deadline_s: wall-clock seconds one task may take before its worker is killed.
    on_failure: called here, in the parent, for a task whose worker was killed or died; its value
      stands in for fn(task).
    num_workers: processes to use (default: the CPUs available), never more than len(tasks).
  """
  if deadline_s <= 0:
    raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
  if num_workers is not None and num_workers < 0:
    raise ValueError(f"num_workers must be >= 0 (0: the CPUs available), got {num_workers}")
  if not tasks:
    return []
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload([fn.__module__])  # only used when this call starts the forkserver
  count = min(num_workers or default_num_workers(), len(tasks))
  workers = [_start(context, fn) for _ in range(count)]
  results: list[Any] = [None] * len(tasks)
  pending = deque(range(len(tasks)))
  remaining = len(tasks)
  try:
    while remaining:
      for worker in workers:
        if worker.task_index is None and pending:
          worker.task_index = pending.popleft()
          worker.started_at = time.monotonic()
          worker.connection.send((worker.task_index, tasks[worker.task_index]))
      busy = [worker for worker in workers if worker.task_index is not None]
      wait_s = max(0.0, min(worker.started_at for worker in busy) + deadline_s - time.monotonic())
      ready = multiprocessing.connection.wait([worker.connection for worker in busy], timeout=wait_s)
      for position, worker in enumerate(workers):
        if worker.task_index is None:
          continue
        index = worker.task_index
        if worker.connection in ready:
          try:
            _, succeeded, value = worker.connection.recv()
          except (EOFError, OSError):
            logging.warning("pool: the worker running task %d died; worker replaced", index)
            results[index] = on_failure(tasks[index])
            workers[position] = _replace(worker, context, fn)
          else:
            if not succeeded:
              raise RuntimeError(f"pool: task {index} raised in a worker: {value}")
            results[index] = value
            worker.task_index = None
          remaining -= 1
        elif time.monotonic() - worker.started_at > deadline_s:
          logging.warning("pool: task %d passed its %.1f s deadline; worker killed", index, deadline_s)
          results[index] = on_failure(tasks[index])
          workers[position] = _replace(worker, context, fn)
          remaining -= 1
  finally:
    for worker in workers:
      _stop(worker)
  return results


def _serve(fn: Callable[[Any], Any], connection: multiprocessing.connection.Connection) -> None:
  """Worker loop: (index, task) in, (index, succeeded, result or error text) out, until _STOP."""
  while True:
    message = connection.recv()
    if message is _STOP:
      return
    index, task = message
    try:
      connection.send((index, True, fn(task)))
    except Exception as e:  # reported to the parent, which raises it there
      connection.send((index, False, f"{type(e).__name__}: {e}"))


def _start(context: Any, fn: Callable[[Any], Any]) -> _Worker:
  parent_end, child_end = context.Pipe()
  process = context.Process(target=_serve, args=(fn, child_end), daemon=True)
  process.start()
  child_end.close()
  return _Worker(process, parent_end)


def _replace(worker: _Worker, context: Any, fn: Callable[[Any], Any]) -> _Worker:
  worker.process.kill()
  worker.process.join()
  worker.connection.close()
  return _start(context, fn)


def _stop(worker: _Worker) -> None:
  try:
    worker.connection.send(_STOP)
  except OSError:
    pass  # already dead; nothing to tell it
  worker.process.join(timeout=1.0)
  if worker.process.is_alive():
    worker.process.kill()
    worker.process.join()
  worker.connection.close()
