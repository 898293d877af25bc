"""Test-wide settings: offline, quiet, nothing written to $HOME."""

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

# One scratch folder per test session (this module is imported as conftest and tests.conftest),
# removed at the end of the session that made it (not one given in METAXL_TEST_SCRATCH).
_SCRATCH_MADE_HERE = not os.environ.get("METAXL_TEST_SCRATCH")
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


def pytest_sessionfinish(session, exitstatus):
    if _SCRATCH_MADE_HERE:
        shutil.rmtree(_SCRATCH, ignore_errors=True)


PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Scripts the tests start (sweeps/pairs.py, its Ray workers) import this checkout, even when the
# environment's editable install points at another one.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(PROJECT_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def new_mlflow_store(tmp_path_factory):
    """path -> the sqlite URI of a new, empty MLflow store there: a copy of one migrated once
    per session (MLflow's migrations cost ~5 s per new store, a copy ~0.1 s)."""
    from mlflow.tracking import MlflowClient
    template = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()  # creates and migrates the tables

    def make(path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"
    return make


@pytest.fixture
def shared_data() -> Path:
    """The real data beside the checkout; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (see docs/data.md)")
    return SHARED_DATA


PEOPLE = ["Ade", "Bola", "Chidi", "Dayo", "Emeka", "Funmi", "Gbenga", "Halima"]
PLACES = ["Lagos", "Kano", "Abuja", "Ibadan", "Enugu", "Jos", "Kaduna", "Warri"]
FILLER = ["the", "went", "to", "market", "and", "saw", "a", "big", "house", "in", "today"]


def synthetic_split(rng: random.Random, n: int, swap: bool = False) -> str:
    """Sentences where people and places are marked by their (closed) word lists; `swap`
    labels them the wrong way round."""
    per, loc = ("B-LOC", "B-PER") if swap else ("B-PER", "B-LOC")
    blocks = []
    for _ in range(n):
        words = [(w, "O") for w in rng.sample(FILLER, 5)]
        words.insert(rng.randrange(len(words)), (rng.choice(PEOPLE), per))
        words.insert(rng.randrange(len(words)), (rng.choice(PLACES), loc))
        blocks.append("\n".join(f"{w} {t}" for w, t in words))
    return "\n\n".join(blocks) + "\n"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    for lang in ("aa", "bb"):
        folder = root / "ner" / "synth" / lang
        folder.mkdir(parents=True)
        for split, n in (("train", 60), ("dev", 20), ("test", 20)):
            (folder / f"{split}.txt").write_text(synthetic_split(rng, n), encoding="utf-8")
    return root
