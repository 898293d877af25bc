"""A trained model saved without its RTN: the same logits as the model in training (whole,
cached fidelity, trimmed vocabulary), through this project or plain transformers, its recorded
test F1 when reloaded, the old folder format still read, clear errors."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForTokenClassification

from metaxl_core import data as data_lib
from metaxl_core import predict, train
from metaxl_core.errors import MetaXLError
from metaxl_core.saved_model import load_model, save_model
from tests.test_train import config

VARIANTS = {"whole": {}, "cached": {"freeze_layers": 1, "rtn_layer": 2},
            "trimmed": {"trim_vocab": True}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_saved_model_gives_the_logits_of_the_model_in_training(synth_root, tmp_path, variant):
    cfg = config(synth_root, method="metaxl", rtn_width=8, **VARIANTS[variant])
    model, task_data, splits, collator = train.build_trial(cfg, torch.device("cpu"))
    torch.manual_seed(1)
    with torch.no_grad():  # stands in for training: every trained weight differs from the base
        for param in model.theta().values():
            param.add_(torch.randn_like(param) * 0.1)
    model.eval()
    batch = collator(splits["target_test"].features[:8])
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"])

    base = train._cached_encoder(cfg.encoder, cfg.seed)
    save_model(tmp_path / "model", model, base, cfg, task_data.labels, {"test/f1": 0.5})
    loaded = load_model(tmp_path / "model")
    assert not (tmp_path / "model" / "rtn").exists() and loaded.model.rtn is None
    encoded = data_lib.encode(task_data.target_test[:8], loaded.tokenizer, loaded.labels, "ner",
                              loaded.max_seq_length)
    reloaded_batch = loaded.collator(encoded.features)
    tagger = AutoModelForTokenClassification.from_pretrained(tmp_path / "model")  # no project code
    with torch.no_grad():
        got = loaded.model(reloaded_batch["input_ids"], reloaded_batch["attention_mask"])
        plain = tagger(input_ids=reloaded_batch["input_ids"],
                       attention_mask=reloaded_batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    assert torch.allclose(got[mask], expected[mask], atol=1e-5), (got - expected)[mask].abs().max()
    assert torch.allclose(plain[mask], expected[mask], atol=1e-5)
    assert tagger.config.id2label == dict(enumerate(task_data.labels))
    assert tagger.config.vocab_size == base[0].config.vocab_size  # trimmed rows put back
    test = splits["target_test"]
    first = dataclasses.replace(test, features=test.features[:8], gold=test.gold[:8])
    in_training = train.predict(model, first, collator, task_data.labels, "ner", torch.device("cpu"))
    assert loaded.predict([ex["tokens"] for ex in task_data.target_test[:8]]) == in_training


@pytest.mark.parametrize("variant", ["whole", "cached"])
def test_rebuilding_the_full_encoder_refuses_a_lost_trained_weight(synth_root, variant):
    """Only the frozen part may come from the base encoder: a trained weight the model does not
    hand back (or one the encoder does not know) is an error, never the base's weight."""
    from metaxl_core.saved_model import full_encoder

    cfg = config(synth_root, method="metaxl", rtn_width=8, **VARIANTS[variant])
    model, *_ = train.build_trial(cfg, torch.device("cpu"))
    base = train._cached_encoder(cfg.encoder, cfg.seed)[0]
    full_encoder(model, base)  # complete: no error
    state = model.encoder.state_dict
    trained = [k for k in state() if ".layer." in k and k.endswith("output.dense.weight")]
    lost = trained[-1]
    model.encoder.state_dict = lambda: {k: v for k, v in state().items() if k != lost}
    with pytest.raises(RuntimeError, match="missing .*output.dense.weight"):
        full_encoder(model, base)
    model.encoder.state_dict = lambda: {**state(), "unknown.weight": torch.zeros(1)}
    with pytest.raises(RuntimeError, match="unexpected .*unknown.weight"):
        full_encoder(model, base)


