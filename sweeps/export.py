"""Export the best configuration per target language from MLflow (not from Ray's files), and
optionally train it into a registered model.

    python sweeps/export.py --mlflow-uri sqlite:///runs/sweep/mlflow.db --out exports/
    python -m metaxl_core.train --config exports/yor.yaml      # re-run the best of yor
    python sweeps/export.py --mlflow-uri sqlite:///runs/sweep/mlflow.db --out exports/ \
        --train-final --seeds 3                                # + a model per target

Selection: among FINISHED trial runs of the sweep's latest attempt (the `sweep_id` of the most
recently started parent run: an abandoned attempt in the same experiment is ignored; runs
stopped early by ASHA never ran every epoch, so re-running them would not reproduce their
numbers), the best by `metaxl_core.selection` (the highest best dev F1; on a tie the smaller
trial id, as in the sweep summary and the report). Each target gets `<lang>.yaml` (and
`<lang>-2.yaml`... with --top-k), plus `index.yaml` listing them, written last. The targets are
those of the attempt's parent runs: when one has no finished trial yet (the sweep is still
running, or its trials failed) the export names it and stops, unless --partial.

--train-final trains each target's best configuration with --seeds seeds (the trial's own seed
first) and keeps the best dev one: saved without its RTN in `<out>/models/<lang>/`, logged to
the sweep's experiment as a run tagged role=final, registered in the MLflow Model Registry as
`metaxl-<task>-<lang>` (pyfunc flavour; version tags: sweep, trial, seed, dev and test F1), then
loaded back from the registry and scored on test: `reloaded_test_f1` must equal the recorded
test F1, or the export fails.
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
from metaxl_core.selection import rank_trials
from sweeps.mlflow_store import (default_tracking_uri, latest_attempt, log_results, open_experiment,
                                 register_model)

REPRODUCE_TOLERANCE = 1e-6  # reloaded test F1 against the recorded one


def best_runs(uri: str, experiment: str, top_k: int = 1, partial: bool = False
              ) -> dict[str, list[dict]]:
    """Per target: up to top_k records {config, metrics, run_id, ...}, best first. A target of
    the attempt without a finished trial is a MetaXLError naming it, or with `partial` a warning."""
    client, experiment_id = open_experiment(uri, experiment, create=False)
    sweep_id = latest_attempt(client, experiment_id)
    runs = client.search_runs([experiment_id], "tags.role = 'trial' and attributes.status = "
                              f"'FINISHED' and tags.sweep_id = '{sweep_id}'", max_results=50000)
    by_target: dict[str, list] = {}
    for run in runs:
        if "best/dev_f1" not in run.data.metrics:
            continue
        by_target.setdefault(run.data.tags["target"], []).append(run)
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
    chosen = {}
    for target, candidates in sorted(by_target.items()):
        ranked = rank_trials(candidates, lambda r: r.data.metrics["best/dev_f1"],
                             lambda r: r.data.tags.get("trial_id", r.info.run_id))
        chosen[target] = [_record(run) for run in ranked[:top_k]]
    return chosen


def _record(run) -> dict:
    params = {k: v for k, v in run.data.params.items() if k != "output_dir"}
    config = TrialConfig.from_dict(params, source=f"run {run.info.run_id} params").to_dict()
    metrics = run.data.metrics
    return {
        "target": run.data.tags["target"], "method": config["method"], "source": config["source"],
        "run_id": run.info.run_id, "trial_id": run.data.tags.get("trial_id"),
        "sweep_id": run.data.tags.get("sweep_id"),
        "metrics": {"dev_f1": metrics["best/dev_f1"], "test_f1": metrics["best/test_f1"],
                    "best_epoch": int(metrics["best/epoch"])},
        "config": config,
    }


def _write(path: Path, data: dict) -> None:
    write_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def train_final(uri: str, experiment: str, record: dict, out: Path, seeds: int = 1,
                overwrite: bool = False) -> dict:
    """Train `record`'s configuration (a best_runs record) with `seeds` seeds, keep the best dev
    model in `<out>/models/<lang>` (refused before training when that folder is not a saved
    model, unless `overwrite`), log and register it, check the registered model's test F1.
    Returns {model, registered, seed, dev_f1, test_f1, reloaded_test_f1}."""
    from metaxl_core.predict import open_model
    from metaxl_core.saved_model import check_model_folder
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
           seeds: int = 1, overwrite: bool = False, partial: bool = False) -> list[Path]:
    """Write the files (with `train`, also train and register a model per target, see
    `train_final`); returns their paths (index.yaml last). Bad input fails before anything is
    written or trained."""
    from metaxl_core.saved_model import check_model_folder

    if out.exists() and not out.is_dir():
        raise MetaXLError(f"{out}: exists and is not a folder (--out names the folder to write "
                          "the files in)")
    chosen = best_runs(uri, experiment, top_k, partial)
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
                          **record["metrics"]})
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
    args = p.parse_args(argv)
    if args.top_k < 1 or args.seeds < 1:
        p.error("--top-k and --seeds must be >= 1")
    uri = args.mlflow_uri or default_tracking_uri("runs/sweep")
    try:
        paths = export(uri, args.experiment, Path(args.out), args.top_k, train=args.train_final,
                       seeds=args.seeds, overwrite=args.overwrite, partial=args.partial)
    except MetaXLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
