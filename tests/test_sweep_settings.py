"""Sweep files and flags: the plan they expand to, and a clear error for each bad input."""

import subprocess
import sys

import pytest

from metaxl_core.config import TrialConfig
from metaxl_core.errors import ConfigError
from sweeps.settings import SweepConfig
from tests.conftest import PROJECT_ROOT, SHARED_DATA


def write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_embedded_default_plan():
    sweep = SweepConfig.load()
    searches = sweep.searches()
    assert len(sweep.targets) >= 2 and len(sweep.sources) >= 2
    assert {s["method"] for s in searches} == {"metaxl", "joint"}
    assert len(searches) == len(sweep.targets) * len(sweep.methods)
    joint = next(s for s in searches if s["method"] == "joint")
    assert joint["dimensions"] == ["lr"], "baselines search only the dimensions they have"


def test_grid_pairs_makes_one_search_per_pair_and_never_pairs_a_target_with_itself(tmp_path):
    sweep = SweepConfig.load(write(tmp_path, """
targets: [ner:masakhaner2:yor, ner:masakhaner2:hau]
sources: [ner:conll2003:en, ner:masakhaner2:hau]
methods: [metaxl]
grid_pairs: true
"""))
    pairs = [(s["target"], s["sources"][0]) for s in sweep.searches()]
    assert pairs == [("ner:masakhaner2:yor", "ner:conll2003:en"),
                     ("ner:masakhaner2:yor", "ner:masakhaner2:hau"),
                     ("ner:masakhaner2:hau", "ner:conll2003:en")]


def test_source_sets_are_candidates_unless_they_include_the_target(tmp_path):
    sweep = SweepConfig.load(write(tmp_path, """
targets: [ner:masakhaner2:yor, ner:masakhaner2:hau]
sources: [ner:conll2003:en, "ner:conll2003:en,ner:masakhaner2:hau"]
methods: [metaxl]
space: {source_sampling: [uniform, learned], rtn_per_source: [false, true], rtn_mixing: [softmax]}
"""))
    by_target = {s["target"]: s for s in sweep.searches()}
    assert by_target["ner:masakhaner2:yor"]["sources"] == sweep.sources
    assert by_target["ner:masakhaner2:hau"]["sources"] == ["ner:conll2003:en"]
    from sweeps.pairs import search_space
    space = search_space(sweep, by_target["ner:masakhaner2:yor"], n_layers=2)
    assert space["source"].categories == sweep.sources
    assert space["rtn_per_source"].categories == [False, True]
    assert space["source_sampling"].categories == ["uniform", "learned"]


def test_flags_override_the_file(tmp_path):
    sweep = SweepConfig.load(write(tmp_path, "trials_per_search: 9\n"), {"trials_per_search": 3})
    assert sweep.trials_per_search == 3


@pytest.mark.parametrize("text,message", [
    ("trials_per_serch: 3\n", "unknown key(s) ['trials_per_serch']"),
    ("trials_per_search: many\n", "trials_per_search: expected int, got 'many'"),
    ("targets: ner:masakhaner2:yor\n", "targets: expected list"),
    ("space: {rtn_width: []}\n", "space.rtn_width: must be a non-empty list"),
    ("space: {lr: [1.0e-3, 1.0e-5]}\n", "space.lr: must be [low, high] with 0 < low < high"),
    ("space: {dropout: [0.1]}\n", "unknown dimension(s) ['dropout']"),
    ("targets: [ner:masakhaner2:hau]\nsources: [ner:masakhaner2:hau]\n",
     "the only source for target 'ner:masakhaner2:hau' is the target itself"),
    ("methods: [metaxl, maml]\n", "unknown method 'maml'"),
    ("targets: [ner-masakhaner2-yor]\n", "must look like 'ner:dataset:language'"),
    ("trial: {epochs: 0}\n", "epochs: must be > 0"),
    ("trial: {lr: 1.0e-4}\n", "trial: fixes fields the sweep sets itself"),
    ("cpus_per_trial: 0\n", "cpus_per_trial must be > 0"),
    ("checkpoint_interval_s: -1\n", "checkpoint_interval_s: must be >= 0, got -1"),
    ("space: {source_sampling: [often]}\n", "space.source_sampling: each choice must be one of"),
    ("space: {rtn_per_source: [yes, 'no']}\n", "space.rtn_per_source: each choice must be one of"),
    ("sources: ['ner:conll2003:en,ner-x-y']\n", "'ner-x-y' must look like 'ner:dataset:language'"),
    ("- a\n- b\n", "expected a mapping at the top level"),
])
def test_bad_sweep_files_name_the_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        SweepConfig.load(path)
    assert message in str(err.value) and "sweep.yaml" in str(err.value)


def test_bad_sweep_file_exits_nonzero_with_the_message(tmp_path):
    path = write(tmp_path, "space: {rtn_width: []}\n")
    proc = subprocess.run([sys.executable, "sweeps/pairs.py", "--config", path, "--dry-run"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "space.rtn_width: must be a non-empty list" in proc.stderr


def test_dry_run_prints_the_plan_counts():
    proc = subprocess.run([sys.executable, "sweeps/pairs.py", "--dry-run",
                           "--trials-per-search", "5"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "4 searches x 5 trials = 20 trials" in proc.stdout
    assert "metaxl_ner-masakhaner2-yor" in proc.stdout


@pytest.mark.parametrize("field,value,message", [
    ("rtn_width", 0, "rtn_width: must be > 0"),
    ("lr", -1e-5, "lr: must be >= 0"),
    ("rtn_layer", -1, "rtn_layer: must be >= 0"),
    ("method", "maml", "method: must be one of"),
    ("rtn_widht", 3, "unknown field(s) ['rtn_widht']"),
    ("epochs", "ten", "epochs: expected int, got 'ten'"),
    ("source", "ner:masakhaner2:yor", "source: includes the target"),
    ("source", "ner:conll2003:en,ner:masakhaner2:yor", "source: includes the target"),
])
def test_trial_config_names_the_bad_field(field, value, message):
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_dict({field: value})
    assert message in str(err.value)


def test_hand_edited_export_with_invalid_value_fails_before_training(tmp_path):
    path = tmp_path / "yor.yaml"
    path.write_text("target: ner:masakhaner2:yor\nconfig:\n  rtn_width: -4\n  method: metaxl\n",
                    encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "metaxl_core.train", "--config", str(path)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "yor.yaml" in proc.stderr and "rtn_width: must be > 0" in proc.stderr


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "sweeps" / "presets").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_sweep_preset_loads_and_plans(path):
    sweep = SweepConfig.load(str(path))
    assert sweep.searches() and sweep.name == path.stem


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "bench" / "presets").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_benchmark_preset_plans_valid_trials(path, tmp_path):
    sys.path.insert(0, str(PROJECT_ROOT / "bench"))
    import transfer
    preset = transfer.load_preset(path)
    reads_data = any("test_cap" in task for task in preset["tasks"].values())
    if reads_data and not SHARED_DATA.is_dir():
        pytest.skip(f"{path.name} reads the real test splits (test_cap); {SHARED_DATA} is absent")
    assert transfer.plan_runs(preset, data_root=str(SHARED_DATA), out=tmp_path)
