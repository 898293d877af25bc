"""sweeps/analysis.py on a hand-made sweep folder: an Optuna study whose dev F1 depends on lr
only must rank lr first; plots, markdown and clear errors."""

import json
import random
import subprocess
import sys

import optuna
import pytest

from metaxl_core.errors import ConfigError
from sweeps.analysis import analyse_sweep
from tests.conftest import PROJECT_ROOT


def _sweep_folder(tmp_path, n: int = 16):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    study = optuna.create_study(study_name="metaxl_yor", storage=storage, direction="maximize")
    rng = random.Random(0)
    trials = []
    for i in range(n):
        params = {"lr": 10 ** rng.uniform(-5, -3), "rtn_width": rng.choice([64, 192]),
                  "rtn_layer": rng.randint(8, 12)}
        value = 0.8 - abs(params["lr"] - 3e-4) * 1000  # only lr matters
        study.add_trial(optuna.trial.create_trial(
            params=params, value=value, distributions={
                "lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True),
                "rtn_width": optuna.distributions.CategoricalDistribution([64, 192]),
                "rtn_layer": optuna.distributions.IntDistribution(8, 12)}))
        stopped = i % 3 == 0
        curve = [[1, value - 0.1]] if stopped else [[1, value - 0.1], [2, value]]
        trials.append({"trial_id": f"t_{i:05d}", "curve": curve, "epochs_run": len(curve),
                       "cpu_s": 10.0 + i, "updates": 40, **({} if stopped else {"dev_f1": value})})
    summary = {"sweep": "hand-made", "epochs": 2, "searches": [
        {"name": "metaxl_yor", "target": "ner:masakhaner2:yor", "method": "metaxl",
         "trials": trials}]}
    (tmp_path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return tmp_path


def test_the_dimension_that_drives_dev_f1_ranks_first(tmp_path):
    results = analyse_sweep(_sweep_folder(tmp_path))["metaxl_yor"]
    assert results["top"] == "lr" and results["importance"]["lr"] > 0.6
    assert abs(sum(results["importance"].values()) - 1.0) < 1e-6
    low, high = results["best_range"]
    assert 1e-4 < low <= 3e-4 <= high < 1e-3, "the best quarter brackets the optimum"
    folder = tmp_path / "analysis" / "metaxl_yor"
    for png in ("curves.png", "importance.png", "parallel.png", "slice.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG", png
    assert (tmp_path / "analysis" / "cost.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "analysis" / "analysis.md").read_text()
    assert "`metaxl_yor`: lr explains" in md and "18 CPU s, 40 updates (16 trials)" in md


def test_a_folder_that_is_not_a_finished_sweep_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="summary.json: not found"):
        analyse_sweep(tmp_path)
    proc = subprocess.run([sys.executable, "sweeps/analysis.py", "--output-dir", str(tmp_path)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "finished sweep" in proc.stderr


def test_a_resumed_searcher_does_not_tell_a_trial_the_journal_already_finished(tmp_path):
    """Tune's snapshot of the searcher predates the end of trial a; the journal file does not.
    After a resume Tune runs a again, and its results must not be told twice."""
    import pickle

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from sweeps.search import FileBackedOptunaSearch

    def searcher():
        return FileBackedOptunaSearch(
            space={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
            metric="dev/f1", mode="max", study_name="s", seed=0,
            storage=JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal"))))

    live = searcher()
    assert "lr" in live.suggest("a")
    snapshot = pickle.dumps(live)  # Tune's last snapshot: a is running
    live.on_trial_result("a", {"dev/f1": 0.4, "training_iteration": 1})
    live.on_trial_complete("a", {"dev/f1": 0.5, "training_iteration": 2})
    resumed = pickle.loads(snapshot)  # the driver was killed; --resume restores the snapshot
    resumed.on_trial_result("a", {"dev/f1": 0.4, "training_iteration": 1})
    resumed.on_trial_complete("a", {"dev/f1": 0.5, "training_iteration": 2})
    assert "lr" in resumed.suggest("b")
    resumed.on_trial_complete("b", {"dev/f1": 0.7, "training_iteration": 2})
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(
        str(tmp_path / "optuna.journal"))))
    assert [(t.state.name, t.value) for t in study.trials] == [("COMPLETE", 0.5), ("COMPLETE", 0.7)]
