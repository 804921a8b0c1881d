"""`report.md` with plots, built only from a run's artifacts (stats, metrics, eval results, timings)."""
from __future__ import annotations

import os
import shutil
from typing import Any

from matplotlib.figure import Figure

from lr_jax.files import write_text_atomic
from lr_jax.metrics import read_metrics
from lr_jax.stages import common


def _plot(path: str, draw) -> str:
  fig = Figure(figsize=(6, 3.2), dpi=110)
  ax = fig.add_subplot(1, 1, 1)
  draw(ax)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path)
  return path


def _fmt(x: Any, pct: bool = False) -> str:
  if x is None:
    return "n/a"
  return f"{100 * x:.1f}%" if pct else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _sample_section(workdir: common.Workdir, lines: list[str]) -> dict | None:
  stats_path = os.path.join(workdir.sample_stats, "stats.json")
  if not os.path.isfile(stats_path):
    return None
  s = common.read_json(stats_path)
  above = "≥" if s.get("beta_inclusive") else ">"
  hist_src = os.path.join(workdir.sample_stats, "kl_hist.png")
  lines += ["## Sampling", "",
            f"- trajectories: {s['num_records']}, scored steps: {s['total_steps']}, "
            f"kept steps (KL {above} β = {s['beta']}): {s['kept_steps']} ({_fmt(s['kept_ratio'], True)})",
            f"- share of steps with KL in [0, 0.1): {_fmt(s['share_kl_below_0.1'], True)} (paper: 59.1%); "
            f"KL {above} β: {_fmt(s['share_kl_above_beta'], True)} (paper: ~20%)",
            f"- mean KL when the top-1 tokens agree: {_fmt(s['mean_kl_top1_agree'])} (paper: 0.166), "
            f"differ: {_fmt(s['mean_kl_top1_differ'])} (paper: 1.99)",
            f"- kept steps per problem: mean {_fmt(s['kept_per_problem']['mean'])}, "
            f"single-token targets: {_fmt(s['share_single_token_targets'], True)}, "
            f"mean dropped target mass: {_fmt(s['dropped_mass']['mean'])}", ""]
  if os.path.isfile(hist_src):
    os.makedirs(workdir.plots, exist_ok=True)
    shutil.copyfile(hist_src, os.path.join(workdir.plots, "kl_hist.png"))
    lines += ["![KL histogram](plots/kl_hist.png)", ""]
  return s


