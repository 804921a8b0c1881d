"""Packed distillation batches: one row per trajectory, each update supervising exactly N kept steps.

A trajectory is `prompt_ids [P] + completion_ids [C]` with kept steps `t` (ascending); step t's target
is the distribution of completion token t given `prompt + completion[:t]`, so the causal hidden state
at row position `P + t - 1` predicts it (t = 0: the last prompt position). One forward over the
trajectory therefore serves all its kept steps, where the original code ran one padded prefix per
step. Rows are right-padded: supervised positions are gathered explicitly, so padding never shifts
them (the original read logits at a fixed position of right-padded prefixes, which is wrong for all
but the longest prefix of a batch).

Per epoch the kept steps form one stream (seeded shuffle), and update u supervises steps
`[u * N, (u + 1) * N)` of it, N = `steps_per_update`; the last update of an epoch may supervise
fewer. `order` says how the stream is shuffled:
  'trajectories' (default) shuffles the trajectories and lays each one's kept steps end to end, so an
    update holds the consecutive steps of one or two trajectories (one row each: the fewest tokens);
  'steps' shuffles the kept steps themselves, as the original's trainer samples its (prefix, target)
    pairs, so an update holds ~N steps of ~N different trajectories (up to N rows: more tokens a step).
Each update is split into `micro_batches` chunks of N / micro_batches steps of the stream. A chunk
holds one row per trajectory it has steps of, truncated after the input of its last step there, with
only that chunk's steps in the supervision list: the trajectory's other kept steps are masked out, and
every kept step counts exactly once per epoch.

Shapes (M micro-batches, R rows, L length, S = N / M supervision slots, K target slots), all numpy:
  tokens int32 [M, R, L], positions int32 [M, R, L], mask bool [M, R, L] (False = padding);
  sup_row int32 [M, S], sup_pos int32 [M, S]: the row and position whose hidden state is supervised;
  sup_mask bool [M, S] (False = unused slot); target_ids int32 [M, S, K]; target_weights f32 [M, S, K].
R is the next power of two of the rows a chunk needs (at most S, then rounded up to `row_multiple`)
and L the longest row rounded up to `length_multiple`, so a run compiles a handful of shapes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, NamedTuple

import numpy as np

ORDERS = ("trajectories", "steps")


@dataclasses.dataclass(frozen=True)
class PackingConfig:
  """steps_per_update: kept steps per optimizer update; micro_batches: gradient-accumulation chunks
  (must divide steps_per_update); row_multiple: rows per micro-batch are a multiple of this (the
  data-parallel ways); length_multiple: rows are padded to a multiple of this; shuffle_seed: None keeps
  the records' order; epochs: passes over the records; pad_id: token id in padding slots; order: what
  the seeded shuffle permutes, 'trajectories' or 'steps' (module docstring)."""
  steps_per_update: int = 16
  micro_batches: int = 1
  row_multiple: int = 1
  length_multiple: int = 64
  shuffle_seed: int | None = 0
  epochs: int = 1
  pad_id: int = 0
  order: str = "trajectories"

  def __post_init__(self):
    if self.steps_per_update < 1 or self.micro_batches < 1 or self.steps_per_update % self.micro_batches:
      raise ValueError(f"PackingConfig: micro_batches={self.micro_batches} must divide "
                       f"steps_per_update={self.steps_per_update} (both >= 1)")
    for name in ("row_multiple", "length_multiple", "epochs"):
      if getattr(self, name) < 1:
        raise ValueError(f"PackingConfig.{name}: expected >= 1, got {getattr(self, name)}")
    if self.order not in ORDERS:
      raise ValueError(f"PackingConfig.order: expected one of {', '.join(ORDERS)}, got {self.order!r}")

  @property
  def steps_per_micro(self) -> int:
    return self.steps_per_update // self.micro_batches


class Segment(NamedTuple):
  """Kept steps `record.steps[i] for i in steps` (ascending indices) of record number `record`,
  supervised in one micro-batch."""
  record: int
  steps: tuple[int, ...]


def plan_updates(num_kept: list[int], config: PackingConfig) -> list[list[list[Segment]]]:
  """The segments of every update: `plan[u][m]` lists micro-batch m's segments (possibly none).

  num_kept[i] is record i's number of kept steps; records with none are skipped.
  """
  num_kept = np.asarray(num_kept, np.int64).reshape(-1)
  starts = np.cumsum(num_kept) - num_kept
  record_of = np.repeat(np.arange(len(num_kept)), num_kept)  # stream entry -> (record, index of its step)
  index_of = np.arange(len(record_of)) - np.repeat(starts, num_kept)
  chunk = config.steps_per_micro
  plan: list[list[list[Segment]]] = []
  for epoch in range(config.epochs):
    stream = np.arange(len(record_of))
    if config.shuffle_seed is not None:
      rng = np.random.default_rng((config.shuffle_seed, epoch))
      if config.order == "trajectories":
        order = rng.permutation(len(num_kept))
        stream = np.concatenate([np.arange(starts[i], starts[i] + num_kept[i]) for i in order] + [stream[:0]])
      else:
        stream = rng.permutation(len(record_of))
    chunks = [_segments(record_of[part], index_of[part]) for part in np.split(stream, range(chunk, len(stream), chunk))]
    if len(stream):
      chunks += [[] for _ in range(-len(chunks) % config.micro_batches)]
      plan += [chunks[j:j + config.micro_batches] for j in range(0, len(chunks), config.micro_batches)]
  return plan


def _segments(records: np.ndarray, indices: np.ndarray) -> list[Segment]:
  """One segment per record of a chunk, in order of first appearance, its step indices ascending."""
  grouped: dict[int, list[int]] = {}
  for r, i in zip(records.tolist(), indices.tolist()):
    grouped.setdefault(r, []).append(i)
  return [Segment(r, tuple(sorted(steps))) for r, steps in grouped.items()]


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


class PackedUpdates:
  """Random access to the packed batches of a list of trajectory records.

  Records are any objects with `prompt_ids`, `completion_ids`, `steps`, `target_ids` and
  `target_weights` (`lr_jax.data.store.TrajectoryRecord`); target slots with weight 0 may hold any id
  (the store uses -1). `batch(u)` is a pure function of (records, config, u): a resumed run asks for
  update u and gets exactly the batch an uninterrupted run saw.
  """

  def __init__(self, records: Iterable[Any], config: PackingConfig, valid_vocab: int | None = None):
    self.records = list(records)
    self.config = config
    for i, r in enumerate(self.records):
      _check_record(r, i, valid_vocab)
    kept = [len(r.steps) for r in self.records]
    if not any(kept):
      raise ValueError(f"PackedUpdates: none of the {len(self.records)} records has a kept step")
    self.top_k = max(np.shape(r.target_ids)[1] for r, k in zip(self.records, kept) if k)
    self.plan = plan_updates(kept, config)

  def __len__(self) -> int:
    return len(self.plan)

  def batch(self, update: int) -> dict[str, np.ndarray]:
    """The arrays of update `update` (see the module docstring for names, shapes and dtypes)."""
    if not 0 <= update < len(self.plan):
      raise IndexError(f"update {update} out of range: the plan has {len(self.plan)} updates")
    cfg = self.config
    micro = self.plan[update]
    m, s, k = cfg.micro_batches, cfg.steps_per_micro, self.top_k
    need_rows = max(len(segs) for segs in micro)
    rows = _round_up(min(1 << (need_rows - 1).bit_length(), s), cfg.row_multiple)
    length = _round_up(max(self._row_length(seg) for segs in micro for seg in segs), cfg.length_multiple)
    out = {
        "tokens": np.full((m, rows, length), cfg.pad_id, np.int32),
        "positions": np.zeros((m, rows, length), np.int32),
        "mask": np.zeros((m, rows, length), bool),
        "sup_row": np.zeros((m, s), np.int32),
        "sup_pos": np.zeros((m, s), np.int32),
        "sup_mask": np.zeros((m, s), bool),
        "target_ids": np.zeros((m, s, k), np.int32),
        "target_weights": np.zeros((m, s, k), np.float32),
    }
    for j, segs in enumerate(micro):
      slot = 0
      for row, seg in enumerate(segs):
        r = self.records[seg.record]
        n = self._row_length(seg)
        ids = np.concatenate([np.asarray(r.prompt_ids), np.asarray(r.completion_ids)])[:n]
        out["tokens"][j, row, :n] = ids
        out["positions"][j, row, :n] = np.arange(n)
        out["mask"][j, row, :n] = True
        picked = list(seg.steps)
        steps = np.asarray(r.steps)[picked]
        span = slice(slot, slot + len(steps))
        out["sup_row"][j, span] = row
        out["sup_pos"][j, span] = len(r.prompt_ids) + steps - 1
        out["sup_mask"][j, span] = True
        w = np.asarray(r.target_weights, np.float32)[picked]
        out["target_weights"][j, span, :w.shape[1]] = w
        out["target_ids"][j, span, :w.shape[1]] = np.where(w > 0, np.asarray(r.target_ids)[picked], 0)
        slot += len(steps)
    return out

  def _row_length(self, seg: Segment) -> int:
    """Tokens the row needs: through the input of the segment's last step."""
    r = self.records[seg.record]
    return len(r.prompt_ids) + int(r.steps[seg.steps[-1]])


