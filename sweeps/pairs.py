"""Language-pair and hyperparameter sweeps of MetaXL and its baselines on Ray Tune, tracked in
MLflow.

    python sweeps/pairs.py                              # embedded default: local Ray, bundled sample
    python sweeps/pairs.py --config sweeps/presets/paper-ner.yaml --address auto \\
        --mlflow-uri http://HEAD_IP:5000
    python sweeps/pairs.py --dry-run                    # print the plan and exit
    python sweeps/pairs.py --resume                     # finish an interrupted sweep

Each (target, method) pair is its own search (Optuna TPE via OptunaSearch, ASHA early
stopping on the target dev F1) over the source language, RTN width, RTN layer, inner and outer
learning rates. Searches run concurrently across the cluster, each driven by a Ray task.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import optuna
import ray
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from metaxl_core import data as data_lib
from metaxl_core.atomic import write_atomic
from metaxl_core.encoders import encoder_depth
from metaxl_core.errors import ConfigError, MetaXLError
from metaxl_core.names import language_of
from metaxl_core.selection import best_trial, mean_std
from metaxl_core.train import run_trial
from sweeps.rank_sources import format_ranking, sweep_ranking
from sweeps.settings import CHOICES, SweepConfig
from sweeps.analysis import analyse_sweep
from sweeps.mlflow_store import default_tracking_uri, open_experiment, target_run
from sweeps.tracking import PROJECT_ERROR, MLflowTracker

METRIC, MODE = "dev/f1", "max"
SWEEP_ID = "sweep_id.txt"  # the attempt id of the sweep in an output folder
RAY_PROCESSES = "ray-processes.json"  # the local Ray's processes: pid and start time
OPTUNA_JOURNAL = "optuna.journal"  # every search's Optuna study (storage), in the output folder


# ---------------------------------------------------------------------------- Tune pieces
def search_space(sweep: SweepConfig, search: dict, n_layers: int) -> dict:
    """Ray Tune's param_space for one search: only the dimensions its method has."""
    space = {}
    if len(search["sources"]) > 1:
        space["source"] = tune.choice(search["sources"])
    dims = sweep.space
    if "rtn_width" in search["dimensions"]:
        space["rtn_width"] = tune.choice(dims["rtn_width"])
    if "rtn_layer" in search["dimensions"]:
        low, high = dims["rtn_layer"]
        space["rtn_layer"] = tune.randint(low, min(n_layers if high is None else high, n_layers) + 1)
    for name in ("rtn_layers", *CHOICES):
        if name in search["dimensions"]:
            space[name] = tune.choice(dims[name])
    if "lr" in search["dimensions"]:
        space["lr"] = tune.loguniform(*dims["lr"])
    if "meta_lr" in search["dimensions"]:
        space["meta_lr"] = tune.loguniform(*dims["meta_lr"])
    return space


