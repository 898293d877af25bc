"""One rule for "best", and the statistics every table uses.

- The best evaluation of a trial: the highest dev F1; on a tie, the earliest evaluation.
- The best trial among trials: the highest best dev F1; on a tie, the smallest trial id. Tune
  numbers the trials of a search in creation order (`<search>_00000`, `_00001`, ...), so within
  a search the earlier trial wins; across searches the order is arbitrary but fixed. The sweep
  summary (`sweeps/pairs.py`), the export (`sweeps/export.py`) and the report
  (`sweeps/report.py`) all use it, so on a tie they name the same trial.
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
