"""A tiny real sweep end to end on local Ray: MLflow runs and tags, ASHA stopping, export and a
re-run that reproduces the exported metric, and --resume after the driver is killed."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from metaxl_core.config import TrialConfig
from metaxl_core.train import run_trial
from sweeps.analysis import load_study
from sweeps.export import export
from tests.conftest import PROJECT_ROOT

SWEEP = """
name: test-sweep
targets: [ner:masakhaner2:yor, ner:masakhaner2:ibo]
sources: [ner:conll2003:en, ner:masakhaner2:hau]
methods: [metaxl, joint]
trials_per_search: {trials}
seeds_per_config: {seeds}
max_concurrent: 1  # a search per CPU: searches run side by side
reduction_factor: 2
space: {{rtn_width: [8, 16], rtn_layer: [0, null], lr: [1.0e-4, 3.0e-3], meta_lr: [1.0e-5, 1.0e-2]}}
trial: {{encoder: tiny-bert, epochs: 3, source_train_size: 40, target_train_size: 30,
         target_dev_size: 30, max_seq_length: 48, warmup_ratio: 0.0}}
"""


def sweep_command(tmp_path, trials: int, *extra, seeds: int = 1) -> list[str]:
    config = tmp_path / "sweep.yaml"
    config.write_text(SWEEP.format(trials=trials, seeds=seeds), encoding="utf-8")
    return [sys.executable, "sweeps/pairs.py", "--config", str(config),
            "--output-dir", str(tmp_path / "out"), *extra]


def trial_runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test-sweep")
    return client.search_runs([experiment.experiment_id], "tags.role = 'trial'",
                              max_results=1000)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    proc = subprocess.run(sweep_command(tmp_path, 3, seeds=2), cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path, proc.stdout


def test_sweep_logs_one_tagged_run_per_trial(finished_sweep):
    tmp_path, stdout = finished_sweep
    runs = trial_runs(tmp_path)
    assert len(runs) == 2 * 2 * 3
    for run in runs:
        tags = run.data.tags
        assert tags["target_lang"] in ("yor", "ibo") and tags["method"] in ("metaxl", "joint")
        assert tags["source_lang"] in ("en", "hau") and tags["task"] == "ner"
        assert tags["encoder"] == "tiny-bert" and tags["sweep_id"].startswith("test-sweep-")
        assert run.info.status in ("FINISHED", "KILLED") and "dev/f1" in run.data.metrics
        # test is scored once, by a trial that runs to its end; ASHA-stopped trials never do
        assert ("best/test_f1" in run.data.metrics) == (run.info.status == "FINISHED")
        assert run.data.params["method"] == tags["method"]
    assert len({r.data.tags["trial_id"] for r in runs}) == len(runs)
    assert "target" in stdout and "metaxl-joint" in stdout, "final summary table"
    assert "dev - anchor" in stdout and "anchor (runs first):" in stdout


def test_every_search_runs_its_anchor_first(finished_sweep):
    """The configuration a user would run without sweeping: the first trial of each search,
    tagged, with the sweep's anchor (TrialConfig's defaults moved into the space)."""
    tmp_path, _ = finished_sweep
    runs = trial_runs(tmp_path)
    anchors = [r for r in runs if r.data.tags.get("anchor") == "true"]
    assert len(anchors) == 4, "one per (target, method) search"
    for run in anchors:
        params = run.data.params
        search = [r for r in runs if r.data.tags["search"] == run.data.tags["search"]]
        assert run.info.start_time == min(r.info.start_time for r in search), "it runs first"
        assert params["source"] == "ner:conll2003:en" and float(params["lr"]) == 1e-4
        if params["method"] == "metaxl":  # rtn_width 192 -> 16, meta_lr 1e-6 -> 1e-5
            assert (params["rtn_width"], float(params["meta_lr"])) == ("16", 1e-5)
            assert params["rtn_layer"] == "2"  # null: the last layer of tiny-bert
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for search in summary["searches"]:
        assert sum(t["anchor"] for t in search["trials"]) == 1


def test_the_confirmation_stage_reruns_the_top_trials_and_the_anchor_with_more_seeds(
        finished_sweep):
    tmp_path, stdout = finished_sweep
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test-sweep")
    confirms = client.search_runs([experiment.experiment_id], "tags.role = 'confirm'")
    trials = {r.data.tags["trial_id"]: r for r in trial_runs(tmp_path)}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for search in summary["searches"]:
        finished = [t for t in search["trials"] if "dev_f1" in t]
        anchor = next(t for t in search["trials"] if t["anchor"])
        confirmed = {c["confirms"] for c in search["confirmations"]}
        assert confirmed == {t["trial_id"] for t in finished} | {anchor["trial_id"]}
        for candidate in confirmed:  # seed 11 is the search's; a stopped one reruns it too
            seeds = sorted(c["config"]["seed"] for c in search["confirmations"]
                           if c["confirms"] == candidate)
            ran_to_end = any(t["trial_id"] == candidate for t in finished)
            assert seeds == ([12] if ran_to_end else [11, 12]), (candidate, seeds)
        pick = search["pick"]
        assert pick["seeds"] == 2 and pick["anchor"] == anchor["trial_id"]
        assert pick["mean"] == max(s["mean"] for s in pick["scores"].values() if s["seeds"] == 2)
    assert len(confirms) == sum(len(s["confirmations"]) for s in summary["searches"])
    for run in confirms:  # the candidate's configuration on another seed and data sample
        trial = trials[run.data.tags["confirms_trial"]]
        assert run.data.params["data_seed"] == run.data.params["seed"]
        for key in ("lr", "source", "method", "rtn_width"):
            assert run.data.params.get(key) == trial.data.params.get(key)
    for row in summary["targets"]:
        assert row["seeds"] == 2 and row["test_f1_std"] >= 0.0
        assert (row["dev_vs_anchor"] is None) == (row["trial_id"] == row["anchor_trial_id"])
    assert "(2)" in stdout


def test_asha_stopped_at_least_one_trial(finished_sweep):
    runs = trial_runs(finished_sweep[0])
    stopped = [r for r in runs if r.data.tags.get("stopped_early") == "true"]
    assert stopped and all(r.info.status == "KILLED" for r in stopped)
    client = MlflowClient(f"sqlite:///{finished_sweep[0] / 'out' / 'mlflow.db'}")
    for run in stopped:  # ASHA's rungs are in updates (12 in all: 3 epochs of 4 batches)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "dev/f1")]
        assert max(steps) < 12 and steps == sorted(steps)


def test_the_sweep_keeps_its_optuna_studies_and_writes_an_analysis(finished_sweep):
    tmp_path, stdout = finished_sweep
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    searches = {s["name"]: s for s in summary["searches"]}
    assert len(searches) == 4
    for name, search in searches.items():
        study = load_study(out / "optuna.journal", name)  # the persistent storage
        assert len(study.trials) == 3
        assert {t.number for t in study.trials} == {0, 1, 2}
        files = out / "analysis" / name
        for png in ("curves.png", "parallel.png", "slice.png"):  # tiny-bert: F1 hardly varies
            assert (files / png).read_bytes()[:4] == b"\x89PNG", (name, png)
        for trial in search["trials"]:  # cost and curve per trial, from the trial's reports
            assert trial["updates"] > 0 and trial["cpu_s"] > 0 and trial["gpu_s"] == 0.0
            steps = [u for u, _ in trial["curve"]]  # an evaluation per epoch of 4 updates
            assert steps == [4 * (i + 1) for i in range(len(steps))] and steps[-1] == trial["updates"]
        complete = {round(t.value, 6) for t in study.trials if t.value is not None}
        assert complete == {round(t["curve"][-1][1], 6) for t in search["trials"]}
    md = (out / "analysis" / "analysis.md").read_text()
    assert all(f"`{name}`" in md for name in searches) and "CPU s" in md
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test-sweep")
    for parent in client.search_runs([experiment.experiment_id], "tags.role = 'target'"):
        logged = {a.path for a in client.list_artifacts(parent.info.run_id, "analysis")}
        assert "analysis/analysis.md" in logged and len(logged) >= 3, logged
    assert "analysis:" in stdout


def test_export_picks_the_best_dev_run_and_a_rerun_reproduces_it(finished_sweep, tmp_path):
    sweep_dir, _ = finished_sweep
    uri = f"sqlite:///{sweep_dir / 'out' / 'mlflow.db'}"
    paths = export(uri, "test-sweep", tmp_path / "exports")
    assert sorted(p.name for p in paths) == ["ibo.yaml", "index.yaml", "yor.yaml"]
    exported = yaml.safe_load((tmp_path / "exports" / "yor.yaml").read_text())
    summary = json.loads((sweep_dir / "out" / "summary.json").read_text())
    row = next(r for r in summary["targets"] if r["target"] == "ner:masakhaner2:yor")
    assert exported["trial_id"] == row["trial_id"], "the export and the summary pick the same"
    note = exported["selection"]
    assert note["seeds"] == 2 and note["dev_f1_mean"] == pytest.approx(row["dev_f1"])
    assert note["anchor_trial_id"] == row["anchor_trial_id"]
    assert exported["config"]["source"] in ("ner:conll2003:en", "ner:masakhaner2:hau")
    rerun = run_trial(TrialConfig.from_yaml(tmp_path / "exports" / "yor.yaml"))
    assert rerun["final"]["test/f1"] == pytest.approx(exported["metrics"]["test_f1"], abs=1e-3)
    assert rerun["final"]["dev/f1"] == pytest.approx(exported["metrics"]["dev_f1"], abs=1e-3)


def test_train_final_registers_a_model_per_target_that_reloads_with_its_test_f1(
        finished_sweep, tmp_path, monkeypatch):
    from metaxl_core import train
    sweep_dir, _ = finished_sweep
    uri = f"sqlite:///{sweep_dir / 'out' / 'mlflow.db'}"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    trained = []  # (target, seed, dev F1) of every seed train_final trains
    real_run_trial = train.run_trial

    def recording_run_trial(cfg, **kwargs):
        results = real_run_trial(cfg, **kwargs)
        trained.append((cfg.target, cfg.seed, results["final"]["dev/f1"]))
        return results
    monkeypatch.setattr(train, "run_trial", recording_run_trial)
    export(uri, "test-sweep", tmp_path / "exports", train=True, seeds=2)
    assert os.environ.get("MLFLOW_TRACKING_URI") == before  # later sweeps must not log here
    index = yaml.safe_load((tmp_path / "exports" / "index.yaml").read_text())["exports"]
    assert {e["registered"] for e in index} == {"models:/metaxl-ner-yor/1", "models:/metaxl-ner-ibo/1"}
    client = MlflowClient(uri)
    for entry in index:
        lang = entry["target"].rsplit(":", 1)[1]
        tags = client.get_model_version(f"metaxl-ner-{lang}", "1").tags
        assert float(tags["reloaded_test_f1"]) == pytest.approx(float(tags["test_f1"]), abs=1e-6)
        assert tags["trial_id"] and tags["sweep_id"] and tags["seed"] == str(entry["seed"])
        final = client.search_runs([client.get_experiment_by_name("test-sweep").experiment_id],
                                   f"tags.role = 'final' and tags.target_lang = '{lang}'")
        assert len(final) == 1 and final[0].data.metrics["best/test_f1"] == entry["final_test_f1"]
        # the kept seed has the best dev F1 of the two (the lower seed on a tie)
        seeds = sorted((-dev, seed) for target, seed, dev in trained if target == entry["target"])
        assert len(seeds) == 2 and entry["seed"] == seeds[0][1], (seeds, entry)
        assert entry["final_dev_f1"] == -seeds[0][0]
    assert sorted(p.name for p in (tmp_path / "exports" / "models").iterdir()) == ["ibo", "yor"]

    # the registered model (pyfunc) and the local folder predict the same, through the command
    sentences = tmp_path / "in.txt"
    sentences.write_text("Ade went to Lagos\n\nBola saw Kano today\n", encoding="utf-8")
    outputs = []
    for model in ("models:/metaxl-ner-yor/1", str(tmp_path / "exports" / "models" / "yor")):
        proc = subprocess.run([sys.executable, "-m", "metaxl_core.predict", "--model", model,
                               "--input", str(sentences), "--mlflow-uri", uri],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]
    lines = outputs[0].splitlines()  # a word-tag line per word, a blank line after each sentence
    assert [line.split("\t")[0] for line in lines] == [
        "Ade", "went", "to", "Lagos", "", "", "Bola", "saw", "Kano", "today", ""]
    labels = json.loads((tmp_path / "exports" / "models" / "yor" / "metaxl.json").read_text())["labels"]
    assert all(line.split("\t")[1] in labels for line in lines if line)

    proc = subprocess.run([sys.executable, "-m", "metaxl_core.predict", "--model",
                           "models:/metaxl-ner-xx/1", "--input", str(sentences), "--mlflow-uri", uri],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "metaxl-ner-yor" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("interval, checkpointed", [
    (0, [True, True, False]), (25, [False, True, False]), (1000, [False, False, False])])
def test_trials_checkpoint_once_the_interval_has_passed_and_never_after_the_last_epoch(
        monkeypatch, interval, checkpointed):
    from types import SimpleNamespace

    from metaxl_core import train
    from sweeps import search
    now = {"s": 0.0}
    reports = []
    monkeypatch.setattr(search.time, "monotonic", lambda: now["s"])
    monkeypatch.setattr(search.ray, "get_runtime_context",
                        lambda: SimpleNamespace(get_node_id=lambda: "node-1"))
    monkeypatch.setattr(search.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(search.tune, "report", lambda metrics, checkpoint=None: reports.append(
        (metrics["epoch"], metrics["node_id"], checkpoint is not None)))

    def fake_run_trial(cfg, report, resume_from):  # 3 epochs of 15 s each
        assert resume_from is None
        for epoch in range(1, cfg["epochs"] + 1):
            now["s"] += 15.0
            report({"epoch": epoch}, {"epoch": epoch - 1, "weights": torch.zeros(2)})

    monkeypatch.setattr(train, "run_trial", fake_run_trial)  # trainable imports it when run
    search.trainable({"lr": 1e-3}, {"epochs": 3}, checkpoint_interval_s=interval)
    assert reports == [(e, "node-1", c) for e, c in zip((1, 2, 3), checkpointed)]


def test_search_workers_import_no_training_code():
    """Every Ray worker of a sweep imports sweeps.search; only trial workers need torch."""
    probe = "import sys, sweeps.search; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]


KILL_SWEEP = """
name: kill-sweep
targets: [ner:masakhaner2:yor]
sources: [ner:conll2003:en]
methods: [joint]
trials_per_search: 4
seeds_per_config: 1
max_concurrent: 2
space: {lr: [1.0e-4, 3.0e-3]}
trial: {encoder: tiny-bert, epochs: 3, source_train_size: 40, target_train_size: 30,
        target_dev_size: 30, max_seq_length: 48}
