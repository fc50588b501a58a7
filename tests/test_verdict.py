"""Paired comparison statistics, checked against values computed by hand.

The expected numbers come from the textbook formulas: d = candidate - baseline per seed,
mean d, sample standard deviation s (n - 1), standard error s / sqrt(n), the interval
mean ± t(1 - alpha/2, n - 1) * s / sqrt(n), and t = mean / (s / sqrt(n)). The t
quantiles for 4 degrees of freedom are from a t table: 2.7764451 (95%), 2.1318468 (90%).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.verdict import compare

T_95_DF4 = 2.7764451
T_90_DF4 = 2.1318468

# d = [0.02, 0.02, -0.01, 0.04, 0.02]: mean 0.018, s = sqrt(0.00128 / 4) = 0.0178885,
# standard error 0.008, t = 2.25.
UNCLEAR_CANDIDATE = [0.80, 0.82, 0.79, 0.85, 0.81]
UNCLEAR_BASELINE = [0.78, 0.80, 0.80, 0.81, 0.79]

# d = [0.03, 0.02, 0.025, 0.035, 0.04]: mean 0.03, s = sqrt(0.00025 / 4) = 0.0079057,
# standard error 0.0035355, t = 8.4853.
BETTER_CANDIDATE = [0.73, 0.72, 0.725, 0.735, 0.74]
BETTER_BASELINE = [0.70, 0.70, 0.70, 0.70, 0.70]

# d = [-0.11, -0.08, -0.11, -0.11, -0.09]: mean -0.10, s = sqrt(0.0008 / 4) = 0.0141421,
# standard error 0.0063246, t = -15.811.
WORSE_CANDIDATE = [0.60, 0.62, 0.59, 0.61, 0.60]
WORSE_BASELINE = [0.71, 0.70, 0.70, 0.72, 0.69]


def test_compare_means_and_stds():
    result = compare(UNCLEAR_CANDIDATE, UNCLEAR_BASELINE)

    assert result.seeds == 5
    assert result.candidate_mean == pytest.approx(0.814)
    assert result.baseline_mean == pytest.approx(0.796)
    # Deviations from the means 0.814 and 0.796, squared and divided by n - 1 = 4.
    assert result.candidate_std == pytest.approx(math.sqrt((0.014**2 + 0.006**2 + 0.024**2 + 0.036**2 + 0.004**2) / 4))
    assert result.baseline_std == pytest.approx(math.sqrt((0.016**2 + 0.004**2 + 0.004**2 + 0.014**2 + 0.006**2) / 4))
    assert result.difference_mean == pytest.approx(0.018)
    assert result.difference_std == pytest.approx(0.0178885, abs=1e-7)


def test_compare_unclear_difference():
    result = compare(UNCLEAR_CANDIDATE, UNCLEAR_BASELINE, confidence=0.95)

    half_width = T_95_DF4 * 0.008
    assert result.ci_low == pytest.approx(0.018 - half_width, abs=1e-7)
    assert result.ci_high == pytest.approx(0.018 + half_width, abs=1e-7)
    assert result.p_value == pytest.approx(2 * stats.t.sf(2.25, df=4))
    assert result.p_value == pytest.approx(0.0877, abs=5e-4)
    assert not result.significant
    assert result.verdict == (
        "no significant difference: candidate − baseline = 1.80 ± 2.22 points (95% CI, p = 0.088, 5 seeds)"
    )


def test_compare_lower_confidence_flips_verdict():
    result = compare(UNCLEAR_CANDIDATE, UNCLEAR_BASELINE, confidence=0.90)

    half_width = T_90_DF4 * 0.008
    assert result.ci_low == pytest.approx(0.018 - half_width, abs=1e-7)
    assert result.ci_low > 0
    assert result.significant
    assert result.verdict == "candidate beats baseline by 1.80 ± 1.71 points (90% CI, p = 0.088, 5 seeds)"


def test_compare_candidate_better():
    result = compare(BETTER_CANDIDATE, BETTER_BASELINE)

    half_width = T_95_DF4 * 0.0035355
    assert result.difference_mean == pytest.approx(0.03)
    assert result.ci_low == pytest.approx(0.03 - half_width, abs=1e-6)
    assert result.ci_high == pytest.approx(0.03 + half_width, abs=1e-6)
    assert result.p_value == pytest.approx(2 * stats.t.sf(8.4853, df=4), rel=1e-3)
    assert result.significant
    assert result.verdict == "candidate beats baseline by 3.00 ± 0.98 points (95% CI, p = 0.0011, 5 seeds)"


def test_compare_baseline_better():
    result = compare(WORSE_CANDIDATE, WORSE_BASELINE)

    assert result.difference_mean == pytest.approx(-0.10)
    assert result.ci_high == pytest.approx(-0.10 + T_95_DF4 * 0.0063246, abs=1e-6)
    assert result.p_value < 0.001
    assert result.significant
    assert result.verdict == "baseline beats candidate by 10.00 ± 1.76 points (95% CI, p < 0.001, 5 seeds)"


def test_compare_swapped_arms_mirror():
    forward = compare(BETTER_CANDIDATE, BETTER_BASELINE)
    backward = compare(BETTER_BASELINE, BETTER_CANDIDATE)

    assert backward.difference_mean == pytest.approx(-forward.difference_mean)
    assert backward.ci_low == pytest.approx(-forward.ci_high)
    assert backward.p_value == pytest.approx(forward.p_value)
    assert backward.verdict.startswith("baseline beats candidate by 3.00 ± 0.98 points")


def test_compare_significance_matches_p_value():
    rng = np.random.default_rng(0)
    for _ in range(200):
        seeds = int(rng.integers(2, 8))
        baseline = rng.uniform(0.5, 0.7, size=seeds)
        candidate = baseline + rng.normal(0.01, 0.02, size=seeds)
        confidence = float(rng.choice([0.8, 0.9, 0.95, 0.99]))
        result = compare(candidate, baseline, confidence)

        assert result.significant == (result.p_value < 1 - confidence)
        assert result.p_value == pytest.approx(stats.ttest_rel(candidate, baseline).pvalue)


def test_compare_single_seed():
    result = compare([0.5], [0.4])

    assert result.seeds == 1
    assert result.difference_mean == pytest.approx(0.1)
    assert math.isnan(result.candidate_std)
    assert math.isnan(result.ci_low)
    assert math.isnan(result.p_value)
    assert not result.significant
    assert result.note == "a confidence interval needs at least 2 seeds"
    assert result.verdict == (
        "too few seeds for a verdict: candidate − baseline = 10.00 points (1 seed; "
        "a confidence interval needs at least 2 seeds)"
    )


def test_compare_same_difference_every_seed():
    # 0.55 - 0.525 and 0.6 - 0.575 differ in the last bits of a float, but both are 2.5 points.
    result = compare([0.55, 0.6, 0.65], [0.525, 0.575, 0.625])

    assert result.ci_low == pytest.approx(0.025)
    assert result.ci_high == pytest.approx(0.025)
    assert math.isnan(result.p_value)
    assert result.significant
    assert result.verdict == (
        "candidate beats baseline by 2.50 ± 0.00 points (95% CI, p undefined, 3 seeds; "
        "the difference is 2.50 points on every seed, so the t-test is undefined)"
    )


def test_compare_identical_results():
    result = compare([0.5, 0.6], [0.5, 0.6])

    assert result.difference_mean == 0.0
    assert not result.significant
    assert result.verdict.startswith("no significant difference: candidate − baseline = 0.00 ± 0.00 points")
    assert "p undefined" in result.verdict


@pytest.mark.parametrize(
    ("candidate", "baseline", "confidence", "message"),
    [
        ([0.5, 0.6], [0.5], 0.95, "got 2 and 1 values"),
        ([], [], 0.95, "got 0 and 0 values"),
        ([0.5, float("nan")], [0.5, 0.6], 0.95, "candidate must be finite"),
        ([0.5, 0.6], [0.5, 0.6], 0.0, "between 0 and 1"),
        ([0.5, 0.6], [0.5, 0.6], 1.0, "between 0 and 1"),
        ([0.5, 0.6], [0.5, 0.6], 95, "between 0 and 1"),
    ],
)
def test_compare_rejects_bad_input(candidate, baseline, confidence, message):
    with pytest.raises(ValueError, match=message):
        compare(candidate, baseline, confidence)
