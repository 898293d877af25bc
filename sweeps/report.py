"""Results report from an MLflow experiment: markdown tables, gains, plots, JSON.

    python sweeps/report.py --mlflow-uri sqlite:///runs/grids/cpu-fidelity/mlflow.db \\
        --experiment metaxl-transfer-cpu-fidelity --out results/

Input: the FINISHED runs of one experiment, either
- a grid (`sweeps/grid.py`, tag `role=bench`): every seed is a run; cells are the mean
  ± sample std over seeds of `best/test_f1` (test F1 at the best dev epoch), or
- a sweep (`sweeps/pairs.py`, tag `role=trial`): per (target, source, method) the best trial
  (`metaxl_core.selection`) is used (one value, no std).

Methods are named by `sweeps.methods.variant_of` (the `method` tag; `metaxl_trunc` and
`metaxl_identity` for MetaXL runs with the truncated hypergradient or the identity RTN).
With `--sweep URI EXPERIMENT` the report writes "Does the sweep pay?" (sweep_vs_default.md,
linked from report.md): each search's best
configuration (re-run over seeds by the sweep's `seeds_per_config`) against this experiment's
runs of the same method from `--default-source`, paired by seed. With `--probe URI
EXPERIMENT` it adds "Beyond the preset": a grid re-running some rows with a setting changed
(e.g. `freeze_layers: 6`), each changed setting against this experiment's runs, paired by seed.
Runs with a `grid` tag (e.g. `meta_lr=0.0001`, from a preset's
`grid`) form a sensitivity study reported on the dev split instead of the main tables.

Outputs (fixed names under --out; `<task>` is ner or sentiment):
    report.md                 tables per task, MetaXL - joint gains, links to the plots
    report.json               every cell (values per seed, mean, std, n) and gain
    <task>_bars.png           per (target, source) grouped bars, error bars = std over seeds
    <task>_gain_heatmap.png   source x target heatmap of MetaXL - joint (when >1 source)
    <task>_curves.png         dev F1 by update (mean ± std over seeds) per method, one target;
                              at epoch ends where a run of the row kept no evaluations
    <task>_curves_all.png     the same, one panel per (target, source) row (when several)
    <task>_sensitivity.png    dev F1 against the grid value (grid runs only)
    sweep_vs_default.md/.json/.png   with --sweep: "does the sweep pay?" (a dot per seed in
                              the plot); files of their own, left as they are by a rebuild
                              without --sweep
    probe_vs_preset.png       with --probe: each changed setting against the preset
Scores are shown as F1 x 100; sentiment F1 is macro-F1 (`metaxl_core.metrics`). Sentiment tables,
bars and curves also show two constant classifiers, the majority class and always positive,
scored with the same metric on the same split: `sentiment_scores` logs each split's gold label
counts (`test/n_positive`, ...), from which `baseline_scores` rebuilds their scores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from metaxl_core.atomic import write_atomic  # noqa: E402
from metaxl_core.config import TrialConfig, source_label  # noqa: E402
from metaxl_core.metrics import sentiment_scores  # noqa: E402
from metaxl_core.selection import best_trial, mean_std, paired_difference  # noqa: E402
from sweeps.methods import GAIN_VARIANTS, ordered, title_of, variant_of  # noqa: E402
from sweeps.export import search_picks  # noqa: E402
from sweeps.grid import WHERE_IT_RUNS  # noqa: E402
from sweeps.mlflow_store import latest_attempt, logged_evaluations  # noqa: E402

TASK_ORDER = ["ner", "sentiment"]
# secondary test metrics shown as extra tables when the runs logged them (final/test/...); the
# sentiment headline `f1` is macro-F1, `pos_f1` the paper's positive-class F1 (binary labels)
EXTRA_METRICS = {"sentiment": ["test/pos_f1", "test/acc"]}
# constant classifiers shown next to the methods where the runs logged their split's gold label
# counts (sentiment: `<split>/n_<label>`), scored as the runs are
BASELINES = {"majority": "majority class", "always_positive": "always positive"}


# ---------------------------------------------------------------------------- reading
def lang(name: str | None) -> str:
    """"yor" for "ner:masakhaner2:yor"; "en+kin" for a source set; "none" for no source."""
    return source_label(None if name == "none" else name)


def read_runs(client: MlflowClient, experiment_id: str) -> list[dict]:
    """FINISHED runs of the experiment as plain records."""
    records, token = [], None
    while True:
        page = client.search_runs([experiment_id], "attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        for run in page:
            tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
            role = tags.get("role")
            if role not in ("bench", "trial") or "best/test_f1" not in metrics:
                continue
            source = tags.get("source") or params.get("source") or "none"
            records.append({
                "run_id": run.info.run_id, "role": role, "trial_id": tags.get("trial_id", ""),
                "run_key": tags.get("run_key", ""), "start_time": run.info.start_time or 0,
                "task": tags.get("task") or params.get("task"),
                "target": tags.get("target") or params.get("target"),
                "source": "none" if source in ("None", "") else source,
                "method": variant_of(tags, params),
                "seed": tags.get("seed") or params.get("seed"),
                "grid": tags.get("grid", ""), "params": dict(params),
                "test_subset": tags.get("test_subset", "full"),
                "dev": float(metrics.get("best/dev_f1", float("nan"))),
                "test": float(metrics["best/test_f1"]),
                # other test metrics at the best dev epoch (bench runs log them as final/...)
                **{k[len("final/"):]: float(v) for k, v in metrics.items()
                   if k.startswith("final/test/") and k != "final/test/f1"},
                **{k: float(v) for k, v in metrics.items() if k.startswith("dev/n_")},
                # RTN runs: the last epoch's mean relative change the RTN makes (rtn/movement)
                **({"rtn_movement": float(metrics["rtn/movement"])}
                   if "rtn/movement" in metrics else {}),
            })
        token = page.token
        if not token:
            break
    records.sort(key=lambda r: (r["task"], r["target"], r["source"], r["method"], r["grid"],
                                str(r["seed"]), r["run_id"]))
    return records


def select(records: list[dict]) -> list[dict]:
    """Bench runs as they are; sweep trials: the best (`selection.best_trial`) per (task, target,
    source, method, grid). A grid run key logged twice (two processes on overlapping `--only`
    patterns) counts once, as its newest run, as in `grid.py --export-only`. Two bench runs of
    one cell and seed with different keys are an error: they differ in a setting the table
    cannot show (e.g. a preset entry's own `trial` fields), and one would silently replace the
    other."""
    bench = [r for r in records if r["role"] == "bench"]
    newest = {(r["run_key"] or r["run_id"]): r["run_id"]
              for r in sorted(bench, key=lambda r: r["start_time"])}
    kept = set(newest.values())
    bench = [r for r in bench if r["run_id"] in kept]
    seen: dict[tuple, str] = {}
    for r in bench:
        cell = (r["task"], r["target"], r["source"], r["method"], r["grid"], str(r["seed"]))
        if cell in seen:
            raise SystemExit(
                f"error: runs {seen[cell]} and {r['run_id']} are both {r['method']} "
                f"{lang(r['source'])} -> {lang(r['target'])} seed {r['seed']}"
                f"{' (' + r['grid'] + ')' if r['grid'] else ''}: one table cell cannot hold two "
                "configurations; report such runs from separate experiments (or read them "
                "from `grid.py --export-only`, which groups runs by their whole trial)")
        seen[cell] = r["run_id"]
    searches: dict[tuple, list[dict]] = {}
    for r in records:
        if r["role"] == "trial":
            searches.setdefault((r["task"], r["target"], r["source"], r["method"], r["grid"]),
                                []).append(r)
    return bench + [best_trial(searches[k], lambda r: r["dev"], lambda r: r["trial_id"])
                    for k in sorted(searches)]


# ---------------------------------------------------------------------------- aggregation
def methods_in(rows: list[dict]) -> list[str]:
    """The baselines, then the methods in table order."""
    present = {m for r in rows for m in r["cells"]}
    return [b for b in BASELINES if b in present] + ordered(present - set(BASELINES))


def title(name: str) -> str:
    """A method's or a baseline's title in tables and legends."""
    return BASELINES.get(name) or title_of(name)


def baseline_scores(record: dict, split: str) -> dict[str, dict]:
    """{baseline: `sentiment_scores`} of the BASELINES on the gold label counts the run logged
    for `split` (`<split>/n_<label>`); {} when it logged none (NER, runs from before them)."""
    prefix = f"{split}/n_"
    counts = {k[len(prefix):]: int(v) for k, v in record.items() if k.startswith(prefix)}
    if not counts:
        return {}
    labels = sorted(counts)
    gold = [label for label in labels for _ in range(counts[label])]
    constant = {"majority": max(labels, key=counts.get), "always_positive": "positive"}
    return {name: sentiment_scores(gold, [label] * len(gold), labels)
            for name, label in constant.items()}


def build_tables(records: list[dict], split: str = "test") -> dict:
    """{task: [row]}; a row per (target, source) with a cell per method and per baseline (its
    distinct scores over the row's runs: one value, as the runs share the split), and for each
    MetaXL variant and control its gain over JT: difference of means, and paired over seeds.
    `split` is "test", "dev" or "test/<metric>"."""
    where, _, metric = split.partition("/")
    groups: dict[tuple, dict[str, dict]] = {}
    floors: dict[tuple, dict[str, set]] = {}
    for r in records:
        if r["grid"] or split not in r:
            continue
        key = (r["task"], r["target"], r["source"])
        groups.setdefault(key, {}).setdefault(r["method"], {})[r["seed"]] = r[split] * 100
        for name, scores in baseline_scores(r, where).items():
            floors.setdefault(key, {}).setdefault(name, set()).add(scores[metric or "f1"] * 100)
    tables: dict[str, list[dict]] = {}
    for (task, target, source), cells in sorted(groups.items()):
        row = {"target": target, "source": source,
               "cells": {**{b: mean_std(sorted(v))
                            for b, v in floors.get((task, target, source), {}).items()},
                         **{m: mean_std(list(v.values())) for m, v in cells.items()}}}
        for method in GAIN_VARIANTS:
            if method in cells and "joint" in cells:
                row.setdefault("gains", {})[method] = (row["cells"][method]["mean"]
                                                       - row["cells"]["joint"]["mean"])
                paired = paired_difference(cells[method], cells["joint"])
                if paired:
                    row.setdefault("paired", {})[method] = paired
        tables.setdefault(task, []).append(row)
    return {t: tables[t] for t in sorted(tables, key=lambda t: (t not in TASK_ORDER, t))}


def movement_tables(records: list[dict]) -> dict:
    """{task: [row]} of the RTN runs (those that logged `rtn/movement`, no grid tag): a row per
    (target, source), a cell per method: the last epoch's RTN movement ||RTN(h) - h|| / ||h||,
    mean ± std over seeds."""
    groups: dict[tuple, dict[str, list]] = {}
    for r in records:
        if r["grid"] or r.get("rtn_movement") is None:
            continue
        groups.setdefault((r["task"], r["target"], r["source"]), {}).setdefault(
            r["method"], []).append(r["rtn_movement"])
    tables: dict[str, list[dict]] = {}
    for (task, target, source), cells in sorted(groups.items()):
        tables.setdefault(task, []).append({
            "target": target, "source": source,
            "cells": {m: mean_std(v) for m, v in cells.items()}})
    return tables


def movement_lines(rows: list[dict]) -> list[str]:
    """The markdown of one task's `movement_tables` rows (3 decimals: a ratio, not F1)."""
    methods = ordered({m for r in rows for m in r["cells"]})
    fmt = {True: "{mean:.3f} ± {std:.3f}", False: "{mean:.3f}"}
    return ["RTN movement at the last epoch (mean ||RTN(h) − h|| / ||h|| on fixed source "
            "batches; 0 = identity), mean ± std over seeds:", "",
            "| row | " + " | ".join(title_of(m) for m in methods) + " |",
            "|---|" + "---|" * len(methods),
            *("| " + row_label(r) + " | " + " | ".join(
                fmt[r["cells"][m]["n"] > 1].format(**r["cells"][m]) if m in r["cells"] else "–"
                for m in methods) + " |" for r in rows), ""]


def fmt_cell(cell: dict | None) -> str:
    if cell is None:
        return "–"
    if cell["n"] > 1:
        return f"{cell['mean']:.1f} ± {cell['std']:.1f}"
    return f"{cell['mean']:.1f}"


def fmt_gain(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}"


def row_label(row: dict) -> str:
    return f"{lang(row['target'])} ← {lang(row['source'])}"


def markdown_table(rows: list[dict]) -> str:
    """Rows, an `average` row, the best mean per row in bold; a method's cell with fewer seeds
    than the fullest cell of the table says so: `(n=1)`."""
    methods = methods_in(rows)
    full = max((c["n"] for r in rows for c in r["cells"].values()), default=0)
    gains = [m for m in GAIN_VARIANTS if any(m in r.get("gains", {}) for r in rows)]
    head = ["target ← source"] + [title(m) for m in methods] + \
        [f"Δ {title_of(m)} − JT" for m in gains]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows + [average_row(rows, methods)]:
        cells = row["cells"]
        top = max((c["mean"] for c in cells.values()), default=None)
        parts = [row.get("label") or row_label(row)]
        for m in methods:
            text = fmt_cell(cells.get(m))
            if m in cells and cells[m]["values"] and cells[m]["n"] < full and m not in BASELINES:
                text += f" (n={cells[m]['n']})"
            if m in cells and cells[m]["mean"] == top:
                text = f"**{text}**"
            parts.append(text)
        parts += [fmt_gain(row.get("gains", {}).get(m)) for m in gains]
        lines.append("| " + " | ".join(parts) + " |")
    return "\n".join(lines)


def paired_table(rows: list[dict]) -> list[str]:
    """Markdown lines: each variant's test F1 gain over JT paired by seed, with its 95% CI and
    the sign-flip test's p; nothing when no row has two paired seeds."""
    variants = [m for m in GAIN_VARIANTS if any(m in r.get("paired", {}) for r in rows)]
    if not variants:
        return []
    lines = ["Gain over JT paired by seed (test F1 points): mean [95% bootstrap CI over seeds], "
             "p of an exact sign-flip test (n seeds):", "",
             "| target ← source | " + " | ".join(title_of(m) for m in variants) + " |",
             "|" + "---|" * (len(variants) + 1)]
    for row in rows:
        cells = []
        for m in variants:
            p = row.get("paired", {}).get(m)
            cells.append("–" if p is None else f"{p['mean']:+.1f} [{p['ci95'][0]:+.1f}, "
                         f"{p['ci95'][1]:+.1f}], p {p['p']:.3f} (n={p['n']})")
        lines.append(f"| {row_label(row)} | " + " | ".join(cells) + " |")
    return lines + [""]


def average_row(rows: list[dict], methods: list[str]) -> dict:
    """Mean over rows of each method's mean (only methods present in every row)."""
    cells, gains = {}, {}
    for m in methods:
        if all(m in r["cells"] for r in rows):
            cells[m] = {"mean": statistics.fmean(r["cells"][m]["mean"] for r in rows), "n": 1,
                        "std": 0.0, "values": []}
    for m in GAIN_VARIANTS:
        if all(m in r.get("gains", {}) for r in rows):
            gains[m] = statistics.fmean(r["gains"][m] for r in rows)
    return {"label": "average", "cells": cells, "gains": gains}


# ---------------------------------------------------------------------------- plots
COLORS = {"target_only": "#9e9e9e", "source_only": "#8da0cb", "joint": "#fc8d62",
          "joint_t1": "#e5c494", "metaxl": "#66c2a5", "metaxl_identity": "#1b9e77",
          "frozen_rtn": "#e78ac3", "metaxl_trunc": "#a6d854", "majority": "#525252",
          "always_positive": "#a6761d"}


def plot_bars(task: str, rows: list[dict], path: Path, metric: str = "test F1 × 100") -> None:
    methods = methods_in(rows)
    width = 0.8 / len(methods)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.2), dpi=110)
    for i, m in enumerate(methods):
        means = [r["cells"][m]["mean"] if m in r["cells"] else np.nan for r in rows]
        stds = [r["cells"][m]["std"] if m in r["cells"] else 0.0 for r in rows]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               label=title(m), color=COLORS.get(m), edgecolor=COLORS.get(m),
               hatch="//" if m in BASELINES else None, fill=m not in BASELINES)
    ax.set_xticks(x, [row_label(r) for r in rows], rotation=20 if len(rows) > 6 else 0)
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: test score at the best dev epoch (mean ± std over seeds)")
    ax.legend(fontsize=8, ncol=min(4, len(methods)), loc="upper center",
              bbox_to_anchor=(0.5, -0.12 if len(rows) <= 6 else -0.2))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # the legend sits below the axes
    plt.close(fig)


