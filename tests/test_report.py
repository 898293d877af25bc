"""sweeps/report.py on a hand-made MLflow store: table cells, bold best, gains, plots; and the
README's results tables against the committed report."""

from __future__ import annotations

import json
import re
import struct
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from sweeps import report as report_lib
from sweeps.mlflow_store import log_results

METHODS = ["target_only", "source_only", "joint", "metaxl", "metaxl_trunc"]
# (task, target, source) -> method -> test F1 per seed (dev F1 = test + 0.01)
VALUES = {
    ("ner", "ner:masakhaner2:lug", "ner:conll2003:en"): {
        "target_only": [0.401, 0.423, 0.389], "source_only": [0.305, 0.312, 0.298],
        "joint": [0.552, 0.571, 0.560], "metaxl": [0.580, 0.566, 0.591],
        "metaxl_trunc": [0.549, 0.537, 0.561]},
    ("ner", "ner:masakhaner2:lug", "ner:masakhaner2:kin"): {
        "target_only": [0.412, 0.405], "source_only": [0.480, 0.466],
        "joint": [0.611, 0.602], "metaxl": [0.598, 0.605],
        "metaxl_trunc": [0.615, 0.630]},
    ("ner", "ner:masakhaner2:yor", "ner:conll2003:en"): {
        "target_only": [0.501, 0.512], "source_only": [0.220, 0.241],
        "joint": [0.530, 0.548], "metaxl": [0.541, 0.522],
        "metaxl_trunc": [0.526, 0.539]},
    ("ner", "ner:masakhaner2:yor", "ner:masakhaner2:ibo"): {
        "target_only": [0.505, 0.509], "source_only": [0.350, 0.362],
        "joint": [0.570, 0.561], "metaxl": [0.590, 0.602],
        "metaxl_trunc": [0.577, 0.571]},
    ("sentiment", "sentiment:afrisenti:swa", "sentiment:afrisenti:hau"): {
        "target_only": [0.611, 0.634], "source_only": [0.580, 0.566],
        "joint": [0.652, 0.641], "metaxl": [0.660, 0.671], "metaxl_trunc": [0.645, 0.650]},
}


def _results(task, target, source, method, test_f1, epochs=2):
    base = "metaxl" if method.startswith("metaxl") else method
    history = [{"epoch": e, "train/loss": 1.0 / e, "dev/f1": test_f1 + 0.01 - 0.05 * (epochs - e),
                "test/f1": test_f1 - 0.05 * (epochs - e)} for e in range(1, epochs + 1)]
    # the sentiment runs also saved every dev evaluation (every 50 updates), as run_trial does
    evaluations = [{"step": 50 * e, "epoch": e, "dev/f1": row["dev/f1"]}
                   for e, row in enumerate(history, 1)] if task == "sentiment" else []
    return {"config": {"task": task, "target": target, "source": source, "method": base,
                       "encoder": "tiny-bert", "epochs": epochs,
                       "hypergradient": "truncated" if method == "metaxl_trunc" else "exact"},
            "history": history, "evaluations": evaluations, "best_epoch": epochs,
            "final": {"dev/f1": test_f1 + 0.01, "test/f1": test_f1}, "wall_time_s": 1.0}


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return len(data), width, height


