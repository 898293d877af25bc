"""The measured transfer matrix: scoring a trained model on other datasets (`score_on`) and the
matrix runner end to end on the bundled sample with a tiny encoder."""

import json
import subprocess
import sys

import pytest

from metaxl_core import train
from metaxl_core.config import TrialConfig
from metaxl_core.errors import ConfigError
from metaxl_core.names import DataSpec
from metaxl_core.readers import SAMPLE_ROOT, read_split
from sweeps.rank_sources import load_matrix
from sweeps.transfer_matrix import load_preset
from tests.conftest import PROJECT_ROOT

TINY = {"encoder": "tiny-xlmr", "source": None, "target_train_size": 40, "target_dev_size": 20, "epochs": 2,
        "batch_size": 10, "max_seq_length": 48, "device": "cpu"}


@pytest.mark.parametrize("freeze_layers", [0, 1])
def test_scoring_the_targets_own_test_split_again_gives_its_test_scores(freeze_layers):
    cfg = TrialConfig.from_dict({**TINY, "method": "target_only", "target": "ner:masakhaner2:hau",
                                 "freeze_layers": freeze_layers, "seed": 2})
    test = read_split(DataSpec.parse(cfg.target), "test", SAMPLE_ROOT)
    results = train.run_trial(cfg, score_on={"again": test})
    again = results["scored_on"]["again"]
    assert again["types"] == ["DATE", "LOC", "ORG", "PER"]
    assert again["f1"] == pytest.approx(results["final"]["test/f1"], abs=1e-12)
    assert again["precision"] == pytest.approx(results["final"]["test/precision"], abs=1e-12)


def test_other_data_is_scored_on_the_entity_types_both_have(monkeypatch):
    """The model knows DATE and PER, the data tags PER and LOC: a predicted DATE and the gold LOC
    fold into O, so the one PER found is a perfect score."""
    predicted = [["B-PER", "B-DATE", "O"]]
    monkeypatch.setattr(train, "predict", lambda *args, **kwargs: predicted)
    cfg = TrialConfig.from_dict({**TINY, "method": "target_only", "target": "ner:masakhaner2:hau"})
    examples = [{"tokens": ["Ade", "today", "Lagos"], "tags": ["B-PER", "O", "B-LOC"]}]
    scores = train.score_other(None, cfg, ["O", "B-DATE", "I-DATE", "B-PER", "I-PER"], examples,
                               "cpu")
    assert scores["types"] == ["PER"] and scores["f1"] == 1.0


PRESET = """
name: tm-test
test_cap: 25
trial: {encoder: tiny-xlmr, freeze_layers: 1, target_train_size: 40, target_dev_size: 20,
        epochs: 1, batch_size: 10, max_seq_length: 48, device: cpu}
sources: [ner:conll2003:en, ner:masakhaner2:hau, ner:masakhaner2:yor]
targets: [ner:masakhaner2:hau, ner:masakhaner2:yor, ner:masakhaner2:swa]
"""


def run_matrix(tmp_path, *extra):
    preset = tmp_path / "matrix.yaml"
    if not preset.exists():
        preset.write_text(PRESET, encoding="utf-8")
    return subprocess.run([sys.executable, "sweeps/transfer_matrix.py", "--preset", str(preset),
                           "--out", str(tmp_path / "out"), *extra], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600)


