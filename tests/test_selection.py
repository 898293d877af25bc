"""One rule for "best": the selection functions, and a tie on which the sweep summary, the
export and the report must name the same trial."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from metaxl_core import selection
from sweeps import export as export_lib
from sweeps import report as report_lib
from sweeps.pairs import summarise
from sweeps.settings import SweepConfig
from sweeps.mlflow_store import log_results

TARGET, SOURCE = "ner:masakhaner2:yor", "ner:conll2003:en"


def test_best_evaluation_is_the_earliest_of_the_highest_and_nan_ranks_last():
    history = [{"epoch": 1, "dev/f1": math.nan}, {"epoch": 2, "dev/f1": 0.4},
               {"epoch": 3, "dev/f1": 0.6}, {"epoch": 4, "dev/f1": 0.6}, {"epoch": 5}]
    assert selection.best_evaluation(history)["epoch"] == 3
    assert selection.improves(0.1, -math.inf) and not selection.improves(0.6, 0.6)
    assert not selection.improves(math.nan, 0.0) and selection.improves(0.0, math.nan)
    with pytest.raises(ValueError):
        selection.best_evaluation([])


def test_best_trial_breaks_a_tie_by_the_smaller_trial_id():
    trials = [("b_00002", 0.5), ("b_00001", 0.7), ("b_00003", 0.7), ("b_00000", math.nan)]
    ranked = selection.rank_trials(trials, lambda t: t[1], lambda t: t[0])
    assert [t[0] for t in ranked] == ["b_00001", "b_00003", "b_00002", "b_00000"]
    assert selection.best_trial(reversed(trials), lambda t: t[1], lambda t: t[0])[0] == "b_00001"


def test_mean_std_is_the_sample_standard_deviation():
    cell = selection.mean_std([1.0, 2.0, 3.0])
    assert (cell["n"], cell["mean"], cell["std"]) == (3, 2.0, 1.0)
    assert selection.mean_std([4.0])["std"] == 0.0


# dev F1 per trial: two tie at the top. The later id is logged first (earlier start time), so
# "earlier start wins" or "larger id wins" would name b_00002.
TRIALS = [("b_00002", 0.70, 0.61), ("b_00001", 0.70, 0.55), ("b_00000", 0.65, 0.66)]


def _results(dev, test):
    config = {"task": "ner", "target": TARGET, "source": SOURCE, "method": "joint",
              "encoder": "tiny-bert", "epochs": 2}
    return {"config": config, "history": [{"epoch": 1, "dev/f1": dev, "test/f1": test}],
            "best_epoch": 1, "final": {"dev/f1": dev, "test/f1": test}}


def test_summary_export_and_report_name_the_same_trial_on_a_tie(tmp_path, new_mlflow_store):
    uri = new_mlflow_store(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("tie", artifact_location=(tmp_path / "a").as_uri())
    tags = {"sweep_id": "s1", "target": TARGET, "source": SOURCE, "task": "ner"}
    client.set_terminated(client.create_run(experiment_id, tags={**tags, "role": "target"})
                          .info.run_id)
    for trial_id, dev, test in TRIALS:
        log_results(client, experiment_id, _results(dev, test),
                    {**tags, "role": "trial", "trial_id": trial_id})

    exported = export_lib.best_runs(uri, "tie")[TARGET][0]["trial_id"]
    reported = report_lib.select(report_lib.read_runs(client, experiment_id))
    sweep = SweepConfig(targets=[TARGET], sources=[SOURCE], methods=["joint"])
    outcomes = [{"search": {"target": TARGET, "method": "joint"}, "seed_repeats": [],
                 "trials": [{"trial_id": t, "dev_f1": d, "test_f1": f, "config": {}}
                            for t, d, f in TRIALS]}]
    summarised = summarise(sweep, outcomes)[0]["trial_id"]

    assert len(reported) == 1
    assert exported == reported[0]["trial_id"] == summarised == "b_00001"