def plot_heatmap(task: str, rows: list[dict], path: Path) -> bool:
    """Source x target MetaXL - joint (test F1 points); one panel per MetaXL variant."""
    sources = sorted({lang(r["source"]) for r in rows if r.get("gains")})
    targets = sorted({lang(r["target"]) for r in rows if r.get("gains")})
    variants = [m for m in GAIN_VARIANTS if any(m in r.get("gains", {}) for r in rows)]
    if len(sources) < 2 or not variants:
        return False
    fig, axes = plt.subplots(1, len(variants), figsize=(3.2 + 1.1 * len(targets) * len(variants),
                                                        1.2 + 0.6 * len(sources)),
                             dpi=110, squeeze=False, layout="constrained")
    grids = []
    for m in variants:
        grid = np.full((len(sources), len(targets)), np.nan)
        for r in rows:
            if m in r.get("gains", {}):
                grid[sources.index(lang(r["source"])), targets.index(lang(r["target"]))] = \
                    r["gains"][m]
        grids.append(grid)
    bound = max(1.0, float(np.nanmax(np.abs(np.stack(grids)))))
    for ax, m, grid in zip(axes[0], variants, grids):
        image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if not math.isnan(v):
                ax.text(j, i, f"{v:+.1f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(targets)), targets)
        ax.set_yticks(range(len(sources)), sources)
        ax.set_xlabel("target")
        ax.set_title(f"{title_of(m)} − JT", fontsize=9)
    axes[0][0].set_ylabel("source")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="test F1 points")
    fig.suptitle(f"{task}: MetaXL gain over joint training with the same source", fontsize=9)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


