"""After a sweep: what mattered in each (target, method) search, and what the trials cost.

    python sweeps/analysis.py --output-dir runs/sweep      # any finished sweep (re-writes it)
    optuna-dashboard runs/sweep/optuna.journal              # the studies, live or finished

`sweeps/pairs.py` calls this at its end and attaches each search's files to its target's MLflow
parent run (artifacts `analysis/<search>/`). Input: the sweep's `summary.json` (every trial's
config, dev F1 per evaluation and cost, each search's pick) and `optuna.journal` (the Optuna
study of every search).
Per search, under `<output-dir>/analysis/<search>/`:

    importance.png   hyperparameter importance: Optuna's fANOVA over the study's complete
                     trials (the value of an ASHA-stopped trial is its dev F1 when stopped);
                     only when dev F1 varies
    parallel.png     parallel coordinates of the searched dimensions, coloured by dev F1
    slice.png        dev F1 against each searched dimension
    curves.png       dev F1 against the updates each trial got; trials ASHA stopped are
                     dashed, the anchor (the configuration without sweeping) thick and black
and for the sweep `analysis/analysis.md` (the importances in words, the best range of the most
important dimension, cost, each search's pick against its anchor) and `analysis/cost.png`
(best dev F1 against CPU seconds per trial, per method).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.storages import JournalStorage  # noqa: E402
from optuna.storages.journal import JournalFileBackend  # noqa: E402
from optuna.visualization import matplotlib as optuna_plots  # noqa: E402

from metaxl_core.atomic import write_atomic  # noqa: E402
from metaxl_core.errors import ConfigError  # noqa: E402
from sweeps.methods import title_of  # noqa: E402
from sweeps.settings import OPTUNA_JOURNAL, SUMMARY  # noqa: E402


def load_study(journal: Path, name: str) -> optuna.Study:
    """One search's study from the sweep's journal file."""
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=name, storage=storage)


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importance per searched dimension (sums to 1); {} with fewer than 2 complete
    trials, nothing searched, or the same dev F1 in every trial."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2 or not complete[0].params or len({t.value for t in complete}) < 2:
        return {}  # fANOVA needs dev F1 to vary
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return {k: float(v) for k, v in
            optuna.importance.get_param_importances(study, evaluator=evaluator).items()}


def best_range(study: optuna.Study, param: str, top: float = 0.25) -> tuple | list | None:
    """The values of `param` among the top quarter of complete trials by dev F1: (low, high) for
    a number, the sorted set for a choice."""
    complete = [t for t in study.get_trials(deepcopy=False,
                                            states=(optuna.trial.TrialState.COMPLETE,))
                if param in t.params]
    if not complete:
        return None
    complete.sort(key=lambda t: -t.value)
    values = [t.params[param] for t in complete[:max(1, round(len(complete) * top))]]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return min(values), max(values)
    return sorted({str(v) for v in values})


def _save(axes, path: Path) -> None:
    """Save the figure of an Optuna plot (one Axes, or an array of them for slice plots)."""
    fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
    width, height = fig.get_size_inches()
    fig.set_size_inches(max(width, 6), max(height, 4))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_curves(trials: list[dict], title: str, path: Path) -> None:
    """Dev F1 against the updates spent, every trial of a search: the compute each got before
    ASHA stopped it (dashed) or it ran its whole budget; the anchor thick and black, failed
    trials absent."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for trial in trials:
        curve = trial.get("curve") or []
        if not curve:
            continue
        stopped = "dev_f1" not in trial
        style = {"color": "black", "linewidth": 2.5, "zorder": 3} if trial.get("anchor") else {}
        ax.plot([u for u, _ in curve], [f * 100 for _, f in curve], marker="o", markersize=3,
                linestyle="--" if stopped else "-", alpha=0.8, **style,
                label=f"{trial['trial_id']}{' (anchor)' if trial.get('anchor') else ''}"
                      f"{' (stopped)' if stopped else ''}")
    ax.set_xlabel("optimizer updates")
    ax.set_ylabel("dev F1 × 100")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_cost(searches: list[dict], path: Path) -> None:
    """Best dev F1 against CPU seconds, one point per finished trial, coloured by method."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    by_method: dict[str, list[tuple]] = {}
    for search in searches:
        for trial in search["trials"]:
            if "dev_f1" in trial and "cpu_s" in trial:
                by_method.setdefault(search["method"], []).append(
                    (trial["cpu_s"], trial["dev_f1"] * 100))
    for method, points in sorted(by_method.items()):
        ax.scatter([p[0] for p in points], [p[1] for p in points], label=title_of(method), s=18)
    ax.set_xlabel("CPU seconds per trial")
    ax.set_ylabel("best dev F1 × 100")
    ax.set_title("quality against cost (finished trials)", fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def analyse_search(journal: Path, search: dict, out: Path) -> dict:
    """The files of one search under `out`; returns {importance, best_range, files}."""
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(search["trials"], f"{search['name']}: dev F1 against updates spent",
                out / "curves.png")
    files = ["curves.png"]
    study = load_study(journal, search["name"])
    scores = importances(study)
    plots = [("parallel.png", optuna_plots.plot_parallel_coordinate),
             ("slice.png", optuna_plots.plot_slice)]
    if scores:
        plots.insert(0, ("importance.png", optuna_plots.plot_param_importances))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete and complete[0].params:
        with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
            warnings.simplefilter("ignore")
            for name, plot in plots:
                _save(plot(study), out / name)
                files.append(name)
    top = max(scores, key=scores.get) if scores else None
    return {"importance": scores, "top": top,
            "best_range": best_range(study, top) if top else None, "files": files}


def _describe(name: str, result: dict) -> str:
    if not result["importance"]:
        return (f"- `{name}`: dimensions not ranked (fewer than 2 complete trials, nothing "
                "searched, or dev F1 the same in every trial).")
    parts = ", ".join(f"{k} {v:.0%}" for k, v in sorted(result["importance"].items(),
                                                         key=lambda kv: -kv[1]))
    rng = result["best_range"]
    if isinstance(rng, tuple):
        rng_text = f"{rng[0]:.3g}" if rng[0] == rng[1] else f"{rng[0]:.3g}..{rng[1]:.3g}"
    else:
        rng_text = ", ".join(rng)
    return (f"- `{name}`: {result['top']} explains {result['importance'][result['top']]:.0%} of "
            f"the variance of dev F1 ({parts}); the best quarter of trials has {result['top']} "
            f"{rng_text}.")


def analyse_sweep(output_dir: str | Path) -> dict[str, dict]:
    """Write the analysis of a finished sweep under `<output_dir>/analysis/`; returns the per
    search results (keyed by search name)."""
    output_dir = Path(output_dir)
    summary_path, journal = output_dir / SUMMARY, output_dir / OPTUNA_JOURNAL
    for path in (summary_path, journal):
        if not path.is_file():
            raise ConfigError(f"{path}: not found; --output-dir must be a finished sweep's folder")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    root = output_dir / "analysis"
    results = {s["name"]: analyse_search(journal, s, root / s["name"])
               for s in summary["searches"]}
    plot_cost(summary["searches"], root / "cost.png")
    lines = [f"# Sweep `{summary['sweep']}`: what mattered", "",
             "Hyperparameter importance per search (Optuna fANOVA over complete trials; an "
             "ASHA-stopped trial counts with its dev F1 when stopped):", ""]
    lines += [_describe(name, result) for name, result in results.items()]
    lines += ["", "Cost per finished trial (mean over the search):", ""]
    for search in summary["searches"]:
        done = [t for t in search["trials"] if "cpu_s" in t]
        if done:
            cpu = sum(t["cpu_s"] for t in done) / len(done)
            updates = sum(t.get("updates", 0) for t in done) / len(done)
            lines.append(f"- `{search['name']}`: {cpu:.0f} CPU s, {updates:.0f} updates "
                         f"({len(done)} trials)")
    lines += ["", "![quality against cost](cost.png)", ""]
    picks = [s for s in summary["searches"] if s.get("pick")]
    if picks:
        lines += ["The pick per search (best mean dev F1 over seeds) against its anchor, the "
                  "configuration a user would run without sweeping (dev F1 × 100; paired over "
                  "seeds, 95% bootstrap CI):", ""]
        for search in picks:
            pick, versus = search["pick"], search["pick"]["vs_anchor"]
            if pick["pick"] == pick["anchor"]:
                verdict = "the anchor itself"
            elif versus is None:
                verdict = "not compared with the anchor (fewer than 2 shared seeds)"
            else:
                verdict = (f"{100 * versus['mean']:+.1f} [{100 * versus['ci95'][0]:+.1f}, "
                           f"{100 * versus['ci95'][1]:+.1f}] over the anchor"
                           + ("" if pick["separated"] else ": not separated from it"))
            lines.append(f"- `{search['name']}`: trial {pick['pick']}, {100 * pick['mean']:.1f} "
                         f"over {pick['seeds']} seed(s), {verdict}")
        lines.append("")
    write_atomic(root / "analysis.md", "\n".join(lines))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", required=True, help="a finished sweep's folder (summary.json)")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        results = analyse_sweep(args.output_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(args.output_dir) / "analysis" / "analysis.md").read_text(encoding="utf-8"))
    print(f"{len(results)} searches analysed under {Path(args.output_dir) / 'analysis'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
