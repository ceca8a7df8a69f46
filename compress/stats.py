"""Statistics behind every speed claim and speed gate: a confidence interval for a paired speed-up and a
three-way decision (pass / fail / inconclusive) against a threshold.

The data are the paired per-round ratios of the one timing loop (``timing.paired_ratios``): in every
interleaving round both artifacts were timed moments apart, and the ratio of their fastest calls in that round is
one observation. The speed-up is the median of those ratios; its interval is the distribution-free
*sign-test* (binomial order-statistic) interval for a median, as in ``scipy.stats.binomtest``'s theory:
with ``n`` sorted ratios, ``[r_(k), r_(n-k+1)]`` covers the median with probability
``1 - 2 * P(Binom(n, 1/2) < k)``. It assumes nothing about the shape of the ratios, which on a shared
machine are often bimodal, and it is deterministic (no resampling), so a report can be re-derived.

scipy is imported inside the functions: config validation imports this module and must stay light.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["RatioCI", "ratio_ci", "quantile_ci", "decide", "Decision", "MIN_ROUNDS"]

Decision = Literal["pass", "fail", "inconclusive"]

#: fewest paired rounds for which a 95% sign-test interval exists (2 * 0.5**6 = 0.031 < 0.05)
MIN_ROUNDS = 6


@dataclass(frozen=True)
class RatioCI:
    """Median of paired per-round ratios (reference time / other time) with its confidence interval.

    ``low``/``high`` are ``None`` when there are too few rounds for the requested confidence."""

    point: float | None
    low: float | None
    high: float | None
    n: int
    confidence: float

    @property
    def bounded(self) -> bool:
        return self.low is not None and self.high is not None

    def inverted(self) -> "RatioCI":
        """The same interval for ``other / reference`` (e.g. a slowdown instead of a speed-up)."""
        inv = (lambda v: None if v is None else 1.0 / v)
        return RatioCI(inv(self.point), inv(self.high), inv(self.low), self.n, self.confidence)


def quantile_ci(values: list[float], q: float = 0.5, confidence: float = 0.95) -> RatioCI:
    """Distribution-free confidence interval for the ``q``-quantile of ``values`` from order statistics:
    ``[x_(l), x_(u+1)]`` with ``l``, ``u`` the ``alpha/2`` and ``1 - alpha/2`` quantiles of
    ``Binom(n, q)``, so that ``P(l <= B <= u) >= confidence`` (for ``q = 0.5``: the sign-test interval)."""
    import numpy as np
    from scipy.stats import binom

    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0:
        return RatioCI(None, None, None, 0, confidence)
    point = float(np.quantile(x, q))
    alpha = 1.0 - confidence
    lo = int(binom.ppf(alpha / 2, n, q))  # smallest l with P(B <= l) >= alpha/2, so P(B <= l-1) < alpha/2
    hi = int(binom.ppf(1 - alpha / 2, n, q))  # smallest u with P(B <= u) >= 1 - alpha/2
    if lo < 1 or hi + 1 > n:
        return RatioCI(point, None, None, n, confidence)
    return RatioCI(point, float(x[lo - 1]), float(x[hi]), n, confidence)


def ratio_ci(ratios: list[float], confidence: float = 0.95) -> RatioCI:
    """Sign-test confidence interval for the median of paired ``ratios`` (see the module docstring)."""
    return quantile_ci(ratios, 0.5, confidence)


def decide(ci: RatioCI, op: Literal[">=", "<="], threshold: float) -> Decision:
    """Pass when the whole interval is on the good side of ``threshold``, fail when the whole interval is
    on the bad side, inconclusive when it straddles the threshold (or no interval exists yet)."""
    if not ci.bounded:
        return "inconclusive"
    if op == ">=":
        return "pass" if ci.low >= threshold else ("fail" if ci.high < threshold else "inconclusive")
    return "pass" if ci.high <= threshold else ("fail" if ci.low > threshold else "inconclusive")
