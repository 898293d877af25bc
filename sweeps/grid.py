"""A grid of runs: every (task, target, source, method, seed) of a preset, one `run_trial` each,
logged to MLflow; resumable; a JSON of every run's final metrics at the end. The sweep's sibling
for fixed comparisons over seeds (`sweeps/pairs.py` searches; this runs what is named). It needs
no Ray: shard it over processes with --shard.

    python sweeps/grid.py --preset sweeps/grids/cpu-fidelity.yaml
    python sweeps/grid.py --preset sweeps/grids/paper-gpu.yaml --out runs/grids/paper-gpu
    python sweeps/grid.py --preset sweeps/grids/cpu-fidelity.yaml --dry-run      # the runs; "(logged)": done
    python sweeps/report.py --mlflow-uri sqlite:///runs/grids/cpu-fidelity/mlflow.db \\
        --experiment metaxl-transfer-cpu-fidelity --out results/

Preset YAML (see sweeps/grids/cpu-fidelity.yaml):

    name: metaxl-transfer-cpu          # the MLflow experiment
    output_dir: runs/grids/cpu         # mlflow.db and results.json go here (--out overrides)
    seeds: [1, 2, 3]
    methods: [target_only, source_only, joint, metaxl, metaxl_trunc]
    trial: {...}                       # TrialConfig fields shared by every run
    tasks:
      ner:
        trial: {...}                   # TrialConfig fields for this task (win over `trial`)
        method_trial:                  # optional: TrialConfig fields for one method of this task
          target_only: {epochs: 9}     #   (win over both; e.g. the same number of updates)
        targets:                       # target -> its sources
          ner:masakhaner2:lug: [ner:conll2003:en, ner:masakhaner2:kin]
          ner:masakhaner2:yor:         # a source entry may name its own methods and fields
            - {source: "ner:conll2003:en,ner:masakhaner2:ibo", methods: [joint, metaxl],
               trial: {source_train_size: 150}}

`method_trial` exists because target_only steps over the 100 target examples only (10 steps
per epoch at batch 10) while the other methods step over the source (source_train_size / 10),
so equal epochs would give target_only fewer updates; a task without it is planned exactly as
before (same configs, same run keys).

Methods are TrialConfig methods plus `metaxl_trunc` (method metaxl with
hypergradient: truncated); `metaxl` is the exact hypergradient; `metaxl_fd`, `metaxl_layers`,
`metaxl_softmax` and `metaxl_per_source` are the variants beyond the paper (VARIANTS).
Each seed draws its own data sample (`data_seed` follows `seed`: the 100 target sentences, the
source sample and the dev subset), so intervals over seeds include which sentences a user has;
a preset that sets `data_seed` fixes one sample for every seed.

`target_only` is run once per (target, source) because the NER label set is the one the target
shares with the source (an African source keeps DATE, English does not), so every row of the
report compares its methods on one label set.

Resuming: each run carries the tag `run_key` = task|target|source|method|seed|config-hash (the
hash of the TrialConfig fields that differ from their defaults, and of the test subset); a run
whose key is already in the experiment as FINISHED is skipped, so an interrupted benchmark
continues where it stopped (a changed preset field changes the hash and reruns).

Restoring: `results.json` (written at the end of every call, or by --export-only) holds every
run's scores, dev curve and code commit. `--restore FILE` logs those runs back into a store
that lacks them (a new machine, a lost runs/ folder), under this preset's run keys, so the grid
skips them and the report reads them as before:

    python sweeps/grid.py --preset sweeps/grids/cpu-fidelity.yaml \
        --restore results/fidelity/transfer_results.json --dry-run       # what it would log
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from metaxl_core.atomic import write_atomic  # noqa: E402
from metaxl_core.config import TrialConfig, load_yaml_mapping, source_label  # noqa: E402
from metaxl_core.errors import ConfigError, MetaXLError  # noqa: E402
from sweeps.methods import LAYER_VARIANTS, VARIANTS, fields_of  # noqa: E402

PRESET_KEYS = {"name", "output_dir", "seeds", "methods", "trial", "tasks", "notes", "grid"}
TASK_KEYS = {"trial", "targets", "test_cap", "method_trial"}


def lang(name: str | None) -> str:
    return source_label(name)


def load_preset(path: str | Path) -> dict:
    preset = load_yaml_mapping(path)
    unknown = sorted(set(preset) - PRESET_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown preset key(s) {unknown}; known: {sorted(PRESET_KEYS)}")
    for key in ("name", "seeds", "methods", "tasks"):
        if not preset.get(key):
            raise ConfigError(f"{path}: {key}: required")
    for method in preset["methods"]:
        if method not in VARIANTS:
            raise ConfigError(f"{path}: methods: unknown {method!r}; known {list(VARIANTS)}")
    return preset


def plan_runs(preset: dict, data_root: str | None = None, out: Path | None = None) -> list[dict]:
    """Every run of the preset, each config validated here so a bad preset fails before the
    first trial. Order: the first source of every target (all tasks) before any second source,
    and within that seed-major (seed 1 of every run, then seed 2, ...), so a benchmark cut short
    still has whole seeds of the main comparison."""
    grid = preset.get("grid") or {}
    grid_points = [{}]
    for field, values in grid.items():
        grid_points = [{**point, field: value} for point in grid_points for value in values]
    runs = []
    for task, spec in preset["tasks"].items():
        unknown = sorted(set(spec) - TASK_KEYS)
        if unknown:
            raise ConfigError(f"tasks.{task}: unknown key(s) {unknown}; known: {sorted(TASK_KEYS)}")
        method_trial = spec.get("method_trial") or {}
        for method, fields in method_trial.items():
            if method not in VARIANTS or not isinstance(fields, dict):
                raise ConfigError(f"tasks.{task}.method_trial: {method!r} must be a method of "
                                  f"{list(VARIANTS)} mapped to TrialConfig fields")
        for target, sources in spec["targets"].items():
            sources = [sources] if isinstance(sources, (str, dict)) else list(sources)
            index_file = None
            if spec.get("test_cap"):
                index_file = test_index_file(task, target, int(spec["test_cap"]),
                                             data_root or (preset.get("trial") or {}).get(
                                                 "data_root") or (spec.get("trial") or {}).get(
                                                 "data_root"), out)
            for phase, entry in enumerate(sources):
                source, methods = (entry, preset["methods"]) if isinstance(entry, str) else \
                    (entry["source"], entry.get("methods", preset["methods"]))
                entry_trial = {} if isinstance(entry, str) else entry.get("trial") or {}
                for method in methods:
                    if method not in VARIANTS:
                        raise ConfigError(f"tasks.{task}: unknown method {method!r}")
                    for point in grid_points:
                        for seed in preset["seeds"]:
                            fields = {**(preset.get("trial") or {}), **(spec.get("trial") or {}),
                                      **entry_trial, **method_trial.get(method, {}), **point,
                                      "task": task, "target": target, "source": source,
                                      **fields_of(method), "seed": int(seed)}
                            fields.setdefault("data_seed", int(seed))  # unless fixed on purpose
                            if data_root:
                                fields["data_root"] = data_root
                            if index_file:
                                fields["split_index_file"] = str(index_file)
                            cfg = TrialConfig.from_dict(fields, source=f"preset {task} {target}")
                            if method in LAYER_VARIANTS and len((cfg.rtn_layers or "").split(",")) < 2:
                                raise ConfigError(f"tasks.{task} {target}: {method} compares ways of "
                                                  "combining several RTNs: give rtn_layers such as "
                                                  "'6,12' in method_trial or the entry's trial")
                            label = ",".join(f"{k}={v}" for k, v in point.items())
                            runs.append({"task": task, "target": target, "source": source,
                                         "method": method, "seed": int(seed), "config": cfg,
                                         "grid": label, "order": (phase, int(seed)),
                                         "key": run_key(task, target, source, method, int(seed),
                                                        cfg)})
    runs.sort(key=lambda r: r["order"])  # stable: task, target, method order within
    return runs


def test_index_file(task: str, target: str, cap: int, data_root, out: Path | None) -> Path:
    """A split-index file keeping `cap` test examples of `target`, drawn once by a shuffle with
    the fixed seed 0 (the same subset for every method and seed), kept in file order. Written
    under <out>/splits/ (content-addressed, so reruns reuse it)."""
    import random

    from metaxl_core.names import DataSpec
    from metaxl_core.readers import read_split, resolve_data_root

    spec = DataSpec.parse(target)
    n = len(read_split(spec, "test", resolve_data_root(data_root)))
    if cap >= n:
        return None
    positions = sorted(random.Random(0).sample(range(n), cap))
    folder = (out or Path("runs/grids/tmp")) / "splits"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{target.replace(':', '_')}_test{cap}.json"
    text = json.dumps({"test": positions})
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_atomic(path, text)
    return path.resolve()


WHERE_IT_RUNS = frozenset({"output_dir", "device", "split_index_file"})  # not what a run is


def changed_fields(cfg: TrialConfig) -> dict:
    """The fields of `cfg` that differ from TrialConfig's defaults (not where it runs or writes):
    a field added to TrialConfig later (with a default) leaves them, and run keys, as they were."""
    defaults = TrialConfig().to_dict()
    return {k: v for k, v in cfg.to_dict().items()
            if k not in WHERE_IT_RUNS and v != defaults.get(k)}


def run_key(task, target, source, method, seed, cfg: TrialConfig) -> str:
    fields = changed_fields(cfg)
    if cfg.split_index_file:  # the subset, not where the file lives
        fields["split_index"] = hashlib.sha1(Path(cfg.split_index_file).read_bytes()).hexdigest()
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return f"{task}|{target}|{source}|{method}|{seed}|{digest}"


@functools.cache
def code_version() -> dict:
    """Tags naming the code a run used: the git commit of this checkout, and code_dirty when
    metaxl_core/ or sweeps/ differ from it; none outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=30, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "metaxl_core", "sweeps"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=30,
                                 check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "code_dirty": str(bool(changed)).lower()}