def test_the_matrix_scores_every_source_on_every_other_target_and_resumes(tmp_path):
    plan = run_matrix(tmp_path, "--dry-run")
    assert plan.returncode == 0 and "3 source models, each scored on 3 targets (25 test" in plan.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    empty = run_matrix(tmp_path, "--export-only")  # nothing trained yet: nothing written
    assert empty.returncode == 1 and "no finished source model" in empty.stderr, empty.stderr
    assert not (tmp_path / "out" / "transfer_matrix.json").exists()
    proc = run_matrix(tmp_path, "--results", str(tmp_path / "results"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    matrix = load_matrix(tmp_path / "results" / "transfer_matrix.json")
    targets = ["ner:masakhaner2:hau", "ner:masakhaner2:yor", "ner:masakhaner2:swa"]
    assert matrix["ner:conll2003:en"].keys() == set(targets)
    assert matrix["ner:masakhaner2:hau"].keys() == set(targets) - {"ner:masakhaner2:hau"}
    details = json.loads((tmp_path / "results" / "details.json").read_text())
    assert details["zero_shot"]["ner:conll2003:en"]["ner:masakhaner2:yor"]["types"] == [
        "LOC", "ORG", "PER"]  # the sample's English has no DATE
    assert all(len(p) == 25 for p in details["test_subsets"].values())
    assert set(details["in_language"]) == {"ner:masakhaner2:hau", "ner:masakhaner2:yor"}
    assert (tmp_path / "results" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    # each target's subset is the same for every source, and the in-language test of a source
    # that is also a target is that subset
    subsets = load_preset(tmp_path / "matrix.yaml", None, tmp_path / "out")["subsets"]
    assert {t: p for t, (_, p) in subsets.items()} == details["test_subsets"]
    yor_run = details["runs"]["ner:masakhaner2:yor"]
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    params = client.get_run(yor_run["run_id"]).data.params
    assert json.loads(open(params["split_index_file"]).read())["test"] == \
        details["test_subsets"]["ner:masakhaner2:yor"]
    # a second run trains nothing and writes the same matrix
    again = run_matrix(tmp_path)
    assert again.returncode == 0 and "0 to train" in again.stdout, again.stdout + again.stderr
    assert load_matrix(tmp_path / "out" / "transfer_matrix.json") == matrix
    # the same data named by another path is the same matrix
    moved = run_matrix(tmp_path, "--export-only", "--data-root", str(SAMPLE_ROOT))
    assert moved.returncode == 0 and "3/3 sources" in moved.stdout, moved.stdout + moved.stderr


def test_the_shipped_preset_plans_a_model_per_source(tmp_path):
    preset = load_preset(PROJECT_ROOT / "sweeps" / "grids" / "transfer-matrix.yaml", None, tmp_path,
                         read_data=False)
    assert len(preset["plan"]) == len(preset["sources"]) == 17 and len(preset["targets"]) == 16
    assert all(cfg.method == "target_only" and cfg.target == source and cfg.source is None
               for source, cfg in preset["plan"].items())
    assert not any(tmp_path.iterdir())  # nothing read, nothing written


@pytest.mark.parametrize("text,message", [
    ("name: x\nsources: [ner:conll2003:en]\ntargets: [ner:masakhaner2:hau]\nseeds: [1]\n",
     "unknown key(s) ['seeds']"),
    ("name: x\nsources: [ner:conll2003:en]\n", "targets: required"),
    ("name: x\nsources: [ner:conll2003:en]\ntargets: [ner:nowhere]\n", "targets:"),
    ("name: x\nsources: [ner:conll2003:en]\ntargets: [ner:masakhaner2:hau]\n"
     "trial: {method: joint}\n", "a source model is a target_only trial"),
    ("name: x\nsources: [ner:conll2003:en]\ntargets: [ner:masakhaner2:hau]\n"
     "trial: {lr: fast}\n", "lr"),
])
def test_a_bad_preset_is_named_before_any_training(tmp_path, text, message):
    (tmp_path / "matrix.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_preset(tmp_path / "matrix.yaml", None, tmp_path / "out")
    assert message in str(err.value) and "matrix.yaml" in str(err.value)
    proc = run_matrix(tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "mlflow.db").exists()


def test_scoring_other_data_with_a_trimmed_vocabulary_is_refused_before_training(monkeypatch):
    monkeypatch.setattr(train, "build_trial", lambda *a: pytest.fail("trained before refusing"))
    cfg = TrialConfig.from_dict({**TINY, "method": "target_only", "target": "ner:masakhaner2:hau",
                                 "trim_vocab": True})
    with pytest.raises(ConfigError, match="turn trim_vocab off"):
        train.run_trial(cfg, score_on={"x": []})