def test_a_trained_and_saved_model_reproduces_its_test_f1(synth_root, tmp_path):
    results = train.run_trial(config(synth_root, method="metaxl", freeze_layers=1, epochs=10),
                              model_dir=tmp_path / "model")
    assert results["final"]["test/f1"] > 0.5  # it learned: the comparison below means something
    loaded = load_model(tmp_path / "model")
    assert loaded.score("test")["f1"] == pytest.approx(results["final"]["test/f1"], abs=1e-6)
    info = json.loads((tmp_path / "model" / "metaxl.json").read_text())
    assert info["scores"]["test/f1"] == results["final"]["test/f1"]
    assert info["trial"]["freeze_layers"] == 1
    tags = loaded.predict([["Ade", "went", "to", "Lagos"], [], ["Kano"]])
    assert [len(t) for t in tags] == [4, 0, 1]
    assert tags[0] == ["B-PER", "O", "O", "B-LOC"]


def test_the_train_command_saves_a_model(synth_root, tmp_path):
    cfg = config(synth_root, epochs=1, method="joint").to_dict()
    (tmp_path / "trial.json").write_text(json.dumps(cfg))
    code = train.main(["--config", str(tmp_path / "trial.json"), "--save-model",
                       str(tmp_path / "model")])
    assert code == 0 and load_model(tmp_path / "model").task == "ner"


def test_loading_names_what_is_wrong(tmp_path):
    with pytest.raises(MetaXLError, match="model folder not found"):
        load_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetaXLError, match="not a saved MetaXL model"):
        load_model(tmp_path / "empty")


