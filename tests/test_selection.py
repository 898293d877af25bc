"""One rule for "best": the selection functions, and a tie on which the sweep summary, the
export and the report must name the same trial."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from metaxl_core import selection
from metaxl_core.metrics import sentiment_scores
from sweeps import export as export_lib
from sweeps import report as report_lib
from sweeps.pairs import summarise
from sweeps.search import pick_of
from sweeps.settings import SweepConfig
from sweeps.mlflow_store import log_results

TARGET, SOURCE = "ner:masakhaner2:yor", "ner:conll2003:en"


def test_a_constant_positive_classifier_is_not_selected_over_one_that_separates_the_classes():
    """On an imbalanced binary dev set always "positive" has the higher positive-class F1, but
    the `dev/f1` selection maximises is macro-F1: the evaluation (`best_evaluation`, as the
    training loop's `improves`) and the trial (`best_trial`) that separate the classes win."""
    labels = ["negative", "positive"]
    gold = ["positive"] * 8 + ["negative"] * 2
    constant = sentiment_scores(gold, ["positive"] * 10, labels)
    separates = sentiment_scores(gold, ["positive"] * 5 + ["negative"] * 5, labels)
    assert constant["pos_f1"] > separates["pos_f1"]
    history = [{"epoch": e, **{f"dev/{k}": v for k, v in scores.items()}}
               for e, scores in [(1, constant), (2, separates)]]
    assert selection.best_evaluation(history)["epoch"] == 2
    trials = [("trial_00000", constant), ("trial_00001", separates)]
    assert selection.best_trial(trials, lambda t: t[1]["f1"], lambda t: t[0])[1] is separates


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
    trials = [{"trial_id": t, "dev_f1": d, "test_f1": f, "config": {"seed": 1}}
              for t, d, f in TRIALS]
    outcomes = [{"search": {"target": TARGET, "method": "joint"}, "trials": trials,
                 "pick": pick_of(trials, [])}]
    summarised = summarise(sweep, outcomes)[0]["trial_id"]

    assert len(reported) == 1
    assert exported == reported[0]["trial_id"] == summarised == "b_00001"


# dev F1 per seed of one search's candidates: "a" wins on its own seed (1) but not on average;
# "one" has a single seed (never confirmed) and the highest dev F1 of all.
CONFIRMED = {"a": {1: 0.80, 2: 0.60, 3: 0.62}, "b": {1: 0.75, 2: 0.74, 3: 0.73},
             "anchor": {1: 0.70, 2: 0.69, 3: 0.72}, "one": {1: 0.90}}


def test_the_confirmed_pick_is_the_best_mean_over_seeds_not_the_best_single_seed():
    pick = selection.confirmed_pick(CONFIRMED, "anchor")
    assert pick["pick"] == "b" and pick["seeds"] == 3
    assert pick["mean"] == pytest.approx(0.74)
    low, high = pick["ci95"]
    assert 0.73 <= low <= 0.74 <= high <= 0.75
    versus = pick["vs_anchor"]  # b - anchor per seed: +0.05, +0.05, +0.01
    assert versus["n"] == 3 and versus["mean"] == pytest.approx(0.11 / 3)
    assert versus["ci95"][0] > 0 and pick["separated"]
    close = selection.confirmed_pick({**CONFIRMED, "anchor": {1: 0.76, 2: 0.72, 3: 0.72}}, "anchor")
    assert close["pick"] == "b" and not close["separated"]  # b - anchor: -0.01, +0.02, +0.01
    assert selection.confirmed_pick(CONFIRMED, None)["vs_anchor"] is None


def _confirmed_store(tmp_path, new_mlflow_store, anchor_scores=None):
    """A sweep attempt in MLflow: each CONFIRMED candidate's trial run on its first seed (the
    anchor tagged) and confirmation runs on the others."""
    uri = new_mlflow_store(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("confirmed",
                                             artifact_location=(tmp_path / "a").as_uri())
    tags = {"sweep_id": "s1", "target": TARGET, "source": SOURCE, "task": "ner", "search": "s"}
    client.set_terminated(client.create_run(experiment_id, tags={**tags, "role": "target"})
                          .info.run_id)
    candidates = {**CONFIRMED, "anchor": anchor_scores or CONFIRMED["anchor"]}
    for i, (trial, seeds) in enumerate(candidates.items()):
        for seed, dev in seeds.items():
            results = _results(dev, 0.5)
            results["config"].update(seed=seed, lr=1e-4 * (i + 1))
            role = {"role": "trial", "trial_id": trial} if seed == 1 else \
                {"role": "confirm", "trial_id": f"{trial}-confirm{seed}", "confirms_trial": trial}
            log_results(client, experiment_id, results, {
                **tags, **role, **({"anchor": "true"} if trial == "anchor" and seed == 1 else {})})
    return uri


def test_export_writes_the_confirmed_pick_with_its_interval_against_the_anchor(
        tmp_path, new_mlflow_store, capsys):
    uri = _confirmed_store(tmp_path, new_mlflow_store)
    (record,) = export_lib.best_runs(uri, "confirmed")[TARGET]
    assert record["trial_id"] == "b" and record["config"]["lr"] == pytest.approx(2e-4)
    note = record["selection"]
    assert note["seeds"] == 3 and note["dev_f1_mean"] == pytest.approx(0.74)
    assert note["dev_f1_ci95"][0] <= 0.74 <= note["dev_f1_ci95"][1]
    assert note["anchor_trial_id"] == "anchor"
    assert note["dev_minus_anchor"]["mean"] == pytest.approx(0.11 / 3)
    assert note["verdict"].startswith("better than the anchor")
    runners_up = [r["trial_id"] for r in export_lib.best_runs(uri, "confirmed", top_k=4)[TARGET]]
    assert runners_up == ["b", "anchor", "a", "one"]  # the most seeds first, then the mean

    close = _confirmed_store(tmp_path / "close", new_mlflow_store, {1: 0.76, 2: 0.72, 3: 0.72})
    (record,) = export_lib.best_runs(close, "confirmed")[TARGET]
    assert record["trial_id"] == "b" and "NOT separated from the anchor" in \
        record["selection"]["verdict"]
    (kept,) = export_lib.best_runs(close, "confirmed", prefer_anchor=True)[TARGET]
    assert kept["trial_id"] == "anchor" and kept["selection"]["verdict"].startswith(
        "the anchor, kept") and kept["selection"]["seeds"] == 3
    assert export_lib.main(["--mlflow-uri", close, "--experiment", "confirmed", "--out",
                            str(tmp_path / "out"), "--prefer-anchor"]) == 0
    assert "the anchor, kept (--prefer-anchor)" in capsys.readouterr().err