def run_tags(run: dict, preset_name: str) -> dict:
    cfg = run["config"]
    return {**code_version(), "role": "bench", "preset": preset_name, "run_key": run["key"],
            "task": run["task"], "target": run["target"], "target_lang": lang(run["target"]),
            "source": run["source"] or "none", "source_lang": lang(run["source"]),
            "method": run["method"], "base_method": cfg.method,
            "hypergradient": cfg.hypergradient, "seed": str(run["seed"]),
            "encoder": cfg.encoder, "grid": run["grid"], "test_subset": test_subset(cfg)}


def test_subset(cfg: TrialConfig) -> str:
    """The test split a run scores: "full", or the name of its split-index file."""
    return Path(cfg.split_index_file).name if cfg.split_index_file else "full"


def format_duration(seconds: float) -> str:
    """H:MM:SS, for progress lines."""
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def shard_arg(text: str) -> tuple[int, int]:
    """The argparse type of --shard I/N: (I, N) with 0 <= I < N."""
    try:
        index, shards = (int(x) for x in text.split("/"))
    except ValueError:
        index, shards = -1, 0
    if not 0 <= index < shards:
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N with 0 <= I < N, e.g. 0/2")
    return index, shards


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, help="preset YAML (sweeps/grids/*.yaml)")
    p.add_argument("--out", help="output folder (default: the preset's output_dir)")
    p.add_argument("--mlflow-uri", help="tracking URI (default: sqlite:///<out>/mlflow.db)")
    p.add_argument("--data-root", help="overrides the preset's data_root")
    p.add_argument("--only", action="append", help="run only keys containing this text, "
                   "shell wildcards allowed (e.g. 'ner:masakhaner2:lug|*|joint|'); repeat to "
                   "run keys that match any")
    p.add_argument("--shard", type=shard_arg, default=(0, 1),
                   help="I/N: run only runs i with i %% N == I (start N processes on one store to "
                   "use N cores; each skips what the others logged)")
    p.add_argument("--threads", type=int, help="torch threads per process (1 is the most robust "
                   "on a shared CPU)")
    p.add_argument("--export-only", action="store_true", help="only write results.json")
    p.add_argument("--restore", action="append", default=[], metavar="RESULTS_JSON",
                   help="log the runs of an earlier results.json that the store lacks (each must "
                   "be a run of this preset), then go on as usual; repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs, marking those already in MLflow, and exit")
    args = p.parse_args(argv)

    try:
        preset = load_preset(args.preset)
        out = Path(args.out or preset.get("output_dir") or f"runs/grids/{preset['name']}")
        runs = plan_runs(preset, args.data_root, out)
        if args.restore and args.shard[1] > 1:
            raise ConfigError("--restore with --shard: restore once (with --export-only), then "
                              "start the shards")
        # every file read and checked against the whole plan before anything is logged
        restoring = [(path, restorable(path, runs)) for path in args.restore]
    except MetaXLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.only:
        runs = [r for r in runs if any(fnmatch.fnmatchcase(r["key"], f"*{pattern}*")
                                       for pattern in args.only)]
    shard, shards = args.shard
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from sweeps.mlflow_store import log_results, open_experiment  # noqa: E402 (heavy imports)

    uri = args.mlflow_uri or f"sqlite:///{out.resolve() / 'mlflow.db'}"
    if args.dry_run:
        try:
            done = finished_runs(*open_experiment(uri, preset["name"], create=False))
        except ConfigError as err:  # no store or experiment yet: nothing logged
            print(f"(nothing logged: {err})", file=sys.stderr)
            done = {}
        restored = {run["key"] for _, pairs in restoring for run, _, _ in pairs} - set(done)
        for i, r in enumerate(runs, 1):
            mark = "  (logged)" if r["key"] in done else "  (restored)" if r["key"] in restored else ""
            print(f"{i:4d} {r['key']}{mark}")
        print(f"{len(runs)} runs, {sum(r['key'] in done for r in runs)} already in MLflow"
              f"{f', {len(restored)} to restore' if args.restore else ''} -> {out}")
        return 0

    from metaxl_core.train import run_trial  # noqa: E402

    out.mkdir(parents=True, exist_ok=True)
    client, experiment_id = open_experiment(uri, preset["name"])
    for path, pairs in restoring:
        logged = restore_runs(client, experiment_id, preset["name"], pairs)
        print(f"{path}: {logged} of its {len(pairs)} runs restored "
              f"({len(pairs) - logged} already in MLflow)", flush=True)
    done = finished_runs(client, experiment_id)
    todo = [] if args.export_only else \
        [r for i, r in enumerate(runs) if r["key"] not in done and i % shards == shard]
    logged = sum(r["key"] in done for r in runs)
    print(f"preset {preset['name']}: {len(runs)} runs, {logged} already in MLflow, {len(todo)} to "
          f"run{f' in shard {shard}/{shards}' if shards > 1 else ''}; tracking {uri} "
          f"(experiment {experiment_id})", flush=True)

    started = time.time()
    failures = 0
    for i, run in enumerate(todo, 1):
        label = f"{run['method']} {lang(run['source'])}->{lang(run['target'])} seed {run['seed']}"
        t0 = time.time()
        if client.search_runs([experiment_id], f"tags.run_key = '{run['key']}' and "
                              "attributes.status = 'FINISHED'", max_results=1):
            print(f"[{i}/{len(todo)}] {label}: already logged, skipped", flush=True)
            continue
        try:
            results = run_trial(run["config"])
        except Exception as err:  # one failing run must not end the benchmark
            failures += 1
            print(f"[{i}/{len(todo)}] FAILED {label}: {type(err).__name__}: {err}", flush=True)
            traceback.print_exc()
            continue
        log_results(client, experiment_id, results, run_tags(run, preset["name"]),
                    run_name=f"{run['method']}-{lang(run['source'])}-{lang(run['target'])}-s{run['seed']}")
        elapsed = time.time() - started
        eta = elapsed / i * (len(todo) - i)
        final = results["final"]
        print(f"[{i}/{len(todo)}] {label}: dev f1 {final['dev/f1']:.4f} test f1 "
              f"{final['test/f1']:.4f} (best epoch {results['best_epoch']}, {time.time() - t0:.0f} s)"
              f"  elapsed {format_duration(elapsed)}  ETA {format_duration(eta)}", flush=True)

    summary = export_results(client, experiment_id, preset, runs, uri)
    path = out / "results.json"
    # One space per level and no padding: a full preset stays under 1 MB and still diffs by line.
    write_atomic(path, json.dumps(summary, indent=1, separators=(",", ":"), sort_keys=True))
    print(f"wrote {path}: {len(summary['runs'])} runs ({failures} failed this time) in "
          f"{format_duration(time.time() - started)}", flush=True)
    return 1 if failures else 0


