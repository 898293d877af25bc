"""The measured transfer matrix: one model per source language, trained on that language alone at
the cached fidelity and scored zero-shot on a fixed test subset of every target; the ground truth
the source ranker (sweeps/rank_sources.py) learns from and is evaluated on.

    OMP_NUM_THREADS=1 python sweeps/transfer_matrix.py --preset sweeps/grids/transfer-matrix.yaml \\
        --threads 1 --shard 0/2 &                                    # one process per core
    OMP_NUM_THREADS=1 python sweeps/transfer_matrix.py --preset sweeps/grids/transfer-matrix.yaml \\
        --threads 1 --shard 1/2
    python sweeps/transfer_matrix.py --preset sweeps/grids/transfer-matrix.yaml --export-only \\
        --results results/transfer-matrix

Preset YAML (see sweeps/grids/transfer-matrix.yaml):

    name: metaxl-transfer-matrix     # the MLflow experiment
    output_dir: runs/transfer-matrix # mlflow.db goes here (--out overrides)
    seed: 1
    test_cap: 500                    # score each target on a fixed subset of its test split
    trial: {...}                     # TrialConfig fields of every source model (method target_only)
    sources: [ner:conll2003:en, ner:masakhaner2:hau, ...]
    targets: [ner:masakhaner2:hau, ...]

A source model is a `target_only` trial whose target is the source language itself: it trains on
`target_train_size` of the source's sentences and is selected on the source's own dev split, so
no target label is seen (true zero-shot). Its test split is the matrix's diagonal (in-language
reference); every other target is scored on the entity types the two datasets share (English has
no DATE). Each source is one MLflow run (tag role=matrix, resumable: a source whose run_key is
FINISHED is skipped) with the metrics `zero_shot/<target>/f1`.

The export writes, under --results: `transfer_matrix.json` ({source: {target: f1}}, off-diagonal:
the file `rank_sources.py --matrix` reads), `details.json` (every pair's F1, entity types and
test size, the diagonal, the run ids and the preset), and `heatmap.png`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from metaxl_core.atomic import write_atomic  # noqa: E402
from metaxl_core.config import TrialConfig, load_yaml_mapping  # noqa: E402
from metaxl_core.errors import ConfigError, MetaXLError  # noqa: E402
from metaxl_core.names import DataSpec, language_of  # noqa: E402
from metaxl_core.readers import read_split, resolve_data_root  # noqa: E402
from sweeps.grid import format_duration, run_key, shard_arg, test_index_file  # noqa: E402

PRESET_KEYS = {"name", "output_dir", "seed", "test_cap", "trial", "sources", "targets"}
ROLE = "matrix"


def load_preset(path: str | Path, data_root: str | None, out: Path, read_data: bool = True) -> dict:
    """The preset with its source configs (`plan`: {source: TrialConfig}) and, with
    `read_data`, the targets' test subsets (`subsets`: {target: (examples, positions)}, their
    index files written under `out`/splits); ConfigError naming the file and key."""
    preset = load_yaml_mapping(path)
    unknown = sorted(set(preset) - PRESET_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(PRESET_KEYS)}")
    for key in ("name", "sources", "targets"):
        if not preset.get(key):
            raise ConfigError(f"{path}: {key}: required")
    for key in ("sources", "targets"):
        if not isinstance(preset[key], list):
            raise ConfigError(f"{path}: {key}: a list of dataset names")
        for name in preset[key]:
            try:
                DataSpec.parse(name)
            except MetaXLError as err:
                raise ConfigError(f"{path}: {key}: {err}") from None
    trial = dict(preset.get("trial") or {})
    if data_root:
        trial["data_root"] = data_root
    if trial.get("method", "target_only") != "target_only":
        raise ConfigError(f"{path}: trial.method: a source model is a target_only trial on the "
                          "source language; leave method out")
    cap = int(preset.get("test_cap") or 0)
    plan = {source: TrialConfig.from_dict(
        {**trial, "task": DataSpec.parse(source).task, "method": "target_only", "target": source,
         "source": None, "seed": int(preset.get("seed", 1))}, source=f"{path}: source {source}")
        for source in preset["sources"]}
    if not read_data:
        return {**preset, "plan": plan, "subsets": None, "test_cap": cap}
    data_root = next(iter(plan.values())).data_root
    # the test subset of each dataset: scored as a target, and as a source in-language
    index_files = {name: cap and test_index_file(DataSpec.parse(name).task, name, cap, data_root, out)
                   for name in dict.fromkeys(preset["sources"] + preset["targets"])}
    plan = {s: cfg.replace(split_index_file=str(index_files[s])) if index_files[s] else cfg
            for s, cfg in plan.items()}
    subsets = {}
    for target in preset["targets"]:
        examples = read_split(DataSpec.parse(target), "test", resolve_data_root(data_root))
        index = index_files[target]
        positions = json.loads(index.read_text())["test"] if index else list(range(len(examples)))
        subsets[target] = ([examples[i] for i in positions], positions)
    return {**preset, "plan": plan, "subsets": subsets, "test_cap": cap}


def matrix_key(preset: dict, source: str) -> str:
    """The run key of a source model: its config and the targets' test subsets, not where the
    data lies (the same data under another path is the same run)."""
    positions = sorted((t, p) for t, (_, p) in preset["subsets"].items())
    digest = hashlib.sha1(json.dumps(positions).encode()).hexdigest()[:10]
    cfg = preset["plan"][source].replace(data_root=None)
    return f"{run_key(cfg.task, source, source, 'zero_shot', cfg.seed, cfg)}|{digest}"


def metric_name(target: str) -> str:
    """`zero_shot/<target>/f1` with the colons MLflow metric names forbid as dots."""
    return f"zero_shot/{target.replace(':', '.')}/f1"


def finished_runs(client, experiment_id: str) -> dict:
    """{run_key: run} of the experiment's finished source models."""
    runs = client.search_runs([experiment_id], f"tags.role = '{ROLE}' and attributes.status = "
                              "'FINISHED'", max_results=50000)
    return {r.data.tags.get("run_key"): r for r in runs}