class FileBackedOptunaSearch(OptunaSearch):
    """OptunaSearch whose study is kept in a journal file, which outlives Tune's snapshots: a
    trial that finished after the last snapshot is complete in the file, and a resumed sweep
    runs it again; that second run's results are not told to the study (Optuna refuses to
    update a finished trial). `first_sources`: the first trials try these sources in this order
    (the ranked candidates), their other dimensions sampled as usual; Ray's points_to_evaluate
    would need every dimension fixed, so they are enqueued in the study itself."""

    def __init__(self, *args, first_sources=(), **kwargs):
        self._first_sources = list(first_sources)
        super().__init__(*args, **kwargs)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        if not super().set_search_properties(metric, mode, config, **spec):
            return False
        for source in self._first_sources:  # skip_if_exists: a resumed study has them already
            self._ot_study.enqueue_trial({"source": source}, skip_if_exists=True)
        return True

    def _told(self, trial_id: str) -> bool:
        ot_trial = self._ot_trials.get(trial_id)
        return ot_trial is not None and self._ot_study.get_trials(deepcopy=False)[
            ot_trial.number].state.is_finished()

    def on_trial_result(self, trial_id: str, result: dict):
        if not self._told(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if self._told(trial_id):
            self._ot_trials.pop(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


def make_searcher(sweep: SweepConfig, index: int, study_name: str, journal: str,
                  first_sources=()) -> ConcurrencyLimiter:
    """Optuna TPE for one search, its study kept in the sweep's journal file (resumable; open it
    live with `optuna-dashboard <journal>`); its first trials try `first_sources` in order."""
    storage = JournalStorage(JournalFileBackend(journal))
    return ConcurrencyLimiter(FileBackedOptunaSearch(
        metric=METRIC, mode=MODE, seed=sweep.seed + index, study_name=study_name,
        storage=storage, first_sources=first_sources), max_concurrent=sweep.max_concurrent)


def close_study(journal: str, study_name: str) -> None:
    """Mark FAIL the study's trials still RUNNING once its search ended: trials a killed driver
    had asked for after Tune's last snapshot, which a resume replaced by new ones."""
    study = optuna.load_study(study_name=study_name,
                              storage=JournalStorage(JournalFileBackend(journal)))
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def make_scheduler(sweep: SweepConfig, epochs: int) -> ASHAScheduler:
    return ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode=MODE, max_t=epochs,
                         grace_period=min(sweep.grace_period, epochs),
                         reduction_factor=sweep.reduction_factor)


def trainable(config: dict, fixed: dict, checkpoint_interval_s: float = 0.0) -> None:
    """One Tune trial: run_trial, checkpointing after an evaluation (never the last) once
    `checkpoint_interval_s` has passed since the trial's start or last checkpoint, so a
    preempted trial resumes from there. A project error (bad config or data) is reported as
    the trial's last result instead of raised, so Tune does not retry it (`max_failures` is for
    crashes); the tracker ends such a trial FAILED."""
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / "state.pt", weights_only=True)

    node_id = ray.get_runtime_context().get_node_id()
    trial = {**fixed, **config}
    last_checkpoint = time.monotonic()

    def report(metrics: dict, state: dict) -> None:
        nonlocal last_checkpoint
        metrics["node_id"] = node_id  # which cluster node ran the trial (an MLflow tag)
        # a finished trial never resumes; each checkpoint also forces a Tune experiment snapshot
        if metrics["epoch"] == trial["epochs"] or time.monotonic() - last_checkpoint < checkpoint_interval_s:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / "state.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        last_checkpoint = time.monotonic()

    try:
        run_trial(trial, report, resume_from=resume)
    except MetaXLError:  # config or data: a retry would fail the same way, so end the trial now
        tune.report({METRIC: float("nan"), PROJECT_ERROR: traceback.format_exc()})


def search_name(search: dict) -> str:
    parts = [search["method"], search["target"].replace(":", "-")]
    if len(search["sources"]) == 1 and search["sources"][0]:
        parts.append("from-" + search["sources"][0].replace(":", "-"))
    return "_".join(parts)


