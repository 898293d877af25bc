"""Choosing source languages before training: language codes, pair features, the rankers and
their metrics on hand-made matrices, and sweeps with `sources: {rank: auto, ...}`."""

import contextlib
import io
import json
import math
import subprocess
import sys

import pytest

from metaxl_core.errors import ConfigError, DataError
from metaxl_core.readers import SAMPLE_ROOT
from sweeps import source_features
from sweeps.rank_sources import (BASELINE, DONOR, closest_by_genus, donor_quality, f1_lost, fit_ranker,
                                 leave_one_target_out, load_matrix, ndcg_at_k, rank_candidates, ranker_inputs,
                                 top1_hit)
from sweeps.settings import SweepConfig
from sweeps.source_features import URIEL_FEATURES, data_features, uriel_code, uriel_distance
from tests.conftest import PROJECT_ROOT

pytest.importorskip("lang2vec", reason="URIEL features need the lang2vec package")


# ---------------------------------------------------------------------------- language codes
def _languages(root):
    """Every language code of the datasets under a data root."""
    found = {p.name.removeprefix("conll2003_") for p in (root / "ner").glob("conll2003_*")}
    for task in ("ner", "sentiment"):
        found |= {p.name for p in (root / task).glob("*/*") if p.is_dir()}
    if (root / "sentiment" / "sentipers").is_dir():
        found.add("fa")
    return found


def test_macrolanguages_and_two_letter_codes_map_to_the_language_of_the_data():
    assert uriel_code("swa") == "swh" and uriel_code("en") == "eng" and uriel_code("fa") == "pes"
    assert uriel_code("yor") == "yor"


def test_every_shipped_language_has_uriel_vectors(shared_data):
    languages = _languages(SAMPLE_ROOT) | _languages(shared_data)
    assert {"en", "yor", "zul", "swa", "pcm", "fa"} <= languages
    for lang in sorted(languages):
        for kind in URIEL_FEATURES:
            assert source_features.uriel_vector(lang, kind).size > 0, (lang, kind)


def test_an_unknown_language_names_the_code_and_the_table():
    with pytest.raises(DataError, match=r"language 'xyz' has no URIEL code: add it to URIEL_CODES"):
        uriel_distance("xyz", "yor", "genetic")


# ---------------------------------------------------------------------------- URIEL distances
def test_uriel_distances_of_real_languages():
    for kind in URIEL_FEATURES:
        assert uriel_distance("yor", "yor", kind) == pytest.approx(0, abs=1e-6)
        assert uriel_distance("yor", "en", kind) == pytest.approx(uriel_distance("en", "yor", kind))
    assert uriel_distance("yor", "ibo", "genetic") < uriel_distance("yor", "en", "genetic") == 1
    # London-Lagos is about 5,000 km; the antipodal distance about 20,000 km
    assert 0.2 < uriel_distance("en", "yor", "geographic") < 0.3
    assert uriel_distance("yor", "ibo", "geographic") < 0.05
    assert source_features.shared_family_nodes("zul", "sna") > source_features.shared_family_nodes(
        "zul", "yor") > source_features.shared_family_nodes("zul", "en") == 0


def test_distances_use_the_features_both_languages_have(monkeypatch):
    import numpy as np
    vectors = {("a", "syntactic"): np.array([1, -1, 0, 1.0]), ("b", "syntactic"): np.array([1, 1, -1, 0.0]),
               ("a", "genetic"): np.array([0, 0.0]), ("b", "genetic"): np.array([1, 0.0]),
               ("a", "geographic"): np.array([0.1, 0.5]), ("b", "geographic"): np.array([0.3, 0.4])}
    monkeypatch.setattr(source_features, "uriel_vector", lambda lang, kind: vectors[(lang, kind)])
    # known in both: positions 0 and 3, (1, 1) against (1, 0)
    assert uriel_distance("a", "b", "syntactic") == pytest.approx(1 - 1 / math.sqrt(2))
    assert uriel_distance("a", "b", "genetic") == 1.0  # no family node: nothing in common
    assert uriel_distance("a", "b", "geographic") == pytest.approx(0.2)


