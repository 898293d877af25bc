"""Language-pair and hyperparameter sweeps of MetaXL and its baselines on Ray Tune, tracked in
MLflow.

    python sweeps/pairs.py                              # embedded default: local Ray, bundled sample
    python sweeps/pairs.py --config sweeps/presets/paper-ner.yaml --address auto \\
        --mlflow-uri http://HEAD_IP:5000
    python sweeps/pairs.py --dry-run                    # print the plan and exit
    python sweeps/pairs.py --resume                     # finish an interrupted sweep

Each (target, method) pair is its own search (Optuna TPE via OptunaSearch, ASHA early
stopping on the target dev F1) over the source language, RTN width, RTN layer, inner and outer
learning rates. Searches run concurrently across the cluster, each driven by a Ray task
(`sweeps/search.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shlex
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import TextIO

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from metaxl_core import data as data_lib
from metaxl_core.atomic import write_atomic
from metaxl_core.encoders import encoder_depth
from metaxl_core.errors import ConfigError, MetaXLError
from metaxl_core.selection import mean_std
from sweeps.analysis import analyse_sweep
from sweeps.mlflow_store import default_tracking_uri, open_experiment, target_run
from sweeps.rank_sources import format_ranking, sweep_ranking
from sweeps.search import run_search, search_name
from sweeps.settings import LOCK, RAY_PROCESSES, SUMMARY, SWEEP_ID, TUNE_DIR, SweepConfig


def print_plan(sweep: SweepConfig, searches: list[dict], n_layers: int | None,
               ranking: dict | None = None) -> None:
    """The plan; with `ranking` (sweeps/rank_sources.sweep_ranking) each target's ranked
    candidates first."""
    for target, ranked in (ranking or {}).items():
        print(f"sources for {target}, best first (top {sweep.source_rank['top_k']} searched):")
        print("\n".join(format_ranking(ranked["rows"])))
        for warning in ranked["warnings"]:
            print(f"warning: {warning}")
    trials = len(searches) * sweep.trials_per_search
    print(f"Sweep {sweep.name!r}: task {sweep.task}, {len(sweep.targets)} target(s), "
          f"{len(sweep.sources)} candidate source(s), methods {', '.join(sweep.methods)}")
    print(f"{len(searches)} searches x {sweep.trials_per_search} trials = {trials} trials; "
          f"per trial {sweep.cpus_per_trial:g} CPU, {sweep.gpus_per_trial:g} GPU; up to "
          f"{sweep.max_concurrent} concurrent per search; ASHA rungs from "
          f"{sweep.grace_period or 'the first evaluation'} updates, reduction {sweep.reduction_factor}")
    if sweep.seeds_per_config > 1:
        print(f"confirmation: each search's top {sweep.confirm_top_k} and its anchor re-run to "
              f"{sweep.seeds_per_config} seeds (data sample "
              f"{'per seed' if sweep.data_seed_follows_seed else 'fixed'}); pick: best mean dev F1")
    print(f"encoder {sweep.base_trial(sweep.targets[0], sweep.methods[0]).encoder}"
          + (f" ({n_layers} layers)" if n_layers else ""))
    print(f"{'search':<58} {'sources':<40} searched")
    for search in searches:
        sources = ", ".join(s or "-" for s in search["sources"])
        print(f"{search_name(search):<58} {sources:<40} "
              f"{', '.join((['source'] if len(search['sources']) > 1 else []) + search['dimensions'])}")
        if n_layers:
            anchor = sweep.anchor_config(search, n_layers)
            print("  anchor (runs first): " + (", ".join(
                f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in anchor.items())
                or "-"))


def check_inputs(sweep: SweepConfig, searches: list[dict]) -> int:
    """Fail before launching anything on what every trial would fail on: read every split each
    trial reads (train, dev and test, sampled to the configured sizes), and check the RTN
    layers against the encoder's depth (from its config). Returns that depth."""
    encoder = sweep.base_trial(sweep.targets[0], sweep.methods[0]).encoder
    n_layers = encoder_depth(encoder)
    seen = set()
    for search in searches:
        for source in search["sources"]:
            trial = sweep.base_trial(search["target"], search["method"], source)
            trial.insertion_layers(n_layers)  # a fixed rtn_layer / rtn_layers
            if (trial.target, trial.source, trial.method) not in seen:
                seen.add((trial.target, trial.source, trial.method))
                data_lib.load_task_data(trial)
    where = f"encoder {encoder!r} has {n_layers} layers"
    if "rtn_layer" in sweep.space:
        low, high = sweep.space["rtn_layer"]
        if low > n_layers:
            raise ConfigError(f"space.rtn_layer: [{low}, {high}] lies above the last layer; {where}")
        if high is not None and high > n_layers:
            print(f"warning: space.rtn_layer: upper bound {high} lowered to {n_layers}; {where}",
                  flush=True)
    for layers in sweep.space.get("rtn_layers", []):
        if max(int(k) for k in layers.split(",")) > n_layers:
            raise ConfigError(f"space.rtn_layers: {layers!r} names a layer above the last; {where}")
    frozen = sweep.base_trial(sweep.targets[0], sweep.methods[0]).freeze_layers
    lowest = [sweep.space["rtn_layer"][0]] if "rtn_layer" in sweep.space else \
        [min(int(k) for k in layers.split(",")) for layers in sweep.space.get("rtn_layers", [])]
    if any(k < frozen for k in lowest):
        raise ConfigError(f"space: RTN layers from {min(lowest)} would sit inside the frozen layers "
                          f"(freeze_layers: {frozen}); search layers {frozen}..{n_layers}")
    return n_layers


