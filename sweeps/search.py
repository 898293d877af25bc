"""One search on Ray Tune: its search space, Optuna searcher (kept in a journal file), ASHA
scheduler, the trainable each trial runs and the Ray task that drives the search to its end
(`run_search`). The sweep driver (`sweeps/pairs.py`) starts one task per search.

Every search and trial worker process imports this module, so it stays light: the training code
(torch, transformers) is imported inside `trainable`, in the trial workers that train.
"""

from __future__ import annotations

import glob
import json
import math
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
from metaxl_core.selection import confirmed_pick, rank_trials
from sweeps.settings import CHOICES, OPTUNA_JOURNAL, TUNE_DIR, SweepConfig
from sweeps.tracking import CANDIDATE, PROJECT_ERROR, MLflowTracker, trial_fields

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
    update a finished trial). `anchor`: the first trial has these fields (every searched one);
    `first_sources`: the next trials try these sources in this order (the ranked candidates),
    their other dimensions sampled as usual (Ray's points_to_evaluate would need every
    dimension fixed). Both are enqueued in the study itself, so a resumed study keeps them."""

    def __init__(self, *args, anchor=None, first_sources=(), **kwargs):
        self._first = ([anchor] if anchor else []) + [
            {"source": source} for source in first_sources
            if not anchor or source != anchor.get("source")]
        super().__init__(*args, **kwargs)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        if not super().set_search_properties(metric, mode, config, **spec):
            return False
        for params in self._first:  # skip_if_exists: a resumed study has them already
            self._ot_study.enqueue_trial(params, skip_if_exists=True)
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


def make_searcher(sweep: SweepConfig, index: int, study_name: str, journal: str, anchor: dict,
                  first_sources=()) -> ConcurrencyLimiter:
    """Optuna TPE for one search, its study kept in the sweep's journal file (resumable; open it
    live with `optuna-dashboard <journal>`); its first trial is the anchor, the next ones try
    `first_sources` in order."""
    storage = JournalStorage(JournalFileBackend(journal))
    return ConcurrencyLimiter(FileBackedOptunaSearch(
        metric=METRIC, mode=MODE, seed=sweep.seed + index, study_name=study_name,
        storage=storage, anchor=anchor, first_sources=first_sources),
        max_concurrent=sweep.max_concurrent)


def close_study(journal: str, study_name: str) -> None:
    """Mark FAIL the study's trials still RUNNING once its search ended: trials a killed driver
    had asked for after Tune's last snapshot, which a resume replaced by new ones."""
    study = optuna.load_study(study_name=study_name,
                              storage=JournalStorage(JournalFileBackend(journal)))
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def make_scheduler(sweep: SweepConfig, fixed: dict, updates: int) -> ASHAScheduler:
    """ASHA with rungs in optimizer updates (a trial reports after every dev evaluation): the
    first at `grace_period` updates (default: a trial's first evaluation), then every
    `reduction_factor` times further, up to `updates`, the most a trial of the search makes."""
    first = fixed["eval_every"] or math.ceil(updates / fixed["epochs"])
    return ASHAScheduler(time_attr="step", metric=METRIC, mode=MODE, max_t=updates,
                         grace_period=min(sweep.grace_period or first, updates),
                         reduction_factor=sweep.reduction_factor)


