"""Statistics of a sampling run: how expert-amateur KL is spread over steps and what the kept steps hold.

The LightReasoner paper reports, for Qwen2.5-Math-1.5B vs Qwen2.5-0.5B, 59.1% of steps with KL in
[0, 0.1), about 20% above beta = 0.4, and a mean KL of 0.166 where the two models' top-1 tokens agree
against 1.99 where they differ; `compute_stats` measures the same quantities for a run.

Step counts: `total_steps` counts every scored step; the KL statistics use the steps whose KL is
known (all of them for our own runs, the kept ones only for imported original data), and the top-1
statistics the steps where both top-1 tokens are known.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lr_jax.data.store import TrajectoryRecord
from lr_jax.files import write_file_atomic

KL_BIN_WIDTH = 0.1
KL_HIST_MAX = 5.0
KL_EDGES = np.arange(round(KL_HIST_MAX / KL_BIN_WIDTH) + 1) * KL_BIN_WIDTH  # [0, 0.1, ..., 5.0]
STATS_FILE = "stats.json"
KL_HIST_FILE = "kl_hist.png"


def compute_stats(records: Iterable[TrajectoryRecord], beta: float, beta_inclusive: bool = False) -> dict[str, Any]:
  """Sampling statistics of `records` (JSON-ready; None where a quantity has no steps to average).

  Keys:
    beta, beta_inclusive, num_records, num_problems, total_steps, kept_steps, kept_ratio (kept / total);
    num_steps_with_kl; kl_histogram: {edges: [0, 0.1, ..., 5], counts: 50 bins [e_i, e_i+1) and an
      overflow bin [5, inf) last; negative rounding noise counts in the first bin};
    share_kl_below_0.1 (KL < 0.1), share_kl_above_beta (KL > beta, or >= with `beta_inclusive`, the
    selection rule), over steps with known KL;
    mean_kl_top1_agree / mean_kl_top1_differ and num_steps_top1_agree / num_steps_top1_differ;
    kept_per_problem: {mean, median, histogram: histogram[j] = problems with j kept steps};
    share_single_token_targets: kept steps whose alpha mask holds one token;
    dropped_mass: {mean, max} over kept steps.
  """
  records = list(records)
  all_kl = _concat([r.all_kl for r in records], np.float64)
  expert_top1 = _concat([r.expert_top1 for r in records], np.int64)
  amateur_top1 = _concat([r.amateur_top1 for r in records], np.int64)
  num_target_tokens = _concat([r.num_target_tokens for r in records], np.int64)
  dropped_mass = _concat([r.dropped_mass for r in records], np.float64)

  known_kl = np.isfinite(all_kl)
  kl = all_kl[known_kl]
  bins = np.clip(np.searchsorted(KL_EDGES, kl, side="right") - 1, 0, len(KL_EDGES) - 1)
  both_top1 = known_kl & (expert_top1 >= 0) & (amateur_top1 >= 0)
  agree = both_top1 & (expert_top1 == amateur_top1)
  differ = both_top1 & (expert_top1 != amateur_top1)

  kept_by_problem: dict[str, int] = {}
  for record in records:
    kept_by_problem[record.problem_id] = kept_by_problem.get(record.problem_id, 0) + record.num_kept
  kept_per_problem = np.array(list(kept_by_problem.values()), np.int64)
  total_steps = sum(r.num_steps for r in records)
  kept_steps = int(kept_per_problem.sum())

  return {
      "beta": float(beta),
      "beta_inclusive": bool(beta_inclusive),
      "num_records": len(records),
      "num_problems": len(kept_by_problem),
      "total_steps": total_steps,
      "kept_steps": kept_steps,
      "kept_ratio": kept_steps / total_steps if total_steps else None,
      "num_steps_with_kl": int(kl.size),
      "kl_histogram": {
          "edges": KL_EDGES.tolist(),
          "counts": np.bincount(bins, minlength=len(KL_EDGES)).tolist(),
      },
      "share_kl_below_0.1": _mean(kl < KL_BIN_WIDTH),
      "share_kl_above_beta": _mean(kl >= beta if beta_inclusive else kl > beta),
      "mean_kl_top1_agree": _mean(all_kl[agree]),
      "mean_kl_top1_differ": _mean(all_kl[differ]),
      "num_steps_top1_agree": int(agree.sum()),
      "num_steps_top1_differ": int(differ.sum()),
      "kept_per_problem": {
          "mean": _mean(kept_per_problem),
          "median": float(np.median(kept_per_problem)) if kept_per_problem.size else None,
          "histogram": np.bincount(kept_per_problem).tolist(),
      },
      "share_single_token_targets": _mean(num_target_tokens == 1),
      "dropped_mass": {
          "mean": _mean(dropped_mass),
          "max": float(dropped_mass.max()) if dropped_mass.size else None,
      },
  }


def write_stats(stats: dict[str, Any], out_dir: str | os.PathLike) -> None:
  """Writes kl_hist.png (the KL histogram, beta marked), then stats.json, into out_dir, each
  atomically: stats.json, which tells the sample stage it is done, comes last."""
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  write_file_atomic(os.path.join(out_dir, KL_HIST_FILE), _kl_histogram_png(stats))
  text = json.dumps(stats, indent=1, sort_keys=True) + "\n"
  write_file_atomic(os.path.join(out_dir, STATS_FILE), text.encode("utf-8"))


def _kl_histogram_png(stats: dict[str, Any]) -> bytes:
  edges = np.asarray(stats["kl_histogram"]["edges"])
  counts = np.asarray(stats["kl_histogram"]["counts"])
  figure = Figure(figsize=(8, 4.5))
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  # Bar i starts at edges[i]; the last, the overflow bin, is drawn as one more bin past 5.
  axes.bar(edges, counts, width=KL_BIN_WIDTH, align="edge", color="tab:blue", edgecolor="white")
  axes.axvline(stats["beta"], color="tab:red", linestyle="--", label=f"beta = {stats['beta']:g}")
  whole = list(range(int(KL_HIST_MAX)))
  axes.set_xticks(whole + [KL_HIST_MAX + KL_BIN_WIDTH / 2], [str(i) for i in whole] + [f">={KL_HIST_MAX:g}"])
  axes.yaxis.set_major_locator(MaxNLocator(integer=True))
  axes.set_xlabel("KL(expert || amateur) per step")
  axes.set_ylabel("steps")
  below, above = stats["share_kl_below_0.1"], stats["share_kl_above_beta"]
  axes.set_title(f"{stats['num_steps_with_kl']} steps: {_percent(below)} in [0, 0.1), "
                 f"{_percent(above)} above beta; {stats['kept_steps']} kept")
  axes.legend()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
  return buffer.getvalue()


def _concat(arrays: list[np.ndarray], dtype) -> np.ndarray:
  return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)


def _mean(values: np.ndarray) -> float | None:
  return float(np.mean(values)) if values.size else None


def _percent(share: float | None) -> str:
  return "n/a" if share is None else f"{100 * share:.1f}%"