def check_output_dir(output_dir: Path, resume: bool) -> None:
    """A sweep folder holds one sweep: refuse to start a second one in it (its Tune state and
    MLflow runs would mix with the first's); --resume continues it, from a folder this user owns
    only (it unpickles Ray Tune state from there)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output-dir: {output_dir} exists and is not a folder")
    if resume and not any((output_dir / name).exists() for name in (SWEEP_ID, TUNE_DIR)):
        raise ConfigError(f"--resume: {output_dir} holds no sweep to resume; check --output-dir, "
                          "or leave out --resume to start a new sweep there")
    if resume:
        for path in (output_dir, output_dir / TUNE_DIR):
            if path.exists() and path.stat().st_uid != os.getuid():
                raise ConfigError(f"--resume: {path} is not owned by the current user; resuming "
                                  "unpickles Ray Tune state from it, so it must be trusted")
    elif any((output_dir / name).exists() for name in (SWEEP_ID, TUNE_DIR, SUMMARY)):
        raise ConfigError(f"{output_dir} already holds a sweep (finished or interrupted); pass "
                          "--resume to continue it or --output-dir for a new one")


def lock_output_dir(output_dir: Path) -> TextIO:
    """Hold the sweep folder for this process: an exclusive lock on its lock file, which the OS
    releases when the process ends, however it ends. Keep the returned file open meanwhile."""
    output_dir.mkdir(parents=True, exist_ok=True)
    handle = open(output_dir / LOCK, "a+", encoding="utf-8")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(f"{output_dir} is in use by another sweep process (pid {holder}); wait "
                          "for it to end or stop it, or pass --output-dir for a new sweep") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def private_ray_token() -> None:
    """Ray's token auth for a local Ray: Ray writes a missing ~/.ray/auth_token with the
    umask's mode (often 0644, readable by every user), so write it first, mode 0600; an existing
    token file of this user that others can read is made 0600."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_MODE", "token") != "token":
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_hex(32))
    elif path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
        path.chmod(0o600)
        print(f"note: {path} (Ray's auth token) was readable by other users; made it 0600",
              flush=True)


