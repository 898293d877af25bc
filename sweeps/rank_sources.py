"""Rank candidate source languages for a target before any training (LangRank, Lin et al., ACL
2019), from URIEL distances and data features (sweeps/source_features.py), and evaluate the
rankers on a measured transfer matrix.

    python sweeps/rank_sources.py --target ner:masakhaner2:yor \\
        --candidates ner:conll2003:en ner:masakhaner2:ibo ner:masakhaner2:hau \\
        --data-root ../shared/data --encoder tiny-bert \\
        [--matrix results/transfer-matrix/transfer_matrix.json]
    python sweeps/rank_sources.py --evaluate --data-root ../shared/data \\
        [--matrix results/transfer-matrix/transfer_matrix.json]

The transfer matrix is a JSON object {source: {target: f1}} of dataset names, F1 in [0, 1]: the
target's test F1 of a model trained on the source alone (zero-shot); absent pairs are not
measured. Rankers:

- `weighted distance` (the transparent baseline): minus the mean of the five URIEL distances.
- `learned`: a linear model of a donor-quality term (how much better than average a source
  transfers to the matrix's other targets) and the standardised features, fitted by ridge
  regression on the matrix's F1 centred per target (so it learns which source is better for a
  target, not which targets are easy), each weight's sign bounded so that a closer language or
  a better donor never scores lower (SIGNS); the target being ranked is left out of the fit and
  of the donor quality.
- `unconstrained ridge` (the learned ranker's earlier form: the features alone, any sign),
  `best donor` (the donor quality alone), `always English` and `closest by genus` (most shared
  Glottolog family nodes, then nearest): what the leave-one-target-out evaluation compares it to.

A target the matrix has measured for every candidate is ranked by its measured F1; any other is
ranked by the learned model (the baseline without a matrix), with a warning. A target whose
train split cannot be read is ranked without data features, with a warning printed first.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import lsq_linear

from metaxl_core.atomic import write_atomic
from metaxl_core.errors import ConfigError, DataError, MetaXLError
from metaxl_core.names import DataSpec, language_of
from metaxl_core.readers import read_split, resolve_data_root
from sweeps.source_features import URIEL_FEATURES, pair_features

DEFAULT_MATRIX = Path(__file__).resolve().parents[1] / "results" / "transfer-matrix" / "transfer_matrix.json"
# Ranker inputs: the URIEL distances, the data features, the source size on a log scale.
RANKER_FEATURES = (*URIEL_FEATURES, "word_overlap", "subword_overlap", "entity_overlap",
                   "log_source_size")
BASELINE_WEIGHTS = {name: -1.0 / len(URIEL_FEATURES) for name in URIEL_FEATURES}
DONOR = "donor_quality"  # the learned ranker's term from the matrix (donor_quality)
# The sign each weight of the learned ranker is bounded to: a smaller distance, a larger
# overlap, a better donor or a larger source never lowers a candidate's score.
SIGNS = {**{name: -1 for name in URIEL_FEATURES}, "word_overlap": 1, "subword_overlap": 1,
         "entity_overlap": 1, "log_source_size": 1, DONOR: 1}
NDCG_GAMMA = 10  # LangRank's relevance: the gold top 10 get 10, 9, ..., 1; the rest 0


# ------------------------------------------------------------------------------ the matrix
def load_matrix(path: str | Path) -> dict[str, dict[str, float]]:
    """A transfer matrix {source: {target: f1}}; ConfigError naming the file and the entry."""
    path = Path(path)
    try:
        matrix = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: transfer matrix not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the transfer matrix: {err}") from None
    if not isinstance(matrix, dict) or not all(isinstance(row, dict) for row in matrix.values()):
        raise ConfigError(f"{path}: expected {{source: {{target: f1}}}}")
    for source, row in matrix.items():
        for target, f1 in row.items():
            try:
                DataSpec.parse(source), DataSpec.parse(target)
            except DataError as err:
                raise ConfigError(f"{path}: {err}") from None
            if isinstance(f1, bool) or not isinstance(f1, (int, float)) or not 0 <= f1 <= 1:
                raise ConfigError(f"{path}: {source} -> {target}: F1 must be a number in [0, 1], "
                                  f"got {f1!r}")
    return matrix


def open_matrix(path: str | Path | None) -> dict | None:
    """The matrix at `path` (ConfigError when absent), else DEFAULT_MATRIX
    (results/transfer-matrix/transfer_matrix.json) when it exists, else None."""
    if path is None and DEFAULT_MATRIX.exists():
        path = DEFAULT_MATRIX
    return load_matrix(path) if path else None


def scores_of(matrix: dict, target: str) -> dict[str, float]:
    """The measured F1 of every source on `target`."""
    return {source: row[target] for source, row in matrix.items() if target in row}


def targets_of(matrix: dict) -> list[str]:
    return sorted({target for row in matrix.values() for target in row})


def donor_quality(matrix: dict, target: str | None = None) -> dict[str, float]:
    """How good a donor each source is to anyone: the mean, over the matrix's targets with two
    or more measured sources other than `target` (its column is left out), of the source's F1
    minus that target's mean F1."""
    gaps = {}
    for t in targets_of(matrix):
        scores = scores_of(matrix, t)
        if t == target or len(scores) < 2:
            continue
        mean = np.mean(list(scores.values()))
        for source, f1 in scores.items():
            gaps.setdefault(source, []).append(f1 - mean)
    return {source: float(np.mean(gap)) for source, gap in gaps.items()}


