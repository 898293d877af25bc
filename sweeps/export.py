"""Export the best configuration per target language from MLflow (not from Ray's files).

    python sweeps/export.py --mlflow-uri sqlite:///runs/sweep/mlflow.db --out exports/
    python -m metaxl_core.train --config exports/yor.yaml      # re-run the best of yor

Selection: among FINISHED trial runs of the sweep's latest attempt (the `sweep_id` of the most
recently started parent run: an abandoned attempt in the same experiment is ignored; runs
stopped early by ASHA never ran every epoch, so re-running them would not reproduce their
numbers), the best by `metaxl_core.selection` (the highest best dev F1; on a tie the smaller
trial id, as in the sweep summary and the report). Each target gets `<lang>.yaml` (and
`<lang>-2.yaml`... with --top-k), plus `index.yaml` listing them, written last.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

from metaxl_core.config import TrialConfig
from metaxl_core.errors import MetaXLError
from metaxl_core.names import language_of
from metaxl_core.selection import rank_trials
from sweeps.mlflow_store import default_tracking_uri, open_experiment


def latest_attempt(client, experiment_id: str) -> str | None:
    """The sweep id of the experiment's most recently started sweep attempt, or None."""
    parents = client.search_runs([experiment_id], "tags.role = 'target'", max_results=1,
                                 order_by=["attributes.start_time DESC"])
    return parents[0].data.tags["sweep_id"] if parents else None


def best_runs(uri: str, experiment: str, top_k: int = 1) -> dict[str, list[dict]]:
    """Per target: up to top_k records {config, metrics, run_id, ...}, best first."""
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle, sort_keys=False, allow_unicode=True)
    os.replace(tmp, path)


def export(uri: str, experiment: str, out: Path, top_k: int = 1) -> list[Path]:
    """Write the files; returns their paths (index.yaml last)."""
    chosen = best_runs(uri, experiment, top_k)  # fails before anything is written
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
    _write(out / "index.yaml", {"experiment": experiment, "mlflow_uri": uri, "exports": index})
    return written + [out / "index.yaml"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mlflow-uri", help="default: $MLFLOW_TRACKING_URI, else the default "
                   "sweep's sqlite store (runs/sweep/mlflow.db)")
    p.add_argument("--experiment", default="metaxl-sweep", help="the sweep name (default: %(default)s)")
    p.add_argument("--out", default="exports", help="folder for the YAML files (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=1, help="configurations per target (default: 1)")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error("--top-k must be >= 1")
    uri = args.mlflow_uri or default_tracking_uri("runs/sweep")
    try:
        paths = export(uri, args.experiment, Path(args.out), args.top_k)
    except MetaXLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