# ---------------------------------------------------------------------------- data features
def write_conll(root, dataset, lang, sentences):
    folder = root / "ner" / dataset / lang
    folder.mkdir(parents=True)
    text = "\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sentences) + "\n"
    (folder / "train.txt").write_text(text, encoding="utf-8")


class PairTokenizer:
    """Splits a word into pieces of two characters."""

    def tokenize(self, word):
        return [word[i:i + 2] for i in range(0, len(word), 2)]


def test_data_features_on_hand_made_splits(tmp_path):
    write_conll(tmp_path, "toy", "src", [[("Ade", "B-PER"), ("lo", "O"), ("si", "O"), ("Lagos", "B-LOC")],
                                         [("New", "B-LOC"), ("York", "I-LOC")]])
    write_conll(tmp_path, "toy", "tgt", [[("Ade", "B-PER"), ("went", "O"), ("to", "O"),
                                          ("New", "B-LOC"), ("York", "I-LOC")]])
    features = data_features("ner:toy:src", "ner:toy:tgt", tmp_path, PairTokenizer())
    # words {Ade lo si Lagos New York} and {Ade went to New York}: 3 shared of 6 + 5
    assert features["word_overlap"] == pytest.approx(3 / 11)
    # entities {Ade, Lagos, New York} and {Ade, New York}
    assert features["entity_overlap"] == pytest.approx(2 / 5)
    # pieces {Ad e lo si La go s Ne w Yo rk} and {Ad e we nt to Ne w Yo rk}
    assert features["subword_overlap"] == pytest.approx(6 / 20)
    assert features["source_size"] == 2
    assert "subword_overlap" not in data_features("ner:toy:src", "ner:toy:tgt", tmp_path)


def test_subword_overlap_under_the_tiny_encoders_tokenizer():
    from metaxl_core.encoders import load_encoder
    tokenizer = load_encoder("tiny-bert")[1]
    same = data_features("ner:masakhaner2:yor", "ner:masakhaner2:yor", SAMPLE_ROOT, tokenizer)
    assert same["subword_overlap"] == same["word_overlap"] == same["entity_overlap"] == 0.5
    other = data_features("ner:conll2003:en", "ner:masakhaner2:yor", SAMPLE_ROOT, tokenizer)
    assert 0 < other["word_overlap"] < other["subword_overlap"] < 0.5


# ---------------------------------------------------------------------------- metrics
F1 = {"a": 0.5, "b": 0.7, "c": 0.6, "d": 0.2}


def test_metrics_of_the_oracle_order():
    assert top1_hit(["b", "c", "a", "d"], F1) == 1 and f1_lost(["b", "c", "a", "d"], F1) == 0
    assert ndcg_at_k(["b", "c", "a", "d"], F1) == pytest.approx(1)


def test_metrics_of_a_wrong_order():
    ranked = ["a", "b", "c", "d"]  # relevance b 10, c 9, a 8, d 7
    assert top1_hit(ranked, F1) == 0 and f1_lost(ranked, F1) == pytest.approx(0.2)
    assert f1_lost(ranked, F1, 2) == 0 and f1_lost(["d", "a", "c"], F1, 3) == pytest.approx(0.1)
    dcg = 8 + 10 / math.log2(3) + 9 / 2
    ideal = 10 + 9 / math.log2(3) + 8 / 2
    assert ndcg_at_k(ranked, F1) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(["d", "a", "c"], F1) < ndcg_at_k(ranked, F1) < 1


def test_a_tie_for_the_best_source_counts_as_a_hit():
    assert top1_hit(["x", "y"], {"x": 0.5, "y": 0.5}) == 1


# ---------------------------------------------------------------------------- rankers
EN, S1, S2 = "ner:conll2003:en", "ner:toy:s1", "ner:toy:s2"
TARGETS = ["ner:toy:t1", "ner:toy:t2", "ner:toy:t3"]