def _check_record(r: Any, index: int, valid_vocab: int | None) -> None:
  name = f"record {index} ({getattr(r, 'problem_id', '?')!r})"
  steps = np.asarray(r.steps)
  k = len(steps)
  if len(r.prompt_ids) < 1:
    raise ValueError(f"{name}: prompt_ids is empty; step 0 needs at least one prompt token")
  if k and (steps[0] < 0 or steps[-1] > len(r.completion_ids) or np.any(np.diff(steps) <= 0)):
    raise ValueError(f"{name}: steps must increase strictly within [0, len(completion_ids)="
                     f"{len(r.completion_ids)}], got {steps.tolist()}")
  ids, w = np.asarray(r.target_ids), np.asarray(r.target_weights)
  if ids.shape != w.shape or ids.ndim != 2 or ids.shape[0] != k:
    raise ValueError(f"{name}: target_ids {ids.shape} and target_weights {w.shape} must both be [k={k}, K]")
  used = w > 0
  if np.any(ids[used] < 0) or (valid_vocab is not None and np.any(ids[used] >= valid_vocab)):
    raise ValueError(f"{name}: target_ids with weight > 0 must be in [0, valid_vocab={valid_vocab}), "
                     f"got range [{ids[used].min()}, {ids[used].max()}]")