# ------------------------------------------------------------------------------ rankers
def ranker_inputs(features: dict) -> dict[str, float]:
    """The RANKER_FEATURES of a pair's features (source size on a log10 scale)."""
    inputs = dict(features)
    if "source_size" in inputs:
        inputs["log_source_size"] = math.log10(max(inputs["source_size"], 1))
    return {name: float(inputs[name]) for name in RANKER_FEATURES if name in inputs}


@dataclass(frozen=True)
class LinearRanker:
    """score = sum of weight * feature / scale, each feature centred over the candidates; the
    terms of that sum are the features' contributions to a candidate's position. With `donors`
    (donor_quality of the fitted matrix), a candidate's DONOR input is its donor quality (0, an
    average donor, for a source the matrix has not measured)."""

    weights: dict[str, float]
    scales: dict[str, float]
    donors: dict[str, float] | None = None

    def rank(self, candidates: dict[str, dict]) -> list[dict]:
        """Candidates {source: ranker inputs}, best first: {source, score, contributions}."""
        if self.donors is not None:
            candidates = {s: {**f, DONOR: self.donors.get(s, 0.0)} for s, f in candidates.items()}
        means = {name: np.mean([f[name] for f in candidates.values()]) for name in self.weights}
        rows = []
        for source, features in candidates.items():
            terms = {name: weight * (features[name] - means[name]) / self.scales[name]
                     for name, weight in self.weights.items()}
            rows.append({"source": source, "score": sum(terms.values()), "contributions": terms,
                         "inputs": features})
        return sorted(rows, key=lambda row: (-row["score"], row["source"]))


BASELINE = LinearRanker(BASELINE_WEIGHTS, {name: 1.0 for name in BASELINE_WEIGHTS})


def fit_ranker(matrix: dict, features: dict, names: list[str], l2: float = 1.0,
               monotone: bool = True) -> LinearRanker:
    """Ridge regression of F1 on the features `names`, both centred per target (differences
    between a target's sources are what it learns), features scaled to unit variance.
    monotone (the learned ranker): also the DONOR term (each pair's donor_quality without its
    target's column), and each weight bounded to its SIGNS sign (lsq_linear on the ridge
    system); else any sign (the unconstrained ridge). `features[(source, target)]` holds ranker
    inputs. ConfigError when no target of the matrix has two measured sources."""
    names = [*names, DONOR] if monotone else list(names)
    blocks, targets = [], []
    for target in targets_of(matrix):
        scores = scores_of(matrix, target)
        if len(scores) < 2:
            continue
        donors = donor_quality(matrix, target) if monotone else {}
        rows = [{**features[(s, target)], DONOR: donors.get(s, 0.0)} for s in scores]
        x = np.array([[row[n] for n in names] for row in rows])
        y = np.array(list(scores.values()))
        blocks.append(x - x.mean(axis=0))
        targets.append(y - y.mean())
    if not blocks:
        raise ConfigError("transfer matrix: no target has two measured sources to learn from")
    x, y = np.vstack(blocks), np.concatenate(targets)
    scales = x.std(axis=0)
    scales[scales == 0] = 1.0
    z = x / scales
    signs = np.array([SIGNS[n] if monotone else 0 for n in names])
    bounds = (np.where(signs > 0, 0, -np.inf), np.where(signs < 0, 0, np.inf))
    ridge = math.sqrt(l2) * np.eye(len(names))  # rows that add l2 * |w|^2 to the squared error
    weights = lsq_linear(np.vstack([z, ridge]), np.concatenate([y, np.zeros(len(names))]),
                         bounds=bounds, method="bvls").x
    return LinearRanker(dict(zip(names, weights.tolist())), dict(zip(names, scales.tolist())),
                        donor_quality(matrix) if monotone else None)


