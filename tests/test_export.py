"""sweeps/export.py on a store of hand-made runs: a target without a finished trial is named and
refused unless --partial; an --out that is a file and a model folder that is not a saved model
are refused before any work."""

from mlflow.entities import Param

from metaxl_core import train
from metaxl_core.errors import MetaXLError
from sweeps import export
from sweeps.mlflow_store import open_experiment, target_run

YOR, HAU = "ner:masakhaner2:yor", "ner:masakhaner2:hau"


def sweep_store(tmp_path, new_mlflow_store, targets=(YOR, HAU), finished=(YOR,)) -> str:
    """The URI of a sweep attempt with a parent run per target (left RUNNING, as while the sweep
    runs) and one finished trial for each of `finished`."""
    uri = new_mlflow_store(tmp_path / "mlflow.db")
    client, experiment_id = open_experiment(uri, "sweep")
    for target in targets:
        parent = target_run(client, experiment_id, "s1", target)
        if target not in finished:
            continue
        run = client.create_run(experiment_id, tags={
            "role": "trial", "sweep_id": "s1", "target": target, "trial_id": "t_00000",
            "mlflow.parentRunId": parent}).info.run_id
        client.log_batch(run, params=[Param("method", "joint"), Param("target", target),
                                      Param("source", "ner:conll2003:en")])
        for key, value in {"best/dev_f1": 0.5, "best/test_f1": 0.4, "best/epoch": 1}.items():
            client.log_metric(run, key, value)
        client.set_terminated(run)
    return uri


def test_a_target_without_a_finished_trial_is_refused_unless_partial(tmp_path, new_mlflow_store,
                                                                     capsys):
    out = tmp_path / "exports"
    args = ["--mlflow-uri", sweep_store(tmp_path, new_mlflow_store), "--experiment", "sweep",
            "--out", str(out)]
    assert export.main(args) == 2
    err = capsys.readouterr().err
    assert "no finished trial for 1 of 2 targets" in err and HAU in err and "--partial" in err, err
    assert not out.exists()
    assert export.main([*args, "--partial"]) == 0
    assert "warning: no finished trial for 1 of 2 targets" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["index.yaml", "yor.yaml"]


def test_an_out_that_is_a_file_is_refused_before_mlflow_is_read(tmp_path, new_mlflow_store, capsys):
    out = tmp_path / "exports"
    out.write_text("mine")
    for uri in (sweep_store(tmp_path, new_mlflow_store, finished=(YOR, HAU)),
                f"sqlite:///{tmp_path / 'absent.db'}"):
        assert export.main(["--mlflow-uri", uri, "--experiment", "sweep", "--out", str(out)]) == 2
        assert f"{out}: exists and is not a folder" in capsys.readouterr().err
    assert out.read_text() == "mine" and not (tmp_path / "absent.db").exists()


def test_train_final_refuses_a_model_folder_that_is_not_a_saved_model(tmp_path, new_mlflow_store,
                                                                      capsys, monkeypatch):
    """Before any training or file is written; --overwrite accepts it, as does a saved model."""
    out = tmp_path / "exports"
    mine = out / "models" / "yor"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep")
    args = ["--mlflow-uri", sweep_store(tmp_path, new_mlflow_store, targets=(YOR,)),
            "--experiment", "sweep", "--out", str(out), "--train-final"]

    def started(*args, **kwargs):
        raise MetaXLError("training started")

    monkeypatch.setattr(train, "run_trial", started)
    assert export.main(args) == 2
    err = capsys.readouterr().err
    assert f"{mine}: exists and is not a saved model" in err and "--overwrite" in err, err
    assert sorted(p.name for p in out.rglob("*")) == ["models", "notes.txt", "yor"]
    assert export.main([*args, "--overwrite"]) == 2
    assert "training started" in capsys.readouterr().err
    (mine / "notes.txt").unlink()
    (mine / "metaxl.json").write_text("{}")
    assert export.main(args) == 2
    assert "training started" in capsys.readouterr().err