"""


def test_resume_after_killing_the_driver_leaves_exactly_one_run_per_trial(tmp_path):
    """SIGKILL the driver before any trial, just after Tune wrote tuner.pkl, with trials running
    before Tune's first snapshot, and after some finished; each --resume continues the same
    attempt and the last one ends it."""
    from sweeps.pairs import _processes, stop_leftover_ray
    from sweeps.settings import RAY_PROCESSES
    config, out = tmp_path / "sweep.yaml", tmp_path / "out"
    config.write_text(KILL_SWEEP, encoding="utf-8")
    command = [sys.executable, "sweeps/pairs.py", "--config", str(config), "--output-dir", str(out)]
    db = f"sqlite:///{out / 'mlflow.db'}"

    def runs(role="trial"):
        try:
            client = MlflowClient(db)
            experiment = client.get_experiment_by_name("kill-sweep")
            return client.search_runs([experiment.experiment_id], f"tags.role = '{role}'")
        except Exception:  # the store is being created by the driver
            return []

    moments = [lambda: (out / "sweep_id.txt").exists(),  # before any trial
               # Tune wrote tuner.pkl, not yet its first snapshot (a window of about a second)
               lambda: bool(list((out / "tune").glob("*/tuner.pkl"))),
               lambda: len(runs()) >= 1,  # trials running, before any snapshot
               lambda: any(r.info.status == "FINISHED" for r in runs())]  # some finished
    left_behind = {}
    try:
        for index, moment in enumerate(moments):
            driver = subprocess.Popen(command + ["--resume"] * (index > 0), cwd=PROJECT_ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 300
            while not moment() and driver.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            assert driver.poll() is None, f"the sweep ended before kill moment {index}"
            if (out / RAY_PROCESSES).exists():
                left_behind.update(json.loads((out / RAY_PROCESSES).read_text()))
            driver.kill()  # the driver only, as a crash or the OOM killer would
            driver.wait()
        proc = subprocess.run(command + ["--resume"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        stop_leftover_ray(out)
    table = _processes()
    assert not [p for p, started in left_behind.items() if table.get(int(p), (0, ""))[1] == started]
    summary = json.loads((out / "summary.json").read_text())
    trial_ids = sorted(t["trial_id"] for s in summary["searches"] for t in s["trials"])
    trials = runs()
    assert sorted(r.data.tags["trial_id"] for r in trials) == trial_ids, "one run per trial"
    assert all(r.info.status in ("FINISHED", "KILLED") for r in trials)
    client = MlflowClient(db)
    for run in trials:  # a restarted trial did not log its epochs twice
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "dev/f1")]
        assert sorted(steps) == sorted(set(steps)), (run.data.tags["trial_id"], steps)
    for run in runs("abandoned_trial"):
        assert run.info.status == "KILLED" and "resume" in run.data.tags["killed_reason"]
    assert {r.data.tags["sweep_id"] for r in trials + runs("target")} == {
        (out / "sweep_id.txt").read_text()}, "one attempt, one parent run per target"
    assert len(runs("target")) == 1
    for search in summary["searches"]:  # the Optuna studies outlived the kills, none left running
        study = load_study(out / "optuna.journal", search["name"])
        states = [t.state.name for t in study.trials]
        assert "RUNNING" not in states and states.count("COMPLETE") >= len(search["trials"]), states


def test_a_sweep_searches_source_sets_with_per_source_rtns(tmp_path):
    config = tmp_path / "sets.yaml"
    config.write_text("""
