"""Injected faults: non-finite losses, failing trials, an unreachable MLflow, logging outages,
impossible resources, and a worker node lost mid-sweep on a real two-node Ray cluster."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from metaxl_core.errors import TrainingError
from metaxl_core.meta import metaxl_step, plain_step
from sweeps.mlflow_store import open_experiment
from sweeps.tracking import MLflowTracker
from tests.conftest import PROJECT_ROOT
from tests.test_meta import batch, make_model

SAMPLE = PROJECT_ROOT / "metaxl_core" / "sample_data"
RAY = str(Path(sys.executable).with_name("ray"))

SMALL_SWEEP = """
name: {name}
targets: [ner:masakhaner2:yor]
sources: [ner:conll2003:en, ner:masakhaner2:hau]
methods: [joint]
grid_pairs: {grid}
trials_per_search: {trials}
seeds_per_config: 1
max_concurrent: {concurrent}
max_failures: {retries}
space: {{lr: [1.0e-4, 3.0e-3]}}
trial: {{encoder: tiny-bert, epochs: {epochs}, source_train_size: 40, target_train_size: 30,
         target_dev_size: 30, max_seq_length: 48}}
"""


def write_sweep(tmp_path, name="faults", grid="false", trials=2, retries=0, epochs=2,
                concurrent=1) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(SMALL_SWEEP.format(name=name, grid=grid, trials=trials, retries=retries,
                                       epochs=epochs, concurrent=concurrent), encoding="utf-8")
    return str(path)


def sweep(args, timeout=600, **kwargs):
    return subprocess.run([sys.executable, "sweeps/pairs.py", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def runs(db: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=1000)


# ---------------------------------------------------------------------------- in-process
@pytest.mark.parametrize("method", ["joint", "metaxl"])
def test_non_finite_loss_stops_the_step_with_a_clear_reason(method):
    model = make_model("bert", rtn_layer=1)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    theta_opt = torch.optim.AdamW(model.theta().values(), lr=1e-3)
    with pytest.raises(TrainingError, match="non-finite train loss"):
        if method == "joint":
            plain_step(model, theta_opt, [batch(gen, 2, 5)], max_grad_norm=1.0)
        else:
            metaxl_step(model, theta_opt, torch.optim.Adam(model.phi().values()),
                        batch(gen, 2, 5), batch(gen, 2, 5), batch(gen, 2, 5), virtual_lr=1e-3,
                        mode="exact", max_grad_norm=1.0)
    for name, param in model.named_parameters():  # nothing was updated
        torch.testing.assert_close(param, before[name], rtol=0, atol=0, equal_nan=True)


def test_tracker_keeps_failed_logging_calls_and_reports_what_never_arrived(tmp_path,
                                                                         new_mlflow_store):
    uri = new_mlflow_store(tmp_path / "mlflow.db")
    client, experiment_id = open_experiment(uri, "outage")
    parent = client.create_run(experiment_id).info.run_id
    fixed = {"source": "ner:conll2003:en", "target": "ner:masakhaner2:yor", "method": "joint",
             "epochs": 2, "source_train_size": 10, "batch_size": 10}  # 2 updates in all
    tracker = MLflowTracker(uri, experiment_id, parent, {"method": "joint", "target_lang": "yor"},
                            fixed, error_file=str(tmp_path / "errors.json"))
    trial = SimpleNamespace(trial_id="t1", config={"lr": 0.01}, error_file=None)
    real_log_batch = tracker.client.log_batch
    down = {"on": True}

    def flaky_log_batch(*args, **kwargs):
        if down["on"]:
            raise ConnectionError("tracking server unreachable")
        return real_log_batch(*args, **kwargs)

    tracker.client.log_batch = flaky_log_batch  # the server goes down mid-sweep
    tracker.on_trial_start(0, [], trial)
    tracker.on_trial_result(0, [], trial, {"epoch": 1, "step": 1, "dev/f1": 0.5, "test/f1": 0.4})
    assert tracker.pending and "unreachable" in tracker.errors[0]
    down["on"] = False  # and comes back: the buffered calls go through in order
    tracker.on_trial_result(0, [], trial, {"epoch": 2, "step": 2, "dev/f1": 0.6, "test/f1": 0.45})
    tracker.on_trial_complete(0, [], trial)
    assert not tracker.pending
    run = client.search_runs([experiment_id], "tags.trial_id = 't1'")[0]
    assert run.info.status == "FINISHED" and run.data.metrics["best/dev_f1"] == 0.6
    assert [m.value for m in client.get_metric_history(run.info.run_id, "dev/f1")] == [0.5, 0.6]

    down["on"] = True  # down for good: the end of the experiment reports it
    tracker.on_trial_result(0, [], trial, {"epoch": 3, "step": 3, "dev/f1": 0.7, "test/f1": 0.5})
    tracker.flush = lambda attempts=1: MLflowTracker.flush(tracker, attempts=1)
    tracker.on_experiment_end([])
    assert "unreachable" in json.loads((tmp_path / "errors.json").read_text())[0]


# ---------------------------------------------------------------------------- driver
def test_unreachable_mlflow_fails_before_any_trial(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.time()
    proc = sweep(["--config", write_sweep(tmp_path), "--output-dir", str(tmp_path / "out"),
                  "--mlflow-uri", f"http://127.0.0.1:{port}"], timeout=300)
    assert proc.returncode == 2
    assert f"http://127.0.0.1:{port}" in proc.stderr and "not reachable" in proc.stderr
    assert not (tmp_path / "out" / "tune").exists(), "no trial may start"
    assert time.time() - started < 120


def test_resources_no_node_can_satisfy_fail_with_the_plan(tmp_path):
    proc = sweep(["--config", write_sweep(tmp_path), "--output-dir", str(tmp_path / "out"),
                  "--cpus-per-trial", "512"], timeout=300)
    assert proc.returncode == 2
    assert "1 searches x 2 trials" in proc.stdout, "the plan is printed first"
    assert "no node can run a trial needing" in proc.stderr and "'CPU': 512.0" in proc.stderr


def test_unknown_language_fails_before_launching(tmp_path):
    proc = sweep(["--config", write_sweep(tmp_path), "--output-dir", str(tmp_path / "out"),
                  "--targets", "ner:masakhaner2:xyz"], timeout=300)
    assert proc.returncode == 2 and "xyz" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_failing_trials_are_failed_in_mlflow_and_the_sweep_goes_on(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(SAMPLE, root)
    hau = root / "ner" / "masakhaner2" / "hau" / "train.txt"
    full = hau.read_text(encoding="utf-8")
    small = "\n\n".join(full.split("\n\n")[:10]) + "\n"  # too small for source_train_size 40
    args = [sys.executable, "sweeps/pairs.py", "--config", write_sweep(tmp_path, grid="true"),
            "--data-root", str(root), "--output-dir", str(tmp_path / "out")]
    hau.write_text(small, encoding="utf-8")
    proc = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "source_train_size=40" in proc.stderr, "found by the pre-flight"
    assert not (tmp_path / "out" / "tune").exists()

    hau.write_text(full, encoding="utf-8")  # it passes the pre-flight, then breaks before the
    driver = subprocess.Popen(args, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,  # trials read it
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in driver.stdout:  # the plan is printed after the pre-flight, before Ray starts
        if line.startswith("Sweep 'faults'"):
            hau.write_text(small, encoding="utf-8")
            break
    stdout, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 1, stdout[-2000:] + stderr[-2000:]
    assert "2 trial(s) failed" in stderr
    trials = runs(tmp_path / "out" / "mlflow.db", "faults")
    failed = [r for r in trials if r.info.status == "FAILED"]
    assert len(trials) == 4 and len(failed) == 2
    for run in failed:
        assert run.data.tags["source_lang"] == "hau"
        assert "source_train_size=40" in run.data.tags["error_summary"]
    assert all(r.info.status in ("FINISHED", "KILLED") for r in trials if r not in failed)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["failed_trials"]) == 2 and summary["targets"][0]["best_method"] == "joint"
    assert all("source_train_size=40" in t["error"] for t in summary["failed_trials"])
    # a data error is not retried: Tune saw no trial crash (it writes error.txt on each one)
    assert not list((tmp_path / "out" / "tune").rglob("error.txt"))


def _start_node(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _wait_for_nodes(address: str, count: int, env: dict, timeout: float = 180) -> None:
    """Block until the cluster has `count` live nodes (a loaded machine registers slowly)."""
    probe = (f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
             "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.time() + timeout
    while time.time() < deadline:
        proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                              text=True, timeout=120)
        if proc.returncode == 0 and proc.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    pytest.fail(f"the Ray cluster at {address} did not reach {count} live nodes")


def test_two_node_cluster_spreads_trials_and_survives_losing_a_worker(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # token auth, as on a real cluster
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    nodes = [_start_node(["--head", "--port", str(port), "--num-cpus", "1", "--num-gpus", "0",
                          "--include-dashboard", "false", "--temp-dir", temp], env)]
    try:
        time.sleep(8)
        nodes.append(_start_node(["--address", f"127.0.0.1:{port}", "--num-cpus", "1"], env))
        _wait_for_nodes(f"127.0.0.1:{port}", 2, env)
        out = tmp_path / "out"
        driver = subprocess.Popen(
            [sys.executable, "sweeps/pairs.py", "--config",
             write_sweep(tmp_path, name="cluster", trials=4, retries=3, epochs=3, concurrent=2),
             "--address", f"127.0.0.1:{port}", "--output-dir", str(out),
             "--reuse-actors", "false"],  # a fresh process per trial: tiny trials spread out
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}"})
        deadline = time.time() + 300
        while time.time() < deadline:  # lose the worker once both nodes have run trials
            try:
                nodes_used = {r.data.tags.get("node_id") for r in runs(out / "mlflow.db", "cluster")}
            except Exception:
                nodes_used = set()
            if len(nodes_used - {None}) >= 2:
                break
            time.sleep(1)
        if len(nodes_used - {None}) < 2:
            driver.kill()
            pytest.fail("trials must land on both nodes; driver output:\n"
                        + driver.communicate()[0][-3000:])
        os.killpg(nodes[1].pid, signal.SIGTERM)  # the worker node goes away mid-sweep
        output, _ = driver.communicate(timeout=600)
        assert driver.returncode == 0, output[-3000:]
        trials = runs(out / "mlflow.db", "cluster")
        assert len(trials) == 4 and all(r.info.status in ("FINISHED", "KILLED") for r in trials)
    finally:
        for node in reversed(nodes):
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
                node.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


# ---------------------------------------------------------------------------- sweep folders, stores
def test_an_interrupted_sweep_folder_is_not_reused_without_resume(tmp_path, capsys):
    from sweeps import pairs
    (tmp_path / "out" / "tune").mkdir(parents=True)  # an interrupted attempt: no summary.json
    assert pairs.main(["--config", write_sweep(tmp_path), "--output-dir", str(tmp_path / "out")]) == 2
    assert "already holds a sweep (finished or interrupted); pass --resume" in capsys.readouterr().err


def test_resume_refuses_a_folder_of_another_user(tmp_path, monkeypatch):
    from metaxl_core.errors import ConfigError
    from sweeps import pairs
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sweep_id.txt").write_text("an-attempt", encoding="utf-8")
    monkeypatch.setattr(pairs.os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    with pytest.raises(ConfigError, match="not owned by the current user"):
        pairs.check_output_dir(tmp_path / "out", resume=True)


def test_each_attempt_has_its_own_parent_runs_and_export_reads_the_latest(tmp_path,
                                                                          new_mlflow_store):
    from sweeps import export, pairs
    from sweeps.mlflow_store import target_run
    uri = new_mlflow_store(tmp_path / "shared.db")  # one tracking store, two sweeps of one name
    client, experiment_id = open_experiment(uri, "same-name")
    ids = [pairs.attempt_id(tmp_path / folder, "same-name") for folder in ("a", "b")]
    assert ids[0] != ids[1] and pairs.attempt_id(tmp_path / "a", "same-name") == ids[0]
    for sweep_id, dev_f1 in zip(ids, (0.9, 0.5)):  # the first attempt was abandoned
        parent = target_run(client, experiment_id, sweep_id, "ner:masakhaner2:yor")
        assert target_run(client, experiment_id, sweep_id, "ner:masakhaner2:yor") == parent
        run = client.create_run(experiment_id, tags={
            "role": "trial", "sweep_id": sweep_id, "target": "ner:masakhaner2:yor",
            "mlflow.parentRunId": parent}).info.run_id
        client.log_batch(run, params=[Param("method", "joint"), Param("source", "ner:conll2003:en")])
        for key, value in {"best/dev_f1": dev_f1, "best/test_f1": 0.1, "best/epoch": 1}.items():
            client.log_metric(run, key, value)
        client.set_terminated(run)
    assert len(client.search_runs([experiment_id], "tags.role = 'target'")) == 2
    (record,) = export.best_runs(uri, "same-name")["ner:masakhaner2:yor"]
    assert record["sweep_id"] == ids[1] and record["metrics"]["dev_f1"] == 0.5


def test_experiment_creation_is_idempotent_under_a_race(tmp_path, monkeypatch, new_mlflow_store):
    uri = new_mlflow_store(tmp_path / "mlflow.db")
    _, experiment_id = open_experiment(uri, "raced")  # the other sweep created it first
    real = MlflowClient.get_experiment_by_name
    calls = []

    def not_yet(self, name):  # ... just after this sweep looked
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_yet)
    assert open_experiment(uri, "raced")[1] == experiment_id


def test_processes_started_together_on_a_new_sqlite_store_all_open_it(tmp_path):
    """Without the lock, all but one die creating the tables ("duplicate column", alembic)."""
    start = time.time() + 8  # every process imports MLflow first, then they open at once
    script = ("import sys, time; from sweeps.mlflow_store import open_experiment\n"
              "while time.time() < float(sys.argv[2]): pass\n"
              "print(open_experiment(sys.argv[1], 'together')[1])")
    procs = [subprocess.Popen([sys.executable, "-c", script, f"sqlite:///{tmp_path / 'mlflow.db'}",
                               str(start)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], [err[-500:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1


def test_bad_tracking_uris_fail_cleanly_and_create_nothing(tmp_path):
    from metaxl_core.errors import ConfigError
    from sweeps import export
    with pytest.raises(ConfigError, match="unknown scheme 'foo'"):
        open_experiment("foo://host/x", "any")
    missing = tmp_path / "nope" / "mlflow.db"
    assert export.main(["--mlflow-uri", f"sqlite:///{missing}", "--out",
                        str(tmp_path / "exports")]) == 2
    assert not (tmp_path / "nope").exists() and not (tmp_path / "exports").exists()


def test_write_atomic_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    """A crash between writing and renaming leaves the previous complete file and no temp file;
    a finished write is readable by others (not mkstemp's 0600)."""
    from metaxl_core import atomic

    path = tmp_path / "results.json"
    atomic.write_atomic(path, '{"f1": 0.5}')
    assert path.read_text() == '{"f1": 0.5}' and path.stat().st_mode & 0o777 == 0o644

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_atomic(path, '{"f1": 0.9, "half": ')
    assert path.read_text() == '{"f1": 0.5}'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


# ------------------------------------------------------------------ one sweep per folder, interrupts
def test_a_second_sweep_on_a_folder_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    from sweeps import pairs
    out = tmp_path / "out"
    held = pairs.lock_output_dir(out)  # a sweep holds the folder (a lock is per open file)
    try:
        assert pairs.main(["--config", write_sweep(tmp_path), "--output-dir", str(out)]) == 2
        assert f"in use by another sweep process (pid {os.getpid()})" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == ["sweep.lock"], "nothing started"
        assert pairs.main(["--cleanup", "--output-dir", str(out)]) == 2, "nor a cleanup"
    finally:
        held.close()
    holder = subprocess.Popen(  # the OS frees the lock of a process however it ends
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from sweeps.pairs import lock_output_dir; h = lock_output_dir(Path(sys.argv[1])); "
         "print('held', flush=True); time.sleep(300)", str(out)],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match=f"pid {holder.pid}"):
        pairs.lock_output_dir(out)
    holder.kill()
    holder.wait()
    pairs.lock_output_dir(out).close()