def attempt_id(output_dir: Path, name: str) -> str:
    """This sweep attempt's id, tagged on each of its MLflow runs: a resumed attempt keeps its
    id, a new one gets a fresh one (written before any run is created)."""
    path = output_dir / SWEEP_ID
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    sweep_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, sweep_id)
    return sweep_id


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process (Linux /proc)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        table[int(stat.parent.name)] = (int(fields[1]), fields[19])
    return table


def record_local_ray(output_dir: Path) -> None:
    """Note the processes of the local Ray just started (this driver's descendants), so the
    next start can stop any that outlive a killed driver (Ray's agents ignore SIGTERM)."""
    table, mine, found = _processes(), {os.getpid()}, True
    while found:
        found = {pid for pid, (parent, _) in table.items() if parent in mine} - mine
        mine |= found
    mine.discard(os.getpid())
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RAY_PROCESSES).write_text(json.dumps(
        [[pid, table[pid][1]] for pid in sorted(mine)]), encoding="utf-8")


def stop_leftover_ray(output_dir: Path, dry_run: bool = False) -> list[int]:
    """Kill the processes recorded by an earlier local Ray of this sweep folder that are still
    alive (same pid and start time, so never a process that reused a pid); returns their pids
    (with `dry_run`, only finds them)."""
    path = output_dir / RAY_PROCESSES
    if not path.exists():
        return []
    table, stopped = _processes(), []
    for pid, started in json.loads(path.read_text(encoding="utf-8")):
        if pid in table and table[pid][1] == started:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                if not dry_run:
                    os.kill(pid, signal.SIGKILL)
                stopped.append(pid)
    if not dry_run:
        path.unlink()
    return stopped


def check_resources(sweep: SweepConfig, address: str | None) -> None:
    """Refuse a local sweep no node can run; warn on a cluster (an autoscaler may add nodes)."""
    need = {"CPU": sweep.cpus_per_trial, "GPU": sweep.gpus_per_trial}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(node.get(k, 0) >= v for k, v in need.items() if v) for node in nodes):
        return
    have = [{k: node.get(k, 0) for k in need} for node in nodes]
    message = (f"no node can run a trial needing {need}; nodes have {have}. "
               "Lower --cpus-per-trial/--gpus-per-trial or add nodes.")
    if address is None:
        raise MetaXLError(message)
    print(f"warning: {message} Waiting for the autoscaler.", flush=True)


class Interrupted(Exception):
    """The driver got SIGINT or SIGTERM."""


class Signals:
    """The handler of SIGINT and SIGTERM: raises `Interrupted` at once or, while `deferred`, at
    the next `check` (an exception raised inside Ray's blocking calls becomes a SystemError)."""

    def __init__(self):
        self.received: str | None = None
        self.deferred = False

    def __call__(self, signum, frame):
        self.received = signal.Signals(signum).name
        if not self.deferred:
            raise Interrupted(self.received)

    def check(self) -> None:
        if self.received:
            raise Interrupted(self.received)


def end_interrupted(client, experiment_id: str, sweep_id: str, reason: str) -> int:
    """End KILLED, with tag `killed_reason`, every run of this attempt still RUNNING (its trials'
    and parents'; --resume marks them RUNNING again); returns how many."""
    runs = client.search_runs([experiment_id], f"tags.sweep_id = '{sweep_id}' and "
                              "attributes.status = 'RUNNING'", max_results=50000)
    for run in runs:
        client.set_tag(run.info.run_id, "killed_reason", reason)
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(runs)


def resume_command(argv: list[str]) -> str:
    """The command line that continues this sweep."""
    return shlex.join(["python", "sweeps/pairs.py", *argv,
                       *([] if "--resume" in argv else ["--resume"])])


