"""MLflow tracking of sweeps, done on the driver by a Ray Tune callback.

Layout: one experiment per sweep name; a parent run per target language and sweep attempt
(tags `role=target`, `sweep_id`) that records the best trial; one child run per Tune trial (tag
`role=trial`, `trial_id`; the search's anchor also `anchor=true`; a confirmation stage's runs
`role=confirm`, `confirms_trial`), found again by its trial id on resume, so a resumed sweep
never duplicates a run, and evaluations a restarted trial reports again are not logged twice.
Metrics are logged at step = optimizer updates. A run no
trial owns at the end (its trial started after Tune's last saved state and a resume replaced
it) ends KILLED as `role=abandoned_trial` with tag `killed_reason`. Runs stopped
early by the scheduler end as KILLED with tag `stopped_early=true`, failed trials as FAILED
with the error. A logging call that fails (server down) is kept and retried; whatever still
fails at the end is reported, never dropped silently.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from metaxl_core.config import TrialConfig, source_label
from metaxl_core.selection import best_evaluation
from sweeps.mlflow_store import find_run, resume_run, safe_params

PROJECT_ERROR = "project_error"  # a trial's last result when a config or data error ended it
CANDIDATE = "candidate"  # a confirmation trial's config: {fields..., "confirms": trial id}


def trial_fields(config: dict) -> dict:
    """A Tune trial's config as trial fields: a confirmation trial's candidate unpacked."""
    candidate = config.get(CANDIDATE, {})
    return {**{k: v for k, v in config.items() if k != CANDIDATE},
            **{k: v for k, v in candidate.items() if k != "confirms"}}


class MLflowTracker(tune.Callback):
    """Logs each Tune trial of one search as an MLflow child run of its target's parent run."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, tags: dict,
                 fixed_config: dict, error_file: str, anchor: dict | None = None):
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.tags, self.fixed_config = tags, fixed_config
        self.anchor = anchor  # the anchor's searched fields: the trial that has them is tagged
        self.error_file = error_file  # where unrecovered logging errors are left for the driver
        self.client = MlflowClient(tracking_uri=uri)
        self.run_ids: dict[str, str] = {}
        self.history: dict[str, list[dict]] = {}
        self.project_errors: dict[str, str] = {}  # trial id -> traceback, until it completes
        self.pending: list[Callable[[], None]] = []
        self.errors: list[str] = []

    # -- plumbing: every call goes through _do, which keeps failed calls for a retry
    def _do(self, action: Callable[[], None]) -> None:
        self.pending.append(action)
        self.flush()

    def flush(self, attempts: int = 1) -> list[str]:
        """Retry pending calls in order; returns the errors of calls that still fail."""
        for attempt in range(attempts):
            while self.pending:
                try:
                    self.pending[0]()
                except Exception as err:  # keep it; the sweep must not die for logging
                    message = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                    if not self.errors or self.errors[-1] != message:
                        self.errors.append(message)
                    break
                self.pending.pop(0)
            if not self.pending:
                return []
            time.sleep(min(2 ** attempt, 10))
        return self.errors

    def _run_id(self, trial) -> str:
        """The trial's run: found by trial id (a resumed trial), else created."""
        if trial.trial_id not in self.run_ids:
            run_id = find_run(self.client, self.experiment_id, trial_id=trial.trial_id)
            if run_id is None:
                config = self._config(trial)
                tags = {"role": "trial", **self.tags, "trial_id": trial.trial_id,
                        "source_lang": source_label(config.get("source")),
                        "mlflow.parentRunId": self.parent_run_id}
                if self.anchor and all(config.get(k) == v for k, v in self.anchor.items()):
                    tags["anchor"] = "true"
                if CANDIDATE in trial.config:
                    tags["confirms_trial"] = str(trial.config[CANDIDATE]["confirms"])
                run_id = self.client.create_run(
                    self.experiment_id, run_name=f"{tags['method']}-{tags['target_lang']}-"
                    f"{trial.trial_id}", tags=tags).info.run_id
            else:  # continue its run, and its history unless this process holds it already
                resume_run(self.client, run_id)
                if not self.history.get(trial.trial_id):
                    self.history[trial.trial_id] = self._logged_history(run_id)
            self.run_ids[trial.trial_id] = run_id
        return self.run_ids[trial.trial_id]

    def _config(self, trial) -> dict:
        return {**self.fixed_config, **trial_fields(trial.config)}

    def _logged_history(self, run_id: str) -> list[dict]:
        by_step: dict[int, dict] = {}
        for key in ("dev/f1", "test/f1", "epoch"):
            for metric in self.client.get_metric_history(run_id, key):
                by_step.setdefault(metric.step, {"step": metric.step})[key] = metric.value
        return [by_step[s] for s in sorted(by_step)]

    # -- Tune callbacks
    def on_trial_start(self, iteration, trials, trial, **info):
        params = [Param(k, v) for k, v in safe_params(self._config(trial)).items()]
        self._do(lambda: self.client.log_batch(self._run_id(trial), params=params))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if PROJECT_ERROR in result:  # the trial ends now; on_trial_complete marks it FAILED
            self.project_errors[trial.trial_id] = result[PROJECT_ERROR]
            return
        metrics = {k: v for k, v in result.items() if "/" in k and isinstance(v, (int, float))}
        step = int(result.get("step", result.get("training_iteration", 0)))
        history = self.history.setdefault(trial.trial_id, [])
        if any(m["step"] == step for m in history):
            return  # a trial restarted from a checkpoint reports it again: keep the first copy
        history.append({"step": step, "epoch": result.get("epoch", 0), **metrics})
        best = best_evaluation(history)
        summary = {"best/dev_f1": best.get("dev/f1", 0.0), "best/step": best["step"],
                   **({"best/test_f1": best["test/f1"]} if "test/f1" in best else {}),
                   **{k: v for k, v in metrics.items() if k.startswith("best/")}}  # the trial's own
        stamp = int(time.time() * 1000)
        tags = [RunTag("node_id", str(result["node_id"]))] if "node_id" in result else []
        logged = {**metrics, **summary, "epoch": result.get("epoch", 0)}

        def log():
            self.client.log_batch(self._run_id(trial), tags=tags, metrics=[
                Metric(k, float(v), stamp, step) for k, v in logged.items()])
        self._do(log)

    def on_trial_complete(self, iteration, trials, trial, **info):
        error = self.project_errors.pop(trial.trial_id, None)
        if error is not None:
            self._finish(trial, "FAILED", {"error": error[-4000:],
                                           "error_summary": error.strip().splitlines()[-1][:500]})
            return
        done = max((m["step"] for m in self.history.get(trial.trial_id, [])), default=0)
        stopped = done < TrialConfig.from_dict(self._config(trial)).planned_updates()
        self._finish(trial, "KILLED" if stopped else "FINISHED",
                     {"stopped_early": str(stopped).lower()})

    def on_trial_error(self, iteration, trials, trial, **info):
        path = trial.error_file  # Tune writes it on the driver before calling us
        error = (open(path, encoding="utf-8").read() if path and os.path.exists(path)
                 else "no traceback saved; see the Ray Tune trial log").strip()
        self._finish(trial, "FAILED", {"error": error[-4000:],
                                       "error_summary": error.splitlines()[-1][:500]})

    def on_experiment_end(self, trials, **info):
        self._do(lambda: self._end_orphans({t.trial_id for t in trials}))
        errors = self.flush(attempts=5)
        with open(self.error_file, "w", encoding="utf-8") as handle:
            json.dump(errors, handle)

    def _end_orphans(self, trial_ids: set[str]) -> None:
        """End as KILLED every run of this search that no trial owns: a trial started after
        Tune's last saved state, which a resume replaced with a new trial."""
        query = " and ".join(f"tags.{k} = '{self.tags[k]}'" for k in ("sweep_id", "search"))
        role = self.tags.get("role", "trial")
        for run in self.client.search_runs([self.experiment_id], f"{query} and tags.role = "
                                           f"'{role}'", max_results=50000):
            if run.data.tags.get("trial_id") not in trial_ids:
                self.client.log_batch(run.info.run_id, tags=[
                    RunTag("role", f"abandoned_{role}"),
                    RunTag("killed_reason", "its trial started after the last saved Tune state "
                           "and was replaced by another trial on resume")])
                self.client.set_terminated(run.info.run_id, status="KILLED")

    def _finish(self, trial, status: str, tags: dict) -> None:
        history = list(self.history.get(trial.trial_id, []))
        config = self._config(trial)

        def finish():
            run_id = self._run_id(trial)
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.log_text(run_id, yaml.safe_dump(config, sort_keys=True), "trial.yaml")
            if history:
                best = best_evaluation(history)
                self.client.log_text(run_id, json.dumps(
                    {"config": config, "history": history, "best_step": best["step"],
                     "final": {k: v for k, v in best.items() if "/" in k}, "status": status},
                    indent=2, sort_keys=True), "results.json")
            self.client.set_terminated(run_id, status=status)
        self._do(finish)