@ray.remote(num_cpus=0)
def run_search(sweep: SweepConfig, search: dict, index: int, n_layers: int, storage: str,
               uri: str, experiment_id: str, parent_run_id: str, sweep_id: str,
               resume: bool) -> dict:
    """Drive one (target, method[, source]) search to the end; returns its trials' outcomes."""
    fixed = sweep.base_trial(search["target"], search["method"], search["sources"][0]).to_dict()
    epochs = fixed["epochs"]
    name = search_name(search)
    path = os.path.join(storage, name)
    journal = os.path.join(os.path.dirname(storage), OPTUNA_JOURNAL)
    error_file = os.path.join(path, "mlflow-errors.json")
    tracker = MLflowTracker(uri, experiment_id, parent_run_id, {
        "sweep_id": sweep_id, "task": sweep.task, "method": search["method"],
        "target_lang": language_of(search["target"]), "target": search["target"],
        "encoder": fixed["encoder"], "search": name}, fixed, epochs, error_file)
    resources = {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial}
    with_fixed = tune.with_parameters(trainable, fixed=fixed,
                                      checkpoint_interval_s=sweep.checkpoint_interval_s)
    # Tune registers trainables by name, cluster-wide: concurrent searches sharing one name
    # would run each other's fixed config (source, method), so each search gets its own.
    with_fixed.__name__ = search_name(search)
    runnable = tune.with_resources(with_fixed, resources)
    if resume and tune.Tuner.can_restore(path):  # the restored RunConfig brings its tracker back
        tuner = tune.Tuner.restore(path, runnable, resume_unfinished=True, restart_errored=True)
    else:
        tuner = tune.Tuner(
            runnable,
            param_space=search_space(sweep, search, n_layers),
            tune_config=tune.TuneConfig(search_alg=make_searcher(
                                            sweep, index, name, journal,
                                            search["sources"] if search["ranked"] else ()),
                                        scheduler=make_scheduler(sweep, epochs),
                                        num_samples=sweep.trials_per_search,
                                        reuse_actors=sweep.reuse_actors),
            run_config=tune.RunConfig(
                name=name, storage_path=storage, callbacks=[tracker], verbose=1,
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    outcomes = _outcomes(tuner.fit(), fixed)
    close_study(journal, name)
    repeats = []
    finished = [o for o in outcomes if "dev_f1" in o]
    if sweep.seeds_per_config > 1 and finished:
        best = best_trial(finished, lambda o: o["dev_f1"], lambda o: o["trial_id"])
        seed = best["config"]["seed"]
        repeat_tracker = MLflowTracker(uri, experiment_id, parent_run_id, {
            **tracker.tags, "role": "seed_repeat", "repeats_trial": str(best["trial_id"])},
            fixed, epochs, os.path.join(path + "_seeds", "mlflow-errors.json"))
        if resume and tune.Tuner.can_restore(path + "_seeds"):
            repeat_tuner = tune.Tuner.restore(path + "_seeds", runnable, resume_unfinished=True,
                                              restart_errored=True)
        else:
            repeat_tuner = tune.Tuner(runnable, param_space={
                **best["config"],
                "seed": tune.grid_search([seed + i for i in range(1, sweep.seeds_per_config)])},
                tune_config=tune.TuneConfig(reuse_actors=sweep.reuse_actors),
                run_config=tune.RunConfig(name=name + "_seeds", storage_path=storage, verbose=1,
                                          callbacks=[repeat_tracker],
                                          failure_config=tune.FailureConfig(
                                              max_failures=sweep.max_failures)))
        repeats = [best] + _outcomes(repeat_tuner.fit(), fixed)
    try:
        with open(error_file, encoding="utf-8") as handle:
            unlogged = json.load(handle)
    except FileNotFoundError:
        unlogged = [f"the MLflow tracker of {name} did not finish"]
    return {"search": search, "name": name, "trials": outcomes, "seed_repeats": repeats,
            "mlflow_errors": unlogged}


def _outcomes(grid, fixed: dict) -> list[dict]:
    """Per trial of a finished Tune run: config, error, epochs run, dev F1 per epoch (`curve`),
    its cost (`updates`, `cpu_s`, `gpu_s`) and, for a trial that ran to its end, its best dev F1
    and the test F1 of that model (the trial scores test once)."""
    outcomes = []
    for result in grid:
        history = result.metrics_dataframe
        error = result.error or result.metrics.get(PROJECT_ERROR)
        row = {"trial_id": result.metrics.get("trial_id"), "config": {**fixed, **result.config},
               "error": str(error)[-500:] if error else None}
        if history is not None and METRIC in history and not error:
            row["epochs_run"] = int(history["epoch"].max())
            row["curve"] = [[int(e), float(f)] for e, f in zip(history["epoch"], history[METRIC])]
            last = history.iloc[-1]
            row.update({key: float(last[f"cost/{key}"]) for key in ("updates", "cpu_s", "gpu_s")
                        if f"cost/{key}" in history})
            if "best/test_f1" in history and last["best/test_f1"] == last["best/test_f1"]:
                row.update({"dev_f1": float(last["best/dev_f1"]),
                            "test_f1": float(last["best/test_f1"])})
        outcomes.append(row)
    return outcomes


# ---------------------------------------------------------------------------- driver
def print_plan(sweep: SweepConfig, searches: list[dict], n_layers: int | None,
               ranking: dict | None = None) -> None:
    """The plan; with `ranking` (sweeps/rank_sources.sweep_ranking) each target's ranked
    candidates first."""
    for target, ranked in (ranking or {}).items():
        print(f"sources for {target}, best first (top {sweep.source_rank['top_k']} searched):")
        print("\n".join(format_ranking(ranked["rows"])))
        for warning in ranked["warnings"]:
            print(f"warning: {warning}")
    trials = len(searches) * sweep.trials_per_search
    print(f"Sweep {sweep.name!r}: task {sweep.task}, {len(sweep.targets)} target(s), "
          f"{len(sweep.sources)} candidate source(s), methods {', '.join(sweep.methods)}")
    print(f"{len(searches)} searches x {sweep.trials_per_search} trials = {trials} trials; "
          f"per trial {sweep.cpus_per_trial:g} CPU, {sweep.gpus_per_trial:g} GPU; up to "
          f"{sweep.max_concurrent} concurrent per search; ASHA grace {sweep.grace_period}, "
          f"reduction {sweep.reduction_factor}")
    print(f"encoder {sweep.base_trial(sweep.targets[0], sweep.methods[0]).encoder}"
          + (f" ({n_layers} layers)" if n_layers else ""))
    print(f"{'search':<58} {'sources':<40} searched")
    for search in searches:
        sources = ", ".join(s or "-" for s in search["sources"])
        print(f"{search_name(search):<58} {sources:<40} "
              f"{', '.join((['source'] if len(search['sources']) > 1 else []) + search['dimensions'])}")


def check_inputs(sweep: SweepConfig, searches: list[dict]) -> int:
    """Fail before launching anything on what every trial would fail on: read every split each
    trial reads (train, dev and test, sampled to the configured sizes), and check the RTN
    layers against the encoder's depth (from its config). Returns that depth."""
    encoder = sweep.base_trial(sweep.targets[0], sweep.methods[0]).encoder
    n_layers = encoder_depth(encoder)
    seen = set()
    for search in searches:
        for source in search["sources"]:
            trial = sweep.base_trial(search["target"], search["method"], source)
            trial.insertion_layers(n_layers)  # a fixed rtn_layer / rtn_layers
            if (trial.target, trial.source, trial.method) not in seen:
                seen.add((trial.target, trial.source, trial.method))
                data_lib.load_task_data(trial)
    where = f"encoder {encoder!r} has {n_layers} layers"
    if "rtn_layer" in sweep.space:
        low, high = sweep.space["rtn_layer"]
        if low > n_layers:
            raise ConfigError(f"space.rtn_layer: [{low}, {high}] lies above the last layer; {where}")
        if high is not None and high > n_layers:
            print(f"warning: space.rtn_layer: upper bound {high} lowered to {n_layers}; {where}",
                  flush=True)
    for layers in sweep.space.get("rtn_layers", []):
        if max(int(k) for k in layers.split(",")) > n_layers:
            raise ConfigError(f"space.rtn_layers: {layers!r} names a layer above the last; {where}")
    frozen = sweep.base_trial(sweep.targets[0], sweep.methods[0]).freeze_layers
    lowest = [sweep.space["rtn_layer"][0]] if "rtn_layer" in sweep.space else \
        [min(int(k) for k in layers.split(",")) for layers in sweep.space.get("rtn_layers", [])]
    if any(k < frozen for k in lowest):
        raise ConfigError(f"space: RTN layers from {min(lowest)} would sit inside the frozen layers "
                          f"(freeze_layers: {frozen}); search layers {frozen}..{n_layers}")
    return n_layers


def check_output_dir(output_dir: Path, resume: bool) -> None:
    """A sweep folder holds one sweep: refuse to start a second one in it (its Tune state and
    MLflow runs would mix with the first's); --resume continues it, from a folder this user owns
    only (it unpickles Ray Tune state from there)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output-dir: {output_dir} exists and is not a folder")
    if resume:
        for path in (output_dir, output_dir / "tune"):
            if path.exists() and path.stat().st_uid != os.getuid():
                raise ConfigError(f"--resume: {path} is not owned by the current user; resuming "
                                  "unpickles Ray Tune state from it, so it must be trusted")
    elif any((output_dir / name).exists() for name in (SWEEP_ID, "tune", "summary.json")):
        raise ConfigError(f"{output_dir} already holds a sweep (finished or interrupted); pass "
                          "--resume to continue it or --output-dir for a new one")


def attempt_id(output_dir: Path, name: str) -> str:
    """This sweep attempt's id, tagged on each of its MLflow runs: a resumed attempt keeps its
    id, a new one gets a fresh one (written before any run is created)."""
    path = output_dir / SWEEP_ID
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    sweep_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, sweep_id)
    return sweep_id


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process (Linux /proc)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        table[int(stat.parent.name)] = (int(fields[1]), fields[19])
    return table


def record_local_ray(output_dir: Path) -> None:
    """Note the processes of the local Ray just started (this driver's descendants), so the
    next start can stop any that outlive a killed driver (Ray's agents ignore SIGTERM)."""
    table, mine, found = _processes(), {os.getpid()}, True
    while found:
        found = {pid for pid, (parent, _) in table.items() if parent in mine} - mine
        mine |= found
    mine.discard(os.getpid())
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RAY_PROCESSES).write_text(json.dumps(
        [[pid, table[pid][1]] for pid in sorted(mine)]), encoding="utf-8")


def stop_leftover_ray(output_dir: Path) -> None:
    """Kill the processes recorded by an earlier local Ray of this sweep folder that are still
    alive (same pid and start time, so never a process that reused a pid)."""
    path = output_dir / RAY_PROCESSES
    if not path.exists():
        return
    table = _processes()
    for pid, started in json.loads(path.read_text(encoding="utf-8")):
        if pid in table and table[pid][1] == started:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, signal.SIGKILL)
    path.unlink()


def check_resources(sweep: SweepConfig, address: str | None) -> None:
    """Refuse a local sweep no node can run; warn on a cluster (an autoscaler may add nodes)."""
    need = {"CPU": sweep.cpus_per_trial, "GPU": sweep.gpus_per_trial}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(node.get(k, 0) >= v for k, v in need.items() if v) for node in nodes):
        return
    have = [{k: node.get(k, 0) for k in need} for node in nodes]
    message = (f"no node can run a trial needing {need}; nodes have {have}. "
               "Lower --cpus-per-trial/--gpus-per-trial or add nodes.")
    if address is None:
        raise MetaXLError(message)
    print(f"warning: {message} Waiting for the autoscaler.", flush=True)


def _dev_f1(trial: dict) -> float:
    return trial["dev_f1"]


def _trial_id(trial: dict) -> str:
    return str(trial["trial_id"])


def summarise(sweep: SweepConfig, outcomes: list[dict]) -> list[dict]:
    """Per target: the best trial (`selection.best_trial`) of each method and over all methods,
    its test F1 (mean ± std over seeds when seeds_per_config > 1), metaxl's gain over joint."""
    repeats = {o["seed_repeats"][0]["trial_id"]: [r["test_f1"] for r in o["seed_repeats"]
                                                  if "test_f1" in r]
               for o in outcomes if o["seed_repeats"]}
    rows = []
    for target in sweep.targets:
        finished_by_method: dict[str, list[dict]] = {}
        for outcome in outcomes:
            if outcome["search"]["target"] == target:
                finished_by_method.setdefault(outcome["search"]["method"], []).extend(
                    t for t in outcome["trials"] if "dev_f1" in t)
        best_by_method = {method: best_trial(trials, _dev_f1, _trial_id)
                          for method, trials in finished_by_method.items() if trials}
        if not best_by_method:
            rows.append({"target": target, "best_method": None})
            continue
        trial = best_trial(best_by_method.values(), _dev_f1, _trial_id)
        method = next(m for m, t in best_by_method.items() if t is trial)
        for best in best_by_method.values():
            seeds = mean_std(repeats.get(best["trial_id"], [best["test_f1"]]))
            best.update({"test_f1_seeds": seeds["values"], "test_f1_mean": seeds["mean"],
                         "test_f1_std": seeds["std"]})
        gain = None
        if "metaxl" in best_by_method and "joint" in best_by_method:
            gain = best_by_method["metaxl"]["test_f1_mean"] - best_by_method["joint"]["test_f1_mean"]
        rows.append({"target": target, "best_method": method,
                     "best_source": trial["config"].get("source"), "dev_f1": trial["dev_f1"],
                     "test_f1": trial["test_f1"], "trial_id": trial["trial_id"],
                     "test_f1_mean": trial["test_f1_mean"], "test_f1_std": trial["test_f1_std"],
                     "seeds": len(trial["test_f1_seeds"]),
                     "metaxl_minus_joint_test_f1": gain,
                     "per_method": {m: {k: t[k] for k in ("dev_f1", "test_f1", "test_f1_mean",
                                                         "test_f1_std", "test_f1_seeds")}
                                    | {"source": t["config"].get("source")}
                                    for m, t in best_by_method.items()}})
    return rows


def print_summary(rows: list[dict]) -> None:
    print(f"\n{'target':<26} {'best method':<12} {'best source':<24} {'dev F1':>7} "
          f"{'test F1 (seeds)':>20} {'metaxl-joint':>13}")
    for row in rows:
        if row["best_method"] is None:
            print(f"{row['target']:<26} (no finished trial)")
            continue
        gain = row["metaxl_minus_joint_test_f1"]
        test = f"{row['test_f1_mean']:.4f} ± {row['test_f1_std']:.4f} ({row['seeds']})"
        print(f"{row['target']:<26} {row['best_method']:<12} {str(row['best_source']):<24} "
              f"{row['dev_f1']:>7.4f} {test:>20} {'' if gain is None else f'{gain:+.4f}':>13}")


def log_analysis(output_dir: Path, summary: dict, client, parents: dict[str, str]) -> None:
    """Write the sweep's analysis (`sweeps/analysis.py`) and attach it to the targets' parent
    runs. A failure here loses nothing: it is reported, and `sweeps/analysis.py` re-runs it."""
    try:
        analyse_sweep(output_dir)
        root = output_dir / "analysis"
        for search in summary["searches"]:
            client.log_artifacts(parents[search["target"]], str(root / search["name"]),
                                 f"analysis/{search['name']}")
        for parent in parents.values():
            for name in ("analysis.md", "cost.png"):
                client.log_artifact(parent, str(root / name), "analysis")
        print(f"analysis: {root / 'analysis.md'}")
    except Exception as err:  # noqa: BLE001 (the sweep's results are already saved)
        print(f"warning: the sweep analysis failed ({type(err).__name__}: {err}); run "
              f"python sweeps/analysis.py --output-dir {output_dir}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="sweep YAML; flags below override its keys")
    p.add_argument("--address", help="Ray cluster address ('auto' = the running cluster); "
                   "default: a local Ray started in-process")
    p.add_argument("--mlflow-uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///OUTPUT_DIR/mlflow.db)")
    p.add_argument("--output-dir", default="runs/sweep", help="sweep folder (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    p.add_argument("--targets", nargs="+")
    p.add_argument("--sources", nargs="+")
    p.add_argument("--methods", nargs="+")
    p.add_argument("--grid-pairs", action="store_true", default=None,
                   help="one search per (source, target) pair instead of searching the source")
    p.add_argument("--trials-per-search", type=int)
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--seeds-per-config", type=int,
                   help="re-run each search's best configuration with this many seeds in all")
    p.add_argument("--reuse-actors", type=lambda v: v.lower() in ("1", "true", "yes"),
                   metavar="BOOL", help="reuse warm worker processes between trials (default: true)")
    p.add_argument("--checkpoint-interval-s", type=float,
                   help="seconds between a trial's checkpoints (0: after every evaluation)")
    p.add_argument("--data-root")
    p.add_argument("--name")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in (
        "config", "address", "mlflow_uri", "output_dir", "dry_run", "resume")}
    started = time.time()
    try:
        sweep = SweepConfig.load(args.config, overrides)
        ranking = sweep_ranking(sweep) if sweep.source_rank else None
        searches = sweep.searches(ranking and {t: [row["source"] for row in r["rows"]]
                                               for t, r in ranking.items()})
        if args.dry_run:
            print_plan(sweep, searches, None, ranking)
            return 0
        output_dir = Path(args.output_dir).resolve()
        summary_path = output_dir / "summary.json"
        check_output_dir(output_dir, args.resume)
        n_layers = check_inputs(sweep, searches)
        uri = args.mlflow_uri or default_tracking_uri(str(output_dir))
        client, experiment_id = open_experiment(uri, sweep.name)
        print_plan(sweep, searches, n_layers, ranking)
        if args.address is None:
            stop_leftover_ray(output_dir)
        ray.init(address=args.address, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": uri}} if args.address else None)
        if args.address is None:
            record_local_ray(output_dir)
        check_resources(sweep, args.address)
        sweep_id = attempt_id(output_dir, sweep.name)
        parents = {t: target_run(client, experiment_id, sweep_id, t) for t in sweep.targets}
        storage = str(output_dir / "tune")
        # Search drivers stay on this node: losing a worker node must not lose a search.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        futures = [run_search.options(scheduling_strategy=here).remote(
                       sweep, s, i, n_layers, storage, uri, experiment_id,
                       parents[s["target"]], sweep_id, args.resume)
                   for i, s in enumerate(searches)]
        outcomes = ray.get(futures)
        ray.shutdown()  # flushes the searches' output before the summary
        (output_dir / RAY_PROCESSES).unlink(missing_ok=True)
    except MetaXLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = summarise(sweep, outcomes)
    epochs = sweep.base_trial(sweep.targets[0], sweep.methods[0]).epochs
    for row in rows:
        if row["best_method"] is not None:
            client.log_dict(parents[row["target"]], row, "best.json")
            client.log_metric(parents[row["target"]], "best/dev_f1", row["dev_f1"])
            client.log_metric(parents[row["target"]], "best/test_f1", row["test_f1"])
            client.set_tag(parents[row["target"]], "best_trial_id", row["trial_id"])
        client.set_terminated(parents[row["target"]])
    print_summary(rows)
    errors = [e for o in outcomes for e in o["mlflow_errors"]]
    failed = [t for o in outcomes for t in o["trials"] if t["error"]]
    summary = {"sweep": sweep.name, "sweep_id": sweep_id, "mlflow_uri": uri,
               "wall_time_s": round(time.time() - started, 1),
               "targets": rows, "failed_trials": failed, "mlflow_errors": errors,
               "epochs": epochs,
               "searches": [{"name": o["name"], "target": o["search"]["target"],
                             "method": o["search"]["method"], "trials": o["trials"]}
                            for o in outcomes]}
    write_atomic(summary_path, json.dumps(summary, indent=2, default=str))
    log_analysis(output_dir, summary, client, parents)
    trials = [t for o in outcomes for t in o["trials"]]
    stopped = sum(1 for t in trials if not t["error"] and t.get("epochs_run", epochs) < epochs)
    print(f"\n{len(trials)} trials: {len(trials) - stopped - len(failed)} ran all {epochs} epochs, "
          f"{stopped} stopped early by ASHA, {len(failed)} failed. {summary['wall_time_s']:.0f} s")
    print(f"summary: {summary_path}\nMLflow: {uri}")
    if errors:
        print(f"error: MLflow logging failed and was not recovered: {errors}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} trial(s) failed; their errors are in {summary_path} and in "
              "MLflow (status FAILED, tag 'error')", file=sys.stderr)
    return 1 if errors or failed else 0


if __name__ == "__main__":
    sys.exit(main())