def toy_problem():
    """F1 = 0.3 + word overlap; the URIEL distances grow with the overlap (so the distance
    baseline gets every order backwards) and English shares no family node."""
    overlaps = {"ner:toy:t1": {EN: 0.05, S1: 0.30, S2: 0.20},
                "ner:toy:t2": {EN: 0.10, S1: 0.15, S2: 0.40},
                "ner:toy:t3": {EN: 0.02, S1: 0.25, S2: 0.12}}
    matrix, features = {}, {}
    for target, row in overlaps.items():
        for source, w in row.items():
            matrix.setdefault(source, {})[target] = round(0.3 + w, 6)
            features[(source, target)] = {**{k: w for k in URIEL_FEATURES}, "word_overlap": w,
                                          "source_size": 100, "shared_family_nodes": int(source == S2)}
    return matrix, features


def test_leave_one_target_out_beats_the_baselines_on_a_matrix_it_can_learn():
    matrix, features = toy_problem()
    result = leave_one_target_out(matrix, features)
    for name in ("learned", "unconstrained ridge"):
        assert result[name] == {"top1": 1.0, "ndcg@3": pytest.approx(1.0), "f1_lost": 0.0,
                                "f1_lost@3": 0.0, "targets": 3}
    assert result["best donor"]["top1"] == 0  # each target's winner is the weaker donor elsewhere
    assert result["weighted distance"]["top1"] == 0 and result["weighted distance"]["ndcg@3"] < 1
    assert result["always English"]["top1"] == 0
    assert result["always English"]["f1_lost"] == pytest.approx((0.25 + 0.30 + 0.23) / 3)
    assert [result["per_target"][t]["closest by genus"]["first"] for t in TARGETS] == [S2] * 3
    assert result["closest by genus"]["top1"] == pytest.approx(1 / 3)


def test_the_unconstrained_weights_follow_the_data_whatever_the_features_mean():
    matrix, features = toy_problem()
    ranker = fit_ranker(matrix, {p: ranker_inputs(f) for p, f in features.items()},
                        ["syntactic", "word_overlap", "log_source_size"], monotone=False)
    # the toy's distances grow with F1, so a free sign makes a farther language score higher
    assert ranker.weights["word_overlap"] > 0 and ranker.weights["syntactic"] > 0
    assert ranker.weights["log_source_size"] == 0  # constant: no information
    assert closest_by_genus({S1: features[(S1, TARGETS[0])], S2: features[(S2, TARGETS[0])]}) == [S2, S1]


def test_rank_candidates_uses_measurements_then_features_then_the_baseline():
    matrix, features = toy_problem()
    matrix[EN][TARGETS[1]] = 0.9  # measured: English beats what its features predict
    rows, warnings = rank_candidates(TARGETS[1], [EN, S1, S2], features, matrix)
    assert [r["source"] for r in rows] == [EN, S2, S1] and not warnings
    assert rows[0]["measured_f1"] == 0.9
    new = "ner:toy:t4"  # outside the matrix: the learned ranker, from features alone
    for source, w in ((EN, 0.01), (S1, 0.2), (S2, 0.1)):
        features[(source, new)] = {**{k: w for k in URIEL_FEATURES}, "word_overlap": w,
                                   "source_size": 100, "shared_family_nodes": 0}
    rows, warnings = rank_candidates(new, [EN, S1, S2], features, matrix)
    assert [r["source"] for r in rows] == [S1, S2, EN] and "the learned ranker" in warnings[0]
    assert rows[0]["contributions"]["word_overlap"] > 0 and rows[0]["measured_f1"] is None
    rows, warnings = rank_candidates(new, [EN, S1, S2], features, None)
    assert [r["source"] for r in rows] == [EN, S2, S1] and "no transfer matrix" in warnings[0]
    assert rows == sorted(rows, key=lambda r: -r["score"]) and BASELINE.weights["genetic"] < 0


def test_a_closer_candidate_never_scores_lower():
    """On the toy, where the distances grow with F1, the learned ranker (what rank: auto uses)
    still never raises a candidate's score as one of its distances grows, nor lowers it as one
    of its overlaps grows."""
    matrix, features = toy_problem()
    new = "ner:toy:t4"
    for source, w in ((EN, 0.01), (S1, 0.2), (S2, 0.1)):
        features[(source, new)] = {**{k: w for k in URIEL_FEATURES}, "word_overlap": w,
                                   "source_size": 100, "shared_family_nodes": 0}
    for name, sign in [*((k, -1) for k in URIEL_FEATURES), ("word_overlap", 1)]:
        scores = []
        for step in (0, 0.1, 0.3, 0.6):
            moved = {**features, (S1, new): {**features[(S1, new)], name: 0.2 + step}}
            rows, _ = rank_candidates(new, [EN, S1, S2], moved, matrix)
            scores.append(sign * next(r["score"] for r in rows if r["source"] == S1))
        assert scores == sorted(scores), (name, scores)


