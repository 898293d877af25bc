"""Per-trial overhead outside training: model/tokenizer load, data tokenisation, Ray
scheduling and MLflow logging, for the embedded default sweep.

    python bench/sweep_overhead.py            # ~6 minutes on 2 cores

Two measurements, each comparing variants in the same run:
1. one default trial in this process, cold (caches cleared) and warm (encoder and tokenised
   data cached per worker process, as in a sweep that reuses its worker processes);
2. the whole embedded default sweep with `reuse_actors` true and false, and with a checkpoint
   after every evaluation but the last (`checkpoint_interval_s` 0, as before it became a
   setting; the default 60 s means the embedded default's 2-s trials never checkpoint, each
   checkpoint forcing a Tune experiment snapshot): per-trial overhead =
   1 - (training + evaluation seconds) / (seconds from a trial's start to its end, as its
   MLflow run records them), summed over trials; sweep overhead = 1 - (training + evaluation
   seconds) / (sweep wall seconds x trial slots), which adds Ray start-up, idle slots between
   trials and the four search drivers.
Prints a table and writes bench/results/sweep_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from metaxl_core import train
from sweeps.settings import SweepConfig

ROOT = Path(__file__).resolve().parents[1]


def one_trial(cold: bool) -> dict:
    """Run the embedded default's first trial in-process; returns its timing split."""
    if cold:
        train._cached_encoder.cache_clear()
        train._cached_data.cache_clear()
    sweep = SweepConfig()
    cfg = sweep.base_trial(sweep.targets[0], "metaxl")
    torch.set_num_threads(int(sweep.cpus_per_trial))  # as in a sweep trial
    started = time.perf_counter()
    results = train.run_trial(cfg)
    total = time.perf_counter() - started
    t = results["timing_s"]
    return {"variant": "cold" if cold else "warm", "total_s": total, **t,
            "overhead": t["setup"] / total}


def whole_sweep(reuse: bool, folder: Path, checkpoint_interval_s: float | None = None) -> dict:
    """Run `python sweeps/pairs.py` (the embedded default; `checkpoint_interval_s` overrides
    its checkpoint interval) and split its time."""
    variant = f"sweep reuse_actors={reuse}" + (
        "" if checkpoint_interval_s is None else f" checkpoint_interval_s={checkpoint_interval_s:g}")
    out = folder / variant.replace(" ", "_")
    flags = [] if checkpoint_interval_s is None else [
        "--checkpoint-interval-s", str(checkpoint_interval_s)]
    started = time.perf_counter()
    subprocess.run([sys.executable, "sweeps/pairs.py", "--output-dir", str(out),
                    "--reuse-actors", str(reuse).lower(), *flags], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(SweepConfig().name)
    runs = client.search_runs([experiment.experiment_id], "tags.role = 'trial'", max_results=1000)
    sums = {k: sum(r.data.metrics.get(f"time/{k}_s", 0.0) for r in runs)
            for k in ("setup", "train", "eval")}
    slots = min(os.cpu_count() or 1, 2) / SweepConfig().cpus_per_trial
    work = sums["train"] + sums["eval"]
    trial_s = sum((r.info.end_time - r.info.start_time) / 1000 for r in runs)
    return {"variant": variant, "trials": len(runs), "wall_s": wall,
            "slots": slots, **{f"{k}_s": v for k, v in sums.items()}, "trial_s": trial_s,
            "trial_overhead": 1 - work / trial_s, "overhead": 1 - work / (wall * slots)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-sweeps", action="store_true", help="only the in-process trials")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sweep_overhead.json"))
    args = parser.parse_args()
    for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                       "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                       "RAY_USAGE_STATS_ENABLED": "0"}.items():
        os.environ.setdefault(key, value)

    trials = [one_trial(cold=True), one_trial(cold=False), one_trial(cold=True),
              one_trial(cold=False)]
    print(f"{'in-process trial':<28} {'total s':>8} {'setup s':>8} {'train s':>8} "
          f"{'eval s':>8} {'overhead':>9}")
    for t in trials:
        print(f"{t['variant']:<28} {t['total_s']:>8.2f} {t['setup']:>8.2f} {t['train']:>8.2f} "
              f"{t['eval']:>8.2f} {t['overhead']:>8.1%}")
    sweeps = []
    if not args.skip_sweeps:
        with tempfile.TemporaryDirectory() as folder:
            sweeps = [whole_sweep(True, Path(folder)), whole_sweep(True, Path(folder), 0.0),
                      whole_sweep(False, Path(folder))]
        print(f"\n{'whole default sweep':<48} {'wall s':>8} {'trials':>7} {'trial s':>8} "
              f"{'train s':>8} {'eval s':>8} {'per trial':>10} {'sweep':>8}")
        for s in sweeps:
            print(f"{s['variant']:<48} {s['wall_s']:>8.1f} {s['trials']:>7} {s['trial_s']:>8.1f} "
                  f"{s['train_s']:>8.1f} {s['eval_s']:>8.1f} {s['trial_overhead']:>9.1%} "
                  f"{s['overhead']:>8.1%}")
    result = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
              "torch": torch.__version__, "in_process": trials, "sweeps": sweeps,
              "note": "overhead = time outside training steps and evaluation; a sweep's slots "
                      "are the trials that fit at once (2 CPUs / cpus_per_trial)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
