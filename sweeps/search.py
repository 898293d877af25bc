"""One search on Ray Tune: its search space, Optuna searcher (kept in a journal file), ASHA
scheduler, the trainable each trial runs and the Ray task that drives the search to its end
(`run_search`). The sweep driver (`sweeps/pairs.py`) starts one task per search.

Every search and trial worker process imports this module, so it stays light: the training code
(torch, transformers) is imported inside `trainable`, in the trial workers that train.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

import optuna
import ray
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from metaxl_core.errors import MetaXLError
from metaxl_core.names import language_of
from metaxl_core.selection import best_trial
from sweeps.settings import CHOICES, OPTUNA_JOURNAL, TUNE_DIR, SweepConfig
from sweeps.tracking import PROJECT_ERROR, MLflowTracker

METRIC, MODE = "dev/f1", "max"


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
    import torch  # here, not at the top: search workers import this module and never train

    from metaxl_core.train import run_trial
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


def restorable(path: str) -> bool:
    """Whether Tune saved a run's state there: its experiment snapshot, not only the tuner.pkl it
    writes first (a driver killed in between left nothing to restore; that run starts anew)."""
    return tune.Tuner.can_restore(path) and bool(glob.glob(os.path.join(path, "experiment_state-*.json")))


def search_name(search: dict) -> str:
    parts = [search["method"], search["target"].replace(":", "-")]
    if len(search["sources"]) == 1 and search["sources"][0]:
        parts.append("from-" + search["sources"][0].replace(":", "-"))
    return "_".join(parts)


@ray.remote(num_cpus=0)
def run_search(sweep: SweepConfig, search: dict, index: int, n_layers: int, output_dir: str,
               uri: str, experiment_id: str, parent_run_id: str, sweep_id: str,
               resume: bool) -> dict:
    """Drive one (target, method[, source]) search to the end, its Tune runs under
    `<output_dir>/tune/`; returns its trials' outcomes."""
    fixed = sweep.base_trial(search["target"], search["method"], search["sources"][0]).to_dict()
    epochs = fixed["epochs"]
    name = search_name(search)
    storage = os.path.join(output_dir, TUNE_DIR)
    path = os.path.join(storage, name)
    journal = os.path.join(output_dir, OPTUNA_JOURNAL)
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
    if resume and restorable(path):  # the restored RunConfig brings its tracker back
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
        if resume and restorable(path + "_seeds"):
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
