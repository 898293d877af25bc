"""Sweep files and flags: the plan they expand to, and a clear error for each bad input."""

import subprocess
import sys

import pytest

from metaxl_core.config import TrialConfig
from metaxl_core.errors import ConfigError, MetaXLError
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
    from sweeps.search import search_space
    space = search_space(sweep, by_target["ner:masakhaner2:yor"], n_layers=2)
    assert space["source"].categories == sweep.sources
    assert space["rtn_per_source"].categories == [False, True]
    assert space["source_sampling"].categories == ["uniform", "learned"]


def test_flags_override_the_file(tmp_path):
    sweep = SweepConfig.load(write(tmp_path, "trials_per_search: 9\n"), {"trials_per_search": 3})
    assert sweep.trials_per_search == 3


def test_relative_data_paths_are_made_absolute_for_the_trial_folders(tmp_path, monkeypatch):
    # Ray Tune runs a trial in its own working folder, where '../data' would point elsewhere.
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    path = write(tmp_path, "trial: {data_root: ../data, split_index_file: idx/splits.json}\n")
    trial = SweepConfig.load(path).base_trial("ner:masakhaner2:yor", "joint")
    assert trial.data_root == str(tmp_path / "data")
    assert trial.split_index_file == str(tmp_path / "project" / "idx" / "splits.json")
    flagged = SweepConfig.load(path, {"data_root": "../flag-data"}).base_trial(
        "ner:masakhaner2:yor", "joint")
    assert flagged.data_root == str(tmp_path / "flag-data")
    # a relative $METAXL_DATA_ROOT is read in the driver's folder, not each trial's
    monkeypatch.setenv("METAXL_DATA_ROOT", "../env-data")
    plain = tmp_path / "plain.yaml"
    plain.write_text("trials_per_search: 2\n", encoding="utf-8")
    assert SweepConfig.load(str(plain)).base_trial("ner:masakhaner2:yor", "joint").data_root == \
        str(tmp_path / "env-data")
    assert SweepConfig.load(path).base_trial("ner:masakhaner2:yor", "joint").data_root == \
        str(tmp_path / "data")  # the file's data root wins


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
    ("name: it's\n", "name: must be letters, digits"),
    ("space: {rtn_layers: ['0,a']}\n", "space.rtn_layers: each choice must be a string"),
    ("space: {rtn_layers: ['0,\u00b2']}\n", "space.rtn_layers: each choice must be a string"),
    ("trials_per_search: 3\ntrials_per_search: 4\n", "duplicate key 'trials_per_search'"),
    ("cpus_per_trial: .inf\n", "cpus_per_trial: expected float, got inf"),
    ("checkpoint_interval_s: .nan\n", "checkpoint_interval_s: expected float, got nan"),
    ("space: {lr: [1.0e-5, .inf]}\n", "space.lr: must be [low, high] with 0 < low < high"),
    ("trial: {device: 'cuda:abc'}\n", "device: must be 'auto', 'cpu' or 'cuda[:N]'"),
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
    ("rtn_layers", "0,\u00b2", "rtn_layers: must be comma-separated layer numbers"),
    ("device", "cuda:abc", "device: must be 'auto', 'cpu' or 'cuda[:N]'"),
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


def train(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "metaxl_core.train", *map(str, args)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)


def test_trial_command_line_names_the_bad_input(tmp_path, capsys):
    from metaxl_core.train import main
    trial = tmp_path / "trial.yaml"
    trial.write_text("epochs: 1\n", encoding="utf-8")
    nested = tmp_path / "nested.yaml"
    nested.write_text("config: [lr, 0.1]\n", encoding="utf-8")
    dup = tmp_path / "dup.yaml"
    dup.write_text("lr: 0.1\nepochs: 2\nlr: 0.2\n", encoding="utf-8")
    for args, message in [  # in this process (an exception would fail the test)
            (["--config", tmp_path], f"{tmp_path}: cannot read"),  # a directory
            (["--config", nested], "nested.yaml: config: expected a mapping of fields, got list"),
            (["--config", trial, "--lr", "abc"], "--lr: lr: expected float, got 'abc'"),
            (["--config", dup], "dup.yaml: invalid YAML: duplicate key 'lr'")]:
        assert main(list(map(str, args))) == 2
        out, err = capsys.readouterr()
        assert message in err and "epoch 1/1" not in out, (args, err[-2000:])
    proc = train("--config", trial, "--output-dir", trial)  # and as a command: exit status 2
    assert proc.returncode == 2 and "exists and is not a folder" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "epoch 1/1" not in proc.stdout


