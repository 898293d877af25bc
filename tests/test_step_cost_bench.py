"""bench/step_cost.py still runs (tiny config, one round) and writes what docs/performance.md quotes."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import PROJECT_ROOT


def run(*args, tmp_path):
    out = tmp_path / "step_cost.json"
    proc = subprocess.run([sys.executable, "bench/step_cost.py", "--quick", "--no-memory",
                           "--repeats", "1", "--out", str(out), *args],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    return proc, out


def test_quick_run_reports_every_variant_with_ratios_and_mfu(tmp_path):
    variants = ["joint", "metaxl", "truncated", "layers_softmax", "per_source"]
    proc, out = run("--variants", *variants, "--precision", "bf16", "--peak-tflops", "1",
                    tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["machine"]["precision"] == "bf16"
    for timing in report["configs"]["tiny"]["timing"]:
        assert set(timing["ratio_to_joint"]) == set(variants)
        assert timing["ratio_to_joint"]["joint"] == 1.0
        # every variant is credited a joint step's FLOPs: MFU x time is the same for all (no
        # comparison of measured times: a loaded machine reorders them)
        credited = {v: timing["mfu"][v] * timing["median_s"][v] for v in variants}
        assert all(c > 0 for c in credited.values())
        assert credited == pytest.approx({v: credited["joint"] for v in variants}, rel=1e-6)


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc, out = run("--device", "cuda", tmp_path=tmp_path)
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr and not out.exists()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fidelity_run_reports_its_ratios_and_the_cache_cost(tmp_path, precision):
    proc, out = run("--fidelity", "1", "--precision", precision, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())["configs"]["tiny"]
    assert result["frozen_layers"] == 1
    cached = {"cached joint", "cached metaxl k=1", "cached metaxl k=2"}
    assert set(result["median_s"]) == {"full joint"} | cached | (
        {f"{name} bf16" for name in cached} if precision == "bf16" else set())
    if precision == "bf16":  # the same cached steps in both precisions, in one run
        assert set(result["ratio_bf16_to_fp32"]) == cached
        assert set(result["ratio_bf16_metaxl_to_bf16_joint"]) == {
            "cached metaxl k=1 bf16", "cached metaxl k=2 bf16"}
    assert result["ratio_cached_joint_to_full_joint"] > 0
    assert result["cache_bytes_per_token"] == 64 * 4  # hidden 64, float32, unpadded
    assert result["cache_fill_s_per_1000_sentences"] > 0 and set(result["targets"]) == {
        "cached joint <= 0.4x full joint", "cached metaxl exact <= 1.3x cached joint"}


def test_gpu_results_script_runs_packed_trials_on_cpu(tmp_path):
    """A CPU smoke run of bench/gpu_results.py: tiny encoder, bundled sample, 1 and 2 processes."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "bench/gpu_results.py", "--encoder", "tiny-bert", "--data-root",
         str(PROJECT_ROOT / "metaxl_core" / "sample_data"), "--targets", "ner:masakhaner2:yor",
         "--seeds", "1", "--source-size", "20", "--epochs", "1", "--levels", "1", "2",
         "--device", "cpu", "--lr", "1e-3", "--out", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [level["processes"] for level in report["levels"]] == [1, 2]
    runs = [r for level in report["levels"] for r in level["runs"]]
    assert {r["method"] for r in runs} == {"joint", "metaxl"} and all(r["updates"] == 2 for r in runs)
    assert all(0 <= r["test_f1"] <= 1 and r["device"] == "cpu" for r in runs)
    assert all(level["updates_per_s"] > 0 for level in report["levels"])
