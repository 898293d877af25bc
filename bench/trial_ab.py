"""Whole trials, old code against new: the same planned runs of a grid preset (same rows,
methods, seeds, data), run by a baseline checkout (today's code: a git worktree) and by this
checkout with `--new` fields, interleaved pair by pair; total wall time ratio and test F1 paired
by seed. Each trial is one `python -m metaxl_core.train` process with one torch thread.

    git worktree add /tmp/metaxl-base <commit>          # the code to compare against
    python bench/trial_ab.py --baseline /tmp/metaxl-base --shard 0/2 &   # one process per core
    python bench/trial_ab.py --baseline /tmp/metaxl-base --shard 1/2
    python bench/trial_ab.py --report                   # table + bench/results/trial_ab.json

Resumable: finished trials are appended to `<out>/trials.jsonl` and skipped on a rerun. Before
timing anything each process fills the hidden-state cache of its rows (shared by both codes,
same keys), so no trial pays the one-off cache fill. The padding table (`--padding`) counts the
padded share of source-batch tokens over one epoch with and without `group_by_length`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metaxl_core.atomic import write_atomic  # noqa: E402
from metaxl_core.selection import mean_std, paired_difference  # noqa: E402
from sweeps.grid import load_preset, plan_runs, shard_arg  # noqa: E402

NEW_FIELDS = ("precision", "group_by_length")  # fields today's code does not know


def planned(args) -> list[dict]:
    """The preset's runs for the chosen rows, methods and seeds, seed-major."""
    runs = plan_runs(load_preset(args.preset), str(Path(args.data_root).resolve()), args.out)
    rows = {tuple(r.split("<-")) for r in args.rows}
    runs = [r for r in runs if (r["target"], r["source"]) in rows and r["method"] in args.methods
            and r["seed"] in args.seeds]
    return sorted(runs, key=lambda r: (r["seed"], r["target"], r["source"], r["method"]))


def trial_config(run: dict, variant: str, new: dict) -> dict:
    config = run["config"].to_dict()
    if variant == "baseline":
        return {k: v for k, v in config.items() if k not in NEW_FIELDS}
    return {**config, **new}


def run_one(run: dict, variant: str, code: Path, new: dict) -> dict:
    """One trial in its own process, in `code`; its results.json's cost and scores."""
    with tempfile.TemporaryDirectory(prefix="trial-ab-") as folder:
        config = Path(folder) / "trial.yaml"
        config.write_text(yaml.safe_dump(trial_config(run, variant, new)), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "metaxl_core.train", "--config", str(config),
                               "--output-dir", str(Path(folder) / "out")], cwd=code, env=env,
                              capture_output=True, text=True)
        process_s = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{variant} {run['key']} failed:\n{proc.stderr[-3000:]}")
        results = json.loads((Path(folder) / "out" / "results.json").read_text(encoding="utf-8"))
    return {"variant": variant, "key": run["key"], "target": run["target"],
            "source": run["source"], "method": run["method"], "seed": run["seed"],
            "process_s": round(process_s, 1), "wall_time_s": results["wall_time_s"],
            "timing_s": results["timing_s"], "test_f1": results["final"]["test/f1"],
            "dev_f1": results["final"]["dev/f1"], "precision": results.get("precision", "fp32"),
            "code": str(code), "new": new if variant == "new" else {}}


def fill_caches(runs: list[dict]) -> None:
    """Compute (or load) every split's hidden states once, untimed, with this checkout's code."""
    from metaxl_core.train import build_trial, resolve_device
    seen = set()
    for run in runs:
        cfg = run["config"]
        key = (cfg.target, cfg.source, cfg.method == "target_only")
        if key not in seen:
            seen.add(key)
            build_trial(cfg, resolve_device(cfg.device))


def run_shard(args) -> None:
    new = dict(kv.split("=", 1) for kv in args.new)
    new = {k: yaml.safe_load(v) for k, v in new.items()}
    log = args.out / "trials.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    done = {(r["variant"], r["key"]) for r in read_log(log)}
    shard, shards = args.shard
    pairs = [r for i, r in enumerate(planned(args)) if i % shards == shard]
    fill_caches(pairs)
    for i, run in enumerate(pairs):
        order = ("baseline", "new") if i % 2 == 0 else ("new", "baseline")  # cancels drift
        for variant in order:
            if (variant, run["key"]) in done:
                continue
            record = run_one(run, variant, args.baseline if variant == "baseline" else ROOT, new)
            with log.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            print(f"{variant:8s} {run['key'][:70]:70s} {record['wall_time_s']:7.1f} s  "
                  f"test F1 {record['test_f1']:.4f}", flush=True)


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def padding_table(args) -> list[dict]:
    """Padded share of the source batches' tokens over one epoch, shuffled vs length-grouped."""
    from metaxl_core.sampling import length_grouped_batches
    from metaxl_core.train import _cached_data, _cached_encoder, _data_config
    import random
    rows = []
    for run in {(r["target"], r["source"]): r for r in planned(args)}.values():
        cfg = run["config"]
        _, tokenizer = _cached_encoder(cfg.encoder, cfg.seed)
        lengths = [len(f["input_ids"]) for f in
                   _cached_data(_data_config(cfg), tokenizer)[1]["source_train"].features]
        shares = {}
        for name in ("shuffled", "group_by_length"):
            padded = total = 0
            for seed in args.seeds:
                if name == "shuffled":
                    order = list(range(len(lengths)))
                    random.Random(seed).shuffle(order)
                    batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
                else:
                    batches = length_grouped_batches(lengths, cfg.batch_size, seed)
                for batch in batches:
                    longest = max(lengths[i] for i in batch)
                    total += longest * len(batch)
                    padded += sum(longest - lengths[i] for i in batch)
            shares[name] = padded / total
        rows.append({"row": f"{run['target']} <- {run['source']}", "sentences": len(lengths),
                     "mean_tokens": statistics.fmean(lengths), "pad_share": shares})
    return rows