@pytest.fixture(scope="module")
def saved_folder(synth_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "model"
    train.run_trial(config(synth_root, method="joint", epochs=2), model_dir=folder)
    return folder


def test_predict_command_writes_tags_with_a_progress_bar_on_long_input(saved_folder, tmp_path, capsys):
    lines = ["Ade went to Lagos", "Kano"] * 300  # more than one chunk of CHUNK_LINES
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = predict.main(["--model", str(saved_folder), "--input", str(tmp_path / "in.txt"),
                         "--output", str(tmp_path / "out.txt")])
    assert code == 0
    assert "predicting" in capsys.readouterr().err
    out = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n\n")
    assert len(out) == 601 and out[-1] == ""  # a blank line after each of the 600 sentences
    assert [row.split("\t")[0] for row in out[0].splitlines()] == ["Ade", "went", "to", "Lagos"]
    assert out[1].startswith("Kano\t")


@pytest.mark.parametrize("content, message", [
    (b"", "empty: it needs one sentence"), (b"\n  \n", "empty: it needs one sentence"),
    (b"Ade went\nto Lagos \xff\n", "line 2: not UTF-8")])
def test_predict_command_names_bad_input_and_writes_nothing(saved_folder, tmp_path, capsys, content,
                                                             message):
    (tmp_path / "in.txt").write_bytes(content)
    code = predict.main(["--model", str(saved_folder), "--input", str(tmp_path / "in.txt"),
                         "--output", str(tmp_path / "out.txt")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out.txt").exists()


def test_predict_command_names_an_unknown_model(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("Ade\n", encoding="utf-8")
    code = predict.main(["--model", str(tmp_path / "nope"), "--input", str(tmp_path / "in.txt")])
    assert code == 2 and "model folder not found" in capsys.readouterr().err


def test_predict_command_names_a_missing_mlflow_store(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("Ade\n", encoding="utf-8")
    code = predict.main(["--model", "models:/metaxl-ner-yor/1", "--input", str(tmp_path / "in.txt"),
                         "--mlflow-uri", f"sqlite:///{tmp_path / 'absent.db'}"])
    assert code == 2 and "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "absent.db").exists()


def test_registered_model_needs_no_project_code(saved_folder, tmp_path, new_mlflow_store):
    """The pyfunc model needs no unpublished package and no code of this project: its one file of
    code loads the saved folder with transformers, requirements.txt pins what it imports, and it
    loads back and tags sentences and word lists."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from sweeps.mlflow_store import register_model

    uri = new_mlflow_store(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("registry", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id
    version = register_model(uri, run_id, str(saved_folder), "metaxl-ner-test", {"seed": 1})
    mlflow.set_tracking_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/metaxl-ner-test/{version}",
                                                         dst_path=str(tmp_path / "artifact")))
        model = mlflow.pyfunc.load_model(f"models:/metaxl-ner-test/{version}")
    finally:
        mlflow.set_tracking_uri(None)
    requirements = (local / "requirements.txt").read_text().split()
    names = {re.split(r"[=<>~!\[]", line)[0] for line in requirements}
    assert names == {"mlflow", "torch", "transformers", "tokenizers", "safetensors"}, requirements
    assert not (local / "code").exists()
    words = ["Ade", "went", "to", "Lagos"]
    tagged = model.predict(["Ade went to Lagos", words])
    assert tagged[0] == tagged[1] and [row["word"] for row in tagged[0]] == words
    assert [row["tag"] for row in tagged[0]] == load_model(saved_folder).predict([words])[0]


def test_saving_never_replaces_a_folder_that_is_not_a_saved_model(synth_root, tmp_path, capsys,
                                                                   monkeypatch):
    """--save-model DIR: a folder without metaxl.json (or a file) is refused before training and
    left as it was; --overwrite accepts it; a previous saved model or an empty folder is used."""
    mine, file = tmp_path / "mine", tmp_path / "file"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    file.write_text("keep")
    cfg = config(synth_root, epochs=1, method="joint")
    (tmp_path / "trial.json").write_text(json.dumps(cfg.to_dict()))

    def started(*args):
        raise MetaXLError("training started")

    monkeypatch.setattr(train, "build_trial", started)
    for folder, message in [(mine, "is not a saved model"), (file, "is not a folder")]:
        code = train.main(["--config", str(tmp_path / "trial.json"), "--save-model", str(folder)])
        err = capsys.readouterr().err
        assert code == 2 and f"{folder}: exists and {message}" in err, err
        assert "training started" not in err
    code = train.main(["--config", str(tmp_path / "trial.json"), "--save-model", str(mine),
                       "--overwrite"])
    assert code == 2 and "training started" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep" and file.read_text() == "keep"

    monkeypatch.undo()
    model, task_data, *_ = train.build_trial(cfg, torch.device("cpu"))
    base = train._cached_encoder(cfg.encoder, cfg.seed)

    def save(folder, **kwargs):
        return save_model(folder, model, base, cfg, task_data.labels, {}, **kwargs)

    with pytest.raises(MetaXLError, match=r"mine: exists and is not a saved model.*--overwrite"):
        save(mine)
    assert (mine / "notes.txt").read_text() == "keep"
    save(mine, overwrite=True)
    assert (mine / "metaxl.json").is_file() and not (mine / "notes.txt").exists()
    save(mine)  # a previous saved model is replaced
    (tmp_path / "empty").mkdir()
    assert load_model(save(tmp_path / "empty")).task == "ner"


def test_predict_command_refuses_a_bad_output_before_any_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "in.txt").write_text("Ade\n", encoding="utf-8")
    monkeypatch.setattr(predict, "open_model", lambda *args: pytest.fail("loaded the model first"))
    for output, message in [(tmp_path, "is a folder"),
                            (tmp_path / "missing" / "out.txt", "does not exist")]:
        code = predict.main(["--model", "models/yor", "--input", str(tmp_path / "in.txt"),
                             "--output", str(output)])
        err = capsys.readouterr().err
        assert code == 2 and f"--output {output}" in err and message in err, err


def test_a_folder_of_the_first_format_still_loads(synth_root, tmp_path, saved_folder):
    """Format 1 (`encoder/` saved by Hugging Face, `head.pt`): loaded and tagging as the same
    model saved in the standard layout."""
    from metaxl_core.saved_model import full_encoder

    cfg = config(synth_root, method="joint")
    model, task_data, *_ = train.build_trial(cfg, torch.device("cpu"))
    base_encoder, tokenizer = train._cached_encoder(cfg.encoder, cfg.seed)
    new = save_model(tmp_path / "new", model, (base_encoder, tokenizer), cfg, task_data.labels, {})
    old = tmp_path / "old"
    full_encoder(model, base_encoder).save_pretrained(old / "encoder")
    tokenizer.save_pretrained(old / "encoder")
    torch.save(model.classifier.state_dict(), old / "head.pt")
    info = json.loads((new / "metaxl.json").read_text(encoding="utf-8"))
    (old / "metaxl.json").write_text(json.dumps({**info, "format": 1}), encoding="utf-8")
    sentences = [ex["tokens"] for ex in task_data.target_test]
    assert load_model(old).predict(sentences) == load_model(new).predict(sentences)