def finished_runs(client, experiment_id: str) -> dict:
    """run_key -> the experiment's FINISHED bench run with that key (the newest where one key
    was logged twice, e.g. by two processes started on overlapping runs)."""
    return {r.data.tags.get("run_key"): r for r in client.search_runs(
        [experiment_id], "tags.role = 'bench' and attributes.status = 'FINISHED'",
        max_results=50000, order_by=["attributes.start_time ASC"])}


def restorable(path: str | Path, runs: list[dict]) -> list[tuple[dict, dict, dict]]:
    """(planned run, its `run_trial`-style results, the tags it keeps) for every record of the
    results.json at `path`, matched by task, target, source, method, seed, trial fields (where
    the data lives aside) and test subset. ConfigError naming the file and the record when it
    cannot be read, a record is malformed or no run of this plan (another preset, or one
    changed since), or two records are one run: all checked before anything is logged."""
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))["runs"]
        if not isinstance(records, list):
            raise TypeError("'runs' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a grid results.json ({type(err).__name__}: {err})") from None

    def identity(task, target, source, method, seed, trial, test_subset) -> str:
        trial = {k: v for k, v in trial.items() if k not in ("seed", "data_root")}
        if trial.get("data_seed") == "seed":  # as export_results writes a sample per seed
            trial["data_seed"] = int(seed)
        return json.dumps([task, target, source, method, int(seed), trial, test_subset],
                          sort_keys=True)
    planned = {identity(r["task"], r["target"], r["source"] or "none", r["method"], r["seed"],
                        changed_fields(r["config"]), test_subset(r["config"])): r for r in runs}
    found: dict[str, int] = {}
    restored = []
    for i, rec in enumerate(records):
        try:
            key = identity(rec["task"], rec["target"], rec["source"], rec["method"], rec["seed"],
                           rec["trial"], rec.get("test_subset", "full"))
            results = {
                "history": [{**row, "epoch": int(row["epoch"])} for row in rec["history"]],
                "evaluations": [{**e, "step": int(e["step"]), "dev/f1": float(e["dev/f1"])}
                                for e in rec.get("evaluations", [])],
                "final": {k: float(v) for k, v in rec["final"].items()},
                "best_epoch": int(rec["best_epoch"]),
                "wall_time_s": float(rec.get("wall_time_s") or 0.0)}
            if (rec.get("rtn_movement") or {}).get("init") is not None:
                results["rtn_movement_init"] = {"rtn/movement": float(rec["rtn_movement"]["init"])}
            tags = {**{str(k): str(v) for k, v in rec.get("code", {}).items()},
                    "restored_from_run": str(rec["run_id"])}
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(f"{path}: runs[{i}] is not a grid run record ({type(err).__name__}: "
                              f"{err})") from None
        if key not in planned:
            raise ConfigError(
                f"{path}: runs[{i}] ({rec['method']} {lang(rec['source'])} -> "
                f"{lang(rec['target'])} seed {rec['seed']}, trial {rec['trial']}) is no run of "
                "this preset: restore it with the preset it was run with")
        if key in found:
            raise ConfigError(f"{path}: runs[{found[key]}] and runs[{i}] are the same run "
                              f"({planned[key]['key']})")
        found[key] = i
        run = planned[key]
        restored.append((run, {"config": run["config"].to_dict(), **results}, tags))
    return restored