def _distill_section(workdir: common.Workdir, lines: list[str], stats: dict | None) -> None:
  # A resumed run logs the updates after its last checkpoint twice: the later line wins.
  by_step = {m["step"]: m for m in read_metrics(workdir.root, "distill") if "loss" in m}
  rows = [by_step[k] for k in sorted(by_step)]
  if not rows:
    return
  steps = [m["step"] for m in rows]
  losses = [m["loss"] for m in rows]
  _plot(os.path.join(workdir.plots, "loss.png"),
        lambda ax: (ax.plot(steps, losses), ax.set_xlabel("update"), ax.set_ylabel("KL(target ‖ model)"),
                    ax.set_title("distillation loss")))
  supervised = sum(m.get("supervised_steps", 0) for m in rows)
  tenth = max(len(losses) // 10, 1)  # one update's loss is noisy: means of the first and last tenth
  lines += ["## Distillation", "",
            f"- updates: {len(rows)}, mean loss of the first / last {tenth} update(s): "
            f"{sum(losses[:tenth]) / tenth:.4f} / {sum(losses[-tenth:]) / tenth:.4f}, "
            f"supervised steps: {int(supervised)}"]
  if stats is not None and stats.get("total_steps") and stats.get("kept_steps"):
    trained = int(min(stats["kept_steps"], supervised))  # an epoch supervises every kept step once
    lines.append(f"- token efficiency: {trained} distinct positions trained, of the "
                 f"{stats['total_steps']} tokens that full-trajectory SFT on the same problems would train "
                 f"({trained / stats['total_steps']:.1%}); each supervised "
                 f"{supervised / max(trained, 1):.1f} times on average over the updates")
  lines += ["", "![loss](plots/loss.png)", ""]


def _comparison_matches(comp: dict, runs: dict) -> bool:
  """Whether `comparison.json` compares the base and tuned results now on disk (same accuracies)."""
  if not comp or "base" not in runs or "tuned" not in runs:
    return False
  for b, row in comp.get("benchmarks", {}).items():
    for name in ("base", "tuned"):
      result = runs[name]["benchmarks"].get(b)
      if result is None or abs(result["accuracy"] - row[f"{name}_accuracy"]) > 1e-9:
        return False
  return True


def _eval_section(workdir: common.Workdir, lines: list[str]) -> None:
  comp_path = os.path.join(workdir.eval, "comparison.json")
  runs = {name: common.read_json(os.path.join(workdir.eval, name, "results.json"))
          for name in ("amateur", "base", "tuned") if os.path.isfile(os.path.join(workdir.eval, name, "results.json"))}
  if not runs:
    return
  comp = common.read_json(comp_path) if os.path.isfile(comp_path) else {}
  if not _comparison_matches(comp, runs):  # e.g. one model re-evaluated since: its delta would mislead
    comp = {}
  names = sorted({b for r in runs.values() for b in r["benchmarks"]})
  header = "| benchmark | " + " | ".join(runs) + (" | Δ (tuned − base) | p (McNemar) |" if comp else " |")
  lines += ["## Evaluation (pass@1, greedy)", "", header, "|" + "---|" * (header.count("|") - 1)]
  for b in names + ["average"]:
    accs = [(runs[r]["benchmarks"].get(b, {}).get("accuracy") if b != "average" else runs[r].get("average"))
            for r in runs]
    row = f"| {b} | " + " | ".join(_fmt(a, True) for a in accs)
    if comp:
      c = comp["benchmarks"].get(b, {}) if b != "average" else comp["average"]
      delta, p = c.get("delta"), c.get("mcnemar_p")
      row += f" | {'n/a' if delta is None else f'{100 * delta:+.1f} points'} | {'n/a' if p is None else f'{p:.3g}'}"
    lines.append(row + " |")
  lines.append("")
  fig_names = list(runs)

  def draw(ax):
    width = 0.8 / len(fig_names)
    for j, r in enumerate(fig_names):
      ax.bar([i + j * width for i in range(len(names))],
             [runs[r]["benchmarks"][b]["accuracy"] * 100 if b in runs[r]["benchmarks"] else float("nan")
              for b in names],  # no bar where a model has no result (a 0% bar would read as one)
             width, label=r)
    ax.set_xticks([i + width * (len(fig_names) - 1) / 2 for i in range(len(names))], names, rotation=20)
    ax.set_ylabel("accuracy (%)")
    ax.legend()

  _plot(os.path.join(workdir.plots, "accuracy.png"), draw)
  lines += ["![accuracy](plots/accuracy.png)", ""]


def _time_section(workdir: common.Workdir, lines: list[str]) -> None:
  if not os.path.isfile(workdir.timings):
    return
  saved = common.read_json(workdir.timings)
  t = {k: saved[k] for k in common.STAGE_ORDER if k in saved}
  _plot(os.path.join(workdir.plots, "time.png"),
        lambda ax: (ax.barh(list(t), list(t.values())), ax.set_xlabel("seconds")))
  lines += ["## Time per stage", "", "| stage | seconds (all invocations of this workdir) |", "|---|---|"]
  lines += [f"| {k} | {v:.1f} |" for k, v in t.items()]
  lines += ["", "![time](plots/time.png)", ""]


def _header(config, workdir: common.Workdir) -> list[str]:
  """The settings the artifacts were made with (the sample store's meta, the adapter's DONE.json),
  falling back to this invocation's config for what no artifact records yet."""
  meta_path = os.path.join(workdir.samples, "meta.json")
  meta = common.read_json(meta_path) if os.path.isfile(meta_path) else {}
  done = common.read_json(workdir.distill_done).get("settings", {}) if os.path.isfile(workdir.distill_done) else {}
  s, d = config.sample, config.distill
  lora = done.get("lora", {"rank": d.lora_rank, "alpha": d.lora_alpha, "targets": list(d.lora_targets)})
  above = "≥" if meta.get("beta_inclusive", s.beta_inclusive) else ">"
  return [f"- expert: `{meta.get('expert', config.expert)}`", f"- amateur: `{meta.get('amateur', config.amateur)}`",
          f"- dtype: {meta.get('dtype', config.dtype)}; α = {meta.get('alpha', s.alpha)}, kept where KL {above} "
          f"β = {meta.get('beta', s.beta)}, top-K = {meta.get('top_k', s.top_k)}",
          f"- LoRA r = {lora['rank']}, alpha = {lora['alpha']}, targets {', '.join(lora['targets'])}; "
          f"{done.get('updates', d.updates)} updates of {done.get('steps_per_update', d.steps_per_update)} steps "
          f"({done.get('order', 'trajectories' if done else d.order)} order), "
          f"lr {done.get('learning_rate', d.learning_rate)}"]


def build_report(config, workdir: common.Workdir) -> str:
  """The report's markdown (plots written under workdir/plots)."""
  lines = ["# LightReasoner run report", ""] + _header(config, workdir) + [""]
  stats = _sample_section(workdir, lines)
  _distill_section(workdir, lines, stats)
  _eval_section(workdir, lines)
  _time_section(workdir, lines)
  return "\n".join(lines)


def run(config, workdir: common.Workdir) -> dict:
  """Writes workdir/report.md (process 0) from the artifacts; the pipeline skips this stage when
  report.md exists and no other stage did work."""
  if common.is_main_process():
    text = build_report(config, workdir)
    write_text_atomic(workdir.report, text)
    common.log("report: %s", workdir.report)
  common.wait_for_main_process("lr_jax report: written")
  return {}