def _table(md: str, task: str) -> dict[str, list[str]]:
    """The first markdown table after '## <task>': {row label: cells}."""
    lines = md.split(f"## {task}\n", 1)[1].splitlines()
    rows = [line for line in lines[1:] if line.startswith("|")][2:]  # no header, separator
    table = {}
    for line in rows[:next(i for i, r in enumerate(rows) if r.startswith("| average"))+1]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0]] = cells[1:]
    return table


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory, new_mlflow_store):
    """One sqlite store for the module."""
    return new_mlflow_store(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


@pytest.fixture
def bench_store(store_uri):
    uri = store_uri
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("bench-test")
    for (task, target, source), methods in VALUES.items():
        for method, values in methods.items():
            for seed, value in enumerate(values, 1):
                log_results(client, experiment_id, _results(task, target, source, method, value),
                            {"role": "bench", "method": method, "source": source,
                             "seed": seed, "hypergradient": "truncated"
                             if method == "metaxl_trunc" else "exact"})
    # a failed run is ignored
    failed = client.create_run(experiment_id, tags={"role": "bench", "method": "joint"})
    client.set_terminated(failed.info.run_id, "FAILED")
    return uri


def test_a_row_whose_runs_did_not_all_keep_their_evaluations_is_drawn_at_epoch_ends(store_uri):
    """One run with its dev evaluations by update, one without (restored from an old export),
    a third with twice the epochs: the row is drawn at epoch ends as a share of each run's
    training, every run in it, never by update for some runs and by epoch for others."""
    client = MlflowClient(tracking_uri=store_uri)
    experiment_id = client.create_experiment("mixed-curves")
    row = ("ner", "ner:masakhaner2:lug", "ner:conll2003:en")
    for seed, (method, epochs, keep) in enumerate(
            [("joint", 2, True), ("joint", 2, False), ("target_only", 4, True)], 1):
        results = _results(*row, method, 0.5 + seed / 100, epochs=epochs)
        if keep:
            results["evaluations"] = [{"step": 50 * e, "epoch": e, "dev/f1": h["dev/f1"]}
                                      for e, h in enumerate(results["history"], 1)]
        log_results(client, experiment_id, results, {"role": "bench", "method": method,
                                                     "source": row[2], "seed": seed})
    records = report_lib.read_runs(client, experiment_id)
    data, unit = report_lib.curves(client, records, *row)
    assert unit == report_lib.EPOCH_SHARE
    assert sorted(data["joint"]) == [0.5, 1.0] and len(data["joint"][1.0]) == 2
    assert sorted(data["target_only"]) == [0.25, 0.5, 0.75, 1.0]
    kept = [r for r in records if r["method"] == "target_only"]
    data, unit = report_lib.curves(client, kept, *row)
    assert unit == "update" and sorted(data["target_only"]) == [50, 100, 150, 200]


def test_bench_report_tables_gains_and_plots(bench_store, tmp_path):
    out = tmp_path / "report"
    report_lib.main(["--mlflow-uri", bench_store, "--experiment", "bench-test", "--out", str(out),
                     "--curve-target", "ner=yor"])
    md = (out / "report.md").read_text(encoding="utf-8")
    for task in ("ner", "sentiment"):
        table = _table(md, task)
        rows = {(t, s): m for (tk, t, s), m in VALUES.items() if tk == task}
        assert len(table) == len(rows) + 1  # + average
        for (target, source), methods in rows.items():
            label = f"{target.split(':')[-1]} ← {source.split(':')[-1]}"
            cells = table[label]
            means = {m: np.mean(np.array(v) * 100) for m, v in methods.items()}
            best = max(means, key=means.get)
            full = max(len(v) for (tk, _, _), m in VALUES.items() if tk == task
                       for v in m.values())
            for i, method in enumerate(METHODS):
                values = np.array(methods[method]) * 100
                expected = f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"
                if len(values) < full:  # fewer seeds than the fullest cell: said in the cell
                    expected += f" (n={len(values)})"
                assert cells[i].strip("*") == expected, (label, method)
                assert cells[i].startswith("**") == (method == best), (label, method, cells[i])
            assert cells[5] == f"{means['metaxl'] - means['joint']:+.1f}"
            assert cells[6] == f"{means['metaxl_trunc'] - means['joint']:+.1f}"
        average = table["average"]
        joint = np.mean([np.mean(np.array(m["joint"]) * 100) for m in rows.values()])
        assert average[2].strip("*") == f"{joint:.1f}"
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    row = next(r for r in data["tasks"]["ner"]["rows"] if r["source"] == "ner:masakhaner2:ibo")
    assert row["cells"]["metaxl"]["n"] == 2
    assert row["gains"]["metaxl"] == pytest.approx(
        100 * (np.mean(VALUES[("ner", "ner:masakhaner2:yor", "ner:masakhaner2:ibo")]["metaxl"])
               - np.mean(VALUES[("ner", "ner:masakhaner2:yor", "ner:masakhaner2:ibo")]["joint"])))
    assert data["tasks"]["ner"]["curves"]["target"] == "ner:masakhaner2:yor"
    # these runs saved no evaluations: epoch ends, as a share of the run's 2 epochs
    assert data["tasks"]["ner"]["curves"]["unit"] == report_lib.EPOCH_SHARE
    sentiment = data["tasks"]["sentiment"]["curves"]
    assert sentiment["unit"] == "update" and sorted(sentiment["dev_f1"]["joint"]) == ["100", "50"]
    assert data["tasks"]["ner"]["curves"]["dev_f1"]["joint"]["1.0"] == pytest.approx(
        [100 * (v + 0.01) for v in VALUES[("ner", "ner:masakhaner2:yor", "ner:conll2003:en")]
         ["joint"]])
    for name in ("ner_bars.png", "ner_gain_heatmap.png", "ner_curves.png", "ner_curves_all.png",
                 "sentiment_bars.png",
                 "sentiment_curves.png"):
        size, width, height = _png_size(out / name)
        assert size > 5_000 and 300 <= width <= 4000 and 200 <= height <= 3000, name
        assert name in md
    assert not (out / "sentiment_gain_heatmap.png").exists()  # one source: no heatmap


def test_sentiment_tables_and_plots_show_the_constant_classifiers(store_uri, tmp_path):
    """From the gold label counts the runs logged (AfriSenti swa test: 224 positive, 80
    negative), each sentiment table shows the majority class and always positive scored as
    the methods are: macro-F1 42.4 where positive-class F1 says 84.8; dev has its own."""
    client = MlflowClient(tracking_uri=store_uri)
    experiment_id = client.create_experiment("baselines")
    target, source = "sentiment:afrisenti:swa", "sentiment:afrisenti:hau"
    for method, values in [("joint", [0.62, 0.64]), ("metaxl", [0.66, 0.60])]:
        for seed, value in enumerate(values, 1):
            results = _results("sentiment", target, source, method, value)
            for row in results["history"]:
                row.update({"dev/n_negative": 30, "dev/n_positive": 70})
            results["final"].update({"test/n_negative": 80, "test/n_positive": 224,
                                     "test/pos_f1": value + 0.2, "test/acc": value + 0.15})
            log_results(client, experiment_id, results,
                        {"role": "bench", "method": method, "source": source, "seed": seed})
    out = tmp_path / "out"
    data = report_lib.build_report(store_uri, "baselines", out)
    md = (out / "report.md").read_text(encoding="utf-8")
    head = next(line for line in md.splitlines() if line.startswith("| target ← source"))
    assert head.startswith("| target ← source | majority class | always positive | joint (JT) |")
    tables = [line for line in md.splitlines() if line.startswith("| swa ← hau |")
              and "[" not in line]  # not the paired gains
    # test macro-F1, positive-class F1 (where always positive beats every method: bold),
    # accuracy, dev macro-F1 (30 negative, 70 positive)
    assert [line.split(" | ")[1:3] for line in tables] == [
        ["42.4", "42.4"], ["**84.8**", "**84.8**"], ["73.7", "73.7"], ["41.2", "41.2"]]
    assert "(n=" not in tables[0] and "**" not in tables[0].split(" | ")[1]
    cells = data["tasks"]["sentiment"]["rows"][0]["cells"]
    macro = 100 * (2 * 224 / (224 + 304)) / 2  # positive-class F1 and 0 for negative, averaged
    assert cells["majority"] == {"values": [pytest.approx(macro)], "n": 1,
                                 "mean": pytest.approx(macro), "std": 0.0}
    assert "majority" not in data["tasks"]["sentiment"]["rows"][0]["gains"]
    assert _png_size(out / "sentiment_curves.png")[0] > 5_000


def test_sweep_report_uses_best_trial_by_dev(store_uri, tmp_path):
    uri = store_uri
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("sweep-test")
    target, source = "ner:masakhaner2:hau", "ner:conll2003:en"
    # (method, dev f1, test f1): the best dev trial is used, not the best test one
    for method, dev, test in [("joint", 0.50, 0.70), ("joint", 0.60, 0.55), ("metaxl", 0.62, 0.58),
                              ("metaxl", 0.40, 0.90)]:
        results = _results("ner", target, source, method, test)
        results["final"]["dev/f1"] = dev
        log_results(client, experiment_id, results, {"role": "trial"})
    out = tmp_path / "out"
    data = report_lib.build_report(uri, "sweep-test", out)
    row = data["tasks"]["ner"]["rows"][0]
    assert row["cells"]["joint"]["mean"] == pytest.approx(55.0)
    assert row["cells"]["metaxl"]["mean"] == pytest.approx(58.0)
    assert row["gains"]["metaxl"] == pytest.approx(3.0)
    table = _table((out / "report.md").read_text(encoding="utf-8"), "ner")
    assert table["hau ← en"][:2] == ["55.0", "**58.0**"]
    assert table["hau ← en"][2] == "+3.0"


def test_two_configurations_in_one_cell_are_an_error(store_uri, tmp_path):
    """A preset entry's own trial fields (e.g. freeze_layers 6 next to 8) log runs of the same
    cell and seed: the report refuses rather than keeping one of them."""
    client = MlflowClient(tracking_uri=store_uri)
    experiment_id = client.create_experiment("two-configurations")
    target, source = "ner:masakhaner2:zul", "ner:conll2003:en"
    ids = []
    for seed, freeze_layers, test in [(1, 8, 0.44), (2, 8, 0.45), (1, 6, 0.48)]:
        results = _results("ner", target, source, "joint", test)
        results["config"]["freeze_layers"] = freeze_layers
        ids.append(log_results(client, experiment_id, results,
                               {"role": "bench", "method": "joint", "seed": seed}))
    with pytest.raises(SystemExit, match="are both joint en -> zul seed 1") as err:
        report_lib.build_report(store_uri, "two-configurations", tmp_path / "out")
    assert ids[0] in str(err.value) and ids[2] in str(err.value) and ids[1] not in str(err.value)
    assert not (tmp_path / "out" / "report.md").exists()


def test_a_run_key_logged_twice_is_reported_once_with_its_newest_scores(store_uri, tmp_path):
    """Two grid processes on overlapping --only patterns log one run key twice: the report
    keeps the newest, as `grid.py --export-only` does, instead of refusing the cell."""
    client = MlflowClient(tracking_uri=store_uri)
    experiment_id = client.create_experiment("one-key-twice")
    target, source = "ner:masakhaner2:zul", "ner:conll2003:en"
    for seed, test in [(1, 0.44), (2, 0.45), (1, 0.50)]:
        time.sleep(0.01)  # distinct start times (milliseconds)
        log_results(client, experiment_id, _results("ner", target, source, "joint", test),
                    {"role": "bench", "method": "joint", "seed": seed,
                     "run_key": f"ner|zul|en|joint|{seed}|abc"})
    data = report_lib.build_report(store_uri, "one-key-twice", tmp_path / "out")
    cell = data["tasks"]["ner"]["rows"][0]["cells"]["joint"]
    assert (cell["n"], cell["mean"]) == (2, pytest.approx(47.5))


def test_sensitivity_grid_runs(store_uri, tmp_path):
    uri = store_uri
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("grid-test")
    for grid, devs in [("meta_lr=1e-05", [0.5, 0.52]), ("meta_lr=0.001", [0.4, 0.46])]:
        for seed, dev in enumerate(devs, 1):
            results = _results("ner", "ner:masakhaner2:lug", "ner:conll2003:en", "metaxl", dev)
            results["final"]["dev/f1"] = dev
            log_results(client, experiment_id, results,
                        {"role": "bench", "grid": grid, "seed": seed})
    out = tmp_path / "out"
    data = report_lib.build_report(uri, "grid-test", out)
    assert data["tasks"] == {}
    grid = data["sensitivity"]["ner"][0]["dev"]
    assert list(grid) == ["meta_lr=1e-05", "meta_lr=0.001"]  # numeric order
    assert grid["meta_lr=0.001"]["mean"] == pytest.approx(43.0)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert f"51.0 ± {np.std([50, 52], ddof=1):.1f}" in md
    assert _png_size(out / "ner_sensitivity.png")[0] > 5_000


def test_does_the_sweep_pay_pairs_the_best_configuration_with_the_default(store_uri, tmp_path):
    """The sweep's latest attempt, its best FINISHED trial by dev and that trial's seed repeats
    only, against the grid's MetaXL runs from the default source, paired by seed."""
    client = MlflowClient(tracking_uri=store_uri)
    target, en, kin = "ner:masakhaner2:lug", "ner:conll2003:en", "ner:masakhaner2:kin"
    grid_id = client.create_experiment("pays-grid")
    for method, source, values in [("metaxl", en, [0.50, 0.52, 0.48]),
                                   ("metaxl", kin, [0.90, 0.90, 0.90]),  # not the default source
                                   ("joint", en, [0.80, 0.80, 0.80])]:  # not the method
        for seed, value in enumerate(values, 1):
            log_results(client, grid_id, _results("ner", target, source, method, value),
                        {"role": "bench", "method": method, "source": source, "seed": seed})
    for tags, other in [({"grid": "meta_lr=0.001"}, target), ({}, "ner:masakhaner2:zul")]:
        log_results(client, grid_id, _results("ner", other, en, "metaxl", 0.10),  # not these
                    {"role": "bench", "method": "metaxl", "source": en, "seed": 2, **tags})
    sweep_id = client.create_experiment("pays-sweep")

    def trial(attempt, trial_id, source, dev, test, seed=1, role="trial", status="FINISHED",
              **extra):
        results = _results("ner", target, source, "metaxl", test)
        results["final"]["dev/f1"] = dev
        results["config"].update({"seed": seed, "rtn_width": 64, "rtn_layer": 10, "lr": 5e-4,
                                  "meta_lr": 2e-5})
        run_id = log_results(client, sweep_id, results, {
            "role": role, "sweep_id": attempt, "method": "metaxl", "source": source,
            **({"repeats_trial": trial_id} if role == "seed_repeat" else {"trial_id": trial_id}),
            **extra})
        if status != "FINISHED":
            client.set_terminated(run_id, status)

    client.create_run(sweep_id, start_time=1000, tags={"role": "target", "sweep_id": "old"})
    trial("old", "o0", en, 0.99, 0.99)  # an abandoned attempt
    client.create_run(sweep_id, start_time=2000, tags={"role": "target", "sweep_id": "new"})
    trial("new", "t0", kin, 0.60, 0.55)
    trial("new", "t1", en, 0.70, 0.53)  # the best finished trial
    trial("new", "t2", en, 0.95, 0.95, status="KILLED")  # stopped early by ASHA
    trial("new", "t1", en, 0.0, 0.56, seed=2, role="seed_repeat")
    trial("new", "t1", en, 0.0, 0.54, seed=3, role="seed_repeat")
    trial("new", "t0", kin, 0.0, 0.99, seed=4, role="seed_repeat")  # another trial's repeat
    out = tmp_path / "out"
    report_lib.main(["--mlflow-uri", store_uri, "--experiment", "pays-grid", "--out", str(out),
                     "--sweep", store_uri, "pays-sweep"])
    data = json.loads((out / "sweep_vs_default.json").read_text(encoding="utf-8"))
    (row,) = data["rows"]
    assert (row["trials"], row["finished"], row["best"]["trial_id"]) == (3, 2, "t1")
    assert row["sweep_seeds"] == pytest.approx({"1": 53.0, "2": 56.0, "3": 54.0})
    assert row["default_seeds"] == pytest.approx({"1": 50.0, "2": 52.0, "3": 48.0})
    assert row["paired"]["mean"] == pytest.approx((3 + 4 + 6) / 3)
    assert row["paired"]["n"] == 3 and row["paired"]["p"] == pytest.approx(2 / 8)
    # the best trial's own seed (1) won the selection on dev: also the re-runs alone
    assert row["paired_reruns"]["n"] == 2 and row["paired_reruns"]["mean"] == pytest.approx(5.0)
    assert "sweep_vs_default.md" in (out / "report.md").read_text(encoding="utf-8")
    md = (out / "sweep_vs_default.md").read_text(encoding="utf-8")
    assert ("| lug | MetaXL exact | 3 (2) | ← en, RTN 64 after layer 10, lr 5.0e-04, "
            "meta_lr 2.0e-05 | 54.3 ± 1.5 (n=3) | 50.0 ± 2.0 (n=3) (← en) | +4.3 [+3.0, +6.0], "
            "p 0.250 (n=3) | +5.0 [+4.0, +6.0], p 0.500 (n=2) |") in md
    assert _png_size(out / "sweep_vs_default.png")[0] > 5_000


def test_probe_sets_each_changed_setting_against_the_preset_paired_by_seed(store_uri, tmp_path):
    """A probe grid re-runs preset rows with a setting changed; each setting is its own row,
    paired with the preset's runs of the same row and method, seed by seed."""
    client = MlflowClient(tracking_uri=store_uri)
    zul, en, sna = "ner:masakhaner2:zul", "ner:conll2003:en", "ner:masakhaner2:sna"

    def log(experiment_id, source, method, seed, test, **changed):
        results = _results("ner", zul, source, method, test)
        results["config"].update({"freeze_layers": 8, "epochs": 2, "seed": seed, **changed})
        return log_results(client, experiment_id, results,
                           {"role": "bench", "method": method, "source": source, "seed": seed})

    preset_id = client.create_experiment("probe-preset")
    for seed, test in [(1, 0.44), (2, 0.46), (3, 0.42)]:
        log(preset_id, en, "joint", seed, test)
        log(preset_id, en, "metaxl", seed, 0.30)  # another method: not the baseline
    log(preset_id, sna, "joint", 1, 0.90)  # another source: not the baseline
    probe_id = client.create_experiment("probe-probe")
    for seed, test in [(1, 0.49), (2, 0.48)]:
        log(probe_id, en, "joint", seed, test, freeze_layers=6)
    # where it ran, and a field at its default that the preset's runs predate: the same setting
    log(probe_id, en, "joint", 3, 0.47, freeze_layers=6, device="cuda", data_root="/abs/data",
        trim_vocab=False)
    log(probe_id, en, "joint", 1, 0.45, epochs=4)
    log(probe_id, en, "joint", 2, 0.47, epochs=4)
    log(probe_id, "ner:masakhaner2:xho", "joint", 1, 0.99, freeze_layers=6)  # no preset row
    log(probe_id, en, "metaxl", 1, 0.47, freeze_layers=6)  # against JT's 49 and 48 at depth 6
    log(probe_id, en, "metaxl", 2, 0.45, freeze_layers=6)
    log(probe_id, en, "metaxl", 1, 0.35, lr=1e-3)  # no JT run with this setting
    out = tmp_path / "out"
    report_lib.main(["--mlflow-uri", store_uri, "--experiment", "probe-preset", "--out", str(out),
                     "--probe", store_uri, "probe-probe"])
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    rows = {r["setting"]: r for r in data["probe_vs_preset"]["rows"] if r["method"] == "joint"}
    assert list(rows) == ["epochs 4", "freeze_layers 6"]
    assert all(r["vs_joint"] is None for r in rows.values())
    metaxl = {r["setting"]: r for r in data["probe_vs_preset"]["rows"] if r["method"] == "metaxl"}
    assert metaxl["freeze_layers 6"]["paired"]["mean"] == pytest.approx(16.0)  # vs preset's 30
    # MetaXL - JT within the probe, seed by seed: (47 - 49 + 45 - 48) / 2
    vs_joint = metaxl["freeze_layers 6"]["vs_joint"]
    assert vs_joint["n"] == 2 and vs_joint["mean"] == pytest.approx(-2.5)
    assert metaxl["lr 0.001"]["vs_joint"] is None
    deeper, longer = rows["freeze_layers 6"], rows["epochs 4"]
    assert (deeper["source"], deeper["method"]) == (en, "joint")
    assert deeper["probe"]["mean"] == pytest.approx(48.0)
    assert deeper["preset"]["mean"] == pytest.approx(44.0)
    assert deeper["paired"]["n"] == 3 and deeper["paired"]["mean"] == pytest.approx(4.0)
    # paired over seeds 1-2 only: (45 - 44 + 47 - 46) / 2, not 46 - 44 against all 3 seeds
    assert longer["paired"]["n"] == 2 and longer["paired"]["mean"] == pytest.approx(1.0)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| zul ← en | joint (JT) | freeze_layers 6 | 48.0 ± 1.0 (n=3) | 44.0 ± 2.0 (n=3) | " \
           "+4.0 [" in md
    assert ("| zul ← en | MetaXL exact | freeze_layers 6 | 46.0 ± 1.4 (n=2) | 30.0 ± 0.0 (n=3) | "
            "+16.0 [+15.0, +17.0], p 0.500 (n=2) | -2.5 [-3.0, -2.0], p 0.500 (n=2) |") in md
    assert _png_size(out / "probe_vs_preset.png")[0] > 5_000


def test_paired_difference_pairs_by_seed_with_an_exact_sign_flip_test():
    from metaxl_core.selection import paired_difference
    joint = {"1": 50.0, "2": 40.0, "3": 60.0, "4": 45.0, "5": 55.0}
    better = {s: v + 1.0 for s, v in joint.items()}
    result = paired_difference(better, joint)
    assert result["n"] == 5 and result["mean"] == pytest.approx(1.0)
    assert result["ci95"] == pytest.approx([1.0, 1.0])
    assert result["p"] == pytest.approx(2 / 32), "all 5 signs agree: the smallest p there is"
    shuffled = dict(zip(better, reversed(list(better.values()))))  # same values, wrong seeds
    assert paired_difference(shuffled, joint)["ci95"][0] < 0 < paired_difference(
        shuffled, joint)["ci95"][1], "pairing by seed matters"
    assert paired_difference({"1": 1.0}, {"1": 0.0}) is None


README_COLUMNS = {"target only": "target_only", "source only": "source_only", "JT": "joint",
                  "JT on T1": "joint_t1", "MetaXL (official RTN)": "metaxl",
                  "MetaXL (identity RTN)": "metaxl_identity", "frozen RTN": "frozen_rtn"}


def test_the_readme_results_tables_state_the_committed_report():
    """Every 'mean ± std (n)' cell and every paired MetaXL - JT cell of the README's results
    tables is the committed results/fidelity/report.json, rounded: the README cannot go stale
    when the report is rebuilt."""
    from tests.conftest import PROJECT_ROOT

    report = json.loads((PROJECT_ROOT / "results" / "fidelity" / "report.json").read_text())
    rows = {}
    for task in report["tasks"].values():
        for row in task["rows"]:
            pair = (row["target"].rsplit(":", 1)[1], row["source"].rsplit(":", 1)[1])
            assert pair not in rows, pair
            rows[pair] = row
    number = r"\+?([−-]?\d+\.\d)"
    sweep = json.loads((PROJECT_ROOT / "results" / "fidelity" / "sweep_vs_default.json").read_text())
    sweep_rows = {row["target"].rsplit(":", 1)[1]: row for row in sweep["rows"]}

    def value(text):
        return float(text.replace("−", "-"))

    probe_rows = {(row["target"].rsplit(":", 1)[1], row["source"].rsplit(":", 1)[1],
                   row["method"], row["setting"]): row
                  for row in (report.get("probe_vs_preset") or {}).get("rows", [])}

    def check_row(row: dict, cells: dict, scores: dict, gains: dict) -> int:
        """A 'Does the sweep pay?' or 'beyond the preset' table row: scores as 'mean ± std (n)',
        gains as 'mean [low, high]', against report.json's row; {column prefix: key}."""
        for name, key in scores.items():
            cell = re.fullmatch(rf"\**{number} ± {number}\** \((\d+)\)",
                                next(c for n, c in cells.items() if n.startswith(name)))
            assert cell and (value(cell[1]), value(cell[2]), int(cell[3])) == (
                round(row[key]["mean"], 1), round(row[key]["std"], 1), row[key]["n"]), cells
        for name, key in gains.items():
            text = next(c for n, c in cells.items() if n.startswith(name))
            got = row[key]
            if got is None:  # fewer than 2 shared seeds
                assert text == "–", cells
                continue
            cell = re.fullmatch(rf"{number} \[{number}, {number}\]", text)
            assert cell and [value(cell[i]) for i in (1, 2, 3)] == [
                round(got["mean"], 1), round(got["ci95"][0], 1), round(got["ci95"][1], 1)], cells
        return len(scores) + len(gains)
    checked = probe_checked = 0
    header = None
    for line in (PROJECT_ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if not cells or set(cells[0]) <= {"-"}:
            continue
        if header and header[0].startswith("Does the sweep pay") and cells[0] in sweep_rows:
            checked += check_row(sweep_rows[cells[0]], dict(zip(header, cells, strict=True)),
                                 {"its test F1": "sweep", "default": "default"},
                                 {"best − default": "paired", "re-runs only": "paired_reruns"})
            continue
        if header and header[0].startswith("Beyond the preset") and "←" in cells[0]:
            named = dict(zip(header, cells, strict=True))
            key = (*(s.strip() for s in cells[0].split("←")), README_COLUMNS[named["method"]],
                   named["changed setting"])
            checked += check_row(probe_rows[key], named,
                                 {"its test F1": "probe", "the preset": "preset"},
                                 {"changed − preset": "paired", "MetaXL − JT": "vs_joint"})
            probe_checked += 1
            continue
        if "←" not in cells[0]:
            header = cells
            continue
        target, source = (s.strip() for s in cells[0].split("←"))
        row = rows[(target, source)]
        for name, cell in zip(header[1:], cells[1:], strict=True):
            stated = re.fullmatch(rf"\**{number} ± {number}\** \((\d+)\)", cell)
            paired = re.fullmatch(rf"{number} \[{number}, {number}\]", cell)
            if name in README_COLUMNS and stated:
                got = row["cells"][README_COLUMNS[name]]
                assert (value(stated[1]), value(stated[2]), int(stated[3])) == (
                    round(got["mean"], 1), round(got["std"], 1), got["n"]), (line, name)
                checked += 1
            elif name.startswith("MetaXL − JT") and paired:
                got = row["paired"]["metaxl"]
                assert [value(paired[i]) for i in (1, 2, 3)] == [
                    round(got["mean"], 1), round(got["ci95"][0], 1), round(got["ci95"][1], 1)], line
                checked += 1
            else:
                assert cell in ("–", ""), f"README results cell not understood: {cell!r} in {line}"
    assert checked >= 10, "the README's results tables were not found"
    assert probe_checked or not probe_rows, "the README has no 'Beyond the preset' table"
