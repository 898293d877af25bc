"""Export the best configuration per target language from MLflow (not from Ray's files), and
optionally train it into a registered model.

    python sweeps/export.py --mlflow-uri sqlite:///runs/sweep/mlflow.db --out exports/
    python -m metaxl_core.train --config exports/yor.yaml      # re-run the best of yor
    python sweeps/export.py --mlflow-uri sqlite:///runs/sweep/mlflow.db --out exports/ \
        --train-final --seeds 3                                # + a model per target

Selection, over the sweep's latest attempt (the `sweep_id` of the most recently started parent
run: an abandoned attempt in the same experiment is ignored), as in the sweep summary: per
search, `metaxl_core.selection.confirmed_pick` over the dev F1 of the runs that ran their whole
budget (runs stopped early by ASHA never did, so re-running them would not reproduce their
numbers), each configuration over the seeds its trial and its confirmation runs used: the
highest mean among those with the most seeds (on a tie the smaller trial id); then the best of
the searches' picks. The export says how the pick compares with its search's anchor (the
configuration a user would run without sweeping), paired over seeds; with --prefer-anchor an
unseparated pick gives way to the anchor. Each target gets `<lang>.yaml` (and
`<lang>-2.yaml`... with --top-k), plus `index.yaml` listing them, written last. The targets are
those of the attempt's parent runs: when one has no finished trial yet (the sweep is still
running, or its trials failed) the export names it and stops, unless --partial.

--train-final trains each target's best configuration with --seeds seeds (the trial's own seed
first) and keeps the best dev one: saved without its RTN in `<out>/models/<lang>/` (a Hugging
Face model folder whose model card names the sweep, the trial and every seed's scores), logged
to the sweep's experiment as a run tagged role=final, registered in the MLflow Model Registry as
`metaxl-<task>-<lang>` (pyfunc flavour, `sweeps/pyfunc_model.py`; version tags: sweep, trial,
seed, dev and test F1), then loaded back from the registry and scored on test:
`reloaded_test_f1` must equal the recorded test F1, or the export fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

import yaml

from metaxl_core.atomic import write_atomic
from metaxl_core.config import TrialConfig
from metaxl_core.errors import MetaXLError
from metaxl_core.names import language_of
from metaxl_core.selection import confirmed_pick, rank_trials, trial_rank
from sweeps.mlflow_store import (default_tracking_uri, latest_attempt, log_results, open_experiment,
                                 register_model)

REPRODUCE_TOLERANCE = 1e-6  # reloaded test F1 against the recorded one


def best_runs(uri: str, experiment: str, top_k: int = 1, partial: bool = False,
              prefer_anchor: bool = False) -> dict[str, list[dict]]:
    """Per target: up to top_k records {config, metrics, selection, run_id, ...}, the pick first
    (`selection.confirmed_pick` per search over its trials and confirmation runs, the best pick
    over the target's searches). `prefer_anchor`: a pick whose paired dev interval does not lie
    above its search's anchor gives way to the anchor. A target of the attempt without a
    finished trial is a MetaXLError naming it, or with `partial` a warning."""
    client, experiment_id = open_experiment(uri, experiment, create=False)
    sweep_id = latest_attempt(client, experiment_id)
    runs = [run for role in ("trial", "confirm") for run in client.search_runs(
        [experiment_id], f"tags.role = '{role}' and tags.sweep_id = '{sweep_id}'",
        max_results=50000)]
    by_target: dict[str, list] = {}
    for run in runs:  # a trial ASHA stopped is KILLED: its confirmation runs may still score it
        by_target.setdefault(run.data.tags["target"], []).append(run)
    by_target = {t: rs for t, rs in by_target.items() if any(_scored(r) for r in rs)}
    if not by_target:
        raise MetaXLError(f"no finished trial runs in experiment {experiment!r} at {uri}")
    parents = client.search_runs([experiment_id], f"tags.role = 'target' and tags.sweep_id = "
                                 f"'{sweep_id}'", max_results=50000)
    missing = sorted({run.data.tags["target"] for run in parents} - set(by_target))
    if missing:
        message = (f"no finished trial for {len(missing)} of {len(parents)} targets of sweep "
                   f"{sweep_id} (still running, interrupted, or every trial failed or was stopped "
                   f"early): {', '.join(missing)}")
        if not partial:
            raise MetaXLError(f"{message}; pass --partial to export the other targets")
        print(f"warning: {message}; exporting the other targets (--partial)", file=sys.stderr)
    return {target: _target_records(candidates, top_k, prefer_anchor)
            for target, candidates in sorted(by_target.items())}


def _trial_id(run) -> str:
    return run.data.tags.get("trial_id", run.info.run_id)


def _scored(run) -> bool:
    return run.info.status == "FINISHED" and "best/dev_f1" in run.data.metrics


def search_picks(runs: list, prefer_anchor: bool = False) -> dict[str, dict]:
    """Per search (tag `search`) of `runs` (its trial and confirmation runs, any status):
    `selection.confirmed_pick` over its candidates' dev F1 on the seeds they ran to the end
    (a trial's own seed, and its confirmation runs'); `prefer_anchor`: a pick whose paired dev
    interval does not lie above the anchor gives way to the anchor (`kept_anchor`)."""
    trials = {_trial_id(r): r for r in runs if r.data.tags["role"] == "trial"}
    dev: dict[str, dict[str, dict[int, float]]] = {}
    for run in filter(_scored, runs):
        trial = run.data.tags.get("confirms_trial") or _trial_id(run)
        if trial in trials:
            seed = int(run.data.params.get("seed", TrialConfig.seed))
            dev.setdefault(trials[trial].data.tags.get("search", ""), {}).setdefault(
                trial, {})[seed] = run.data.metrics["best/dev_f1"]
    picks = {}
    for search, candidates in sorted(dev.items()):
        anchor = next((t for t in candidates if trials[t].data.tags.get("anchor") == "true"), None)
        pick = confirmed_pick(candidates, anchor)
        if prefer_anchor and anchor is not None and pick["pick"] != anchor and not pick["separated"]:
            pick = {**pick, **pick["scores"][anchor], "pick": anchor, "kept_anchor": True}
        picks[search] = pick
    return picks


def _target_records(runs: list, top_k: int, prefer_anchor: bool) -> list[dict]:
    """One target's records, best first: the best of its searches' picks, then the runners-up
    (the most seeds first, then the highest mean dev F1)."""
    trials = {_trial_id(r): r for r in runs if r.data.tags["role"] == "trial"}
    picks = list(search_picks(runs, prefer_anchor).values())
    others = [{"pick": t, **score} for p in picks for t, score in p["scores"].items()
              if t != p["pick"]]

    def rank(p: dict) -> tuple:
        return (-p["seeds"], *trial_rank(p["mean"], p["pick"]))
    best = min(picks, key=rank)
    rest = sorted([p for p in picks if p is not best] + others, key=rank)
    return [_record(trials[best["pick"]], best)] + [_record(trials[p["pick"]])
                                                     for p in rest[:top_k - 1]]


def _record(run, pick: dict | None = None) -> dict:
    params = {k: v for k, v in run.data.params.items() if k != "output_dir"}
    config = TrialConfig.from_dict(params, source=f"run {run.info.run_id} params").to_dict()
    metrics = run.data.metrics
    record = {
        "target": run.data.tags["target"], "method": config["method"], "source": config["source"],
        "run_id": run.info.run_id, "trial_id": run.data.tags.get("trial_id"),
        "sweep_id": run.data.tags.get("sweep_id"), "anchor": run.data.tags.get("anchor") == "true",
        "metrics": {"dev_f1": metrics.get("best/dev_f1"), "test_f1": metrics.get("best/test_f1"),
                    "best_epoch": int(metrics.get("best/epoch", 0))},  # its own seed's run
        "config": config,
    }
    if pick is not None:
        record["selection"] = selection_note(pick)
    return record


def selection_note(pick: dict) -> dict:
    """What the export says about its pick: dev F1 over seeds, against the anchor, in words."""
    versus = pick["vs_anchor"]
    if pick.get("kept_anchor"):
        verdict = ("the anchor, kept (--prefer-anchor): the search's best configuration was not "
                   "separated from it")
    elif pick["pick"] == pick["anchor"]:
        verdict = "the anchor: no searched configuration scored a higher mean dev F1"
    elif versus is None:
        verdict = ("not compared with the anchor (it has no run on the same seeds): a one-seed "
                   "pick; set seeds_per_config > 1 to confirm it")
    elif pick["separated"]:
        verdict = "better than the anchor on dev: the paired interval lies above 0"
    else:
        verdict = ("NOT separated from the anchor: the paired dev interval includes 0, so the "
                   "anchor may be as good (--prefer-anchor exports the anchor instead)")
    return {"seeds": pick["seeds"], "dev_f1_mean": pick["mean"], "dev_f1_ci95": pick["ci95"],
            "anchor_trial_id": pick["anchor"], "dev_minus_anchor": versus, "verdict": verdict}


def _write(path: Path, data: dict) -> None:
    write_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def train_final(uri: str, experiment: str, record: dict, out: Path, seeds: int = 1,
                overwrite: bool = False) -> dict:
    """Train `record`'s configuration (a best_runs record) with `seeds` seeds, keep the best dev
    model in `<out>/models/<lang>` (refused before training when that folder is not a saved
    model, unless `overwrite`), log and register it, check the registered model's test F1.
    Returns {model, registered, seed, dev_f1, test_f1, reloaded_test_f1}."""
    from metaxl_core.predict import open_model
    from metaxl_core.saved_model import annotate_model, check_model_folder
    from metaxl_core.train import run_trial

    client, experiment_id = open_experiment(uri, experiment, create=False)
    base = TrialConfig.from_dict(record["config"], source=f"run {record['run_id']}")
    lang = language_of(record["target"])
    models = out / "models"
    check_model_folder(models / lang, overwrite)
    trained = []
    for i in range(seeds):
        cfg = dataclasses.replace(base, seed=base.seed + i, output_dir=None)
        print(f"{record['target']}: training the final model, seed {cfg.seed} ({i + 1}/{seeds})",
              flush=True)
        folder = models / f".{lang}-seed{cfg.seed}"
        trained.append((cfg, run_trial(cfg, progress=True, model_dir=folder), folder))
    cfg, results, folder = rank_trials(trained, lambda t: t[1]["final"]["dev/f1"],
                                       lambda t: f"{t[0].seed:012d}")[0]
    model_dir = models / lang
    if model_dir.exists():
        shutil.rmtree(model_dir)
    os.replace(folder, model_dir)
    for _, _, other in trained:
        shutil.rmtree(other, ignore_errors=True)
    final = results["final"]
    tags = {"sweep_id": record["sweep_id"], "trial_id": record["trial_id"], "seed": cfg.seed,
            "seeds": seeds, "dev_f1": final["dev/f1"], "test_f1": final["test/f1"]}
    run_id = log_results(client, experiment_id, results,
                         {"role": "final", "from_run": record["run_id"], **tags},
                         run_name=f"final {record['target']}")
    annotate_model(model_dir, origin={"experiment": experiment, "sweep_id": record["sweep_id"],
                                      "trial_id": record["trial_id"], "run_id": record["run_id"],
                                      "final_run_id": run_id},
                   seeds=[{"seed": c.seed, "dev_f1": r["final"]["dev/f1"],
                           "test_f1": r["final"]["test/f1"]} for c, r, _ in trained])
    name = f"metaxl-{cfg.task}-{lang}"
    version = register_model(uri, run_id, model_dir, name, tags)
    registered = f"models:/{name}/{version}"
    reloaded = open_model(registered, uri).score("test")["f1"]
    client.set_model_version_tag(name, version, "reloaded_test_f1", str(reloaded))
    print(f"{record['target']}: {registered} (seed {cfg.seed}): dev F1 {final['dev/f1']:.4f}, "
          f"test F1 {final['test/f1']:.4f}, reloaded from the registry {reloaded:.4f}", flush=True)
    if abs(reloaded - final["test/f1"]) > REPRODUCE_TOLERANCE:
        raise MetaXLError(f"{registered} scores test F1 {reloaded:.6f} when reloaded, but "
                          f"{final['test/f1']:.6f} was recorded in training")
    return {"model": str(model_dir), "registered": registered, "seed": cfg.seed,
            "final_dev_f1": final["dev/f1"], "final_test_f1": final["test/f1"],
            "reloaded_test_f1": reloaded}


def export(uri: str, experiment: str, out: Path, top_k: int = 1, *, train: bool = False,
           seeds: int = 1, overwrite: bool = False, partial: bool = False,
           prefer_anchor: bool = False) -> list[Path]:
    """Write the files (with `train`, also train and register a model per target, see
    `train_final`); returns their paths (index.yaml last). Bad input fails before anything is
    written or trained."""
    from metaxl_core.saved_model import check_model_folder

    if out.exists() and not out.is_dir():
        raise MetaXLError(f"{out}: exists and is not a folder (--out names the folder to write "
                          "the files in)")
    chosen = best_runs(uri, experiment, top_k, partial, prefer_anchor)
    if train:
        for target in chosen:
            check_model_folder(out / "models" / language_of(target), overwrite)
    out.mkdir(parents=True, exist_ok=True)
    written, index = [], []
    for target, records in chosen.items():
        lang = language_of(target)
        for rank, record in enumerate(records, start=1):
            path = out / (f"{lang}.yaml" if rank == 1 else f"{lang}-{rank}.yaml")
            _write(path, record)
            written.append(path)
            index.append({"target": target, "rank": rank, "file": path.name,
                          "method": record["method"], "source": record["source"],
                          **record["metrics"], **({"selection": record["selection"]}
                                                  if "selection" in record else {})})
            if rank == 1:
                note = record["selection"]
                ci = note["dev_f1_ci95"]
                print(f"{target}: trial {record['trial_id']}, dev F1 {note['dev_f1_mean']:.4f} over "
                      f"{note['seeds']} seed(s)" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
                      + f"; {note['verdict']}", file=sys.stderr)
            if train and rank == 1:
                index[-1].update(train_final(uri, experiment, record, out, seeds, overwrite))
    _write(out / "index.yaml", {"experiment": experiment, "mlflow_uri": uri, "exports": index})
    return written + [out / "index.yaml"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mlflow-uri", help="default: $MLFLOW_TRACKING_URI, else the default "
                   "sweep's sqlite store (runs/sweep/mlflow.db)")
    p.add_argument("--experiment", default="metaxl-sweep", help="the sweep name (default: %(default)s)")
    p.add_argument("--out", default="exports", help="folder for the YAML files (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=1, help="configurations per target (default: 1)")
    p.add_argument("--train-final", action="store_true", help="train each target's best "
                   "configuration, save it in OUT/models/<lang> and register it in MLflow as "
                   "metaxl-<task>-<lang>")
    p.add_argument("--seeds", type=int, default=1, help="with --train-final: seeds to train, "
                   "the best dev one is kept (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="with --train-final: replace "
                   "OUT/models/<lang> even when it is not a saved model (a saved model is always "
                   "replaced)")
    p.add_argument("--partial", action="store_true", help="export the targets that have a "
                   "finished trial when others have none yet (a running sweep), with a warning")
    p.add_argument("--prefer-anchor", action="store_true", help="export a search's anchor (the "
                   "configuration without sweeping) unless the pick's paired dev interval over "
                   "seeds lies above it")
    args = p.parse_args(argv)
    if args.top_k < 1 or args.seeds < 1:
        p.error("--top-k and --seeds must be >= 1")
    uri = args.mlflow_uri or default_tracking_uri("runs/sweep")
    try:
        paths = export(uri, args.experiment, Path(args.out), args.top_k, train=args.train_final,
                       seeds=args.seeds, overwrite=args.overwrite, partial=args.partial,
                       prefer_anchor=args.prefer_anchor)
    except MetaXLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
