"""Test-wide settings: offline, quiet, nothing written to $HOME."""

import os
import tempfile
from pathlib import Path

import pytest

# One scratch folder per test session (this module is imported as conftest and tests.conftest).
_SCRATCH = Path(os.environ.get("METAXL_TEST_SCRATCH") or tempfile.mkdtemp(prefix="metaxl-tests-"))
os.environ["METAXL_TEST_SCRATCH"] = str(_SCRATCH)
(_SCRATCH / "home").mkdir(exist_ok=True)
os.environ["HOME"] = str(_SCRATCH / "home")  # Ray writes ~/.ray/auth_token for local clusters
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HOME": str(_SCRATCH / "hf"),
    "METAXL_CACHE": str(_SCRATCH / "metaxl-cache"),
}.items():
    os.environ.setdefault(key, value)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Scripts the tests start (sweeps/pairs.py, its Ray workers) import this checkout, even when the
# environment's editable install points at another one.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(PROJECT_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real data beside the checkout; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (see README: Data)")
    return SHARED_DATA