def trainable(config: dict, fixed: dict, checkpoint_interval_s: float = 0.0) -> None:
    """One Tune trial: run_trial, reporting after every dev evaluation and checkpointing at an
    epoch's end (never the last) once `checkpoint_interval_s` has passed since the trial's start
    or last checkpoint, so a preempted trial resumes from there. A project error (bad config or
    data) is reported as the trial's last result instead of raised, so Tune does not retry it
    (`max_failures` is for crashes); the tracker ends such a trial FAILED."""
    import torch  # here, not at the top: search workers import this module and never train

    from metaxl_core.train import run_trial
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / "state.pt", weights_only=True)

    node_id = ray.get_runtime_context().get_node_id()
    trial = {**fixed, **trial_fields(config)}
    last_checkpoint = time.monotonic()

    def report(metrics: dict, state: dict | None) -> None:
        nonlocal last_checkpoint
        metrics["node_id"] = node_id  # which cluster node ran the trial (an MLflow tag)
        # a finished trial never resumes; each checkpoint also forces a Tune experiment snapshot
        if state is None or metrics["epoch"] == trial["epochs"] \
                or time.monotonic() - last_checkpoint < checkpoint_interval_s:
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
    `<output_dir>/tune/`: the anchor first, the search, then (seeds_per_config > 1) the
    confirmation stage. Returns its trials' outcomes, the confirmation's and the pick."""
    fixed = sweep.base_trial(search["target"], search["method"], search["sources"][0]).to_dict()
    name = search_name(search)
    storage = os.path.join(output_dir, TUNE_DIR)
    path = os.path.join(storage, name)
    journal = os.path.join(output_dir, OPTUNA_JOURNAL)
    anchor = sweep.anchor_config(search, n_layers)
    tags = {"sweep_id": sweep_id, "task": sweep.task, "method": search["method"],
            "target_lang": language_of(search["target"]), "target": search["target"],
            "encoder": fixed["encoder"], "search": name}
    tracker = MLflowTracker(uri, experiment_id, parent_run_id, tags, fixed,
                            os.path.join(path, ERRORS), anchor)
    with_fixed = tune.with_parameters(trainable, fixed=fixed,
                                      checkpoint_interval_s=sweep.checkpoint_interval_s)
    # Tune registers trainables by name, cluster-wide: concurrent searches sharing one name
    # would run each other's fixed config (source, method), so each search gets its own.
    with_fixed.__name__ = name
    runnable = tune.with_resources(with_fixed, {"cpu": sweep.cpus_per_trial,
                                                "gpu": sweep.gpus_per_trial})
    updates = max(sweep.base_trial(search["target"], search["method"], s).planned_updates()
                  for s in search["sources"])
    if resume and restorable(path):  # the restored RunConfig brings its tracker back
        tuner = tune.Tuner.restore(path, runnable, resume_unfinished=True, restart_errored=True)
    else:
        tuner = tune.Tuner(
            runnable,
            param_space=search_space(sweep, search, n_layers),
            tune_config=tune.TuneConfig(search_alg=make_searcher(
                                            sweep, index, name, journal, anchor,
                                            search["sources"] if search["ranked"] else ()),
                                        scheduler=make_scheduler(sweep, fixed, updates),
                                        num_samples=sweep.trials_per_search,
                                        reuse_actors=sweep.reuse_actors),
            run_config=tune.RunConfig(
                name=name, storage_path=storage, callbacks=[tracker], verbose=1,
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    outcomes = _outcomes(tuner.fit(), fixed, anchor)
    close_study(journal, name)
    confirmations = []
    candidates = confirm_candidates(outcomes, sweep.confirm_top_k)
    if sweep.seeds_per_config > 1 and candidates:
        confirm_path = path + "_confirm"
        confirm_tracker = MLflowTracker(uri, experiment_id, parent_run_id,
                                        {**tags, "role": "confirm"}, fixed,
                                        os.path.join(confirm_path, ERRORS))
        if resume and restorable(confirm_path):
            confirm_tuner = tune.Tuner.restore(confirm_path, runnable, resume_unfinished=True,
                                               restart_errored=True)
        else:
            confirm_tuner = tune.Tuner(
                runnable, param_space={CANDIDATE: tune.grid_search(confirmation_runs(
                    candidates, sweep.seeds_per_config, sweep.data_seed_follows_seed))},
                tune_config=tune.TuneConfig(reuse_actors=sweep.reuse_actors),
                run_config=tune.RunConfig(name=name + "_confirm", storage_path=storage, verbose=1,
                                          callbacks=[confirm_tracker],
                                          failure_config=tune.FailureConfig(
                                              max_failures=sweep.max_failures)))
        confirmations = _outcomes(confirm_tuner.fit(), fixed)
    unlogged = []
    for folder in (path, path + "_confirm") if confirmations else (path,):
        try:
            with open(os.path.join(folder, ERRORS), encoding="utf-8") as handle:
                unlogged += json.load(handle)
        except FileNotFoundError:
            unlogged.append(f"the MLflow tracker of {os.path.basename(folder)} did not finish")
    return {"search": search, "name": name, "trials": outcomes, "anchor": anchor,
            "confirmations": confirmations,
            "pick": pick_of(outcomes, confirmations) if candidates else None,
            "mlflow_errors": unlogged}


ERRORS = "mlflow-errors.json"  # a Tune run's unrecovered MLflow errors, left by its tracker


def confirm_candidates(outcomes: list[dict], top_k: int) -> list[dict]:
    """The search's top `top_k` trials by dev F1 among those that ran their whole budget, and
    its anchor's trial whatever its score or budget."""
    finished = [o for o in outcomes if "dev_f1" in o]
    top = rank_trials(finished, lambda o: o["dev_f1"], lambda o: o["trial_id"])[:top_k]
    anchor = next((o for o in outcomes if o.get("anchor") and not o["error"]), None)
    return top + ([anchor] if anchor is not None and anchor not in top else [])