def common_features(rows) -> list[str]:
    """The RANKER_FEATURES every one of `rows` (feature dicts) has."""
    rows = list(rows)
    return [name for name in RANKER_FEATURES if all(name in row for row in rows)]


def closest_by_genus(candidates: dict[str, dict]) -> list[str]:
    """Most shared Glottolog family nodes first, then the geographically nearest."""
    return sorted(candidates, key=lambda s: (-candidates[s]["shared_family_nodes"],
                                             candidates[s]["geographic"], s))


def always_english(candidates: dict[str, dict]) -> list[str]:
    """English first, then the weighted-distance order."""
    order = [row["source"] for row in BASELINE.rank({s: ranker_inputs(f) for s, f in candidates.items()})]
    return sorted(order, key=lambda s: language_of(s) != "en")  # stable: keeps the rest in order


# ------------------------------------------------------------------------------ metrics
def top1_hit(ranked: list[str], f1: dict[str, float]) -> float:
    """1 when the first-ranked source has the best measured F1 (ties count), else 0."""
    return float(f1[ranked[0]] == max(f1.values()))


def f1_lost(ranked: list[str], f1: dict[str, float], k: int = 1) -> float:
    """The oracle source's F1 minus the best of the first k ranked sources' (k 3: what a sweep
    with `top_k: 3` can still find)."""
    return max(f1.values()) - max(f1[s] for s in ranked[:k])


def ndcg_at_k(ranked: list[str], f1: dict[str, float], k: int = 3) -> float:
    """NDCG@k with LangRank's graded relevance: a source whose F1 is beaten by r others has
    relevance max(0, NDCG_GAMMA - r); gain = relevance, discount log2(position + 1)."""
    relevance = {s: max(0, NDCG_GAMMA - sum(v > f1[s] for v in f1.values())) for s in f1}

    def dcg(order):
        return sum(relevance[s] / math.log2(i + 2) for i, s in enumerate(order[:k]))

    ideal = dcg(sorted(f1, key=lambda s: -relevance[s]))
    return dcg(ranked) / ideal if ideal else 1.0


def leave_one_target_out(matrix: dict, features: dict, l2: float = 1.0) -> dict:
    """Each target with two or more measured sources is ranked by every ranker, the fitted ones
    (and the donor quality) on the other targets; returns {ranker: {top1, ndcg@3, f1_lost,
    f1_lost@3, targets}} (means) and `per_target`. `features[(source, target)]`: pair_features
    of every measured pair."""
    inputs = {pair: ranker_inputs(f) for pair, f in features.items()}
    names = common_features(inputs[(s, t)] for t in targets_of(matrix) for s in scores_of(matrix, t))
    per_target = {}
    for target in targets_of(matrix):
        f1 = scores_of(matrix, target)
        if len(f1) < 2:
            continue
        rest = {s: {t: v for t, v in row.items() if t != target} for s, row in matrix.items()}
        candidates = {s: inputs[(s, target)] for s in f1}
        named = {s: {n: c[n] for n in names} for s, c in candidates.items()}
        learned, ridge = (fit_ranker(rest, inputs, names, l2, monotone) for monotone in (True, False))
        donors = donor_quality(rest)
        orders = {
            "learned": [r["source"] for r in learned.rank(named)],
            "unconstrained ridge": [r["source"] for r in ridge.rank(named)],
            "best donor": sorted(f1, key=lambda s: (-donors.get(s, 0.0), s)),
            "weighted distance": [r["source"] for r in BASELINE.rank(candidates)],
            "always English": always_english({s: features[(s, target)] for s in f1}),
            "closest by genus": closest_by_genus({s: features[(s, target)] for s in f1}),
        }
        per_target[target] = {name: {"top1": top1_hit(order, f1), "ndcg@3": ndcg_at_k(order, f1),
                                     "f1_lost": f1_lost(order, f1), "f1_lost@3": f1_lost(order, f1, 3),
                                     "first": order[0]}
                              for name, order in orders.items()}
    summary = {}
    for name in ("learned", "unconstrained ridge", "best donor", "weighted distance", "always English",
                 "closest by genus"):
        rows = [scores[name] for scores in per_target.values()]
        summary[name] = {m: float(np.mean([r[m] for r in rows])) if rows else float("nan")
                         for m in ("top1", "ndcg@3", "f1_lost", "f1_lost@3")} | {"targets": len(rows)}
    return summary | {"per_target": per_target}


