"""run_trial end to end on a tiny encoder: every method learns an easy synthetic task, runs are
reproducible, results are written atomically, bad values stop before training."""

import io
import json
import subprocess
import sys

import pytest
import torch

from metaxl_core.config import METHODS, TrialConfig
from metaxl_core.errors import ConfigError
from metaxl_core.train import run_trial
from tests.conftest import PROJECT_ROOT


def config(root, **changes) -> TrialConfig:
    base = dict(task="ner", source="ner:synth:aa", target="ner:synth:bb", data_root=str(root),
                source_train_size=60, target_train_size=40, epochs=6, batch_size=10, lr=3e-3,
                meta_lr=1e-3, warmup_ratio=0.0, max_seq_length=32, encoder="tiny-bert", seed=3)
    return TrialConfig.from_dict({**base, **changes})


@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_the_easy_task(synth_root, method):
    untrained = run_trial(config(synth_root, method=method, epochs=1, lr=1e-9, meta_lr=1e-9))
    trained = run_trial(config(synth_root, method=method))
    assert untrained["final"]["dev/f1"] < 0.3
    assert trained["final"]["dev/f1"] > 0.6, trained["history"]
    assert trained["final"]["dev/f1"] > untrained["final"]["dev/f1"] + 0.3


def test_same_config_gives_the_same_numbers_twice(synth_root):
    cfg = config(synth_root, epochs=2)
    first, second = run_trial(cfg), run_trial(cfg)
    assert first["history"] == second["history"]


@pytest.mark.parametrize("mode", ["truncated", "finite_difference"])
def test_approximate_hypergradients_run_and_differ_from_exact(synth_root, mode):
    exact = run_trial(config(synth_root, epochs=2, rtn_layer=1, meta_lr=1e-2))
    approx = run_trial(config(synth_root, epochs=2, rtn_layer=1, meta_lr=1e-2, hypergradient=mode))
    assert exact["history"] != approx["history"]


def test_report_and_resume_reproduce_an_uninterrupted_run(synth_root):
    cfg = config(synth_root, epochs=3, method="metaxl")
    saved = []

    def report(metrics, state):  # saved at once, through torch.save as the Tune trainable does
        buffer = io.BytesIO()
        torch.save(state, buffer)
        saved.append(buffer.getvalue())

    full = run_trial(cfg, report=report)
    assert len(saved) == 3
    state = torch.load(io.BytesIO(saved[0]), weights_only=True)
    assert state["epoch"] == 0
    resumed = run_trial(cfg, resume_from=state)
    assert resumed["history"] == full["history"]
    assert resumed["final"] == full["final"]


def test_results_are_written_with_the_config(synth_root, tmp_path):
    out = tmp_path / "trial"
    results = run_trial(config(synth_root, epochs=1, output_dir=str(out)))
    saved = json.loads((out / "results.json").read_text())
    assert saved["final"] == results["final"] and saved["config"]["encoder"] == "tiny-bert"
    assert TrialConfig.from_yaml(out / "trial.yaml") == config(synth_root, epochs=1,
                                                                output_dir=str(out))
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temp files left"


def test_rtn_layer_beyond_the_encoder_fails_before_training(synth_root):
    with pytest.raises(ConfigError, match=r"rtn_layer: must be in 0\.\.2"):
        run_trial(config(synth_root, rtn_layer=7))


def test_cli_runs_one_trial_and_writes_results(synth_root, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "metaxl_core.train", "--source", "ner:synth:aa", "--target",
         "ner:synth:bb", "--data-root", str(synth_root), "--source-train-size", "30",
         "--target-train-size", "20", "--epochs", "1", "--output-dir", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "best epoch 1" in proc.stdout and (out / "results.json").exists()


def test_several_rtn_layers_train_in_one_trial(synth_root):
    results = run_trial(config(synth_root, epochs=1, rtn_layers="2,0", rtn_mixing="softmax"))
    assert results["rtn_layers"] == [0, 2]
    with pytest.raises(ConfigError, match=r"rtn_layers: must be in 0\.\.2"):
        run_trial(config(synth_root, rtn_layers="0,5", rtn_design="identity"))
    with pytest.raises(ConfigError, match="set only one of them"):
        config(synth_root, rtn_layer=1, rtn_layers="0,2")


def test_test_split_is_scored_once_with_the_best_dev_model(synth_root, monkeypatch):
    """Dev scores are faked to fall after the first evaluation: the single test evaluation must
    see the parameters of that first evaluation, not the last ones."""
    from metaxl_core import train
    seen = {"dev": [], "test": []}
    real = train.evaluate

    def fake(model, encoded, collator, labels, task, device):
        split = "test" if encoded is splits["target_test"] else "dev"
        seen[split].append({k: v.clone() for k, v in model.state_dict().items()})
        scores = real(model, encoded, collator, labels, task, device)
        return {**scores, "f1": 1.0 / len(seen["dev"])} if split == "dev" else scores

    cfg = config(synth_root, epochs=2, eval_every=2)
    splits: dict = {}
    monkeypatch.setattr(train, "evaluate", fake)
    original_build = train.build_trial

    def build(cfg_, device):  # keeps the trial's splits, to tell test from dev
        out = original_build(cfg_, device)
        splits.update(out[2])
        return out

    monkeypatch.setattr(train, "build_trial", build)
    results = train.run_trial(cfg)
    assert len(seen["test"]) == 1 and len(seen["dev"]) > 2
    assert results["best_step"] == 2
    for key, value in seen["dev"][0].items():
        assert torch.equal(seen["test"][0][key], value), key
    assert any(not torch.equal(seen["dev"][-1][k], v) for k, v in seen["dev"][0].items())


def test_a_cuda_device_without_cuda_is_a_config_error(synth_root, monkeypatch):
    """`device: cuda[:N]` never falls back to the CPU silently; `auto` does."""
    from metaxl_core.train import resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=rf"device: '{device}'.*use device: cpu or device: auto"):
            run_trial(config(synth_root, epochs=1, device=device))
    assert resolve_device("auto") == torch.device("cpu")


def test_the_train_command_with_its_defaults_names_the_flag_to_lower(monkeypatch, capsys):
    """The defaults ask for more source examples than the bundled sample has: the error names
    the flag and how many there are."""
    from metaxl_core.train import main
    monkeypatch.delenv("METAXL_DATA_ROOT", raising=False)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "has 200 examples" in err and "--source-train-size N with N <= 200" in err, err
