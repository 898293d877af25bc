"""One rule for "best", and the statistics every table uses.

- The best evaluation of a trial: the highest dev F1; on a tie, the earliest evaluation.
- The best trial among trials: the highest best dev F1; on a tie, the smallest trial id. Tune
  numbers the trials of a search in creation order (`<search>_00000`, `_00001`, ...), so within
  a search the earlier trial wins; across searches the order is arbitrary but fixed. The sweep
  summary (`sweeps/pairs.py`), the export (`sweeps/export.py`) and the report
  (`sweeps/report.py`) all use it, so on a tie they name the same trial.
- The pick among configurations re-run with several seeds (a sweep's confirmation stage,
  `confirmed_pick`): the highest mean dev F1 over seeds among those with the most seeds; on a
  tie, the smallest trial id. It is reported against the anchor (the configuration a user would
  run without sweeping) as a paired dev difference over seeds.
- A missing or NaN dev F1 ranks below every number.
- Seeds aggregate as mean ± sample standard deviation; MetaXL against JT as a paired
  difference over seeds (permutation test and bootstrap interval).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def _score(value) -> float:
    return -math.inf if value is None or value != value else float(value)


def improves(dev_f1: float, incumbent: float) -> bool:
    """True when a new evaluation beats the best so far (strictly: the earlier one wins ties)."""
    return _score(dev_f1) > _score(incumbent)


def best_evaluation(history: Sequence[dict], metric: str = "dev/f1") -> dict:
    """The earliest evaluation (in history order) with the highest `metric`."""
    if not history:
        raise ValueError("best_evaluation: empty history")
    best = history[0]
    for row in history[1:]:
        if improves(row.get(metric), best.get(metric)):
            best = row
    return best


def trial_rank(dev_f1: float, trial_id) -> tuple:
    """Sort key, best trial first: the highest dev F1, then the smallest trial id."""
    return -_score(dev_f1), str(trial_id)


def rank_trials(candidates: Iterable[T], dev_f1: Callable[[T], float],
                trial_id: Callable[[T], object]) -> list[T]:
    """The candidates ordered best first by `trial_rank`."""
    return sorted(candidates, key=lambda c: trial_rank(dev_f1(c), trial_id(c)))


def best_trial(candidates: Iterable[T], dev_f1: Callable[[T], float],
               trial_id: Callable[[T], object]) -> T:
    """The best of the candidates by `trial_rank` (ValueError when there are none)."""
    ranked = rank_trials(candidates, dev_f1, trial_id)
    if not ranked:
        raise ValueError("best_trial: no candidates")
    return ranked[0]


def mean_std(values: Sequence[float]) -> dict:
    """{values, n, mean, std}: the sample standard deviation, 0 for a single value."""
    values = list(values)
    return {"values": values, "n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def paired_difference(a: dict, b: dict) -> dict | None:
    """Mean of a[seed] - b[seed] over the seeds both have, its 95% percentile-bootstrap
    confidence interval over seeds, and the two-sided p of an exact sign-flip permutation test
    (with n seeds the smallest possible p is 2 / 2^n: 0.0625 for 5). None below 2 seeds."""
    import numpy as np
    from scipy import stats as scipy_stats

    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    diff = np.array([a[s] - b[s] for s in seeds])
    test = scipy_stats.permutation_test((diff,), np.mean, permutation_type="samples",
                                        n_resamples=np.inf, alternative="two-sided")
    ci = scipy_stats.bootstrap((diff,), np.mean, confidence_level=0.95, method="percentile",
                               n_resamples=9999, random_state=0).confidence_interval
    return {"n": len(seeds), "mean": float(diff.mean()), "ci95": [float(ci.low), float(ci.high)],
            "p": float(test.pvalue)}


def mean_interval(values: Sequence[float]) -> list[float] | None:
    """95% percentile-bootstrap interval of the mean over seeds; None below 2 values."""
    import numpy as np
    from scipy import stats as scipy_stats

    if len(values) < 2:
        return None
    ci = scipy_stats.bootstrap((np.array(values, dtype=float),), np.mean, confidence_level=0.95,
                               method="percentile", n_resamples=9999, random_state=0
                               ).confidence_interval
    return [float(ci.low), float(ci.high)]


def confirmed_pick(candidates: dict[str, dict[int, float]], anchor: str | None) -> dict:
    """The pick among configurations scored on several seeds: `candidates` maps a trial id to
    {seed: dev F1}; `anchor` is the anchor's trial id (or None). Returns {pick, seeds, mean,
    ci95, vs_anchor (the paired dev difference pick - anchor, see `paired_difference`; None
    when the pick is the anchor or below 2 shared seeds), separated (its interval lies above
    0), scores (per candidate: seeds, mean, ci95)}."""
    if not candidates:
        raise ValueError("confirmed_pick: no candidates")
    most = max(len(seeds) for seeds in candidates.values())
    scores = {trial: {"seeds": len(seeds), "mean": statistics.fmean(seeds.values()),
                      "ci95": mean_interval(list(seeds.values()))}
              for trial, seeds in candidates.items()}
    pick = best_trial([t for t in candidates if len(candidates[t]) == most],
                      lambda t: scores[t]["mean"], lambda t: t)
    versus = None if anchor is None or anchor == pick or anchor not in candidates else \
        paired_difference(candidates[pick], candidates[anchor])
    return {"pick": pick, **scores[pick], "anchor": anchor, "vs_anchor": versus,
            "separated": versus is not None and versus["ci95"][0] > 0, "scores": scores}