def restore_runs(client, experiment_id: str, preset_name: str,
                 restored: list[tuple[dict, dict, dict]]) -> int:
    """Log each of `restorable`'s runs whose key the experiment lacks as a FINISHED bench run,
    tagged with the run it came from (`restored_from_run`) and its code commit when the export
    kept it; returns how many were logged."""
    from sweeps.mlflow_store import log_results

    done = finished_runs(client, experiment_id)
    logged = 0
    for run, results, kept_tags in restored:
        if run["key"] in done:
            continue
        tags = {**{k: v for k, v in run_tags(run, preset_name).items() if k not in code_version()},
                **kept_tags}
        log_results(client, experiment_id, results, tags,
                    run_name=f"{run['method']}-{lang(run['source'])}-{lang(run['target'])}-s{run['seed']}")
        logged += 1
    return logged


def _history(client, run_id: str) -> list[dict]:
    """dev/test F1 per epoch of one run."""
    by_epoch: dict[int, dict] = {}
    for key in ("dev/f1", "test/f1", "train/loss", "rtn/movement"):
        for metric in client.get_metric_history(run_id, key):
            by_epoch.setdefault(metric.step, {"epoch": metric.step})[key] = metric.value
    return [by_epoch[e] for e in sorted(by_epoch)]


def _rtn_movement(client, run_id: str, metrics: dict) -> dict | None:
    """{"init": movement before training, "last": at the last epoch} of an RTN run (the mean
    relative change ||RTN(h) - h|| / ||h||, `rtn/movement`); None for a run without an RTN.
    The initial value comes from the run's results.json (None when the run kept none)."""
    if "rtn/movement" not in metrics:
        return None
    from mlflow.exceptions import MlflowException
    init = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            saved = Path(client.download_artifacts(run_id, "results.json", tmp))
            init = (json.loads(saved.read_text(encoding="utf-8")).get("rtn_movement_init")
                    or {}).get("rtn/movement")
        except (MlflowException, OSError, ValueError, AttributeError):
            pass
    return {"init": init, "last": metrics["rtn/movement"]}