name: test-sets
targets: [ner:masakhaner2:yor]
sources: ["ner:conll2003:en,ner:masakhaner2:hau", ner:masakhaner2:hau]
methods: [metaxl]
grid_pairs: true
trials_per_search: 2
seeds_per_config: 1
max_concurrent: 1
space: {rtn_per_source: [true], source_sampling: [learned, uniform], lr: [1.0e-3, 3.0e-3]}
trial: {encoder: tiny-bert, epochs: 2, source_train_size: 30, target_train_size: 20,
        target_dev_size: 20, max_seq_length: 32, warmup_ratio: 0.0}
""", encoding="utf-8")
    proc = subprocess.run([sys.executable, "sweeps/pairs.py", "--config", str(config),
                           "--output-dir", str(tmp_path / "out")], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test-sets")
    runs = client.search_runs([experiment.experiment_id], "tags.role = 'trial'")
    assert sorted(r.data.tags["source_lang"] for r in runs) == ["en+hau"] * 2 + ["hau"] * 2
    for run in runs:
        if run.data.tags["source_lang"] == "en+hau":
            assert run.data.params["rtn_per_source"] == "True"
            p_en, p_hau = (run.data.metrics[f"train/p_{n}"] for n in ("conll2003_en", "masakhaner2_hau"))
            assert p_en + p_hau == pytest.approx(1.0)