# ------------------------------------------------------------------------------ ranking
def collect_features(pairs, data_root: str | Path | None, tokenizer=None) -> tuple[dict, list[str]]:
    """pair_features of each (source, target); a pair whose train splits cannot be read gets the
    URIEL distances only, with a warning."""
    features, warnings = {}, []
    for source, target in pairs:
        try:
            features[(source, target)] = pair_features(source, target, data_root, tokenizer)
        except DataError as err:
            if data_root is None:
                raise
            features[(source, target)] = pair_features(source, target, None)
            warnings.append(f"data features skipped: {err}")
    return features, list(dict.fromkeys(warnings))


def unreadable_train_split(name: str, data_root: Path) -> str | None:
    """Why `name`'s train split cannot be read under `data_root`, or None when it can."""
    try:
        read_split(DataSpec.parse(name), "train", data_root)
    except DataError as err:
        return str(err)
    return None


def rank_candidates(target: str, candidates: list[str], features: dict,
                    matrix: dict | None) -> tuple[list[dict], list[str]]:
    """Rank `candidates` for `target`: rows {source, score, contributions, measured_f1}, best
    first, and warnings. `features[(source, target)]` holds pair_features of the candidates'
    pairs and (with a matrix) of every measured pair."""
    inputs = {s: ranker_inputs(features[(s, target)]) for s in candidates}
    measured = scores_of(matrix, target) if matrix else {}
    ranker, warnings = BASELINE, ["no transfer matrix: ranked by the weighted URIEL distance baseline"]
    if matrix:
        rest = {s: {t: v for t, v in row.items() if t != target} for s, row in matrix.items()}
        train = [ranker_inputs(features[(s, t)]) for t in targets_of(rest) for s in scores_of(rest, t)]
        names = common_features([*inputs.values(), *train])
        try:
            ranker = fit_ranker(rest, {pair: ranker_inputs(f) for pair, f in features.items()}, names)
            inputs = {s: {n: f[n] for n in names} for s, f in inputs.items()}
            warnings = [f"{target} is not measured for every candidate in the transfer matrix: "
                        "ranked by the learned ranker (donor quality on the other targets and features)"]
        except ConfigError as err:
            warnings = [f"{err}: ranked by the weighted URIEL distance baseline"]
    rows = ranker.rank(inputs)
    for row in rows:
        row["measured_f1"] = measured.get(row["source"])
    if all(s in measured for s in candidates):
        rows.sort(key=lambda row: (-row["measured_f1"], row["source"]))
        return rows, []
    return rows, warnings


def format_ranking(rows: list[dict], drivers: int = 3) -> list[str]:
    """Lines of a ranking table: position, source, score, measured F1 and the `drivers`
    features that moved the candidate most: contribution to the score (feature value)."""
    lines = [f"  {'#':>2} {'source':<28} {'score':>7} {'measured':>8}  drivers"]
    for i, row in enumerate(rows, start=1):
        top = sorted(row["contributions"].items(), key=lambda item: -abs(item[1]))[:drivers]
        measured = "-" if row["measured_f1"] is None else f"{row['measured_f1']:.3f}"
        lines.append(f"  {i:>2} {row['source']:<28} {row['score']:>+7.3f} {measured:>8}  "
                     + ", ".join(f"{name} {value:+.3f} ({row['inputs'][name]:.3g})"
                                 for name, value in top))
    return lines