def confirmation_runs(candidates: list[dict], seeds: int, data_seed_follows: bool) -> list[dict]:
    """The confirmation stage's trials: each candidate's configuration at `seeds` - 1 more
    seeds (and at its own seed when ASHA stopped it before its full budget); the data sample
    follows the seed unless the sweep fixes it."""
    runs = []
    for candidate in candidates:
        seed = candidate["config"]["seed"]
        for s in range(seed if "dev_f1" not in candidate else seed + 1, seed + seeds):
            runs.append({**candidate["searched"], "seed": s, "confirms": candidate["trial_id"],
                         **({"data_seed": s} if data_seed_follows else {})})
    return runs


def pick_of(outcomes: list[dict], confirmations: list[dict]) -> dict:
    """`selection.confirmed_pick` over the candidates' dev F1 per seed (their own trial's and
    their confirmation runs'), with the test F1 of the pick's seeds."""
    dev, test = {}, {}
    for row in outcomes + confirmations:
        trial = row.get("confirms") or row["trial_id"]
        if "dev_f1" in row:
            dev.setdefault(trial, {})[row["config"]["seed"]] = row["dev_f1"]
            test.setdefault(trial, {})[row["config"]["seed"]] = row["test_f1"]
    anchor = next((o["trial_id"] for o in outcomes if o.get("anchor")), None)
    pick = confirmed_pick(dev, anchor)
    config = next(o["config"] for o in outcomes if o["trial_id"] == pick["pick"])
    return {**pick, "config": config, "test_f1": test[pick["pick"]]}


def _outcomes(grid, fixed: dict, anchor: dict | None = None) -> list[dict]:
    """Per trial of a finished Tune run: config (`searched`: its searched fields), error,
    whether it is the anchor (or which trial it `confirms`), dev F1 per update (`curve`), its
    cost (`updates`, `cpu_s`, `gpu_s`) and, for a trial that ran to its end, its best dev F1
    and the test F1 of that model (the trial scores test once)."""
    outcomes = []
    for result in grid:
        history = result.metrics_dataframe
        error = result.error or result.metrics.get(PROJECT_ERROR)
        searched = trial_fields(result.config)
        config = {**fixed, **searched}
        row = {"trial_id": result.metrics.get("trial_id"), "config": config, "searched": searched,
               "error": str(error)[-500:] if error else None,
               "anchor": bool(anchor) and all(config.get(k) == v for k, v in anchor.items())}
        if CANDIDATE in result.config:
            row["confirms"] = str(result.config[CANDIDATE]["confirms"])
        if history is not None and METRIC in history and not error:
            row["curve"] = [[int(u), float(f)] for u, f in zip(history["step"], history[METRIC])]
            last = history.iloc[-1]
            row.update({key: float(last[f"cost/{key}"]) for key in ("updates", "cpu_s", "gpu_s")
                        if f"cost/{key}" in history})
            if "best/test_f1" in history and last["best/test_f1"] == last["best/test_f1"]:
                row.update({"dev_f1": float(last["best/dev_f1"]),
                            "test_f1": float(last["best/test_f1"])})
        outcomes.append(row)
    return outcomes
