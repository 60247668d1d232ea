"""The reports' paired bootstrap (SciPy's, paired, percentile) against the hand-written one
it replaced and against the closed-form interval it approximates."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.stats import mean_se, paired_bootstrap_diff, paired_bootstrap_ratio


def by_hand(stat, a: np.ndarray, b: np.ndarray, resamples: int, seed: int,
            level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap written out: pairs resampled together with the same
    generator calls SciPy makes (n indices per resample, all resamples at once)."""
    idx = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
    boot = stat(a[idx], b[idx])
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return float(low), float(high)


@pytest.mark.parametrize("seed", range(20))
def test_scipy_intervals_equal_the_hand_written_bootstrap(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 40))
    a = rng.normal(size=n)
    b = 0.6 * a + rng.normal(size=n)
    _, low, high = paired_bootstrap_diff(a, b, resamples=2000, seed=seed)
    ref = by_hand(lambda x, y: (x - y).mean(1), a, b, 2000, seed)
    assert (low, high) == pytest.approx(ref, rel=1e-12, abs=1e-12)
    x, y = np.abs(a) + 0.1, np.abs(b) + 0.1
    ratio, low, high = paired_bootstrap_ratio(x, y, resamples=500, seed=seed)
    assert ratio == pytest.approx(x.mean() / y.mean(), rel=1e-15)
    ref = by_hand(lambda u, v: u.mean(1) / v.mean(1), x, y, 500, seed)
    assert (low, high) == pytest.approx(ref, rel=1e-12, abs=1e-12)


def test_the_interval_of_a_mean_difference_matches_the_normal_one_for_many_pairs() -> None:
    # n = 2000 pairs: the bootstrap's 95% interval is the normal-theory one, mean ± 1.96·SE,
    # to within the bootstrap's own Monte Carlo error (4000 resamples: ~3% of its width).
    rng = np.random.default_rng(7)
    a = rng.normal(1.0, 2.0, size=2000)
    b = 0.5 * a + rng.normal(0.0, 1.0, size=2000)
    diff, low, high = paired_bootstrap_diff(a, b, resamples=4000, seed=3)
    mean, se = mean_se(a - b)
    assert diff == pytest.approx(mean, rel=1e-12)
    half = 1.959964 * se
    assert low == pytest.approx(mean - half, abs=0.05 * half)
    assert high == pytest.approx(mean + half, abs=0.05 * half)


def test_one_pair_is_its_own_interval_and_zero_denominators_are_named() -> None:
    assert paired_bootstrap_diff(np.array([2.0]), np.array([0.5])) == (1.5, 1.5, 1.5)
    assert paired_bootstrap_ratio(np.array([2.0]), np.array([0.5])) == (4.0, 4.0, 4.0)
    ratio, low, high = paired_bootstrap_ratio(np.array([1.0, 2.0]), np.array([0.0, 0.0]))
    assert ratio == low == high == np.inf
    with pytest.raises(ValueError, match="equal, non-zero length"):
        paired_bootstrap_diff(np.array([1.0, 2.0]), np.array([1.0]))
