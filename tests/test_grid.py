"""sweeps/grid.py planning: the per-method `method_trial` override and the --shard flag. Offline,
no data read (no test_cap), so nothing to skip."""

import re
from pathlib import Path

import pytest

from metaxl_core.errors import ConfigError
from sweeps import grid


def _preset(**ner):
    return {"name": "t", "seeds": [1, 2], "methods": ["target_only", "joint", "metaxl"],
            "trial": {"encoder": "tiny-bert", "epochs": 3, "source_train_size": 300},
            "tasks": {"ner": {"targets": {"ner:masakhaner2:yor": ["ner:conll2003:en"]}, **ner},
                      "sentiment": {"targets": {"sentiment:afrisenti:swa":
                                                ["sentiment:afrisenti:hau"]}}}}


def test_method_trial_overrides_one_method_and_leaves_other_keys_unchanged():
    plain = {r["key"]: r for r in grid.plan_runs(_preset())}
    runs = grid.plan_runs(_preset(method_trial={"target_only": {"epochs": 9}}))
    assert len(runs) == len(plain) == 12
    for r in runs:
        expected = 9 if (r["task"], r["method"]) == ("ner", "target_only") else 3
        assert r["config"].epochs == expected, r["key"]
        # only the overridden runs get a new key; every other run is resumed, not rerun
        assert (r["key"] in plain) == ((r["task"], r["method"]) != ("ner", "target_only"))


def test_method_trial_rejects_unknown_method():
    with pytest.raises(ConfigError, match="method_trial"):
        grid.plan_runs(_preset(method_trial={"jointt": {"epochs": 9}}))


@pytest.mark.parametrize("module", ["grid", "transfer_matrix"])
@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/2", "0/0", "1/2/3"])
def test_a_bad_shard_is_a_usage_error_that_names_the_flag(module, text, capsys):
    import importlib
    main = importlib.import_module(f"sweeps.{module}").main
    with pytest.raises(SystemExit) as stop:
        main(["--preset", "unused.yaml", "--shard", text])
    assert stop.value.code == 2
    assert "--shard" in capsys.readouterr().err


def test_shards_are_index_and_count():
    from sweeps.grid import shard_arg
    assert shard_arg("0/1") == (0, 1) and shard_arg("1/3") == (1, 3)


def test_the_export_keeps_runs_of_different_configurations_apart(tmp_path):
    """Two entries of one (target, source, method) that differ in a trial field are two rows of
    the aggregate, each over its own seeds, and every run names its configuration."""
    from mlflow.tracking import MlflowClient

    preset = {"name": "t", "seeds": [1, 2], "methods": ["joint"],
              "trial": {"encoder": "tiny-bert", "epochs": 3},
              "tasks": {"ner": {"targets": {"ner:masakhaner2:yor": [
                  {"source": "ner:conll2003:en", "trial": {"epochs": 6}},
                  {"source": "ner:conll2003:en", "trial": {"freeze_layers": 1}}]}}}}
    runs = grid.plan_runs(preset)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("t")
    test_f1 = {}
    for i, run in enumerate(runs):
        logged = client.create_run(experiment_id, tags=grid.run_tags(run, "t"))
        test_f1[run["key"]] = 0.1 * (i + 1)
        client.log_metric(logged.info.run_id, "final/test/f1", test_f1[run["key"]])
        client.set_terminated(logged.info.run_id)
    summary = grid.export_results(client, experiment_id, preset, runs, uri)
    tags = client.search_runs([experiment_id])[0].data.tags  # the code each run used
    if (Path(grid.__file__).parent.parent / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", tags["mlflow.source.git.commit"])
        assert tags["code_dirty"] in ("true", "false")
    rows = {(r["trial"]["epochs"], r["trial"].get("freeze_layers", 0)): r for r in summary["aggregate"]}
    assert sorted(rows) == [(3, 1), (6, 0)] and all(r["n_seeds"] == 2 for r in rows.values())
    for (epochs, freeze), row in rows.items():
        mine = [test_f1[r["key"]] for r in runs
                if (r["config"].epochs, r["config"].freeze_layers) == (epochs, freeze)]
        assert row["test/f1"]["mean"] == pytest.approx(sum(mine) / 2)
    assert all("seed" not in r["trial"] for r in summary["runs"])  # one trial per entry
    assert len({tuple(sorted(r["trial"].items())) for r in summary["runs"]}) == 2


def test_the_dry_run_marks_the_runs_already_logged(tmp_path, capsys):
    """--dry-run lists every run and says which are in MLflow already (what a resumed grid
    skips); without a store it lists them all as to run and creates nothing."""
    import yaml
    from mlflow.tracking import MlflowClient

    preset = _preset()
    preset_path = tmp_path / "p.yaml"
    preset_path.write_text(yaml.safe_dump(preset), encoding="utf-8")
    out = tmp_path / "out"
    args = ["--preset", str(preset_path), "--out", str(out), "--dry-run"]
    assert grid.main(args) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[-1].startswith("12 runs, 0 already in MLflow") and not out.exists()
    runs = grid.plan_runs(preset)
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment_id = client.create_experiment("t")
    for run, status in [(runs[3], "FINISHED"), (runs[5], "FAILED")]:
        logged = client.create_run(experiment_id, tags=grid.run_tags(run, "t"))
        client.set_terminated(logged.info.run_id, status)
    assert grid.main(args) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[-1].startswith("12 runs, 1 already in MLflow")
    assert [line.split()[1] for line in listed if line.endswith("(logged)")] == [runs[3]["key"]]