def train_sources(preset: dict, client, experiment_id: str, keys: dict, shard: tuple[int, int]) -> int:
    """Train and score every source of this shard not yet logged; returns the failures."""
    from metaxl_core.train import run_trial
    from sweeps.mlflow_store import log_results

    done = finished_runs(client, experiment_id)
    index, shards = shard
    todo = [s for i, s in enumerate(preset["sources"]) if i % shards == index and keys[s] not in done]
    print(f"{preset['name']}: {len(preset['sources'])} sources x {len(preset['targets'])} targets, "
          f"{sum(keys[s] in done for s in preset['sources'])} sources logged, {len(todo)} to train "
          f"{f'in shard {index}/{shards}' if shards > 1 else ''}", flush=True)
    started, failures = time.time(), 0
    for i, source in enumerate(todo, 1):
        if finished_runs(client, experiment_id).get(keys[source]):  # another shard logged it
            print(f"[{i}/{len(todo)}] {source}: already logged, skipped", flush=True)
            continue
        cfg = preset["plan"][source]
        score_on = {t: preset["subsets"][t][0] for t in preset["targets"] if t != source}
        t0 = time.time()
        try:
            results = run_trial(cfg, score_on=score_on)
        except Exception as err:  # one failing source must not end the matrix
            failures += 1
            print(f"[{i}/{len(todo)}] FAILED {source}: {type(err).__name__}: {err}", flush=True)
            traceback.print_exc()
            continue
        tags = {"role": ROLE, "run_key": keys[source], "source": source,
                "source_lang": language_of(source), "preset": preset["name"]}
        run_id = log_results(client, experiment_id, results, tags,
                             run_name=f"zero-shot-{language_of(source)}")
        for target, scores in results["scored_on"].items():
            client.log_metric(run_id, metric_name(target), scores["f1"])
        best = max(results["scored_on"].items(), key=lambda item: item[1]["f1"])
        elapsed = time.time() - started
        print(f"[{i}/{len(todo)}] {source}: in-language test f1 {results['final']['test/f1']:.4f}, "
              f"best zero-shot {best[0]} {best[1]['f1']:.4f} ({time.time() - t0:.0f} s)  elapsed "
              f"{format_duration(elapsed)}  ETA {format_duration(elapsed / i * (len(todo) - i))}", flush=True)
    return failures


def collect(preset: dict, client, experiment_id: str, keys: dict) -> dict:
    """details.json's content from the finished runs of the preset's current keys."""
    done = finished_runs(client, experiment_id)
    pairs, diagonal, runs = {}, {}, {}
    for source in preset["sources"]:
        run = done.get(keys[source])
        if run is None:
            continue
        results = json.loads(Path(client.download_artifacts(run.info.run_id, "results.json"))
                             .read_text(encoding="utf-8"))
        runs[source] = {"run_id": run.info.run_id, "wall_time_s": results["wall_time_s"],
                        "dev_f1": results["final"]["dev/f1"], "best_step": results["best_step"]}
        if source in preset["targets"]:
            diagonal[source] = results["final"]["test/f1"]
        for target, scores in results["scored_on"].items():
            pairs.setdefault(source, {})[target] = {
                "f1": scores["f1"], "types": scores.get("types"),
                "test_sentences": len(preset["subsets"][target][0])}
    return {"preset": {k: v for k, v in preset.items() if k not in ("plan", "subsets")},
            "missing_sources": [s for s in preset["sources"] if s not in runs],
            "test_subsets": {t: p for t, (_, p) in preset["subsets"].items()},
            "zero_shot": pairs, "in_language": diagonal, "runs": runs}


