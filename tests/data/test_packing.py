"""Packing: every kept step supervised once per epoch, exactly N per update, at the right position."""
from __future__ import annotations

import collections
from types import SimpleNamespace

import numpy as np
import pytest

from lr_jax.data.packing import PackedUpdates, PackingConfig, plan_updates

K = 3


def make_records(num_kept, seed=0, vocab=100):
  """Synthetic trajectories with the given kept-step counts (prompt 2-6, completion >= kept + 2)."""
  rng = np.random.default_rng(seed)
  out = []
  for i, k in enumerate(num_kept):
    p, c = int(rng.integers(2, 7)), int(k + rng.integers(2, 8))
    steps = np.sort(rng.choice(c, size=k, replace=False)).astype(np.int32)
    ids = rng.integers(0, vocab, (k, K)).astype(np.int32)
    w = rng.random((k, K)).astype(np.float32)
    ids[:, -1], w[:, -1] = -1, 0.0  # an unused slot, as the sample store writes it
    w /= w.sum(1, keepdims=True)
    out.append(SimpleNamespace(problem_id=f"p{i}", prompt_ids=rng.integers(0, vocab, p).astype(np.int32),
                               completion_ids=rng.integers(0, vocab, c).astype(np.int32),
                               steps=steps, target_ids=ids, target_weights=w))
  return out


def supervised(packed):
  """(update, record index, step t, row tokens up to the position, target ids, weights) per used slot."""
  seen = []
  for u in range(len(packed)):
    b = packed.batch(u)
    for m in range(b["sup_mask"].shape[0]):
      for s in np.flatnonzero(b["sup_mask"][m]):
        row, pos = b["sup_row"][m, s], b["sup_pos"][m, s]
        seen.append((u, b["tokens"][m, row, :pos + 1], b["target_ids"][m, s], b["target_weights"][m, s],
                     b["mask"][m, row]))
  return seen


@pytest.mark.parametrize("order", ["trajectories", "steps"])
def test_each_kept_step_is_supervised_once_at_the_position_that_predicts_it(order):
  records = make_records([5, 1, 9, 3, 0, 7, 2])
  packed = PackedUpdates(records, PackingConfig(steps_per_update=4, micro_batches=2, length_multiple=8, order=order))
  expected = collections.Counter()
  for r in records:
    for j, t in enumerate(r.steps):
      prefix = np.concatenate([r.prompt_ids, r.completion_ids[:t]])
      expected[(prefix.tobytes(), np.where(r.target_weights[j] > 0, r.target_ids[j], 0).tobytes(),
                r.target_weights[j].tobytes())] += 1
  got = collections.Counter()
  for _, prefix, ids, w, row_mask in supervised(packed):
    assert row_mask[:len(prefix)].all()
    got[(prefix.tobytes(), ids.tobytes(), w.tobytes())] += 1
  assert got == expected and sum(got.values()) == 27


@pytest.mark.parametrize("order", ["trajectories", "steps"])
def test_every_update_but_the_last_supervises_exactly_steps_per_update(order):
  packed = PackedUpdates(make_records([5, 1, 9, 3, 7, 2]),
                         PackingConfig(steps_per_update=8, micro_batches=2, order=order))
  counts = [packed.batch(u)["sup_mask"].sum(axis=1).tolist() for u in range(len(packed))]
  assert counts == [[4, 4], [4, 4], [4, 4], [3, 0]]  # 27 steps: 3 full updates, then 3


def test_a_trajectory_straddling_updates_appears_in_both_with_disjoint_steps():
  records = make_records([6, 6])
  cfg = PackingConfig(steps_per_update=4, shuffle_seed=None, length_multiple=1)
  plan = plan_updates([6, 6], cfg)
  assert [[tuple(s) for s in u[0]] for u in plan] == [[(0, (0, 1, 2, 3))], [(0, (4, 5)), (1, (0, 1))],
                                                      [(1, (2, 3, 4, 5))]]
  packed = PackedUpdates(records, cfg)
  second = packed.batch(1)
  r0 = records[0]
  # row 0 of update 1 is record 0 truncated after the input of its last kept step
  assert second["mask"][0, 0].sum() == len(r0.prompt_ids) + r0.steps[5]
  assert second["sup_pos"][0, :2].tolist() == (len(r0.prompt_ids) + r0.steps[4:6] - 1).tolist()
  assert second["sup_row"][0].tolist() == [0, 0, 1, 1]


def test_steps_order_spreads_an_update_over_trajectories_and_truncates_each_row():
  """'steps' shuffles the kept steps themselves (the original's sampler): an update draws from many
  trajectories, each row ends at the input of its last step in the update, and the rest of its kept
  steps are left to other updates."""
  kept = [25] * 40
  by_steps = plan_updates(kept, PackingConfig(steps_per_update=16, order="steps"))
  by_trajectories = plan_updates(kept, PackingConfig(steps_per_update=16))
  rows = lambda plan: np.mean([len(u[0]) for u in plan[:-1]])
  assert rows(by_trajectories) < 2.5 and rows(by_steps) > 10
  assert plan_updates(kept, PackingConfig(steps_per_update=16, order="steps")) == by_steps  # seeded
  assert plan_updates(kept, PackingConfig(steps_per_update=16, order="steps", shuffle_seed=1)) != by_steps
  records = make_records([6, 9, 4])
  packed = PackedUpdates(records, PackingConfig(steps_per_update=4, order="steps", length_multiple=1))
  for u in range(len(packed)):
    b = packed.batch(u)
    for row, seg in enumerate(packed.plan[u][0]):
      r = records[seg.record]
      assert b["mask"][0, row].sum() == len(r.prompt_ids) + r.steps[seg.steps[-1]]
      slots = np.flatnonzero(b["sup_mask"][0] & (b["sup_row"][0] == row))
      assert b["sup_pos"][0, slots].tolist() == (len(r.prompt_ids) + r.steps[list(seg.steps)] - 1).tolist()