def test_resume_of_a_folder_without_a_sweep_is_an_error(tmp_path, capsys):
    from sweeps import pairs
    assert pairs.main(["--config", write_sweep(tmp_path), "--output-dir",
                       str(tmp_path / "none"), "--resume"]) == 2
    assert "holds no sweep to resume" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_cleanup_stops_what_a_killed_sweep_left_and_nothing_else(tmp_path, capsys):
    from sweeps import pairs
    from sweeps.settings import RAY_PROCESSES
    out = tmp_path / "out"
    out.mkdir()
    leftover, other = (subprocess.Popen(["sleep", "300"]) for _ in range(2))
    try:
        table = pairs._processes()
        (out / RAY_PROCESSES).write_text(json.dumps(  # other's pid was since reused: never killed
            [[leftover.pid, table[leftover.pid][1]], [other.pid, "1"]]), encoding="utf-8")
        assert pairs.main(["--cleanup", "--output-dir", str(out), "--dry-run"]) == 0
        assert f"would stop 1 leftover Ray process(es) of {out}: pids {leftover.pid}" in \
            capsys.readouterr().out and leftover.poll() is None
        assert pairs.main(["--cleanup", "--output-dir", str(out)]) == 0
        assert f"stopped 1 leftover Ray process(es) of {out}: pids {leftover.pid}" in \
            capsys.readouterr().out
        assert leftover.wait(timeout=10) == -signal.SIGKILL and other.poll() is None
        assert not (out / RAY_PROCESSES).exists()
    finally:
        for proc in (leftover, other):
            proc.kill()
            proc.wait()
    assert pairs.main(["--cleanup", "--output-dir", str(tmp_path / "none")]) == 0
    assert "nothing to clean up" in capsys.readouterr().out
    (tmp_path / "file").write_text("x")
    assert pairs.main(["--cleanup", "--output-dir", str(tmp_path / "file")]) == 2