def sweep_ranking(sweep) -> dict[str, dict]:
    """Per target of a sweep with `sources: {rank: auto, ...}`: {"rows", "warnings"} ranking its
    candidates (the matrix file named there, else DEFAULT_MATRIX when it exists), with data
    features from the trials' data root and the subword overlap under the trials' tokenizer."""
    from metaxl_core.encoders import load_encoder

    trial = sweep.base_trial(sweep.targets[0], sweep.methods[0])
    matrix = open_matrix(sweep.source_rank.get("matrix"))
    tokenizer = load_encoder(trial.encoder)[1]
    out = {}
    for target in sweep.targets:
        candidates = sweep.sources_for(target)
        pairs = [(s, target) for s in candidates]
        if matrix:
            pairs += [(s, t) for t in targets_of(matrix) for s in scores_of(matrix, t)]
        features, warnings = collect_features(dict.fromkeys(pairs), resolve_data_root(trial.data_root),
                                              tokenizer)
        rows, notes = rank_candidates(target, candidates, features, matrix)
        out[target] = {"rows": rows, "warnings": warnings + notes}
    return out


# ------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", help="dataset name of the target, e.g. ner:masakhaner2:yor")
    p.add_argument("--candidates", nargs="+", help="dataset names of the candidate sources")
    p.add_argument("--matrix", help=f"transfer matrix JSON (default: {DEFAULT_MATRIX} when it exists)")
    p.add_argument("--no-matrix", action="store_true", help="ignore the default matrix: rank by "
                   "the weighted URIEL distance baseline")
    p.add_argument("--data-root", help="data root for the data features (default: "
                   "$METAXL_DATA_ROOT, else the bundled sample)")
    p.add_argument("--encoder", help="encoder whose tokenizer gives the subword overlap "
                   "(default: no subword overlap)")
    p.add_argument("--evaluate", action="store_true",
                   help="leave-one-target-out evaluation of the rankers on the matrix")
    p.add_argument("--json", help="with --evaluate: also write the evaluation (means and per "
                   "target) to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.no_matrix and args.matrix:
            raise ConfigError("--matrix and --no-matrix exclude each other")
        matrix = None if args.no_matrix else open_matrix(args.matrix)
        if args.evaluate and matrix is None:
            raise ConfigError(f"--evaluate needs a transfer matrix: --matrix, or {DEFAULT_MATRIX}")
        if not args.evaluate:
            if not (args.target and args.candidates):
                raise ConfigError("--target and --candidates are required (or --evaluate)")
            for name in [args.target, *args.candidates]:
                DataSpec.parse(name)
        tokenizer = None
        if args.encoder:
            from metaxl_core.encoders import load_encoder
            tokenizer = load_encoder(args.encoder)[1]
        pairs = [(s, t) for t in targets_of(matrix) for s in scores_of(matrix, t)] if matrix else []
        if not args.evaluate:
            pairs += [(s, args.target) for s in args.candidates if s != args.target]
        root = resolve_data_root(args.data_root)
        features, warnings = collect_features(dict.fromkeys(pairs), root, tokenizer)
        if args.evaluate:
            result = leave_one_target_out(matrix, features)
            if not result["per_target"]:
                raise ConfigError("the transfer matrix has no target with two measured sources: "
                                  "nothing to evaluate")
            print(f"{'ranker':<20} {'top-1':>6} {'NDCG@3':>7} {'F1 lost':>8} {'lost@3':>7}  targets")
            for name, row in result.items():
                if name != "per_target":
                    print(f"{name:<20} {row['top1']:>6.2f} {row['ndcg@3']:>7.3f} "
                          f"{row['f1_lost']:>8.3f} {row['f1_lost@3']:>7.3f}  {row['targets']}")
            if args.json:
                write_atomic(args.json, json.dumps(result, indent=1, sort_keys=True))
        else:
            candidates = [s for s in args.candidates if s != args.target]
            rows, notes = rank_candidates(args.target, candidates, features, matrix)
            warnings += notes
            problem = unreadable_train_split(args.target, root)
            if problem:  # first and once, not among the other warnings after the table
                print(f"warning: target {args.target}: its train split cannot be read, so every "
                      f"candidate is ranked without data features: {problem}", file=sys.stderr)
                warnings = [w for w in warnings if w != f"data features skipped: {problem}"]
            print(f"sources for {args.target}, best first:")
            print("\n".join(format_ranking(rows)))
    except MetaXLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