def report(args) -> dict:
    """Per (row, method) and overall: seeds, total wall time of each code and their ratio, test
    F1 mean of each and the paired difference (new - baseline, bootstrap 95% CI over seeds)."""
    records = read_log(args.out / "trials.jsonl")
    groups: dict[tuple, dict] = {}
    for r in records:
        group = groups.setdefault((r["target"], r["source"], r["method"]), {"baseline": {}, "new": {}})
        group[r["variant"]][r["seed"]] = r
    table, totals = [], {"baseline": 0.0, "new": 0.0}
    f1 = {"baseline": {}, "new": {}}
    for (target, source, method), group in sorted(groups.items()):
        seeds = sorted(set(group["baseline"]) & set(group["new"]))
        if not seeds:
            continue
        wall = {v: sum(group[v][s]["wall_time_s"] for s in seeds) for v in totals}
        scores = {v: {s: 100 * group[v][s]["test_f1"] for s in seeds} for v in totals}
        for v in totals:
            totals[v] += wall[v]
            f1[v].update({(target, source, method, s): x for s, x in scores[v].items()})
        table.append({"row": f"{target} <- {source}", "method": method, "seeds": seeds,
                      "wall_s": wall, "ratio": wall["new"] / wall["baseline"],
                      "test_f1": {v: mean_std(scores[v].values()) for v in totals},
                      "eval_share": {v: statistics.fmean(group[v][s]["timing_s"]["eval"] /
                                                         group[v][s]["wall_time_s"] for s in seeds)
                                     for v in totals},
                      "paired_f1": paired_difference(scores["new"], scores["baseline"])})
    overall = {"wall_s": totals, "ratio": totals["new"] / totals["baseline"] if totals["baseline"] else None,
               "paired_f1": paired_difference(f1["new"], f1["baseline"])}
    return {"rows": table, "overall": overall,
            "new_fields": next((r["new"] for r in records if r["variant"] == "new"), {})}


def print_report(result: dict, padding: list[dict] | None) -> None:
    print(f"new: {result['new_fields']}")
    print(f"{'row':44s} {'method':8s} {'n':>2s} {'base s':>8s} {'new s':>8s} {'ratio':>6s} "
          f"{'eval% b/n':>10s} {'F1 base':>8s} {'F1 new':>8s}  new-base [95% CI]")
    for row in result["rows"]:
        p = row["paired_f1"]
        paired = f"{p['mean']:+.2f} [{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}]" if p else "-"
        print(f"{row['row']:44s} {row['method']:8s} {len(row['seeds']):2d} "
              f"{row['wall_s']['baseline']:8.0f} {row['wall_s']['new']:8.0f} {row['ratio']:6.2f} "
              f"{100 * row['eval_share']['baseline']:4.0f}/{100 * row['eval_share']['new']:<4.0f}  "
              f"{row['test_f1']['baseline']['mean']:8.1f} {row['test_f1']['new']['mean']:8.1f}  {paired}")
    o = result["overall"]
    if o["ratio"] is not None:
        p = o["paired_f1"]
        print(f"all: {o['wall_s']['baseline']:.0f} s -> {o['wall_s']['new']:.0f} s, ratio "
              f"{o['ratio']:.2f}; test F1 new - baseline "
              + (f"{p['mean']:+.2f} [{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}] (n {p['n']})" if p else "-"))
    for row in padding or []:
        print(f"padding {row['row']:44s} mean {row['mean_tokens']:.1f} tokens: padded share "
              f"{100 * row['pad_share']['shuffled']:.1f}% shuffled -> "
              f"{100 * row['pad_share']['group_by_length']:.1f}% grouped by length")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=str(ROOT / "sweeps/grids/cpu-fidelity.yaml"))
    p.add_argument("--rows", nargs="+", metavar="TARGET<-SOURCE",
                   default=["ner:masakhaner2:lug<-ner:conll2003:en",
                            "ner:masakhaner2:zul<-ner:masakhaner2:sna"])
    p.add_argument("--methods", nargs="+", default=["joint", "metaxl"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--baseline", type=Path, help="checkout of the code to compare against")
    p.add_argument("--new", nargs="*", default=["precision=bf16", "group_by_length=true"],
                   metavar="FIELD=VALUE", help="trial fields of the new variant")
    p.add_argument("--shard", type=shard_arg, default=(0, 1), help="I/N: this process's pairs")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "trial_ab")
    p.add_argument("--report", action="store_true", help="summarise what has run, and exit")
    p.add_argument("--padding", action="store_true", help="with --report: the padding table")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "trial_ab.json")
    args = p.parse_args(argv)
    if args.report:
        result = report(args)
        padding = padding_table(args) if args.padding else None
        print_report(result, padding)
        write_atomic(args.json, json.dumps({**result, "padding": padding}, indent=1))
        return 0
    if args.baseline is None or not (args.baseline / "metaxl_core").is_dir():
        p.error("--baseline: a checkout of the code to compare against (git worktree add ...)")
    run_shard(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