def test_rays_auth_token_is_private(tmp_path, monkeypatch):
    from sweeps import pairs
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(key, raising=False)
    token = tmp_path / ".ray" / "auth_token"
    pairs.private_ray_token()  # none yet: written 0600 (Ray's own would follow the umask)
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
    secret = token.read_text()
    token.chmod(0o644)  # an existing one others can read: kept, made private
    pairs.private_ray_token()
    assert token.stat().st_mode & 0o777 == 0o600 and token.read_text() == secret


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_sweep_ends_its_runs_killed_says_how_to_resume_and_resumes(tmp_path, how):
    """Ctrl-C (SIGINT to the whole process group) or SIGTERM (to the driver) once a trial runs:
    the trials stop, every running MLflow run ends KILLED with a reason, one line says how to
    resume, no traceback; Ray's token is private; --resume then finishes the sweep."""
    out, home = tmp_path / "out", tmp_path / "home"
    home.mkdir()
    command = [sys.executable, "sweeps/pairs.py", "--config", write_sweep(tmp_path, epochs=3),
               "--output-dir", str(out)]
    env = {**os.environ, "HOME": str(home)}
    env.pop("RAY_AUTH_TOKEN", None)
    driver = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        try:
            if runs(out / "mlflow.db", "faults"):
                break
        except Exception:  # the store is being created
            pass
        time.sleep(0.2)
    assert driver.poll() is None, "the sweep ended before it could be interrupted"
    if how == "ctrl-c":
        os.killpg(driver.pid, signal.SIGINT)
    else:
        driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=300)
    signame = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    assert driver.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted ({signame}): continue with python sweeps/pairs.py --config "
        f"{tmp_path / 'sweep.yaml'} --output-dir {out} --resume")
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert (home / ".ray" / "auth_token").stat().st_mode & 0o777 == 0o600
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("faults").experiment_id
    every = client.search_runs([experiment_id], "")
    assert not [r for r in every if r.info.status == "RUNNING"]
    interrupted = [r for r in every if "killed_reason" in r.data.tags]
    assert {r.data.tags["role"] for r in interrupted} >= {"trial", "target"}
    assert all(f"interrupted ({signame}); --resume" in r.data.tags["killed_reason"]
               for r in interrupted)
    if how == "sigterm":
        return
    proc = subprocess.run(command + ["--resume"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    every = client.search_runs([experiment_id], "")
    assert len([r for r in every if r.data.tags["role"] == "trial"]) == 2
    assert all(r.info.status in ("FINISHED", "KILLED") for r in every)
    assert not [r for r in every if r.info.status == "FINISHED" and "killed_reason" in r.data.tags]
