"""Safe defaults: fuzzed config loaders raise only the project's error type; no unsafe
deserialisation; nothing that looks like a credential is logged; local services bind to
127.0.0.1."""

import re

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaxl_core.config import TrialConfig
from metaxl_core.errors import MetaXLError
from sweeps.settings import SweepConfig
from sweeps.mlflow_store import safe_params
from tests.conftest import PROJECT_ROOT

SOURCES = [p for folder in ("metaxl_core", "sweeps", "bench") for p in
           (PROJECT_ROOT / folder).rglob("*.py")]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
trial_fields = st.sampled_from(sorted(TrialConfig.__dataclass_fields__) + ["bogus"])
sweep_keys = st.sampled_from(sorted(SweepConfig.__dataclass_fields__) + ["bogus"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(trial_fields, values, max_size=5))
def test_trial_config_loader_never_crashes_unhandled(fields):
    try:
        TrialConfig.from_dict(fields)
    except MetaXLError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.dictionaries(sweep_keys, values, max_size=5))
def test_sweep_file_loader_never_crashes_unhandled(tmp_path, fields):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(fields), encoding="utf-8")
    try:
        SweepConfig.load(str(path))
    except MetaXLError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_trial_yaml_of_arbitrary_bytes_fails_cleanly(tmp_path, data):
    path = tmp_path / "trial.yaml"
    path.write_bytes(data)
    try:
        TrialConfig.from_yaml(path)
    except MetaXLError as err:
        assert "trial.yaml" in str(err)


def test_no_unsafe_deserialisation_in_the_code():
    assert SOURCES
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"yaml\.(load|unsafe_load)\(", text), path
        assert "pickle.load" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, (path, line)


def test_credentials_never_become_mlflow_params():
    params = safe_params({"lr": 0.1, "aws_secret_access_key": "x", "HF_TOKEN": "y",
                          "api_key": "z", "db_password": "w", "encoder": "tiny-bert"})
    assert params == {"encoder": "tiny-bert", "lr": "0.1"}


def test_services_the_project_starts_bind_to_loopback():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    for line in readme.splitlines():
        if re.search(r"\bmlflow (ui|server)\b", line) and "--backend-store-uri" in line:
            assert "--host 127.0.0.1" in line, line
    pairs = (PROJECT_ROOT / "sweeps" / "pairs.py").read_text(encoding="utf-8")
    assert "include_dashboard=False" in pairs
    local = (PROJECT_ROOT / "cluster" / "local.sh").read_text(encoding="utf-8")
    assert "--dashboard-host 127.0.0.1" in local or "--include-dashboard false" in local
    assert "mlflow server --host 127.0.0.1" in local