EPOCH_SHARE = "share of training (epoch ends)"


def curves(client: MlflowClient, records: list[dict], task: str, target: str,
           source: str) -> tuple[dict, str]:
    """({method: {x: [dev F1 × 100 per seed]}}, x's unit) of one row: by update, from every dev
    evaluation in the runs' results.json (`evaluations`). When a run of the row has none (a
    sweep trial, or a run restored from an export made before exports kept them), every run of
    the row is drawn at its epoch ends instead, as a share of its training (epoch / epochs), so
    one row never mixes the two and methods run for different epochs stay comparable."""
    runs = [r for r in records if (r["task"], r["target"], r["source"], r["grid"]) ==
            (task, target, source, "")]
    points = {r["run_id"]: [(e["step"], e["dev/f1"])
                            for e in logged_evaluations(client, r["run_id"])] for r in runs}
    unit = "update"
    if not all(points.values()):
        unit = EPOCH_SHARE
        for r in runs:
            epochs = float(r["params"].get("epochs") or TrialConfig().epochs)
            points[r["run_id"]] = [(m.step / epochs, m.value) for m in
                                   client.get_metric_history(r["run_id"], "dev/f1")]
    out: dict[str, dict[float, list[float]]] = {}
    for r in runs:
        for x, value in points[r["run_id"]]:
            out.setdefault(r["method"], {}).setdefault(x, []).append(value * 100)
    return out, unit


