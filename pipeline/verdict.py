"""Paired comparison of a candidate and a baseline trained on the same seeds.

Pure functions over per-seed test accuracies (fractions from 0 to 1), with no I/O. The
seed pairs the runs: both configs see the same data order, so the per-seed difference
removes the seed-to-seed noise that both share, and the test is a paired t-test on those
differences. The verdict line reports percentage points (1 point = 0.01 accuracy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats


# Differences closer than this are equal. Accuracies are counts over a test set, so two
# equal differences can differ by float rounding, such as 0.55 - 0.525 and 0.6 - 0.575.
_SAME_DIFFERENCE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Comparison:
    """Summary of a paired comparison, in accuracy units (fractions), except ``verdict``.

    ``ci_low`` and ``ci_high`` bound the mean difference (candidate minus baseline) at
    ``confidence``. Statistics that need 2 seeds or a non-zero spread are NaN when they
    cannot be computed, and ``note`` gives the reason.
    """

    seeds: int
    confidence: float
    candidate_mean: float
    candidate_std: float
    baseline_mean: float
    baseline_std: float
    difference_mean: float
    difference_std: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool
    verdict: str
    note: str | None = None


def _as_accuracies(name: str, values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of accuracies but has shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite accuracies but got {array.tolist()}")
    return array


def _sample_std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan


def _format_p(p_value: float) -> str:
    if math.isnan(p_value):
        return "p undefined"
    if p_value < 0.001:
        return "p < 0.001"
    return f"p = {p_value:.2g}"


def _format_confidence(confidence: float) -> str:
    return f"{confidence * 100:g}% CI"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _verdict_line(difference: float, half_width: float, p_value: float, confidence: float, seeds: int, significant: bool, note: str | None) -> str:
    """Write the verdict in percentage points, such as 'candidate beats baseline by 2.31 ± 0.84 points (...)'."""
    points = difference * 100
    seeds_text = _plural(seeds, "seed")
    if seeds < 2:
        return (
            f"too few seeds for a verdict: candidate − baseline = {points:.2f} points ({seeds_text}; "
            f"a confidence interval needs at least 2 seeds)"
        )

    details = f"({_format_confidence(confidence)}, {_format_p(p_value)}, {seeds_text})"
    if note:
        details = f"{details[:-1]}; {note})"

    spread = f"{abs(points):.2f} ± {half_width * 100:.2f} points"
    if significant and difference > 0:
        return f"candidate beats baseline by {spread} {details}"
    if significant:
        return f"baseline beats candidate by {spread} {details}"
    return f"no significant difference: candidate − baseline = {points:.2f} ± {half_width * 100:.2f} points {details}"


def compare(candidate: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> Comparison:
    """Compare per-seed test accuracies of a candidate and a baseline, paired by position.

    ``candidate[i]`` and ``baseline[i]`` must come from the same seed. The difference is
    significant when its ``confidence`` interval (Student's t with n - 1 degrees of
    freedom) excludes 0, which for this two-sided test is the same as p < 1 - confidence.
    With 1 seed there is no interval and no verdict. When the difference is the same on
    every seed, its spread is 0, the t statistic is undefined and the p-value is NaN. The
    interval is then the single difference, so it is significant unless that is 0.

    Raises ValueError for sequences of different or zero length, non-finite accuracies,
    or a confidence outside (0, 1).
    """
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be between 0 and 1 (exclusive) but got {confidence!r}")

    candidate_values = _as_accuracies("candidate", candidate)
    baseline_values = _as_accuracies("baseline", baseline)
    if len(candidate_values) != len(baseline_values) or len(candidate_values) == 0:
        raise ValueError(
            f"candidate and baseline need one accuracy per seed, the same seeds for both, but got "
            f"{len(candidate_values)} and {len(baseline_values)} values"
        )

    differences = candidate_values - baseline_values
    seeds = len(differences)
    difference_mean = float(np.mean(differences))
    difference_std = _sample_std(differences)
    note = None

    if seeds < 2:
        ci_low = ci_high = p_value = half_width = math.nan
        note = "a confidence interval needs at least 2 seeds"
        significant = False
    elif np.ptp(differences) <= _SAME_DIFFERENCE_TOLERANCE:
        half_width = 0.0
        ci_low = ci_high = difference_mean
        p_value = math.nan
        note = f"the difference is {difference_mean * 100:.2f} points on every seed, so the t-test is undefined"
        significant = difference_mean != 0.0
    else:
        half_width = float(stats.t.ppf((1.0 + confidence) / 2.0, df=seeds - 1) * difference_std / math.sqrt(seeds))
        ci_low = difference_mean - half_width
        ci_high = difference_mean + half_width
        p_value = float(stats.ttest_rel(candidate_values, baseline_values).pvalue)
        significant = ci_low > 0.0 or ci_high < 0.0

    return Comparison(
        seeds=seeds,
        confidence=float(confidence),
        candidate_mean=float(np.mean(candidate_values)),
        candidate_std=_sample_std(candidate_values),
        baseline_mean=float(np.mean(baseline_values)),
        baseline_std=_sample_std(baseline_values),
        difference_mean=difference_mean,
        difference_std=difference_std,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p_value,
        significant=significant,
        verdict=_verdict_line(difference_mean, half_width, p_value, confidence, seeds, significant, None if seeds < 2 else note),
        note=note,
    )
