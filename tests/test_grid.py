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


def test_the_export_keeps_runs_of_different_configurations_apart(tmp_path, new_mlflow_store):
    """Two entries of one (target, source, method) that differ in a trial field are two rows of
    the aggregate, each over its own seeds, and every run names its configuration."""
    from mlflow.tracking import MlflowClient

    preset = {"name": "t", "seeds": [1, 2], "methods": ["joint"],
              "trial": {"encoder": "tiny-bert", "epochs": 3},
              "tasks": {"ner": {"targets": {"ner:masakhaner2:yor": [
                  {"source": "ner:conll2003:en", "trial": {"epochs": 6}},
                  {"source": "ner:conll2003:en", "trial": {"freeze_layers": 1}}]}}}}
    runs = grid.plan_runs(preset)
    uri = new_mlflow_store(tmp_path / "mlflow.db")
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


def test_a_run_logged_twice_is_exported_once_with_its_newest_scores(tmp_path, new_mlflow_store):
    """Two processes started on overlapping runs can log one run key twice: the export keeps
    one record per key (the newest), so no configuration gets an extra seed."""
    from mlflow.tracking import MlflowClient

    preset = {"name": "t", "seeds": [1, 2], "methods": ["joint"],
              "trial": {"encoder": "tiny-bert", "epochs": 3},
              "tasks": {"ner": {"targets": {"ner:masakhaner2:yor": ["ner:conll2003:en"]}}}}
    runs = grid.plan_runs(preset)
    client = MlflowClient(new_mlflow_store(tmp_path / "mlflow.db"))
    experiment_id = client.create_experiment("t")
    for run, f1, start in [(runs[0], 0.2, 1000), (runs[1], 0.4, 2000), (runs[0], 0.6, 3000)]:
        logged = client.create_run(experiment_id, start_time=start, tags=grid.run_tags(run, "t"))
        client.log_metric(logged.info.run_id, "final/test/f1", f1)
        client.set_terminated(logged.info.run_id)
    summary = grid.export_results(client, experiment_id, preset, runs, "uri")
    assert sorted((r["seed"], r["final"]["test/f1"]) for r in summary["runs"]) == [(1, 0.6), (2, 0.4)]
    [row] = summary["aggregate"]
    assert row["n_seeds"] == 2 and row["test/f1"]["mean"] == pytest.approx(0.5)


def test_the_dry_run_marks_the_runs_already_logged(tmp_path, capsys, new_mlflow_store):
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
    client = MlflowClient(new_mlflow_store(out / "mlflow.db"))
    experiment_id = client.create_experiment("t")
    for run, status in [(runs[3], "FINISHED"), (runs[5], "FAILED")]:
        logged = client.create_run(experiment_id, tags=grid.run_tags(run, "t"))
        client.set_terminated(logged.info.run_id, status)
    assert grid.main(args) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[-1].startswith("12 runs, 1 already in MLflow")
    assert [line.split()[1] for line in listed if line.endswith("(logged)")] == [runs[3]["key"]]


def test_a_lost_store_is_restored_from_the_exported_results(tmp_path, capsys, new_mlflow_store):
    """A store written by the grid, exported (results.json), then lost: --restore logs every
    exported run back into a new store under this preset's run keys (so the grid skips them),
    with its scores, history, dev curve and code commit; restoring twice logs nothing more; a
    record of another configuration fails with its file and index before anything is logged."""
    import json

    import yaml
    from mlflow.tracking import MlflowClient

    from sweeps.mlflow_store import log_results

    preset = _preset()
    preset_path = tmp_path / "p.yaml"
    preset_path.write_text(yaml.safe_dump(preset), encoding="utf-8")
    runs = grid.plan_runs(preset)
    first = MlflowClient(new_mlflow_store(tmp_path / "lost.db"))
    experiment_id = first.create_experiment("t")
    for i, run in enumerate(runs[:3]):
        history = [{"epoch": e, "dev/f1": 0.1 * i + 0.01 * e, "train/loss": 1.0 / e}
                   for e in (1, 2, 3)]
        log_results(first, experiment_id, {
            "config": run["config"].to_dict(), "history": history, "best_epoch": 3,
            "evaluations": [{"step": 5 * e, "epoch": e, "dev/f1": h["dev/f1"]}
                            for e, h in enumerate(history, 1)],
            "final": {"dev/f1": 0.1 * i + 0.03, "test/f1": 0.2 + i / 10, "test/acc": 0.5},
            "wall_time_s": 10.0 + i}, grid.run_tags(run, "t"))
    exported = grid.export_results(first, experiment_id, preset, runs, "lost")
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps(exported), encoding="utf-8")

    out = tmp_path / "new"
    args = ["--preset", str(preset_path), "--out", str(out), "--restore", str(saved)]
    assert grid.main([*args, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("12 runs, 0 already in MLflow, "
                                                               "3 to restore")
    assert grid.main([*args, "--export-only"]) == 0
    assert f"{saved}: 3 of its 3 runs restored" in capsys.readouterr().out
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    new_id = client.get_experiment_by_name("t").experiment_id
    assert sorted(grid.finished_runs(client, new_id)) == sorted(r["key"] for r in runs[:3])
    again = grid.export_results(client, new_id, preset, runs, "new")

    def comparable(record):
        return {k: v for k, v in record.items() if k != "run_id"}
    assert sorted(map(comparable, again["runs"]), key=json.dumps) == sorted(
        map(comparable, exported["runs"]), key=json.dumps)
    assert again["aggregate"] == exported["aggregate"]
    assert {r["run_id"] for r in exported["runs"]} == {
        r.data.tags["restored_from_run"] for r in client.search_runs([new_id])}
    # --only picks what runs, not what is restored
    assert grid.main([*args, "--export-only", "--only", "sentiment"]) == 0
    assert f"{saved}: 0 of its 3 runs restored (3 already in MLflow)" in capsys.readouterr().out
    assert grid.main([*args, "--shard", "0/2"]) == 2
    assert "--restore with --shard" in capsys.readouterr().err

    elsewhere = tmp_path / "elsewhere"
    for broken, complaint in [
            (lambda runs: runs.append(dict(runs[0])), "runs[0] and runs[3] are the same run"),
            (lambda runs: runs[2]["history"][1].pop("epoch"), "runs[2] is not a grid run record"),
            (lambda runs: runs[2]["evaluations"][0].pop("dev/f1"), "runs[2] is not a grid run")]:
        bad = json.loads(json.dumps(exported))
        broken(bad["runs"])
        other = tmp_path / "other.json"
        other.write_text(json.dumps(bad), encoding="utf-8")
        assert grid.main(["--preset", str(preset_path), "--out", str(elsewhere),
                          "--restore", str(saved), "--restore", str(other)]) == 2
        assert complaint in capsys.readouterr().err
        assert not elsewhere.exists()  # nothing logged, not even the valid file's runs

    exported["runs"][1]["trial"]["epochs"] = 7  # a run of another configuration
    other.write_text(json.dumps(exported), encoding="utf-8")
    assert grid.main(["--preset", str(preset_path), "--out", str(elsewhere),
                      "--restore", str(other)]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "runs[1]" in err and "no run of this preset" in err
    assert not elsewhere.exists()  # nothing logged, not even a store
    other.write_text("{not json", encoding="utf-8")
    assert grid.main([*args, "--restore", str(other)]) == 2
    assert f"{other}: not a grid results.json" in capsys.readouterr().err