def test_the_donor_term_for_a_target_leaves_its_column_out():
    """Turning t1's column around changes every source's donor quality, but not t1's, nor the
    learned ranker's scores for t1 (its fit and donor term both leave the column out)."""
    matrix, features = toy_problem()
    target = TARGETS[0]
    before, _ = rank_candidates(target, [EN, S1, S2], features, matrix)
    donors, everywhere = donor_quality(matrix, target), donor_quality(matrix)
    for source, f1 in zip([EN, S1, S2], [0.9, 0.1, 0.5]):
        matrix[source][target] = f1
    after, _ = rank_candidates(target, [EN, S1, S2], features, matrix)
    assert donor_quality(matrix, target) == donors and donor_quality(matrix) != everywhere
    score = {r["source"]: (r["score"], r["contributions"][DONOR]) for r in before}
    assert {r["source"]: (r["score"], r["contributions"][DONOR]) for r in after} == score
    assert [r["source"] for r in after][0] == EN  # measured: ranked by t1's new column


@pytest.mark.parametrize("text,message", [
    ('{"ner:conll2003:en": {"ner:masakhaner2:yor": 1.5}}', "F1 must be a number in [0, 1], got 1.5"),
    ('{"ner:conll2003:en": {"yor": 0.5}}', "expected 'task:dataset:language'"),
    ('{"ner:conll2003:en": [0.5]}', "expected {source: {target: f1}}"),
    ("{", "cannot read the transfer matrix"),
])
def test_a_bad_matrix_file_is_named(tmp_path, text, message):
    path = tmp_path / "m.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="m.json") as err:
        load_matrix(path)
    assert message in str(err.value)