def _draw_curves(ax, data: dict, floors: dict, markersize: float = 3) -> None:
    """Mean ± std over seeds of {method: {x: [values]}}, one line and band per method, and a
    level line per baseline in `floors` ({baseline: dev F1 × 100})."""
    for m in ordered(data):
        xs = sorted(data[m])
        cells = [mean_std(data[m][x]) for x in xs]
        means = np.array([c["mean"] for c in cells])
        stds = np.array([c["std"] for c in cells])
        ax.plot(xs, means, marker="o", markersize=markersize, label=title_of(m),
                color=COLORS.get(m))
        ax.fill_between(xs, means - stds, means + stds, alpha=0.15, color=COLORS.get(m))
    for name, value in floors.items():
        ax.axhline(value, linestyle="--" if name == "majority" else ":", linewidth=1.2,
                   label=title(name), color=COLORS.get(name))


def plot_curves(task: str, label: str, data: dict, unit: str, floors: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    _draw_curves(ax, data, floors)
    ax.set_xlabel(unit)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=unit != EPOCH_SHARE))
    ax.set_ylabel("dev F1 × 100")
    ax.set_title(f"{task} {label}: dev F1 by {unit} (mean ± std over seeds)", fontsize=9)
    _save_line_plot(fig, ax, path)


def plot_all_curves(task: str, panels: list[tuple[str, dict, str, dict]], path: Path) -> None:
    """One panel of dev F1 curves (mean ± std over seeds) and baselines per (target, source) row."""
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=100,
                             squeeze=False, sharey=True)
    for ax, (label, data, unit, floors) in zip(axes.flat, panels):
        _draw_curves(ax, data, floors, markersize=2)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(unit, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes[0][0].set_ylabel("dev F1 × 100")
    handles: dict = {}  # one legend entry per method over every panel
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", fontsize=8,
               ncol=min(4, len(handles)), bbox_to_anchor=(0.5, -0.02 - 0.03 * (len(handles) > 4)))
    fig.suptitle(f"{task}: dev F1 per row (mean ± std over seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _save_line_plot(fig, ax, path: Path) -> None:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def sensitivity(records: list[dict]) -> dict:
    """{task: {(target, source, method): {grid value: stats of dev F1}}} for grid runs."""
    out: dict = {}
    for r in records:
        if not r["grid"]:
            continue
        key = (r["target"], r["source"], r["method"])
        out.setdefault(r["task"], {}).setdefault(key, {}).setdefault(r["grid"], []).append(
            r["dev"] * 100)
    return {task: {key: {g: mean_std(v) for g, v in sorted(grid.items(), key=_grid_sort)}
                   for key, grid in sorted(groups.items())}
            for task, groups in out.items()}


def _grid_sort(item):
    value = item[0].split("=", 1)[-1]
    try:
        return (0, float(value), item[0])
    except ValueError:
        return (1, 0.0, item[0])


def plot_sensitivity(task: str, groups: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for (target, source, method), grid in groups.items():
        names = list(grid)
        ax.errorbar(range(len(names)), [grid[g]["mean"] for g in names],
                    yerr=[grid[g]["std"] for g in names], marker="o", capsize=3,
                    label=f"{title_of(method)} {lang(target)} ← {lang(source)}",
                    color=COLORS.get(method))
        ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("dev F1 × 100")
    ax.set_title(f"{task}: sensitivity (dev split, mean ± std over seeds)", fontsize=9)
    _save_line_plot(fig, ax, path)


# ---------------------------------------------------------------------------- does the sweep pay
SEARCHED = ("source", "rtn_width", "rtn_layer", "lr", "meta_lr")  # what a sweep chooses


def by_seed(runs: list[tuple[str, float]], what: str) -> dict[str, float]:
    """{seed: test F1 × 100}; two runs of one seed are an error (which one would count?)."""
    scores: dict[str, float] = {}
    for seed, test in runs:
        if seed in scores:
            raise SystemExit(f"error: {what} has two runs of seed {seed}")
        scores[seed] = test * 100
    return scores


def sweep_versus_default(sweep_client: MlflowClient, sweep_experiment_id: str,
                         records: list[dict], default_source: str) -> list[dict]:
    """"Does the sweep pay?": per search of the sweep's latest attempt, its pick (the export's:
    `export.search_picks`, confirmed over seeds) with that configuration's other seeds, against the
    report's own runs (no `grid` tag) of the same target and method from `default_source`.
    Test F1 × 100, paired by seed: over every seed both have, and over the re-runs only (the
    best trial's own seed won a selection on dev, so its test score leans high)."""
    sweep_id = latest_attempt(sweep_client, sweep_experiment_id)
    if sweep_id is None:
        raise SystemExit("error: the sweep experiment has no sweep attempt (no target runs)")
    runs = sweep_client.search_runs(
        [sweep_experiment_id], f"tags.sweep_id = '{sweep_id}'", max_results=50000)

    def scored(run) -> bool:
        test = run.data.metrics.get("best/test_f1")
        return run.info.status == "FINISHED" and test == test and test is not None \
            and "seed" in run.data.params

    searches: dict[str, list] = {}
    for run in runs:
        if run.data.tags.get("role") == "trial":
            tags = run.data.tags
            searches.setdefault(tags.get("search") or f"{tags['target']}|{tags['method']}",
                                []).append(run)
    picks = search_picks([r for r in runs if r.data.tags.get("role") in ("trial", "confirm")])
    rows = []
    for search, trials in sorted(searches.items()):
        target = trials[0].data.tags["target"]
        method = variant_of(trials[0].data.tags, trials[0].data.params)
        finished = [r for r in trials if scored(r)]
        if not finished:
            print(f"warning: search {search}: no finished trial, left out", file=sys.stderr)
            continue
        if search in picks:  # the export's pick: confirmed over seeds when the sweep did
            best = next(r for r in trials if r.data.tags.get("trial_id") == picks[search]["pick"])
        else:  # a sweep from before the confirmation stage (tag `search` absent)
            best = best_trial(finished, lambda r: r.data.metrics.get("best/dev_f1"),
                              lambda r: r.data.tags.get("trial_id", r.info.run_id))
        best_id = best.data.tags.get("trial_id")
        repeats = [r for r in runs if scored(r) and best_id in (  # seed_repeat: older sweeps
            r.data.tags.get("confirms_trial"), r.data.tags.get("repeats_trial"))]
        swept = by_seed([(r.data.params["seed"], r.data.metrics["best/test_f1"])
                         for r in [best, *repeats]], f"search {search}")
        default = by_seed([(r["seed"], r["test"]) for r in records
                           if r["role"] == "bench" and not r["grid"] and r["target"] == target
                           and r["method"] == method and r["source"] == default_source],
                          f"the default configuration of {lang(target)}")
        own_seed = best.data.params["seed"]
        rows.append({
            "search": search, "target": target, "method": method,
            "default_source": default_source, "trials": len(trials), "finished": len(finished),
            "best": {"trial_id": best.data.tags.get("trial_id"), "run_id": best.info.run_id,
                     "seed": own_seed, "dev": best.data.metrics["best/dev_f1"] * 100,
                     **{k: best.data.params.get(k) for k in SEARCHED}},
            "sweep": mean_std(list(swept.values())), "sweep_seeds": swept,
            "default": mean_std(list(default.values())) if default else None,
            "default_seeds": default, "paired": paired_difference(swept, default),
            "paired_reruns": paired_difference(
                {s: v for s, v in swept.items() if s != own_seed}, default)})
    return rows


def describe_config(best: dict) -> str:
    """"← en, RTN 192 after layer 10, lr 3.0e-04, meta_lr 1.0e-04" for a best trial's params."""
    layer = best.get("rtn_layer")
    where = "the last layer" if layer in (None, "None") else f"layer {layer}"
    return (f"← {lang(best['source'])}, RTN {best.get('rtn_width')} after {where}, "
            f"lr {float(best['lr']):.1e}, meta_lr {float(best['meta_lr']):.1e}")


def fmt_paired(p: dict | None) -> str:
    """"+1.2 [+0.3, +2.0], p 0.062 (n=5)", or "– (< 2 shared seeds)"."""
    if p is None:
        return "– (< 2 shared seeds)"
    return f"{p['mean']:+.1f} [{p['ci95'][0]:+.1f}, {p['ci95'][1]:+.1f}], p {p['p']:.3f} (n={p['n']})"


def sweep_pays_lines(rows: list[dict], sweep: str, plot: str) -> list[str]:
    """Markdown for `sweep_versus_default`'s rows."""
    lines = [f"## Does the sweep pay? (sweep `{sweep}`)", "",
             "Each search's best configuration (by dev F1) re-run over seeds, against the "
             "report's configuration of the same method from the default source; test F1 × 100, "
             "mean ± std (n seeds). Δ = best − default paired over the seeds both have: mean "
             "[95% bootstrap CI], sign-flip p (n). The best trial's own seed won a selection on "
             "dev, so Δ is also given over the re-runs only.", "",
             "| target | method | trials (finished) | best configuration | its test F1 | "
             "default's test F1 | Δ best − default | Δ, re-runs only |", "|" + "---|" * 8]
    for row in rows:
        default = row["default"]
        default_text = f"{fmt_cell(default)} (n={default['n']})" if default else "–"
        lines.append(f"| {lang(row['target'])} | {title_of(row['method'])} | {row['trials']} "
                     f"({row['finished']}) | {describe_config(row['best'])} | "
                     f"{fmt_cell(row['sweep'])} (n={row['sweep']['n']}) | {default_text} "
                     f"(← {lang(row['default_source'])}) | {fmt_paired(row['paired'])} | "
                     f"{fmt_paired(row['paired_reruns'])} |")
    return lines + ["", f"![does the sweep pay]({plot})", ""]


def plot_against(groups: list[tuple[str, dict, dict]], names: tuple[str, str], title: str,
                 path: Path) -> None:
    """Per group (x label, {seed: base F1}, {seed: other F1}): two bars of the means, a dot per
    seed."""
    fig, ax = plt.subplots(figsize=(max(5.0, 2.2 * len(groups) + 1.5), 4.0), dpi=110)
    bars = ((-0.18, 1, names[0], COLORS["target_only"]), (0.18, 2, names[1], COLORS["metaxl"]))
    for i, group in enumerate(groups):
        for offset, index, label, color in bars:
            values = list(group[index].values())
            if not values:
                continue
            ax.bar(i + offset, statistics.fmean(values), 0.34, color=color, alpha=0.8,
                   label=label if i == 0 else None)
            ax.plot([i + offset] * len(values), values, "o", color="black", markersize=3)
    ax.set_xticks(range(len(groups)), [group[0] for group in groups], fontsize=8)
    lowest = min((v for group in groups for v in [*group[1].values(), *group[2].values()]),
                 default=0.0)
    ax.set_ylim(bottom=max(0.0, 5 * math.floor((lowest - 8) / 5)))  # the seeds' spread shows
    ax.set_ylabel("test F1 × 100")
    ax.set_title(f"{title} (mean over seeds, a dot per seed)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------- beyond the preset
WHERE_IT_RAN = {"seed", "data_root", *WHERE_IT_RUNS}  # a probe run's setting ignores these


def setting_of(run: dict, preset_run: dict) -> str:
    """"freeze_layers 6": the params where a run differs from the preset's run of its row and
    method; not its seed or where it ran (device, paths), but its test subset. A param one run
    lacks (logged before the field existed) counts as TrialConfig's default."""
    defaults = {k: str(v) for k, v in TrialConfig().to_dict().items()}
    ours = {**run["params"], "test_subset": run["test_subset"]}
    theirs = {**preset_run["params"], "test_subset": preset_run["test_subset"]}
    changed = [f"{k} {ours.get(k, defaults.get(k))}" for k in sorted(set(ours) | set(theirs))
               if k not in WHERE_IT_RAN
               and ours.get(k, defaults.get(k)) != theirs.get(k, defaults.get(k))]
    return ", ".join(changed) or "the preset's own"


def probe_versus_preset(probe_records: list[dict], records: list[dict]) -> list[dict]:
    """Bench runs of another experiment (a probe: rows of this experiment's preset with a
    setting changed) against this experiment's runs of the same task, target, source and
    method: one row per changed setting, test F1 × 100 paired by seed. A method other than JT
    is also set against the probe's JT runs of its row and setting (`vs_joint`, None without
    them). Probe runs of a cell this experiment lacks are left out with a warning."""
    preset: dict[tuple, list[dict]] = {}
    for r in records:
        if r["role"] == "bench" and not r["grid"]:
            preset.setdefault((r["task"], r["target"], r["source"], r["method"]), []).append(r)
    groups: dict[tuple, list[dict]] = {}
    for r in probe_records:
        if r["role"] != "bench":
            continue
        cell = (r["task"], r["target"], r["source"], r["method"])
        if cell not in preset:
            print(f"warning: probe run {r['run_id']} ({title_of(r['method'])} {lang(r['source'])}"
                  f" -> {lang(r['target'])}): the report's experiment has no such runs, left out",
                  file=sys.stderr)
            continue
        groups.setdefault((*cell, setting_of(r, preset[cell][0])), []).append(r)
    rows = []
    for (task, target, source, method, setting), runs in sorted(groups.items()):
        label = f"{title_of(method)} {lang(target)} ← {lang(source)}"
        probe = by_seed([(r["seed"], r["test"]) for r in runs], f"{label} with {setting}")
        base = by_seed([(r["seed"], r["test"]) for r in preset[(task, target, source, method)]],
                       label)
        rows.append({"task": task, "target": target, "source": source, "method": method,
                     "setting": setting, "probe": mean_std(list(probe.values())),
                     "probe_seeds": probe, "preset": mean_std(list(base.values())),
                     "preset_seeds": base, "paired": paired_difference(probe, base)})
    joint = {(r["task"], r["target"], r["source"], r["setting"]): r["probe_seeds"]
             for r in rows if r["method"] == "joint"}
    for row in rows:
        jt = joint.get((row["task"], row["target"], row["source"], row["setting"]))
        row["vs_joint"] = (paired_difference(row["probe_seeds"], jt)
                           if jt and row["method"] != "joint" else None)
    return rows


def probe_lines(rows: list[dict], probe: str, plot: str) -> list[str]:
    """Markdown for `probe_versus_preset`'s rows."""
    lines = [f"## Beyond the preset (experiment `{probe}`)", "",
             "Rows of this report run again with settings changed; test F1 × 100, mean ± std "
             "(n seeds). Δ = changed − preset, and the method − JT with the same setting, paired "
             "over the seeds both have: mean [95% bootstrap CI], sign-flip p (n).", "",
             "| row | method | changed setting | its test F1 | the preset's | Δ changed − preset "
             "| Δ method − JT, both changed |",
             "|" + "---|" * 7]
    for row in rows:
        vs_joint = "" if row["method"] == "joint" else fmt_paired(row["vs_joint"])
        lines.append(f"| {row_label(row)} | {title_of(row['method'])} | {row['setting']} | "
                     f"{fmt_cell(row['probe'])} (n={row['probe']['n']}) | "
                     f"{fmt_cell(row['preset'])} (n={row['preset']['n']}) | "
                     f"{fmt_paired(row['paired'])} | {vs_joint} |")
    return lines + ["", f"![beyond the preset]({plot})", ""]


# ---------------------------------------------------------------------------- report
def find_experiment(client: MlflowClient, experiment: str, uri: str):
    """The experiment named (or numbered) `experiment`; exits with an error naming the store."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None and experiment.isdigit():
        exp = client.get_experiment(experiment)
    if exp is None:
        raise SystemExit(f"error: no experiment {experiment!r} at {uri}")
    return exp


def build_report(uri: str, experiment: str, out: str | Path, curve_targets: dict | None = None,
                 sweep: tuple[str, str] | None = None,
                 default_source: str = "ner:conll2003:en",
                 probe: tuple[str, str] | None = None) -> dict:
    """Write report.md, report.json and the PNGs into `out`; returns the report dict.

    curve_targets: {task: "target name" or "target|source"} for the learning-curve plot
    (default: the first row of each task's table). sweep: (tracking URI, experiment) of a
    `sweeps/pairs.py` sweep to set against this experiment's runs (`sweep_versus_default`).
    probe: (tracking URI, experiment) of a grid that re-runs this experiment's rows with a
    setting changed (`probe_versus_preset`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp = find_experiment(client, experiment, uri)
    records = select(read_runs(client, exp.experiment_id))
    tables = build_tables(records, "test")
    dev_tables = build_tables(records, "dev")
    sens = sensitivity(records)
    movement = movement_tables(records)
    kinds = sorted({r["role"] for r in records})
    md = [f"# Results: experiment `{exp.name}`", "",
          f"{len(records)} runs ({', '.join(kinds) or 'none'}). Cells: test F1 × 100 at the best "
          "dev epoch, mean ± sample std over seeds (n per cell in report.json); best mean per "
          "row in bold; Δ = MetaXL mean − joint-training (JT) mean with the same source, in F1 "
          "points. The `average` row is the mean of the row means. Sentiment F1 is macro-F1 over "
          "the labels kept; `majority class` and `always positive` are constant classifiers "
          "scored the same way on the same split (shown where the runs logged its label counts).",
          ""]
    report = {"experiment": exp.name, "tracking_uri": uri, "n_runs": len(records), "tasks": {}}
    for task, rows in tables.items():
        bars = out / f"{task}_bars.png"
        plot_bars(task, rows, bars)
        heat = out / f"{task}_gain_heatmap.png"
        has_heat = plot_heatmap(task, rows, heat)
        if not has_heat and heat.exists():
            heat.unlink()
        wanted = (curve_targets or {}).get(task)
        pick = rows[0]
        for row in rows:
            if wanted and wanted in (row["target"], f"{row['target']}|{row['source']}",
                                     lang(row["target"])):
                pick = row
                break
        dev_cells = {(d["target"], d["source"]): d["cells"] for d in dev_tables[task]}
        row_curves = [(row, *curves(client, records, task, row["target"], row["source"]),
                       {b: c["mean"] for b, c in dev_cells[(row["target"], row["source"])].items()
                        if b in BASELINES}) for row in rows]
        curve_data, curve_unit, curve_floors = next(
            (data, unit, floors) for row, data, unit, floors in row_curves if row is pick)
        curve_path = out / f"{task}_curves.png"
        if curve_data:
            plot_curves(task, row_label(pick), curve_data, curve_unit, curve_floors, curve_path)
        panels = [(row_label(row), data, unit, floors) for row, data, unit, floors in row_curves
                  if data]
        all_curves_path = out / f"{task}_curves_all.png"
        if len(panels) > 1:
            plot_all_curves(task, panels, all_curves_path)
        md += [f"## {task}", "", markdown_table(rows), ""]
        for extra in EXTRA_METRICS.get(task, []):
            extra_rows = build_tables(records, extra).get(task)
            if extra_rows:
                md += [f"Test {extra.split('/')[-1]} × 100, same layout:", "",
                       markdown_table(extra_rows), ""]
        md += paired_table(rows)
        if movement.get(task):
            md += movement_lines(movement[task])
        md += ["Dev F1 (the model-selection split) × 100, same layout:", "",
               markdown_table(dev_tables[task]), "",
               f"![{task} bars]({bars.name})", ""]
        if has_heat:
            md += [f"![{task} MetaXL gain heatmap]({heat.name})", ""]
        if curve_data:
            md += [f"Learning curves ({row_label(pick)}):", "", f"![{task} curves]({curve_path.name})",
                   ""]
        if len(panels) > 1:
            md += ["Learning curves of every row:", "", f"![{task} curves]({all_curves_path.name})",
                   ""]
        report["tasks"][task] = {
            "rows": [{"target": r["target"], "source": r["source"], "cells": r["cells"],
                      "gains": r.get("gains", {}), "paired": r.get("paired", {}),
                      "dev_cells": dev_cells[(r["target"], r["source"])]}
                     for r in rows],
            "average": average_row(rows, methods_in(rows)),
            **({"rtn_movement": movement[task]} if movement.get(task) else {}),
            "curves": {"target": pick["target"], "source": pick["source"], "unit": curve_unit,
                       "dev_f1": {m: {str(e): v for e, v in sorted(d.items())}
                                  for m, d in curve_data.items()}},
            "plots": [p.name for p in (bars, heat if has_heat else None,
                                       curve_path if curve_data else None) if p]}
    for task, groups in sens.items():
        path = out / f"{task}_sensitivity.png"
        plot_sensitivity(task, groups, path)
        md += [f"## {task}: sensitivity (dev F1 × 100, mean ± std over seeds)", ""]
        for (target, source, method), grid in groups.items():
            md += [f"{title_of(method)}, {lang(target)} ← {lang(source)}:", "",
                   "| " + " | ".join(grid) + " |", "|" + "---|" * len(grid),
                   "| " + " | ".join(fmt_cell(c) for c in grid.values()) + " |", ""]
        md += [f"![{task} sensitivity]({path.name})", ""]
        report.setdefault("sensitivity", {})[task] = [
            {"target": t, "source": s, "method": m, "dev": grid}
            for (t, s, m), grid in groups.items()]
    if sweep:
        sweep_client = MlflowClient(tracking_uri=sweep[0])
        sweep_exp = find_experiment(sweep_client, sweep[1], sweep[0])
        rows = sweep_versus_default(sweep_client, sweep_exp.experiment_id, records,
                                    default_source)
        path = out / "sweep_vs_default.png"
        plot_against([(f"{lang(r['target'])} ({title_of(r['method'])})", r["default_seeds"],
                       r["sweep_seeds"]) for r in rows],
                     ("default configuration", "sweep's best configuration"),
                     "Does the sweep pay?", path)
        # files of their own: a sweep's store is seldom kept as long as the grid's runs, so a
        # later rebuild without --sweep leaves them as they are
        write_atomic(out / "sweep_vs_default.md",
                     "\n".join(sweep_pays_lines(rows, sweep_exp.name, path.name)))
        write_atomic(out / "sweep_vs_default.json", json.dumps(
            {"sweep": sweep_exp.name, "tracking_uri": sweep[0], "rows": rows}, indent=2,
            sort_keys=True))
        md += ["## Does the sweep pay?", "", f"See [sweep_vs_default.md](sweep_vs_default.md) "
               f"(sweep `{sweep_exp.name}`).", ""]
    if probe:
        probe_client = MlflowClient(tracking_uri=probe[0])
        probe_exp = find_experiment(probe_client, probe[1], probe[0])
        rows = probe_versus_preset(read_runs(probe_client, probe_exp.experiment_id), records)
        path = out / "probe_vs_preset.png"
        plot_against([(f"{row_label(r)}, {title_of(r['method'])}\n{r['setting']}",
                       r["preset_seeds"], r["probe_seeds"])
                      for r in rows], ("the preset", "setting changed"), "Beyond the preset",
                     path)
        md += probe_lines(rows, probe_exp.name, path.name)
        report["probe_vs_preset"] = {"probe": probe_exp.name, "tracking_uri": probe[0],
                                     "rows": rows}
    write_atomic(out / "report.md", "\n".join(md))
    write_atomic(out / "report.json", json.dumps(report, indent=2, sort_keys=True))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mlflow-uri", required=True, help="e.g. sqlite:///runs/grids/cpu-fidelity/mlflow.db")
    p.add_argument("--experiment", required=True, help="experiment name (or id)")
    p.add_argument("--out", required=True, help="output folder, e.g. results/")
    p.add_argument("--curve-target", action="append", default=[], metavar="TASK=TARGET",
                   help="learning-curve target per task, e.g. ner=lug or ner=ner:masakhaner2:lug")
    p.add_argument("--sweep", nargs=2, metavar=("URI", "EXPERIMENT"),
                   help="a sweeps/pairs.py sweep whose best configurations (re-run over seeds) "
                   "are set against this experiment's runs from --default-source, paired by seed")
    p.add_argument("--default-source", default="ner:conll2003:en",
                   help="with --sweep: the source of the default configuration (default: "
                   "%(default)s, the paper's)")
    p.add_argument("--probe", nargs=2, metavar=("URI", "EXPERIMENT"),
                   help="a grid that re-runs rows of this experiment with a setting changed "
                   "(e.g. sweeps/grids/cpu-fidelity-probe.yaml): each changed setting against "
                   "this experiment's runs, paired by seed")
    args = p.parse_args(argv)
    wanted = dict(item.split("=", 1) for item in args.curve_target)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    report = build_report(args.mlflow_uri, args.experiment, args.out, wanted,
                          tuple(args.sweep) if args.sweep else None, args.default_source,
                          tuple(args.probe) if args.probe else None)
    print(f"wrote {Path(args.out) / 'report.md'} ({report['n_runs']} runs, "
          f"tasks: {', '.join(report['tasks']) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