def test_rtn_layers_are_checked_against_the_encoder_before_ray_starts(tmp_path, capsys):
    from sweeps.pairs import check_inputs
    sweep = SweepConfig.load(write(tmp_path, "space: {rtn_layer: [3, 5]}\n"))  # tiny-bert: 2
    with pytest.raises(ConfigError, match=r"space.rtn_layer: \[3, 5\] lies above the last layer"):
        check_inputs(sweep, sweep.searches())
    sweep = SweepConfig.load(write(tmp_path, "space: {rtn_layer: [0, 5]}\n"))
    assert check_inputs(sweep, sweep.searches()) == 2
    assert "space.rtn_layer: upper bound 5 lowered to 2" in capsys.readouterr().out
    sweep = SweepConfig.load(write(tmp_path, "methods: [metaxl]\nspace: {lr: [1.0e-4, 1.0e-3]}\n"
                                   "trial: {rtn_layer: 7}\n"))
    with pytest.raises(ConfigError, match=r"rtn_layer: must be in 0..2 for encoder 'tiny-bert'"):
        check_inputs(sweep, sweep.searches())
    sweep = SweepConfig.load(write(tmp_path, "space: {rtn_layer: [0, 2]}\ntrial: {freeze_layers: 1, "
                                   "encoder: tiny-bert, source_train_size: 50}\n"))
    with pytest.raises(ConfigError, match=r"RTN layers from 0 would sit inside the frozen layers"):
        check_inputs(sweep, sweep.searches())


def test_encoder_depth_comes_from_the_config_alone(tmp_path):
    from transformers import BertConfig

    from metaxl_core.encoders import encoder_depth
    BertConfig(num_hidden_layers=5).save_pretrained(tmp_path)  # a config, no weights at all
    assert encoder_depth(str(tmp_path)) == 5 and encoder_depth("tiny-bert") == 2


def test_pre_flight_reads_every_split_trials_read(tmp_path):
    from sweeps.pairs import check_inputs
    root = tmp_path / "data" / "ner"
    for lang in ("yor", "hau"):
        for split in ("train", "dev", "test"):
            path = root / "masakhaner2" / lang / f"{split}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("Ade B-PER\nni O\n\n" * 20, encoding="utf-8")
    (root / "masakhaner2" / "hau" / "train.txt").write_text("Ade B-PER\nni\n", encoding="utf-8")
    sweep = SweepConfig.load(write(tmp_path, f"""
data_root: {tmp_path / 'data'}
targets: [ner:masakhaner2:yor]
sources: [ner:masakhaner2:hau]
trial: {{source_train_size: 10, target_train_size: 10}}
"""))
    with pytest.raises(MetaXLError, match=r"hau.train\.txt:2: expected 2 columns"):
        check_inputs(sweep, sweep.searches())
    (root / "masakhaner2" / "hau" / "train.txt").write_text("Ade B-PER\n\n" * 5, encoding="utf-8")
    with pytest.raises(MetaXLError, match=r"has 5 examples but source_train_size=10"):
        check_inputs(sweep, sweep.searches())


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "sweeps" / "presets").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_sweep_preset_loads_and_plans(path):
    sweep = SweepConfig.load(str(path))
    assert sweep.searches() and sweep.name == path.stem


MATRIX_PRESETS = {"transfer-matrix.yaml"}  # sweeps/transfer_matrix.py's (tests/test_transfer_matrix.py)


@pytest.mark.parametrize("path", sorted(p for p in (PROJECT_ROOT / "sweeps" / "grids").glob("*.yaml")
                                        if p.name not in MATRIX_PRESETS), ids=lambda p: p.name)
def test_every_shipped_grid_plans_valid_trials(path, tmp_path):
    from sweeps import grid
    preset = grid.load_preset(path)
    reads_data = any("test_cap" in task for task in preset["tasks"].values())
    if reads_data and not SHARED_DATA.is_dir():
        pytest.skip(f"{path.name} reads the real test splits (test_cap); {SHARED_DATA} is absent")
    assert grid.plan_runs(preset, data_root=str(SHARED_DATA), out=tmp_path)
