"""MLflow helpers that need no Ray: open a tracking store, find or create runs, log a finished
trial's results, log and register a trained model. Used by the Tune callback
(`sweeps/tracking.py`), the grid runner, the export and the report.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import time
import urllib.parse
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from metaxl_core.config import source_label
from metaxl_core.errors import ConfigError
from metaxl_core.names import language_of

# The tracking stores MLflow's client accepts (file: and bare paths: the deprecated file store).
URI_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")
SECRET_PATTERN = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.IGNORECASE)


def default_tracking_uri(output_dir: str) -> str:
    """$MLFLOW_TRACKING_URI, else a sqlite store in the sweep's output directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{os.path.abspath(os.path.join(output_dir, 'mlflow.db'))}"


def open_experiment(uri: str, name: str, create: bool = True) -> tuple[MlflowClient, str]:
    """Connect and get (or create, idempotently: a concurrent sweep may create it first) the
    sweep's experiment; ConfigError naming the URI if the tracking store is unusable (before
    any trial is launched). With create=False nothing is created, not even a sqlite file. An
    experiment created in a local sqlite store keeps its artifacts beside the database file
    (`artifacts/`), not in the current folder's ./mlruns."""
    scheme = urllib.parse.urlsplit(uri).scheme.split("+")[0]  # postgresql+psycopg2: postgresql
    if scheme not in URI_SCHEMES:
        raise ConfigError(f"MLflow tracking URI {uri!r}: unknown scheme {scheme!r}; use one of "
                          f"{', '.join(URI_SCHEMES)}")
    artifact_location = path = None
    if scheme == "sqlite" and uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if not create and not os.path.isfile(path):
            raise ConfigError(f"MLflow tracking URI {uri!r}: no database file {path}")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        artifact_location = Path(path).resolve().parent.joinpath("artifacts").as_uri()
    client = _client(uri, path if create else None)
    previous = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # fail fast at start, retry later
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None and not create:
            raise ConfigError(f"no experiment {name!r} at {uri}")
        if experiment is None:
            try:
                return client, client.create_experiment(name, artifact_location=artifact_location)
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = client.get_experiment_by_name(name)  # another sweep created it
        return client, experiment.experiment_id
    except ConfigError:
        raise
    except Exception as err:  # any transport or store error means: unusable
        raise ConfigError(f"MLflow tracking URI {uri!r} is not reachable ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200]}); start the server or pass "
                          "--mlflow-uri") from None
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = previous


def _client(uri: str, db_path: str | None) -> MlflowClient:
    """MlflowClient(uri). On a sqlite store, under a lock file beside the database: processes
    started together on a new store would race to create its tables (and all but one fail)."""
    if db_path is None:
        return MlflowClient(tracking_uri=uri)
    with open(f"{db_path}.lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return MlflowClient(tracking_uri=uri)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def find_run(client: MlflowClient, experiment_id: str, **tags) -> str | None:
    """The id of the run carrying all `tags`, or None."""
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], query, max_results=1,
                              order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def target_run(client: MlflowClient, experiment_id: str, sweep_id: str, target: str) -> str:
    """Get or create the parent run of one target language."""
    tags = {"role": "target", "sweep_id": sweep_id, "target": target}
    run_id = find_run(client, experiment_id, **tags)
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=f"target {target}",
                                   tags={**tags, "target_lang": language_of(target)}).info.run_id
    else:  # a resumed attempt
        resume_run(client, run_id)
    return run_id


def resume_run(client: MlflowClient, run_id: str) -> None:
    """Mark a run of a resumed sweep RUNNING again, without the reason an interrupt ended it."""
    client.update_run(run_id, status="RUNNING")
    if "killed_reason" in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, "killed_reason")


def safe_params(config: dict) -> dict:
    """Config values as MLflow params, never anything that looks like a credential."""
    return {k: str(v) for k, v in sorted(config.items()) if not SECRET_PATTERN.search(k)}


