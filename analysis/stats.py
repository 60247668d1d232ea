"""Small, exact statistics used by every report."""

from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap


def mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error (sample std / √n; 0 for a single value)."""
    values = np.asarray(values, dtype=float)
    n = values.size
    if n == 0:
        return float("nan"), float("nan")
    se = values.std(ddof=1) / np.sqrt(n) if n > 1 else 0.0
    return float(values.mean()), float(se)


def paired_bootstrap_ratio(
    numerator: np.ndarray, denominator: np.ndarray, resamples: int = 500, seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Ratio of means with a paired percentile-bootstrap CI (pairs resampled together).

    Pairs are e.g. the two estimators' squared errors on the same seed, so the resampling
    keeps their correlation. Returns (ratio, low, high).
    """
    num = np.asarray(numerator, dtype=float)
    den = np.asarray(denominator, dtype=float)
    if num.shape != den.shape or num.ndim != 1 or num.size == 0:
        raise ValueError("expected two 1-d arrays of equal, non-zero length")
    ratio = float(_safe_ratio(num.mean(), den.mean()))

    def ratio_of_means(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return _safe_ratio(x.mean(axis), y.mean(axis))

    low, high = _paired_percentile(ratio_of_means, (num, den), ratio, resamples, seed, level)
    return ratio, low, high


def paired_bootstrap_diff(
    a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean of a − b with a paired percentile-bootstrap CI (pairs resampled together).

    Pairs are e.g. two methods' rewards on the same seed. Returns (difference, low, high).
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError("expected two 1-d arrays of equal, non-zero length")
    diff = float((x - y).mean())

    def mean_difference(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        return (u - v).mean(axis)

    low, high = _paired_percentile(mean_difference, (x, y), diff, resamples, seed, level)
    return diff, low, high


def _paired_percentile(statistic, samples: tuple[np.ndarray, ...], point: float,
                       resamples: int, seed: int, level: float) -> tuple[float, float]:
    """SciPy's paired percentile bootstrap (the pairs resampled together), seeded. One pair
    has no spread to resample: its interval is the point itself."""
    if samples[0].size == 1:
        return point, point
    with np.errstate(invalid="ignore"):  # a ratio of infinite resamples (zero denominators)
        result = bootstrap(samples, statistic, paired=True, vectorized=True,
                           method="percentile", n_resamples=resamples, confidence_level=level,
                           random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _safe_ratio(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b == 0, np.where(a == 0, 1.0, np.inf), a / np.where(b == 0, 1, b))