def summarise(sweep: SweepConfig, outcomes: list[dict]) -> list[dict]:
    """Per target: each method's pick (`search.pick_of`: the best mean dev F1 over the
    confirmation's seeds, else the best trial's dev F1; over several searches of a method, the
    best of their picks), the best over all methods with its test F1 over the same seeds, its
    paired dev difference to its search's anchor, and metaxl's test gain over joint."""
    rows = []
    for target in sweep.targets:
        picks: dict[str, dict] = {}
        for outcome in outcomes:
            pick = outcome["pick"]
            method = outcome["search"]["method"]
            if outcome["search"]["target"] == target and pick is not None and (
                    method not in picks or pick["mean"] > picks[method]["mean"]):
                picks[method] = pick
        if not picks:
            rows.append({"target": target, "best_method": None})
            continue
        method = max(picks, key=lambda m: (picks[m]["mean"], m == sweep.methods[0]))
        for pick in picks.values():
            pick["test_f1_seeds"] = mean_std(pick["test_f1"].values())
        best = picks[method]
        gain = None
        if "metaxl" in picks and "joint" in picks:
            gain = picks["metaxl"]["test_f1_seeds"]["mean"] - picks["joint"]["test_f1_seeds"]["mean"]
        rows.append({"target": target, "best_method": method,
                     "best_source": best["config"].get("source"), "trial_id": best["pick"],
                     "dev_f1": best["mean"], "dev_f1_ci95": best["ci95"], "seeds": best["seeds"],
                     "test_f1_mean": best["test_f1_seeds"]["mean"],
                     "test_f1_std": best["test_f1_seeds"]["std"],
                     "anchor_trial_id": best["anchor"], "dev_vs_anchor": best["vs_anchor"],
                     "separated_from_anchor": best["separated"],
                     "metaxl_minus_joint_test_f1": gain,
                     "per_method": {m: {"trial_id": p["pick"], "dev_f1": p["mean"],
                                        "seeds": p["seeds"], "source": p["config"].get("source"),
                                        "test_f1_mean": p["test_f1_seeds"]["mean"],
                                        "test_f1_std": p["test_f1_seeds"]["std"],
                                        "dev_vs_anchor": p["vs_anchor"]}
                                    for m, p in picks.items()}})
    return rows


def print_summary(rows: list[dict]) -> None:
    print(f"\n{'target':<26} {'pick':<10} {'source':<22} {'dev F1 (seeds)':>16} "
          f"{'test F1 (seeds)':>20} {'dev - anchor [95% CI]':>26} {'metaxl-joint':>13}")
    for row in rows:
        if row["best_method"] is None:
            print(f"{row['target']:<26} (no finished trial)")
            continue
        gain, versus = row["metaxl_minus_joint_test_f1"], row["dev_vs_anchor"]
        test = f"{row['test_f1_mean']:.4f} ± {row['test_f1_std']:.4f} ({row['seeds']})"
        anchor = ("(the anchor)" if row["trial_id"] == row["anchor_trial_id"] else "-"
                  if versus is None else f"{versus['mean']:+.4f} [{versus['ci95'][0]:+.4f}, "
                  f"{versus['ci95'][1]:+.4f}]")
        print(f"{row['target']:<26} {row['best_method']:<10} {str(row['best_source']):<22} "
              f"{row['dev_f1']:>11.4f} ({row['seeds']}) {test:>20} {anchor:>26} "
              f"{'' if gain is None else f'{gain:+.4f}':>13}")