def export_results(client, experiment_id: str, preset: dict, runs: list[dict], uri: str) -> dict:
    """Every finished run of the preset with its final metrics and its `trial` (the fields that
    differ from TrialConfig's defaults, but the seed), plus mean +- std over the seeds of each
    configuration: runs of two entries of one (target, source, method) are kept apart, and one
    run key is one record however often it was logged (`finished_runs`). An RTN run's record
    also holds `rtn_movement` ({"init", "last"}: ||RTN(h) - h|| / ||h|| before training and at
    the last epoch), and its configuration's row their mean +- std (`rtn/movement`,
    `rtn/movement_init`)."""
    from metaxl_core.selection import mean_std
    from sweeps.mlflow_store import logged_evaluations

    wanted = {r["key"]: r for r in runs}
    records = []
    for key, r in finished_runs(client, experiment_id).items():
        if key not in wanted:
            continue
        tags = r.data.tags
        metrics = r.data.metrics
        trial = changed_fields(wanted[key]["config"])
        seed = trial.pop("seed", None)
        if seed is not None and trial.get("data_seed") == seed:
            trial["data_seed"] = "seed"  # a sample per seed: what the row's seeds share
        records.append({
            "task": tags["task"], "target": tags["target"], "source": tags["source"],
            "method": tags["method"], "seed": int(tags["seed"]), "run_id": r.info.run_id,
            "trial": trial,
            "grid": tags.get("grid", ""), "test_subset": tags.get("test_subset", "full"),
            "best_epoch": int(metrics.get("best/epoch", 0)),
            "final": {k[len("final/"):]: v for k, v in sorted(metrics.items())
                      if k.startswith("final/")},
            "wall_time_s": metrics.get("wall_time_s"),
            "code": {k: tags[k] for k in ("mlflow.source.git.commit", "code_dirty") if k in tags},
            "history": _history(client, r.info.run_id),
            "evaluations": logged_evaluations(client, r.info.run_id)})
        movement = _rtn_movement(client, r.info.run_id, metrics)
        if movement is not None:
            records[-1]["rtn_movement"] = movement
    def configuration(rec: dict) -> tuple:  # what the seeds of one aggregate row share
        return (rec["task"], rec["target"], rec["source"], rec["method"], rec["grid"],
                json.dumps(rec["trial"], sort_keys=True))
    records.sort(key=lambda x: (configuration(x), x["seed"]))
    groups: dict[tuple, list] = {}
    for rec in records:
        groups.setdefault(configuration(rec), []).append(rec)
    aggregate = []
    for recs in groups.values():
        first = recs[0]
        row = {key: first[key] for key in ("task", "target", "source", "method", "grid", "trial")}
        row["n_seeds"] = len(recs)
        for key in ("dev/f1", "test/f1", "test/accuracy"):
            values = [x["final"][key] for x in recs if key in x["final"]]
            if values:
                cell = mean_std(values)
                row[key] = {"mean": cell["mean"], "std": cell["std"]}
        for key, part in (("rtn/movement", "last"), ("rtn/movement_init", "init")):
            values = [x["rtn_movement"][part] for x in recs
                      if (x.get("rtn_movement") or {}).get(part) is not None]
            if values:
                cell = mean_std(values)
                row[key] = {"mean": cell["mean"], "std": cell["std"]}
        aggregate.append(row)
    return {"preset": preset, "tracking_uri": uri, "experiment_id": experiment_id,
            "runs": records, "aggregate": aggregate}


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main())