def rank_command(*args):
    return subprocess.run([sys.executable, "sweeps/rank_sources.py", *map(str, args)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)


def test_the_command_ranks_and_names_bad_input(tmp_path):
    proc = rank_command("--target", "ner:masakhaner2:yor", "--candidates", "ner:conll2003:en",
                        "ner:masakhaner2:ibo", "ner:masakhaner2:hau", "--no-matrix")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "1 ner:masakhaner2:ibo" in lines[2] and "genetic" in lines[2]  # closest to yor
    assert "no transfer matrix" in proc.stderr
    for args, message in [
            (["--candidates", "ner:masakhaner2:xyz"], "language 'xyz' has no URIEL code"),
            (["--candidates", "ner:conll2003:en", "--matrix", tmp_path / "none.json"],
             "none.json: transfer matrix not found"),
            (["--candidates", "en"], "dataset name 'en'"),
            (["--candidates", "ner:conll2003:en", "--matrix", tmp_path / "m.json", "--no-matrix"],
             "--matrix and --no-matrix exclude each other")]:
        proc = rank_command("--target", "ner:masakhaner2:yor", *args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- sweeps
def write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


RANKED = """
targets: [ner:masakhaner2:yor, ner:masakhaner2:hau]
sources: {rank: auto, top_k: 2, candidates: [ner:conll2003:en, ner:masakhaner2:hau, ner:masakhaner2:ibo]}
methods: [metaxl, joint]
"""


def test_a_ranked_source_list_narrows_each_targets_search(tmp_path):
    sweep = SweepConfig.load(write(tmp_path, RANKED))
    assert sweep.sources == ["ner:conll2003:en", "ner:masakhaner2:hau", "ner:masakhaner2:ibo"]
    assert sweep.source_rank == {"top_k": 2, "matrix": None}
    ranked = {"ner:masakhaner2:yor": ["ner:masakhaner2:ibo", "ner:masakhaner2:hau", "ner:conll2003:en"],
              "ner:masakhaner2:hau": ["ner:masakhaner2:ibo", "ner:conll2003:en"]}
    searches = sweep.searches(ranked)
    assert [s["sources"] for s in searches if s["method"] == "metaxl"] == [
        ["ner:masakhaner2:ibo", "ner:masakhaner2:hau"], ["ner:masakhaner2:ibo", "ner:conll2003:en"]]
    assert all(s["ranked"] for s in searches)
    assert SweepConfig.load(write(tmp_path, RANKED), {"sources": ["ner:conll2003:en"]}).source_rank is None
    assert not any(s["ranked"] for s in SweepConfig.load().searches())


@pytest.mark.parametrize("sources,message", [
    ("{rank: manual, candidates: [ner:conll2003:en]}", "sources.rank: must be 'auto', got 'manual'"),
    ("{rank: auto, top_k: 0, candidates: [ner:conll2003:en]}", "sources.top_k: must be >= 1, got 0"),
    ("{rank: auto, top_k: two, candidates: [ner:conll2003:en]}", "sources.top_k: expected int"),
    ("{rank: auto, candidates: ['ner:conll2003:en,ner:masakhaner2:hau']}",
     "rank: auto ranks single sources, not the source set"),
    ("{rank: auto, top: 3, candidates: [ner:conll2003:en]}", "sources: unknown key(s) ['top']"),
    ("{rank: auto}", "sources.candidates: the candidate sources to rank are missing"),
    ("{rank: auto, candidates: ner:conll2003:en}", "sources.candidates: expected list of str"),
])
def test_a_bad_ranked_source_list_names_the_problem(tmp_path, sources, message):
    with pytest.raises(ConfigError) as err:
        SweepConfig.load(write(tmp_path, f"sources: {sources}\n"))
    assert message in str(err.value) and "sweep.yaml" in str(err.value)


def test_the_searcher_tries_the_anchor_then_the_ranked_sources_first_and_once(tmp_path):
    from sweeps.search import METRIC, MODE, make_searcher, search_space
    sweep = SweepConfig.load(write(tmp_path, RANKED + "max_concurrent: 4\n"))
    order = ["ner:masakhaner2:ibo", "ner:masakhaner2:hau", "ner:conll2003:en"]
    search = {"target": "ner:masakhaner2:yor", "method": "metaxl", "sources": order,
              "ranked": True, "dimensions": ["lr", "rtn_width"]}
    journal = str(tmp_path / "optuna.journal")

    def searcher():
        limiter = make_searcher(sweep, 0, "s", journal, sweep.anchor_config(search, 2),
                                first_sources=order)
        assert limiter.set_search_properties(METRIC, MODE, search_space(sweep, search, n_layers=2))
        return limiter

    first = searcher()
    configs = [first.suggest(f"t{i}") for i in range(3)]
    assert [c["source"] for c in configs] == order  # the first is the anchor, from the top one
    assert configs[0] == sweep.anchor_config(search, 2)
    assert len({c["lr"] for c in configs}) == 3  # the other dimensions are sampled
    again = searcher()  # a resumed sweep: the study already holds the ranked trials
    assert all(t.state.name != "WAITING" for t in again.searcher._ot_study.get_trials())


def test_dry_run_prints_the_ranking_and_searches_the_top_k(tmp_path):
    matrix = tmp_path / "matrix.json"
    matrix.write_text(json.dumps({"ner:conll2003:en": {"ner:masakhaner2:yor": 0.7},
                                  "ner:masakhaner2:ibo": {"ner:masakhaner2:yor": 0.6},
                                  "ner:masakhaner2:hau": {"ner:masakhaner2:yor": 0.5}}), encoding="utf-8")
    path = write(tmp_path, RANKED.replace("top_k: 2,", f"top_k: 2, matrix: {matrix},"))
    proc = subprocess.run([sys.executable, "sweeps/pairs.py", "--config", path, "--dry-run"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "sources for ner:masakhaner2:yor, best first (top 2 searched):" in out
    # yor is measured: ranked by the matrix's F1 (the features put ibo first); hau is not: the
    # learned ranker, with a warning
    assert out.index("1 ner:conll2003:en") < out.index("2 ner:masakhaner2:ibo") < out.index(
        "3 ner:masakhaner2:hau")
    assert "warning: ner:masakhaner2:hau is not measured for every candidate" in out
    assert "ner:conll2003:en, ner:masakhaner2:ibo" in out  # yor's searches: the top 2


def test_a_tiny_sweep_with_rank_auto_trains_the_top_k_sources_best_first(tmp_path):
    """End to end on local Ray: the matrix ranks yor's candidates ibo > hau > en, so with top_k 2
    the sweep's trials train on ibo, then hau, and never on English."""
    from mlflow.tracking import MlflowClient

    matrix = tmp_path / "matrix.json"
    matrix.write_text(json.dumps({"ner:conll2003:en": {"ner:masakhaner2:yor": 0.2},
                                  "ner:masakhaner2:ibo": {"ner:masakhaner2:yor": 0.6},
                                  "ner:masakhaner2:hau": {"ner:masakhaner2:yor": 0.4}}),
                      encoding="utf-8")
    path = write(tmp_path, f"""
name: ranked-sweep
targets: [ner:masakhaner2:yor]
sources: {{rank: auto, top_k: 2, matrix: {matrix},
          candidates: [ner:conll2003:en, ner:masakhaner2:hau, ner:masakhaner2:ibo]}}
methods: [joint]
trials_per_search: 2
seeds_per_config: 1
max_concurrent: 1
space: {{lr: [1.0e-4, 3.0e-3]}}
trial: {{encoder: tiny-bert, epochs: 1, source_train_size: 20, target_train_size: 20,
         target_dev_size: 20, max_seq_length: 32}}
""")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "sweeps/pairs.py", "--config", path, "--output-dir",
                           str(out)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ranked-sweep")
    runs = client.search_runs([experiment.experiment_id], "tags.role = 'trial'",
                              order_by=["attributes.start_time ASC"])
    assert [r.data.params["source"] for r in runs] == ["ner:masakhaner2:ibo", "ner:masakhaner2:hau"]


def test_the_command_evaluates_the_rankers_on_a_matrix_and_writes_json(tmp_path):
    matrix = tmp_path / "matrix.json"
    matrix.write_text(json.dumps({
        "ner:conll2003:en": {"ner:masakhaner2:yor": 0.3, "ner:masakhaner2:swa": 0.5},
        "ner:masakhaner2:ibo": {"ner:masakhaner2:yor": 0.6, "ner:masakhaner2:swa": 0.4},
        "ner:masakhaner2:hau": {"ner:masakhaner2:yor": 0.4, "ner:masakhaner2:swa": 0.45}}))
    out = tmp_path / "eval.json"
    proc = rank_command("--evaluate", "--matrix", matrix, "--json", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result["per_target"]) == {"ner:masakhaner2:yor", "ner:masakhaner2:swa"}
    # English is the best source of swa only: always English hits one target of two
    assert result["always English"]["top1"] == 0.5 and result["always English"]["targets"] == 2
    assert result["per_target"]["ner:masakhaner2:yor"]["always English"]["f1_lost"] == \
        pytest.approx(0.3)
    assert "always English" in proc.stdout and "0.50" in proc.stdout
    matrix.write_text(json.dumps({"ner:conll2003:en": {"ner:masakhaner2:yor": 0.3}}))
    proc = rank_command("--evaluate", "--matrix", matrix)
    assert proc.returncode == 2 and "no target with two measured sources" in proc.stderr


def test_a_target_without_data_is_warned_about_once_before_the_table():
    from sweeps import rank_sources
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = rank_sources.main(["--target", "ner:masakhaner2:zul", "--candidates",
                                  "ner:conll2003:en", "ner:masakhaner2:hau", "--no-matrix",
                                  "--data-root", str(SAMPLE_ROOT)])
    lines = printed.getvalue().splitlines()
    assert code == 0 and lines[1] == "sources for ner:masakhaner2:zul, best first:", lines
    assert lines[0].startswith("warning: target ner:masakhaner2:zul: its train split cannot be "
                               "read") and "no language 'zul'" in lines[0], lines
    assert sum("'zul'" in line for line in lines) == 1, lines