def test_step_zero_is_predicted_by_the_last_prompt_position():
  r = make_records([1])[0]
  r.steps = np.array([0], np.int32)
  b = PackedUpdates([r], PackingConfig(steps_per_update=2, length_multiple=1)).batch(0)
  assert b["sup_pos"][0, 0] == len(r.prompt_ids) - 1 and b["tokens"].shape[-1] == len(r.prompt_ids)


def test_shapes_are_bucketed_and_padding_is_masked():
  packed = PackedUpdates(make_records([1] * 5), PackingConfig(steps_per_update=8, row_multiple=2, length_multiple=16))
  b = packed.batch(0)
  assert b["tokens"].shape[1] == 8 and b["tokens"].shape[2] % 16 == 0  # 5 rows -> 8
  assert not b["mask"][0, 5:].any() and (b["tokens"][~b["mask"]] == 0).all()
  assert b["positions"][0, 0, :4].tolist() == [0, 1, 2, 3]
  assert b["target_ids"].shape == (1, 8, K) and b["target_ids"].dtype == np.int32
  small = PackedUpdates(make_records([1]), PackingConfig(steps_per_update=8, row_multiple=2)).batch(0)
  assert small["tokens"].shape[1] == 2


def test_shuffle_is_seeded_per_epoch_and_epochs_cover_all_steps():
  records = make_records([2, 3, 1, 4, 2, 5])
  cfg = PackingConfig(steps_per_update=4, epochs=2, shuffle_seed=3)
  plan, again = plan_updates([len(r.steps) for r in records], cfg), plan_updates([2, 3, 1, 4, 2, 5], cfg)
  assert plan == again
  order = [seg.record for u in plan for m in u for seg in m]
  per_epoch = len(plan) // 2
  first = [seg.record for u in plan[:per_epoch] for m in u for seg in m]
  assert sorted(set(first)) == list(range(6)) and order[:len(first)] != order[len(first):]
  assert plan != plan_updates([2, 3, 1, 4, 2, 5], PackingConfig(steps_per_update=4, epochs=2, shuffle_seed=4))


def test_sample_store_records_pack(tmp_path):
  store = pytest.importorskip("lr_jax.data.store")
  r = store.TrajectoryRecord(
      problem_id="p0", prompt_ids=[5, 6, 7], completion_ids=[8, 9, 10, 11], finish_reason="stop",
      steps=[1, 3], kl=[0.5, 0.9], target_ids=[[9, store.TARGET_PAD_ID], [11, 4]],
      target_weights=[[1.0, 0.0], [0.75, 0.25]], dropped_mass=[0.0, 0.0], num_target_tokens=[1, 2],
      all_kl=[0.1, 0.5, 0.2, 0.9], expert_top1=[8, 9, 10, 11], amateur_top1=[1, 2, 3, 4])
  b = PackedUpdates([r], PackingConfig(steps_per_update=2, length_multiple=1), valid_vocab=16).batch(0)
  assert b["tokens"][0, 0].tolist() == [5, 6, 7, 8, 9, 10] and b["sup_pos"][0].tolist() == [3, 5]
  assert b["target_ids"][0].tolist() == [[9, 0], [11, 4]]


@pytest.mark.parametrize("change,message", [
    (dict(steps=np.array([3, 2], np.int32)), "steps must increase strictly"),
    (dict(prompt_ids=np.zeros(0, np.int32)), "prompt_ids is empty"),
    (dict(target_ids=np.full((2, K), 500, np.int32)), r"target_ids with weight > 0 must be in \[0, valid_vocab=100\)"),
    (dict(target_weights=np.ones((2, K + 1), np.float32)), r"must both be \[k=2, K\]"),
])
def test_bad_records_are_refused_in_one_line_naming_the_record(change, message):
  r = make_records([2])[0]
  for k, v in change.items():
    setattr(r, k, v)
  with pytest.raises(ValueError, match=message) as err:
    PackedUpdates([r], PackingConfig(), valid_vocab=100)
  assert "record 0 ('p0')" in str(err.value) and "\n" not in str(err.value)


def test_bad_configs_are_refused():
  with pytest.raises(ValueError, match="must divide"):
    PackingConfig(steps_per_update=16, micro_batches=3)
  with pytest.raises(ValueError, match="PackingConfig.order: expected one of trajectories, steps, got 'step'"):
    PackingConfig(order="step")
  with pytest.raises(ValueError, match="none of the 1 records has a kept step"):
    PackedUpdates(make_records([0]), PackingConfig())
