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

    def ratio_of_means(x: np.ndarray, y: np.ndarray, axis: int = 0) -> np.ndarray:
        return _safe_ratio(x.mean(axis), y.mean(axis))

    low, high = _paired_percentile(ratio_of_means, (num, den), ratio, resamples, seed, level)
    return ratio, float(low), float(high)


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
    diff, low, high = paired_bootstrap_diff_band(x[:, None], y[:, None], resamples, seed,
                                                 level)
    return float(diff[0]), float(low[0]), float(high[0])


def paired_bootstrap_diff_band(
    a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`paired_bootstrap_diff` at every column at once: a and b are (pairs, points), e.g.
    two methods' curves per seed on a common x grid; the same resampled pairs serve every
    point, so the band is pointwise. Returns (difference, low, high), each (points,)."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 2 or x.size == 0:
        raise ValueError("expected two 2-d arrays (pairs, points) of equal, non-zero size")
    diff = (x - y).mean(0)

    def mean_difference(u: np.ndarray, v: np.ndarray, axis: int = 0) -> np.ndarray:
        return (u - v).mean(axis)

    low, high = _paired_percentile(mean_difference, (x, y), diff, resamples, seed, level)
    return diff, low, high


def bootstrap_mean(values: np.ndarray, resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """Mean with a percentile-bootstrap CI over the values (e.g. one per seed)."""
    values = np.asarray(values, dtype=float)
    return paired_bootstrap_diff(values, np.zeros_like(values), resamples, seed, level)


def _paired_percentile(statistic, samples: tuple[np.ndarray, ...], point, resamples: int,
                       seed: int, level: float):
    """SciPy's paired percentile bootstrap over the first axis (the pairs, resampled
    together; any further axes are points that share the resampled pairs), seeded. One
    pair has no spread to resample: its interval is the point itself."""
    if len(samples[0]) == 1:
        return point, point
    with np.errstate(invalid="ignore"):  # a ratio of infinite resamples (zero denominators)
        result = bootstrap(samples, statistic, paired=True, vectorized=True, axis=0,
                           method="percentile", n_resamples=resamples, confidence_level=level,
                           random_state=np.random.default_rng(seed))
    return result.confidence_interval.low, result.confidence_interval.high


def _safe_ratio(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b == 0, np.where(a == 0, 1.0, np.inf), a / np.where(b == 0, 1, b))