def write_outputs(details: dict, folder: Path, sources: list[str], targets: list[str]) -> list[Path]:
    """transfer_matrix.json, details.json and heatmap.png in `folder`, each written whole."""
    folder.mkdir(parents=True, exist_ok=True)
    matrix = {s: {t: round(cell["f1"], 6) for t, cell in row.items()}
              for s, row in details["zero_shot"].items()}
    paths = [folder / "transfer_matrix.json", folder / "details.json", folder / "heatmap.png"]
    write_atomic(paths[0], json.dumps(matrix, indent=1, sort_keys=True))
    write_atomic(paths[1], json.dumps(details, indent=1, sort_keys=True))
    write_atomic(paths[2], heatmap(details, sources, targets))
    return paths


def heatmap(details: dict, sources: list[str], targets: list[str]) -> bytes:
    """PNG bytes: test F1 x 100 per source (row) and target (column), the in-language diagonal
    boxed, unmeasured cells blank; the best source of each target in bold."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.full((len(sources), len(targets)), np.nan)
    for i, s in enumerate(sources):
        for j, t in enumerate(targets):
            if s == t and t in details["in_language"]:
                grid[i, j] = details["in_language"][t]
            elif t in details["zero_shot"].get(s, {}):
                grid[i, j] = details["zero_shot"][s][t]["f1"]
    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(targets), 1 + 0.45 * len(sources)))
    image = ax.imshow(grid * 100, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for j, t in enumerate(targets):
        column = [grid[i, j] if sources[i] != t else np.nan for i in range(len(sources))]
        best = np.nanargmax(column) if not np.all(np.isnan(column)) else None
        for i in range(len(sources)):
            if np.isnan(grid[i, j]):
                continue
            ax.text(j, i, f"{grid[i, j] * 100:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if grid[i, j] < 0.6 else "black",
                    fontweight="bold" if i == best else "normal")
            if sources[i] == t:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="red"))
    ax.set_xticks(range(len(targets)), [language_of(t) for t in targets], rotation=90)
    ax.set_yticks(range(len(sources)), [language_of(s) for s in sources])
    ax.set_xlabel("target (test split)")
    ax.set_ylabel("source (trained on alone)")
    ax.set_title("Zero-shot NER test F1 x 100 (bold: best source; red box: in-language)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, help="preset YAML (sweeps/grids/transfer-matrix.yaml)")
    p.add_argument("--out", help="run folder (default: the preset's output_dir)")
    p.add_argument("--mlflow-uri", help="tracking URI (default: sqlite:///<out>/mlflow.db)")
    p.add_argument("--data-root", help="overrides the preset's data_root")
    p.add_argument("--shard", type=shard_arg, default=(0, 1),
                   help="I/N: train only sources i with i %% N == I (start N processes on one "
                   "store to use N cores)")
    p.add_argument("--threads", type=int, help="torch threads per process")
    p.add_argument("--results", help="write the matrix, details and heatmap here (default: <out>)")
    p.add_argument("--export-only", action="store_true", help="only write the outputs")
    p.add_argument("--dry-run", action="store_true", help="list the source models and exit")
    args = p.parse_args(argv)
    try:
        out = Path(args.out or load_yaml_mapping(args.preset).get("output_dir")
                   or "runs/transfer-matrix")
        preset = load_preset(args.preset, args.data_root, out, read_data=not args.dry_run)
    except MetaXLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:  # reads no data, writes nothing
        for source, cfg in preset["plan"].items():
            print(f"{source}: {cfg.target_train_size} sentences x {cfg.epochs} epochs at batch "
                  f"{cfg.batch_size}, selected on {cfg.target_dev_size or 'all'} dev sentences")
        print(f"{len(preset['plan'])} source models, each scored on {len(preset['targets'])} "
              f"targets ({preset['test_cap'] or 'all'} test sentences each) -> {out}")
        return 0
    keys = {s: matrix_key(preset, s) for s in preset["sources"]}
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)

    from sweeps.mlflow_store import open_experiment

    try:
        uri = args.mlflow_uri or f"sqlite:///{out.resolve() / 'mlflow.db'}"
        client, experiment_id = open_experiment(uri, preset["name"])
    except MetaXLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failures = 0 if args.export_only else train_sources(preset, client, experiment_id, keys,
                                                        args.shard)
    details = collect(preset, client, experiment_id, keys)
    if not details["runs"]:
        print(f"error: no finished source model of this preset in {uri} (experiment "
              f"{preset['name']!r}): nothing written. Train them first, or point --out / "
              "--mlflow-uri at their store", file=sys.stderr)
        return 1
    paths = write_outputs(details, Path(args.results) if args.results else out,
                          preset["sources"], preset["targets"])
    missing = details["missing_sources"]
    print(f"wrote {', '.join(map(str, paths))}: {len(details['runs'])}/{len(preset['sources'])} "
          f"sources{f' (missing: {missing})' if missing else ''}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main())