def log_analysis(output_dir: Path, summary: dict, client, parents: dict[str, str]) -> None:
    """Write the sweep's analysis (`sweeps/analysis.py`) and attach it to the targets' parent
    runs. A failure here loses nothing: it is reported, and `sweeps/analysis.py` re-runs it."""
    try:
        analyse_sweep(output_dir)
        root = output_dir / "analysis"
        for search in summary["searches"]:
            client.log_artifacts(parents[search["target"]], str(root / search["name"]),
                                 f"analysis/{search['name']}")
        for parent in parents.values():
            for name in ("analysis.md", "cost.png"):
                client.log_artifact(parent, str(root / name), "analysis")
        print(f"analysis: {root / 'analysis.md'}")
    except Exception as err:  # noqa: BLE001 (the sweep's results are already saved)
        print(f"warning: the sweep analysis failed ({type(err).__name__}: {err}); run "
              f"python sweeps/analysis.py --output-dir {output_dir}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="sweep YAML; flags below override its keys")
    p.add_argument("--address", help="Ray cluster address ('auto' = the running cluster); "
                   "default: a local Ray started in-process")
    p.add_argument("--mlflow-uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///OUTPUT_DIR/mlflow.db)")
    p.add_argument("--output-dir", default="runs/sweep", help="sweep folder (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    p.add_argument("--cleanup", action="store_true",
                   help="stop the local Ray processes a killed sweep left running in --output-dir, "
                   "then exit (a new or resumed sweep there does this itself)")
    p.add_argument("--targets", nargs="+")
    p.add_argument("--sources", nargs="+")
    p.add_argument("--methods", nargs="+")
    p.add_argument("--grid-pairs", action="store_true", default=None,
                   help="one search per (source, target) pair instead of searching the source")
    p.add_argument("--trials-per-search", type=int)
    p.add_argument("--max-concurrent", type=int)
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--seeds-per-config", type=int,
                   help="re-run each search's best configuration with this many seeds in all")
    p.add_argument("--reuse-actors", type=lambda v: v.lower() in ("1", "true", "yes"),
                   metavar="BOOL", help="reuse warm worker processes between trials (default: true)")
    p.add_argument("--checkpoint-interval-s", type=float,
                   help="seconds between a trial's checkpoints (0: after every evaluation)")
    p.add_argument("--data-root")
    p.add_argument("--name")
    return p