def latest_attempt(client, experiment_id: str) -> str | None:
    """The sweep id of the experiment's most recently started sweep attempt, or None."""
    parents = client.search_runs([experiment_id], "tags.role = 'target'", max_results=1,
                                 order_by=["attributes.start_time DESC"])
    return parents[0].data.tags["sweep_id"] if parents else None


def log_results(client: MlflowClient, experiment_id: str, results: dict, tags: dict,
                run_name: str | None = None) -> str:
    """Log a finished `run_trial` results dict as one FINISHED MLflow run with the sweep
    conventions: the tags given (role, target, target_lang, source_lang, method, task, encoder,
    ...), the config as params, `dev/*`, `test/*` and `train/*` per epoch (step = epoch), the
    summary `best/dev_f1`, `best/test_f1`, `best/epoch`, every `final/<split>/<metric>` at the
    best dev epoch, `wall_time_s`, and the whole results dict as the artifact results.json.
    Returns the run id."""
    config = results["config"]
    tags = {"task": config["task"], "encoder": config["encoder"],
            "target": config["target"], "target_lang": language_of(config["target"]),
            "source_lang": source_label(config.get("source")),
            "method": config["method"], **{k: str(v) for k, v in tags.items()}}
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    stamp = int(time.time() * 1000)
    metrics = []
    for row in results["history"]:
        epoch = int(row["epoch"])
        metrics += [Metric(k, float(v), stamp, epoch) for k, v in row.items()
                    if "/" in k and isinstance(v, (int, float)) and v == v]
    final = results["final"]
    summary = {"best/dev_f1": final.get("dev/f1", 0.0), "best/test_f1": final.get("test/f1", 0.0),
               "best/epoch": results["best_epoch"], "wall_time_s": results.get("wall_time_s", 0.0),
               **{f"final/{k}": v for k, v in final.items() if isinstance(v, (int, float))}}
    metrics += [Metric(k, float(v), stamp, 0) for k, v in summary.items()]
    params = [Param(k, v[:6000]) for k, v in safe_params(config).items()]
    # MLflow takes at most 100 params and 1000 entries per batch
    for i in range(0, max(len(params), 1), 100):
        chunk = metrics[:900] if i == 0 else []
        client.log_batch(run_id, params=params[i:i + 100], metrics=chunk)
    for i in range(900, len(metrics), 900):
        client.log_batch(run_id, metrics=metrics[i:i + 900])
    client.log_text(run_id, json.dumps(results, indent=2, sort_keys=True, default=str),
                    "results.json")
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def logged_evaluations(client: MlflowClient, run_id: str) -> list[dict]:
    """Every dev evaluation of a run (its dev curve by update), from the results.json artifact
    `log_results` wrote; [] for a run without one (a sweep trial, an old restored run)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            saved = Path(client.download_artifacts(run_id, "results.json", tmp))
            return json.loads(saved.read_text(encoding="utf-8")).get("evaluations", [])
        except (MlflowException, OSError, ValueError):
            return []


# what the pyfunc model (sweeps/pyfunc_model.py) imports besides mlflow
MODEL_REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors")


def model_requirements() -> list[str]:
    """MODEL_REQUIREMENTS pinned to the installed versions (without a local tag such as +cpu)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in MODEL_REQUIREMENTS]


def register_model(uri: str, run_id: str, folder: str, name: str, tags: dict) -> str:
    """Log the saved model `folder` to run `run_id` as an MLflow pyfunc model (its code:
    `sweeps/pyfunc_model.py`, which needs no code of this project, so a fresh environment with
    `model_requirements()` serves it), register it as `name` and tag the new version; returns
    the version."""
    from metaxl_core.predict import tracking_uri  # torch: not for the Ray workers' imports

    with tracking_uri(uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"model": str(folder)}, registered_model_name=name, await_registration_for=0,
            pip_requirements=model_requirements())
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri=uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    return version