def cleanup(output_dir: Path, dry_run: bool = False) -> int:
    """--cleanup: stop what a killed sweep's local Ray left running, unless a sweep runs there
    (with --dry-run, only name them)."""
    if not output_dir.exists():
        print(f"nothing to clean up: {output_dir} does not exist")
        return 0
    if not output_dir.is_dir():
        raise ConfigError(f"--cleanup: {output_dir} is not a folder")
    lock = lock_output_dir(output_dir)
    stopped = stop_leftover_ray(output_dir, dry_run)
    lock.close()
    print(f"{'would stop' if dry_run else 'stopped'} {len(stopped)} leftover Ray process(es) of "
          f"{output_dir}" + (f": pids {', '.join(map(str, stopped))}" if stopped else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in (
        "config", "address", "mlflow_uri", "output_dir", "dry_run", "resume", "cleanup")}
    started = time.time()
    if args.cleanup:
        try:
            return cleanup(Path(args.output_dir).resolve(), args.dry_run)
        except MetaXLError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    signals = Signals()
    handlers = {sig: signal.signal(sig, signals) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run_sweep(args, overrides, started, signals)
    except Interrupted as signame:
        print(f"interrupted ({signame}): continue with {resume_command(argv)}", file=sys.stderr)
        return 130
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def run_sweep(args, overrides: dict, started: float, signals: Signals) -> int:
    """The sweep of `main`; SIGINT/SIGTERM (`signals`) stop its trials, end its running MLflow
    runs KILLED and raise `Interrupted`."""
    client = sweep_id = None
    try:
        sweep = SweepConfig.load(args.config, overrides)
        ranking = sweep_ranking(sweep) if sweep.source_rank else None
        searches = sweep.searches(ranking and {t: [row["source"] for row in r["rows"]]
                                               for t, r in ranking.items()})
        if args.dry_run:
            print_plan(sweep, searches, None, ranking)
            return 0
        output_dir = Path(args.output_dir).resolve()
        summary_path = output_dir / SUMMARY
        check_output_dir(output_dir, args.resume)
        n_layers = check_inputs(sweep, searches)
        lock = lock_output_dir(output_dir)  # noqa: F841 (held until this process ends)
        check_output_dir(output_dir, args.resume)  # again, now that no other sweep can start there
        uri = args.mlflow_uri or default_tracking_uri(str(output_dir))
        client, experiment_id = open_experiment(uri, sweep.name)
        print_plan(sweep, searches, n_layers, ranking)
        if args.address is None:
            stop_leftover_ray(output_dir)
            private_ray_token()
        # Ray's processes ignore SIGINT (inherited): a Ctrl-C reaches the whole process group,
        # and this driver, not each of them, stops the sweep in order
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        ray.init(address=args.address, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": uri}} if args.address else None)
        for sig in (signal.SIGINT, signal.SIGTERM):  # ray.init made SIGTERM a plain exit
            signal.signal(sig, signals)
        signals.check()
        if args.address is None:
            record_local_ray(output_dir)
        check_resources(sweep, args.address)
        sweep_id = attempt_id(output_dir, sweep.name)
        parents = {t: target_run(client, experiment_id, sweep_id, t) for t in sweep.targets}
        # Search drivers stay on this node: losing a worker node must not lose a search.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        futures = [run_search.options(scheduling_strategy=here).remote(
                       sweep, s, i, n_layers, str(output_dir), uri, experiment_id,
                       parents[s["target"]], sweep_id, args.resume)
                   for i, s in enumerate(searches)]
        signals.deferred, pending = True, futures
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            signals.check()
        signals.deferred = False
        outcomes = ray.get(futures)
        ray.shutdown()  # flushes the searches' output before the summary
        (output_dir / RAY_PROCESSES).unlink(missing_ok=True)
    except MetaXLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as signame:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        ray.shutdown()  # stops the searches and their trials
        if client is not None and sweep_id is not None:
            ended = end_interrupted(client, experiment_id, sweep_id,
                                    f"the sweep was interrupted ({signame}); --resume continues it")
            print(f"{ended} running MLflow run(s) ended KILLED", file=sys.stderr)
        raise
    rows = summarise(sweep, outcomes)
    for row in rows:
        if row["best_method"] is not None:
            client.log_dict(parents[row["target"]], row, "best.json")
            client.log_metric(parents[row["target"]], "best/dev_f1", row["dev_f1"])
            client.log_metric(parents[row["target"]], "best/test_f1", row["test_f1_mean"])
            client.set_tag(parents[row["target"]], "best_trial_id", row["trial_id"])
        client.set_terminated(parents[row["target"]])
    print_summary(rows)
    errors = [e for o in outcomes for e in o["mlflow_errors"]]
    failed = [t for o in outcomes for t in o["trials"] + o["confirmations"] if t["error"]]
    summary = {"sweep": sweep.name, "sweep_id": sweep_id, "mlflow_uri": uri,
               "wall_time_s": round(time.time() - started, 1),
               "targets": rows, "failed_trials": failed, "mlflow_errors": errors,
               "searches": [{"name": o["name"], "target": o["search"]["target"],
                             "method": o["search"]["method"], "anchor": o["anchor"],
                             "trials": o["trials"], "confirmations": o["confirmations"],
                             "pick": o["pick"]} for o in outcomes]}
    write_atomic(summary_path, json.dumps(summary, indent=2, default=str))
    log_analysis(output_dir, summary, client, parents)
    trials = [t for o in outcomes for t in o["trials"]]
    stopped = sum(1 for t in trials if not t["error"] and "dev_f1" not in t)
    confirmed = sum(len(o["confirmations"]) for o in outcomes)
    print(f"\n{len(trials)} trials: {len(trials) - stopped - len(failed)} ran their whole budget, "
          f"{stopped} stopped early by ASHA, {len(failed)} failed; {confirmed} confirmation runs. "
          f"{summary['wall_time_s']:.0f} s")
    print(f"summary: {summary_path}\nMLflow: {uri}")
    if errors:
        print(f"error: MLflow logging failed and was not recovered: {errors}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} trial(s) failed; their errors are in {summary_path} and in "
              "MLflow (status FAILED, tag 'error')", file=sys.stderr)
    return 1 if errors or failed else 0


if __name__ == "__main__":
    sys.exit(main())
